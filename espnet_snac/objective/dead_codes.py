"""Dead-code restart: codebook rows unused for a number of steps are re-seeded from recent latents.

A code that the nearest-neighbour search never picks gets no gradient (the codebook loss only reaches
the selected rows), so without help it stays dead for the rest of the run. Re-seeding it onto a
latent the encoder actually produces puts it back where the data is (as in Jukebox / SoundStream's
codebook restarts).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

from espnet_snac.objective.code_histogram import world_size


class LatentRing:
    """The last ``size`` projected latents of one level, ``(size, dim)`` float32 on the device."""

    def __init__(self, size: int, dim: int):
        self.size = size
        self.dim = dim
        self.data: Optional[torch.Tensor] = None
        self.position = 0  # host-side, so writing never synchronises
        self.filled = 0

    def push(self, z_e: torch.Tensor) -> None:
        """Append the frames of ``z_e (B, dim, T)``."""
        vectors = z_e.detach().transpose(1, 2).reshape(-1, self.dim).float()
        if self.data is None or self.data.device != vectors.device:
            self.data = vectors.new_zeros(self.size, self.dim)
            self.position = self.filled = 0
        vectors = vectors[-self.size:]
        n = vectors.shape[0]
        first = min(n, self.size - self.position)
        self.data[self.position:self.position + first] = vectors[:first]
        self.data[: n - first] = vectors[first:]
        self.position = (self.position + n) % self.size
        self.filled = min(self.size, self.filled + n)

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``n`` stored latents drawn uniformly with replacement, ``(n, dim)``."""
        pick = torch.randint(self.filled, (n,), device=self.data.device, generator=generator)
        return self.data[pick]


class DeadCodeRestart:
    """Tracks when each code was last used and re-seeds the ones idle for ``after`` steps.

    Args:
        n_levels, codebook_size, codebook_dim: quantiser shape.
        after: a code not picked in the last ``after`` steps is dead; the check runs every ``after`` steps.
        buffer_size: latents kept per level to draw new rows from.
        noise: relative noise added to a re-seeded row (``noise * |z_e|`` in norm), so that several codes
            drawn from one latent are not exact ties.
    """

    def __init__(self, n_levels: int, codebook_size: int, codebook_dim: int, after: int = 1000,
                 buffer_size: int = 8192, noise: float = 0.01):
        if after < 1 or buffer_size < 1 or noise < 0:
            raise ValueError(
                f"dead-code restart needs dead_code_after >= 1, dead_code_buffer_size >= 1 and "
                f"dead_code_noise >= 0; got {after}, {buffer_size}, {noise}"
            )
        self.n_levels = n_levels
        self.codebook_size = codebook_size
        self.after = after
        self.noise = noise
        self.rings = [LatentRing(buffer_size, codebook_dim) for _ in range(n_levels)]
        self.last_used: Optional[torch.Tensor] = None  # (n_levels, K) step of the last use
        self.revived_total = [0] * n_levels

    def observe(self, batch_counts: torch.Tensor, latents: Sequence[torch.Tensor], step: int) -> None:
        """Record one training batch: its code histogram ``(n_levels, K)`` and latents per level."""
        if self.last_used is None or self.last_used.device != batch_counts.device:
            self.last_used = torch.zeros_like(batch_counts)
        self.last_used = torch.where(batch_counts > 0, step, self.last_used)
        for ring, z_e in zip(self.rings, latents):
            ring.push(z_e)

    @torch.no_grad()
    def restart(self, step: int, codebooks: Sequence[nn.Embedding]) -> Dict[str, float]:
        """Re-seed every code idle since ``step - after`` or longer; returns ``codes_revived_<level>``.

        Under ``torch.distributed`` the last-use steps are max-reduced (a code used on any rank is
        alive) and the new rows are broadcast from rank 0, so all replicas keep identical codebooks.
        Every rank must call this at the same step.
        """
        device = codebooks[0].weight.device
        if self.last_used is None:
            self.last_used = torch.zeros(self.n_levels, self.codebook_size, dtype=torch.long, device=device)
        distributed = world_size() > 1
        if distributed:
            dist.all_reduce(self.last_used, op=dist.ReduceOp.MAX)
        dead = (step - self.last_used) >= self.after
        n_dead: List[int] = dead.sum(-1).tolist()  # the one sync of the check
        stats: Dict[str, float] = {}
        for level, (book, ring) in enumerate(zip(codebooks, self.rings)):
            revived = 0
            if n_dead[level] and ring.filled:
                rows = dead[level].nonzero().squeeze(1)
                new = ring.sample(rows.numel())
                jitter = torch.randn_like(new) * new.norm(dim=1, keepdim=True) / new.shape[1] ** 0.5
                book.weight[rows] = (new + self.noise * jitter).to(book.weight.dtype)
                if distributed:
                    dist.broadcast(book.weight.data, src=0)
                self.last_used[level, rows] = step
                revived = rows.numel()
            self.revived_total[level] += revived
            stats[f"codes_revived_{level}"] = float(revived)
        return stats
