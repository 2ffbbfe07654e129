"""Running a preparation: shards processed in-process or by ``--nj`` worker processes, caps
shared between workers, resumption from finished shards, then ``finalize``."""
from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional, Sequence

from espnet_snac.data.audio_check import AudioLimits, convert
from espnet_snac.data.audio_writers import make_writer
from espnet_snac.data.finalize import FinalizeOptions, Summary, finalize
from espnet_snac.data.items import Rejected
from espnet_snac.data.shard_store import ShardResult, ShardStore, shard_name
from espnet_snac.data.source_base import Source
from espnet_snac.data.utt_ids import make_utt_id, sanitize


# fork (Linux): workers inherit the opened source without re-importing anything; no torch op has
# run in this process, and pyarrow/libsndfile/soxr are fork-safe. spawn elsewhere.
_MP = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")


@dataclass
class PrepOptions:
    output_dir: str
    audio_dir: Optional[str] = None  # default OUTPUT_DIR/audio
    audio_format: str = "flac"
    limits: AudioLimits = field(default_factory=AudioLimits)
    nj: int = 1
    max_hours: float = 0.0  # 0 = no cap
    max_utts: int = 0
    shard_index: Optional[int] = None  # with num_shards: process only shards s with s % num_shards == shard_index
    num_shards: int = 1
    merge_only: bool = False
    overwrite: bool = False
    progress: bool = True
    finalize: FinalizeOptions = field(default_factory=FinalizeOptions)


class Budget:
    """Caps shared by all workers: a slot is reserved before an item is processed (exact
    ``max_utts``); hours are added after keeping (stops at the first item past ``max_hours``)."""

    def __init__(self, max_utts: int, max_seconds: float, kept: int = 0, seconds: float = 0.0) -> None:
        self.max_utts, self.max_seconds = max_utts, max_seconds
        self.lock = _MP.Lock()  # same context as the worker pool
        self.kept = _MP.Value("q", kept, lock=False)
        self.seconds = _MP.Value("d", seconds, lock=False)
        self.items = _MP.Value("q", 0, lock=False)  # progress: items read in this run

    def exhausted(self) -> bool:
        return (self.max_utts > 0 and self.kept.value >= self.max_utts) or (
            self.max_seconds > 0 and self.seconds.value >= self.max_seconds)

    def reserve(self) -> bool:
        with self.lock:
            if self.exhausted():
                return False
            self.kept.value += 1
            return True

    def release(self) -> None:
        """Give back a reservation that found no item."""
        with self.lock:
            self.kept.value -= 1

    def settle(self, kept: bool, seconds: float) -> None:
        with self.lock:
            self.items.value += 1
            if kept:
                self.seconds.value += seconds
            else:
                self.kept.value -= 1


def _clean(text: str) -> str:
    return " ".join(str(text).split())


