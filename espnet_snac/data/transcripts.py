"""Transcripts of the input utterances: which column holds them, sidecar files, LJSpeech metadata.

Conventions read here:

- dataset columns: ``--text_column NAME``, or the first of :data:`TEXT_COLUMNS` that exists
  (``text``; ``sentence`` in Common Voice; ``transcript``; ``normalized_text`` / ``text_normalized``
  in LibriTTS);
- a sidecar file next to each audio file, same name with ``.txt`` or ``.lab`` (LibriTTS ships
  ``.normalized.txt`` / ``.original.txt``; MFA corpora ``.lab``), see :func:`sidecar_transcript`;
- an LJSpeech-style ``metadata.csv`` without header: ``id|text|normalized text``
  (:func:`read_ljspeech_metadata`).

Transcripts are written to the Kaldi ``text`` file (``utt transcript``) on one line each: whitespace,
newlines included, is collapsed to single spaces; any Unicode script is kept as it is (UTF-8).
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, Optional

#: Column names auto-detected as the transcript, in order of preference.
TEXT_COLUMNS = ("text", "sentence", "transcript", "transcription", "normalized_text", "text_normalized")
#: Sidecar suffixes tried next to ``name.wav``, in order of preference.
SIDECAR_SUFFIXES = (".normalized.txt", ".txt", ".lab", ".original.txt")


def clean_transcript(text: object) -> Optional[str]:
    """One-line transcript, or ``None`` when there is no text (missing or only whitespace)."""
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    cleaned = " ".join(str(text).split())
    return cleaned or None


def detect_text_column(columns: Iterable[str], wanted: Optional[str], where: str) -> Optional[str]:
    """The transcript column: ``wanted`` (must exist; ``"none"`` disables transcripts), else the first
    of :data:`TEXT_COLUMNS` present, else ``None``. Raises ``ValueError`` naming ``where``."""
    columns = list(columns)
    if wanted == "none":
        return None
    if wanted and wanted != "auto":
        if wanted not in columns:
            raise ValueError(f"{where}: no column {wanted!r} (--text_column); columns are {columns}")
        return wanted
    return next((c for c in TEXT_COLUMNS if c in columns), None)


def sidecar_transcript(audio_path: str) -> Optional[str]:
    """Text of the sidecar transcript of ``audio_path`` (``x.wav`` -> ``x.normalized.txt``, ``x.txt``
    or ``x.lab``), ``None`` when there is none."""
    stem = os.path.splitext(audio_path)[0]
    for suffix in SIDECAR_SUFFIXES:
        path = stem + suffix
        if os.path.isfile(path):
            with open(path, encoding="utf-8-sig", errors="replace") as fh:
                return clean_transcript(fh.read())
    return None


def is_ljspeech_metadata(path: str) -> bool:
    """A ``metadata.csv`` in the LJSpeech layout: ``|``-separated, no ``file_name`` header."""
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        first = fh.readline()
    return "|" in first and "file_name" not in first.split("|")[0].split(",")


def read_ljspeech_metadata(path: str) -> Dict[str, str]:
    """``{id: transcript}`` from ``id|text[|normalized text]`` lines; the normalized text (third
    field, what LJSpeech TTS recipes train on) when present, else the text. Raises ``ValueError``
    naming the file and line of a malformed row."""
    out: Dict[str, str] = {}
    with open(path, encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("|")
            if len(fields) < 2 or not fields[0].strip():
                raise ValueError(f"{path}: line {lineno} is not 'id|text[|normalized text]': {line[:80]!r}")
            text = clean_transcript(fields[2] if len(fields) > 2 and fields[2].strip() else fields[1])
            if text is not None:
                out[fields[0].strip()] = text
    return out
