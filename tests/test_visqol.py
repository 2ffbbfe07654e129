"""ViSQOL (espnet_snac.scoring.visqol_metric) and its place in espnet_snac.bin.score, on real speech."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from espnet_snac.scoring import visqol_metric

# not pytest.importorskip("visqol"): a plain import leaves NUMBA_THREADING_LAYER set for the whole run
if not visqol_metric.available():
    pytest.skip("could not import 'visqol' (pip install 'espnet-snac[visqol]')", allow_module_level=True)

from espnet_snac.bin import score  # noqa: E402
from espnet_snac.scoring.metrics import MetricError  # noqa: E402
from speech_samples import load_speech  # noqa: E402

SR = 24000


def with_noise(x: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(x.size).astype(np.float32)
    noise *= np.sqrt(np.mean(x**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    return (x + noise).astype(np.float32)


@pytest.fixture(scope="module")
def utts():
    return load_speech(SR, n=2)


def test_identity_is_at_the_top_of_the_scale_and_noise_ranks_below(utts):
    for x in utts:
        same = visqol_metric.visqol(x, x.copy(), SR)
        light = visqol_metric.visqol(x, with_noise(x, 30.0), SR)
        heavy = visqol_metric.visqol(x, with_noise(x, 5.0), SR)
        assert same > 4.7  # audio mode's SVR ceiling is about 4.73
        assert same > light > heavy >= 1.0, (same, light, heavy)


def test_speech_mode_with_the_lattice_model(utts):
    if not visqol_metric.lattice_available():
        pytest.skip("visqol-python[lattice] (ai-edge-litert) not installed")
    x = utts[0]
    same = visqol_metric.visqol(x, x.copy(), SR, mode="speech")
    noisy = visqol_metric.visqol(x, with_noise(x, 5.0), SR, mode="speech")
    assert same > 4.3 and noisy < same - 1.0


def test_unscorable_pairs_raise_metric_errors(utts):
    with pytest.raises(MetricError, match="too short"):
        visqol_metric.visqol(utts[0][:2400], utts[0][:2400], SR)
    with pytest.raises(MetricError, match="silent"):
        visqol_metric.visqol(np.zeros(SR), np.zeros(SR), SR)
    with pytest.raises(MetricError, match="mode"):
        visqol_metric.visqol(utts[0], utts[0], SR, mode="music")


def test_score_cli_reports_visqol(utts, tmp_path):
    ref_lines, hyp_lines = [], []
    pairs = {"same": (utts[0], utts[0]), "noisy": (utts[1], with_noise(utts[1], 5.0)),
             "short": (utts[0][:4000], utts[0][:4000])}
    for utt, (ref, hyp) in pairs.items():
        sf.write(tmp_path / f"{utt}_ref.wav", ref, SR)
        sf.write(tmp_path / f"{utt}_hyp.wav", hyp, SR)
        ref_lines.append(f"{utt} {tmp_path / f'{utt}_ref.wav'}")
        hyp_lines.append(f"{utt} {tmp_path / f'{utt}_hyp.wav'}")
    (tmp_path / "ref.scp").write_text("\n".join(ref_lines) + "\n")
    (tmp_path / "hyp.scp").write_text("\n".join(hyp_lines) + "\n")
    args = ["--ref_scp", str(tmp_path / "ref.scp"), "--hyp_scp", str(tmp_path / "hyp.scp")]
    assert score.main(args + ["--output_dir", str(tmp_path / "on"), "--visqol", "true"]) == 0
    results = json.loads((tmp_path / "on" / "results.json").read_text())
    assert results["num_utts"] == 3 and results["num_failed"] == 1  # the 0.17 s pair cannot be scored
    assert "audio mode at 48000 Hz" in results["visqol_setting"]
    header, *rows = [line.split("\t") for line in (tmp_path / "on" / "utt_results.tsv").read_text().splitlines()]
    table = {r[0]: dict(zip(header, r)) for r in rows}
    assert float(table["same"]["visqol"]) > 4.7 > float(table["noisy"]["visqol"])
    assert table["short"]["status"] == "failed" and table["short"]["error"]  # PESQ refuses it first
    assert results["visqol"] == pytest.approx(np.mean([float(table[u]["visqol"]) for u in ("same", "noisy")]),
                                              rel=1e-4)
    md = (tmp_path / "on" / "results.md").read_text()
    assert "| visqol | higher |" in md and "ViSQOL: visqol-python, audio mode" in md
    assert score.main(args + ["--output_dir", str(tmp_path / "off"), "--visqol", "false"]) == 0
    assert "visqol" not in json.loads((tmp_path / "off" / "results.json").read_text())


# The scorer in a fresh interpreter whose own thread first runs numba parallel code (numba's OpenMP
# layer where it exists, as librosa/ViSQOL code paths do in a long program), then scores with --nj 2:
# forked workers that run ViSQOL's parallel code then abort ("fork() called from a process already
# using GNU OpenMP") and the pool breaks.
_PARENT_USED_NUMBA = """
import json, sys
import numba
import numpy as np


