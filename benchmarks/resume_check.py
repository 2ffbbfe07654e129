"""Trainer resume on a device: a short tiny-config training, stopped, then resumed through the CLI.

    python benchmarks/resume_check.py [--device cpu|cuda] [--work_dir DIR]

Run 1 trains one epoch of the tiny config (``conf/tuning/train_snac24k_tiny.yaml``, 3 iterations on a
synthetic corpus: ``tests/tiny_training.py``) through ``espnet_snac.bin.gan_codec_train`` and stops;
run 2 is the same command with ``--max_epoch 2`` and resumes from ``checkpoint.pth`` (on CUDA with
``--ngpu 1``: the checkpoint is read onto the GPU, random states and optimizer states included).
Checked: run 2 resumed (the trainer logs that it resumed from run 1's checkpoint at run 1's last
iteration; the trainer's iteration counter and every optimizer's step count continue from run 1 to
twice its value; ``2epoch.pth`` written). Last line:
``resume_ok=true|false iterations=N first_run_s=X resume_run_s=Y``.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from tiny_training import train_args, write_corpus  # noqa: E402

N_TRAIN, CHUNKS, BATCH = 2, 3, 2
ITERS_PER_EPOCH = N_TRAIN * CHUNKS // BATCH


class _Lines(logging.Handler):
    """Keeps the messages logged while it is attached (the trainer's resume line)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _state(exp: Path) -> dict:
    return torch.load(exp / "checkpoint.pth", map_location="cpu", weights_only=True)


def _steps(state: dict) -> set:
    return {int(s["step"]) for opt in state["optimizers"] for s in opt["state"].values()}


def run(device: str, work: Path) -> bool:
    from espnet_snac.bin.gan_codec_train import main as train

    data = write_corpus(work / "data", n_train=N_TRAIN, chunks_per_utt=CHUNKS)
    exp = work / "exp"

    def args(epochs: int) -> list:
        a = train_args(data, exp, max_epoch=epochs, batch_size=BATCH, n_train=N_TRAIN)
        a[a.index("--ngpu") + 1] = "1" if device == "cuda" else "0"
        return a

    start = time.perf_counter()
    train(args(1))
    first_s = time.perf_counter() - start
    first = _state(exp)
    logs = _Lines()
    root = logging.getLogger()
    root.addHandler(logs)
    level, root.level = root.level, min(root.level, logging.INFO)
    try:
        start = time.perf_counter()
        train(args(2))  # --resume true is part of the tiny-training arguments
        resume_s = time.perf_counter() - start
    finally:
        root.removeHandler(logs)
        root.setLevel(level)
    second = _state(exp)
    resumed = [ln for ln in logs.lines if "resumed" in ln]
    print("\n".join(resumed) or "no resume line logged by run 2")
    checks = {
        "run 1 stopped after one epoch": first["trainer"]["iteration"] == ITERS_PER_EPOCH,
        "run 1 optimizer steps": _steps(first) == {ITERS_PER_EPOCH},
        "run 2 resumed from run 1's last iteration": any(f"iteration {ITERS_PER_EPOCH})" in ln for ln in resumed),
        "run 2 iteration continues": second["trainer"]["iteration"] == 2 * ITERS_PER_EPOCH,
        "run 2 optimizer steps continue": _steps(second) == {2 * ITERS_PER_EPOCH},
        "run 2 wrote 2epoch.pth": (exp / "2epoch.pth").is_file(),
    }
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    ok = all(checks.values())
    print(f"resume_ok={'true' if ok else 'false'} iterations={second['trainer']['iteration']} "
          f"first_run_s={first_s:.1f} resume_run_s={resume_s:.1f}", flush=True)
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--work_dir", type=Path, default=None, help="kept after the run (default: a temporary dir)")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible to torch")
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        return 0 if run(args.device, args.work_dir) else 1
    with tempfile.TemporaryDirectory(prefix="resume_check_") as tmp:
        return 0 if run(args.device, Path(tmp)) else 1


if __name__ == "__main__":
    sys.exit(main())
