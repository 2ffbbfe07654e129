"""Flattened token ids for SNAC-24k frames.

A frame ``(7,)`` holds raw codes ``0..4095`` in the order of :data:`espnet_snac.model.frames.FRAME_ORDER`.
Flattened frame-major, position ``k`` of every frame is shifted by ``k * codebook_size`` so that the
seven positions use disjoint id ranges: ids ``0 .. 7 * 4096 - 1``. Orpheus-style LMs add a base
offset (128266 in Orpheus) to these ids.

ESPnet's codec dump (``dump_codec.py``, espnet 202506) writes the same flat ids with a
``codec_token_list`` naming id ``k * 4096 + c`` ``<codec_layer{k}_code{c}>``; here "layer" ``k`` is
the frame position ``k``. It keeps ``floor(T / 2048)`` frames where this package keeps
``ceil(T / 2048)`` (see :func:`frames_to_keep`).
"""
from __future__ import annotations

import math
from typing import List, Union

import numpy as np
import torch

from espnet_snac.model.frames import FRAME_SIZE

CODEBOOK_SIZE = 4096
#: Number of distinct flattened ids.
VOCAB_SIZE = FRAME_SIZE * CODEBOOK_SIZE
#: Base offset of the audio tokens in Orpheus' vocabulary.
ORPHEUS_BASE = 128266

ArrayLike = Union[np.ndarray, torch.Tensor]


def _offsets(like: ArrayLike, codebook_size: int) -> ArrayLike:
    k = np.arange(FRAME_SIZE, dtype=np.int64) * codebook_size
    return torch.as_tensor(k, device=like.device) if isinstance(like, torch.Tensor) else k


def frames_to_flat(frames: ArrayLike, base: int = 0, codebook_size: int = CODEBOOK_SIZE) -> ArrayLike:
    """``(..., F, 7)`` raw codes -> ``(..., F * 7)`` ids ``base + k * codebook_size + code``."""
    if frames.shape[-1] != FRAME_SIZE:
        raise ValueError(f"frames must end with a dimension of {FRAME_SIZE}, got shape {tuple(frames.shape)}")
    flat = frames.astype(np.int64) if isinstance(frames, np.ndarray) else frames.long()
    flat = flat + _offsets(flat, codebook_size) + base
    return flat.reshape(*flat.shape[:-2], -1)


def flat_to_frames(flat: ArrayLike, base: int = 0, codebook_size: int = CODEBOOK_SIZE) -> ArrayLike:
    """``(..., F * 7)`` ids -> ``(..., F, 7)`` raw codes; exact inverse of :func:`frames_to_flat`.

    Raises ``ValueError`` when the length is not a multiple of 7 or an id is not valid for its
    position (an LM that emitted a token in the wrong slot).
    """
    n = flat.shape[-1]
    if n % FRAME_SIZE:
        raise ValueError(f"a token sequence must hold whole frames of {FRAME_SIZE} ids, got length {n}")
    ids = flat.astype(np.int64) if isinstance(flat, np.ndarray) else flat.long()
    frames = ids.reshape(*ids.shape[:-1], n // FRAME_SIZE, FRAME_SIZE) - base - _offsets(ids, codebook_size)
    bad = (frames < 0) | (frames >= codebook_size)
    if bool(bad.any()):
        where = np.argwhere(bad.cpu().numpy() if isinstance(bad, torch.Tensor) else bad)[0]
        pos = int(where[-1])
        frame = where[:-1].tolist()
        value = int(ids.reshape(frames.shape)[tuple(where)])
        raise ValueError(
            f"token {value} at frame {frame} position {pos} is outside the id range of that position "
            f"[{base + pos * codebook_size}, {base + (pos + 1) * codebook_size}); "
            "check the base offset and the frame order"
        )
    return frames


def token_names(codebook_size: int = CODEBOOK_SIZE) -> List[str]:
    """Names of the flattened ids in id order: ``snac_p{position}_{code}`` (for ``token_list``)."""
    return [f"snac_p{k}_{c}" for k in range(FRAME_SIZE) for c in range(codebook_size)]


def codec_token_names(codebook_size: int = CODEBOOK_SIZE) -> List[str]:
    """ESPnet's ``codec_token_list`` names in id order: ``<codec_layer{position}_code{code}>``."""
    return [f"<codec_layer{k}_code{c}>" for k in range(FRAME_SIZE) for c in range(codebook_size)]


FRAME_RULES = ("ceil", "floor")


def frames_to_keep(num_samples: int, frame_samples: int, rule: str = "ceil") -> int:
    """Frames kept for ``num_samples`` input samples: ``ceil`` (every frame the encoder emits; the
    last one covers zero padding) or ``floor`` (whole frames only, as ESPnet's codec dump)."""
    if rule == "ceil":
        return math.ceil(num_samples / frame_samples)
    if rule == "floor":
        return num_samples // frame_samples
    raise ValueError(f"unknown frame rule {rule!r}; choose from {FRAME_RULES}")
