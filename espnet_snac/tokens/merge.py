"""Merge per-rank shards into one token set and write the requested formats.

Everything except the shards is derived here from the committed codes, so the merge can be re-run
at any time (``--merge_only``) and always reflects exactly what the shards hold.

Files written to ``output_dir`` (``<F>`` = frames of the utterance):

- ``codes.scp``: ``utt <shard ark>:<offset>``, sorted; int32 vectors of ``F * 7`` raw codes
- ``utt2num_frames``, ``utt2num_samples``; ``rejected.tsv`` (``utt<TAB>reason``)
- ``text`` + ``token_list`` (format ``text``): flattened ids ``k * 4096 + code`` (ESPnet ``text_int``)
- ``text_orpheus`` (format ``orpheus``): the same ids plus the Orpheus base offset
- ``levels/L<i>/<utt>.npy`` + ``level<i>.scp`` (format ``npy``): int32 codes per level
- ``text_bpe`` + ``bpe_token_list`` + ``bpe/`` (with ``bpe_nunits`` or ``bpe_model``)
- ``stats.json``: counts, duration and per-level codebook usage and perplexity
"""
from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import kaldiio
import numpy as np
import torch

from espnet_snac.atomic_files import atomic_open
from espnet_snac.frames import FRAME_SIZE, frames_to_codes
from espnet_snac.tokens.bpe import UnitBPE, train_bpe, units_to_chars
from espnet_snac.tokens.layout import CODEBOOK_SIZE, frames_to_flat, token_names
from espnet_snac.tokens.shards import read_shards
from espnet_snac.tokens.stats import CodebookStats

FORMATS = ("ark", "text", "orpheus", "npy")


@dataclass
class MergeResult:
    written: List[str]
    rejected: Dict[str, str]
    missing: List[str]
    num_samples: int
    stats: List[Dict[str, float]]
    bpe_model: Optional[Path] = None


def _AtomicText(path: Path):
    """A text file that appears complete or not at all (see ``espnet_snac.atomic_files``)."""
    return atomic_open(path, "w")


def _close_all(fd_cache: dict) -> None:
    for fd in fd_cache.values():
        fd.close()
    fd_cache.clear()


def load_codes(value: str, fd_cache: Optional[dict] = None) -> np.ndarray:
    """One ``codes.scp`` value -> ``(F, 7)`` int32 raw codes."""
    flat = np.asarray(kaldiio.load_mat(value, fd_dict=fd_cache))
    if flat.ndim != 1 or flat.size % FRAME_SIZE:
        raise ValueError(f"{value}: expected an int32 vector of frames x {FRAME_SIZE} codes, got shape {flat.shape}")
    return flat.reshape(-1, FRAME_SIZE)


def merge_shards(output_dir: Path, keys: Optional[Sequence[str]] = None, formats: Sequence[str] = ("ark", "text"),
                 orpheus_base: int = 128266, bpe_nunits: int = 0, bpe_model: Optional[Path] = None) -> MergeResult:
    """Merge the shards of ``output_dir``. ``keys``: the input utterances (all committed ones when
    None); committed utterances outside ``keys`` are left out of the merged files."""
    output_dir = Path(output_dir)
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown format(s) {sorted(unknown)}; choose from {list(FORMATS)}")
    state = read_shards(output_dir)
    keys = list(keys) if keys is not None else sorted(state.codes)
    written = sorted(k for k in keys if k in state.codes)
    rejected = {k: state.rejected[k] for k in keys if k not in state.codes and k in state.rejected}
    missing = [k for k in keys if k not in state.codes and k not in state.rejected]

    with _AtomicText(output_dir / "rejected.tsv") as f:
        for k in sorted(rejected):
            f.write(f"{k}\t{rejected[k]}\n")

    stats = CodebookStats(CODEBOOK_SIZE)
    fd_cache: dict = {}
    with ExitStack() as stack:
        scp = stack.enter_context(_AtomicText(output_dir / "codes.scp"))
        n_frames = stack.enter_context(_AtomicText(output_dir / "utt2num_frames"))
        n_samples = stack.enter_context(_AtomicText(output_dir / "utt2num_samples"))
        text = stack.enter_context(_AtomicText(output_dir / "text")) if "text" in formats else None
        orpheus = stack.enter_context(_AtomicText(output_dir / "text_orpheus")) if "orpheus" in formats else None
        level_scps = ([stack.enter_context(_AtomicText(output_dir / f"level{i}.scp")) for i in range(3)]
                      if "npy" in formats else None)
        units = (stack.enter_context(_AtomicText(output_dir / "bpe" / "train_units.txt"))
                 if bpe_nunits > 0 else None)
        total_samples = 0
        for utt in written:
            value = state.codes[utt]
            frames = load_codes(value, fd_cache)
            stats.add(frames)
            total_samples += state.num_samples.get(utt, 0)
            scp.write(f"{utt} {value}\n")
            n_frames.write(f"{utt} {len(frames)}\n")
            n_samples.write(f"{utt} {state.num_samples.get(utt, 0)}\n")
            if text is not None or units is not None:
                flat = frames_to_flat(frames)
                if text is not None:
                    text.write(utt + " " + " ".join(map(str, flat.tolist())) + "\n")
                if units is not None:
                    units.write(units_to_chars(flat) + "\n")
            if orpheus is not None:
                ids = frames_to_flat(frames, base=orpheus_base)
                orpheus.write(utt + " " + " ".join(map(str, ids.tolist())) + "\n")
            if level_scps is not None:
                levels = frames_to_codes(torch.from_numpy(frames.astype(np.int64))[None])
                for i, (lv, lscp) in enumerate(zip(levels, level_scps)):
                    path = output_dir / "levels" / f"L{i}" / f"{utt}.npy"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    np.save(path, lv[0].numpy().astype(np.int32))
                    lscp.write(f"{utt} {path}\n")
    _close_all(fd_cache)

    if "text" in formats:
        with _AtomicText(output_dir / "token_list") as f:
            f.write("\n".join(token_names(CODEBOOK_SIZE)) + "\n")

    model_path = None
    if bpe_nunits > 0 or bpe_model is not None:
        if bpe_nunits > 0:
            model_path = train_bpe(output_dir / "bpe" / "train_units.txt", output_dir / "bpe" / "bpe", bpe_nunits)
        else:
            model_path = Path(bpe_model)
        bpe = UnitBPE(model_path)
        with _AtomicText(output_dir / "text_bpe") as f:
            for utt in written:
                pieces = bpe.encode(frames_to_flat(load_codes(state.codes[utt], fd_cache)).tolist())
                f.write(utt + " " + " ".join(pieces) + "\n")
        _close_all(fd_cache)
        with _AtomicText(output_dir / "bpe_token_list") as f:
            f.write("\n".join(bpe.pieces()) + "\n")

    return MergeResult(written, rejected, missing, total_samples, stats.summary(), model_path)


def write_summary(output_dir: Path, summary: dict) -> None:
    with _AtomicText(Path(output_dir) / "stats.json") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
