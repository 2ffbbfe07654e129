"""``hf:NAME_OR_PATH[:CONFIG]``: Hugging Face datasets from the hub, ``save_to_disk`` directories
and local data files (parquet / arrow / jsonl / csv), map-style or streaming.

The audio column is cast to ``Audio(decode=False)`` and decoded here with libsndfile, so the
optional torchcodec decoder of recent ``datasets`` releases is never needed. Accepted column
values: ``{"array", "sampling_rate"}``, ``{"bytes", "path"}`` and plain path strings. The transcript
comes from ``text_column`` (``"auto"``: the first of ``transcripts.TEXT_COLUMNS`` present).
"""
from __future__ import annotations

import glob
import math
import os
from typing import Any, Iterator, List, Optional

from espnet_snac.data.items import AudioPayload, Rejected, SourceItem
from espnet_snac.data.source_base import Source, SourceError
from espnet_snac.data.transcripts import clean_transcript, detect_text_column
from espnet_snac.data.utt_ids import sanitize

FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".json": "json", ".csv": "csv"}
ID_CANDIDATES = ("id", "utt_id", "key", "segment_id", "file", "path")


def _expand(pattern: str) -> List[str]:
    """Data files named by a path, a glob or a directory (its data files, recursively)."""
    if os.path.isdir(pattern):
        found = [p for p in glob.glob(os.path.join(pattern, "**", "*"), recursive=True)
                 if os.path.splitext(p)[1].lower() in FILE_BUILDERS]
    else:
        found = glob.glob(pattern, recursive=True)
    return sorted(os.path.abspath(p) for p in found if os.path.isfile(p))


