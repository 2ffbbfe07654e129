"""Training killed with SIGKILL mid-epoch and restarted with the same command ends exactly where an
uninterrupted run ends; checkpoints are atomic, follow the umask, and a corrupt latest one falls back."""
from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import pytest
import torch

import espnet_snac  # noqa: F401
from tiny_training import train_args, write_corpus

N_TRAIN, CHUNKS, BATCH = 2, 4, 2  # 4 iterations per epoch


def _args(data: Path, exp: Path):
    return train_args(data, exp, max_epoch=2, batch_size=BATCH, n_train=N_TRAIN,
                      extra=["--checkpoint_interval_iters", "1", "--skip_discriminator_prob", "0.3"])


def _train_in_child(args) -> None:
    from espnet_snac.bin.gan_codec_train import main

    main(args)
    os._exit(0)


def _trainer_state(path: Path):
    try:
        return torch.load(path, weights_only=True)["trainer"]
    except Exception:  # noqa: BLE001 - being replaced right now
        return None


def _assert_same(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_sigkill_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path, caplog):
    import multiprocessing

    from espnet_snac.bin.gan_codec_train import main

    data = write_corpus(tmp_path / "data", n_train=N_TRAIN, chunks_per_utt=CHUNKS)
    reference = tmp_path / "reference"
    main(_args(data, reference))

    exp = tmp_path / "interrupted"
    child = multiprocessing.get_context("fork").Process(target=_train_in_child, args=(_args(data, exp),))
    child.start()
    deadline = time.monotonic() + 300
    killed_at = None
    while time.monotonic() < deadline and child.is_alive():
        state = _trainer_state(exp / "checkpoint.pth") if (exp / "checkpoint.pth").exists() else None
        if state is not None and state["batches"] >= 2:  # mid-epoch (epoch 1 unless the poll was late)
            os.kill(child.pid, signal.SIGKILL)
            killed_at = state
            break
        time.sleep(0.05)
    child.join(30)
    assert killed_at is not None and child.exitcode == -signal.SIGKILL, "the run was not killed mid-epoch"
    killed_at = _trainer_state(exp / "checkpoint.pth")  # a later one may have landed before the kill
    assert killed_at["batches"] >= 2

    with caplog.at_level(logging.INFO):
        main(_args(data, exp))  # the same command
    assert any("resumed" in r.getMessage() and f"epoch {killed_at['epoch']}, {killed_at['batches']} batches in"
               in r.getMessage() for r in caplog.records)

    ref = torch.load(reference / "checkpoint.pth", weights_only=True)
    got = torch.load(exp / "checkpoint.pth", weights_only=True)
    for key in ("model", "optimizers", "schedulers", "trainer", "rng"):
        _assert_same(ref[key], got[key], key)
    assert got["trainer"]["iteration"] == 2 * N_TRAIN * CHUNKS // BATCH
    _assert_same(torch.load(reference / "2epoch.pth", weights_only=True),
                 torch.load(exp / "2epoch.pth", weights_only=True), "2epoch.pth")


def test_preempted_after_an_epochs_last_batch_resumes_into_the_next_epoch(tmp_path, monkeypatch):
    """A stop right after the last batch of epoch 1 (preemption, or a kill before the epoch's own
    checkpoint) resumes with every batch of that epoch skipped; the run must go on to epoch 2 and end
    where an uninterrupted run ends, not stop as if all steps of epoch 1 had been invalid."""
    from espnet_snac.bin.gan_codec_train import main
    from espnet_snac.train import preemption

    data = write_corpus(tmp_path / "data", n_train=N_TRAIN, chunks_per_utt=CHUNKS)
    reference = tmp_path / "reference"
    main(_args(data, reference))

    per_epoch = N_TRAIN * CHUNKS // BATCH
    calls = []  # the trainer asks once per iteration: stop after the epoch's last one
    monkeypatch.setattr(preemption, "requested", lambda: calls.append(1) or len(calls) == per_epoch)
    exp = tmp_path / "preempted"
    with pytest.raises(SystemExit) as stopped:
        main(_args(data, exp))
    assert stopped.value.code == preemption.EXIT_PREEMPTED
    assert _trainer_state(exp / "checkpoint.pth")["batches"] == per_epoch
    monkeypatch.undo()

    main(_args(data, exp))
    ref = torch.load(reference / "checkpoint.pth", weights_only=True)
    got = torch.load(exp / "checkpoint.pth", weights_only=True)
    assert got["trainer"]["iteration"] == 2 * per_epoch
    for key in ("model", "optimizers", "schedulers", "trainer"):
        _assert_same(ref[key], got[key], key)


def test_checkpoint_write_is_atomic_and_follows_umask(tmp_path, monkeypatch):
    from espnet_snac.train import checkpointing as ckpt

    def state(v):
        return {"model": {"w": torch.full((3,), float(v))}, "optimizers": [], "schedulers": [],
                "reporter": {"epoch": 0, "stats": {}}, "trainer": {"epoch": 1, "batches": v}}

    old = os.umask(0o027)
    try:
        ckpt.save_checkpoint(tmp_path, state(1))
        ckpt.save_checkpoint(tmp_path, state(2))
    finally:
        os.umask(old)
    for name in (ckpt.LATEST, ckpt.PREVIOUS):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640
    assert {p.name for p in tmp_path.iterdir()} == {ckpt.LATEST, ckpt.PREVIOUS}

    # A crash in the middle of writing (e.g. disk full) leaves the complete old files and no debris.
    real_save = torch.save

    def failing_save(obj, fh, *a, **k):
        real_save(obj, fh, *a, **k)
        fh.truncate(100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(tmp_path, state(3))
    monkeypatch.undo()
    assert {p.name for p in tmp_path.iterdir()} == {ckpt.LATEST, ckpt.PREVIOUS}
    loaded, path = ckpt.load_checkpoint(tmp_path)
    assert path.name == ckpt.LATEST and loaded["trainer"]["batches"] == 2


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, caplog):
    from espnet_snac.train import checkpointing as ckpt

    for v in (1, 2):
        ckpt.save_checkpoint(tmp_path, {"model": {"w": torch.full((3,), float(v))}, "optimizers": [],
                                        "schedulers": [], "reporter": {"epoch": 0, "stats": {}},
                                        "trainer": {"epoch": 1, "batches": v}})
    latest = tmp_path / ckpt.LATEST
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # truncated
    with caplog.at_level(logging.WARNING):
        loaded, path = ckpt.load_checkpoint(tmp_path)
    assert path.name == ckpt.PREVIOUS and loaded["trainer"]["batches"] == 1
    assert any(str(latest) in r.getMessage() and "previous" in r.getMessage() for r in caplog.records)

    (tmp_path / ckpt.PREVIOUS).write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="No readable training checkpoint"):
        ckpt.load_checkpoint(tmp_path)


def test_checkpoint_schedule_by_iterations_and_minutes():
    from espnet_snac.train.checkpointing import CheckpointSchedule

    now = [0.0]
    by_time = CheckpointSchedule(every_minutes=2, clock=lambda: now[0])
    now[0] = 119
    assert not by_time.due(5)
    now[0] = 121
    assert by_time.due(6)
    by_time.written()
    assert not by_time.due(7)
    by_iters = CheckpointSchedule(every_iters=3)
    assert [i for i in range(1, 10) if by_iters.due(i)] == [3, 6, 9]
    assert not any(CheckpointSchedule(None, None).due(i) for i in range(1, 10))
