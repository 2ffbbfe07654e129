"""Check the continuations of ``espnet2.bin.lm_inference`` frame by frame and decode them with SNAC.

Example (recipe stage 8)::

    python -m espnet_snac.bin.lm_decode --token_int exp/lm_x/generate/1best_recog/token_int \\
        --prompts dump/lm_snac/prompt/text --token_list dump/lm_snac/token_list \\
        --model exp/codec_x --expected_tokens 168 --output_dir exp/lm_x/generate

``token_int`` holds each prompt (without its first token) followed by the generated ids. Every
generated frame of 7 ids is checked against the slot pattern (``espnet_snac.lm.slots``); the prompt's
frames followed by the valid generated frames are decoded. Writes ``wav/<utt>.wav`` (prompt and
continuation), ``continuation/<utt>.wav`` (the generated part, when it has a valid frame), their
``wav.scp`` files, and ``slot_check.json`` (counts per utterance and in total).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from espnet_snac.io.atomic_files import atomic_write_text
from espnet_snac.lm.lines import LMDataError, read_keyed_lines
from espnet_snac.lm.slots import check_slots, prompt_frames
from espnet_snac.lm.vocab import GENERATE_SPEECH, read_token_list

log = logging.getLogger("lm_decode")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--token_int", type=Path, required=True, help="lm_inference output <dir>/1best_recog/token_int")
    p.add_argument("--prompts", type=Path, required=True, help="the prompt text given to lm_inference")
    p.add_argument("--token_list", type=Path, required=True, help="token list of the LM")
    p.add_argument("--model", required=True, help="SNAC model (anything SNAC.from_pretrained reads)")
    p.add_argument("--output_dir", type=Path, required=True)
    p.add_argument("--expected_tokens", type=int, default=0,
                   help="ids lm_inference was asked to generate (its --maxlen); fewer are reported as missing")
    p.add_argument("--noise_seed", type=int, default=0, help="seed of the decoder's noise blocks")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    return p


def _read_ids(path: Path) -> Dict[str, List[int]]:
    out = {}
    for lineno, utt, rest in read_keyed_lines(path, "lm_inference token_int"):
        try:
            out[utt] = [int(t) for t in rest.split()]
        except ValueError:
            raise LMDataError(f"{path}:{lineno}: {utt}: ids must be integers") from None
    return out


def _write_wav(path: Path, audio: np.ndarray, rate: int) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, rate, subtype="PCM_16")


def run(args: argparse.Namespace) -> dict:
    import torch

    from espnet_snac.model.frames import frames_to_codes
    from espnet_snac.model.snac import SNAC

    token_list = read_token_list(args.token_list)
    prompts = {utt: rest.split() for _, utt, rest in read_keyed_lines(args.prompts, "prompt text")}
    outputs = _read_ids(args.token_int) if args.token_int.is_file() else {}
    if not args.token_int.is_file():
        log.error("%s does not exist: lm_inference generated nothing (is --minlen below --maxlen?)", args.token_int)
    unknown = sorted(set(outputs) - set(prompts))
    if unknown:
        raise LMDataError(f"{args.token_int}: utterances {unknown[:5]} are not in {args.prompts}")

    device = torch.device(args.device)
    try:
        model = SNAC.from_pretrained(args.model, map_location=device).to(device)
    except Exception as exc:  # missing files, wrong format: say which model and why
        raise LMDataError(f"--model {args.model}: cannot load the SNAC model ({exc})") from exc
    rate = model.sampling_rate
    frame_samples = model.hop_length * model.vq_strides[0]
    report: Dict[str, dict] = {}
    wav_lines, cont_lines = [], []
    for utt, prompt in prompts.items():
        if utt not in outputs:
            report[utt] = {"error": f"no output in {args.token_int}"}
            log.warning("%s: lm_inference wrote no output; nothing decoded", utt)
            continue
        ids = outputs[utt]
        bad = [i for i in ids if not 0 <= i < len(token_list)]
        if bad:
            raise LMDataError(f"{args.token_int}: {utt}: ids {bad[:5]} outside the token list ({len(token_list)} tokens)")
        tokens = [token_list[i] for i in ids]
        primer = prompt[1:]  # lm_inference drops the first token of the prompt
        if tokens[: len(primer)] != primer:
            raise LMDataError(f"{args.token_int}: {utt}: output does not start with its prompt from {args.prompts}")
        check = check_slots(tokens[len(primer):])
        given = prompt_frames(primer[primer.index(GENERATE_SPEECH) + 1:])
        entry = {"prompt_frames": len(given), **check.summary()}
        if args.expected_tokens:
            entry["missing_tokens"] = max(0, args.expected_tokens - check.generated_tokens)
        frames = np.concatenate([given, check.frames]) if len(check.frames) else given
        if len(frames):
            codes = frames_to_codes(torch.from_numpy(frames).to(device)[None])
            with torch.no_grad():
                audio = model.decode(codes, noise_seed=args.noise_seed)[0, 0].float().cpu().numpy()
            audio = np.clip(audio, -1.0, 1.0)
            wav = args.output_dir / "wav" / f"{utt}.wav"
            _write_wav(wav, audio, rate)
            wav_lines.append(f"{utt} {wav.resolve()}")
            entry["wav"] = str(wav)
            if len(check.frames):
                cont = args.output_dir / "continuation" / f"{utt}.wav"
                _write_wav(cont, audio[len(given) * frame_samples:], rate)
                cont_lines.append(f"{utt} {cont.resolve()}")
                entry["continuation_wav"] = str(cont)
                entry["continuation_seconds"] = len(check.frames) * frame_samples / rate
        report[utt] = entry
        msg = (f"{utt}: {check.generated_frames} frames generated = {check.valid_frames} valid + "
               f"{check.invalid_frames} invalid ({check.wrong_slot_tokens} ids in a wrong slot, "
               f"{check.non_snac_tokens} non-SNAC ids), {check.trailing_tokens} trailing ids")
        if entry.get("missing_tokens"):
            msg += f", {entry['missing_tokens']} of {args.expected_tokens} ids missing"
        if check.invalid_frames:
            log.warning("%s; first invalid: %s; decoded the valid frames only", msg, check.first_invalid)
        else:
            log.info(msg)

    done = [e for e in report.values() if "error" not in e]
    totals = {key: sum(e[key] for e in done) for key in
              ("generated_tokens", "generated_frames", "valid_frames", "invalid_frames", "trailing_tokens",
               "wrong_slot_tokens", "non_snac_tokens")}
    totals.update(prompts=len(prompts), decoded=len(wav_lines), without_output=len(prompts) - len(done),
                  with_continuation=len(cont_lines))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for name, lines in (("wav.scp", wav_lines), ("continuation.scp", cont_lines)):
        with open(args.output_dir / name, "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)
    result = {"totals": totals, "utterances": report}
    atomic_write_text(args.output_dir / "slot_check.json", json.dumps(result, indent=2) + "\n")
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = get_parser().parse_args(argv)
    try:
        result = run(args)
    except LMDataError as exc:
        print(f"lm_decode: error: {exc}", file=sys.stderr)
        return 1
    t = result["totals"]
    if t["without_output"] == t["prompts"]:
        print(f"lm_decode: error: lm_inference generated nothing for any of the {t['prompts']} prompts "
              f"({args.token_int}); see its log", file=sys.stderr)
        return 1
    print(f"slot check: {t['generated_frames']} frames generated = {t['valid_frames']} valid + "
          f"{t['invalid_frames']} invalid, {t['trailing_tokens']} trailing ids; "
          f"{t['decoded']}/{t['prompts']} prompts decoded, {t['with_continuation']} with a continuation "
          f"-> {args.output_dir / 'slot_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
