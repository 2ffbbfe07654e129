"""Audio for the learning curve: random training chunks from a Kaldi data dir, and a held-out list.

Training chunks are drawn like ESPnet's chunk iterator draws them (fixed ``chunk_length``, uniform
random offset in a random utterance long enough to hold one chunk), from ``wav.scp`` and, when
present, ``segments``. Utterances are read and resampled to the codec rate on first use and kept in
memory, so the cost of reading stays out of the measured iterations after the first pass.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from espnet_snac.audio_io import AudioError, resample, to_mono
from espnet_snac.scp import load_scp_audio, read_scp, read_segments


class CurveDataError(ValueError):
    """Unusable learning-curve input; the message names the file and the reason."""


def _entries(data_dir: Path) -> "OrderedDict[str, Tuple[str, str, Optional[Tuple[float, float]]]]":
    """``utt -> (recording id, scp value, (start, end) seconds or None)`` of a Kaldi data dir."""
    wav_scp = data_dir / "wav.scp"
    if not data_dir.is_dir():
        raise CurveDataError(f"{data_dir}: no such data directory (expected a Kaldi dir with wav.scp)")
    if not wav_scp.is_file():
        raise CurveDataError(f"{wav_scp}: no such file (the training data dir needs a wav.scp)")
    recordings = read_scp(wav_scp)
    if not recordings:
        raise CurveDataError(f"{wav_scp}: no utterances listed")
    out: "OrderedDict[str, Tuple[str, str, Optional[Tuple[float, float]]]]" = OrderedDict()
    segments = data_dir / "segments"
    if not segments.is_file():
        for utt, value in recordings.items():
            out[utt] = (utt, value, None)
        return out
    for utt, (rec, start, end) in read_segments(segments).items():
        if rec not in recordings:
            raise CurveDataError(f"{segments}: segment {utt} refers to recording {rec!r}, not in {wav_scp}")
        out[utt] = (rec, recordings[rec], (start, end))
    if not out:
        raise CurveDataError(f"{segments}: no segments listed")
    return out


class ChunkSampler:
    """Random ``(batch_size, chunk_length)`` training batches at ``sample_rate``.

    Unreadable utterances and those shorter than one chunk are rejected (counted and logged once);
    if none is left, :class:`CurveDataError` says why.
    """

    def __init__(self, data_dir: Path, sample_rate: int, chunk_length: int, batch_size: int, seed: int = 0):
        if chunk_length <= 0 or batch_size <= 0:
            raise CurveDataError(f"chunk_length and batch_size must be > 0, got {chunk_length}, {batch_size}")
        self.data_dir = Path(data_dir)
        self.sample_rate = int(sample_rate)
        self.chunk_length = int(chunk_length)
        self.batch_size = int(batch_size)
        self.rng = np.random.default_rng(seed)
        self.entries = _entries(self.data_dir)
        self._recordings: Dict[str, np.ndarray] = {}
        self.audio: Dict[str, np.ndarray] = {}
        self.rejected: Dict[str, str] = {}
        for utt in self.entries:  # read everything once: rejections are known before training starts
            self._load(utt)
        if not self.audio:
            reasons = "; ".join(f"{u}: {r}" for u, r in list(self.rejected.items())[:5])
            raise CurveDataError(f"{self.data_dir}: no utterance holds one chunk of {self.chunk_length} samples "
                                 f"at {self.sample_rate} Hz ({len(self.rejected)} rejected: {reasons})")
        self.keys: List[str] = list(self.audio)
        if self.rejected:
            logging.warning(f"{self.data_dir}: {len(self.rejected)} of {len(self.entries)} utterances rejected "
                            f"(first: {next(iter(self.rejected.items()))})")

    def _recording(self, rec: str, value: str) -> np.ndarray:
        if rec not in self._recordings:
            samples, sr = load_scp_audio(value, name=rec)
            self._recordings[rec] = resample(to_mono(samples), sr, self.sample_rate)
        return self._recordings[rec]

    def _load(self, utt: str) -> None:
        rec, value, span = self.entries[utt]
        try:
            x = self._recording(rec, value)
        except AudioError as e:
            self.rejected[utt] = str(e)
            return
        if span is not None:
            start, end = span
            x = x[int(round(start * self.sample_rate)): None if end < 0 else int(round(end * self.sample_rate))]
        if x.size < self.chunk_length:
            self.rejected[utt] = f"{x.size} samples, shorter than one chunk ({self.chunk_length})"
            return
        if not np.all(np.isfinite(x)):
            self.rejected[utt] = "non-finite samples"
            return
        self.audio[utt] = np.ascontiguousarray(x, dtype=np.float32)

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


def check_inputs(train_dir: Path, eval_scp: Path) -> None:
    """Both lists exist and are not empty (a cheap check before any model is built)."""
    _entries(Path(train_dir))
    eval_scp = Path(eval_scp)
    if not eval_scp.is_file():
        raise CurveDataError(f"{eval_scp}: no such file (--eval_scp must be a wav.scp of held-out utterances)")
    if not read_scp(eval_scp):
        raise CurveDataError(f"{eval_scp}: no utterances listed")


def load_eval_set(wav_scp: Path, sample_rate: int, max_utts: Optional[int] = None) -> "OrderedDict[str, np.ndarray]":
    """The held-out utterances of ``wav_scp`` (first ``max_utts``), mono at ``sample_rate``.

    Any unreadable file is an error: the curve must always score the same list.
    """
    wav_scp = Path(wav_scp)
    if not wav_scp.is_file():
        raise CurveDataError(f"{wav_scp}: no such file (--eval_scp must be a wav.scp of held-out utterances)")
    entries = read_scp(wav_scp)
    if not entries:
        raise CurveDataError(f"{wav_scp}: no utterances listed")
    if max_utts is not None:
        if max_utts < 1:
            raise CurveDataError(f"--max_eval_utts must be >= 1, got {max_utts}")
        entries = OrderedDict(list(entries.items())[:max_utts])
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for utt, value in entries.items():
        try:
            samples, sr = load_scp_audio(value, name=utt)
        except AudioError as e:
            raise CurveDataError(f"{wav_scp}: {e}") from e
        x = resample(to_mono(samples), sr, sample_rate)
        if x.size == 0:
            raise CurveDataError(f"{wav_scp}: {utt} is empty")
        out[utt] = x
    return out
