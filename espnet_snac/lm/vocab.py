"""Token list of a speech LM trained by ESPnet's LM task on SNAC tokens.

ESPnet reserves id 0 (``<blank>``: masked by its TransformerLM, ignored by the loss, deleted from
``lm_inference`` output) and needs ``<unk>``; ``lm_multitask`` looks up ``<generatetext>``,
``<generatespeech>`` and ``<sos/eos>``. The list is therefore::

    <blank> <unk> snac_p0_0 ... snac_p6_4095 [characters of the transcripts] <generatetext> <generatespeech> <sos/eos>

so SNAC id ``k * 4096 + code`` (``extract_tokens``' ``text``) is LM id ``2 + k * 4096 + code``.
Transcript characters (lower-cased, spaces as ``<space>``) are only present in a text-prefixed LM.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

from espnet_snac.model.frames import FRAME_SIZE
from espnet_snac.tokens.layout import CODEBOOK_SIZE, token_names

BLANK, UNK = "<blank>", "<unk>"
GENERATE_TEXT, GENERATE_SPEECH, SOS_EOS = "<generatetext>", "<generatespeech>", "<sos/eos>"
SPACE = "<space>"
LEADING_SPECIALS = (BLANK, UNK)
TRAILING_SPECIALS = (GENERATE_TEXT, GENERATE_SPEECH, SOS_EOS)
#: First token of every line: ESPnet's LM task drops it (it expects a BPE word-start symbol there).
DUMMY_FIRST = SOS_EOS

_SNAC_NAME = re.compile(r"snac_p(\d+)_(\d+)$")


def text_units(text: str) -> List[str]:
    """A transcript as LM tokens: lower-cased characters, each run of whitespace one ``<space>``."""
    units: List[str] = []
    for word in text.lower().split():
        if units:
            units.append(SPACE)
        units.extend(word)
    return units


def build_token_list(text_vocab: Iterable[str] = ()) -> List[str]:
    """The full LM token list; ``text_vocab``: transcript units (sorted and deduplicated here)."""
    chars = sorted(set(text_vocab))
    reserved = set(LEADING_SPECIALS) | set(TRAILING_SPECIALS)
    clash = [c for c in chars if c in reserved or _SNAC_NAME.match(c)]
    if clash:
        raise ValueError(f"text vocabulary contains reserved token(s) {clash}")
    return [*LEADING_SPECIALS, *token_names(CODEBOOK_SIZE), *chars, *TRAILING_SPECIALS]


def write_token_list(path: Path, tokens: Sequence[str]) -> None:
    Path(path).write_text("\n".join(tokens) + "\n", encoding="utf-8")


def read_token_list(path: Path) -> List[str]:
    try:
        tokens = [line.rstrip("\n") for line in Path(path).read_text(encoding="utf-8").splitlines()]
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the LM token list ({exc.strerror or exc})") from exc
    if not tokens or tokens[0] != BLANK:
        raise ValueError(f"{path}: not an LM token list (first token must be {BLANK})")
    return tokens


def snac_name(flat_id: int) -> str:
    """Flattened SNAC id ``k * 4096 + code`` -> ``snac_p{k}_{code}``."""
    if not 0 <= flat_id < FRAME_SIZE * CODEBOOK_SIZE:
        raise ValueError(f"SNAC id {flat_id} outside 0..{FRAME_SIZE * CODEBOOK_SIZE - 1}")
    return f"snac_p{flat_id // CODEBOOK_SIZE}_{flat_id % CODEBOOK_SIZE}"


def parse_snac_name(token: str) -> Optional[Tuple[int, int]]:
    """``snac_p{k}_{code}`` -> ``(k, code)``; None for any other token."""
    m = _SNAC_NAME.match(token)
    if m is None:
        return None
    slot, code = int(m.group(1)), int(m.group(2))
    if slot >= FRAME_SIZE or code >= CODEBOOK_SIZE:
        return None
    return slot, code
