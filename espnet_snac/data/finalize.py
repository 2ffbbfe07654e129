"""Joining shard results into the Kaldi-style output directories and the summary.

Layout: with no dev/test fractions, ``OUTPUT_DIR`` itself is the data directory; with fractions,
``OUTPUT_DIR/{train,dev,test}`` are (names configurable). ``OUTPUT_DIR/rejected.tsv`` and
``OUTPUT_DIR/summary.json`` cover everything read. Each data directory gets a Kaldi ``text``
(``utt transcript``) when the source gave transcripts.

The split (see :func:`split_rows`) fits the corpus: speaker-disjoint when there are at least
:data:`MIN_SPEAKERS_FOR_SPEAKER_SPLIT` speakers, else by utterance with a warning; a held-out set
with a fraction above 0 that the hash leaves empty gets one speaker (or utterance) from train, as
long as train keeps some.
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
from espnet_snac.data.utt_ids import assign_subset, hash_fraction

SPLIT_BY = ("speaker", "utterance")
#: A speaker-disjoint dev/test split needs this many speakers: one held out per set still leaves
#: train at least three voices. Fewer speakers: the split is by utterance (with a warning).
MIN_SPEAKERS_FOR_SPEAKER_SPLIT = 5


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
    transcripts: int = 0  # kept utterances with a transcript (written to <set>/text)
    split_by: str = ""  # how the sets were split ("speaker", "utterance"); "" without a split

    def line(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.reasons.items()))
        subsets = "; ".join(f"{k}: {int(v['utts'])} utts {v['hours']:.3f} h" for k, v in self.subsets.items())
        return (f"prepare_data: kept {self.kept} ({self.hours:.3f} h, {self.transcripts} with transcripts), "
                f"rejected {self.rejected}"
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
    # the transcript of the copy that was kept
    texts = {utt: text for result in results for utt, text in result.text_rows if seen.get(utt) == result.index}
    split_by = ""
    if opts.splits:
        groups, split_by = split_rows(kept, opts)
    else:
        groups = {"": [(utt, spk or utt, ref, num) for utt, spk, ref, num in kept]}

    subsets: Dict[str, Dict[str, float]] = {}
    names = [n for n in opts.subset_names] if opts.splits else [""]
    for name in names:
        rows = groups.get(name, [])
        label = name or "."
        if not rows:
            if opts.splits:
                print(f"prepare_data: warning: no utterance fell into {name}; raise its fraction "
                      f"(--dev_fraction/--test_fraction) or add data (directory not written)", file=sys.stderr)
            continue
        directory = os.path.join(store.output_dir, name) if name else store.output_dir
        write_kaldi_dir(directory, rows)
        _write_text(directory, rows, texts)
        subsets[label] = {"utts": len(rows), "hours": sum(r[3] for r in rows) / fs / 3600.0}
    if texts and len(texts) < len(kept):
        print(f"prepare_data: warning: {len(kept) - len(texts)} of {len(kept)} kept utterances have no transcript "
              "(not in the text files)", file=sys.stderr)

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
        capped=any(r.capped for r in results), bandwidth=bandwidth, transcripts=len(texts), split_by=split_by,
    )
    atomic_write_text(os.path.join(store.output_dir, "summary.json"), json.dumps(asdict(summary), indent=1) + "\n")
    return summary


Row = Tuple[str, str, str, int]  # (utt, speaker or "", audio ref, num_samples)


def split_rows(kept: Sequence[Row], opts: FinalizeOptions) -> Tuple[Dict[str, List[Row]], str]:
    """Rows per subset name (speaker "" replaced by the utterance id) and the key actually used.

    Hash of the speaker (``split_by="speaker"``, speakers known and at least
    :data:`MIN_SPEAKERS_FOR_SPEAKER_SPLIT`) or of the utterance id. A held-out set whose fraction is
    above 0 but that the hash left empty gets the train speaker (utterance) of lowest hash, while
    train keeps at least one; so a corpus of three or more utterances always gets dev and test.
    """
    speakers = {spk for _, spk, _, _ in kept if spk}
    by = opts.split_by
    if by == "speaker" and len(speakers) < MIN_SPEAKERS_FOR_SPEAKER_SPLIT:
        if speakers:
            print(f"prepare_data: warning: only {len(speakers)} speaker(s): too few for speaker-disjoint dev/test "
                  f"sets (that needs {MIN_SPEAKERS_FOR_SPEAKER_SPLIT}); splitting by utterance instead, so the same "
                  "voices appear in train, dev and test. Give --split_by utterance to choose this yourself.",
                  file=sys.stderr)
        by = "utterance"

    def key(row: Row) -> str:
        return row[1] if by == "speaker" and row[1] else row[0]

    train, dev, test = ("train", "dev", "test")
    wanted = {dev: opts.dev_fraction, test: opts.test_fraction}
    assigned: Dict[str, str] = {}
    for row in kept:
        k = key(row)
        if k not in assigned:
            assigned[k] = assign_subset(k, opts.dev_fraction, opts.test_fraction)
    for subset, fraction in wanted.items():
        if fraction <= 0 or subset in assigned.values():
            continue
        candidates = sorted((k for k, s in assigned.items() if s == train), key=hash_fraction)
        if len(candidates) >= 2:  # train keeps at least one
            assigned[candidates[0]] = subset
            name = opts.subset_names[("train", "dev", "test").index(subset)]
            print(f"prepare_data: the hash split left {name} empty; it gets the {by} {candidates[0]} from train "
                  f"(small corpus: {len(assigned)} {by}s)", file=sys.stderr)
    groups: Dict[str, List[Row]] = {}
    for row in kept:
        name = opts.subset_names[("train", "dev", "test").index(assigned[key(row)])]
        groups.setdefault(name, []).append((row[0], row[1] or row[0], row[2], row[3]))
    return groups, by


def _write_text(directory: str, rows: Sequence[Row], texts: Dict[str, str]) -> None:
    """``directory/text`` for the rows that have a transcript (none written without any)."""
    path = os.path.join(directory, "text")
    lines = [(utt, texts[utt]) for utt, _, _, _ in sorted(rows) if utt in texts]
    if lines:
        atomic_write_lines(path, lines)
    elif os.path.exists(path):  # an earlier run's transcripts do not belong to this one
        os.unlink(path)


def _infer_fs(store: ShardStore) -> int:
    config = store.read_json("config.json") or {}
    return int(config.get("limits", {}).get("fs", 24000))
