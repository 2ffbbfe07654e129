"""Per-level code histograms accumulated on the device, and the usage statistics derived from them."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of processes of an initialised ``torch.distributed`` group, else 1."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def flat_code_index(codes: Sequence[torch.Tensor], codebook_size: int) -> torch.Tensor:
    """Codes per level ``[(B, T_0), (B, T_1), ...]`` -> one index vector into ``(n_levels * K)`` bins."""
    return torch.cat([c.reshape(-1) + level * codebook_size for level, c in enumerate(codes)])


class CodeHistogram:
    """Counts of every code of every level, ``(n_levels, codebook_size)`` int64, kept on the device.

    ``add`` never synchronises with the host: it scatters ones with ``index_add_`` (``torch.bincount``
    on CUDA reads the maximum code back to size its output). Reading the statistics is one sync.
    """

    def __init__(self, n_levels: int, codebook_size: int):
        self.n_levels = n_levels
        self.codebook_size = codebook_size
        self.counts: Optional[torch.Tensor] = None

    def zeros(self, device: torch.device) -> torch.Tensor:
        return torch.zeros(self.n_levels, self.codebook_size, dtype=torch.long, device=device)

    def add(self, codes: Sequence[torch.Tensor]) -> None:
        """Count ``codes`` (one ``(B, T_i)`` long tensor per level)."""
        index = flat_code_index(codes, self.codebook_size)
        if self.counts is None or self.counts.device != index.device:
            self.counts = self.zeros(index.device)
        self.counts.view(-1).index_add_(0, index, torch.ones_like(index))

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
