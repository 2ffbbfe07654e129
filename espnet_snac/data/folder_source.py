"""``folder:PATH`` and ``hf:audiofolder:PATH``: every audio file below a directory, recursively.

Like the Hugging Face ``audiofolder`` builder, optional ``metadata.csv`` / ``metadata.jsonl`` files
(with a ``file_name`` column relative to the metadata file's directory) add columns such as a
speaker or an id. The files are read here with libsndfile, so no extra decoder package is needed.
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Dict, Iterator, List, Optional

from espnet_snac.data.items import SourceItem
from espnet_snac.data.source_base import Source, SourceError

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
    ) -> None:
        self.root = os.path.abspath(root)
        self.shard_size = max(1, int(shard_size))
        self.speaker_from_dir = speaker_from_dir
        self.speaker_column = speaker_column
        self.id_column = id_column
        self.kind = kind
        self.files: List[str] = []
        self.skipped: List[str] = []
        self.metadata: Dict[str, Dict[str, str]] = {}

    def prepare(self) -> None:
        if not os.path.isdir(self.root):
            raise SourceError(f"{self.kind} source {self.root}: not a directory")
        files, skipped, metadata = [], [], {}
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in filenames:
                if name.startswith("."):
                    continue
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, self.root)
                if name in METADATA_FILES:
                    for row in _read_metadata(full):
                        target = os.path.normpath(os.path.join(os.path.dirname(rel), row["file_name"]))
                        metadata[target] = row
                elif name.lower().endswith(AUDIO_EXTENSIONS):
                    files.append(rel)
                else:
                    skipped.append(rel)
        for column in (self.speaker_column, self.id_column):
            if column and not any(column in row for row in metadata.values()):
                raise SourceError(
                    f"{self.kind} source {self.root}: column {column!r} not found in any metadata.csv/jsonl"
                )
        self.files, self.skipped, self.metadata = sorted(files), sorted(skipped), metadata
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
            yield SourceItem(key=key, speaker=speaker, origin=path, audio=path)

    def describe(self) -> str:
        return f"{self.kind}:{self.root}"

    def fingerprint(self) -> dict:
        return {"source": self.describe(), "num_files": len(self.files), "shard_size": self.shard_size,
                "speaker_from_dir": self.speaker_from_dir, "speaker_column": self.speaker_column,
                "id_column": self.id_column}

    def notes(self) -> list[str]:
        if not self.skipped:
            return []
        shown = ", ".join(self.skipped[:5]) + (" ..." if len(self.skipped) > 5 else "")
        return [f"{len(self.skipped)} file(s) without an audio extension were not read: {shown}"]
