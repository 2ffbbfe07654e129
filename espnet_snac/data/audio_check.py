"""Decode, validate and convert one item to mono float32 at the target rate.

Everything that can go wrong with an input ends in ``Rejected`` with a reason code
(see ``items.REASONS``); everything else is converted: any rate in the accepted range is resampled
with soxr, channels are averaged, and a signal that resampling pushed over full scale is scaled
down so that writing 16-bit audio never clips.
"""
from __future__ import annotations

import io
import os
import re
import struct
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import soundfile as sf

from espnet_snac.audio_io import AudioError, read_audio, resample, to_mono
from espnet_snac.data.bandwidth import effective_bandwidth
from espnet_snac.data.items import Rejected, SourceItem


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

    samples: np.ndarray
    input_fs: int
    input_channels: int
    gain: float = 1.0  # < 1 when the signal was scaled down to avoid clipping
    bandwidth_hz: Optional[float] = None  # effective bandwidth at the input rate, when measured


def _load_bytes(payload: str) -> bytes:
    if not os.path.exists(payload):
        raise Rejected("missing_audio", f"file not found: {payload}")
    if os.path.isdir(payload):
        raise Rejected("missing_audio", f"is a directory: {payload}")
    with open(payload, "rb") as fh:
        return fh.read()


def _wav_data_shortfall(data: bytes) -> Optional[Tuple[int, int]]:
    """For RIFF/WAVE bytes: (declared, present) sizes of the data chunk when it is cut short."""
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RIFX") or data[8:12] != b"WAVE":
        return None
    endian = "<" if data[:4] == b"RIFF" else ">"
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        (size,) = struct.unpack(endian + "I", data[pos + 4 : pos + 8])
        if chunk_id == b"data":
            present = len(data) - pos - 8
            # 0 and 0xFFFFFFFF mark streamed WAVs whose writer never knew the final size
            if size not in (0, 0xFFFFFFFF) and present < size:
                return size, present
            return None
        pos += 8 + size + (size & 1)
    return None


def _decode(data: bytes, origin: str) -> Tuple[np.ndarray, int]:
    """Decode encoded bytes to ((T, C) float32, rate), detecting truncation."""
    if len(data) == 0:
        raise Rejected("empty_file", origin)
    shortfall = _wav_data_shortfall(data)
    if shortfall is not None:
        raise Rejected("truncated", f"{origin}: WAV data chunk declares {shortfall[0]} bytes, file has {shortfall[1]}")
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


def convert(item: SourceItem, limits: AudioLimits, measure_bandwidth: bool = False) -> Converted:
    """Decode, check and convert one item. Raises ``Rejected``; returns ``Converted`` (with the
    effective bandwidth at the input rate when ``measure_bandwidth``)."""
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
