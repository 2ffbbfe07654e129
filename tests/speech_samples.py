"""Speech test audio: utterances from the committed demo corpus when present, else synthetic speech.

The synthetic signal alternates voiced syllables (a glottal-like harmonic source with a moving
pitch, shaped by vowel formants) with fricative noise bursts and short pauses, so that PESQ's
voice-activity detection, STOI's silent-frame removal and the codec all see speech-like input.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
DEMO_CORPUS = REPO / "local" / "demo_corpus"
_AUDIO_EXT = (".wav", ".flac", ".ogg")

# (F1, F2, F3) in Hz for a few vowels
_VOWELS = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410)]


def demo_files() -> List[Path]:
    """Audio files of the demo corpus, sorted (empty when the corpus is absent)."""
    if not DEMO_CORPUS.is_dir():
        return []
    return sorted(p for p in DEMO_CORPUS.rglob("*") if p.suffix.lower() in _AUDIO_EXT and p.is_file())


def _formant_gain(freqs: np.ndarray, formants: Tuple[int, int, int]) -> np.ndarray:
    gain = np.zeros_like(freqs)
    for i, f in enumerate(formants):
        bw = 80.0 + 40.0 * i
        gain += (1.0 / (1 + i)) / (1.0 + ((freqs - f) / bw) ** 2)
    return gain


def synthetic_speech(sample_rate: int, seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """Speech-like mono float32 signal ``(T,)`` with peak about 0.5."""
    rng = np.random.default_rng(seed)
    n_total = int(seconds * sample_rate)
    out = np.zeros(n_total, dtype=np.float64)
    pos = int(0.1 * sample_rate)
    k = 0
    while pos < n_total - int(0.1 * sample_rate):
        if k % 3 == 2:  # fricative: high-passed noise burst
            n = int(rng.uniform(0.06, 0.12) * sample_rate)
            noise = rng.standard_normal(n)
            noise = np.diff(noise, prepend=0.0)  # tilt energy upwards
            seg = 0.15 * noise * np.hanning(n)
        else:  # voiced syllable
            n = int(rng.uniform(0.18, 0.32) * sample_rate)
            t = np.arange(n) / sample_rate
            f0 = rng.uniform(100, 200) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(1, 3) * t))
            phase = 2 * np.pi * np.cumsum(f0) / sample_rate
            formants = _VOWELS[rng.integers(len(_VOWELS))]
            seg = np.zeros(n)
            for h in range(1, int(min(sample_rate / 2, 4000) // 100)):
                fh = h * f0
                amp = _formant_gain(fh, formants) * (fh < sample_rate / 2)
                seg += amp * np.sin(h * phase)
            seg *= np.hanning(n) ** 0.5
            seg /= np.abs(seg).max() + 1e-9
            seg *= rng.uniform(0.3, 0.5)
        end = min(pos + n, n_total)
        out[pos:end] += seg[: end - pos]
        pos = end + int(rng.uniform(0.02, 0.12) * sample_rate)
        k += 1
    out += 1e-4 * rng.standard_normal(n_total)  # room noise floor
    out *= 0.5 / (np.abs(out).max() + 1e-9)
    return out.astype(np.float32)


def speech(sample_rate: int, seconds: float = 3.0, index: int = 0) -> np.ndarray:
    """Mono speech at ``sample_rate``: demo corpus utterance ``index`` if present, else synthetic."""
    files = demo_files()
    if files:
        from espnet_snac.io.audio_io import load_mono

        x, _ = load_mono(files[index % len(files)], sample_rate)
        n = int(seconds * sample_rate)
        return x[:n] if x.size >= n else np.pad(x, (0, n - x.size))
    return synthetic_speech(sample_rate, seconds, seed=index)


def load_speech(sample_rate: int, n: int = 3, split: str = "test") -> List[np.ndarray]:
    """``n`` utterances of real speech (mixed lengths) from the demo corpus at ``sample_rate``."""
    from espnet_snac.io.audio_io import load_mono

    files = sorted((DEMO_CORPUS / split).glob("*.flac"))
    if len(files) < n:
        pytest.skip(f"demo corpus {DEMO_CORPUS / split} has fewer than {n} files")
    return [load_mono(f, sample_rate)[0] for f in files[:n]]
