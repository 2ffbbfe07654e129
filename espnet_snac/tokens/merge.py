"""Merge per-rank shards into one token set and write the requested formats.

Everything except the shards is derived here from the committed codes, so the merge can be re-run
at any time (``--merge_only``) and always reflects exactly what the shards hold.

Files written to ``output_dir`` (``<F>`` = frames of the utterance):

- ``codes.scp``: ``utt <shard ark>:<offset>``, sorted; int32 vectors of ``F * 7`` raw codes (with
  ``frames="floor"``, utterances that lose their last frame point into ``codes.ark`` instead)
- ``utt2num_frames``, ``utt2num_samples``; ``rejected.tsv`` (``utt<TAB>reason``)
- ``text`` + ``token_list`` (format ``text``): flattened ids ``k * 4096 + code`` (ESPnet ``text_int``)
- ``text_orpheus`` (format ``orpheus``): the same ids plus the Orpheus base offset
- ``levels/L<i>/<utt>.npy`` + ``level<i>.scp`` (format ``npy``): int32 codes per level
- ``codec.scp`` + ``codec.ark`` + ``codec_token_list`` (format ``codec``): int32 vectors of the flat
  ids ``k * 4096 + code``, as ESPnet's codec dump writes for the speech-LM ``codec`` modality
- ``datasets/`` (format ``datasets``): ``datasets.save_to_disk`` rows (see ``hf_dataset``)
- ``text_bpe`` + ``bpe_token_list`` + ``bpe/`` (with ``bpe_nunits`` or ``bpe_model``)
- ``stats.json``: counts, duration and per-level codebook usage and perplexity

``frames`` picks the frames of every file: ``ceil`` keeps all ``ceil(T / 2048)`` frames the encoder
emits, ``floor`` the ``floor(T / 2048)`` whole frames (ESPnet's codec dump); the shards always hold
all of them, so either can be merged from the same shards. Under ``floor`` an utterance shorter than
one frame is rejected (``rejected.tsv``), not written empty.
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
from kaldiio.matio import write_array

from espnet_snac.io.atomic_files import atomic_open
from espnet_snac.model.frames import FRAME_SIZE, frames_to_codes
from espnet_snac.tokens.bpe import UnitBPE, train_bpe, units_to_chars
from espnet_snac.tokens.hf_dataset import write_dataset
from espnet_snac.tokens.layout import (CODEBOOK_SIZE, FRAME_RULES, codec_token_names, frames_to_flat,
                                       frames_to_keep, token_names)
from espnet_snac.tokens.shards import read_shards
from espnet_snac.tokens.stats import CodebookStats

FORMATS = ("ark", "text", "orpheus", "npy", "codec", "datasets")


@dataclass
class MergeResult:
    written: List[str]
    rejected: Dict[str, str]
    missing: List[str]
    num_samples: int
    stats: List[Dict[str, float]]
    bpe_model: Optional[Path] = None


class _AtomicArk:
    """A Kaldi ark that appears complete or not at all (see ``espnet_snac.io.atomic_files``);
    :meth:`write` returns the scp value ``<path>:<offset>`` (the path as given, as the shards do)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = atomic_open(self.path, "wb")
        self.f = None

    def __enter__(self) -> "_AtomicArk":
        self.f = self._file.__enter__()
        return self

    def write(self, utt: str, vector: np.ndarray) -> str:
        self.f.write(f"{utt} ".encode("utf-8"))
        offset = self.f.tell()
        write_array(self.f, np.ascontiguousarray(vector, dtype=np.int32).reshape(-1))
        return f"{self.path}:{offset}"

    def __exit__(self, *exc) -> None:
        self._file.__exit__(*exc)


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
                 orpheus_base: int = 128266, bpe_nunits: int = 0, bpe_model: Optional[Path] = None,
                 frames: str = "ceil", frame_samples: int = 2048,
                 transcripts: Optional[Dict[str, str]] = None) -> MergeResult:
    """Merge the shards of ``output_dir``. ``keys``: the input utterances (all committed ones when
    None); committed utterances outside ``keys`` are left out of the merged files. ``frames``:
    ``ceil`` or ``floor`` (``frame_samples`` input samples per frame). ``transcripts``: utterance ->
    text for the ``datasets`` rows (every written utterance must have one)."""
    output_dir = Path(output_dir)
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown format(s) {sorted(unknown)}; choose from {list(FORMATS)}")
    if frames not in FRAME_RULES:
        raise ValueError(f"unknown frame rule {frames!r}; choose from {list(FRAME_RULES)}")
    state = read_shards(output_dir)
    keys = list(keys) if keys is not None else sorted(state.codes)
    committed = sorted(k for k in keys if k in state.codes)
    rejected = {k: state.rejected[k] for k in keys if k not in state.codes and k in state.rejected}
    missing = [k for k in keys if k not in state.codes and k not in state.rejected]
    if transcripts is not None and "datasets" in formats:
        lacking = [k for k in committed if k not in transcripts]
        if lacking:
            raise ValueError(f"no transcript for {len(lacking)} utterance(s) (e.g. {' '.join(lacking[:5])}); "
                             "every utterance of the data directory needs a line in its text file")

    written: List[str] = []
    values: Dict[str, str] = {}  # utt -> codes.scp value of the frames written
    stats = CodebookStats(CODEBOOK_SIZE)
    fd_cache: dict = {}
    trimmed = 0
    with ExitStack() as stack:
        scp = stack.enter_context(atomic_open(output_dir / "codes.scp"))
        n_frames = stack.enter_context(atomic_open(output_dir / "utt2num_frames"))
        n_samples = stack.enter_context(atomic_open(output_dir / "utt2num_samples"))
        text = stack.enter_context(atomic_open(output_dir / "text")) if "text" in formats else None
        orpheus = stack.enter_context(atomic_open(output_dir / "text_orpheus")) if "orpheus" in formats else None
        level_scps = ([stack.enter_context(atomic_open(output_dir / f"level{i}.scp")) for i in range(3)]
                      if "npy" in formats else None)
        units = (stack.enter_context(atomic_open(output_dir / "bpe" / "train_units.txt"))
                 if bpe_nunits > 0 else None)
        codec_scp = stack.enter_context(atomic_open(output_dir / "codec.scp")) if "codec" in formats else None
        codec_ark = stack.enter_context(_AtomicArk(output_dir / "codec.ark")) if "codec" in formats else None
        trimmed_ark = stack.enter_context(_AtomicArk(output_dir / "codes.ark")) if frames != "ceil" else None
        total_samples = 0
        for utt in committed:
            value = state.codes[utt]
            codes = load_codes(value, fd_cache)
            num_samples = state.num_samples.get(utt, 0)
            keep = frames_to_keep(num_samples, frame_samples, frames)
            if keep == 0:
                rejected[utt] = (f"shorter_than_one_frame ({num_samples} samples < {frame_samples}; "
                                 f"--frames {frames} keeps whole frames only)")
                continue
            if keep < len(codes):
                codes = codes[:keep]
                value = trimmed_ark.write(utt, codes)
                trimmed += 1
            written.append(utt)
            values[utt] = value
            stats.add(codes)
            total_samples += num_samples
            scp.write(f"{utt} {value}\n")
            n_frames.write(f"{utt} {len(codes)}\n")
            n_samples.write(f"{utt} {num_samples}\n")
            flat = frames_to_flat(codes)
            if text is not None:
                text.write(utt + " " + " ".join(map(str, flat.tolist())) + "\n")
            if units is not None:
                units.write(units_to_chars(flat) + "\n")
            if codec_scp is not None:
                codec_scp.write(f"{utt} {codec_ark.write(utt, flat)}\n")
            if orpheus is not None:
                ids = frames_to_flat(codes, base=orpheus_base)
                orpheus.write(utt + " " + " ".join(map(str, ids.tolist())) + "\n")
            if level_scps is not None:
                levels = frames_to_codes(torch.from_numpy(codes.astype(np.int64))[None])
                for i, (lv, lscp) in enumerate(zip(levels, level_scps)):
                    path = output_dir / "levels" / f"L{i}" / f"{utt}.npy"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    np.save(path, lv[0].numpy().astype(np.int32))
                    lscp.write(f"{utt} {path}\n")
    _close_all(fd_cache)
    if trimmed_ark is not None and not trimmed:
        (output_dir / "codes.ark").unlink()  # nothing points into it
    elif trimmed_ark is None:
        (output_dir / "codes.ark").unlink(missing_ok=True)  # left by an earlier floor merge

    with atomic_open(output_dir / "rejected.tsv") as f:
        for k in sorted(rejected):
            f.write(f"{k}\t{rejected[k]}\n")

    if "text" in formats:
        with atomic_open(output_dir / "token_list") as f:
            f.write("\n".join(token_names(CODEBOOK_SIZE)) + "\n")
    if "codec" in formats:
        with atomic_open(output_dir / "codec_token_list") as f:
            f.write("\n".join(codec_token_names(CODEBOOK_SIZE)) + "\n")
    if "datasets" in formats:
        write_dataset(output_dir, [(u, values[u], state.num_samples.get(u, 0)) for u in written],
                      orpheus_base, transcripts)

    model_path = None
    if bpe_nunits > 0 or bpe_model is not None:
        if bpe_nunits > 0:
            model_path = train_bpe(output_dir / "bpe" / "train_units.txt", output_dir / "bpe" / "bpe", bpe_nunits)
        else:
            model_path = Path(bpe_model)
        bpe = UnitBPE(model_path)
        with atomic_open(output_dir / "text_bpe") as f:
            for utt in written:
                pieces = bpe.encode(frames_to_flat(load_codes(values[utt], fd_cache)).tolist())
                f.write(utt + " " + " ".join(pieces) + "\n")
        _close_all(fd_cache)
        with atomic_open(output_dir / "bpe_token_list") as f:
            f.write("\n".join(bpe.pieces()) + "\n")

    return MergeResult(written, rejected, missing, total_samples, stats.summary(), model_path)


def write_summary(output_dir: Path, summary: dict) -> None:
    with atomic_open(Path(output_dir) / "stats.json") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
