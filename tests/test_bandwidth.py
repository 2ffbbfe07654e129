"""Data preparation measures the effective bandwidth and warns about upsampled narrow-band audio."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import soxr

from espnet_snac.bin.prepare_data import main as prepare_main
from espnet_snac.data.bandwidth import effective_bandwidth, summarize

FS = 24000


def _tilted_noise(sr: int, seconds: float, seed: int) -> np.ndarray:
    """Noise with a speech-like falling spectrum (about -6 dB per octave above 300 Hz), full band."""
    x = np.random.default_rng(seed).standard_normal(int(sr * seconds))
    spec = np.fft.rfft(x)
    spec /= 1 + np.fft.rfftfreq(len(x), 1 / sr) / 300
    x = np.fft.irfft(spec, n=len(x))
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def test_bandwidth_of_full_band_and_upsampled_audio():
    full = _tilted_noise(FS, 2.0, 0)
    assert effective_bandwidth(full, FS) > 11000
    narrow = soxr.resample(soxr.resample(full, FS, 16000), 16000, FS)
    assert 7000 < effective_bandwidth(narrow, FS) < 8100
    # Stored at 48 kHz, but only 8 kHz of content: measured at the input rate.
    assert effective_bandwidth(soxr.resample(narrow, FS, 48000), 48000) < 8100
    assert effective_bandwidth(np.zeros(100, np.float32), FS) is None


def test_summary_warns_only_for_narrow_band():
    assert summarize([11800.0] * 5, {"24000": 5}, FS)["warning"] is None
    assert summarize([11800.0] * 5, {"48000": 5}, FS)["warning"] is None
    record = summarize([7900.0] * 5, {"16000": 5}, FS)
    assert "5 of 5 utterances were upsampled" in record["warning"] and "7.9 kHz" in record["warning"]
    assert "7.9 kHz" in summarize([7900.0] * 5, {"44100": 5}, FS)["warning"]


@pytest.mark.parametrize("rate, narrow", [(16000, True), (24000, False)])
def test_prepare_data_records_and_prints_the_warning(tmp_path, capsys, rate, narrow):
    src = tmp_path / "corpus"
    src.mkdir()
    for i in range(3):
        sf.write(str(src / f"u{i}.flac"), _tilted_noise(rate, 1.0, i), rate)
    out = tmp_path / "out"
    assert prepare_main(["--source", f"folder:{src}", "--output_dir", str(out), "--no_progress"]) == 0
    record = json.loads((out / "summary.json").read_text())["bandwidth"]
    assert record["measured_utts"] == 3 and record["input_rates"] == {str(rate): 3}
    err = capsys.readouterr().err
    if narrow:
        assert record["median_hz"] == pytest.approx(8000, abs=100)
        assert "narrow-band audio" in record["warning"] and "narrow-band audio" in err
    else:
        assert record["median_hz"] > 11000 and record["warning"] is None and "narrow-band" not in err
