"""Turn speech into SNAC tokens: batched, exact, resumable, distributed.

Examples::

    python -m espnet_snac.bin.extract_tokens --model exp/snac_24k --data_dir data/train \\
        --output_dir dump/snac_tokens/train --device cuda --batch_size 32 --bpe_nunits 5000
    torchrun --nproc_per_node 4 -m espnet_snac.bin.extract_tokens --model ... (same options)

Rank ``r`` encodes the input utterances ``r, r + world_size, ...`` (the same ones on every run)
and appends to its own shard under ``<output_dir>/shards/``; rank 0 then merges all shards (see
``espnet_snac.tokens.merge`` for the files). A re-run with the same inputs and rank count skips the
utterances already written and produces exactly the files of an uninterrupted run. Multi-node: run the same ``torchrun`` on
every node (``--nnodes N --node_rank i --rdzv_endpoint host:port``) with ``--output_dir`` on a
shared filesystem; under Slurm, ``srun torchrun ...`` with those options per node.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from espnet_snac.io.scp import read_text
from espnet_snac.tokens.batching import BatchEncoder
from espnet_snac.tokens.inputs import AudioItems, read_inputs
from espnet_snac.tokens.layout import FRAME_RULES, ORPHEUS_BASE
from espnet_snac.tokens.merge import FORMATS, merge_shards, write_summary
from espnet_snac.tokens.shards import ShardWriter, read_shards, shard_dir
from espnet_snac.tokens.stats import collapse_verdict

log = logging.getLogger("extract_tokens")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="Hugging Face repo id (e.g. hubertsiuzdak/snac_24khz), official-format directory, ESPnet "
                        "experiment directory / .pth, or packed .zip")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--wav_scp", type=Path, help="Kaldi wav.scp (sound files, ark entries or pipes)")
    src.add_argument("--data_dir", type=Path, help="Kaldi data directory (wav.scp and optional segments)")
    p.add_argument("--output_dir", type=Path, required=True)
    p.add_argument("--formats", default="ark,text",
                   help=f"comma-separated subset of {','.join(FORMATS)} (ark is always written); codec: "
                        "ESPnet speech-LM ark/scp of flat ids + codec_token_list; datasets: save_to_disk "
                        "rows for Orpheus-style fine-tuning (with transcripts from <data_dir>/text)")
    p.add_argument("--frames", default="ceil", choices=list(FRAME_RULES),
                   help="frames per utterance in every file: ceil(T/2048) (all codes the encoder emits) or "
                        "floor(T/2048) (whole frames only, as ESPnet's codec dump); shards keep all, so "
                        "--merge_only can switch")
    p.add_argument("--orpheus_base", type=int, default=ORPHEUS_BASE,
                   help="id of the first audio token in the LM vocabulary for format 'orpheus'")
    p.add_argument("--bpe_nunits", type=int, default=0,
                   help="train a sentencepiece BPE with this many units on this set and write text_bpe")
    p.add_argument("--bpe_model", type=Path, default=None,
                   help="apply an existing BPE model (trained on the train set) and write text_bpe")
    p.add_argument("--batch_size", type=int, default=0,
                   help="utterances (or windows) per batch; 0: 1 on CPU (batching does not pay there), 16 on CUDA")
    p.add_argument("--max_batch_seconds", type=float, default=0.0,
                   help="also cap a batch at this much padded audio (0: no cap)")
    p.add_argument("--pool_size", type=int, default=0,
                   help="utterances read ahead and sorted by length before batching (default 8 x batch)")
    p.add_argument("--window_seconds", type=float, default=30.0,
                   help="longer inputs are encoded in windows of this length (0: never window)")
    p.add_argument("--context_seconds", type=float, default=0.5,
                   help="audio added on both sides of each window and dropped after encoding")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--num_workers", type=int, default=2, help="audio loading processes per rank")
    p.add_argument("--num_threads", type=int, default=0, help="torch CPU threads per rank (0: default)")
    p.add_argument("--merge_only", action="store_true", help="only merge existing shards")
    p.add_argument("--no_progress", action="store_true")
    return p


class Distributed:
    """Rank and world size from torchrun's environment; gloo for the few collectives needed."""

    def __init__(self) -> None:
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if self.world > 1:
            import torch.distributed as dist

            # Ranks wait for the slowest one before the merge: allow long runs.
            dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


