"""Reference points for the reconstruction metrics: a test set's own speech, degraded in known ways.

A PESQ of 1.05 or a mel distance of 3 means little on its own. Scored on the same utterances, known
degradations say where such numbers sit: white noise at a given SNR, a low-pass filter, and the
exact STFT magnitude with random phase (the envelope right, the waveform wrong: what a codec that has
only learnt spectra produces). ``local/make_results.py --anchors`` puts them in RESULTS.md.
"""
from __future__ import annotations

import math
import zlib
from typing import Callable, Dict, Mapping, Optional

import numpy as np
import torch

#: name -> description, in table order
ANCHORS: Dict[str, str] = {
    "noise_20db": "white noise added at 20 dB SNR",
    "noise_10db": "white noise added at 10 dB SNR",
    "lowpass_2khz": "low-pass at 2 kHz (ideal filter)",
    "random_phase": "exact STFT magnitude, random phase (512-point frames, hop 128)",
}


def _rng(utt: str, name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(f"{utt}/{name}".encode()))


def _noise(snr_db: float) -> Callable[[np.ndarray, int, np.random.Generator], np.ndarray]:
    def add(x: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
        power = float(np.mean(x.astype(np.float64) ** 2))
        return x + rng.standard_normal(x.size) * math.sqrt(power / 10 ** (snr_db / 10))
    return add


def _lowpass(cutoff: float) -> Callable[[np.ndarray, int, np.random.Generator], np.ndarray]:
    def filt(x: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
        spec = np.fft.rfft(x.astype(np.float64))
        spec[np.fft.rfftfreq(x.size, 1.0 / rate) > cutoff] = 0
        return np.fft.irfft(spec, n=x.size)
    return filt


def _random_phase(x: np.ndarray, rate: int, rng: np.random.Generator, n_fft: int = 512) -> np.ndarray:
    window = torch.hann_window(n_fft, dtype=torch.float64)
    spec = torch.stft(torch.from_numpy(x.astype(np.float64)), n_fft, n_fft // 4, window=window,
                      return_complex=True)
    phase = torch.from_numpy(rng.uniform(0, 2 * math.pi, tuple(spec.shape)))
    return torch.istft(torch.polar(spec.abs(), phase), n_fft, n_fft // 4, window=window, length=x.size).numpy()


_MAKERS = {"noise_20db": _noise(20.0), "noise_10db": _noise(10.0), "lowpass_2khz": _lowpass(2000.0),
           "random_phase": _random_phase}


def degrade(x: np.ndarray, rate: int, name: str, utt: str = "") -> np.ndarray:
    """``x`` (mono) degraded by anchor ``name``; random parts are seeded by ``(utt, name)``."""
    if name not in _MAKERS:
        raise ValueError(f"unknown anchor {name!r}; choose from {list(ANCHORS)}")
    return _MAKERS[name](np.asarray(x), rate, _rng(utt, name)).astype(np.float32)


def score_anchors(utts: Mapping[str, np.ndarray], rate: int,
                  visqol_mode: Optional[str] = None) -> Dict[str, Dict[str, object]]:
    """``{anchor: {metric: mean, "num_utts": n, "num_failed": k}}`` (:func:`espnet_snac.scoring.metrics.mean_scores`;
    ``visqol_mode`` adds ViSQOL)."""
    from espnet_snac.scoring.metrics import mean_scores

    return {name: mean_scores(((utt, x, degrade(x, rate, name, utt)) for utt, x in utts.items()), rate,
                              visqol_mode=visqol_mode)
            for name in ANCHORS}
