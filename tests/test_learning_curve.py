"""``python -m espnet_snac.bin.learning_curve``: a few seconds of tiny-config training on demo utterances."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from espnet_snac.bin import learning_curve

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "conf" / "tuning" / "train_snac24k_tiny.yaml"
DEMO = REPO / "local" / "demo_corpus"
LAST_LINE = re.compile(r"iterations=(\d+) pesq=(\S+) stoi=(\S+) mel=(\S+) codes_used=(\d+)/(\d+)/(\d+) "
                       r"nonfinite_steps=(\d+)")


def _scp(path: Path, files) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{f.stem} {f}\n" for f in files))
    return path


@pytest.fixture()
def corpus(tmp_path):
    train = sorted((DEMO / "train").glob("*.flac"))[:4]
    test = sorted((DEMO / "test").glob("*.flac"))[:2]
    _scp(tmp_path / "train" / "wav.scp", train)
    # one recording cut into two segments (Kaldi segments file), one segment too short for a chunk
    (tmp_path / "train" / "segments").write_text(
        f"{train[0].stem}-a {train[0].stem} 0.0 1.0\n{train[0].stem}-b {train[0].stem} 1.0 -1\n"
        f"{train[1].stem}-short {train[1].stem} 0.0 0.05\n"
        + "".join(f"{f.stem} {f.stem} 0.0 -1\n" for f in train[2:]))
    return tmp_path / "train", _scp(tmp_path / "test.scp", test)


def test_curve_rows_plot_and_last_line(corpus, tmp_path, capsys):
    train_dir, eval_scp = corpus
    out = tmp_path / "curve"
    rc = learning_curve.main(["--config", str(TINY), "--train_dir", str(train_dir), "--eval_scp", str(eval_scp),
                              "--minutes", "0.06", "--num_evals", "2", "--output_dir", str(out), "--threads", "1"])
    assert rc == 0
    printed = capsys.readouterr().out.strip().splitlines()
    m = LAST_LINE.fullmatch(printed[-1])
    assert m, printed[-1]
    with open(out / "curve.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {"iteration", "pesq", "stoi", "mel", "minutes", "codes_used_0", "codes_used_2",
            "grad_norm_generator", "grad_norm_discriminator", "nonfinite_steps", "train_mel_loss"} <= set(rows[0])
    its = [int(r["iteration"]) for r in rows]
    assert its[0] == 0 and len(rows) >= 2
    assert all(a < b for a, b in zip(its, its[1:])), its
    # the summary line is the last row; the step counter agrees with the CSV
    last = rows[-1]
    assert int(m.group(1)) == its[-1] >= 1
    assert float(m.group(2)) == pytest.approx(float(last["pesq"]), abs=1e-3)
    assert float(m.group(4)) == pytest.approx(float(last["mel"]), abs=1e-3)
    assert [int(m.group(i)) for i in (5, 6, 7)] == [int(last[f"codes_used_{i}"]) for i in range(3)]
    assert float(last["minutes"]) * 60 == pytest.approx(float(last["sec_per_iter"]) * its[-1], rel=1e-3)
    assert float(last["minutes"]) >= 0.06
    # iteration 0 is the untrained model: no training stats yet; later rows have both gradient norms
    assert rows[0]["grad_norm_generator"] == "" and rows[0]["train_mel_loss"] == ""
    assert float(last["grad_norm_generator"]) > 0 and float(last["grad_norm_discriminator"]) > 0
    assert int(last["eval_utts"]) == 2 and int(last["nonfinite_steps"]) == 0
    for r in rows:
        assert 1.0 <= float(r["pesq"]) <= 4.7 and 0.0 <= float(r["stoi"]) <= 1.0 and float(r["mel"]) > 0
    png = out / "curve.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("case", ["no_train_dir", "empty_eval"])
def test_bad_input_is_a_clear_error(corpus, tmp_path, capsys, case):
    train_dir, eval_scp = corpus
    if case == "no_train_dir":
        train_dir, culprit = tmp_path / "missing", "missing"
    else:
        eval_scp.write_text("\n")
        culprit = str(eval_scp)
    rc = learning_curve.main(["--config", str(TINY), "--train_dir", str(train_dir), "--eval_scp", str(eval_scp),
                              "--minutes", "0.1", "--output_dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and culprit in err, err
    assert not (tmp_path / "o" / "curve.csv").exists()


def test_results_table_scores_the_untrained_model(corpus, tmp_path):
    """local/make_results.py --untrained: a second table, scored with the config's initial model."""
    import importlib.util
    import json

    from tiny_training import write_untrained_experiment

    spec = importlib.util.spec_from_file_location("make_results", REPO / "local" / "make_results.py")
    make_results = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_results)
    exp = write_untrained_experiment(tmp_path / "exp")
    scoring = tmp_path / "scoring"
    scoring.mkdir()
    (scoring / "results.json").write_text(json.dumps({"num_utts": 2, "num_failed": 0, "mel_distance": 1.5,
                                                       "stft_distance": 1.0, "si_snr": 3.0, "pesq_wb": 2.5,
                                                       "stoi": 0.9}))
    _, eval_scp = corpus
    rc = make_results.main(["--exp_dir", str(exp), "--model_file", str(exp / "latest.pth"),
                            "--scoring_dir", f"test={scoring}", "--untrained", f"test={eval_scp}",
                            "--anchors", f"test={eval_scp}", "--output", str(exp / "RESULTS.md")])
    assert rc == 0
    text = (exp / "RESULTS.md").read_text()
    tables = text.split("## The same sets with the untrained model (iteration 0)")
    assert len(tables) == 2
    assert "| test | 2 | 0 | 1.500 |" in tables[0]
    row = next(line for line in tables[1].splitlines() if line.startswith("| test |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:3] == ["test", "2", "0"]
    mel, pesq = float(cells[3]), float(cells[6])
    assert mel > 3.0 and 1.0 <= pesq < 1.5  # an untrained codec reconstructs nothing
    anchors = text.split("## Reference points: the same sets' own speech, degraded")[1].split("## Files")[0]
    rows = {cells[1]: cells for cells in ([c.strip() for c in line.strip("|").split("|")]
                                          for line in anchors.splitlines() if line.startswith("| test |"))}
    assert len(rows) == 4
    noise20 = rows["white noise added at 20 dB SNR"]
    noise10 = rows["white noise added at 10 dB SNR"]
    assert noise20[2] == "0" and float(noise20[5]) > float(noise10[5])  # SI-SNR
