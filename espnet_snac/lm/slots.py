"""Check LM output against the 7-slot frame pattern before anything is decoded.

ESPnet's LM task knows nothing of frames: a generated id can be a SNAC code of another slot, a
special symbol or a transcript unit. Frame ``j`` of a continuation is valid when its position ``k``
holds ``snac_p{k}_*`` (flattened id ``k*4096 .. k*4096+4095``) for all seven ``k``; only valid
frames are decoded, the others are counted.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from espnet_snac.model.frames import FRAME_SIZE
from espnet_snac.lm.vocab import parse_snac_name


@dataclass
class SlotCheck:
    """Result for one generated sequence; ``generated_frames = valid_frames + invalid_frames``."""

    generated_tokens: int
    generated_frames: int  # complete frames of 7 ids
    valid_frames: int
    invalid_frames: int
    trailing_tokens: int  # ids after the last complete frame: never decoded
    wrong_slot_tokens: int  # SNAC codes at another slot's position
    non_snac_tokens: int  # specials or transcript units among the frames
    first_invalid: Optional[Dict[str, object]]  # {"frame", "position", "token"} of the first bad id
    frames: np.ndarray  # (valid_frames, 7) raw codes 0..4095 of the valid frames, in order

    def summary(self) -> Dict[str, object]:
        out = asdict(self)
        del out["frames"]
        return out


def check_slots(tokens: Sequence[str]) -> SlotCheck:
    """Split generated token names into frames of 7 and keep the frames that fit the slot pattern."""
    n_frames = len(tokens) // FRAME_SIZE
    valid: List[List[int]] = []
    wrong_slot = non_snac = 0
    first_invalid = None
    for j in range(n_frames):
        codes: List[int] = []
        for k, tok in enumerate(tokens[j * FRAME_SIZE : (j + 1) * FRAME_SIZE]):
            parsed = parse_snac_name(tok)
            if parsed is not None and parsed[0] == k:
                codes.append(parsed[1])
                continue
            if parsed is None:
                non_snac += 1
            else:
                wrong_slot += 1
            if first_invalid is None:
                first_invalid = {"frame": j, "position": k, "token": tok}
        if len(codes) == FRAME_SIZE:
            valid.append(codes)
    frames = np.asarray(valid, dtype=np.int64).reshape(-1, FRAME_SIZE)
    return SlotCheck(
        generated_tokens=len(tokens), generated_frames=n_frames, valid_frames=len(valid),
        invalid_frames=n_frames - len(valid), trailing_tokens=len(tokens) - n_frames * FRAME_SIZE,
        wrong_slot_tokens=wrong_slot, non_snac_tokens=non_snac, first_invalid=first_invalid, frames=frames,
    )


def prompt_frames(tokens: Sequence[str]) -> np.ndarray:
    """``(F, 7)`` raw codes of a prompt's SNAC tokens (all after ``<generatespeech>``); a prompt is
    built by ``lm_data`` and must fit the pattern exactly."""
    check = check_slots(tokens)
    if check.invalid_frames or check.trailing_tokens:
        raise ValueError(f"prompt does not hold whole valid frames: {check.summary()}")
    return check.frames
