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