def process_shard(source: Source, index: int, opts: PrepOptions, budget: Budget) -> ShardResult:
    """Convert and write every item of one shard; returns (and stores) its result."""
    store = ShardStore(opts.output_dir)
    audio_dir = opts.audio_dir or os.path.join(store.output_dir, "audio")
    writer = make_writer(opts.audio_format, audio_dir, shard_name(index), opts.limits.fs)
    result = ShardResult(index=index)
    seen: set = set()
    items = source.iter_shard(index)
    try:
        while True:
            if not budget.reserve():
                result.capped = True
                break
            try:
                item = next(items)
            except StopIteration:
                budget.release()
                break
            utt = make_utt_id(item.speaker, item.key)
            result.read += 1
            try:
                if utt in seen:
                    raise Rejected("duplicate_id", f"{item.origin}: id {utt} already used in this shard")
                try:
                    # The bandwidth of a sample: the first items of each shard, then every 25th.
                    converted = convert(item, opts.limits, measure_bandwidth=result.kept < 8 or result.kept % 25 == 0)
                except (Rejected, KeyboardInterrupt, MemoryError):
                    raise
                except Exception as exc:  # one odd item must not stop a long run; it is reported
                    raise Rejected("unexpected_error", f"{item.origin}: {type(exc).__name__}: {exc}") from exc
            except Rejected as rej:
                result.rejected += 1
                result.rejected_rows.append((utt, _clean(item.origin), _clean(rej.as_text())))
                budget.settle(False, 0.0)
                continue
            seen.add(utt)
            if converted.samples is None:
                ref = writer.write_blocks(utt, converted.blocks())
            else:
                ref = writer.write(utt, converted.samples)
            num = converted.num_samples
            result.kept += 1
            result.samples += num
            result.kept_rows.append((utt, sanitize(item.speaker) if item.speaker else "", ref, num))
            if item.text:
                result.text_rows.append((utt, _clean(item.text)))
            rate = str(converted.input_fs)
            result.input_rates[rate] = result.input_rates.get(rate, 0) + 1
            if converted.bandwidth_hz is not None:
                result.bandwidths.append(round(converted.bandwidth_hz, 1))
            budget.settle(True, num / opts.limits.fs)
    finally:
        writer.close()
    store.save(result)
    return result


# -- worker processes ---------------------------------------------------------------------------
_WORKER: Dict[str, Any] = {}


def _init_worker(source: Source, opts: PrepOptions, budget: Budget) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _WORKER.update(source=source, opts=opts, budget=budget)


def _run_in_worker(index: int) -> Dict[str, object]:
    result = process_shard(_WORKER["source"], index, _WORKER["opts"], _WORKER["budget"])
    return result.counts()


def _progress_bar(total: Optional[int], enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="utt", desc="prepare_data", file=sys.stderr, mininterval=2.0,
                disable=None, dynamic_ncols=True)


def _run_shards(source: Source, todo: Sequence[int], opts: PrepOptions, budget: Budget, total: Optional[int]) -> None:
    bar = _progress_bar(total, opts.progress)

    def refresh() -> None:
        if bar is not None:
            bar.n = budget.items.value
            bar.refresh()

    try:
        if opts.nj <= 1 or len(todo) <= 1:
            for index in todo:
                process_shard(source, index, opts, budget)
                refresh()
            return
        with _MP.Pool(min(opts.nj, len(todo)), initializer=_init_worker, initargs=(source, opts, budget)) as pool:
            pending = pool.map_async(_run_in_worker, todo, chunksize=1)
            while not pending.ready():
                pending.wait(1.0)
                refresh()
            pending.get()  # re-raises a worker's exception
            refresh()
    finally:
        if bar is not None:
            bar.close()


def _fingerprint(source: Source, opts: PrepOptions) -> Dict[str, object]:
    limits = asdict(opts.limits)
    return _as_json({"input": source.fingerprint(), "limits": limits, "audio_format": opts.audio_format,
            "audio_dir": opts.audio_dir, "max_hours": opts.max_hours, "max_utts": opts.max_utts,
            "num_source_shards": source.num_shards})


def _as_json(data: Dict[str, Any]) -> Dict[str, Any]:
    """What the dict looks like after being stored (tuples become lists), for comparisons."""
    return json.loads(json.dumps(data))