@numba.njit(parallel=True)
def total(x):
    s = 0.0
    for i in numba.prange(x.size):
        s += x[i]
    return s


if __name__ == "__main__":  # the worker pool's start-up may import this file again
    assert total(np.ones(1000)) == 1000.0
    from espnet_snac.bin import score
    rc = score.main(sys.argv[1:])
    print(json.dumps({"layer": numba.threading_layer(), "rc": rc}))
"""


def test_parallel_scoring_after_the_parent_ran_numba_parallel_code(utts, tmp_path):
    import os
    import subprocess
    import sys

    pairs = {"noisy": (utts[1], with_noise(utts[1], 5.0)), "same": (utts[0], utts[0])}
    ref_lines, hyp_lines = [], []
    for utt, (ref, hyp) in pairs.items():
        sf.write(tmp_path / f"{utt}_ref.wav", ref, SR)
        sf.write(tmp_path / f"{utt}_hyp.wav", hyp, SR)
        ref_lines.append(f"{utt} {tmp_path / f'{utt}_ref.wav'}")
        hyp_lines.append(f"{utt} {tmp_path / f'{utt}_hyp.wav'}")
    sf.write(tmp_path / "broken_ref.wav", utts[0], SR)
    (tmp_path / "broken_hyp.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    ref_lines.append(f"broken {tmp_path / 'broken_ref.wav'}")
    hyp_lines.append(f"broken {tmp_path / 'broken_hyp.wav'}")
    (tmp_path / "ref.scp").write_text("\n".join(ref_lines) + "\n")
    (tmp_path / "hyp.scp").write_text("\n".join(hyp_lines) + "\n")
    script = tmp_path / "parent.py"
    script.write_text(_PARENT_USED_NUMBA)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}  # numba's default layer
    args = ["--ref_scp", str(tmp_path / "ref.scp"), "--hyp_scp", str(tmp_path / "hyp.scp"), "--visqol", "true"]
    proc = subprocess.run([sys.executable, str(script), *args, "--output_dir", str(tmp_path / "nj2"), "--nj", "2"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fork() called" not in proc.stderr
    print("numba threading layer of the parent:", json.loads(proc.stdout.splitlines()[-1])["layer"])

    # the same rows, in input order, as scoring in this process one by one; the failure names the file
    rows = {r["utt_id"]: r for r in score.score_all(score.build_jobs(score.read_scp(str(tmp_path / "ref.scp")),
                                                                     score.read_scp(str(tmp_path / "hyp.scp"))),
                                                    nj=1, visqol_mode="audio")}
    header, *lines = [line.split("\t") for line in (tmp_path / "nj2" / "utt_results.tsv").read_text().splitlines()]
    table = [dict(zip(header, line)) for line in lines]
    assert [r["utt_id"] for r in table] == ["noisy", "same", "broken"]
    assert [r["status"] for r in table] == ["ok", "ok", "failed"]
    assert f"broken [hyp] ({tmp_path / 'broken_hyp.wav'}): cannot decode" in table[2]["error"]
    assert table[2]["error"] == rows["broken"]["error"]
    for r in table[:2]:
        for name in score.metric_names("audio"):
            assert float(r[name]) == pytest.approx(rows[r["utt_id"]][name], rel=1e-4, abs=1e-4), (r["utt_id"], name)


def test_mean_scores_and_reference_points_report_visqol(utts):
    from espnet_snac.scoring.anchors import ANCHORS, score_anchors
    from espnet_snac.scoring.metrics import mean_scores

    identity = mean_scores([(f"u{i}", x, x.copy()) for i, x in enumerate(utts)], SR, visqol_mode="audio")
    assert identity["num_failed"] == 0 and identity["visqol"] > 4.7  # the top of audio mode's scale
    anchors = score_anchors({f"u{i}": x for i, x in enumerate(utts)}, SR, visqol_mode="audio")
    assert set(anchors) == set(ANCHORS)
    for name, row in anchors.items():
        assert row["num_failed"] == 0 and 1.0 <= row["visqol"] < identity["visqol"], (name, row)
    assert anchors["noise_20db"]["visqol"] > anchors["noise_10db"]["visqol"]
    assert "visqol" not in mean_scores([("u0", utts[0], utts[0])], SR)  # without a mode, as before


def _results_rows(text: str, heading: str) -> list:
    section = text.split(heading)[1].split("\n## ")[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| test |")]


def test_results_md_reports_visqol_in_every_scored_table(utts, tmp_path):
    """local/make_results.py: the untrained-model and reference-point rows get ViSQOL in the mode of the
    test set's results.json (they showed n/a)."""
    import importlib.util

    from speech_samples import REPO
    from tiny_training import write_untrained_experiment

    spec = importlib.util.spec_from_file_location("make_results", REPO / "local" / "make_results.py")
    make_results = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_results)
    exp = write_untrained_experiment(tmp_path / "exp")
    lines = []
    for i, x in enumerate(utts):
        sf.write(tmp_path / f"u{i}.wav", x, SR)
        lines.append(f"u{i} {tmp_path / f'u{i}.wav'}")
    (tmp_path / "wav.scp").write_text("\n".join(lines) + "\n")
    scoring = tmp_path / "scoring"
    scoring.mkdir()
    results = {"num_utts": 2, "num_failed": 0, "mel_distance": 1.5, "stft_distance": 1.0, "si_snr": 3.0,
               "pesq_wb": 2.5, "stoi": 0.9, "visqol": 3.25, "visqol_mode": "audio",
               "visqol_setting": visqol_metric.describe("audio")[1]}
    (scoring / "results.json").write_text(json.dumps(results))
    scp = tmp_path / "wav.scp"
    rc = make_results.main(["--exp_dir", str(exp), "--model_file", str(exp / "latest.pth"),
                            "--scoring_dir", f"test={scoring}", "--untrained", f"test={scp}",
                            "--anchors", f"test={scp}", "--output", str(exp / "RESULTS.md")])
    assert rc == 0
    text = (exp / "RESULTS.md").read_text()
    title_index = [title for _, title, _ in make_results.METRICS].index("ViSQOL ↑")
    (scored,) = _results_rows(text, "## Reconstruction metrics")
    assert scored[3 + title_index] == "3.25"
    (untrained,) = _results_rows(text, "## The same sets with the untrained model")
    assert untrained[2] == "0" and 1.0 <= float(untrained[3 + title_index]) < 3.0  # nothing reconstructed yet
    anchors = {row[1]: row for row in _results_rows(text, "## Reference points")}
    assert len(anchors) == 4
    for row in anchors.values():
        assert row[2] == "0" and 1.0 <= float(row[3 + title_index]) < 4.73, row
    assert (float(anchors["white noise added at 20 dB SNR"][3 + title_index])
            > float(anchors["white noise added at 10 dB SNR"][3 + title_index]))

    # a results.json that is not one is refused, naming the file
    (scoring / "results.json").write_text("{broken")
    assert make_results.main(["--exp_dir", str(exp), "--model_file", str(exp / "latest.pth"),
                              "--scoring_dir", f"test={scoring}", "--output", str(exp / "RESULTS.md")]) == 1


_THREADS_AFTER_VISQOL = """
import json, sys
import numpy as np
import torch
from espnet_snac.scoring import visqol_metric
from speech_samples import load_speech

before = torch.get_num_threads()
x = load_speech(24000, n=1)[0]
visqol_metric.visqol(x, x.copy(), 24000)
import numba
print(json.dumps({"before": before, "after": torch.get_num_threads(), "layer": numba.threading_layer()}))
"""


def test_scoring_leaves_torch_threads_alone(tmp_path):
    """ViSQOL's numba code under numba's OpenMP layer sets the process-wide OpenMP thread count (the one
    torch reads) to every core; a program that scores in-process keeps its own setting."""
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "threads.py"
    script.write_text(_THREADS_AFTER_VISQOL)
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    env["NUMBA_THREADING_LAYER"] = "omp"  # as in a program whose numba code runs on the OpenMP layer
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["before"] == 1 and got["after"] == 1, got
