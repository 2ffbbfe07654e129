"""Helpers of the benchmark scripts (the scripts themselves print measurements and are not tests)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _bench_codec():
    spec = importlib.util.spec_from_file_location("bench_codec", REPO / "benchmarks" / "bench_codec.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_join_utterances_keeps_every_sample_in_order():
    bench = _bench_codec()
    rate = bench.RATE
    items = [(f"u{i}", np.full(int(rate * s), i + 1, dtype=np.float32)) for i, s in enumerate([2.0, 3.0, 4.0, 1.0, 0.5])]
    joined = bench.join_utterances(items, seconds=5.0, gap=0.1)
    # 2 + 0.1 + 3 >= 5 -> first file; 4 + 0.1 + 1 >= 5 -> second; 0.5 s left -> third
    assert [name for name, _ in joined] == ["joined0", "joined1", "joined2"]
    gap = int(0.1 * rate)
    assert [a.size for _, a in joined] == [5 * rate + gap, 5 * rate + gap, rate // 2]
    speech = np.concatenate([a[a != 0] for _, a in joined])
    assert np.array_equal(speech, np.concatenate([a for _, a in items]))  # nothing lost, order kept
    assert np.all(joined[0][1][2 * rate: 2 * rate + gap] == 0)  # the pause


def test_bench_peers_prints_every_side_and_the_verdict(tmp_path):
    """One short utterance, the cheap sides (the official model's per-shape ONNX exports take minutes):
    a row per side with figures, the sgemm reference, and the last line in the issue's format with
    identical codes (our default path is exact)."""
    import re
    import subprocess
    import sys

    import pytest

    pytest.importorskip("snac")
    pytest.importorskip("onnxruntime")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_peers.py"), "--threads", "1",
                           "--num_files", "1", "--join_seconds", "0", "--no_official_ort"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert any("measured sgemm" in line for line in lines)
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("side")) + 1:]
    for side in ("official eager", "ours ONNX", "ours default"):
        row = next(line for line in table if line.startswith(side))
        assert len(re.findall(r"\d+\.\d+", row)) >= 8, row
    assert re.fullmatch(r"encode_vs_best_peer=\d+\.\d\d decode_vs_best_peer=\d+\.\d\d codes_identical=true", lines[-1])
