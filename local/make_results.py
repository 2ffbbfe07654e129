#!/usr/bin/env python3
"""Write an experiment's RESULTS.md from the scoring of its test sets (recipe stage 5).

Reads ``<scoring_dir>/results.json`` of every test set (written by ``espnet_snac.bin.score``) and
the code layout of the trained model (as ESPnet's ``meta_info()``), which gives the bitrate:
``sum over streams of log2(code_size) * fs / frame_shift`` bits/s (SNAC-24k: 7 x 12 bits per
2048 samples = 0.98 kbps).

With ``--untrained NAME=WAV_SCP`` it also scores, on the same sets, the model that the experiment's
``config.yaml`` builds before any training step (same config and seed, as training starts; decoded in
eval mode with decoder-noise seed 0) and writes it as a second table: what training added. With
``--anchors NAME=WAV_SCP`` a third table scores the set's own speech degraded in known ways
(``espnet_snac.scoring.anchors``: white noise at 20 and 10 dB SNR, a 2 kHz low-pass, random phase), so the
numbers above have reference points. Both extra tables get ViSQOL in the mode the test sets were
scored with (``visqol_mode`` in their results.json), so that every row of RESULTS.md compares.

Usage:
    python local/make_results.py --exp_dir exp/codec_x --model_file exp/codec_x/latest.pth \
        --scoring_dir test=exp/codec_x/decode_latest/test/scoring --output exp/codec_x/RESULTS.md \
        [--untrained test=dump/raw/test/wav.scp] [--anchors test=dump/raw/test/wav.scp]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple

from espnet_snac.io.atomic_files import atomic_write_text

if TYPE_CHECKING:
    import numpy as np

# (key in results.json, column title, number format)
METRICS: List[Tuple[str, str, str]] = [
    ("mel_distance", "mel distance ↓", "{:.3f}"),
    ("stft_distance", "STFT distance ↓", "{:.3f}"),
    ("si_snr", "SI-SNR (dB) ↑", "{:.2f}"),
    ("pesq_wb", "PESQ-WB ↑", "{:.3f}"),
    ("stoi", "STOI ↑", "{:.3f}"),
    # MOS-LQO in the mode of the scored sets (espnet_snac.scoring.visqol_metric); n/a without visqol-python
    ("visqol", "ViSQOL ↑", "{:.2f}"),
]


def codec_meta(model_file: Path) -> Dict:
    """Code layout of the trained generator, in the terms of ESPnet's ``meta_info()``.

    Level i of SNAC emits one code every ``hop_length * vq_strides[i]`` samples, so one coarse
    frame (``hop_length * max(vq_strides)`` samples, 2048 at 24 kHz) holds
    ``sum(max_stride / stride)`` codes (7 for strides [4, 2, 1]).
    """
    from espnet_snac.model.snac import SNAC  # light import: no ESPnet task machinery

    model = SNAC.from_pretrained(str(model_file))
    strides = list(model.vq_strides)
    coarse = max(strides)
    streams = sum(coarse // s for s in strides)
    return {
        "fs": int(model.sampling_rate),
        "num_streams": streams,
        "frame_shift": int(model.hop_length) * coarse,
        "code_size_per_stream": [int(model.codebook_size)] * streams,
        "generator_params": sum(p.numel() for p in model.parameters()),
    }


def bitrate_bps(meta: Dict) -> float:
    """Bits per second of the codes: every stream emits one code per ``frame_shift`` samples."""
    bits_per_frame = sum(math.log2(size) for size in meta["code_size_per_stream"])
    return bits_per_frame * meta["fs"] / meta["frame_shift"]


def codebook_use(decode_dir: Path, codebook_size: int):
    """Collapse verdict (``espnet_snac.tokens.stats``) of the codes stage 5 wrote for one set
    (``decode_dir/codec.scp``: ``(7, 1, frames)`` npy per utterance); ``None`` without codes."""
    import numpy as np

    from espnet_snac.io.scp import read_scp
    from espnet_snac.tokens.stats import CodebookStats, collapse_verdict

    scp = decode_dir / "codec.scp"
    if not scp.is_file():
        return None
    stats = CodebookStats(codebook_size)
    for path in read_scp(scp).values():
        try:
            codes = np.load(path)
        except (OSError, ValueError, EOFError) as exc:  # missing, cut short, not an npy file
            raise ValueError(f"{path} (listed in {scp}): cannot read the codes ({type(exc).__name__}: {exc})") from exc
        stats.add(codes.reshape(codes.shape[0], -1).T.astype(np.int64))  # (frames, 7)
    return collapse_verdict(stats.summary(), codebook_size)


def _fmt(value, pattern: str) -> str:
    if value is None:
        return "n/a"
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return pattern.format(value) if math.isfinite(value) else "nan"


def read_results(path: Path) -> Dict:
    """One ``results.json`` of ``espnet_snac.bin.score``; ``ValueError`` naming the file when it is not one."""
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a results.json of espnet_snac.bin.score ({exc})") from exc
    if not isinstance(results, dict):
        raise ValueError(f"{path}: not a results.json of espnet_snac.bin.score (a JSON object expected)")
    return results


def scored_visqol_mode(sets: Sequence[Tuple[str, Path]]) -> Optional[str]:
    """The ViSQOL mode the test sets were scored with (``None``: without ViSQOL). The untrained-model
    and reference-point tables use it too, so that their ViSQOL column compares with the first table's."""
    from espnet_snac.scoring.visqol_metric import MODE_RATES, available

    for _, scoring_dir in sets:
        path = scoring_dir / "results.json"
        results = read_results(path)
        if results.get("visqol") is None:
            continue
        # results.json of an older espnet_snac.bin.score has no visqol_mode; its setting line names the mode
        mode = results.get("visqol_mode") or ("speech" if "speech mode" in str(results.get("visqol_setting")) else "audio")
        if mode not in MODE_RATES:
            raise ValueError(f"{path}: unknown visqol_mode {mode!r} (one of {sorted(MODE_RATES)})")
        if not available():
            print(f"make_results: {path} has ViSQOL but visqol-python is not installed here: the untrained-model "
                  "and reference-point tables show n/a for it", file=sys.stderr)
            return None
        return mode
    return None