class Progress:
    """tqdm bar with utterances/s and audio seconds/s (plain log lines when disabled)."""

    def __init__(self, total: int, enabled: bool):
        self.start = time.perf_counter()
        self.done = 0
        self.audio = 0.0
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="utt", dynamic_ncols=True, file=sys.stderr)

    def update(self, n: int, audio_seconds: float) -> None:
        self.done += n
        self.audio += audio_seconds
        if self.bar is not None:
            elapsed = max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix_str(f"{self.done / elapsed:.2f} utt/s, {self.audio / elapsed:.1f} audio-s/s",
                                     refresh=False)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _select_device(kind: str, local_rank: int) -> torch.device:
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda was given but no CUDA device is available; use --device cpu")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def encode_pool(encoder: BatchEncoder, writer: ShardWriter, pool: List[tuple]) -> int:
    """Encode and write ``[(utt, audio)]``; a batch that fails is retried one utterance at a time
    and an utterance that fails alone is rejected with the error. Returns the number written."""
    error: Optional[str] = None
    try:
        results = encoder.encode([a for _, a in pool])
    except (RuntimeError, ValueError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        # Keep only the message: the exception's traceback holds the frames of the failed call and
        # with them the batch and its activations; the retry must not run while they are alive.
        error = f"{type(exc).__name__}: {exc}"
    if error is None:
        for (utt, audio), frames in zip(pool, results):
            writer.write(utt, frames, len(audio))
        return len(pool)
    if len(pool) == 1:
        writer.reject(pool[0][0], f"encode_error ({error})")
        return 0
    log.warning("batch of %d failed (%s); retrying one by one", len(pool), error)
    if encoder.device.type == "cuda":  # hand the failed batch's cached blocks back before the retries
        torch.cuda.empty_cache()
    return sum(encode_pool(encoder, writer, [item]) for item in pool)


def extract(args: argparse.Namespace, dist: Distributed, model, device: torch.device, todo: List) -> dict:
    """Encode ``todo`` (this rank's pending utterances); returns its timing."""
    rate = model.sampling_rate
    mine = todo
    encoder = BatchEncoder(
        model, batch_size=args.batch_size, window_seconds=args.window_seconds,
        context_seconds=args.context_seconds, dtype=DTYPES[args.dtype],
        max_batch_samples=int(args.max_batch_seconds * rate) if args.max_batch_seconds > 0 else None,
    )
    pool_size = args.pool_size or 8 * args.batch_size
    loader = torch.utils.data.DataLoader(
        AudioItems(mine, rate), batch_size=None, shuffle=False, num_workers=args.num_workers,
        prefetch_factor=4 if args.num_workers > 0 else None,
    )
    progress = Progress(len(mine), enabled=dist.rank == 0 and not args.no_progress)
    ark_name = str(shard_dir(args.output_dir, dist.rank) / "codes.ark")
    start = time.perf_counter()
    written = rejected = 0
    audio_seconds = 0.0
    with ShardWriter(shard_dir(args.output_dir, dist.rank), ark_name) as writer:
        pool: List[tuple] = []

        def flush() -> None:
            nonlocal written, audio_seconds
            if pool:
                seconds = sum(len(a) for _, a in pool) / rate
                written += encode_pool(encoder, writer, pool)
                audio_seconds += seconds
                progress.update(len(pool), seconds)
                pool.clear()

        for utt, audio, error in loader:
            if error is not None:
                writer.reject(utt, error)
                rejected += 1
                log.warning("skipped %s", error)
                progress.update(1, 0.0)
                continue
            pool.append((utt, audio))
            if len(pool) >= pool_size:
                flush()
        flush()
    if device.type == "cuda":
        torch.cuda.synchronize()
    progress.close()
    return dict(rank=dist.rank, utterances=len(mine), written=written, rejected=rejected,
                audio_seconds=audio_seconds, wall_seconds=time.perf_counter() - start, device=str(device))


def _load_model(path: str, device: torch.device):
    from espnet_snac.model.snac import SNAC

    try:
        model = SNAC.from_pretrained(path, map_location=device)
    except Exception as exc:
        raise SystemExit(f"--model {path}: cannot load the SNAC model ({exc})") from exc
    if list(model.vq_strides) != [4, 2, 1]:
        raise SystemExit(f"--model {path}: a {model.sampling_rate} Hz model with vq_strides {list(model.vq_strides)}; "
                         "the 7-token frame layout needs a 24 kHz-layout model (vq_strides [4, 2, 1])")
    return model.to(device).eval()


def summarize(result, timings: List[dict], n_inputs: int, rate: int, frame_samples: int) -> dict:
    hours = result.num_samples / rate / 3600.0
    tokens = sum(s["codes"] for s in result.stats)
    run_audio = sum(t["audio_seconds"] for t in timings)
    run_wall = max((t["wall_seconds"] for t in timings), default=0.0)
    worker_wall = sum(t["wall_seconds"] for t in timings)
    frames = result.stats[0]["codes"] if result.stats else 0
    return dict(
        utterances_in=n_inputs, written=len(result.written), rejected=len(result.rejected),
        missing=len(result.missing), hours=hours, frames=frames, tokens=tokens,
        tokens_per_audio_second=rate / frame_samples * 7,
        this_run=dict(ranks=len(timings), audio_seconds=run_audio, wall_seconds=run_wall,
                      audio_seconds_per_second=run_audio / run_wall if run_wall else 0.0,
                      rtf_per_worker=worker_wall / run_audio if run_audio else 0.0,
                      per_rank=timings),
        levels=result.stats,
    )


def print_summary(summary: dict, out=sys.stdout, name: str = "") -> None:
    run = summary["this_run"]
    lines = [
        f"utterances: {summary['utterances_in']} in = {summary['written']} written + "
        f"{summary['rejected']} rejected" + (f" + {summary['missing']} MISSING" if summary["missing"] else ""),
        f"audio: {summary['hours']:.3f} h, {summary['frames']} frames, {summary['frames'] * 7} tokens "
        f"({summary['tokens_per_audio_second']:.2f} tokens per second of audio)",
        f"this run: {run['audio_seconds']:.1f} s of audio in {run['wall_seconds']:.1f} s on {run['ranks']} rank(s): "
        f"{run['audio_seconds_per_second']:.2f} audio-s/s, RTF per worker {run['rtf_per_worker']:.4f}",
    ]
    for lv in summary["levels"]:
        lines.append(f"level {lv['level']}: {lv['codes']} codes, {lv['used']}/4096 used "
                     f"({100 * lv['usage']:.1f}%), perplexity {lv['perplexity']:.1f}")
    if summary["levels"]:
        verdict = collapse_verdict(summary["levels"])
        lines.append(verdict.usage_line())
        if verdict.collapsed:
            lines.append(verdict.box(f"the tokens of {name}" if name else "these tokens"))
    print("\n".join(lines), file=out, flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    formats = [f for f in args.formats.split(",") if f]
    bad = set(formats) - set(FORMATS)
    if bad:
        raise SystemExit(f"--formats: unknown {sorted(bad)}; choose from {','.join(FORMATS)}")
    if args.bpe_nunits and args.bpe_model:
        raise SystemExit("give either --bpe_nunits (train on this set) or --bpe_model (apply), not both")
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    if args.batch_size <= 0:
        args.batch_size = 16 if args.device == "cuda" else 1

    transcripts = None
    if args.data_dir is not None:
        wav_scp = args.data_dir / "wav.scp"
        segments = args.data_dir / "segments"
        items = read_inputs(wav_scp, segments if segments.is_file() else None)
        if "datasets" in formats and (args.data_dir / "text").is_file():
            transcripts = read_text(args.data_dir / "text")
    else:
        items = read_inputs(args.wav_scp)
    keys = [it.utt for it in items]
    if transcripts is not None:
        lacking = [k for k in keys if k not in transcripts]
        if lacking:  # checked before encoding, not after hours of it
            raise SystemExit(f"{args.data_dir / 'text'}: no transcript for {len(lacking)} utterance(s) "
                             f"(e.g. {' '.join(lacking[:5])}); fix the data directory or leave out format datasets")

    dist = Distributed()
    device = _select_device(args.device, dist.local_rank)
    model = _load_model(args.model, device)
    timings: List[dict] = []
    if not args.merge_only:
        done = set(read_shards(args.output_dir).codes)
        dist.barrier()  # every rank has the same view of what is done before any rank writes
        # a fixed share per rank: a resumed run writes each utterance into the shard (and at the
        # position) an uninterrupted run would
        todo = [it for i, it in enumerate(items) if i % dist.world == dist.rank and it.utt not in done]
        if dist.rank == 0:
            pending = sum(it.utt not in done for it in items)
            log.info("%d utterances, %d already written, %d to encode on %d rank(s)",
                     len(items), len(items) - pending, pending, dist.world)
        try:
            timing = extract(args, dist, model, device, todo)
        except OSError as exc:  # e.g. a full disk: what is committed stays valid, the rest is redone
            raise SystemExit(f"extract_tokens: cannot write under {args.output_dir} ({exc}); the utterances "
                             "written so far are kept: free space and re-run the same command to resume") from exc
        timings = dist.gather(timing)
    status = 0
    if dist.rank == 0:
        (args.output_dir / "stats.json").unlink(missing_ok=True)  # written last: marks a finished merge
        try:
            result = merge_shards(args.output_dir, keys, formats=formats, orpheus_base=args.orpheus_base,
                                  bpe_nunits=args.bpe_nunits, bpe_model=args.bpe_model, frames=args.frames,
                                  frame_samples=model.hop_length * model.vq_strides[0], transcripts=transcripts)
        except (ValueError, FileNotFoundError) as exc:
            raise SystemExit(f"merge failed: {exc}") from exc
        except OSError as exc:
            raise SystemExit(f"extract_tokens: merging into {args.output_dir} failed ({exc}); the shards are "
                             "intact and the merge is not marked finished (no stats.json): free space and re-run "
                             "the same command") from exc
        summary = summarize(result, timings, len(keys), model.sampling_rate, int(model.pad_multiple))
        summary["frame_rule"] = args.frames
        try:
            write_summary(args.output_dir, summary)
        except OSError as exc:
            raise SystemExit(f"extract_tokens: cannot write {args.output_dir / 'stats.json'} ({exc}); free space "
                             "and re-run the same command") from exc
        print_summary(summary, name=str(args.output_dir))
        if result.missing:
            log.error("%d utterances are neither written nor rejected (a rank stopped early?); re-run to resume: %s",
                      len(result.missing), " ".join(result.missing[:10]))
            status = 1
    dist.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
