"""Effective audio bandwidth: is the 24 kHz output really full-band, or upsampled narrow-band audio?

A codec trained on 16 kHz speech resampled to 24 kHz never sees the 8-12 kHz band, and its
reconstructions of full-band speech lose it. The energy fraction of speech is no use for this (99%
of speech energy lies below ~3 kHz at any rate), so the bandwidth of an utterance is the highest
frequency at which its long-term power spectrum is within ``FLOOR_DB`` of its peak: resampling
leaves nothing there (soxr's stop band is >100 dB down), while full-band speech keeps fricative
energy up to the Nyquist frequency 30-60 dB below the peak. It is measured at the input rate, on a
sample of utterances (see ``pipeline.process_shard``), and summarised with the input rates of all
kept utterances in the data directory's ``summary.json``.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

FLOOR_DB = 60.0
FULL_BAND_FRACTION = 0.8  # the median bandwidth must reach 80% of the output Nyquist frequency


def effective_bandwidth(mono: np.ndarray, sr: int, floor_db: float = FLOOR_DB) -> Optional[float]:
    """``mono (T,)`` at ``sr`` -> the highest frequency (Hz) within ``floor_db`` of the spectral peak.

    Long-term spectrum: Hann frames of ~85 ms (half overlap), at most 200 frames spread over the
    utterance. None for utterances shorter than one frame.
    """
    n_fft = 1 << int(np.ceil(np.log2(0.085 * sr)))
    if mono.shape[0] < n_fft:
        return None
    hop = max(n_fft // 2, (mono.shape[0] - n_fft) // 199)
    # A strided view: only the (at most 200) selected frames are copied, also for hour-long files.
    frames = np.lib.stride_tricks.sliding_window_view(mono, n_fft)[::hop][:200].astype(np.float64)
    power = (np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)) ** 2).mean(axis=0)
    if power.max() <= 0:
        return None
    above = np.nonzero(power >= power.max() * 10 ** (-floor_db / 10))[0]
    return float(above[-1] * sr / n_fft)


def summarize(bandwidths: Sequence[float], input_rates: Mapping[str, int], fs: int) -> Dict[str, Any]:
    """The ``bandwidth`` record of ``summary.json``; ``warning`` is set for narrow-band data."""
    record: Dict[str, Any] = {
        "measured_utts": len(bandwidths),
        "median_hz": float(np.median(bandwidths)) if bandwidths else None,
        "p10_hz": float(np.percentile(bandwidths, 10)) if bandwidths else None,
        "input_rates": {str(k): int(v) for k, v in sorted(input_rates.items(), key=lambda kv: int(kv[0]))},
        "output_nyquist_hz": fs / 2,
        "warning": None,
    }
    kept = sum(input_rates.values())
    upsampled = sum(n for rate, n in input_rates.items() if int(rate) < fs)
    median = record["median_hz"]
    reasons = []
    if kept and upsampled * 2 > kept:
        rates = ", ".join(f"{r} Hz x {n}" for r, n in record["input_rates"].items() if int(r) < fs)
        reasons.append(f"{upsampled} of {kept} utterances were upsampled to {fs} Hz ({rates})")
    if median is not None and median < FULL_BAND_FRACTION * fs / 2:
        reasons.append(f"the median effective bandwidth is {median / 1000:.1f} kHz (of {len(bandwidths)} "
                       f"measured utterances, at their input rates) for a {fs / 2000:.0f} kHz output band")
    if reasons:
        record["warning"] = ("narrow-band audio: " + "; ".join(reasons) + ". A codec trained on it does not learn "
                             f"the band above {(median or fs / 2) / 1000:.0f} kHz; for a full-band model use "
                             "full-band data (e.g. --preset librittsr).")
    return record
