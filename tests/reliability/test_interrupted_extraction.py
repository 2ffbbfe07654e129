"""Token extraction killed with SIGKILL and restarted writes exactly what an uninterrupted run writes.

Both with one process (two loader workers) and with two torchrun ranks on gloo. The kill is made
deterministic with a pipe entry in wav.scp that waits while a gate file exists: the run is killed
when its shard has committed every utterance before the gate, i.e. while it is blocked. A record cut in the middle (what a kill during a write leaves) is then added to the shard
files before the restart, so both kinds of interruption are covered.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import numpy as np
import soundfile as sf

from fault_helpers import subprocess_env
from espnet_snac.bin.extract_tokens import main
from speech_samples import synthetic_speech

N_UTTS = 8
GATE_AT = 5  # utt5 waits for the gate; it is input line 6 (index 6), so rank 0 of 2 holds it
SHARD_FILES = ("codes.ark", "codes.scp", "utt2num_samples")
MERGED_FILES = ("codes.scp", "utt2num_frames", "utt2num_samples", "rejected.tsv", "text", "token_list",
                "text_orpheus")


def _inputs(root: Path) -> Path:
    """wav.scp with short utterances at mixed rates, one broken file and one gated pipe entry."""
    lines = []
    for i in range(N_UTTS):
        rate = (16000, 24000)[i % 2]
        path = root / f"u{i}.wav"
        sf.write(path, synthetic_speech(rate, 0.4 + 0.1 * i, seed=i), rate)
        if i == GATE_AT:
            gate = root / "gate"
            lines.append(f"utt{i} sh -c 'while [ -e {gate} ]; do sleep 0.02; done; cat {path}' |")
        else:
            lines.append(f"utt{i} {path}")
    (root / "broken.wav").write_bytes(b"RIFF\x00\x00")
    lines.insert(1, f"utt_broken {root / 'broken.wav'}")
    (root / "wav.scp").write_text("\n".join(lines) + "\n")
    return root / "wav.scp"


def _args(model: Path, scp: Path, *extra: str) -> List[str]:
    # relative output_dir: the scp files name the arks relatively, so two run directories compare
    return ["--model", str(model), "--wav_scp", str(scp), "--output_dir", "out", "--formats",
            "ark,text,orpheus", "--batch_size", "1", "--pool_size", "1", "--no_progress", *extra]


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _before_gate(scp: Path, world: int) -> int:
    """Utterances rank 0 commits before it reaches the gated one."""
    order = [ln.split()[0] for ln in scp.read_text().splitlines()]
    return sum(1 for i in range(0, order.index(f"utt{GATE_AT}"), world) if order[i] != "utt_broken")


def _descendants(pid: int) -> List[int]:
    """``pid`` and every process below it (torchrun starts its ranks in their own sessions)."""
    children: dict = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def _kill_when_blocked(cmd: List[str], cwd: Path, shard: Path, committed: int) -> None:
    proc = subprocess.Popen(cmd, cwd=cwd, env=subprocess_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _lines(shard / "codes.scp") < committed:
        assert proc.poll() is None, f"extraction ended before the kill: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "extraction did not reach the gate"
        time.sleep(0.01)
    time.sleep(0.2)  # let the other rank (if any) run on: the kill then lands anywhere in its work
    victims = _descendants(proc.pid)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.wait() == -signal.SIGKILL
    while any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in victims[1:]):
        time.sleep(0.01)  # orphans are reaped by init; wait until none runs


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def _cut_record(shard: Path) -> None:
    """What a kill in the middle of writing one utterance leaves: part of an ark record, its length
    line and an unterminated scp line."""
    with open(shard / "codes.ark", "ab") as f:
        f.write(b"utt_cut \x00B\x04" + np.arange(7, dtype=np.int32).tobytes()[:13])
    with open(shard / "utt2num_samples", "a") as f:
        f.write("utt_cut 12345\n")
    with open(shard / "codes.scp", "a") as f:
        f.write("utt_cut out/shards/part-0000/codes.a")


def _assert_same_output(a: Path, b: Path, ranks: int) -> None:
    for name in MERGED_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for r in range(ranks):
        for name in SHARD_FILES:
            path = Path("shards") / f"part-{r:04d}" / name
            assert (a / path).read_bytes() == (b / path).read_bytes(), path
    assert (b / "rejected.tsv").read_text().startswith("utt_broken\t")
    assert _lines(b / "codes.scp") == N_UTTS


def test_killed_extraction_resumes_byte_identical(small_model_dir, tmp_path, monkeypatch):
    scp = _inputs(tmp_path)
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    clean.mkdir(), killed.mkdir()
    monkeypatch.chdir(clean)
    assert main(_args(small_model_dir, scp, "--num_workers", "0")) == 0

    (tmp_path / "gate").touch()
    cmd = [sys.executable, "-m", "espnet_snac.bin.extract_tokens",
           *_args(small_model_dir, scp, "--num_workers", "2")]
    shard = killed / "out" / "shards" / "part-0000"
    _kill_when_blocked(cmd, killed, shard, committed=_before_gate(scp, 1))
    assert not (killed / "out" / "codes.scp").exists()
    _cut_record(shard)

    (tmp_path / "gate").unlink()
    monkeypatch.chdir(killed)
    assert main(_args(small_model_dir, scp, "--num_workers", "2")) == 0
    _assert_same_output(clean / "out", killed / "out", ranks=1)


def test_killed_two_rank_extraction_resumes_byte_identical(small_model_dir, tmp_path):
    scp = _inputs(tmp_path)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "espnet_snac.bin.extract_tokens", *_args(small_model_dir, scp, "--num_workers", "0")]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    clean.mkdir(), killed.mkdir()
    proc = subprocess.run(torchrun, cwd=clean, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    (tmp_path / "gate").touch()
    shard = killed / "out" / "shards" / "part-0000"
    _kill_when_blocked(torchrun, killed, shard, committed=_before_gate(scp, 2))
    _cut_record(shard)

    (tmp_path / "gate").unlink()
    proc = subprocess.run(torchrun, cwd=killed, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_output(clean / "out", killed / "out", ranks=2)
