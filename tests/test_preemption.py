"""Preemption and unreadable audio during a real (tiny) training run through
``espnet_snac.bin.gan_codec_train``, in this process: SIGTERM stops the run after the current iteration
with ``checkpoint.pth`` written and exit status 75, and the rerun resumes from it; audio files that
became unreadable after data preparation are skipped, logged and counted, and a run of them stops."""
from __future__ import annotations

import logging
import os
import signal

import pytest
import torch

import espnet_snac  # noqa: F401  (registers the codec)
from tiny_training import train_args, write_corpus


def _signal_at_iteration(monkeypatch, signum: int, at: int) -> None:
    """Deliver ``signum`` to this process during training iteration ``at`` (1-based), once."""
    from espnet_snac.train.step import GANStep

    real = GANStep.iteration_on

    def iteration_on(self, audio):
        if self.iteration + 1 == at:
            os.kill(os.getpid(), signum)  # arrives mid-iteration; the handler only sets a flag
        return real(self, audio)

    monkeypatch.setattr(GANStep, "iteration_on", iteration_on)


def test_sigterm_checkpoints_the_iteration_and_the_rerun_resumes(tmp_path, monkeypatch, caplog):
    from espnet_snac.bin.gan_codec_train import main
    from espnet_snac.train.preemption import EXIT_PREEMPTED

    data = write_corpus(tmp_path / "data", n_train=2, chunks_per_utt=3)  # 3 iterations per epoch
    exp = tmp_path / "exp"
    args = train_args(data, exp, max_epoch=2, batch_size=2, n_train=2)
    handler_before = signal.getsignal(signal.SIGTERM)
    _signal_at_iteration(monkeypatch, signal.SIGTERM, at=2)
    caplog.set_level(logging.INFO)
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code == EXIT_PREEMPTED
    assert any("Training preempted (SIGTERM) at epoch 1, batch 2, iteration 2" in r.getMessage()
               for r in caplog.records)
    state = torch.load(exp / "checkpoint.pth", weights_only=True)
    assert (state["trainer"]["iteration"], state["trainer"]["epoch"], state["trainer"]["batches"]) == (2, 1, 2)
    assert len(state["rng_ranks"]) == 1
    assert not (exp / "1epoch.pth").exists()
    monkeypatch.undo()
    signal.signal(signal.SIGTERM, handler_before)

    caplog.clear()
    main(args)  # the same command again
    assert any("resumed" in r.getMessage() and "epoch 1, 2 batches in" in r.getMessage() for r in caplog.records)
    state = torch.load(exp / "checkpoint.pth", weights_only=True)
    assert state["trainer"]["iteration"] == 6  # 2 epochs x 3 iterations: none lost, none repeated
    for opt in state["optimizers"]:
        assert {int(s["step"]) for s in opt["state"].values()} == {6}


def test_unreadable_audio_costs_its_utterance_and_a_run_of_them_stops(tmp_path, caplog):
    from espnet_snac.bin.gan_codec_train import main
    from espnet_snac.train.unreadable_audio import UnreadableAudioError

    data = write_corpus(tmp_path / "data", n_train=3, chunks_per_utt=2)
    (data / "train_1.wav").unlink()  # deleted after data preparation
    with open(data / "train_2.wav", "r+b") as f:  # truncated inside its header
        f.truncate(20)
    exp = tmp_path / "exp"
    caplog.set_level(logging.INFO)
    # One loader worker: the counters are shared with the worker process.
    main(train_args(data, exp, max_epoch=1, batch_size=2, n_train=3, extra=["--num_workers", "1"]))
    state = torch.load(exp / "checkpoint.pth", weights_only=True)
    assert state["trainer"]["iteration"] == 1  # only train_0's 2 chunks: one batch
    stats = state["reporter"]["stats"][1]["train"]
    assert stats["unreadable_audio_files"] == 2.0
    assert (exp / "1epoch.pth").is_file()

    for i in range(3):
        (data / f"train_{i}.wav").unlink(missing_ok=True)
    caplog.clear()
    with pytest.raises(UnreadableAudioError, match="2 consecutive train audio files could not be read"):
        main(train_args(data, tmp_path / "exp2", max_epoch=1, batch_size=2, n_train=3,
                        extra=["--max_consecutive_unreadable", "2"]))
    skipped = [r.getMessage() for r in caplog.records if "Unreadable train audio skipped" in r.getMessage()]
    assert skipped and "train_0.wav" in skipped[0] + skipped[-1]


_FORWARDING = """
import multiprocessing, os, signal, sys, time
from espnet_snac.train import preemption

def child(queue):
    with preemption.armed():
        queue.put("ready")
        deadline = time.time() + 30
        while not preemption.requested() and time.time() < deadline:
            time.sleep(0.01)
        sys.exit(preemption.EXIT_PREEMPTED if preemption.requested() else 1)

if __name__ == "__main__":
    preemption.forward_to_children()
    ctx = multiprocessing.get_context("spawn")  # as ESPnet starts its training processes
    queue = ctx.Queue()
    p = ctx.Process(target=child, args=(queue,))
    p.start()
    assert queue.get(timeout=60) == "ready"
    os.kill(os.getpid(), signal.SIG)  # the parent is signalled, as by kill or Slurm
    p.join(timeout=30)
    print("parent alive, child exit", p.exitcode)
"""


@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1"])
def test_parent_passes_signals_on_to_its_training_processes(tmp_path, name):
    import subprocess
    import sys

    script = tmp_path / "forward.py"
    script.write_text(_FORWARDING.replace("signal.SIG)", f"signal.{name})"))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "parent alive, child exit 75" in out.stdout


def test_tolerant_dataset_counts_failures_and_stops_only_on_a_run_of_them():
    from espnet_snac.train.unreadable_audio import TolerantDataset, UnreadableAudioError

    class Flaky:
        loader_dict = {"audio": None}

        def __getitem__(self, uid):
            if uid.startswith("bad"):
                raise FileNotFoundError(f"no such file: /data/{uid}.wav")
            return uid, {"audio": torch.zeros(4).numpy()}

    data = TolerantDataset(Flaky(), max_consecutive=2)
    for uid in ("good0", "bad1", "good2", "bad3", "good4"):  # failures never two in a row
        _, item = data[uid]
        assert item["audio"].size == (0 if uid.startswith("bad") else 4)
    assert data.total == 2
    data["bad5"]
    with pytest.raises(UnreadableAudioError, match="2 consecutive train audio files could not be read"):
        data["bad6"]
    assert data.total == 4
