"""Training checkpoints that survive a kill at any moment.

- Every file is written atomically: a temporary file in the same directory, ``fsync``, ``rename``
  (and an ``fsync`` of the directory), with the mode the user's umask gives a new file.
- ``checkpoint.pth`` (latest) and ``checkpoint.prev.pth`` (the one before) are kept; a latest
  checkpoint that cannot be read is skipped with a warning and the previous one is used.
- Checkpoints load with ``torch.load(weights_only=True)``: only tensors and plain containers,
  never arbitrary pickled objects.
"""
from __future__ import annotations

import datetime
import logging
import os
import random
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from espnet_snac.io.atomic_files import atomic_open

PathLike = Union[str, Path]
LATEST = "checkpoint.pth"
PREVIOUS = "checkpoint.prev.pth"
FORMAT = "espnet_snac.train/1"
REQUIRED_KEYS = ("format", "model", "optimizers", "schedulers", "reporter", "trainer")


def _plain(obj: Any) -> Any:
    """Reporter stats as plain types that ``weights_only`` loading accepts."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, datetime.timedelta):
        return {"__timedelta_seconds__": obj.total_seconds()}
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _unplain(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__timedelta_seconds__"}:
            return datetime.timedelta(seconds=obj["__timedelta_seconds__"])
        return {k: _unplain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unplain(v) for v in obj]
    return obj


def reporter_state(reporter, completed_epoch: int) -> Dict[str, Any]:
    """ESPnet ``Reporter`` state as of the end of ``completed_epoch`` (mid-epoch checkpoints store the
    epoch before the one in progress, so that a resume re-enters that epoch)."""
    return {"epoch": int(completed_epoch), "stats": _plain(reporter.state_dict()["stats"])}


def load_reporter_state(reporter, state: Dict[str, Any]) -> None:
    reporter.load_state_dict({"epoch": state["epoch"], "stats": _unplain(state["stats"])})


def rng_state() -> Dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) random states as tensors and plain values."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": _plain(random.getstate()),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def _cpu(t: torch.Tensor, what: str) -> torch.Tensor:
    if t.device.type != "cpu":
        raise ValueError(f"the saved {what} random state is a {t.device} tensor; load the checkpoint with "
                         "map_location='cpu' (random states are CPU tensors)")
    return t


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s output; the tensors must be CPU tensors (checkpoints are loaded
    with ``map_location='cpu'``): torch and NumPy accept nothing else."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    keys = _cpu(n["keys"], "NumPy")
    np.random.set_state((n["name"], keys.numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(_cpu(state["torch"], "torch CPU"))
    if state["cuda"] and torch.cuda.is_available():
        cuda = [_cpu(t, "CUDA") for t in state["cuda"]]
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


def gather_rng_states(distributed: bool) -> List[Dict[str, Any]]:
    """Every rank's :func:`rng_state`, in rank order (a collective when ``distributed``: all ranks call it)."""
    mine = rng_state()
    if not distributed:
        return [mine]
    states: List[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(states, mine)
    return states


def rank_rng_state(state: Dict[str, Any], rank: int, world_size: int) -> Optional[Dict[str, Any]]:
    """The random state that ``rank`` of ``world_size`` saved in checkpoint ``state``; rank 0's (with a
    warning) when the checkpoint was written by a different number of ranks or before per-rank states."""
    ranks = state.get("rng_ranks")
    if ranks and len(ranks) == world_size:
        return ranks[rank]
    if ranks or world_size > 1:
        logging.warning(f"The checkpoint holds random states of {len(ranks) if ranks else 1} rank(s), not "
                        f"{world_size}: rank {rank} continues with rank 0's (results differ from an "
                        "uninterrupted run)")
    return state.get("rng")


def save_checkpoint(output_dir: PathLike, state: Dict[str, Any]) -> Path:
    """Write ``state`` as ``output_dir/checkpoint.pth``; the former one becomes ``checkpoint.prev.pth``.

    At every moment ``checkpoint.pth`` is a complete file (the new or the old one): the new file is
    fully written and synced before the previous one is moved aside by a hard link.
    """
    output_dir = Path(output_dir)
    latest, previous = output_dir / LATEST, output_dir / PREVIOUS

    def keep_previous() -> None:
        if not latest.exists():
            return
        try:
            link = f"{previous}.link"
            if os.path.lexists(link):
                os.unlink(link)
            os.link(latest, link)
            os.replace(link, previous)
        except OSError:  # no hard links here: a short window where only the previous exists
            os.replace(latest, previous)

    with atomic_open(latest, "wb", before_replace=keep_previous) as fh:
        torch.save({"format": FORMAT, **state}, fh)
    return latest


def _read(path: Path, map_location) -> Dict[str, Any]:
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} training checkpoint")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"missing entries {missing}")
    return state


def load_checkpoint(output_dir: PathLike, map_location="cpu") -> Optional[Tuple[Dict[str, Any], Path]]:
    """The newest readable checkpoint in ``output_dir`` and its path; ``None`` if there is none.

    A latest checkpoint that is truncated, corrupt or of another format is skipped with a warning and
    the previous one is used. If checkpoints exist but none can be read, raises ``RuntimeError``
    naming each file and why.
    """
    output_dir = Path(output_dir)
    errors: List[str] = []
    for path in (output_dir / LATEST, output_dir / PREVIOUS):
        if not path.exists():
            continue
        try:
            state = _read(path, map_location)
        except Exception as e:  # noqa: BLE001 - any unreadable file falls back to the previous one
            if isinstance(e, ValueError):
                reason = str(e)
            else:  # torch's message suggests weights_only=False, which we never do
                reason = f"truncated or corrupt, or holds pickled objects other than tensors ({type(e).__name__})"
            errors.append(f"{path}: {reason}")
            logging.warning(f"Checkpoint {errors[-1]}; trying the previous checkpoint")
            continue
        if errors:
            logging.warning(f"Resuming from the previous checkpoint {path}")
        return state, path
    if errors:
        raise RuntimeError(
            "No readable training checkpoint: " + "; ".join(errors)
            + ". Remove them (or start with --resume false in a new --output_dir) to train from scratch."
        )
    return None


class CheckpointSchedule:
    """Decides when to write a mid-epoch checkpoint: every ``every_iters`` iterations and/or every
    ``every_minutes`` minutes since the last checkpoint (``None`` or <= 0 switches a rule off)."""

    def __init__(self, every_iters: Optional[int] = None, every_minutes: Optional[float] = None, clock=time.monotonic):
        self.every_iters = int(every_iters) if every_iters and every_iters > 0 else None
        self.every_seconds = float(every_minutes) * 60 if every_minutes and every_minutes > 0 else None
        self.clock = clock
        self.last_time = clock()

    def due(self, iteration: int) -> bool:
        """``iteration``: global count of training iterations done."""
        if self.every_iters and iteration % self.every_iters == 0:
            return True
        return bool(self.every_seconds and self.clock() - self.last_time >= self.every_seconds)

    def written(self) -> None:
        self.last_time = self.clock()
