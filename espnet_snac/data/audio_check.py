"""Decode, validate and convert one item to mono float32 at the target rate.

Everything that can go wrong with an input ends in ``Rejected`` with a reason code
(see ``items.REASONS``); everything else is converted: any rate in the accepted range is resampled
with soxr, channels are averaged, and a signal that resampling pushed over full scale is scaled
down so that writing 16-bit audio never clips.

Sound files longer than ``STREAM_SECONDS`` are converted block by block in two passes (check and
measure the peak, then convert and write), so memory does not grow with the duration of a file.
"""
from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Tuple

import numpy as np
import soundfile as sf

from espnet_snac.io.audio_io import AudioError, read_audio, resample, to_mono, wav_data_shortfall, wav_file_shortfall
from espnet_snac.data.bandwidth import effective_bandwidth
from espnet_snac.data.items import Rejected, SourceItem


#: Files longer than this (seconds) are converted block by block, in blocks of BLOCK_SECONDS.
STREAM_SECONDS = 600.0
BLOCK_SECONDS = 20.0
_BUFFER_NAME = re.compile(r"Error opening <_io\.BytesIO object at 0x[0-9a-f]+>: ")


@dataclass(frozen=True)
class AudioLimits:
    """What is accepted: input rates in [min_input_fs, max_input_fs], durations (seconds) in
    [min_duration, max_duration] (``max_duration`` 0 = unlimited)."""

    fs: int = 24000
    min_input_fs: int = 8000
    max_input_fs: int = 96000
    min_duration: float = 0.25
    max_duration: float = 0.0


@dataclass
class Converted:
    """Result of ``convert``: ``samples`` (T,) float32 at ``limits.fs``; input rate/channels."""

    samples: Optional[np.ndarray]  # None for a streamed file: see ``blocks``
    input_fs: int
    input_channels: int
    gain: float = 1.0  # < 1 when the signal was scaled down to avoid clipping
    bandwidth_hz: Optional[float] = None  # effective bandwidth at the input rate, when measured
    blocks: Optional[Callable[[], Iterator[np.ndarray]]] = None  # streamed: yields (t,) float32 blocks
    num_samples: int = -1  # output length; set for streamed files

    def __post_init__(self) -> None:
        if self.samples is not None:
            self.num_samples = int(self.samples.shape[0])


def _load_bytes(payload: str) -> bytes:
    if not os.path.exists(payload):
        raise Rejected("missing_audio", f"no such file: {payload}")
    if os.path.isdir(payload):
        raise Rejected("missing_audio", f"is a directory: {payload}")
    with open(payload, "rb") as fh:
        return fh.read()


def _truncated(origin: str, shortfall: Tuple[int, int]) -> Rejected:
    return Rejected("truncated", f"{origin}: WAV data chunk declares {shortfall[0]} bytes, file has {shortfall[1]}")


def _decode(data: bytes, origin: str) -> Tuple[np.ndarray, int]:
    """Decode encoded bytes to ((T, C) float32, rate), detecting truncation."""
    if len(data) == 0:
        raise Rejected("empty_file", origin)
    shortfall = wav_data_shortfall(data)
    if shortfall is not None:
        raise _truncated(origin, shortfall)
    try:
        samples, sr = read_audio(data, name=origin)
    except AudioError as exc:  # libsndfile names the in-memory buffer; that helps nobody
        raise Rejected("decode_error", _BUFFER_NAME.sub("", str(exc))) from None
    try:
        info = sf.info(io.BytesIO(data))
        declared = int(info.frames)
        lossless = info.format in ("WAV", "WAVEX", "FLAC", "AIFF", "AU", "W64", "CAF", "RF64")
    except Exception:  # info failing after a successful read is not worth a rejection
        declared, lossless = 0, False
    if lossless and 0 < declared and samples.shape[0] < declared:
        raise Rejected("truncated", f"{origin}: header declares {declared} frames, decoded {samples.shape[0]}")
    return samples, sr


def _as_2d(array: np.ndarray, origin: str) -> np.ndarray:
    """A decoded array as (T, C) float32; (C, T) with few channels is transposed."""
    try:
        arr = np.asarray(array)
    except Exception as exc:
        raise Rejected("decode_error", f"{origin}: audio array not numeric ({exc})") from None
    if arr.dtype.kind not in "iuf" or arr.ndim not in (1, 2):
        raise Rejected("decode_error", f"{origin}: audio array must be 1-D or 2-D numbers, got {arr.dtype} {arr.shape}")
    if arr.dtype.kind in "iu":  # integer PCM -> [-1, 1)
        arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max + 1)
    if arr.ndim == 1:
        return arr.astype(np.float32, copy=False)[:, None]
    if arr.shape[0] <= 8 < arr.shape[1]:
        arr = arr.T
    return arr.astype(np.float32, copy=False)


def decode_item(item: SourceItem) -> Tuple[np.ndarray, int]:
    """Decode an item's payload to ((T, C) float32, rate) without conversion."""
    payload = item.audio
    if payload is None:
        raise Rejected("missing_audio", f"{item.origin}: no audio in this row")
    if isinstance(payload, Rejected):
        raise payload
    if isinstance(payload, tuple):
        array, sr = payload
        if sr is None or int(sr) <= 0:
            raise Rejected("unsupported_rate", f"{item.origin}: missing or invalid sampling rate {sr!r}")
        return _as_2d(array, item.origin), int(sr)
    if isinstance(payload, str):
        return _decode(_load_bytes(payload), payload)
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return _decode(bytes(payload), item.origin)
    raise Rejected("missing_audio", f"{item.origin}: unusable audio value of type {type(payload).__name__}")


