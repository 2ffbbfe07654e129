"""Reference points for the metrics (espnet_snac.scoring.anchors): each degradation does what it says, and
the scores order as the degradations do."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from espnet_snac.scoring.anchors import ANCHORS, degrade, score_anchors
from speech_samples import demo_files, synthetic_speech

RATE = 24000


def _speech(seconds: float = 2.5) -> np.ndarray:
    from espnet_snac.io.audio_io import load_mono

    files = demo_files()
    if files:
        return load_mono(files[0], RATE)[0][: int(seconds * RATE)].astype(np.float32)
    return synthetic_speech(RATE, seconds, seed=0)


def test_noise_anchor_has_its_snr_and_is_reproducible():
    x = _speech()
    for name, snr in (("noise_20db", 20.0), ("noise_10db", 10.0)):
        y = degrade(x, RATE, name, utt="u1")
        assert y.dtype == np.float32 and y.shape == x.shape
        measured = 10 * np.log10(np.sum(x.astype(np.float64) ** 2) / np.sum((y - x).astype(np.float64) ** 2))
        assert abs(measured - snr) < 0.3
        assert np.array_equal(y, degrade(x, RATE, name, utt="u1"))
        assert not np.array_equal(y, degrade(x, RATE, name, utt="u2"))


def test_lowpass_anchor_removes_the_band_above_the_cutoff():
    x = _speech()
    y = degrade(x, RATE, "lowpass_2khz")
    freqs = np.fft.rfftfreq(x.size, 1 / RATE)
    spec_x, spec_y = np.abs(np.fft.rfft(x)), np.abs(np.fft.rfft(y))
    high = freqs > 2100
    assert np.sum(spec_y[high] ** 2) < 1e-6 * np.sum(spec_x[high] ** 2)
    low = freqs < 1900
    assert np.allclose(spec_y[low], spec_x[low], rtol=1e-3, atol=1e-3 * spec_x.max())


def test_random_phase_anchor_keeps_the_spectrum_not_the_waveform():
    x = _speech()
    y = degrade(x, RATE, "random_phase", utt="u")
    # band energies (100 Hz - 6.4 kHz, octaves) in the same proportions, within 3 dB of one level
    # offset: overlap-adding frames of random phase changes the level, not the spectrum
    freqs = np.fft.rfftfreq(x.size, 1 / RATE)
    px = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    py = np.abs(np.fft.rfft(y.astype(np.float64))) ** 2
    edges = 100 * 2.0 ** np.arange(7)
    ratio_db = np.array([10 * np.log10(py[(freqs >= lo) & (freqs < hi)].sum() / px[(freqs >= lo) & (freqs < hi)].sum())
                         for lo, hi in zip(edges[:-1], edges[1:])])
    assert np.all(np.abs(ratio_db - np.median(ratio_db)) < 3), ratio_db
    assert np.corrcoef(x, y)[0, 1] < 0.2  # the waveform is gone


def test_unknown_anchor_is_named():
    with pytest.raises(ValueError, match="unknown anchor 'echo'"):
        degrade(np.zeros(100, np.float32), RATE, "echo")


def test_scores_order_as_the_degradations():
    x = _speech()
    scores = score_anchors({"a": x}, RATE)
    assert list(scores) == list(ANCHORS)
    for name, row in scores.items():
        assert row["num_failed"] == 0, name
        assert set(row) >= {"mel_distance", "stft_distance", "si_snr", "pesq_wb", "stoi"}
    assert scores["noise_20db"]["pesq_wb"] > scores["noise_10db"]["pesq_wb"]
    assert scores["noise_20db"]["si_snr"] > scores["noise_10db"]["si_snr"] + 5
    assert scores["noise_20db"]["stoi"] > scores["noise_10db"]["stoi"]
    # the envelope right, the waveform wrong
    assert scores["random_phase"]["mel_distance"] < 0.5 * scores["noise_10db"]["mel_distance"]
    assert scores["random_phase"]["si_snr"] < 0 < scores["noise_10db"]["si_snr"]
