"""Kaldi-style ``wav.scp`` lists: ``<utt_id> <value>`` per line.

A value is a sound file path (anything libsndfile reads), a Kaldi ark entry with a byte offset
(``data/foo.ark:1234``, read with kaldiio), or a command ending in ``|`` whose stdout is audio
(also read with kaldiio).
"""
from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Iterator, Tuple, Union

import numpy as np

from espnet_snac.io.audio_io import AudioError, read_audio

_ARK_ENTRY = re.compile(r".+\.ark:\d+(\[[^\]]*\])?$")


class ScpError(ValueError):
    """A malformed scp file (message names the file and the line)."""


def _keyed_lines(path: Union[str, Path], kind: str) -> Iterator[Tuple[int, str]]:
    """``(line number, stripped line)`` of the non-blank lines of a Kaldi list whose first field
    (the utterance id) must be unique; an unreadable file or a repeated id raises ``ScpError``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ScpError(f"{path}: cannot read {kind} file ({exc.strerror or exc})") from exc
    seen = set()
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        key = line.split(maxsplit=1)[0]
        if key in seen:
            raise ScpError(f"{path}:{lineno}: duplicate utterance id {key!r}")
        seen.add(key)
        yield lineno, line


def read_keyed(path: Union[str, Path], kind: str) -> Iterator[Tuple[int, str, str]]:
    """``(line number, utt, rest of the line)`` of a Kaldi list with unique ids (``rest`` may be
    ``""``); an unreadable file or a repeated id raises ``ScpError``."""
    for lineno, line in _keyed_lines(path, kind):
        parts = line.split(maxsplit=1)
        yield lineno, parts[0], parts[1] if len(parts) > 1 else ""


def read_text(path: Union[str, Path]) -> "OrderedDict[str, str]":
    """Kaldi ``text``: ``utt transcript...``; an utterance without words maps to ``""``."""
    return OrderedDict((utt, rest) for _, utt, rest in read_keyed(path, "text"))


def read_scp(path: Union[str, Path]) -> "OrderedDict[str, str]":
    """Read ``utt_id value`` lines (value may contain spaces); keeps file order.

    Blank lines are skipped; a line without a value or a repeated id raises ``ScpError``.
    """
    entries: "OrderedDict[str, str]" = OrderedDict()
    for lineno, line in _keyed_lines(path, "scp"):
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise ScpError(f"{path}:{lineno}: expected '<utt_id> <path>', got {line!r}")
        entries[parts[0]] = parts[1]
    return entries


def read_segments(path: Union[str, Path]) -> "OrderedDict[str, Tuple[str, float, float]]":
    """Kaldi ``segments``: ``utt recording start end`` (seconds; end -1 = end of recording).

    Keeps file order; a malformed line or a repeated utterance id raises ``ScpError``.
    """
    segments: "OrderedDict[str, Tuple[str, float, float]]" = OrderedDict()
    for lineno, line in _keyed_lines(path, "segments"):
        parts = line.split()
        if len(parts) != 4:
            raise ScpError(f"{path}:{lineno}: expected 'utt recording start end', got {line!r}")
        try:
            segments[parts[0]] = (parts[1], float(parts[2]), float(parts[3]))
        except ValueError:
            raise ScpError(f"{path}:{lineno}: start/end must be numbers, got {line!r}") from None
    return segments


def is_kaldi_entry(value: str) -> bool:
    """True for ark offsets (``x.ark:123``) and pipe commands (``cmd |``)."""
    return value.rstrip().endswith("|") or bool(_ARK_ENTRY.match(value))


def load_scp_audio(value: str, name: str | None = None) -> Tuple[np.ndarray, int]:
    """Load one scp value. Returns ``(samples (T, C) float32 in [-1, 1], sample_rate)``.

    Raises ``AudioError`` naming ``name`` (the utterance id or file) and the reason.
    """
    label = f"{name} ({value})" if name else value
    if not is_kaldi_entry(value):
        if not Path(value).is_file():
            raise AudioError(f"{label}: no such file")
        return read_audio(value, name=label)
    import kaldiio

    try:
        loaded = kaldiio.load_mat(value)
    except Exception as exc:  # kaldiio raises OSError/ValueError/struct errors on bad entries
        raise AudioError(f"{label}: cannot read Kaldi entry {value!r} ({exc})") from exc
    if not (isinstance(loaded, tuple) and len(loaded) == 2):
        raise AudioError(
            f"{label}: Kaldi entry {value!r} holds a matrix without a sample rate; "
            "store audio as wav in the ark (e.g. kaldiio.save_ark with (rate, samples))"
        )
    rate, samples = loaded
    samples = np.asarray(samples)
    if np.issubdtype(samples.dtype, np.integer):
        samples = samples.astype(np.float32) / float(np.iinfo(samples.dtype).max + 1)
    samples = samples.astype(np.float32, copy=False)
    if samples.ndim == 1:
        samples = samples[:, None]
    return samples, int(rate)

