"""Sentencepiece BPE over SNAC token sequences.

As in ESPnet's discrete-unit recipes (``egs2/TEMPLATE/asr2``), each unit id becomes one character,
``chr(0x4E00 + id)``, and a sequence is the concatenation of its characters with no spaces; a BPE
model trained on those strings merges frequent unit n-grams into single pieces. The 28672 flattened
ids map to U+4E00..U+BDFF, which spans several Unicode scripts, so training disables script splitting
and normalisation; otherwise pieces could not cross the boundary between frame positions.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Union

import numpy as np

UNIT_CHAR_BASE = 0x4E00


def units_to_chars(ids: Sequence[int]) -> str:
    """Flattened token ids -> a string of one character per id."""
    return "".join(chr(UNIT_CHAR_BASE + int(i)) for i in ids)


def chars_to_units(text: str) -> np.ndarray:
    """Inverse of :func:`units_to_chars`."""
    return np.fromiter((ord(ch) - UNIT_CHAR_BASE for ch in text), dtype=np.int64, count=len(text))


def train_bpe(train_txt: Union[str, Path], model_prefix: Union[str, Path], vocab_size: int) -> Path:
    """Train a BPE model on ``train_txt`` (one unit string per line). Returns the ``.model`` path."""
    import sentencepiece as spm

    model_prefix = Path(model_prefix)
    model_prefix.parent.mkdir(parents=True, exist_ok=True)
    try:
        spm.SentencePieceTrainer.train(
            input=str(train_txt), model_prefix=str(model_prefix), vocab_size=int(vocab_size),
            model_type="bpe", character_coverage=1.0, normalization_rule_name="identity",
            split_by_unicode_script=False, split_by_number=False, split_by_whitespace=False,
            add_dummy_prefix=False, max_sentence_length=1 << 24, max_sentencepiece_length=64,
            input_sentence_size=2_000_000, shuffle_input_sentence=True,
            bos_id=-1, eos_id=-1, minloglevel=2,
        )
    except RuntimeError as exc:
        raise ValueError(
            f"sentencepiece could not train {vocab_size} BPE units on {train_txt} ({exc}); choose --bpe_nunits "
            "larger than the number of distinct token ids in the set and no larger than sentencepiece allows"
        ) from exc
    return model_prefix.with_suffix(".model")


class UnitBPE:
    """A trained unit BPE model: ``encode(ids) -> pieces``, ``decode(pieces) -> ids``."""

    def __init__(self, model_path: Union[str, Path]):
        import sentencepiece as spm

        self.path = Path(model_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: BPE model not found (train one with --bpe_nunits on the train set)")
        self.sp = spm.SentencePieceProcessor(model_file=str(self.path))

    def encode(self, ids: Sequence[int]) -> List[str]:
        return self.sp.encode(units_to_chars(ids), out_type=str)

    def decode(self, pieces: Sequence[str]) -> np.ndarray:
        return chars_to_units("".join(pieces))

    def pieces(self) -> List[str]:
        """All pieces in id order (``<unk>`` first)."""
        return [self.sp.id_to_piece(i) for i in range(self.sp.get_piece_size())]