class HFSource(Source):
    """A Hugging Face dataset split.

    ``kind``: ``"disk"`` (``load_from_disk`` directory), ``"files"`` (local data files in
    ``data_files`` read by the packaged builder ``builder``) or ``"hub"`` (``load_dataset(target,
    config)``; also a local dataset repository directory). Shards: ``shard_size`` rows for
    map-style datasets, the dataset's own data files (``n_shards``) when streaming.
    """

    def __init__(
        self,
        kind: str,
        target: str,
        config: Optional[str] = None,
        split: Optional[str] = None,
        streaming: bool = False,
        audio_column: str = "audio",
        speaker_column: Optional[str] = None,
        id_column: Optional[str] = "auto",
        shard_size: int = 1000,
        data_files: Optional[List[str]] = None,
        builder: Optional[str] = None,
        text_column: Optional[str] = "auto",
    ) -> None:
        self.kind = kind
        self.target = target
        self.config = config
        self.split = split
        self.streaming = streaming and kind != "disk"  # save_to_disk data is memory-mapped already
        self.audio_column = audio_column
        self.speaker_column = speaker_column
        self.id_column = id_column
        self.shard_size = max(1, int(shard_size))
        self.data_files = data_files
        self.builder = builder
        self.text_column = text_column
        self.base_dir = os.path.dirname(data_files[0]) if data_files else (
            target if os.path.isdir(target) else os.getcwd())
        self._ds: Any = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_ds"] = None  # workers reopen the dataset (memory-mapped or streamed)
        return state

    # -- opening -------------------------------------------------------------------------------
    def _load(self) -> Any:
        import datasets

        try:
            if self.kind == "disk":
                loaded = datasets.load_from_disk(self.target)
            elif self.kind == "files":
                loaded = datasets.load_dataset(
                    self.builder, data_files=self.data_files, split=self.split, streaming=self.streaming
                )
            else:
                loaded = datasets.load_dataset(
                    self.target, self.config, split=self.split, streaming=self.streaming
                )
        except (ValueError, FileNotFoundError, KeyError) as exc:
            raise SourceError(f"cannot open {self.describe()}: {exc}") from None
        if isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
            names = sorted(loaded.keys())
            if self.split is None and len(names) == 1:
                self.split = names[0]
            if self.split not in loaded:
                raise SourceError(
                    f"{self.describe()} has splits {names}; choose one with --split"
                    if self.split is None else f"{self.describe()}: no split {self.split!r}, it has {names}"
                )
            loaded = loaded[self.split]
        return loaded

    def _open(self) -> Any:
        if self._ds is not None:
            return self._ds
        import datasets

        ds = self._load()
        columns = ds.column_names
        if columns is not None:
            for option, column in (("--audio_column", self.audio_column), ("--speaker_column", self.speaker_column)):
                if column and column not in columns:
                    raise SourceError(f"{self.describe()}: no column {column!r} ({option}); columns are {columns}")
            if self.id_column == "auto":
                self.id_column = next((c for c in ID_CANDIDATES if c in columns and c != self.audio_column), None)
            elif self.id_column and self.id_column not in columns:
                raise SourceError(f"{self.describe()}: no column {self.id_column!r} (--id_column); columns are {columns}")
            try:
                self.text_column = detect_text_column(
                    [c for c in columns if c != self.audio_column], self.text_column, self.describe())
            except ValueError as exc:
                raise SourceError(str(exc)) from None
            wanted = [c for c in dict.fromkeys([self.audio_column, self.speaker_column, self.id_column,
                                                self.text_column]) if c]
            ds = ds.select_columns(wanted)
        else:  # streamed data without a schema: only a named text column is read
            if self.id_column == "auto":
                self.id_column = None
            if self.text_column in ("auto", "none"):
                self.text_column = None
        features = ds.features
        if features is not None and isinstance(features.get(self.audio_column), datasets.Audio):
            ds = ds.cast_column(self.audio_column, datasets.Audio(decode=False))
        self._ds = ds
        return ds

    def prepare(self) -> None:
        ds = self._open()
        if self.streaming:
            self.num_shards = int(ds.n_shards)
            self.num_items = None
        else:
            self.num_items = len(ds)
            self.num_shards = math.ceil(self.num_items / self.shard_size)

    # -- reading -------------------------------------------------------------------------------
    def _resolve_path(self, path: str, origin: str) -> AudioPayload:
        if "://" in path:
            import fsspec

            try:
                with fsspec.open(path, "rb") as fh:
                    return fh.read()
            except Exception as exc:
                return Rejected("missing_audio", f"{origin}: cannot open {path} ({exc})")
        if not os.path.isabs(path) and not os.path.exists(path):
            candidate = os.path.join(self.base_dir, path)
            if os.path.exists(candidate):
                return candidate
        return path

    def _payload(self, value: Any, origin: str) -> AudioPayload:
        if value is None or isinstance(value, (bytes, bytearray)):
            return value
        if isinstance(value, str):
            return self._resolve_path(value, origin)
        if isinstance(value, dict):
            if value.get("array") is not None:
                return value["array"], value.get("sampling_rate")
            if value.get("bytes") is not None:
                return value["bytes"]
            if value.get("path"):
                return self._resolve_path(value["path"], origin)
            return None
        if hasattr(value, "get_all_samples"):  # a decoder object from a decode=True column
            samples = value.get_all_samples()
            return samples.data.numpy().T, int(samples.sample_rate)
        return Rejected("missing_audio", f"{origin}: unusable audio value of type {type(value).__name__}")

    def iter_shard(self, index: int) -> Iterator[SourceItem]:
        ds = self._open()
        prefix = sanitize(self.split or "utt")
        if self.streaming:
            rows = ds.shard(num_shards=self.num_shards, index=index) if self.num_shards > 1 else ds
            first = None
        else:
            first = index * self.shard_size
            rows = ds.select(range(first, min(first + self.shard_size, len(ds))))
        for offset, row in enumerate(rows):
            if first is None:
                label, positional = f"shard {index} row {offset}", f"{prefix}-s{index:05d}-{offset:07d}"
            else:
                label, positional = f"row {first + offset}", f"{prefix}{first + offset:09d}"
            value = row.get(self.audio_column)
            path = value.get("path") if isinstance(value, dict) else (value if isinstance(value, str) else None)
            origin = f"{self.describe()} {label}" + (f" ({path})" if path else "")
            key = row.get(self.id_column) if self.id_column else None
            key = str(key) if key not in (None, "") else positional
            if self.id_column in ("path", "file"):
                key = os.path.splitext(os.path.basename(key))[0] or positional
            speaker = row.get(self.speaker_column) if self.speaker_column else None
            speaker = str(speaker) if speaker not in (None, "") else None
            text = clean_transcript(row.get(self.text_column)) if self.text_column else None
            yield SourceItem(key=key, speaker=speaker, origin=origin, audio=self._payload(value, origin), text=text)

    def describe(self) -> str:
        name = self.target if self.kind != "files" else f"{self.builder}:{self.target}"
        config = f":{self.config}" if self.config else ""
        split = f"[{self.split}]" if self.split else ""
        return f"hf:{name}{config}{split}"

    def fingerprint(self) -> dict:
        return {"source": self.describe(), "streaming": self.streaming, "num_shards": self.num_shards,
                "num_items": self.num_items, "shard_size": self.shard_size, "audio_column": self.audio_column,
                "speaker_column": self.speaker_column, "id_column": self.id_column, "text_column": self.text_column}
