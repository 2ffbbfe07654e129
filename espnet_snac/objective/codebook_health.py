"""Codebook health: code usage per level over a window of training steps and over each validation set.

A batch of 16 x 0.85 s holds at most 160 / 320 / 640 codes per level, so per-batch usage cannot tell a
healthy codebook of 4096 entries from a collapsed one. This tracker counts codes over ``window``
training steps (default 1000: 160k / 320k / 640k codes per level at the paper batch) and over a whole
validation pass, and reports for each level ``l``:

* ``codes_used_window_<l>`` / ``codes_used_valid_<l>``: distinct codes picked at least once;
* ``perplexity_window_<l>`` / ``perplexity_valid_<l>``: ``exp(entropy)`` of the code histogram;
* ``codes_revived_<l>``: codes re-seeded at a dead-code check (only with the restart on).

Histograms live on the device; the training hot path never synchronises with the host (one sync per
window, per validation pass and per dead-code check).
"""
from __future__ import annotations

import logging
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from espnet_snac.objective.code_histogram import CodeHistogram, code_counts, world_size
from espnet_snac.objective.dead_codes import DeadCodeRestart


class CodebookHealth:
    """Windowed and validation-set code statistics, plus the optional dead-code restart.

    Call :meth:`observe` with every generator output, :meth:`step_end` once per training iteration and
    :meth:`validation_start` / :meth:`validation_end` around each validation pass (on every rank).
    """

    def __init__(self, n_levels: int, codebook_size: int, window: int = 1000,
                 restart: Optional[DeadCodeRestart] = None):
        if window < 1:
            raise ValueError(f"health_window must be >= 1 training steps, got {window}")
        self.n_levels = n_levels
        self.codebook_size = codebook_size
        self.window = window
        self.restart = restart
        self.step = 0  # training iterations completed
        self.train_counts = CodeHistogram(n_levels, codebook_size)
        self.valid_counts = CodeHistogram(n_levels, codebook_size)
        self.validating = False

    @torch.no_grad()
    def observe(self, codes: Sequence[torch.Tensor], latents: Sequence[torch.Tensor], training: bool) -> None:
        """Count one batch's codes (``(B, T_l)`` per level) into the training window, or into the
        validation set between :meth:`validation_start` and :meth:`validation_end`."""
        if not training:
            if self.validating:
                self.valid_counts.add(codes)
            return
        if self.restart is None:
            self.train_counts.add(codes)
            return
        batch = code_counts(codes, self.codebook_size)
        self.train_counts.add_counts(batch)
        self.restart.observe(batch, latents, self.step + 1)

    def step_end(self, codebooks: Sequence[nn.Embedding]) -> Dict[str, float]:
        """End of one training iteration: window statistics when a window completes, dead-code restart
        when a check is due; ``{}`` on the other steps."""
        self.step += 1
        stats: Dict[str, float] = {}
        device = codebooks[0].weight.device
        if self.step % self.window == 0:
            counts = self.train_counts.counts  # codes per level in this window, for the collapse check
            emitted = counts.sum(-1).tolist() if counts is not None else []
            stats.update(self.train_counts.summary("window", device))
            self._warn_collapse(stats, emitted)
        if self.restart is not None and self.step % self.restart.after == 0:
            stats.update(self.restart.restart(self.step, codebooks))
        return stats

    def _warn_collapse(self, stats: Dict[str, float], emitted: Sequence[int]) -> None:
        """Log a warning when a level's window usage is below the collapse threshold shared with the
        recipe and ``extract_tokens`` (``espnet_snac.tokens.stats.collapse_verdict``)."""
        if not stats or len(emitted) != self.n_levels:
            return
        from espnet_snac.tokens.stats import CollapseVerdict

        ranks = world_size()  # this rank's counts; the window's statistics are summed over ranks
        verdict = CollapseVerdict(used=[int(stats[f"codes_used_window_{lv}"]) for lv in range(self.n_levels)],
                                  codes=[int(n) * ranks for n in emitted], codebook_size=self.codebook_size)
        if verdict.collapsed_levels:
            logging.warning("codebook collapse at step %d: %s over the last %d steps; level(s) %s below %.0f%% of "
                            "the codes they could use (see docs/tokens.md, Collapse)", self.step,
                            verdict.usage_line(), self.window, ", ".join(map(str, verdict.collapsed_levels)),
                            100 * verdict.share)

    def validation_start(self) -> None:
        self.valid_counts.reset()
        self.validating = True

    def validation_end(self, device: torch.device) -> Dict[str, float]:
        """Statistics of every code seen since :meth:`validation_start`."""
        self.validating = False
        return self.valid_counts.summary("valid", device)
