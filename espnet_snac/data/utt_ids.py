"""Kaldi-safe utterance ids and the deterministic hash split."""
from __future__ import annotations

import hashlib
import os
import re
from typing import Optional

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")
_AUDIO_EXT = re.compile(r"\.(wav|flac|mp3|ogg|opus|oga|aiff?|au|sph|m4a|webm)$", re.IGNORECASE)


def sanitize(text: str) -> str:
    """Map any text to ``[A-Za-z0-9_.-]+`` (spaces and slashes become ``_``)."""
    cleaned = _UNSAFE.sub("_", str(text).strip()).strip("_")
    return cleaned or "x"


def key_from_path(path: str) -> str:
    """Id from a file name: the base name without an audio extension."""
    return sanitize(_AUDIO_EXT.sub("", os.path.basename(str(path).rstrip("/"))))


def make_utt_id(speaker: Optional[str], base: str) -> str:
    """Utterance id with the speaker as prefix (Kaldi convention, keeps utt2spk and spk2utt
    sorted alike); the prefix is not repeated when ``base`` already starts with it."""
    base = sanitize(base)
    if not speaker:
        return base
    spk = sanitize(speaker)
    if base == spk or base.startswith(spk + "-") or base.startswith(spk + "_"):
        return base
    return f"{spk}-{base}"


def hash_fraction(key: str) -> float:
    """Stable number in [0, 1) from a string (independent of Python's hash seed)."""
    digest = hashlib.sha1(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_subset(key: str, dev_fraction: float, test_fraction: float) -> str:
    """``"dev"``, ``"test"`` or ``"train"`` by the hash of ``key``."""
    u = hash_fraction(key)
    if u < dev_fraction:
        return "dev"
    if u < dev_fraction + test_fraction:
        return "test"
    return "train"
