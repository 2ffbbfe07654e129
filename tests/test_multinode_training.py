"""The recipe's multi-node training path (stage 4 of egs2/snac24k/codec.sh, ``--num_nodes 2``) as
2 nodes x 1 process on this machine (gloo): SIGUSR1 to the rank-1 process (what Slurm's
``--signal=USR1@120`` sends) stops both ranks at the same iteration with ``checkpoint.pth`` written
and the recipe saying "preempted: rerun the same command to continue"; the same command then resumes
and ends with the optimizer steps of ``plan_training --num_nodes 2``."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs2" / "snac24k"
TINY = REPO / "conf" / "tuning" / "train_snac24k_tiny.yaml"
CHUNK = 4096  # the tiny config's chunk length
ITERATION_LOG = re.compile(r"\d+epoch:train:\d+-\d+batch")


def _fake_stages_1_to_3(work: Path, n_train: int = 4, chunks: int = 2) -> None:
    """What stages 1-3 leave for stage 4: dumped wav.scp files and the statistics' shape files."""
    rng = np.random.default_rng(0)
    t = np.arange(CHUNK * chunks) / 24000
    for dset, n, stats_name in (("train", n_train, "train"), ("dev", 2, "valid")):
        raw = work / "dump" / "raw" / dset
        stats = work / "exp" / "codec_stats_24000" / stats_name
        raw.mkdir(parents=True)
        stats.mkdir(parents=True)
        scp, shapes = [], []
        for i in range(n):
            x = 0.3 * np.sin(2 * np.pi * (150 + 30 * i) * t) + 0.05 * rng.standard_normal(t.size)
            path = raw / f"{dset}_{i}.wav"
            sf.write(path, x.astype(np.float32), 24000, subtype="FLOAT")
            scp.append(f"{dset}_{i} {path}\n")
            shapes.append(f"{dset}_{i} {t.size}\n")
        (raw / "wav.scp").write_text("".join(scp))
        (stats / "audio_shape").write_text("".join(shapes))
    (work / "exp" / "codec_stats_24000" / ".done").write_text("faked\n")


def _pids_of(*patterns: str):
    """Training processes whose command line holds all ``patterns``."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "espnet_snac.bin.gan_codec_train" in cmd and all(p in cmd for p in patterns):
                pids.append(int(d.name))
    return pids


def test_two_nodes_on_localhost_preempted_then_resumed_to_the_planned_steps(tmp_path):
    work = tmp_path / "work"
    _fake_stages_1_to_3(work)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = ["bash", "./codec.sh", "--stage", "4", "--stop_stage", "4", "--workdir", str(work),
           "--train_config", str(TINY), "--tag", "nodes", "--num_nodes", "2", "--ngpu", "0",
           "--num_iters", "8", "--batch_size", "2", "--python", sys.executable,
           "--train_args", "--use_matplotlib false --use_tensorboard false"]
    exp = work / "exp" / "codec_nodes"

    with open(tmp_path / "first.log", "w+") as out:
        proc = subprocess.Popen(cmd, cwd=RECIPE, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            deadline = time.time() + 240
            while not (exp / "train.log").exists() or not ITERATION_LOG.search((exp / "train.log").read_text()):
                assert proc.poll() is None and time.time() < deadline, out.seek(0) or out.read()
                time.sleep(0.2)
            rank1 = _pids_of(str(work), "--dist_rank 1")
            assert len(rank1) == 1
            os.kill(rank1[0], signal.SIGUSR1)  # one rank only: the other must stop at the same iteration
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:  # never leave the ranks running after a failure
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        out.seek(0)
        first = out.read()
    assert rc == 75, first
    assert "preempted: rerun the same command to continue" in first
    rank0_stop = re.search(r"Training preempted \(signal on another rank\) at epoch (\d+), batch (\d+), "
                           r"iteration (\d+)", (exp / "train.log").read_text())
    rank1_stop = re.search(r"\[rank 1\] Training preempted \(SIGUSR1\) at epoch (\d+), batch (\d+), "
                           r"iteration (\d+)", (exp / "train.node1.log").read_text())
    assert rank0_stop and rank1_stop and rank0_stop.groups() == rank1_stop.groups()
    stopped_at = int(rank0_stop.group(3))
    state = torch.load(exp / "checkpoint.pth", weights_only=True)
    assert state["trainer"]["iteration"] == stopped_at
    assert len(state["rng_ranks"]) == 2

    proc = subprocess.Popen(cmd, cwd=RECIPE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        second, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, second
    log = (exp / "train.log").read_text()
    assert f"iteration {stopped_at})" in log and "was resumed" in log
    plan = json.loads((exp / "plan.json").read_text())
    assert plan["world_size"] == 2
    total = plan["total_iterations"]
    assert plan["exact"] and total == 8 > stopped_at
    state = torch.load(exp / "checkpoint.pth", weights_only=True)
    assert state["trainer"]["iteration"] == total
    for opt in state["optimizers"]:
        assert {int(s["step"]) for s in opt["state"].values()} == {total}
    assert "Training preempted" not in (exp / "train.node1.log").read_text()
