"""One input utterance as a source yields it, and the error that rejects it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np

# Reason codes written to rejected.tsv (first word of the reason column).
REASONS = (
    "missing_audio",  # no audio in the row / file not found
    "empty_file",  # zero bytes
    "decode_error",  # corrupt, non-audio or unsupported format
    "truncated",  # the header promises more audio than the file holds
    "zero_length",  # decodes to no samples
    "non_finite",  # NaN or Inf samples
    "silent",  # every sample is exactly zero
    "unsupported_rate",  # sample rate outside the accepted input range
    "too_short",
    "too_long",
    "duplicate_id",  # a second utterance with an id already kept
    "unexpected_error",  # any other failure while converting this item (message says which)
)


class Rejected(Exception):
    """An item that cannot be used. ``reason`` is one of ``REASONS``; ``detail`` explains."""

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    def as_text(self) -> str:
        """Single-line text for rejected.tsv: ``reason (detail)``."""
        detail = " ".join(self.detail.split())
        return f"{self.reason} ({detail})" if detail else self.reason


# The audio of an item: a file path, encoded bytes, or an already decoded array with its rate
# (array shape (T,) or (T, C)).
# A ``Rejected`` instance stands for audio the source already found unusable (e.g. a Kaldi
# recording shared by several segments).
AudioPayload = Union[str, bytes, Tuple[np.ndarray, int], Rejected, None]


@dataclass
class SourceItem:
    """One utterance from a source.

    ``key``: id from the source (unsanitised; sources make positional keys when they have none);
    ``speaker``: speaker label or ``None``; ``origin``: where it came from, for messages
    (a path, or ``row N``); ``audio``: the payload; ``start``/``end``: optional segment bounds in
    seconds (Kaldi ``segments``), ``end`` ``None`` or negative meaning the end of the recording;
    ``text``: its transcript (one line, see ``transcripts.clean_transcript``) or ``None``.
    """

    key: str
    speaker: Optional[str]
    origin: str
    audio: AudioPayload
    start: float = 0.0
    end: Optional[float] = None
    text: Optional[str] = None
