"""DAC's data pipeline on a batch of excerpts, on the training device.

``augment = BatchAugment(**augment_conf)``; once per iteration ``audio, stats = augment(audio)`` with
``audio (B, T)`` float. Each excerpt, independently:

1. non-finite excerpts (NaN/Inf samples) are dropped and counted;
2. excerpts quieter than ``min_loudness_db`` (DAC: -40) are dropped and counted (``quiet: drop``),
   replaced by copies of random loud excerpts of the same batch (``quiet: replace``: the batch keeps
   its size), or kept (``quiet: keep``);
3. loudness normalisation to ``target_loudness_db`` (DAC: -16), the gain reduced where needed so
   that the sample peak stays at or below ``peak_db`` (headroom: nothing clips);
4. random polarity: the sign is flipped with probability ``polarity_prob``.

Loudness is ITU-R BS.1770 K-weighted loudness without gating (excerpts are about two 400 ms gating
blocks long), computed in the frequency domain: the power spectrum weighted by the K filter's
magnitude response (Parseval), so a batch costs one ``rfft`` and no sequential filtering. A
full-scale 1 kHz sine measures -3.0 LUFS. The random draws use a CPU ``torch.Generator`` seeded with
``seed``: the same seed gives the same flips and replacements on any device.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch

QUIET_POLICIES = ("drop", "replace", "keep")


def k_weighting_coefficients(sampling_rate: int):
    """The two BS.1770 biquads (high shelf, high pass) at ``sampling_rate``: ``[(b, a), (b, a)]``.

    Designed from the filters' analogue parameters (as libebur128 does), so any rate works; at
    48 kHz they equal the coefficients printed in BS.1770.
    """
    # High shelf: about +4 dB above ~1.7 kHz (head acoustics).
    f0, gain_db, q = 1681.974450955533, 3.999843853973347, 0.7071752369554196
    k = math.tan(math.pi * f0 / sampling_rate)
    vh = 10 ** (gain_db / 20)
    vb = vh ** 0.4996667741545416
    a0 = 1 + k / q + k * k
    shelf = ([(vh + vb * k / q + k * k) / a0, 2 * (k * k - vh) / a0, (vh - vb * k / q + k * k) / a0],
             [1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0])
    # High pass at ~38 Hz (RLB weighting).
    f0, q = 38.13547087602444, 0.5003270373238773
    k = math.tan(math.pi * f0 / sampling_rate)
    a0 = 1 + k / q + k * k
    high_pass = ([1.0, -2.0, 1.0], [1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0])
    return [shelf, high_pass]


def _k_power_weights(num_samples: int, sampling_rate: int, device, dtype=torch.float64) -> torch.Tensor:
    """``(T // 2 + 1,)``: |H_K|^2 per rfft bin, times Parseval's factor (2 for the inner bins) / T^2."""
    n_bins = num_samples // 2 + 1
    w = torch.arange(n_bins, dtype=dtype) * (2 * math.pi / num_samples)
    z = torch.exp(-1j * w)  # z^-1 on the unit circle
    h = torch.ones(n_bins, dtype=torch.complex128)
    for b, a in k_weighting_coefficients(sampling_rate):
        h = h * (b[0] + b[1] * z + b[2] * z * z) / (a[0] + a[1] * z + a[2] * z * z)
    weight = h.abs() ** 2
    weight[1:] *= 2
    if num_samples % 2 == 0:
        weight[-1] /= 2  # the Nyquist bin appears once
    return (weight / num_samples ** 2).to(device=device, dtype=torch.float32)


_WEIGHTS: Dict[tuple, torch.Tensor] = {}  # one entry: training excerpts all have the same length


def loudness(audio: torch.Tensor, sampling_rate: int) -> torch.Tensor:
    """``audio (B, T)`` -> K-weighted loudness per excerpt ``(B,)`` in LUFS (dB); silence -> -120."""
    key = (audio.shape[-1], sampling_rate, audio.device)
    if key not in _WEIGHTS:
        _WEIGHTS.clear()
        _WEIGHTS[key] = _k_power_weights(audio.shape[-1], sampling_rate, audio.device)
    spec = torch.fft.rfft(audio.float(), dim=-1)
    power = (spec.real ** 2 + spec.imag ** 2) @ _WEIGHTS[key]
    return -0.691 + 10 * torch.log10(power.clamp(min=1e-12))


class BatchAugment:
    """Loudness normalisation with headroom, rejection of quiet excerpts and random polarity.

    Args:
        sampling_rate: of the audio (Hz); the K filter depends on it.
        normalize_loudness: scale each excerpt to ``target_loudness_db``.
        target_loudness_db: DAC: -16 LUFS.
        peak_db: headroom; the gain is lowered so that no sample exceeds this (dBFS).
        reject_quiet: apply ``quiet`` to excerpts below ``min_loudness_db`` (measured before scaling).
        min_loudness_db: DAC: -40 LUFS.
        quiet: ``drop`` (B shrinks, counted), ``replace`` (copies of random loud excerpts of the batch,
            B kept; drops only when none is loud) or ``keep``.
        random_polarity: flip the sign of an excerpt with probability ``polarity_prob``.
        seed: seed of the random draws.
    """

    def __init__(
        self,
        sampling_rate: int = 24000,
        normalize_loudness: bool = True,
        target_loudness_db: float = -16.0,
        peak_db: float = -1.0,
        reject_quiet: bool = True,
        min_loudness_db: float = -40.0,
        quiet: str = "drop",
        random_polarity: bool = True,
        polarity_prob: float = 0.5,
        seed: int = 0,
        **unknown: Any,
    ):
        from espnet_snac.objective.config_check import check_kwargs

        given = {k: v for k, v in locals().items() if k not in ("self", "unknown", "check_kwargs")}
        check_kwargs("augment_conf", {**given, **unknown}, BatchAugment)
        if quiet not in QUIET_POLICIES:
            raise ValueError(f"augment_conf.quiet must be one of {', '.join(QUIET_POLICIES)}, got {quiet!r}")
        if not 0.0 <= polarity_prob <= 1.0:
            raise ValueError(f"augment_conf.polarity_prob must be in [0, 1], got {polarity_prob}")
        if peak_db > 0:
            raise ValueError(f"augment_conf.peak_db must be <= 0 dBFS (headroom), got {peak_db}")
        if sampling_rate <= 0:
            raise ValueError(f"augment_conf.sampling_rate must be positive, got {sampling_rate}")
        self.sampling_rate = sampling_rate
        self.normalize_loudness = normalize_loudness
        self.target_loudness_db = float(target_loudness_db)
        self.peak_db = float(peak_db)
        self.reject_quiet = reject_quiet
        self.min_loudness_db = float(min_loudness_db)
        self.quiet = quiet
        self.random_polarity = random_polarity
        self.polarity_prob = float(polarity_prob)
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def enabled(self) -> bool:
        return self.normalize_loudness or (self.reject_quiet and self.quiet != "keep") or self.random_polarity

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """The random state, to resume with the same draws."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])

    @torch.no_grad()
    def __call__(self, audio: torch.Tensor,
                 generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, Dict[str, float]]:
        """``audio (B, T)`` -> ``(B', T)`` and stats; B' < B when excerpts are dropped (B' may be 0).

        The random draws come from ``generator`` when given (on any device), else from the
        augmenter's own CPU generator (seeded with ``seed``)."""
        if audio.dim() != 2:
            raise ValueError(f"BatchAugment expects audio (B, T), got shape {tuple(audio.shape)}")
        if not self.enabled or audio.shape[0] == 0:
            return audio, {}
        batch = audio.shape[0]
        device = audio.device
        gen = generator or self.generator

        def draw_uniform() -> torch.Tensor:
            return torch.rand(batch, generator=gen, device=gen.device).to(device)

        finite = torch.isfinite(audio).all(dim=1)
        clean = torch.where(finite[:, None], audio, torch.zeros_like(audio))
        measure = self.normalize_loudness or (self.reject_quiet and self.quiet != "keep")
        level = loudness(clean, self.sampling_rate) if measure else torch.zeros(batch, device=device)
        keep = finite
        quiet = torch.zeros_like(finite)
        if self.reject_quiet and self.quiet != "keep":
            quiet = finite & (level < self.min_loudness_db)
            keep = finite & ~quiet
        gain_db = torch.zeros_like(level)
        limited = torch.zeros_like(finite)
        if self.normalize_loudness:
            peak_db = 20 * torch.log10(clean.abs().amax(dim=1).clamp(min=1e-12))
            gain_db = self.target_loudness_db - level
            headroom = self.peak_db - peak_db
            limited = gain_db > headroom
            gain_db = torch.minimum(gain_db, headroom)
        scale = torch.pow(10.0, gain_db / 20)
        flipped = torch.zeros_like(finite)
        if self.random_polarity:
            flipped = draw_uniform() < self.polarity_prob
            scale = torch.where(flipped, -scale, scale)
        # Row indices of the output; "replace" fills the rejected rows with random kept ones.
        draw = draw_uniform() if self.quiet == "replace" else None
        out = clean * scale[:, None].to(audio.dtype)
        keep_f = keep.float()
        # One host synchronisation for all statistics and the kept count.
        summary = torch.stack([
            keep_f.sum(), (~finite).float().sum(), quiet.float().sum(),
            (torch.where(keep, level, 0.0)).sum(), (gain_db * keep_f).sum(), (limited & keep).float().sum(),
            (flipped & keep).float().sum(),
        ]).tolist()
        n_keep, n_nonfinite, n_quiet, level_sum, gain_sum, n_limited, n_flipped = summary
        n_keep = int(n_keep)
        stats = {"augment_nonfinite": n_nonfinite, "augment_quiet": n_quiet}
        if n_keep and measure:
            stats.update(augment_loudness_in=level_sum / n_keep, augment_gain_db=gain_sum / n_keep,
                         augment_peak_limited=n_limited / n_keep)
        if n_keep and self.random_polarity:
            stats["augment_polarity_flipped"] = n_flipped / n_keep
        if n_keep == batch:
            stats["augment_dropped"] = 0.0
            return out, stats
        kept_rows = keep.nonzero().squeeze(1)
        if draw is not None and n_keep:
            # Each rejected row takes a random kept row (the order of the batch is kept).
            pick = kept_rows[(draw * n_keep).long().clamp(max=n_keep - 1)]
            rows = torch.where(keep, torch.arange(batch, device=device), pick)
            stats["augment_replaced"] = float(batch - n_keep)
            stats["augment_dropped"] = 0.0
            return out[rows], stats
        stats["augment_dropped"] = float(batch - n_keep)
        return out[kept_rows], stats
