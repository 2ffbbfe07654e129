"""Per-rank output shards; what a shard's ``codes.scp`` lists is finished.

A shard ``<output_dir>/shards/part-<rank>/`` holds:

- ``codes.ark``: per utterance a Kaldi int32 vector of ``frames * 7`` raw codes (frame-major),
- ``utt2num_samples``: input length in samples at the model rate,
- ``rejected.tsv``: ``utt_id<TAB>reason`` for inputs that were skipped,
- ``codes.scp``: ``utt_id <ark>:<offset>``, written last; a line ending in a newline commits the
  utterance. A re-run first cuts what an interruption left after the last commit (a partial ark
  record, a length line of an uncommitted utterance), then appends and skips committed utterances,
  so a crash at any point loses at most the utterances not yet committed and the shard ends up
  byte for byte as an uninterrupted run writes it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import numpy as np
from kaldiio.matio import read_kaldi, write_array

from espnet_snac.io.atomic_files import atomic_write_text

SHARDS = "shards"


def shard_dir(output_dir: Path, rank: int) -> Path:
    return Path(output_dir) / SHARDS / f"part-{rank:04d}"


def _complete_lines(path: Path) -> List[str]:
    """Lines of ``path`` that end with a newline (a crash can leave a partial last line)."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    return [ln for ln in lines[:-1] if ln.strip()]


@dataclass
class ShardState:
    """What all shards of an output directory hold (a later entry for the same id wins)."""

    codes: Dict[str, str]  # utt -> "ark:offset"
    num_samples: Dict[str, int]
    rejected: Dict[str, str]  # utt -> reason


def read_shards(output_dir: Path) -> ShardState:
    codes: Dict[str, str] = {}
    num_samples: Dict[str, int] = {}
    rejected: Dict[str, str] = {}
    root = Path(output_dir) / SHARDS
    for part in sorted(root.glob("part-*")) if root.is_dir() else []:
        for line in _complete_lines(part / "utt2num_samples"):
            utt, n = line.split()
            num_samples[utt] = int(n)
        for line in _complete_lines(part / "codes.scp"):
            utt, value = line.split(maxsplit=1)
            codes[utt] = value
        for line in _complete_lines(part / "rejected.tsv"):
            utt, _, reason = line.partition("\t")
            rejected[utt] = reason
    return ShardState(codes, num_samples, rejected)


def _drop_partial_line(path: Path) -> None:
    """Truncate a last line that a crash left without its newline, so appends start clean."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "r+b") as f:
        data = f.read()
        if not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def _recover(directory: Path) -> None:
    """Cut a shard back to its committed utterances (see the module docstring)."""
    for name in ("codes.scp", "utt2num_samples", "rejected.tsv"):
        _drop_partial_line(directory / name)
    committed = _complete_lines(directory / "codes.scp")
    ark = directory / "codes.ark"
    end = 0
    if committed:
        last = committed[-1]
        try:
            offset = int(last.rsplit(":", 1)[1])
            with open(ark, "rb") as f:
                f.seek(offset)
                read_kaldi(f)
                end = f.tell()
        except (OSError, ValueError, IndexError, AssertionError) as exc:
            raise RuntimeError(f"{directory}: the last committed entry {last!r} cannot be read from {ark} ({exc}); "
                               f"delete {directory} to redo this shard") from exc
    if ark.is_file() and ark.stat().st_size > end:
        with open(ark, "r+b") as f:
            f.truncate(end)
    lens = directory / "utt2num_samples"
    done = {ln.split(maxsplit=1)[0] for ln in committed}
    rows = _complete_lines(lens)
    keep = [ln for ln in rows if ln.split(maxsplit=1)[0] in done]
    if len(keep) != len(rows):
        atomic_write_text(lens, "".join(ln + "\n" for ln in keep))


class ShardWriter:
    """Appends utterances to one shard. ``ark_name`` is the ark path as written into the scp (kept
    as given, Kaldi-style: relative paths resolve against the directory the job runs in)."""

    def __init__(self, directory: Path, ark_name: str):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ark_name = ark_name
        _recover(self.directory)
        self._ark = open(self.directory / "codes.ark", "ab")
        self._scp = open(self.directory / "codes.scp", "a", encoding="utf-8")
        self._lens = open(self.directory / "utt2num_samples", "a", encoding="utf-8")
        self._rej = open(self.directory / "rejected.tsv", "a", encoding="utf-8")

    def write(self, utt: str, frames: np.ndarray, num_samples: int) -> None:
        """Store ``frames (F, 7)`` raw codes; the scp line (the commit) goes last."""
        if any(ch.isspace() for ch in utt):
            raise ValueError(f"utterance id {utt!r} contains whitespace; Kaldi ids must not")
        self._ark.write(f"{utt} ".encode("utf-8"))
        offset = self._ark.tell()
        write_array(self._ark, np.ascontiguousarray(frames, dtype=np.int32).reshape(-1))
        self._ark.flush()
        self._lens.write(f"{utt} {int(num_samples)}\n")
        self._lens.flush()
        self._scp.write(f"{utt} {self.ark_name}:{offset}\n")
        self._scp.flush()

    def reject(self, utt: str, reason: str) -> None:
        self._rej.write(f"{utt}\t{' '.join(str(reason).split())}\n")
        self._rej.flush()

    def close(self) -> None:
        for f in (self._ark, self._scp, self._lens, self._rej):
            f.close()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
