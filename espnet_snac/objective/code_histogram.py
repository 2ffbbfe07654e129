"""Per-level code histograms accumulated on the device, and the usage statistics derived from them."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of processes of an initialised ``torch.distributed`` group, else 1."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def code_counts(codes: Sequence[torch.Tensor], codebook_size: int) -> torch.Tensor:
    """Codes per level ``[(B, T_0), (B, T_1), ...]`` -> histogram ``(n_levels, codebook_size)`` int64.

    ``index_add_`` of ones rather than ``torch.bincount``, which on CUDA reads the largest code back to
    the host to size its output: this never synchronises.
    """
    index = torch.cat([c.reshape(-1) + level * codebook_size for level, c in enumerate(codes)])
    counts = torch.zeros(len(codes) * codebook_size, dtype=torch.long, device=index.device)
    counts.index_add_(0, index, torch.ones_like(index))
    return counts.view(len(codes), codebook_size)


class CodeHistogram:
    """Counts of every code of every level, ``(n_levels, codebook_size)`` int64, kept on the device.

    Adding never synchronises with the host; reading the statistics is one synchronisation.
    """

    def __init__(self, n_levels: int, codebook_size: int):
        self.n_levels = n_levels
        self.codebook_size = codebook_size
        self.counts: Optional[torch.Tensor] = None

    def zeros(self, device: torch.device) -> torch.Tensor:
        return torch.zeros(self.n_levels, self.codebook_size, dtype=torch.long, device=device)

    def add(self, codes: Sequence[torch.Tensor]) -> None:
        """Count ``codes`` (one ``(B, T_i)`` long tensor per level)."""
        self.add_counts(code_counts(codes, self.codebook_size))

    def add_counts(self, counts: torch.Tensor) -> None:
        """Add an ``(n_levels, codebook_size)`` histogram of the same layout."""
        if self.counts is None or self.counts.device != counts.device:
            self.counts = self.zeros(counts.device)
        self.counts += counts

    def reset(self) -> None:
        self.counts = None

    def summary(self, suffix: str, device: torch.device) -> Dict[str, float]:
        """``codes_used_<suffix>_<level>`` and ``perplexity_<suffix>_<level>`` for every level, then reset.

        Summed over all ranks first when ``torch.distributed`` is initialised, so every rank must call
        this at the same point. Empty (no code seen anywhere) -> ``{}``.
        """
        counts = self.counts if self.counts is not None else self.zeros(device)
        if world_size() > 1:
            dist.all_reduce(counts)
        used, perplexity, total = usage_statistics(counts)
        self.reset()
        values: List[List[float]] = torch.stack([used, perplexity, total]).tolist()  # the one sync
        if sum(values[2]) == 0:
            return {}
        stats: Dict[str, float] = {}
        for level in range(self.n_levels):
            stats[f"codes_used_{suffix}_{level}"] = values[0][level]
            stats[f"perplexity_{suffix}_{level}"] = values[1][level]
        return stats


def usage_statistics(counts: torch.Tensor):
    """``(n_levels, K)`` counts -> distinct codes used, perplexity ``exp(entropy)`` and total, each ``(n_levels,)``.

    Perplexity is the number of equally likely codes that would carry the same information: K for a
    uniform code distribution, 1 when a level always emits the same code.
    """
    counts = counts.double()
    total = counts.sum(-1)
    p = counts / total.clamp(min=1).unsqueeze(-1)
    entropy = -torch.special.xlogy(p, p).sum(-1)
    return (counts > 0).sum(-1).double(), entropy.exp(), total
