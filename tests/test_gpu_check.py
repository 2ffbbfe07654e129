"""benchmarks/gpu_check.sh: the CPU quick run of every step, and how steps are judged."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = ["codec", "extract", "train", "curve", "stream", "resume", "cuda_tests"]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclass resolves annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_cpu_quick_run_reports_every_step_ok(tmp_path):
    report = tmp_path / "report.md"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHON=sys.executable)  # the interpreter running the tests
    proc = subprocess.run([str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--quick",
                           "--output", str(report), "--work_dir", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=400, env=env)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted((tmp_path / "work").glob("*.log")))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:] + logs
    text = report.read_text()
    assert proc.stdout.strip().splitlines()[-1] == "gpu_check: 7/7 steps ok"
    assert text.strip().splitlines()[-1] == "gpu_check: 7/7 steps ok"
    rows = dict(re.findall(r"^\| (\w+) \| (\S+) \| .* \| [\d.]+ \|$", text, re.MULTILINE))
    assert rows == {name: "ok" for name in STEPS}
    for name in STEPS:  # each step: its command and its duration
        section = text.split(f"## {name}: ok", 1)[1]
        assert "```\n" in section and "Duration " in section
    assert "codes identical: true" in text and "codes identical to one by one: true" in text
    assert "bf16 ms/iteration" in text and "resumed: true" in text
    assert "skipped without CUDA" in text  # CUDA-only tests skipped, and that counted as ok


def test_step_checks_judge_outputs():
    gc = _gpu_check()
    ok, figures, targets = gc.check_extract(True)("audio_s_per_s=2500.0 rtf=0.0004 codes_identical=true\n", 0)
    assert ok and targets == ["extract >= 2000x real time: met (2500x)"]
    ok, _, targets = gc.check_extract(True)("audio_s_per_s=900.0 rtf=0.001 codes_identical=false\n", 0)
    assert not ok and "MISSED" in targets[0]  # codes differ: the step fails; speed: a missed target
    assert not gc.check_extract(False)("audio_s_per_s=9 rtf=0.1 codes_identical=true\n", 1)[0]  # exit status
    assert not gc.check_codec("no summary line\n", 0)[0]

    train = ("precision=fp32 ms_per_iter=150.0 peak_mem_mb=9000 mel_loss=3.1 nonfinite_steps=0\n"
             "precision=bf16 ms_per_iter=120.5 peak_mem_mb=6000 mel_loss=3.2 nonfinite_steps=0\n")
    ok, figures, targets = gc.check_train(True)(train, 0)
    assert ok and figures["bf16 ms/iteration"] == "120.5" and "MISSED" in targets[0]
    assert not gc.check_train(False)(train.replace("nonfinite_steps=0\n", "nonfinite_steps=2\n", 1), 0)[0]
    assert not gc.check_train(False)(train.splitlines()[0], 0)[0]  # bf16 missing

    skipped = "ssssss\n6 skipped in 2.11s\n"
    assert gc.check_cuda_tests(False)(skipped, 0)[0]  # no CUDA: skipped is the expected outcome
    assert not gc.check_cuda_tests(True)(skipped, 0)[0]  # on a GPU a skip means nothing was checked
    assert gc.check_cuda_tests(True)("6 passed in 30.0s\n", 0)[0]
    assert not gc.check_cuda_tests(True)("5 passed, 1 failed in 30.0s\n", 1)[0]

    full = gc.report([gc.Step("codec", "x", ["cmd"], 1, gc.check_codec, status="ok")], "cuda", False, "env", 500.0)
    assert "whole check <= 8 min: MISSED (500 s)" in full and full.strip().endswith("gpu_check: 1/1 steps ok")

    stream = ("exact lookahead 3 frames\n| stream, lookahead 3 | 3 / 256.0 | 5.0 | 5.0 | 261.0 | 0.06 / 0.06 | 40.0 |\n")
    assert not gc.check_stream(stream, 0)[0]  # exact lookahead must reproduce the full decode
    assert gc.check_stream(stream.replace("| 40.0 |", "| exact (0 error) |"), 0)[0]
