"""Reading, downmixing and resampling audio, shared by data prep, inference and scoring."""
from __future__ import annotations

import io
import os
import struct
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import soundfile as sf


class AudioError(ValueError):
    """Audio that cannot be used; the message names the source and the reason."""


def wav_data_shortfall(data: bytes, total: Optional[int] = None) -> Optional[Tuple[int, int]]:
    """For RIFF/WAVE bytes: (declared, present) sizes of the data chunk when it is cut short.
    ``data`` may be the start of a file of ``total`` bytes (the chunk headers are enough)."""
    total = len(data) if total is None else total
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RIFX") or data[8:12] != b"WAVE":
        return None
    endian = "<" if data[:4] == b"RIFF" else ">"
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        (size,) = struct.unpack(endian + "I", data[pos + 4 : pos + 8])
        if chunk_id == b"data":
            present = total - pos - 8
            # 0 and 0xFFFFFFFF mark streamed WAVs whose writer never knew the final size
            if size not in (0, 0xFFFFFFFF) and present < size:
                return size, present
            return None
        pos += 8 + size + (size & 1)
    return None


def wav_file_shortfall(path: Union[str, Path]) -> Optional[Tuple[int, int]]:
    """:func:`wav_data_shortfall` of the file at ``path``, reading only its headers."""
    with open(path, "rb") as fh:
        return wav_data_shortfall(fh.read(1 << 16), os.fstat(fh.fileno()).st_size)


def read_audio(source: Union[str, Path, bytes], name: str | None = None) -> Tuple[np.ndarray, int]:
    """Read a sound file (path or raw bytes) with libsndfile.

    Returns ``(samples (T, C) float32, sample_rate)``; raises ``AudioError`` naming the file.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    if not isinstance(source, bytes) and not os.path.exists(source):  # libsndfile would say "System error"
        raise AudioError(f"no such file: {source}" + (f" ({name})" if name and name != str(source) else ""))
    # libsndfile silently returns what is left of a cut WAV file: refuse it instead
    try:
        if isinstance(source, bytes):
            shortfall = wav_data_shortfall(source[: 1 << 16], len(source))
        else:
            shortfall = wav_file_shortfall(source)
    except OSError:
        shortfall = None  # sf.read below reports the file error
    if shortfall is not None:
        raise AudioError(f"{label}: truncated (WAV data chunk declares {shortfall[0]} bytes, file has {shortfall[1]})")
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else source
        data, sr = sf.read(handle, dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile raises several types for corrupt/unsupported data
        raise AudioError(f"{label}: cannot decode audio ({exc})") from exc
    return data, int(sr)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Downmix ``(T, C)`` or ``(T,)`` to ``(T,)`` by averaging channels."""
    if samples.ndim == 1:
        return samples.astype(np.float32, copy=False)
    if samples.shape[1] == 1:  # no float64 copy of a long mono file
        return samples[:, 0].astype(np.float32, copy=False)
    return samples.mean(axis=1, dtype=np.float64).astype(np.float32)


def resample(samples: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited resampling of a mono ``(T,)`` signal (soxr, very high quality)."""
    if sr_in == sr_out:
        return samples.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(samples.astype(np.float32, copy=False), sr_in, sr_out, quality="VHQ").astype(
        np.float32, copy=False
    )


def load_mono(source: Union[str, Path, bytes], sr_out: int, name: str | None = None) -> Tuple[np.ndarray, int]:
    """Read, downmix and resample to ``sr_out``. Returns ``(samples (T,), original_rate)``."""
    data, sr = read_audio(source, name)
    return resample(to_mono(data), sr, sr_out), sr
