"""``folder:PATH`` and ``hf:audiofolder:PATH``: every audio file below a directory, recursively.

Like the Hugging Face ``audiofolder`` builder, optional ``metadata.csv`` / ``metadata.jsonl`` files
(with a ``file_name`` column relative to the metadata file's directory) add columns such as a
speaker or an id. The files are read here with libsndfile, so no extra decoder package is needed.

Transcripts, in order: the metadata ``text_column`` (``"auto"``: the first of
``transcripts.TEXT_COLUMNS`` in the metadata), a sidecar ``name.txt`` / ``name.lab`` next to the
audio file, or an LJSpeech-style ``metadata.csv`` (``id|text|normalized text``, no header; the id is
the audio file's name without extension, anywhere below the metadata file's directory).
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Dict, Iterator, List, Optional

from espnet_snac.data.items import SourceItem
from espnet_snac.data.source_base import Source, SourceError
from espnet_snac.data.transcripts import (clean_transcript, detect_text_column, is_ljspeech_metadata,
                                          read_ljspeech_metadata, SIDECAR_SUFFIXES, sidecar_transcript)

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aif", ".aiff", ".au", ".w64", ".caf", ".sph")
METADATA_FILES = ("metadata.csv", "metadata.jsonl")


def _read_metadata(path: str) -> List[Dict[str, str]]:
    with open(path, encoding="utf-8") as fh:
        if path.endswith(".csv"):
            rows = list(csv.DictReader(fh))
        else:
            rows = [json.loads(line) for line in fh if line.strip()]
    for lineno, row in enumerate(rows, 1):
        if "file_name" not in row:
            raise SourceError(f"{path}: row {lineno} has no 'file_name' column")
    return rows


def _sidecar_of(path: str) -> Optional[str]:
    """The audio stem a sidecar transcript ``path`` belongs to (``a.lab`` -> ``a``), else ``None``."""
    for suffix in SIDECAR_SUFFIXES:
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return None


class FolderSource(Source):
    """Audio files found under ``root`` (sorted relative paths), ``shard_size`` files per shard.

    Keys are relative paths without extension, ``/`` replaced by ``-`` (unique by construction),
    or the metadata ``id_column``. The speaker is the metadata ``speaker_column`` or, with
    ``speaker_from_dir``, the name of the file's parent directory. Files with other extensions
    are counted and reported, not read.
    """

    def __init__(
        self,
        root: str,
        shard_size: int = 1000,
        speaker_from_dir: bool = False,
        speaker_column: Optional[str] = None,
        id_column: Optional[str] = None,
        kind: str = "folder",
        text_column: Optional[str] = "auto",
    ) -> None:
        self.root = os.path.abspath(root)
        self.shard_size = max(1, int(shard_size))
        self.speaker_from_dir = speaker_from_dir
        self.speaker_column = speaker_column
        self.id_column = id_column
        self.kind = kind
        self.text_column = text_column
        self.no_text = text_column == "none"  # --text_column none: no transcripts at all
        self.files: List[str] = []
        self.skipped: List[str] = []
        self.metadata: Dict[str, Dict[str, str]] = {}
        self.lj_texts: Dict[str, str] = {}  # "<dir of metadata.csv>/<id>" -> transcript (LJSpeech)
        self.lj_dirs: List[str] = []  # directories (relative) holding an LJSpeech metadata.csv

    def prepare(self) -> None:
        if not os.path.isdir(self.root):
            raise SourceError(f"{self.kind} source {self.root}: not a directory")
        files, skipped, metadata, lj_texts, lj_dirs = [], [], {}, {}, []
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in filenames:
                if name.startswith("."):
                    continue
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, self.root)
                if name == "metadata.csv" and is_ljspeech_metadata(full):
                    try:
                        texts = read_ljspeech_metadata(full)
                    except ValueError as exc:
                        raise SourceError(str(exc)) from None
                    base = os.path.dirname(rel)
                    lj_dirs.append(base)
                    lj_texts.update({os.path.normpath(os.path.join(base, k)): v for k, v in texts.items()})
                elif name in METADATA_FILES:
                    for row in _read_metadata(full):
                        target = os.path.normpath(os.path.join(os.path.dirname(rel), row["file_name"]))
                        metadata[target] = row
                elif name.lower().endswith(AUDIO_EXTENSIONS):
                    files.append(rel)
                else:
                    skipped.append(rel)
        audio_stems = {os.path.splitext(f)[0] for f in files}
        skipped = [f for f in skipped if _sidecar_of(f) not in audio_stems]  # transcripts are read, not skipped
        for column in (self.speaker_column, self.id_column):
            if column and not any(column in row for row in metadata.values()):
                raise SourceError(
                    f"{self.kind} source {self.root}: column {column!r} not found in any metadata.csv/jsonl"
                )
        meta_columns = sorted({c for row in metadata.values() for c in row if c != "file_name"})
        try:
            self.text_column = detect_text_column(meta_columns, self.text_column,
                                                  f"{self.kind} source {self.root}: metadata.csv/jsonl")
        except ValueError as exc:
            raise SourceError(str(exc)) from None
        self.files, self.skipped, self.metadata = sorted(files), sorted(skipped), metadata
        self.lj_texts, self.lj_dirs = lj_texts, sorted(lj_dirs, key=len, reverse=True)
        self.num_items = len(self.files)
        self.num_shards = math.ceil(len(self.files) / self.shard_size)

    def iter_shard(self, index: int) -> Iterator[SourceItem]:
        for rel in self.files[index * self.shard_size : (index + 1) * self.shard_size]:
            meta = self.metadata.get(os.path.normpath(rel), {})
            key = os.path.splitext(rel)[0].replace(os.sep, "-")
            if self.id_column and meta.get(self.id_column):
                key = str(meta[self.id_column])
            speaker: Optional[str] = None
            if self.speaker_column and meta.get(self.speaker_column) not in (None, ""):
                speaker = str(meta[self.speaker_column])
            elif self.speaker_from_dir:
                speaker = os.path.basename(os.path.dirname(rel)) or None
            path = os.path.join(self.root, rel)
            yield SourceItem(key=key, speaker=speaker, origin=path, audio=path, text=self._transcript(rel, meta))

    def _transcript(self, rel: str, meta: Dict[str, str]) -> Optional[str]:
        if self.no_text:
            return None
        if self.text_column and meta.get(self.text_column) not in (None, ""):
            return clean_transcript(meta[self.text_column])
        text = sidecar_transcript(os.path.join(self.root, rel))
        if text is not None or not self.lj_texts:
            return text
        stem = os.path.splitext(os.path.basename(rel))[0]
        for base in self.lj_dirs:  # the nearest metadata.csv above the file
            if base == "" or rel.startswith(base + os.sep):
                found = self.lj_texts.get(os.path.normpath(os.path.join(base, stem)))
                if found is not None:
                    return found
        return None

    def describe(self) -> str:
        return f"{self.kind}:{self.root}"

    def fingerprint(self) -> dict:
        return {"source": self.describe(), "num_files": len(self.files), "shard_size": self.shard_size,
                "speaker_from_dir": self.speaker_from_dir, "speaker_column": self.speaker_column,
                "id_column": self.id_column, "text_column": self.text_column, "ljspeech_texts": len(self.lj_texts)}

    def notes(self) -> list[str]:
        if not self.skipped:
            return []
        shown = ", ".join(self.skipped[:5]) + (" ..." if len(self.skipped) > 5 else "")
        return [f"{len(self.skipped)} file(s) without an audio extension were not read: {shown}"]
