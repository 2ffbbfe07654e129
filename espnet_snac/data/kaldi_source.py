"""``kaldi:PATH``: an existing Kaldi-style directory (wav.scp [+ segments] [+ utt2spk]).

wav.scp values may be file paths, shell pipelines ending in ``|`` (their stdout must be a sound
file) or kaldiio ark references (``file.ark:offset`` holding wav audio). A ``text`` file
(``utt transcript``) is kept: each utterance carries its transcript into the output directory.
"""
from __future__ import annotations

import math
import os
import subprocess
from typing import Dict, Iterator, List, Optional, Tuple

from espnet_snac.io.audio_io import AudioError
from espnet_snac.data.audio_check import decode_item
from espnet_snac.data.items import AudioPayload, Rejected, SourceItem
from espnet_snac.data.source_base import Source, SourceError
from espnet_snac.data.transcripts import clean_transcript
from espnet_snac.io.scp import is_kaldi_entry, load_scp_audio, read_scp, read_segments, read_text


def load_wav_scp_value(value: str, origin: str) -> AudioPayload:
    """Turn one wav.scp value into a payload (path, bytes or (array, rate)); failures become
    a ``Rejected`` payload so that they are reported per utterance."""
    value = value.strip()
    if value.endswith("|"):
        proc = subprocess.run(value[:-1], shell=True, capture_output=True)
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip()[-300:]
            return Rejected("decode_error", f"{origin}: command failed ({proc.returncode}): {err}")
        return proc.stdout
    if is_kaldi_entry(value):  # ark offset
        try:
            return load_scp_audio(value, name=origin)
        except AudioError as exc:
            return Rejected("decode_error", str(exc))
    return value


class KaldiSource(Source):
    """Recordings sorted by id, ``shard_size`` recordings per shard; each recording is
    decoded once and cut into its segments."""

    def __init__(self, directory: str, shard_size: int = 1000) -> None:
        self.directory = os.path.abspath(directory)
        self.shard_size = max(1, int(shard_size))
        self.recordings: List[Tuple[str, str]] = []
        self.segments: Dict[str, List[Tuple[str, float, float]]] = {}
        self.utt2spk: Dict[str, str] = {}
        self.texts: Dict[str, str] = {}
        self.has_segments = False

    def prepare(self) -> None:
        wav_scp = os.path.join(self.directory, "wav.scp")
        if not os.path.isfile(wav_scp):
            raise SourceError(f"kaldi source {self.directory}: no wav.scp")
        try:
            recordings = read_scp(wav_scp)
            seg_path = os.path.join(self.directory, "segments")
            self.has_segments = os.path.isfile(seg_path)
            segments = read_segments(seg_path) if self.has_segments else {}
            spk_path = os.path.join(self.directory, "utt2spk")
            self.utt2spk = dict(read_scp(spk_path)) if os.path.isfile(spk_path) else {}
            self.texts = _read_text(os.path.join(self.directory, "text"))
        except ValueError as exc:
            raise SourceError(f"kaldi source: {exc}") from None
        self.recordings = sorted(recordings.items())
        by_rec: Dict[str, List[Tuple[str, float, float]]] = {}
        for utt, (rec, start, end) in sorted(segments.items()):
            if rec not in recordings:
                raise SourceError(f"kaldi source {seg_path}: segment {utt} names unknown recording {rec}")
            by_rec.setdefault(rec, []).append((utt, start, end))
        self.segments = by_rec
        if self.has_segments:
            # recordings without segments contribute nothing: drop them so they are not counted
            self.recordings = [r for r in self.recordings if r[0] in by_rec]
            self.num_items = len(segments)
        else:
            self.num_items = len(self.recordings)
        self.num_shards = math.ceil(len(self.recordings) / self.shard_size)

    def _speaker(self, utt: str) -> Optional[str]:
        return self.utt2spk.get(utt)

    def iter_shard(self, index: int) -> Iterator[SourceItem]:
        for rec, value in self.recordings[index * self.shard_size : (index + 1) * self.shard_size]:
            origin = f"{rec} ({value.strip()})"
            payload = load_wav_scp_value(value, origin)
            if not self.has_segments:
                yield SourceItem(key=rec, speaker=self._speaker(rec), origin=origin, audio=payload,
                                 text=self.texts.get(rec))
                continue
            try:  # decode the recording once for all of its segments
                probe = SourceItem(key=rec, speaker=None, origin=origin, audio=payload)
                decoded: AudioPayload = decode_item(probe)
            except Rejected as rej:
                decoded = rej
            for utt, start, end in self.segments[rec]:
                yield SourceItem(
                    key=utt, speaker=self._speaker(utt), origin=f"{utt} <- {origin}", audio=decoded,
                    start=start, end=end, text=self.texts.get(utt),
                )

    def describe(self) -> str:
        return f"kaldi:{self.directory}"

    def fingerprint(self) -> dict:
        return {"source": self.describe(), "num_recordings": len(self.recordings), "shard_size": self.shard_size,
                "transcripts": len(self.texts)}


def _read_text(path: str) -> Dict[str, str]:
    """Kaldi ``text`` (:func:`espnet_snac.io.scp.read_text`) with one-line transcripts; utterances
    without words are left out."""
    if not os.path.isfile(path):
        return {}
    cleaned = ((utt, clean_transcript(text)) for utt, text in read_text(path).items())
    return {utt: text for utt, text in cleaned if text is not None}
