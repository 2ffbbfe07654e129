"""Data of a speech LM on SNAC tokens for ESPnet's LM task (recipe stage 8).

Example::

    python -m espnet_snac.bin.lm_data --train_tokens dump/tokens/train --valid_tokens dump/tokens/dev \\
        --prompt_tokens dump/tokens/test --output_dir dump/lm_snac --num_prompts 2 --prompt_frames 12
    # Orpheus-style (transcript first): add --text_prefix true --train_text data/train/text ...

Writes to ``output_dir``: ``token_list`` (see ``espnet_snac.lm.vocab``), ``{train,valid}/text``
(one LM line per utterance, token names: train with ``--token_type word``), ``prompt/text`` (the first
``prompt_frames`` frames of ``num_prompts`` held-out utterances), ``<set>/rejected.tsv`` and
``summary.json`` (per set: utterances in = kept + rejected).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Optional, Sequence

from espnet_snac.io.atomic_files import atomic_write_text
from espnet_snac.io.flags import parse_bool
from espnet_snac.lm.lines import LMDataError, build_set, cut_prompt, read_token_text, read_transcripts, write_lines
from espnet_snac.lm.vocab import build_token_list, text_units, write_token_list


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for part in ("train", "valid", "prompt"):
        p.add_argument(f"--{part}_tokens", type=Path, required=True,
                       help=f"extract_tokens output directory of the {part} set (its 'text' is read)")
        p.add_argument(f"--{part}_text", type=Path, default=None,
                       help=f"Kaldi text (utt transcript) of the {part} set; needed with --text_prefix true")
    p.add_argument("--output_dir", type=Path, required=True)
    p.add_argument("--text_prefix", type=parse_bool, default=False,
                   help="start each line with the transcript's characters (text-to-speech LM)")
    p.add_argument("--num_prompts", type=int, default=1, help="held-out utterances to prompt the LM with")
    p.add_argument("--prompt_frames", type=int, default=12,
                   help="SNAC frames of each prompt (0 with --text_prefix true: speech from text alone)")
    return p


def _write_rejected(path: Path, rejected: Dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("utt_id\treason\n")
        for utt in sorted(rejected):
            f.write(f"{utt}\t{rejected[utt]}\n")


def run(args: argparse.Namespace) -> dict:
    if args.num_prompts < 1:
        raise LMDataError("--num_prompts must be at least 1")
    if args.prompt_frames < 0 or (args.prompt_frames == 0 and not args.text_prefix):
        raise LMDataError("--prompt_frames must be positive (0 is allowed only with --text_prefix true)")
    texts: Dict[str, Optional[OrderedDict]] = {}
    for part in ("train", "valid", "prompt"):
        path = getattr(args, f"{part}_text")
        if args.text_prefix and path is None:
            raise LMDataError(f"--text_prefix true needs --{part}_text (Kaldi text of the {part} set)")
        texts[part] = read_transcripts(path) if args.text_prefix else None

    tokens = {part: read_token_text(getattr(args, f"{part}_tokens") / "text") for part in ("train", "valid", "prompt")}
    vocab = None
    if args.text_prefix:
        # The units of the training transcripts; other sets map units they lack to <unk>.
        vocab = {u for utt, t in texts["train"].items() if utt in tokens["train"] for u in text_units(t)}
    token_list = build_token_list(vocab or ())
    summary: dict = {"text_prefix": args.text_prefix, "vocab_size": len(token_list),
                     "text_units": len(vocab or ()), "sets": {}}

    args.output_dir.mkdir(parents=True, exist_ok=True)
    for part in ("train", "valid", "prompt"):
        text_file = str(getattr(args, f"{part}_text"))
        result = build_set(tokens[part], texts[part], vocab, text_file)
        lines = result.lines
        if part == "prompt":
            # Held-out utterances long enough to hold the prompt and at least one more frame.
            for u in [u for u in lines if len(tokens[part][u]) // 7 <= args.prompt_frames]:
                result.rejected[u] = f"not longer than --prompt_frames {args.prompt_frames}"
                del lines[u]
            if not lines:
                raise LMDataError(f"{args.prompt_tokens}: no utterance can be a prompt "
                                  f"(rejected: {dict(list(result.rejected.items())[:5])})")
            lines = OrderedDict((u, cut_prompt(lines[u], args.prompt_frames))
                                for u in list(lines)[: args.num_prompts])
        elif not lines:
            raise LMDataError(f"{getattr(args, f'{part}_tokens')}: no usable utterance "
                              f"(rejected: {dict(list(result.rejected.items())[:5])})")
        write_lines(args.output_dir / part / "text", lines)
        _write_rejected(args.output_dir / part / "rejected.tsv", result.rejected)
        n_in = len(tokens[part])
        stats = {"utterances": n_in, "kept": len(result.lines), "rejected": len(result.rejected),
                 "lines": len(lines), "tokens": sum(len(t) for t in lines.values()),
                 "unknown_text_units": result.unknown_units}
        if stats["kept"] + stats["rejected"] != n_in:
            raise RuntimeError(f"{part}: {n_in} utterances in, but {stats['kept']} kept + {stats['rejected']} rejected")
        summary["sets"][part] = stats
    write_token_list(args.output_dir / "token_list", token_list)
    atomic_write_text(args.output_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        summary = run(args)
    except LMDataError as exc:
        print(f"lm_data: error: {exc}", file=sys.stderr)
        return 1
    print(f"token list: {summary['vocab_size']} tokens ({summary['text_units']} transcript units) "
          f"-> {args.output_dir / 'token_list'}")
    for part, s in summary["sets"].items():
        print(f"{part}: {s['utterances']} in = {s['kept']} kept + {s['rejected']} rejected; "
              f"{s['lines']} lines, {s['tokens']} tokens"
              + (f", {s['unknown_text_units']} transcript units mapped to <unk>" if s["unknown_text_units"] else "")
              + f" -> {args.output_dir / part / 'text'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
