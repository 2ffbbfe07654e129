"""Building blocks of the SNAC encoder and decoder.

Module attribute names (``block``, ``model``, ``linear``, ``alpha`` ...) are part of the checkpoint
format: they reproduce the official state-dict keys so that released weights load with ``strict=True``.
All tensors are ``(B, C, T)`` unless stated otherwise.
"""
from __future__ import annotations

import hashlib
import math
from typing import List, Optional, Sequence

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


def wn_conv1d(*args, **kwargs) -> nn.Module:
    """Weight-normalised Conv1d (keys ``parametrizations.weight.original0/1``)."""
    return weight_norm(nn.Conv1d(*args, **kwargs))


def wn_conv_transpose1d(*args, **kwargs) -> nn.Module:
    """Weight-normalised ConvTranspose1d."""
    return weight_norm(nn.ConvTranspose1d(*args, **kwargs))


class Snake1d(nn.Module):
    """Snake activation ``x + sin(alpha x)^2 / alpha`` with a learned per-channel ``alpha``."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 1e-9 keeps the reciprocal finite if alpha is driven to zero.
        return x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)


class ResidualUnit(nn.Module):
    """Snake -> dilated conv (k7, optionally depthwise) -> Snake -> conv k1, plus the input."""

    def __init__(self, dim: int, dilation: int = 1, kernel: int = 7, groups: int = 1):
        super().__init__()
        pad = ((kernel - 1) * dilation) // 2
        self.block = nn.Sequential(
            Snake1d(dim),
            wn_conv1d(dim, dim, kernel_size=kernel, dilation=dilation, padding=pad, groups=groups),
            Snake1d(dim),
            wn_conv1d(dim, dim, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        trim = (x.shape[-1] - y.shape[-1]) // 2
        if trim > 0:
            x = x[..., trim:-trim]
        return x + y


def _residual_stack(dim: int, groups: int) -> List[nn.Module]:
    return [ResidualUnit(dim, dilation=d, groups=groups) for d in (1, 3, 9)]


class EncoderBlock(nn.Module):
    """Three residual units at ``output_dim // 2`` channels, then a strided conv doubling channels."""

    def __init__(self, output_dim: int, stride: int, groups: int = 1):
        super().__init__()
        input_dim = output_dim // 2
        self.block = nn.Sequential(
            *_residual_stack(input_dim, groups),
            Snake1d(input_dim),
            wn_conv1d(input_dim, output_dim, kernel_size=2 * stride, stride=stride,
                      padding=math.ceil(stride / 2)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class NoiseBlock(nn.Module):
    """Adds ``randn(B, 1, T) * conv1x1(x)``: input-dependent noise, active in eval mode too.

    By default the noise comes from the global RNG like the official model. With ``seed`` set (by
    :meth:`espnet_snac.model.snac.SNAC.noise`) it is a function of ``(seed, index, absolute position)``,
    where ``offset`` is the absolute position of ``x[..., 0]``: a decode of any window of the latent
    then draws the same noise as the full decode. ``enabled = False`` removes the noise.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.linear = wn_conv1d(dim, dim, kernel_size=1, bias=False)
        self.seed: Optional[int] = None
        self.index = 0
        self.offset = 0
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        return x + self.draw(x) * self.linear(x)

    def draw(self, x: torch.Tensor) -> torch.Tensor:
        """The noise ``(B, 1, T)`` for ``x (B, C, T)``: global RNG, or positional with a seed."""
        b, _, t = x.shape
        if self.seed is None:
            return torch.randn((b, 1, t), device=x.device, dtype=x.dtype)
        return positional_noise(self.seed, self.index, self.offset, b, t, x.device).to(x.dtype)


#: Positions per independently seeded piece of positional noise.
NOISE_CHUNK = 2048


def _chunk_seed(seed: int, index: int, chunk: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{index}/{chunk}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def positional_noise(seed: int, index: int, offset: int, batch: int, length: int,
                     device: torch.device) -> torch.Tensor:
    """Standard normal noise ``(batch, 1, length)`` for positions ``offset .. offset + length - 1``.

    Positions are grouped in chunks of :data:`NOISE_CHUNK`, each drawn from its own generator seeded
    by ``(seed, index, chunk)``, so any window reproduces the values of a longer decode.
    """
    if length == 0:
        return torch.zeros(batch, 1, 0, device=device)
    first, last = offset // NOISE_CHUNK, (offset + length - 1) // NOISE_CHUNK
    pieces = []
    for chunk in range(first, last + 1):
        generator = torch.Generator(device=device)
        generator.manual_seed(_chunk_seed(seed, index, chunk))
        pieces.append(torch.randn((batch, NOISE_CHUNK), generator=generator, device=device))
    start = offset - first * NOISE_CHUNK
    return torch.cat(pieces, dim=1)[:, start: start + length].unsqueeze(1)


class DecoderBlock(nn.Module):
    """Snake -> transposed conv (upsample by ``stride``) -> [NoiseBlock] -> three residual units."""

    def __init__(self, input_dim: int, output_dim: int, stride: int, noise: bool = False, groups: int = 1):
        super().__init__()
        layers: List[nn.Module] = [
            Snake1d(input_dim),
            wn_conv_transpose1d(input_dim, output_dim, kernel_size=2 * stride, stride=stride,
                                padding=math.ceil(stride / 2), output_padding=stride % 2),
        ]
        if noise:
            layers.append(NoiseBlock(output_dim))
        layers += _residual_stack(output_dim, groups)
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class SinusoidalEmbeddings(nn.Module):
    """Rotary position frequencies for :class:`LocalMHA` (``inv_freq`` is saved in checkpoints)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)))

    def forward(self, n: int, device: torch.device) -> torch.Tensor:
        """Returns rotary angles ``(n, dim)``."""
        t = torch.arange(n, device=device).type_as(self.inv_freq)
        freqs = torch.outer(t, self.inv_freq)
        return torch.cat((freqs, freqs), dim=-1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class LocalMHA(nn.Module):
    """Pre-norm multi-head self-attention inside non-overlapping windows, with rotary positions.

    Used by the 32/44 kHz models. ``T`` must be a multiple of ``window_size`` (guaranteed by
    :meth:`SNAC.preprocess`).
    """

    def __init__(self, dim: int, window_size: int = 32, dim_head: int = 64):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.heads = dim // dim_head
        self.window_size = window_size
        self.to_qkv = nn.Linear(dim, dim * 3, bias=False)
        self.rel_pos = SinusoidalEmbeddings(dim_head)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t = x.shape
        if t % self.window_size:
            raise ValueError(f"LocalMHA: length {t} is not a multiple of window {self.window_size}")
        h = self.norm(x.transpose(1, 2))
        w, n = t // self.window_size, self.window_size
        # (B, T, 3C) -> 3 x (B, heads, windows, n, dim_head)
        q, k, v = (
            part.reshape(b, w, n, self.heads, -1).permute(0, 3, 1, 2, 4)
            for part in self.to_qkv(h).chunk(3, dim=-1)
        )
        angles = self.rel_pos(n, x.device)
        cos, sin = angles.cos(), angles.sin()
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        out = out.permute(0, 2, 3, 1, 4).reshape(b, t, c)
        return self.to_out(out).transpose(1, 2) + x


class Encoder(nn.Module):
    """Waveform ``(B, 1, T)`` -> latent ``(B, d_model * 2^len(strides), T / prod(strides))``."""

    def __init__(self, d_model: int, strides: Sequence[int], depthwise: bool = False,
                 attn_window_size: Optional[int] = None):
        super().__init__()
        layers: List[nn.Module] = [wn_conv1d(1, d_model, kernel_size=7, padding=3)]
        for stride in strides:
            d_model *= 2
            layers.append(EncoderBlock(d_model, stride, groups=d_model // 2 if depthwise else 1))
        if attn_window_size is not None:
            layers.append(LocalMHA(d_model, window_size=attn_window_size))
        layers.append(wn_conv1d(d_model, d_model, kernel_size=7, padding=3, groups=d_model if depthwise else 1))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Decoder(nn.Module):
    """Latent ``(B, input_channel, T')`` -> waveform ``(B, 1, T' * prod(rates))`` in [-1, 1]."""

    def __init__(self, input_channel: int, channels: int, rates: Sequence[int], noise: bool = False,
                 depthwise: bool = False, attn_window_size: Optional[int] = None, d_out: int = 1):
        super().__init__()
        if depthwise:
            layers: List[nn.Module] = [
                wn_conv1d(input_channel, input_channel, kernel_size=7, padding=3, groups=input_channel),
                wn_conv1d(input_channel, channels, kernel_size=1),
            ]
        else:
            layers = [wn_conv1d(input_channel, channels, kernel_size=7, padding=3)]
        if attn_window_size is not None:
            layers.append(LocalMHA(channels, window_size=attn_window_size))
        output_dim = channels
        for i, stride in enumerate(rates):
            input_dim, output_dim = channels // 2**i, channels // 2 ** (i + 1)
            layers.append(DecoderBlock(input_dim, output_dim, stride, noise, groups=output_dim if depthwise else 1))
        layers += [Snake1d(output_dim), wn_conv1d(output_dim, d_out, kernel_size=7, padding=3), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
