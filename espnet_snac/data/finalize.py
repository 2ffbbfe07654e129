"""Joining shard results into the Kaldi-style output directories and the summary.

Layout: with no dev/test fractions, ``OUTPUT_DIR`` itself is the data directory; with fractions,
``OUTPUT_DIR/{train,dev,test}`` are (names configurable). ``OUTPUT_DIR/rejected.tsv`` and
``OUTPUT_DIR/summary.json`` cover everything read.
"""
from __future__ import annotations

import json
import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

from espnet_snac.data.bandwidth import summarize as summarize_bandwidth
from espnet_snac.data.kaldi_files import atomic_write_lines, atomic_write_text, write_kaldi_dir
from espnet_snac.data.shard_store import ShardResult, ShardStore
from espnet_snac.data.utt_ids import assign_subset

SPLIT_BY = ("speaker", "utterance")


@dataclass
class FinalizeOptions:
    dev_fraction: float = 0.0
    test_fraction: float = 0.0
    split_by: str = "speaker"  # hash of the speaker where the utterance has one, else of its id
    subset_names: Tuple[str, str, str] = ("train", "dev", "test")

    def __post_init__(self) -> None:
        self.subset_names = tuple(self.subset_names)  # type: ignore[assignment]
        if not (0 <= self.dev_fraction < 1 and 0 <= self.test_fraction < 1
                and self.dev_fraction + self.test_fraction < 1):
            raise ValueError("--dev_fraction and --test_fraction must be in [0, 1) with a sum below 1")
        if self.split_by not in SPLIT_BY:
            raise ValueError(f"--split_by must be one of {SPLIT_BY}")
        if len(self.subset_names) != 3 or len(set(self.subset_names)) != 3:
            raise ValueError("--subset_names needs three different names (train,dev,test)")

    @property
    def splits(self) -> bool:
        return self.dev_fraction > 0 or self.test_fraction > 0


@dataclass
class Summary:
    output_dir: str
    read: int
    kept: int
    rejected: int
    hours: float
    reasons: Dict[str, int] = field(default_factory=dict)
    subsets: Dict[str, Dict[str, float]] = field(default_factory=dict)  # name -> {utts, hours}
    capped: bool = False
    bandwidth: Dict[str, Any] = field(default_factory=dict)  # see espnet_snac.data.bandwidth.summarize

    def line(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.reasons.items()))
        subsets = "; ".join(f"{k}: {int(v['utts'])} utts {v['hours']:.3f} h" for k, v in self.subsets.items())
        return (f"prepare_data: kept {self.kept} ({self.hours:.3f} h), rejected {self.rejected}"
                f"{' (' + reasons + ')' if reasons else ''}, read {self.read}"
                f"{' [cap reached]' if self.capped else ''} -> {self.output_dir}"
                f"{' [' + subsets + ']' if subsets and len(self.subsets) > 1 else ''}"
                f"{' [narrow-band audio: see summary.json]' if (self.bandwidth or {}).get('warning') else ''}")


def finalize(store: ShardStore, results: Sequence[ShardResult], opts: FinalizeOptions, fs: int = 0) -> Summary:
    """Write the data directories, rejected.tsv and summary.json; returns the summary."""
    kept: List[Tuple[str, str, str, int]] = []
    rejected: List[Tuple[str, str, str]] = []
    seen: Dict[str, int] = {}
    read = 0
    for result in results:
        read += result.read
        rejected.extend(result.rejected_rows)
        for utt, spk, ref, num in result.kept_rows:
            if utt in seen:  # same id from two shards: keep the first (by shard order)
                rejected.append((utt, ref, f"duplicate_id (id already kept from shard {seen[utt]})"))
                continue
            seen[utt] = result.index
            kept.append((utt, spk, ref, num))
    if read != len(kept) + len(rejected):
        raise RuntimeError(f"internal count mismatch: read {read} != kept {len(kept)} + rejected {len(rejected)}")
    fs = fs or _infer_fs(store)
    groups: Dict[str, List[Tuple[str, str, str, int]]] = {}
    for utt, spk, ref, num in kept:
        name = ""
        if opts.splits:
            key = spk if spk and opts.split_by == "speaker" else utt
            subset = assign_subset(key, opts.dev_fraction, opts.test_fraction)
            name = opts.subset_names[("train", "dev", "test").index(subset)]
        groups.setdefault(name, []).append((utt, spk or utt, ref, num))

    subsets: Dict[str, Dict[str, float]] = {}
    names = [n for n in opts.subset_names] if opts.splits else [""]
    for name in names:
        rows = groups.get(name, [])
        label = name or "."
        if not rows:
            if opts.splits:
                print(f"prepare_data: warning: no utterance fell into {name}; raise its fraction or "
                      f"add data (directory not written)", file=sys.stderr)
            continue
        write_kaldi_dir(os.path.join(store.output_dir, name) if name else store.output_dir, rows)
        subsets[label] = {"utts": len(rows), "hours": sum(r[3] for r in rows) / fs / 3600.0}

    rejected.sort()
    atomic_write_lines(os.path.join(store.output_dir, "rejected.tsv"),
                       [("utt_id", "origin", "reason")] + rejected, sep="\t")
    reasons = Counter(reason.split(" ", 1)[0] for _, _, reason in rejected)
    rates: Counter = Counter()
    for result in results:
        rates.update(result.input_rates)
    bandwidth = summarize_bandwidth([b for r in results for b in r.bandwidths], rates, fs)
    if bandwidth["warning"]:
        print(f"prepare_data: warning: {store.output_dir}: {bandwidth['warning']}", file=sys.stderr)
    summary = Summary(
        output_dir=store.output_dir, read=read, kept=len(kept), rejected=len(rejected),
        hours=sum(r[3] for r in kept) / fs / 3600.0, reasons=dict(sorted(reasons.items())), subsets=subsets,
        capped=any(r.capped for r in results), bandwidth=bandwidth,
    )
    atomic_write_text(os.path.join(store.output_dir, "summary.json"), json.dumps(asdict(summary), indent=1) + "\n")
    return summary


def _infer_fs(store: ShardStore) -> int:
    config = store.read_json("config.json") or {}
    return int(config.get("limits", {}).get("fs", 24000))