def _long_file(item: SourceItem) -> Optional["sf._SoundFileInfo"]:
    """The header of a whole sound file longer than ``STREAM_SECONDS``, else None."""
    if not isinstance(item.audio, str) or item.start > 0 or (item.end is not None and item.end >= 0):
        return None
    try:
        info = sf.info(item.audio)
    except Exception:  # the in-memory path reports what is wrong with it
        return None
    return info if info.samplerate > 0 and info.frames > STREAM_SECONDS * info.samplerate else None


def _mono_blocks(path: str, sr: int, fs: int, origin: str) -> Iterator[np.ndarray]:
    """Decoded, checked, downmixed and resampled blocks ``(t,)`` float32 of a long file."""
    import soxr

    stream = soxr.ResampleStream(sr, fs, 1, dtype="float32", quality="VHQ") if sr != fs else None
    for block in sf.blocks(path, blocksize=int(BLOCK_SECONDS * sr), dtype="float32", always_2d=True):
        if not np.isfinite(block).all():
            raise Rejected("non_finite", f"{origin}: NaN or Inf samples")
        mono = to_mono(block)
        yield stream.resample_chunk(mono) if stream is not None else mono
    if stream is not None:
        yield stream.resample_chunk(np.zeros(0, np.float32), last=True)


def _convert_long(item: SourceItem, info, limits: AudioLimits) -> Converted:
    path, origin, sr = item.audio, item.audio, int(info.samplerate)
    shortfall = wav_file_shortfall(path)
    if shortfall is not None:
        raise _truncated(origin, shortfall)
    if not limits.min_input_fs <= sr <= limits.max_input_fs:
        raise Rejected("unsupported_rate", f"{origin}: {sr} Hz is outside {limits.min_input_fs}..{limits.max_input_fs} Hz")
    duration = info.frames / sr
    if limits.max_duration > 0 and duration > limits.max_duration:
        raise Rejected("too_long", f"{origin}: {duration:.1f} s > {limits.max_duration} s")
    peak, length = 0.0, 0
    try:  # first pass: everything the in-memory path checks, and the peak after resampling
        for block in _mono_blocks(path, sr, limits.fs, origin):
            length += block.shape[0]
            if block.size:
                peak = max(peak, float(np.max(np.abs(block))))
    except Rejected:
        raise
    except Exception as exc:  # libsndfile errors part-way through a damaged file
        raise Rejected("decode_error", f"{origin}: {type(exc).__name__}: {exc}") from None
    if peak == 0.0:
        raise Rejected("silent", f"{origin}: all samples are zero")
    gain = 0.999 / peak if peak > 1.0 else 1.0

    def blocks() -> Iterator[np.ndarray]:
        for block in _mono_blocks(path, sr, limits.fs, origin):
            yield (block * gain).astype(np.float32) if gain != 1.0 else block

    return Converted(samples=None, input_fs=sr, input_channels=int(info.channels), gain=gain, blocks=blocks,
                     num_samples=length)


def convert(item: SourceItem, limits: AudioLimits, measure_bandwidth: bool = False) -> Converted:
    """Decode, check and convert one item. Raises ``Rejected``; returns ``Converted`` (with the
    effective bandwidth at the input rate when ``measure_bandwidth``; for a file longer than
    ``STREAM_SECONDS``, one that yields the converted audio in blocks, bandwidth not measured)."""
    info = _long_file(item)
    if info is not None:
        return _convert_long(item, info, limits)
    samples, sr = decode_item(item)
    if not limits.min_input_fs <= sr <= limits.max_input_fs:
        raise Rejected(
            "unsupported_rate",
            f"{item.origin}: {sr} Hz is outside {limits.min_input_fs}..{limits.max_input_fs} Hz",
        )
    if item.start > 0 or (item.end is not None and item.end >= 0):
        first = int(round(item.start * sr))
        last = samples.shape[0] if item.end is None or item.end < 0 else int(round(item.end * sr))
        if last > samples.shape[0] + int(0.01 * sr):  # Kaldi segments may overrun by rounding
            raise Rejected(
                "truncated",
                f"{item.origin}: segment ends at {item.end:.3f} s, recording has {samples.shape[0] / sr:.3f} s",
            )
        samples = samples[first:last]
    if samples.shape[0] == 0:
        raise Rejected("zero_length", item.origin)
    if not np.isfinite(samples).all():
        raise Rejected("non_finite", f"{item.origin}: NaN or Inf samples")
    channels = samples.shape[1]
    mono = to_mono(samples)
    if not np.any(mono):
        raise Rejected("silent", f"{item.origin}: all samples are zero")
    duration = mono.shape[0] / sr
    if duration < limits.min_duration:
        raise Rejected("too_short", f"{item.origin}: {duration:.3f} s < {limits.min_duration} s")
    if limits.max_duration > 0 and duration > limits.max_duration:
        raise Rejected("too_long", f"{item.origin}: {duration:.1f} s > {limits.max_duration} s")
    out = resample(mono, sr, limits.fs)
    peak = float(np.max(np.abs(out)))
    gain = 1.0
    if peak > 1.0:  # 16-bit writing would clip: scale the utterance just below full scale
        gain = 0.999 / peak
        out = (out * gain).astype(np.float32)
    bandwidth = effective_bandwidth(mono, sr) if measure_bandwidth else None
    return Converted(samples=out, input_fs=sr, input_channels=channels, gain=gain, bandwidth_hz=bandwidth)
