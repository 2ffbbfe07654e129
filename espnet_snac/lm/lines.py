"""LM lines and prompts from ``extract_tokens`` output (``text``: flattened SNAC ids) and Kaldi text.

A training line is ``<utt> <sos/eos> [transcript units] <generatespeech> snac_p0_.. snac_p1_.. ...``:
the first token is dropped by ESPnet's LM task, the loss covers what follows ``<generatespeech>``.
A prompt is the same line cut after its first ``prompt_frames`` frames.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

from espnet_snac.io.atomic_files import atomic_open
from espnet_snac.model.frames import FRAME_SIZE
from espnet_snac.lm.vocab import DUMMY_FIRST, GENERATE_SPEECH, UNK, snac_name, text_units
from espnet_snac.io.scp import ScpError, read_keyed
from espnet_snac.tokens.layout import CODEBOOK_SIZE


class LMDataError(ValueError):
    """A malformed input file (the message names the file, the line and the reason)."""


def read_keyed_lines(path: Path, kind: str) -> Iterator[Tuple[int, str, str]]:
    """``(line number, utt, rest)`` of the non-blank lines of a Kaldi-style file; ids must be unique
    (:func:`espnet_snac.io.scp.read_keyed`, its errors as :class:`LMDataError`)."""
    try:
        yield from read_keyed(path, kind)
    except ScpError as exc:
        raise LMDataError(str(exc)) from exc


def read_transcripts(path: Path) -> "OrderedDict[str, str]":
    """Kaldi ``text``: ``utt transcript``; an utterance without words maps to ``""``."""
    return OrderedDict((utt, " ".join(rest.split())) for _, utt, rest in read_keyed_lines(path, "transcripts"))


def read_token_text(path: Path) -> "OrderedDict[str, List[int]]":
    """``extract_tokens``' ``text``: ``utt id id ...`` with ids ``k * 4096 + code`` in frame order."""
    out: "OrderedDict[str, List[int]]" = OrderedDict()
    for lineno, utt, rest in read_keyed_lines(path, "SNAC token text"):
        try:
            ids = [int(t) for t in rest.split()]
        except ValueError:
            raise LMDataError(f"{path}:{lineno}: {utt}: token ids must be integers "
                              "(is this extract_tokens' 'text' file?)") from None
        if len(ids) % FRAME_SIZE:
            raise LMDataError(f"{path}:{lineno}: {utt}: {len(ids)} ids is not a whole number of "
                              f"{FRAME_SIZE}-id frames")
        for pos, i in enumerate(ids):
            slot = pos % FRAME_SIZE
            if i < 0 or i // CODEBOOK_SIZE != slot:
                raise LMDataError(f"{path}:{lineno}: {utt}: id {i} at position {pos} is outside slot {slot} "
                                  f"({slot * CODEBOOK_SIZE}..{(slot + 1) * CODEBOOK_SIZE - 1})")
        out[utt] = ids
    return out


@dataclass
class LMSet:
    """Lines of one set, what was left out and why, and the unknown transcript units met."""

    lines: "OrderedDict[str, List[str]]" = field(default_factory=OrderedDict)
    rejected: Dict[str, str] = field(default_factory=dict)
    unknown_units: int = 0


def line_tokens(flat_ids: List[int], units: Optional[List[str]] = None) -> List[str]:
    """Tokens of one LM line (without the utterance id)."""
    return [DUMMY_FIRST, *(units or []), GENERATE_SPEECH, *(snac_name(i) for i in flat_ids)]


def build_set(tokens: "OrderedDict[str, List[int]]", transcripts: Optional[Dict[str, str]] = None,
              vocab: Optional[Set[str]] = None, text_file: str = "text") -> LMSet:
    """LM lines for every utterance of ``tokens``; with ``transcripts`` each line starts with the
    transcript's units (units outside ``vocab`` become ``<unk>`` and are counted). Utterances
    without frames, or without a transcript when one is needed, are rejected with the reason."""
    result = LMSet()
    for utt, ids in tokens.items():
        if not ids:
            result.rejected[utt] = "no SNAC frames"
            continue
        units = None
        if transcripts is not None:
            if utt not in transcripts:
                result.rejected[utt] = f"no transcript in {text_file}"
                continue
            units = text_units(transcripts[utt])
            if not units:
                result.rejected[utt] = f"empty transcript in {text_file}"
                continue
            if vocab is not None:
                result.unknown_units += sum(u not in vocab for u in units)
                units = [u if u in vocab else UNK for u in units]
        result.lines[utt] = line_tokens(ids, units)
    return result


def cut_prompt(line: List[str], prompt_frames: int) -> List[str]:
    """The line up to and including its first ``prompt_frames`` frames."""
    start = line.index(GENERATE_SPEECH) + 1
    return line[: start + prompt_frames * FRAME_SIZE]


def write_lines(path: Path, lines: "OrderedDict[str, List[str]]") -> None:
    """``utt token token ...`` per line, renamed into place (mode follows the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as f:
        for utt, toks in lines.items():
            f.write(utt + " " + " ".join(toks) + "\n")
