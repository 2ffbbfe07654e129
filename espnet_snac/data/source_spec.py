"""Parse ``--source`` (``hf:NAME_OR_PATH[:CONFIG]``, ``folder:PATH``, ``kaldi:PATH``) into a Source.

``hf:`` forms:
- ``hf:org/name`` / ``hf:org/name:config``: a hub dataset (``load_dataset``).
- ``hf:/path/to/save_to_disk_dir``: a ``Dataset`` / ``DatasetDict`` written by ``save_to_disk``.
- ``hf:/path/file.parquet``, ``hf:/path/*.parquet``, ``hf:/dir/of/parquet_or_jsonl``: local data files
  (``.parquet``, ``.arrow``, ``.jsonl``/``.json``, ``.csv``); ``hf:parquet:GLOB`` (also ``arrow:``,
  ``json:``, ``csv:``) names the builder explicitly.
- ``hf:audiofolder:/path`` (or a local directory holding only audio files): audio files plus
  optional metadata.csv/jsonl, as the ``audiofolder`` builder lays them out.
- ``hf:/path/to/local_dataset_repo:config``: a local dataset repository with configs.
"""
from __future__ import annotations

import os
from typing import Optional

from espnet_snac.data.folder_source import AUDIO_EXTENSIONS, FolderSource
from espnet_snac.data.hf_source import FILE_BUILDERS, HFSource, _expand
from espnet_snac.data.kaldi_source import KaldiSource
from espnet_snac.data.source_base import Source, SourceError

BUILDER_PREFIXES = {"parquet": "parquet", "arrow": "arrow", "json": "json", "jsonl": "json", "csv": "csv"}


def _has_audio_files(directory: str) -> bool:
    for _, _, files in os.walk(directory):
        if any(f.lower().endswith(AUDIO_EXTENSIONS) for f in files):
            return True
    return False


def _split_dir(path: str, split: Optional[str], kind: str) -> str:
    """``PATH/SPLIT`` for folder-like sources given ``--split``."""
    if not split:
        return path
    candidate = os.path.join(path, split)
    if not os.path.isdir(candidate):
        raise SourceError(f"{kind}:{path}: --split {split!r} given but {candidate} is not a directory")
    return candidate


def make_source(
    spec: str,
    split: Optional[str] = None,
    streaming: bool = False,
    audio_column: str = "audio",
    speaker_column: Optional[str] = None,
    id_column: Optional[str] = "auto",
    shard_size: int = 1000,
    speaker_from_dir: bool = False,
    text_column: Optional[str] = "auto",
) -> Source:
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise SourceError(f"--source {spec!r}: expected hf:NAME_OR_PATH[:CONFIG], folder:PATH or kaldi:PATH")
    explicit_id = None if id_column == "auto" else id_column
    if kind == "folder":
        return FolderSource(_split_dir(rest, split, "folder"), shard_size, speaker_from_dir,
                            speaker_column, explicit_id, text_column=text_column)
    if kind == "kaldi":
        return KaldiSource(rest, shard_size)
    if kind != "hf":
        raise SourceError(f"--source {spec!r}: unknown kind {kind!r} (use hf:, folder: or kaldi:)")

    def hf(kind_: str, target: str, config: Optional[str] = None, data_files=None, builder=None) -> HFSource:
        return HFSource(kind_, target, config, split, streaming, audio_column, speaker_column, id_column,
                        shard_size, data_files, builder, text_column=text_column)

    def audiofolder(path: str) -> FolderSource:
        return FolderSource(_split_dir(path, split, "hf:audiofolder"), shard_size, speaker_from_dir,
                            speaker_column, explicit_id, kind="hf:audiofolder", text_column=text_column)

    head, sep2, tail = rest.partition(":")
    if sep2 and head == "audiofolder":
        return audiofolder(tail)
    if sep2 and head in BUILDER_PREFIXES:
        files = _expand(tail)
        if not files:
            raise SourceError(f"--source {spec!r}: no files match {tail}")
        return hf("files", tail, data_files=files, builder=BUILDER_PREFIXES[head])

    def local(path: str, config: Optional[str]) -> Optional[Source]:
        if any(ch in path for ch in "*?[") and not os.path.exists(path):
            files = _expand(path)
            if not files:
                raise SourceError(f"--source {spec!r}: no files match {path}")
        elif os.path.isfile(path):
            files = [os.path.abspath(path)]
        elif os.path.isdir(path):
            if any(os.path.exists(os.path.join(path, f)) for f in ("state.json", "dataset_dict.json")):
                return hf("disk", os.path.abspath(path))
            if config:  # a local dataset repository with named configs
                return hf("hub", os.path.abspath(path), config)
            files = _expand(path)
            if not files:
                if _has_audio_files(path):
                    return audiofolder(path)
                raise SourceError(f"--source {spec!r}: {path} holds no dataset, data files or audio files")
        else:
            return None
        builders = {FILE_BUILDERS[os.path.splitext(f)[1].lower()] for f in files
                    if os.path.splitext(f)[1].lower() in FILE_BUILDERS}
        if len(builders) != 1:
            raise SourceError(f"--source {spec!r}: cannot tell the file type of {path}; "
                              f"name it, e.g. hf:parquet:{path}")
        return hf("files", path, data_files=files, builder=builders.pop())

    found = local(rest, None)
    if found is None and ":" in rest:
        path, _, config = rest.rpartition(":")
        found = local(path, config) if os.path.exists(path) else None
    if found is not None:
        return found
    if rest.startswith(("/", "./", "../", "~")):
        raise SourceError(f"--source {spec!r}: {rest} does not exist")
    name, _, config = rest.partition(":")
    return hf("hub", name, config or None)
