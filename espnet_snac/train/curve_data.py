"""Audio for the learning curve: random training chunks from a Kaldi data dir, and a held-out list.

Training chunks are drawn like ESPnet's chunk iterator draws them (fixed ``chunk_length``, uniform
random offset in a random utterance long enough to hold one chunk), from ``wav.scp`` and, when
present, ``segments``. Utterances are read as token extraction reads them (``tokens.inputs``),
resampled to the codec rate once before training and kept in memory, so reading stays out of the
measured iterations.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from espnet_snac.io.audio_io import AudioError
from espnet_snac.io.scp import read_scp
from espnet_snac.tokens.inputs import InputItem, load_item, read_inputs


class CurveDataError(ValueError):
    """Unusable learning-curve input; the message names the file and the reason."""


def _items(data_dir: Path) -> List[InputItem]:
    """The utterances of a Kaldi data dir (``wav.scp`` and, if present, ``segments``), in file order."""
    wav_scp, segments = data_dir / "wav.scp", data_dir / "segments"
    if not data_dir.is_dir():
        raise CurveDataError(f"{data_dir}: no such data directory (expected a Kaldi dir with wav.scp)")
    if not wav_scp.is_file():
        raise CurveDataError(f"{wav_scp}: no such file (the training data dir needs a wav.scp)")
    if not read_scp(wav_scp):
        raise CurveDataError(f"{wav_scp}: no utterances listed")
    try:
        items = read_inputs(wav_scp, segments if segments.is_file() else None)
    except ValueError as e:  # a segment naming an unknown recording
        raise CurveDataError(str(e)) from e
    if not items:
        raise CurveDataError(f"{segments}: no segments listed")
    return items


class ChunkSampler:
    """Random ``(batch_size, chunk_length)`` training batches at ``sample_rate``.

    Unreadable utterances (as token extraction reads them: ``tokens.inputs.load_item``) and those
    shorter than one chunk are rejected (counted and logged once); if none is left,
    :class:`CurveDataError` says why.
    """

    def __init__(self, data_dir: Path, sample_rate: int, chunk_length: int, batch_size: int, seed: int = 0):
        if chunk_length <= 0 or batch_size <= 0:
            raise CurveDataError(f"chunk_length and batch_size must be > 0, got {chunk_length}, {batch_size}")
        self.data_dir = Path(data_dir)
        self.sample_rate = int(sample_rate)
        self.chunk_length = int(chunk_length)
        self.batch_size = int(batch_size)
        self.rng = np.random.default_rng(seed)
        items = _items(self.data_dir)
        self.audio: Dict[str, np.ndarray] = {}
        self.rejected: Dict[str, str] = {}
        for item in items:  # read everything once: rejections are known before training starts
            self._load(item)
        if not self.audio:
            reasons = "; ".join(f"{u}: {r}" for u, r in list(self.rejected.items())[:5])
            raise CurveDataError(f"{self.data_dir}: no utterance holds one chunk of {self.chunk_length} samples "
                                 f"at {self.sample_rate} Hz ({len(self.rejected)} rejected: {reasons})")
        self.keys: List[str] = list(self.audio)
        if self.rejected:
            logging.warning(f"{self.data_dir}: {len(self.rejected)} of {len(items)} utterances rejected "
                            f"(first: {next(iter(self.rejected.items()))})")

    def _load(self, item: InputItem) -> None:
        try:
            x = load_item(item, self.sample_rate)
        except AudioError as e:
            self.rejected[item.utt] = str(e)
            return
        if x.size < self.chunk_length:
            self.rejected[item.utt] = f"{x.size} samples, shorter than one chunk ({self.chunk_length})"
            return
        self.audio[item.utt] = np.ascontiguousarray(x, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.keys)

    def batch(self) -> torch.Tensor:
        """``(batch_size, chunk_length)`` float32 chunks from random utterances at random offsets."""
        out = np.empty((self.batch_size, self.chunk_length), dtype=np.float32)
        for i, k in enumerate(self.rng.integers(len(self.keys), size=self.batch_size)):
            x = self.audio[self.keys[k]]
            start = int(self.rng.integers(x.size - self.chunk_length + 1))
            out[i] = x[start:start + self.chunk_length]
        return torch.from_numpy(out)


def _eval_entries(wav_scp: Path) -> "OrderedDict[str, str]":
    if not wav_scp.is_file():
        raise CurveDataError(f"{wav_scp}: no such file (--eval_scp must be a wav.scp of held-out utterances)")
    entries = read_scp(wav_scp)
    if not entries:
        raise CurveDataError(f"{wav_scp}: no utterances listed")
    return entries


def check_inputs(train_dir: Path, eval_scp: Path) -> None:
    """Both lists exist and are not empty (a cheap check before any model is built)."""
    _items(Path(train_dir))
    _eval_entries(Path(eval_scp))


def load_eval_set(wav_scp: Path, sample_rate: int, max_utts: Optional[int] = None) -> "OrderedDict[str, np.ndarray]":
    """The held-out utterances of ``wav_scp`` (first ``max_utts``), mono at ``sample_rate``.

    Any unreadable file is an error: the curve must always score the same list.
    """
    wav_scp = Path(wav_scp)
    entries = _eval_entries(wav_scp)
    if max_utts is not None:
        if max_utts < 1:
            raise CurveDataError(f"--max_eval_utts must be >= 1, got {max_utts}")
        entries = OrderedDict(list(entries.items())[:max_utts])
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for utt, value in entries.items():
        try:  # empty or non-finite audio is an AudioError too
            out[utt] = load_item(InputItem(utt, value), sample_rate)
        except AudioError as e:
            raise CurveDataError(f"{wav_scp}: {e}") from e
    return out