def score_untrained(config: Path, sets: Mapping[str, Mapping[str, "np.ndarray"]],
                    visqol_mode: Optional[str] = None) -> Dict[str, Dict]:
    """``{set: {"num_utts", "num_failed", <metric>: mean}}`` of the untrained model on each set's
    utterances (mono at the model rate); ``visqol_mode`` adds ViSQOL."""
    import torch

    from espnet_snac.scoring.metrics import mean_scores
    from espnet_snac.train.curve import NOISE_SEED, build_training

    training = build_training(config)  # seeds and builds exactly as the training run started
    generator = training.model.codec.generator.eval()

    def reconstruct(x):
        with torch.no_grad():
            codes = generator.encode(torch.from_numpy(x).view(1, 1, -1))
            return generator.decode(codes, length=x.size, noise_seed=NOISE_SEED).reshape(-1).numpy()

    out: Dict[str, Dict] = {}
    for name, utts in sets.items():
        def report(utt, exc, name=name):
            print(f"make_results: untrained model, {name}/{utt}: {exc}", file=sys.stderr)

        out[name] = mean_scores(((utt, x, reconstruct(x)) for utt, x in utts.items()),
                                training.sample_rate, on_error=report, visqol_mode=visqol_mode)
    return out


def load_sets(sets: Sequence[Tuple[str, Path]], sample_rate: int,
              cache: Dict[Path, Dict]) -> Dict[str, Mapping[str, "np.ndarray"]]:
    """``{set: {utt: audio}}``; a wav.scp named by several options is read once (``cache``)."""
    from espnet_snac.train.curve_data import load_eval_set

    for _, wav_scp in sets:
        if wav_scp not in cache:
            cache[wav_scp] = load_eval_set(wav_scp, sample_rate)
    return {name: cache[wav_scp] for name, wav_scp in sets}


