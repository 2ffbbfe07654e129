"""Compact ``.snac`` code files: a small header plus the codes packed at 12 bits each.

Layout (little-endian), format version 1::

    offset  size  field
    0       4     magic b"SNAC"
    4       1     format version (1)
    5       1     number of levels L
    6       2     codebook size (<= 4096, so every code fits in 12 bits)
    8       4     model sample rate (Hz)
    12      4     input sample rate (Hz) of the encoded file
    16      2     input channel count (before downmixing)
    18      8     input length in samples at the input rate
    26      4     number of coarse frames F (codes of level 0)
    30      L     vq stride of each level (coarsest first; level i holds F * stride[0] / stride[i] codes)
    30+L    n     codes, level by level, two codes per 3 bytes (a & 0xFF, a >> 8 | (b & 0xF) << 4,
                  b >> 4); an odd total is padded with one zero code
    end-4   4     CRC-32 of everything before it

The CRC makes any bit flip, truncation or appended garbage detectable.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Union

import numpy as np

from espnet_snac.io.atomic_files import atomic_write_bytes

MAGIC = b"SNAC"
FORMAT_VERSION = 1
MAX_CODEBOOK_SIZE = 1 << 12
_HEADER = struct.Struct("<4sBBHIIHQI")  # magic .. number of coarse frames (30 bytes)
_CRC = struct.Struct("<I")


class CodeFileError(ValueError):
    """A code file that cannot be read or written; the message names the file and the reason."""


@dataclass
class CodeFile:
    """Codes of one mono signal plus what is needed to decode it to the right length.

    ``codes[i]`` is an int array ``(T_i,)`` with ``T_i = num_frames * vq_strides[0] // vq_strides[i]``.
    """

    sample_rate: int
    vq_strides: List[int]
    codebook_size: int
    codes: List[np.ndarray]
    input_length: int
    input_rate: int
    input_channels: int = 1

    @property
    def num_frames(self) -> int:
        return int(self.codes[0].shape[0]) if self.codes else 0

    @property
    def num_codes(self) -> int:
        return int(sum(c.shape[0] for c in self.codes))

    @property
    def duration(self) -> float:
        """Duration of the encoded input in seconds."""
        return self.input_length / self.input_rate

    @property
    def output_length(self) -> int:
        """Input length expressed in samples at the model rate (rounded up)."""
        return -(-self.input_length * self.sample_rate // self.input_rate)

    def level_lengths(self, num_frames: int | None = None) -> List[int]:
        frames = self.num_frames if num_frames is None else num_frames
        return [frames * self.vq_strides[0] // s for s in self.vq_strides]


def _validate(cf: CodeFile, label: str) -> None:
    def fail(reason: str):
        raise CodeFileError(f"{label}: {reason}")

    if not 1 <= len(cf.vq_strides) <= 255 or len(cf.codes) != len(cf.vq_strides):
        fail(f"need 1..255 levels with one stride each, got {len(cf.codes)} code arrays and strides {cf.vq_strides}")
    if any(not 1 <= s <= 255 for s in cf.vq_strides) or any(cf.vq_strides[0] % s for s in cf.vq_strides):
        fail(f"vq strides {cf.vq_strides} must be in 1..255 and divide the first stride")
    if not 1 <= cf.codebook_size <= MAX_CODEBOOK_SIZE:
        fail(f"codebook size {cf.codebook_size} does not fit in 12 bits (max {MAX_CODEBOOK_SIZE})")
    if cf.sample_rate <= 0 or cf.input_rate <= 0 or cf.input_length < 0 or not 1 <= cf.input_channels < 1 << 16:
        fail(f"invalid input description (model {cf.sample_rate} Hz, input {cf.input_rate} Hz, "
             f"{cf.input_channels} channels, {cf.input_length} samples)")
    expected = cf.level_lengths()
    actual = [int(np.asarray(c).shape[0]) if np.asarray(c).ndim == 1 else -1 for c in cf.codes]
    if actual != expected:
        fail(f"level lengths {actual} do not match strides {cf.vq_strides} (expected {expected}); pass 1-D arrays")
    for i, c in enumerate(cf.codes):
        c = np.asarray(c)
        if c.size and (c.min() < 0 or c.max() >= cf.codebook_size):
            fail(f"level {i} has codes outside [0, {cf.codebook_size})")


def pack12(codes: np.ndarray) -> bytes:
    """Pack non-negative ints < 4096 ``(N,)`` into ``ceil(N / 2) * 3`` bytes."""
    c = np.asarray(codes, dtype=np.uint16)
    if c.size % 2:
        c = np.concatenate([c, np.zeros(1, np.uint16)])
    a, b = c[0::2], c[1::2]
    out = np.empty((a.size, 3), dtype=np.uint8)
    out[:, 0] = a & 0xFF
    out[:, 1] = (a >> 8) | ((b & 0xF) << 4)
    out[:, 2] = b >> 4
    return out.tobytes()


def unpack12(data: bytes, count: int) -> np.ndarray:
    """Inverse of :func:`pack12`: the first ``count`` codes as int64 ``(count,)``."""
    raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3).astype(np.int64)
    out = np.empty(raw.shape[0] * 2, dtype=np.int64)
    out[0::2] = raw[:, 0] | ((raw[:, 1] & 0xF) << 8)
    out[1::2] = (raw[:, 1] >> 4) | (raw[:, 2] << 4)
    return out[:count]


def _packed_size(count: int) -> int:
    return (count + 1) // 2 * 3


def to_bytes(cf: CodeFile, label: str = "<codes>") -> bytes:
    _validate(cf, label)
    header = _HEADER.pack(
        MAGIC, FORMAT_VERSION, len(cf.vq_strides), cf.codebook_size, cf.sample_rate, cf.input_rate,
        cf.input_channels, cf.input_length, cf.num_frames,
    )
    body = header + bytes(cf.vq_strides) + pack12(np.concatenate([np.asarray(c) for c in cf.codes]))
    return body + _CRC.pack(zlib.crc32(body))


def from_bytes(data: bytes, label: str = "<bytes>") -> CodeFile:
    def fail(reason: str):
        raise CodeFileError(f"{label}: {reason}")

    if len(data) < 4 or data[:4] != MAGIC:
        fail("not a SNAC code file (bad magic bytes); pass a file written by 'espnet-snac encode'")
    if len(data) < _HEADER.size + _CRC.size:
        fail(f"truncated: {len(data)} bytes is shorter than the {_HEADER.size + _CRC.size}-byte minimum")
    (magic, version, n_levels, codebook_size, sample_rate, input_rate, input_channels, input_length,
     n_frames) = _HEADER.unpack_from(data)
    if version != FORMAT_VERSION:
        fail(f"unsupported format version {version} (this reader understands version {FORMAT_VERSION})")
    strides_end = _HEADER.size + n_levels
    if len(data) < strides_end + _CRC.size:
        fail(f"truncated inside the header ({len(data)} bytes)")
    strides = list(data[_HEADER.size:strides_end])
    if n_levels == 0 or 0 in strides or any(strides[0] % s for s in strides):
        fail(f"corrupted header (levels {n_levels}, strides {strides})")
    count = sum(n_frames * strides[0] // s for s in strides)
    expected = strides_end + _packed_size(count) + _CRC.size
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "has trailing data"
        fail(f"{kind}: {len(data)} bytes, the header announces {expected} ({n_frames} frames)")
    (stored_crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(data[: -_CRC.size]) != stored_crc:
        fail("corrupted: checksum mismatch")
    flat = unpack12(data[strides_end: -_CRC.size], count)
    codes, start = [], 0
    for s in strides:
        n = n_frames * strides[0] // s
        codes.append(flat[start:start + n])
        start += n
    cf = CodeFile(sample_rate, strides, codebook_size, codes, input_length, input_rate, input_channels)
    _validate(cf, label)
    return cf


def write(path: Union[str, Path], cf: CodeFile) -> int:
    """Write ``cf`` to ``path``; returns the number of bytes written."""
    data = to_bytes(cf, label=str(path))
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise CodeFileError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    return len(data)


def read(path: Union[str, Path]) -> CodeFile:
    """Read and verify a code file; raises ``CodeFileError`` naming the file and the problem."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CodeFileError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return from_bytes(data, label=str(path))


def from_model_codes(codes: Sequence, sample_rate: int, vq_strides: Sequence[int], codebook_size: int,
                     input_length: int, input_rate: int, input_channels: int = 1) -> CodeFile:
    """Build a :class:`CodeFile` from ``SNAC.encode`` output for one item (tensors ``(1, T_i)`` or ``(T_i,)``)."""
    arrays = []
    for c in codes:
        a = c.detach().cpu().numpy() if hasattr(c, "detach") else np.asarray(c)
        if a.ndim == 2:
            if a.shape[0] != 1:
                raise CodeFileError(f"a code file holds one signal; got a batch of {a.shape[0]}")
            a = a[0]
        arrays.append(a.astype(np.int64))
    return CodeFile(int(sample_rate), [int(s) for s in vq_strides], int(codebook_size), arrays,
                    int(input_length), int(input_rate), int(input_channels))
