"""Input utterances for token extraction: Kaldi ``wav.scp`` (+ optional ``segments``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import soundfile as sf
from torch.utils.data import Dataset

from espnet_snac.io.audio_io import AudioError, resample, to_mono
from espnet_snac.io.scp import is_kaldi_entry, load_scp_audio, read_scp, read_segments


@dataclass(frozen=True)
class InputItem:
    """Utterance ``utt``: the audio of ``value`` (a wav.scp value), or its ``[start, end)`` seconds."""

    utt: str
    value: str
    start: Optional[float] = None
    end: Optional[float] = None


def read_inputs(wav_scp: Path, segments: Optional[Path] = None) -> List[InputItem]:
    """Items in file order. With ``segments`` (``utt rec start end``), ids come from it."""
    recordings = read_scp(wav_scp)
    if segments is None:
        return [InputItem(u, v) for u, v in recordings.items()]
    items = []
    for utt, (rec, start, end) in read_segments(segments).items():
        if rec not in recordings:
            raise ValueError(f"{segments}: segment {utt} names recording {rec!r}, which is not in {wav_scp}")
        items.append(InputItem(utt, recordings[rec], start, end))
    return items


def load_item(item: InputItem, rate: int) -> np.ndarray:
    """Mono float32 ``(T,)`` at ``rate``; raises ``AudioError`` naming the utterance and reason."""
    label = f"{item.utt} ({item.value})"
    if item.start is not None and not is_kaldi_entry(item.value):
        try:  # read only the segment
            info = sf.info(item.value)
            lo = int(round(item.start * info.samplerate))
            hi = int(round(item.end * info.samplerate)) if item.end >= 0 else info.frames
            data, sr = sf.read(item.value, start=lo, stop=hi, dtype="float32", always_2d=True)
        except Exception as exc:
            raise AudioError(f"{label}: cannot decode audio ({exc})") from exc
    else:
        data, sr = load_scp_audio(item.value, name=item.utt)
        if item.start is not None:
            lo = int(round(item.start * sr))
            hi = int(round(item.end * sr)) if item.end >= 0 else len(data)
            data = data[lo:hi]
    mono = to_mono(data)
    if mono.size == 0:
        raise AudioError(f"{label}: zero_length (no samples)")
    if not np.isfinite(mono).all():
        raise AudioError(f"{label}: non_finite (NaN or Inf samples)")
    return resample(mono, sr, rate)


class AudioItems(Dataset):
    """``(utt, audio or None, error or None)`` per item; errors are returned, not raised, so that
    a bad file is reported and skipped instead of stopping a DataLoader worker."""

    def __init__(self, items: List[InputItem], rate: int):
        self.items = items
        self.rate = rate

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Tuple[str, Optional[np.ndarray], Optional[str]]:
        item = self.items[i]
        try:
            return item.utt, load_item(item, self.rate), None
        except AudioError as exc:
            return item.utt, None, str(exc)
        except Exception as exc:  # anything else a decoder or resampler raises for one bad file
            return item.utt, None, f"{item.utt}: {type(exc).__name__}: {exc}"
