"""Metrics (espnet_snac.scoring.metrics) and the scoring script (espnet_snac.bin.score)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.signal import butter, sosfiltfilt

from espnet_snac.scoring import metrics
from espnet_snac.bin import score
from speech_samples import speech

pytestmark = pytest.mark.usefixtures("one_thread")
SR = 16000


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return speech(SR, seconds=3.0, index=0)


def add_noise(x: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(x.size)
    noise *= math.sqrt(np.mean(x.astype(np.float64) ** 2) / np.mean(noise ** 2) / 10 ** (snr_db / 10))
    return (x + noise).astype(np.float32)


def low_pass(x: np.ndarray, cutoff: float, sr: int) -> np.ndarray:
    return sosfiltfilt(butter(8, cutoff, fs=sr, output="sos"), x).astype(np.float32)


@pytest.fixture(scope="module")
def scores(clean):
    return {
        "identical": metrics.compute_all(clean, clean.copy(), SR),
        "noise_10db": metrics.compute_all(clean, add_noise(clean, 10.0), SR),
        "lowpass_4k": metrics.compute_all(clean, low_pass(clean, 4000, SR), SR),
    }


def test_identical_signals_score_perfectly(scores):
    s = scores["identical"]
    assert s["pesq_wb"] >= 4.5
    assert s["stoi"] >= 0.999
    assert s["mel_distance"] == 0.0
    assert s["stft_distance"] == 0.0
    assert s["si_snr"] > 100.0


@pytest.mark.parametrize("degradation", ["noise_10db", "lowpass_4k"])
def test_degradations_rank_below_identical_on_every_metric(scores, degradation):
    best, worse = scores["identical"], scores[degradation]
    for name in metrics.METRIC_NAMES:
        if metrics.HIGHER_IS_BETTER[name]:
            assert worse[name] < best[name], name
        else:
            assert worse[name] > best[name], name


def test_noise_hurts_more_than_lowpass_on_snr_and_pesq(scores):
    # white noise at 10 dB is audibly worse than losing 4-8 kHz of speech
    assert scores["noise_10db"]["pesq_wb"] < scores["lowpass_4k"]["pesq_wb"]
    assert scores["noise_10db"]["si_snr"] == pytest.approx(10.0, abs=0.3)


def test_si_snr_is_scale_invariant_and_matches_closed_formula(clean):
    noisy = add_noise(clean, 5.0, seed=3)
    value = metrics.si_snr(clean, noisy)
    assert value == pytest.approx(metrics.si_snr(clean, 0.3 * noisy), abs=1e-6)
    direct = metrics._si_snr_formula(torch.from_numpy(clean), torch.from_numpy(noisy), eps=1e-12)
    assert value == pytest.approx(direct, abs=1e-4)
    assert value == pytest.approx(5.0, abs=0.3)


def test_gain_change_is_a_log_offset_in_mel_distance(clean):
    # doubling the gain shifts every unclamped log-mel bin by log10(2): 7 scales x log10(2) at most,
    # a little less where near-silent bins sit at the 1e-5 floor in both signals
    value = metrics.mel_distance(clean, 2 * clean, SR)
    assert 0.8 * 7 * math.log10(2) < value <= 7 * math.log10(2) + 1e-4
    assert metrics.stft_distance(clean, 2 * clean) > 0.5


def test_mismatched_lengths_and_bad_shapes_are_refused(clean):
    with pytest.raises(metrics.MetricError, match="length"):
        metrics.mel_distance(clean, clean[:-1], SR)
    with pytest.raises(metrics.MetricError, match="1-D"):
        metrics.stft_distance(np.stack([clean, clean]), np.stack([clean, clean]))


def test_unscorable_signals_raise_metric_error(clean):
    silence = np.zeros(SR * 2, dtype=np.float32)
    with pytest.raises(metrics.MetricError, match="pesq_wb|si_snr"):
        metrics.compute_all(silence, silence, SR)
    with pytest.raises(metrics.MetricError, match="STOI"):
        metrics.stoi(clean[: SR // 10], clean[: SR // 10], SR)


def test_metrics_at_other_rates(clean):
    x24 = speech(24000, seconds=2.0, index=1)
    s = metrics.compute_all(x24, x24, 24000)
    assert s["pesq_wb"] >= 4.5 and s["stoi"] >= 0.999 and s["mel_distance"] == 0.0


# ------------------------------------------------------------------------------------ score CLI
@pytest.fixture(scope="module")
def scoring_setup(tmp_path_factory, clean):
    import kaldiio

    d = tmp_path_factory.mktemp("score")
    ref_lines, hyp_lines = [], []
    utts = {
        "utt_same": (clean, clean),
        "utt_noisy": (speech(SR, 2.5, index=1), None),
        "utt_lowpass": (speech(SR, 2.5, index=2), None),
    }
    utts["utt_noisy"] = (utts["utt_noisy"][0], add_noise(utts["utt_noisy"][0], 10.0))
    utts["utt_lowpass"] = (utts["utt_lowpass"][0], low_pass(utts["utt_lowpass"][0], 4000, SR))
    for utt, (ref, hyp) in utts.items():
        sf.write(d / f"{utt}_ref.flac", ref, SR)
        ref_lines.append(f"{utt} {d / f'{utt}_ref.flac'}")
    # the identical hypothesis comes from a Kaldi ark (int16 wav), the noisy one at 24 kHz and longer
    with kaldiio.WriteHelper(f"ark,scp:{d / 'hyp.ark'},{d / 'hyp_ark.scp'}") as writer:
        writer["utt_same"] = (SR, (np.clip(clean, -1, 1) * 32767).astype(np.int16))
    hyp_lines.append((d / "hyp_ark.scp").read_text().strip())
    from espnet_snac.io.audio_io import resample

    noisy24 = np.concatenate([resample(utts["utt_noisy"][1], SR, 24000), np.zeros(480, np.float32)])
    sf.write(d / "utt_noisy_hyp.wav", noisy24, 24000)
    hyp_lines.append(f"utt_noisy {d / 'utt_noisy_hyp.wav'}")
    sf.write(d / "utt_lowpass_hyp.wav", np.stack([utts["utt_lowpass"][1]] * 2, axis=1), SR)  # stereo
    hyp_lines.append(f"utt_lowpass {d / 'utt_lowpass_hyp.wav'}")
    # failures: a missing file, a corrupt file, and an id only in the hypothesis list
    sf.write(d / "utt_missing_ref.wav", clean, SR)
    ref_lines.append(f"utt_missing {d / 'utt_missing_ref.wav'}")
    hyp_lines.append(f"utt_missing {d / 'does_not_exist.wav'}")
    sf.write(d / "utt_broken_ref.wav", clean, SR)
    (d / "utt_broken_hyp.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    ref_lines.append(f"utt_broken {d / 'utt_broken_ref.wav'}")
    hyp_lines.append(f"utt_broken {d / 'utt_broken_hyp.wav'}")
    hyp_lines.append(f"utt_extra {d / 'utt_noisy_hyp.wav'}")
    (d / "ref.scp").write_text("\n".join(ref_lines) + "\n")
    (d / "hyp.scp").write_text("\n".join(hyp_lines) + "\n")
    out = d / "out"
    rc = score.main(["--ref_scp", str(d / "ref.scp"), "--hyp_scp", str(d / "hyp.scp"), "--output_dir", str(out)])
    return out, rc


def _read_tsv(path):
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:]]


def test_score_cli_writes_all_reports_and_counts_failures(scoring_setup):
    out, rc = scoring_setup
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    # ViSQOL's keys come with visqol-python (tests/test_visqol.py)
    assert set(results) - {"visqol", "visqol_setting", "visqol_mode"} == {"mel_distance", "stft_distance", "si_snr", "pesq_wb",
                                                            "stoi", "num_utts", "num_failed"}
    assert results["num_utts"] == 6 and results["num_failed"] == 3
    rows = {r["utt_id"]: r for r in _read_tsv(out / "utt_results.tsv")}
    assert list(rows) == ["utt_same", "utt_noisy", "utt_lowpass", "utt_missing", "utt_broken", "utt_extra"]
    assert [rows[u]["status"] for u in rows] == ["ok"] * 3 + ["failed"] * 3
    assert "no such file" in rows["utt_missing"]["error"]
    assert "cannot decode" in rows["utt_broken"]["error"]
    assert rows["utt_extra"]["error"] == "missing in ref_scp"
    ok = [rows[u] for u in ("utt_same", "utt_noisy", "utt_lowpass")]
    for name in metrics.METRIC_NAMES:
        assert results[name] == pytest.approx(np.mean([float(r[name]) for r in ok]), rel=1e-4)
    md = (out / "results.md").read_text()
    assert "| pesq_wb | higher |" in md and "utt_broken" in md


def test_score_cli_per_utterance_values_rank_as_expected(scoring_setup):
    out, _ = scoring_setup
    rows = {r["utt_id"]: r for r in _read_tsv(out / "utt_results.tsv")}
    same, noisy, lowpass = rows["utt_same"], rows["utt_noisy"], rows["utt_lowpass"]
    assert float(same["pesq_wb"]) >= 4.5 and float(same["stoi"]) >= 0.999
    assert float(same["mel_distance"]) < 0.05  # int16 quantisation of the ark copy
    assert int(noisy["length_diff"]) == 480 * SR // 24000  # resampled to the reference rate, then trimmed
    for r in (noisy, lowpass):
        assert float(r["pesq_wb"]) < float(same["pesq_wb"])
        assert float(r["mel_distance"]) > float(same["mel_distance"])


def test_score_cli_parallel_jobs_match_serial(scoring_setup, tmp_path):
    out, _ = scoring_setup
    d = out.parent
    rc = score.main(["--ref_scp", str(d / "ref.scp"), "--hyp_scp", str(d / "hyp.scp"),
                     "--output_dir", str(tmp_path), "--nj", "2"])
    assert rc == 0
    assert json.loads((tmp_path / "results.json").read_text()) == pytest.approx(
        json.loads((out / "results.json").read_text()))


def test_score_cli_plots(scoring_setup, tmp_path):
    pytest.importorskip("matplotlib")
    d = scoring_setup[0].parent
    score.main(["--ref_scp", str(d / "ref.scp"), "--hyp_scp", str(d / "hyp.scp"), "--output_dir", str(tmp_path),
                "--plot_spectrograms", "2", "--plot_histogram"])
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pngs == ["metrics_hist.png", "spec_utt_noisy.png", "spec_utt_same.png"]


def test_score_cli_all_failed_returns_error(tmp_path):
    (tmp_path / "ref.scp").write_text(f"a {tmp_path / 'nope.wav'}\n")
    (tmp_path / "hyp.scp").write_text(f"a {tmp_path / 'nope.wav'}\n")
    assert score.main(["--ref_scp", str(tmp_path / "ref.scp"), "--hyp_scp", str(tmp_path / "hyp.scp"),
                       "--output_dir", str(tmp_path / "out")]) == 1
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["num_utts"] == 1 and results["num_failed"] == 1 and results["pesq_wb"] is None


def test_malformed_scp_is_refused(tmp_path, capsys):
    (tmp_path / "ref.scp").write_text("only_an_id\n")
    (tmp_path / "hyp.scp").write_text("")
    assert score.main(["--ref_scp", str(tmp_path / "ref.scp"), "--hyp_scp", str(tmp_path / "hyp.scp"),
                       "--output_dir", str(tmp_path / "out")]) == 1
    assert "ref.scp:1" in capsys.readouterr().err


def test_mel_distance_equals_the_training_mel_loss(clean):
    # the score is comparable with the (unweighted) mel_loss logged during training
    from espnet_snac.objective.losses import MultiScaleMelLoss

    noisy = add_noise(clean, 20.0, seed=5)
    loss = MultiScaleMelLoss(sampling_rate=SR)(torch.from_numpy(noisy).view(1, 1, -1),
                                               torch.from_numpy(clean).view(1, 1, -1))
    assert metrics.mel_distance(clean, noisy, SR) == pytest.approx(loss.item(), rel=1e-4)