def run_preparation(source: Optional[Source], opts: PrepOptions) -> Optional[Summary]:
    """Prepare ``opts.output_dir`` from ``source``; returns the summary, or ``None`` when only
    this machine's share of the shards was processed (``--shard_index``) and others are missing.
    ``source`` may be ``None`` with ``merge_only``."""
    store = ShardStore(opts.output_dir)
    if opts.overwrite and os.path.isdir(store.work_dir) and not opts.merge_only:
        shutil.rmtree(store.work_dir)
        audio_dir = opts.audio_dir or os.path.join(store.output_dir, "audio")
        if os.path.isdir(audio_dir):
            shutil.rmtree(audio_dir)
    recorded = store.read_json("config.json")
    if opts.merge_only:
        if recorded is None:
            raise SystemExit(f"{opts.output_dir}: nothing to merge (no {store.work_dir}/config.json)")
        config = recorded
    else:
        assert source is not None
        source.prepare()
        config = _fingerprint(source, opts)
        if recorded is not None and recorded != config:
            raise SystemExit(
                f"{opts.output_dir} was prepared with other input or options:\n  before: {recorded}\n  now:    "
                f"{config}\nUse another --output_dir, or --overwrite to start again."
            )
        if recorded is None:
            os.makedirs(store.work_dir, exist_ok=True)
            store.write_json("config.json", config)
    num_source_shards = int(config["num_source_shards"])
    final_config = _as_json({"config": config, "finalize": asdict(opts.finalize)})

    complete = store.read_json("complete.json")
    if complete is not None and complete.get("settings") == final_config and complete.get("summary"):
        summary = Summary(**complete["summary"])
        print(f"prepare_data: {opts.output_dir} is already complete (delete it or use --overwrite to redo)",
              file=sys.stderr)
        return summary
    store.remove("complete.json")
    # a wav.scp from an earlier run must not outlive this one's interruption
    for directory in [store.output_dir] + [os.path.join(store.output_dir, n) for n in opts.finalize.subset_names]:
        if os.path.exists(os.path.join(directory, "wav.scp")):
            os.unlink(os.path.join(directory, "wav.scp"))

    if not opts.merge_only:
        if opts.shard_index is not None and not 0 <= opts.shard_index < opts.num_shards:
            raise SystemExit(f"--shard_index must be in [0, {opts.num_shards}), got {opts.shard_index}")
        mine = [s for s in range(num_source_shards)
                if opts.shard_index is None or s % opts.num_shards == opts.shard_index]
        done = [s for s in mine if store.is_done(s)]
        todo = [s for s in mine if not store.is_done(s)]
        share = opts.num_shards if opts.shard_index is not None else 1
        kept = sum(int(store.load_counts(s)["kept"]) for s in done)
        samples = sum(int(store.load_counts(s)["samples"]) for s in done)
        budget = Budget(math.ceil(opts.max_utts / share) if opts.max_utts else 0,
                        opts.max_hours * 3600.0 / share, kept, samples / opts.limits.fs)
        if done and todo:
            print(f"prepare_data: resuming, {len(done)} of {len(mine)} shards already done", file=sys.stderr)
        total = source.num_items if (source.num_items is not None and not done and share == 1) else None
        _run_shards(source, todo, opts, budget, total)
        for s in todo:  # shards never started because the cap was reached count as done
            if not store.is_done(s):
                store.save(ShardResult(index=s, capped=True))
        for note in source.notes():
            print(f"prepare_data: note: {note}", file=sys.stderr)

    missing = [s for s in range(num_source_shards) if not store.is_done(s)]
    if opts.shard_index is not None:  # one job of several: the joining is --merge_only's
        print(f"prepare_data: shards {opts.shard_index} mod {opts.num_shards} done; {len(missing)} shard(s) "
              f"of other jobs missing. When all jobs are done, join them with the same command plus "
              f"--merge_only (without --shard_index/--num_shards).", file=sys.stderr)
        return None
    if missing:
        if opts.merge_only:
            raise SystemExit(
                f"{opts.output_dir}: {len(missing)} of {num_source_shards} shards are not done yet "
                f"(first: {shard_name(missing[0])}); run the missing --shard_index jobs first"
            )
        raise RuntimeError(f"{len(missing)} shard(s) unexpectedly not done (first: {shard_name(missing[0])})")
    results = [store.load(s) for s in range(num_source_shards)]
    summary = finalize(store, results, opts.finalize)
    store.write_json("complete.json", {"settings": final_config, "summary": asdict(summary)})
    return summary
