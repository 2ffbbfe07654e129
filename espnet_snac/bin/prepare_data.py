"""Prepare clean 24 kHz mono Kaldi-style data directories from Hugging Face datasets, audio
folders or Kaldi directories.

    python -m espnet_snac.bin.prepare_data --source hf:openslr/librispeech_asr:clean \\
        --split train.100 --output_dir data/train --speaker_column speaker_id --nj 4

Writes OUTPUT_DIR/{wav.scp,utt2spk,spk2utt,utt2num_samples,text} (or, with --dev_fraction /
--test_fraction, OUTPUT_DIR/{train,dev,test}/...), OUTPUT_DIR/rejected.tsv and summary.json, and
the audio under OUTPUT_DIR/audio. Re-running the same command resumes or does nothing. ``text``
holds the transcripts: a dataset column (--text_column, by default the first of text, sentence,
transcript, transcription, normalized_text, text_normalized), sidecar .txt/.lab files next to the
audio of folder sources, an LJSpeech metadata.csv, or a Kaldi source's own text.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

DEFAULTS: Dict[str, Any] = {
    "audio_column": "audio", "speaker_column": None, "id_column": "auto", "text_column": "auto", "streaming": False,
    "dev_fraction": 0.0, "test_fraction": 0.0, "split_by": "speaker",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m espnet_snac.bin.prepare_data", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("input")
    g.add_argument("--source", help="hf:NAME_OR_PATH[:CONFIG], hf:audiofolder:DIR, hf:parquet:GLOB, "
                   "folder:PATH or kaldi:PATH")
    g.add_argument("--preset", help="dataset preset: a name in conf/datasets (librispeech, commonvoice, vctk) "
                   "or a yaml path; its values are defaults for the options below")
    g.add_argument("--split", help="source split (hf), or sub-directory (folder/audiofolder)")
    g.add_argument("--audio_column", help="column holding the audio (default: audio)")
    g.add_argument("--speaker_column", help="column (or metadata column) with the speaker id")
    g.add_argument("--id_column", help="column with utterance ids; 'auto' (default) picks id/utt_id/key/"
                   "segment_id/file/path if present, 'none' numbers the rows")
    g.add_argument("--text_column", help="column with the transcript; 'auto' (default) picks text/sentence/"
                   "transcript/transcription/normalized_text/text_normalized if present, 'none' reads no "
                   "transcripts (folder sources: a metadata column; sidecar .txt/.lab files and an LJSpeech "
                   "metadata.csv are read whatever the column, but not with 'none')")
    g.add_argument("--speaker_from_dir", action="store_true",
                   help="folder sources: use each file's parent directory name as its speaker")
    g.add_argument("--streaming", action="store_true", default=None,
                   help="hf: stream the dataset instead of downloading it (nothing goes into the HF cache)")
    g.add_argument("--shard_size", type=int, default=1000,
                   help="items per work shard for map-style sources (streaming uses the dataset's files)")
    o = p.add_argument_group("output")
    o.add_argument("--output_dir", required=True, help="data directory to write")
    o.add_argument("--audio_dir", help="where audio goes (default OUTPUT_DIR/audio)")
    o.add_argument("--audio_format", choices=("flac", "ark"), default="flac",
                   help="flac: one 16-bit flac per utterance; ark: kaldiio ark shards (wav.scp type kaldi_ark)")
    o.add_argument("--fs", type=int, default=24000, help="output sample rate")
    o.add_argument("--dev_fraction", type=float, help="share of utterances/speakers for OUTPUT_DIR/dev (default 0)")
    o.add_argument("--test_fraction", type=float, help="share for OUTPUT_DIR/test (default 0)")
    o.add_argument("--split_by", choices=("speaker", "utterance"),
                   help="hash key of the dev/test split: speaker where known (default) or utterance id")
    o.add_argument("--subset_names", default="train,dev,test", help="names of the three subset directories")
    f = p.add_argument_group("filters and caps")
    f.add_argument("--min_duration", type=float, default=0.25, help="reject shorter inputs (seconds)")
    f.add_argument("--max_duration", type=float, default=0.0, help="reject longer inputs (seconds, 0 = off)")
    f.add_argument("--min_input_fs", type=int, default=8000, help="reject inputs below this rate")
    f.add_argument("--max_input_fs", type=int, default=96000, help="reject inputs above this rate")
    f.add_argument("--max_hours", type=float, default=0.0, help="stop after this many hours kept (0 = off)")
    f.add_argument("--max_utts", type=int, default=0, help="stop after this many utterances kept (0 = off)")
    r = p.add_argument_group("running")
    r.add_argument("--nj", type=int, default=1, help="worker processes (one shard each at a time)")
    r.add_argument("--num_shards", type=int, default=1, help="split the work over this many jobs/machines")
    r.add_argument("--shard_index", type=int, help="this job's index in [0, num_shards)")
    r.add_argument("--merge_only", action="store_true",
                   help="join the shards written by --shard_index jobs into the final directories")
    r.add_argument("--overwrite", action="store_true", help="discard an earlier run in OUTPUT_DIR")
    r.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def _resolve(args: argparse.Namespace, preset: Dict[str, Any], key: str) -> Any:
    value = getattr(args, key, None)
    if value is not None:
        return value
    return preset.get(key, DEFAULTS.get(key))


def _prepare_one(args: argparse.Namespace, preset: Dict[str, Any], split: Optional[str], output_dir: str) -> int:
    from espnet_snac.data.audio_check import AudioLimits
    from espnet_snac.data.finalize import FinalizeOptions
    from espnet_snac.data.pipeline import PrepOptions, run_preparation
    from espnet_snac.data.source_base import SourceError
    from espnet_snac.data.source_spec import make_source

    id_column = _resolve(args, preset, "id_column")
    try:
        finalize_opts = FinalizeOptions(
            dev_fraction=float(_resolve(args, preset, "dev_fraction")),
            test_fraction=float(_resolve(args, preset, "test_fraction")),
            split_by=_resolve(args, preset, "split_by"),
            subset_names=tuple(args.subset_names.split(",")),
        )
    except ValueError as exc:
        print(f"prepare_data: error: {exc}", file=sys.stderr)
        return 2
    opts = PrepOptions(
        output_dir=output_dir, audio_dir=args.audio_dir, audio_format=args.audio_format,
        limits=AudioLimits(fs=args.fs, min_input_fs=args.min_input_fs, max_input_fs=args.max_input_fs,
                           min_duration=args.min_duration, max_duration=args.max_duration),
        nj=max(1, args.nj), max_hours=args.max_hours, max_utts=args.max_utts, shard_index=args.shard_index,
        num_shards=max(1, args.num_shards), merge_only=args.merge_only, overwrite=args.overwrite,
        progress=not args.no_progress, finalize=finalize_opts,
    )
    try:
        source = None
        if not args.merge_only:
            source = make_source(
                _resolve(args, preset, "source"), split=split, streaming=bool(_resolve(args, preset, "streaming")),
                audio_column=_resolve(args, preset, "audio_column"),
                speaker_column=_resolve(args, preset, "speaker_column"),
                id_column=None if id_column in (None, "none") else id_column,
                shard_size=args.shard_size, speaker_from_dir=args.speaker_from_dir,
                text_column=_resolve(args, preset, "text_column"),
            )
        summary = run_preparation(source, opts)
    except SourceError as exc:
        print(f"prepare_data: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. a full disk: finished shards stay valid, the rest is redone
        print(f"prepare_data: error: {exc}. {output_dir} is not complete (no wav.scp); the shards finished "
              "so far are kept: fix the cause (e.g. free disk space) and re-run the same command to resume.",
              file=sys.stderr)
        return 1
    if summary is not None:
        print(summary.line())
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    preset: Dict[str, Any] = {}
    if args.preset:
        from espnet_snac.data.presets import load_preset

        try:
            preset = load_preset(args.preset)
        except ValueError as exc:
            parser.error(str(exc))
    if not _resolve(args, preset, "source") and not args.merge_only:
        parser.error("--source (or --preset) is required")
    if args.shard_index is not None and args.merge_only:
        parser.error("--merge_only joins all shards; do not give --shard_index with it")
    jobs: List[tuple] = [(args.split, args.output_dir)]
    if args.split is None and len(preset.get("splits", {})) > 1:
        jobs = [(split, os.path.join(args.output_dir, name)) for name, split in preset["splits"].items()]
    elif args.split is None and len(preset.get("splits", {})) == 1:
        jobs = [(next(iter(preset["splits"].values())), args.output_dir)]
    status = 0
    for split, output_dir in jobs:
        status = max(status, _prepare_one(args, preset, split, output_dir))
    return status


if __name__ == "__main__":
    sys.exit(main())
