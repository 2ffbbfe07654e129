"""Reading, downmixing and resampling audio, shared by data prep, inference and scoring."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Tuple, Union

import numpy as np
import soundfile as sf


class AudioError(ValueError):
    """Audio that cannot be used; the message names the source and the reason."""


def read_audio(source: Union[str, Path, bytes], name: str | None = None) -> Tuple[np.ndarray, int]:
    """Read a sound file (path or raw bytes) with libsndfile.

    Returns ``(samples (T, C) float32, sample_rate)``; raises ``AudioError`` naming the file.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
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
