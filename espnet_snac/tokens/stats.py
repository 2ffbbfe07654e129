"""Codebook usage and perplexity per level over a whole token set."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np

from espnet_snac.frames import FRAME_ORDER


@dataclass
class CodebookStats:
    """Histogram of the raw codes of each level, accumulated over ``(frames, 7)`` arrays."""

    codebook_size: int = 4096
    n_levels: int = 3
    counts: List[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [np.zeros(self.codebook_size, np.int64) for _ in range(self.n_levels)]

    def add(self, frames: np.ndarray) -> None:
        """Count the codes of one utterance, ``frames (F, 7)``."""
        for level in range(self.n_levels):
            cols = [pos for pos, (lv, _) in enumerate(FRAME_ORDER) if lv == level]
            self.counts[level] += np.bincount(frames[:, cols].reshape(-1), minlength=self.codebook_size)

    def summary(self) -> List[Dict[str, float]]:
        """Per level: number of codes, codes used, usage fraction, perplexity (exp of the entropy of
        the code distribution, in codes: ``codebook_size`` when all codes are equally frequent)."""
        out = []
        for level, c in enumerate(self.counts):
            total = int(c.sum())
            p = c[c > 0] / max(total, 1)
            perplexity = float(np.exp(-(p * np.log(p)).sum())) if total else 0.0
            used = int((c > 0).sum())
            out.append(dict(level=level, codes=total, used=used, usage=used / self.codebook_size,
                            perplexity=perplexity))
        return out
