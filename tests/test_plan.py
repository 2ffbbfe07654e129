"""The training plan against an independent count and against ESPnet's own chunk iterator."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import yaml

from espnet_snac.train.plan import PlanError, plan_from_files, plan_training

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "conf" / "train_snac24k.yaml"
FS = 24000


def _paper() -> Dict:
    return yaml.safe_load(PAPER.read_text())


def _librispeech_lengths() -> np.ndarray:
    """LibriSpeech-sized: 28539 utterances of about 12.3 s (1.5..35 s)."""
    rng = np.random.default_rng(0)
    return (np.clip(rng.normal(12.3, 3.5, 28539), 1.5, 35.0) * FS).astype(np.int64)


def _write_shape(path: Path, lengths) -> Path:
    path.write_text("".join(f"utt{i:06d} {int(n)}\n" for i, n in enumerate(lengths)))
    return path


def _chunks_by_range(n: int, width: int, shift: int) -> int:
    """Chunks of one utterance counted from the start offsets ESPnet slices (only if n > width)."""
    return len(range(0, n - width + 1, shift)) if n > width else 0


def _independent_epoch_steps(lengths, k: int, world: int, batch: int, width: int, shift: int) -> float:
    """Expected optimizer steps of an epoch of k utterances per rank; the slowest rank ends the epoch."""
    steps = []
    for r in range(world):
        counts = [_chunks_by_range(int(n), width, shift) for n in lengths[r::world]]
        steps.append(math.floor(k * (sum(counts) / len(counts)) / (batch // world)))
    return min(steps)


@pytest.mark.parametrize("ngpu", [1, 4])
def test_paper_run_on_librispeech_sized_corpus(ngpu):
    lengths = _librispeech_lengths()
    config = _paper()
    plan = plan_training(lengths, config, ngpu=ngpu, num_iters=800_000, batch_size=16)
    w, s = config["chunk_length"], int(config["chunk_length"] * config["chunk_shift_ratio"])
    per_epoch = math.ceil(800_000 / config["max_epoch"])
    assert plan.max_epoch == config["max_epoch"] and plan.world_size == ngpu
    assert plan.batch_size == 16 and plan.batch_size_per_gpu == 16 // ngpu
    # num_iters_per_epoch is the fewest utterances per rank that give the epoch's steps.
    k = plan.num_iters_per_epoch
    assert _independent_epoch_steps(lengths, k, ngpu, 16, w, s) >= per_epoch
    assert _independent_epoch_steps(lengths, k - 1, ngpu, 16, w, s) < per_epoch
    assert plan.iterations_per_epoch == _independent_epoch_steps(lengths, k, ngpu, 16, w, s)
    assert 800_000 <= plan.total_iterations <= 800_000 + plan.max_epoch * 16 // (16 // ngpu)
    assert plan.chunks_per_epoch == plan.iterations_per_epoch * 16
    assert plan.final_lr == pytest.approx(6e-4 * 0.999994 ** plan.total_iterations)
    assert 4.5e-6 < plan.final_lr < 5.5e-6  # the paper's end point
    # Utterances read per epoch, all ranks: about the chunks needed / chunks per utterance.
    mean_chunks = np.mean([_chunks_by_range(int(n), w, s) for n in lengths])
    assert k * ngpu == pytest.approx(per_epoch * 16 / mean_chunks, rel=0.01)
    assert plan.passes_over_corpus == pytest.approx(plan.max_epoch * k * ngpu / len(lengths))


def test_default_total_is_the_configs_own_on_any_gpu_count():
    """Without --num_iters, 4 GPUs run the steps the config gives on one (not four times more)."""
    lengths = _librispeech_lengths()
    one = plan_training(lengths, _paper(), ngpu=1)
    four = plan_training(lengths, _paper(), ngpu=4)
    assert one.num_iters_per_epoch == 12300 and four.num_iters_per_epoch == 12300 // 4
    assert one.total_iterations == one.target_iterations == four.target_iterations
    assert four.total_iterations == pytest.approx(one.total_iterations, rel=0.005)
    assert four.batch_size_per_gpu == 4


def test_equal_lengths_are_exact(tmp_path):
    # 100 utterances of 5 chunks each; batch 8 on 2 GPUs.
    cfg = {**_paper(), "max_epoch": 3}
    lengths = [20480 + 4 * 10240 + 7] * 100
    plan = plan_training(lengths, cfg, ngpu=2, num_iters=300, batch_size=8)
    assert plan.exact and plan.iterations_per_epoch_sd == 0
    assert plan.num_iters_per_epoch == 80  # 80 utterances x 5 chunks / 4 per GPU = 100 steps
    assert plan.iterations_per_epoch == 100 and plan.total_iterations == 300


@pytest.mark.parametrize(
    "lengths, kwargs, words",
    [
        ([20480, 20000, 100], dict(ngpu=1), ["shorter than one chunk", "20480 samples", "chunk_length is 20480"]),
        ([30000] * 10, dict(ngpu=4, batch_size=2), ["global batch 2", "smaller than the world size 4"]),
        ([30000] * 10, dict(ngpu=4, num_nodes=2, batch_size=4), ["world size 8"]),
        ([30000] * 10, dict(ngpu=3, batch_size=16), ["not divisible by the world size 3", "15 or 18"]),
        ([30000] * 2, dict(ngpu=4, batch_size=16), ["2 utterances for 4 processes"]),
        ([30000] + [100] * 7, dict(ngpu=2, batch_size=16), ["rank 1 of 2"]),
    ],
)
def test_plan_errors_give_the_numbers(lengths, kwargs, words):
    with pytest.raises(PlanError) as err:
        plan_training(lengths, _paper(), **kwargs)
    for w in words:
        assert w in str(err.value)


def test_cli_prints_plan_and_json_last(tmp_path):
    shape = _write_shape(tmp_path / "audio_shape", [24000 * 3] * 40)
    out = subprocess.run(
        [sys.executable, "-m", "espnet_snac.bin.plan_training", "--speech_shape", str(shape), "--config",
         str(PAPER), "--ngpu", "2", "--num_iters", "1000", "--batch_size", "16"],
        capture_output=True, text=True, check=True,
    ).stdout.strip().splitlines()
    plan = json.loads(out[-1])
    for key in ("total_iterations", "num_iters_per_epoch", "max_epoch", "batch_size_per_gpu", "final_lr"):
        assert key in plan
    assert plan["batch_size_per_gpu"] == 8 and plan["total_iterations"] >= 1000
    assert any("optimizer steps" in line for line in out[:-1])
    bad = subprocess.run(
        [sys.executable, "-m", "espnet_snac.bin.plan_training", "--speech_shape", str(shape), "--config",
         str(PAPER), "--ngpu", "32"], capture_output=True, text=True)
    assert bad.returncode == 1 and "smaller than the world size 32" in bad.stderr and str(shape) in bad.stderr
    # Default: the paper's 800k steps; "config": the config's own epochs on one device.
    base = [sys.executable, "-m", "espnet_snac.bin.plan_training", "--speech_shape", str(shape), "--config",
            str(PAPER), "--ngpu", "1"]
    paper = json.loads(subprocess.run(base, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
    own = json.loads(subprocess.run(base + ["--num_iters", "config"], capture_output=True, text=True,
                                    check=True).stdout.splitlines()[-1])
    assert paper["target_iterations"] == 800_000 <= paper["total_iterations"]
    assert own["num_iters_per_epoch"] == 12300 and own["total_iterations"] == own["target_iterations"]


def test_bad_shape_file_is_named(tmp_path):
    shape = tmp_path / "audio_shape"
    shape.write_text("a 100\nb ten\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(PAPER.read_text())
    with pytest.raises(PlanError, match=r"audio_shape:2"):
        plan_from_files(str(shape), str(cfg), ngpu=1)


# ---------------------------------------------------------------------------------------------
# ESPnet's ChunkIterFactory, built per rank as AbsTask.build_chunk_iter_factory builds it.

class _Dataset:
    """ESPnet dataset protocol: ``dataset[uid] -> (uid, {"audio": array})``."""

    def __init__(self, lengths: Dict[str, int]):
        self.lengths = lengths

    def __getitem__(self, uid):
        return uid, {"audio": np.zeros(self.lengths[uid], dtype=np.float32)}


def _espnet_batches_per_epoch(shape: Path, cfg: Dict, world: int, k: int, epochs: int) -> List[int]:
    from espnet2.iterators.chunk_iter_factory import ChunkIterFactory
    from espnet2.samplers.unsorted_batch_sampler import UnsortedBatchSampler
    from espnet2.train.collate_fn import CommonCollateFn

    lengths = {line.split()[0]: int(line.split()[1]) for line in shape.read_text().splitlines()}
    batches = list(UnsortedBatchSampler(batch_size=1, key_file=str(shape)))
    per_rank = []
    for rank in range(world):
        factory = ChunkIterFactory(
            dataset=_Dataset(lengths), batches=batches[rank::world], seed=cfg["seed"],
            batch_size=cfg["batch_size"] // world, num_samples_per_epoch=k, shuffle=True,
            collate_fn=CommonCollateFn(float_pad_value=0.0, int_pad_value=-1),
            chunk_length=cfg["chunk_length"], chunk_shift_ratio=cfg["chunk_shift_ratio"],
            num_cache_chunks=cfg["num_cache_chunks"] // world,
        )
        per_rank.append([sum(1 for _ in factory.build_iter(e)) for e in range(1, epochs + 1)])
    # The trainer ends an epoch when the first rank runs out.
    return [min(col) for col in zip(*per_rank)]


@pytest.mark.parametrize("ngpu", [1, 2])
def test_espnet_chunk_iterator_runs_the_plan(tmp_path, ngpu):
    rng = np.random.default_rng(1)
    lengths = rng.integers(40, 700, size=24)  # some shorter than one chunk (discarded)
    lengths[0] = 64  # exactly one chunk long: ESPnet discards it too
    shape = _write_shape(tmp_path / "audio_shape", lengths)
    cfg = {"iterator_type": "chunk", "chunk_length": 64, "chunk_shift_ratio": 0.5, "num_cache_chunks": 16,
           "batch_size": 4, "seed": 3, "max_epoch": 3, "num_iters_per_epoch": 24,
           "optim_conf": {"lr": 1e-3}, "scheduler": "exponentialdecay", "scheduler_conf": {"gamma": 0.99}}
    # Whole passes per epoch (the config's own epochs): exact.
    plan = plan_training(lengths, cfg, ngpu=ngpu)
    assert plan.exact and plan.num_iters_per_epoch == 24 // ngpu
    got = _espnet_batches_per_epoch(shape, cfg, ngpu, plan.num_iters_per_epoch, plan.max_epoch)
    assert got == [plan.iterations_per_epoch] * plan.max_epoch
    assert plan.final_lr == pytest.approx(1e-3 * 0.99 ** sum(got))
    # A step target: partial passes, the plan gives the expectation and its spread.
    plan = plan_training(lengths, cfg, ngpu=ngpu, num_iters=60)
    assert not plan.exact
    got = _espnet_batches_per_epoch(shape, cfg, ngpu, plan.num_iters_per_epoch, 8)
    assert abs(np.mean(got) - plan.iterations_per_epoch) <= 3 * plan.iterations_per_epoch_sd + 1
