"""Audio that became unreadable after data preparation costs its utterance, not the training run.

A file deleted, truncated or unreachable (NFS) between stage 2 and a week into training makes ESPnet's
dataset raise inside the data-loader, which ends the epoch's chunk iterator and the run.
:class:`TolerantDataset` wraps the dataset of a chunk iterator: a read error is logged with the
utterance, the file and the reason, counted, and the utterance is returned empty, which ESPnet's
chunk iterator skips ("shorter than any chunk length"). ``max_consecutive`` failures in a row (no
file read successfully in between: the storage is gone, not one file) stop the run with a clear
message. The counters are shared with the data-loader's worker processes.
"""
from __future__ import annotations

import logging
import multiprocessing
from typing import Any, Dict, Optional, Tuple

import numpy as np

#: Exceptions of a failed read: missing/unreachable files (OSError), libsndfile's errors
#: (RuntimeError), truncated archives (EOFError, ValueError).
READ_ERRORS = (OSError, RuntimeError, EOFError, ValueError)
DEFAULT_MAX_CONSECUTIVE = 20


class UnreadableAudioError(RuntimeError):
    """Too many consecutive training files could not be read."""


class TolerantDataset:
    """ESPnet dataset wrapper (``uid -> (uid, {name: array})``) that survives unreadable files."""

    def __init__(self, dataset, max_consecutive: int = DEFAULT_MAX_CONSECUTIVE, mode: str = "train"):
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive_unreadable must be >= 1, got {max_consecutive}")
        self.dataset = dataset
        self.max_consecutive = int(max_consecutive)
        self.mode = mode
        self._total = multiprocessing.Value("l", 0)
        self._consecutive = multiprocessing.Value("l", 0)

    @property
    def total(self) -> int:
        """Unreadable reads so far (all workers, all epochs)."""
        return int(self._total.value)

    def __getattr__(self, name: str) -> Any:  # names(), has_name(), loader_dict, ... of the dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __len__(self) -> int:
        return len(self.dataset)

    def _path(self, uid) -> str:
        """The file behind ``uid`` (the scp's value), or the scp when the loader does not tell."""
        for name, loader in getattr(self.dataset, "loader_dict", {}).items():
            data = getattr(getattr(loader, "loader", loader), "data", None)
            if isinstance(data, dict) and uid in data:
                return str(data[uid])
            return str(getattr(self.dataset, "debug_info", {}).get(name, ("?",))[0])
        return "?"

    def __getitem__(self, uid) -> Tuple[Any, Dict[str, np.ndarray]]:
        try:
            item = self.dataset[uid]
        except READ_ERRORS as e:
            with self._total.get_lock():
                self._total.value += 1
                total = self._total.value
            with self._consecutive.get_lock():
                self._consecutive.value += 1
                consecutive = self._consecutive.value
            path = self._path(uid)
            logging.warning(f"Unreadable {self.mode} audio skipped: utterance {uid}, file {path}: "
                            f"{type(e).__name__}: {e} ({total} unreadable so far)")
            if consecutive >= self.max_consecutive:
                raise UnreadableAudioError(
                    f"{consecutive} consecutive {self.mode} audio files could not be read (the last: {path}: "
                    f"{type(e).__name__}: {e}); --max_consecutive_unreadable {self.max_consecutive}. The data "
                    "storage is probably gone or the data directory changed since stage 2: check it (or "
                    "rerun stage 2), then rerun the same command to resume from the last checkpoint."
                ) from e
            names = list(getattr(self.dataset, "loader_dict", {})) or ["audio"]
            return uid, {name: np.zeros(0, dtype=np.float32) for name in names}
        if self._consecutive.value:
            with self._consecutive.get_lock():
                self._consecutive.value = 0
        return item


def tolerant_dataset(factory) -> Optional[TolerantDataset]:
    """The :class:`TolerantDataset` that :func:`wrap_iter_factory` put into ``factory``, else None."""
    dataset = getattr(getattr(factory, "per_sample_iter_factory", None), "dataset", None)
    return dataset if isinstance(dataset, TolerantDataset) else None


def wrap_iter_factory(factory, max_consecutive: int, mode: str):
    """Wrap the dataset of ESPnet's ``ChunkIterFactory`` (its per-utterance loader) in a
    :class:`TolerantDataset`; returns that dataset, or None for other iterators (left unchanged: an
    empty utterance would become a silent row of a padded batch there)."""
    inner = getattr(factory, "per_sample_iter_factory", None)
    if inner is None or not hasattr(inner, "dataset"):
        return None
    if not isinstance(inner.dataset, TolerantDataset):
        inner.dataset = TolerantDataset(inner.dataset, max_consecutive, mode)
    return inner.dataset