def _metric_table(first: List[str], first_rule: str, rows: Sequence[Tuple[List[str], Dict]]) -> List[str]:
    """Markdown table: the ``first`` columns, then one column per metric of :data:`METRICS`."""
    lines = ["| " + " | ".join(first + [title for _, title, _ in METRICS]) + " |", first_rule + "---:|" * len(METRICS)]
    for cells, results in rows:
        lines.append("| " + " | ".join(cells + [_fmt(results.get(key), pattern) for key, _, pattern in METRICS]) + " |")
    return lines


def _rel(path: Path, start: Path) -> str:
    return os.path.relpath(path, start)


def render(
    exp_dir: Path,
    model_file: Path,
    meta: Dict,
    sets: Sequence[Tuple[str, Path]],
    untrained: Optional[Dict[str, Dict]] = None,
    anchors: Optional[Dict[str, Dict[str, Dict]]] = None,
    codebooks: Optional[Dict[str, object]] = None,
) -> str:
    """The Markdown text of RESULTS.md; ``codebooks``: per set, the collapse verdict of its codes
    (:func:`codebook_use`)."""
    from importlib.metadata import version

    import torch

    bps = bitrate_bps(meta)
    tokens_per_s = meta["num_streams"] * meta["fs"] / meta["frame_shift"]
    lines = [
        f"# RESULTS: {exp_dir.name}",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S')}",
        f"- model: `{_rel(model_file, exp_dir)}` (config: `config.yaml`)",
        f"- environment: python {platform.python_version()}, torch {torch.__version__}, "
        f"espnet {version('espnet')}",
        f"- codec: {meta['fs']} Hz, {meta['num_streams']} streams x "
        f"{meta['code_size_per_stream'][0]} codes per {meta['frame_shift']} samples "
        f"= {tokens_per_s:.2f} tokens/s x {math.log2(meta['code_size_per_stream'][0]):g} bits "
        f"= **{bps / 1000:.2f} kbps**",
    ]
    if "generator_params" in meta:
        lines.append(f"- generator parameters: {meta['generator_params']:,}")
    verdicts = codebooks or {}
    for name, verdict in verdicts.items():
        if verdict is not None and verdict.collapsed:
            lines += ["", "```", verdict.box(f"the codes of the {name} set"), "```"]
    lines += [
        "",
        "## Reconstruction metrics (averages over utterances)",
        "",
        "| set | utts | failed | " + " | ".join(title for _, title, _ in METRICS) + " | bitrate (kbps) |",
        "|---|---:|---:|" + "---:|" * len(METRICS) + "---:|",
    ]
    visqol_setting = None
    for name, scoring_dir in sets:
        results = read_results(scoring_dir / "results.json")
        cells = [name, str(results.get("num_utts", "n/a")), str(results.get("num_failed", "n/a"))]
        cells += [_fmt(results.get(key), pattern) for key, _, pattern in METRICS]
        cells.append(f"{bps / 1000:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
        visqol_setting = results.get("visqol_setting") or visqol_setting
    if visqol_setting:
        lines += ["", f"ViSQOL: {visqol_setting} (MOS-LQO 1-5; identical signals score about 4.73 in audio mode), "
                      "the same setting in every table."]
    if untrained:
        lines += [
            "",
            "## The same sets with the untrained model (iteration 0)",
            "",
            "The model `config.yaml` builds before any training step (same seed); what training added is the",
            "difference to the table above.",
            "",
        ]
        lines += _metric_table(["set", "utts", "failed"], "|---|---:|---:|",
                               [([name, str(r["num_utts"]), str(r["num_failed"])], r) for name, r in untrained.items()])
    if anchors:
        from espnet_snac.scoring.anchors import ANCHORS

        lines += [
            "",
            "## Reference points: the same sets' own speech, degraded",
            "",
            "Where the numbers above sit: each row scores a known degradation of the reference itself.",
            "",
        ]
        lines += _metric_table(["set", "reference", "failed"], "|---|---|---:|",
                               [([name, ANCHORS[anchor], str(r["num_failed"])], r)
                                for name, rows in anchors.items() for anchor, r in rows.items()])
    if any(v is not None for v in verdicts.values()):
        lines += ["", "## Codebook use (collapse check, see docs/tokens.md)", ""]
        lines += [f"- {name}: {v.usage_line()}" + (" — **collapsed**" if v.collapsed else "")
                  for name, v in verdicts.items() if v is not None]
    lines += ["", "## Files", ""]
    for name, scoring_dir in sets:
        decode_dir = scoring_dir.parent
        lines.append(f"- {name}: reconstructions `{_rel(decode_dir / 'wav', exp_dir)}/`, "
                     f"per-utterance scores `{_rel(scoring_dir / 'utt_results.tsv', exp_dir)}`, "
                     f"summary `{_rel(scoring_dir / 'results.md', exp_dir)}`")
        for png in sorted((scoring_dir / "plots").glob("*.png")) if (scoring_dir / "plots").is_dir() else []:
            lines.append(f"  - ![{png.stem}]({_rel(png, exp_dir)})")
    lines.append("")
    return "\n".join(lines)


def _parse_set(text: str) -> Tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, Path(path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp_dir", type=Path, required=True, help="experiment directory (holds config.yaml)")
    parser.add_argument("--model_file", type=Path, required=True, help="the checkpoint that was decoded")
    parser.add_argument("--scoring_dir", type=_parse_set, action="append", required=True,
                        help="NAME=DIR with DIR/results.json; repeat per test set")
    parser.add_argument("--output", type=Path, required=True, help="the RESULTS.md to write")
    parser.add_argument("--untrained", type=_parse_set, action="append", default=[],
                        help="NAME=WAV_SCP: also score the untrained model (iteration 0) on this set; repeatable")
    parser.add_argument("--anchors", type=_parse_set, action="append", default=[],
                        help="NAME=WAV_SCP: also score known degradations of this set's speech; repeatable")
    args = parser.parse_args(argv)

    config = args.exp_dir / "config.yaml"
    for path in ([config, args.model_file] + [d / "results.json" for _, d in args.scoring_dir]
                 + [scp for _, scp in args.untrained + args.anchors]):
        if not path.exists():
            print(f"make_results: {path} not found (run stages 4 and 5 first)", file=sys.stderr)
            return 1
    from espnet_snac.scoring.anchors import score_anchors

    try:
        visqol_mode = scored_visqol_mode(args.scoring_dir)
    except (OSError, ValueError) as e:
        print(f"make_results: {e}", file=sys.stderr)
        return 1
    meta = codec_meta(args.model_file)
    audio: Dict[Path, Dict] = {}
    try:
        untrained = (score_untrained(config, load_sets(args.untrained, meta["fs"], audio), visqol_mode)
                     if args.untrained else None)
    except (OSError, ValueError) as e:  # unreadable audio or list, a config the task rejects
        print(f"make_results: scoring the untrained model failed: {e}", file=sys.stderr)
        return 1
    try:
        anchors = ({name: score_anchors(utts, meta["fs"], visqol_mode)
                    for name, utts in load_sets(args.anchors, meta["fs"], audio).items()}
                   if args.anchors else None)
    except (OSError, ValueError) as e:
        print(f"make_results: scoring the reference points failed: {e}", file=sys.stderr)
        return 1
    try:
        codebooks = {name: codebook_use(d.parent, meta["code_size_per_stream"][0]) for name, d in args.scoring_dir}
    except (OSError, ValueError) as e:  # a damaged codec.scp or code file of stage 5
        print(f"make_results: reading the codes failed: {e}", file=sys.stderr)
        return 1
    text = render(args.exp_dir, args.model_file, meta, args.scoring_dir, untrained, anchors, codebooks)
    atomic_write_text(args.output, text)
    for name, scoring_dir in args.scoring_dir:  # the collapse box on the console as well
        verdict = codebooks[name]
        if verdict is not None:
            print(f"{name}: {verdict.usage_line()}")
            if verdict.collapsed:
                print(verdict.box(f"the codes of the {name} set"), file=sys.stderr)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
