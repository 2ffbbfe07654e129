"""Orpheus-style fine-tuning data: a Hugging Face ``datasets`` directory (``save_to_disk``).

One row per utterance:

- ``utt_id`` (string), ``num_samples`` (int64, input length at the model rate),
- ``codes``: ``(frames, 7)`` int32 raw codes in the frame order of :mod:`espnet_snac.model.frames`,
- ``orpheus_ids``: ``(frames * 7,)`` int32 ids ``base + k * 4096 + code``,
- ``text`` (string): the transcript, only when the data directory has a ``text`` file.

Load with ``datasets.load_from_disk(path)``.
"""
from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import kaldiio
import numpy as np

from espnet_snac.model.frames import FRAME_SIZE
from espnet_snac.tokens.layout import frames_to_flat

DATASET_DIR = "datasets"


def _features(with_text: bool):
    import datasets

    seq = getattr(datasets, "List", None) or datasets.Sequence  # List since datasets 4
    feats = {"utt_id": datasets.Value("string"), "num_samples": datasets.Value("int64"),
             "codes": seq(seq(datasets.Value("int32"), length=FRAME_SIZE)),
             "orpheus_ids": seq(datasets.Value("int32"))}
    if with_text:
        feats["text"] = datasets.Value("string")
    return datasets.Features(feats)


def _rows(entries: List[Tuple[str, str, int]], transcripts: Optional[Dict[str, str]], base: int) -> Iterator[dict]:
    fd_cache: dict = {}
    try:
        for utt, value, num_samples in entries:
            codes = np.asarray(kaldiio.load_mat(value, fd_dict=fd_cache)).reshape(-1, FRAME_SIZE)
            row = {"utt_id": utt, "num_samples": num_samples, "codes": codes.astype(np.int32),
                   "orpheus_ids": frames_to_flat(codes, base=base).astype(np.int32)}
            if transcripts is not None:
                row["text"] = transcripts[utt]
            yield row
    finally:
        for fd in fd_cache.values():
            fd.close()


def write_dataset(output_dir: Path, entries: List[Tuple[str, str, int]], orpheus_base: int,
                  transcripts: Optional[Dict[str, str]] = None) -> Path:
    """Write ``<output_dir>/datasets`` from ``[(utt, codes.scp value, num_samples)]`` (replacing an
    earlier one only once the new one is complete). Returns the directory."""
    import datasets

    output_dir = Path(output_dir)
    final, tmp = output_dir / DATASET_DIR, output_dir / f"{DATASET_DIR}.tmp"
    cache = output_dir / f"{DATASET_DIR}.cache.tmp"  # Arrow files of the generator, not ~/.cache
    for d in (tmp, cache):
        shutil.rmtree(d, ignore_errors=True)
    try:
        ds = datasets.Dataset.from_generator(
            _rows, features=_features(transcripts is not None), cache_dir=str(cache),
            gen_kwargs=dict(entries=entries, transcripts=transcripts, base=orpheus_base),
            # a fresh fingerprint: no hashing of the entry list, no reuse of a stale cache
            fingerprint=uuid.uuid4().hex,
        ) if entries else datasets.Dataset.from_dict({k: [] for k in _features(transcripts is not None)},
                                                     features=_features(transcripts is not None))
        ds.save_to_disk(str(tmp))
        del ds
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return final
