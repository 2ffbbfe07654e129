"""Multi-scale residual vector quantisation.

Each level average-pools the residual by its stride, projects it to a low-dimensional space
(factorised codes), picks the nearest codebook entry by cosine similarity, projects back and repeats
each frame ``stride`` times. Unlike the official inference package, the levels also return the
codebook and commitment losses that make the codebooks trainable (VQ-VAE / DAC style, computed in the
projected space).
"""
from __future__ import annotations

from typing import List, NamedTuple, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from espnet_snac.model.layers import wn_conv1d


class QuantizerOutput(NamedTuple):
    z_q: torch.Tensor  # (B, D, T) quantised latent, straight-through w.r.t. the input
    codes: List[torch.Tensor]  # per level (B, T // stride)
    commitment_loss: torch.Tensor  # (n_levels,) mean over batch
    codebook_loss: torch.Tensor  # (n_levels,) mean over batch
    # per level (B, codebook_dim, T // stride): the projected latents z_e the codes were chosen for,
    # detached (code-usage tracking and dead-code restart read them; inference ignores them)
    latents: Sequence[torch.Tensor] = ()


class VectorQuantize(nn.Module):
    """One quantiser level operating at ``1 / stride`` of the latent frame rate."""

    def __init__(self, input_dim: int, codebook_size: int, codebook_dim: int, stride: int = 1):
        super().__init__()
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.stride = stride
        self.in_proj = wn_conv1d(input_dim, codebook_dim, kernel_size=1)
        self.out_proj = wn_conv1d(codebook_dim, input_dim, kernel_size=1)
        self.codebook = nn.Embedding(codebook_size, codebook_dim)

    def nearest_codes(self, z_e: torch.Tensor) -> torch.Tensor:
        """``(B, d, T)`` projected latents -> ``(B, T)`` indices of the most cosine-similar codes."""
        b = z_e.shape[0]
        enc = F.normalize(z_e.transpose(1, 2).reshape(-1, z_e.shape[1]))
        book = F.normalize(self.codebook.weight)
        # Full squared distance of unit vectors (not just the dot product) so that ties and rounding
        # resolve exactly as in the released model.
        dist = enc.pow(2).sum(1, keepdim=True) - 2 * enc @ book.t() + book.pow(2).sum(1, keepdim=True).t()
        return (-dist).max(1)[1].reshape(b, -1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` indices -> raw codebook vectors ``(B, d, T)``."""
        return F.embedding(codes, self.codebook.weight).transpose(1, 2)

    def upsample(self, z: torch.Tensor) -> torch.Tensor:
        return z.repeat_interleave(self.stride, dim=-1) if self.stride > 1 else z

    def forward(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``z (B, D, T)`` -> ``(z_q (B, D, T), codes (B, T/stride), commitment (B,), codebook (B,))``."""
        return self.quantize(z)[:4]

    def quantize(
        self, z: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward`, plus the projected latents ``z_e (B, d, T/stride)`` (detached)."""
        if self.stride > 1:
            z = F.avg_pool1d(z, self.stride, self.stride)
        z_e = self.in_proj(z)
        codes = self.nearest_codes(z_e)
        z_c = self.lookup(codes)
        commitment = F.mse_loss(z_e, z_c.detach(), reduction="none").mean([1, 2])
        codebook = F.mse_loss(z_c, z_e.detach(), reduction="none").mean([1, 2])
        z_c = z_e + (z_c - z_e).detach()  # straight-through estimator
        return self.upsample(self.out_proj(z_c)), codes, commitment, codebook, z_e.detach()

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """``(B, T/stride)`` -> this level's contribution ``(B, D, T)``."""
        return self.upsample(self.out_proj(self.lookup(codes)))


class ResidualVectorQuantize(nn.Module):
    """Levels applied to successive residuals; strides e.g. ``[4, 2, 1]`` (coarse to fine)."""

    def __init__(self, input_dim: int, codebook_size: int, codebook_dim: int, vq_strides: Sequence[int]):
        super().__init__()
        self.n_codebooks = len(vq_strides)
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.quantizers = nn.ModuleList(
            VectorQuantize(input_dim, codebook_size, codebook_dim, s) for s in vq_strides
        )

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """``z (B, D, T)`` with ``T`` divisible by every stride.

        Runs in fp32 under autocast: in bf16 the cosine distances to 4096 codes tie or swap, so the
        chosen codes (and the VQ losses) would depend on the training precision.
        """
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self._quantize(z.float() if z.dtype in (torch.float16, torch.bfloat16) else z)

    def _quantize(self, z: torch.Tensor) -> QuantizerOutput:
        z_q = torch.zeros_like(z)
        residual = z
        codes, commitment, codebook, latents = [], [], [], []
        for quantizer in self.quantizers:
            z_q_i, codes_i, commit_i, book_i, z_e_i = quantizer.quantize(residual)
            z_q = z_q + z_q_i
            residual = residual - z_q_i
            codes.append(codes_i)
            commitment.append(commit_i.mean())
            codebook.append(book_i.mean())
            latents.append(z_e_i)
        return QuantizerOutput(z_q, codes, torch.stack(commitment), torch.stack(codebook), latents)

    def check_codes(self, codes: Sequence[torch.Tensor]) -> None:
        """Refuse codes that no encoding by this model produces (an embedding lookup would fail
        with an opaque index error on CPU and a device assert on CUDA, or decode garbage)."""
        strides = [q.stride for q in self.quantizers]
        first = codes[0].shape[-1] if codes[0].dim() else -1
        for level, (c, stride) in enumerate(zip(codes, strides)):
            if c.dtype.is_floating_point or c.dtype.is_complex or c.dtype == torch.bool:
                raise ValueError(f"codes of level {level} must be integers, got {c.dtype}")
            if c.dim() != 2 or c.shape[-1] != first * strides[0] // stride or c.shape[0] != codes[0].shape[0]:
                raise ValueError(f"code levels must be (B, T_0 * {strides[0]} / stride) for strides {strides}; "
                                 f"got shapes {[tuple(x.shape) for x in codes]}")
            if c.numel() and bool(((c < 0) | (c >= self.codebook_size)).any()):
                raise ValueError(f"code ids of level {level} must be in [0, {self.codebook_size}), got min "
                                 f"{int(c.min())}, max {int(c.max())}: these codes were not made by this model")

    def from_codes(self, codes: Sequence[torch.Tensor]) -> torch.Tensor:
        """Codes per level -> summed latent ``(B, D, T)``."""
        if len(codes) != self.n_codebooks:
            raise ValueError(f"expected {self.n_codebooks} code levels, got {len(codes)}")
        self.check_codes(codes)
        z_q = None
        for quantizer, c in zip(self.quantizers, codes):
            part = quantizer.decode_codes(c)
            z_q = part if z_q is None else z_q + part
        return z_q
