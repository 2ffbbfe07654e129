"""Token extraction as 2 nodes x 1 process on localhost (gloo): merged output equals one process.

Each "node" is its own ``torchrun --nnodes 2 --node_rank i --master_addr 127.0.0.1`` launch, as on
a cluster (one launch per node, the output directory on a shared filesystem).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import torch

from espnet_snac.bin.extract_tokens import main
from espnet_snac.model.snac import SNAC, SNAC_24KHZ
from speech_samples import demo_files

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("rendezvous", ["static", "c10d"])
def test_two_nodes_one_process_each_equal_one_process(tmp_path, rendezvous):
    torch.manual_seed(0)
    SNAC(**dict(SNAC_24KHZ, encoder_dim=8, decoder_dim=32)).eval().save_pretrained(tmp_path / "model")
    files = [f for f in demo_files() if "/dev/" in f.as_posix()][:5]
    if len(files) < 5:
        pytest.skip("demo corpus missing")
    scp = tmp_path / "wav.scp"
    scp.write_text("".join(f"utt{i} {f}\n" for i, f in enumerate(files)) + f"bad {tmp_path / 'missing.wav'}\n")
    common = ["--model", str(tmp_path / "model"), "--wav_scp", str(scp), "--num_workers", "0",
              "--batch_size", "2", "--no_progress", "--formats", "ark,text"]
    one, two = tmp_path / "one", tmp_path / "two"
    torch.set_num_threads(1)
    assert main([*common, "--output_dir", str(one)]) == 0

    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    port = str(_free_port())
    # static: node ranks given, rank 0's node hosts the store; c10d: README's form, node ranks
    # assigned at the rendezvous
    launch = {"static": lambda rank: ["--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", port],
              "c10d": lambda rank: ["--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
                                    "--rdzv_id", "extract"]}[rendezvous]
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", *launch(rank),
         "-m", "espnet_snac.bin.extract_tokens", *common, "--output_dir", str(two)],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    logs = []
    try:
        for node in nodes:
            logs.append(node.communicate(timeout=240)[0])
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(log[-3000:] for log in logs)

    for rank in (0, 1):  # each node encoded its share into its own shard
        assert (two / "shards" / f"part-{rank:04d}" / "codes.scp").stat().st_size > 0
    a = {k: np.asarray(v) for k, v in kaldiio.load_scp(str(one / "codes.scp")).items()}
    b = {k: np.asarray(v) for k, v in kaldiio.load_scp(str(two / "codes.scp")).items()}
    assert len(a) == 5 and list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
    for name in ("text", "rejected.tsv", "utt2num_frames"):
        assert (one / name).read_text() == (two / name).read_text(), name
    stats = json.loads((two / "stats.json").read_text())
    assert stats["this_run"]["ranks"] == 2 and stats["written"] == 5 and stats["rejected"] == 1
    assert [r["rank"] for r in stats["this_run"]["per_rank"]] == [0, 1]
