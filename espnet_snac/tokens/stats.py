"""Codebook usage and perplexity per level over a whole token set, and the collapse verdict.

A collapsed codec (a level that emits one or a handful of codes, or the same frame everywhere) still
decodes, scores and tokenizes without an error; :func:`collapse_verdict` is the one test of it that
recipe stages 5 and 6, ``extract_tokens``, ``local/make_results.py`` and the trainer's window
statistics share. A level counts as collapsed when it uses fewer distinct codes than
:data:`COLLAPSE_MIN_SHARE` of the codes it could have used (``min(codebook_size, codes emitted)``),
or a single code where it emitted several; the frames likewise (distinct 7-code frames against
frames). A trained SNAC uses most of its 4096 codes per level and hardly ever repeats a frame.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from espnet_snac.model.frames import FRAME_ORDER


@dataclass
class CodebookStats:
    """Histogram of the raw codes of each level, accumulated over ``(frames, 7)`` arrays."""

    codebook_size: int = 4096
    n_levels: int = 3
    counts: List[np.ndarray] = field(default_factory=list)
    frames: int = 0
    distinct: set = field(default_factory=set)  # frames seen (bytes), up to MAX_TRACKED_FRAMES

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [np.zeros(self.codebook_size, np.int64) for _ in range(self.n_levels)]

    def add(self, frames: np.ndarray) -> None:
        """Count the codes of one utterance, ``frames (F, 7)``."""
        for level in range(self.n_levels):
            cols = [pos for pos, (lv, _) in enumerate(FRAME_ORDER) if lv == level]
            self.counts[level] += np.bincount(frames[:, cols].reshape(-1), minlength=self.codebook_size)
        self.frames += int(frames.shape[0])
        if len(self.distinct) < MAX_TRACKED_FRAMES:  # past that, the set is far from collapsed anyway
            rows = np.ascontiguousarray(frames, dtype=np.int32)
            self.distinct.update(rows[i].tobytes() for i in range(rows.shape[0]))

    def summary(self) -> List[Dict[str, float]]:
        """Per level: number of codes, codes used, usage fraction, perplexity (exp of the entropy of
        the code distribution, in codes: ``codebook_size`` when all codes are equally frequent), and the
        whole set's ``frames`` and ``distinct_frames`` (the same in every level's entry)."""
        out = []
        for level, c in enumerate(self.counts):
            total = int(c.sum())
            p = c[c > 0] / max(total, 1)
            perplexity = float(np.exp(-(p * np.log(p)).sum())) if total else 0.0
            used = int((c > 0).sum())
            out.append(dict(level=level, codes=total, used=used, usage=used / self.codebook_size,
                            perplexity=perplexity, frames=self.frames, distinct_frames=len(self.distinct)))
        return out


#: Frames remembered for the distinct-frame count (enough to tell any collapse; bounded memory).
MAX_TRACKED_FRAMES = 200_000
#: Below this share of the codes a level could use (or of the frames, for distinct frames): collapsed.
COLLAPSE_MIN_SHARE = 0.10


@dataclass
class CollapseVerdict:
    """Distinct codes per level against what each could use, distinct frames against frames."""

    used: List[int]
    codes: List[int]
    codebook_size: int
    frames: Optional[int] = None
    distinct_frames: Optional[int] = None
    share: float = COLLAPSE_MIN_SHARE

    def _low(self, used: int, possible: int) -> bool:
        return possible > 1 and (used <= 1 or used < math.ceil(self.share * possible))

    @property
    def collapsed_levels(self) -> List[int]:
        return [lv for lv, (u, n) in enumerate(zip(self.used, self.codes))
                if self._low(u, min(self.codebook_size, n))]

    @property
    def frames_collapsed(self) -> bool:
        return self.frames is not None and self.distinct_frames is not None and self._low(self.distinct_frames,
                                                                                          self.frames)

    @property
    def collapsed(self) -> bool:
        return bool(self.collapsed_levels) or self.frames_collapsed

    def usage_line(self) -> str:
        """``codes in use per level: 1/5/9 of 4096; distinct frames: 1 of 230``."""
        line = f"codes in use per level: {'/'.join(map(str, self.used))} of {self.codebook_size}"
        if self.frames is not None:
            line += f"; distinct frames: {self.distinct_frames} of {self.frames}"
        return line

    def box(self, what: str) -> str:
        """The warning box (empty string when nothing collapsed); ``what`` names the model or set."""
        if not self.collapsed:
            return ""
        body = [f"WARNING: CODEBOOK COLLAPSE in {what}", self.usage_line()]
        if self.collapsed_levels:
            body.append(f"level(s) {', '.join(map(str, self.collapsed_levels))} use fewer than "
                        f"{self.share:.0%} of the codes they could use")
        if self.frames_collapsed:
            body.append(f"fewer than {self.share:.0%} of the frames are distinct (the same frame over and over)")
        body += ["the tokens carry little or nothing of the speech: train longer (--num_iters), check the",
                 "learning rate and the data, or use a trained model (see docs/tokens.md, Collapse)"]
        width = max(len(b) for b in body)
        rule = "!" * (width + 4)
        return "\n".join([rule] + [f"! {b.ljust(width)} !" for b in body] + [rule])


def collapse_verdict(levels: Sequence[Dict[str, float]], codebook_size: int = 4096,
                     share: float = COLLAPSE_MIN_SHARE) -> CollapseVerdict:
    """The verdict from :meth:`CodebookStats.summary` (or ``stats.json``'s ``levels``): per level
    ``used`` and ``codes``, optionally ``frames`` and ``distinct_frames``."""
    first = levels[0] if levels else {}
    frames = first.get("frames")
    return CollapseVerdict(used=[int(lv["used"]) for lv in levels], codes=[int(lv["codes"]) for lv in levels],
                           codebook_size=codebook_size, frames=None if frames is None else int(frames),
                           distinct_frames=None if frames is None else int(first.get("distinct_frames", 0)),
                           share=share)
