"""Per-shard results under ``OUTPUT_DIR/.prep/`` that make a run resumable and splittable.

For shard ``k`` (``shard-0000k``): ``.kept.tsv`` (utt, speaker or empty, audio ref, num_samples),
``.rejected.tsv`` (utt, origin, reason), ``.text.tsv`` (utt, transcript; kept utterances that have one) and, written last, ``.json`` with the counts. A shard
counts as done only when its json exists; anything else left by an interruption is redone.
Audio refs below the output directory are stored relative to it, so a prepared directory
(or shards made on other machines) can be moved or copied together.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

from espnet_snac.data.kaldi_files import atomic_write_lines, atomic_write_text

WORK_DIR = ".prep"


@dataclass
class ShardResult:
    """Counts for one shard: ``read == kept + rejected`` always."""

    index: int
    read: int = 0
    kept: int = 0
    rejected: int = 0
    samples: int = 0
    capped: bool = False  # stopped early (or never started) because --max_hours/--max_utts was reached
    input_rates: Dict[str, int] = field(default_factory=dict)  # kept utterances per input rate (Hz)
    bandwidths: List[float] = field(default_factory=list)  # effective bandwidths (Hz) of a sample
    kept_rows: List[Tuple[str, str, str, int]] = field(default_factory=list)
    rejected_rows: List[Tuple[str, str, str]] = field(default_factory=list)
    text_rows: List[Tuple[str, str]] = field(default_factory=list)  # (utt, one-line transcript)

    def counts(self) -> Dict[str, object]:
        data = asdict(self)
        data.pop("kept_rows")
        data.pop("rejected_rows")
        data.pop("text_rows")
        return data


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


class ShardStore:
    def __init__(self, output_dir: str) -> None:
        self.output_dir = os.path.abspath(output_dir)
        self.work_dir = os.path.join(self.output_dir, WORK_DIR)
        self.shard_dir = os.path.join(self.work_dir, "shards")

    def _path(self, index: int, suffix: str) -> str:
        return os.path.join(self.shard_dir, shard_name(index) + suffix)

    def to_stored_ref(self, ref: str) -> str:
        root = self.output_dir + os.sep
        return ref[len(root):] if ref.startswith(root) else ref

    def to_absolute_ref(self, ref: str) -> str:
        return ref if os.path.isabs(ref) else os.path.join(self.output_dir, ref)

    def is_done(self, index: int) -> bool:
        return os.path.exists(self._path(index, ".json"))

    def save(self, result: ShardResult) -> None:
        os.makedirs(self.shard_dir, exist_ok=True)
        atomic_write_lines(self._path(result.index, ".kept.tsv"),
                           ((u, s, self.to_stored_ref(r), n) for u, s, r, n in result.kept_rows), sep="\t")
        atomic_write_lines(self._path(result.index, ".rejected.tsv"), result.rejected_rows, sep="\t")
        atomic_write_lines(self._path(result.index, ".text.tsv"), result.text_rows, sep="\t")
        atomic_write_text(self._path(result.index, ".json"), json.dumps(result.counts()) + "\n")

    def load(self, index: int) -> ShardResult:
        with open(self._path(index, ".json"), encoding="utf-8") as fh:
            result = ShardResult(**json.load(fh))
        with open(self._path(index, ".kept.tsv"), encoding="utf-8") as fh:
            for line in fh:
                utt, spk, ref, num = line.rstrip("\n").split("\t")
                result.kept_rows.append((utt, spk, self.to_absolute_ref(ref), int(num)))
        with open(self._path(index, ".rejected.tsv"), encoding="utf-8") as fh:
            for line in fh:
                utt, origin, reason = line.rstrip("\n").split("\t")
                result.rejected_rows.append((utt, origin, reason))
        text_path = self._path(index, ".text.tsv")
        if os.path.exists(text_path):  # shards of earlier versions have none
            with open(text_path, encoding="utf-8") as fh:
                for line in fh:
                    utt, _, text = line.rstrip("\n").partition("\t")
                    result.text_rows.append((utt, text))
        if result.read != result.kept + result.rejected or result.kept != len(result.kept_rows) \
                or result.rejected != len(result.rejected_rows):
            raise RuntimeError(f"{self._path(index, '.json')}: counts do not match the shard files; "
                               f"delete shard-{index:05d}.* there to redo the shard")
        return result

    def load_counts(self, index: int) -> Dict[str, object]:
        with open(self._path(index, ".json"), encoding="utf-8") as fh:
            return json.load(fh)

    # -- run-level records ---------------------------------------------------------------------
    def read_json(self, name: str) -> Optional[dict]:
        path = os.path.join(self.work_dir, name)
        if not os.path.exists(path):
            return None
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)

    def write_json(self, name: str, data: dict) -> None:
        atomic_write_text(os.path.join(self.work_dir, name), json.dumps(data, indent=1) + "\n")

    def remove(self, name: str) -> None:
        path = os.path.join(self.work_dir, name)
        if os.path.exists(path):
            os.unlink(path)
