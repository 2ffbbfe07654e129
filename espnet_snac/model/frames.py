"""Frame layout of SNAC codes for sequence models (Orpheus-style "7 tokens per frame" for 24 kHz).

One coarse frame spans one code of the coarsest level. Its codes of all levels are laid out in
pre-order of the tree in which each code's children are the finer codes covering the same time
span. For the 24 kHz model (strides 4, 2, 1) this is
``[c0[t], c1[2t], c2[4t], c2[4t+1], c1[2t+1], c2[4t+2], c2[4t+3]]``.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

#: Codes per coarse frame for each level of the 24 kHz model.
LEVEL_SIZES_24KHZ: Tuple[int, ...] = (1, 2, 4)
FRAME_SIZE = 7


def frame_order(level_sizes: Sequence[int] = LEVEL_SIZES_24KHZ) -> List[Tuple[int, int]]:
    """``(level, index within the frame)`` for each frame position, e.g. 7 positions for (1, 2, 4)."""
    if level_sizes[0] != 1 or any(b % a for a, b in zip(level_sizes, level_sizes[1:])):
        raise ValueError(f"level sizes must start at 1 and each divide the next, got {list(level_sizes)}")
    order: List[Tuple[int, int]] = []

    def visit(level: int, k: int) -> None:
        order.append((level, k))
        if level + 1 < len(level_sizes):
            ratio = level_sizes[level + 1] // level_sizes[level]
            for child in range(k * ratio, (k + 1) * ratio):
                visit(level + 1, child)

    visit(0, 0)
    return order


#: The 24 kHz / Orpheus order.
FRAME_ORDER: Tuple[Tuple[int, int], ...] = tuple(frame_order())


def bits_per_code(codebook_size: int) -> int:
    """Whole bits to store one code: ``ceil(log2(codebook_size))``, at least 1 (12 for 4096 entries)."""
    return max(1, (int(codebook_size) - 1).bit_length())


def code_bitrate(frame_rates: Sequence[float], codebook_size: int) -> float:
    """Bits per second of SNAC codes: the codes per second of all levels (``SNAC.frame_rates``) times
    :func:`bits_per_code` (984.4 bit/s for the 24 kHz model)."""
    return bits_per_code(codebook_size) * sum(frame_rates)


def level_sizes_of(vq_strides: Sequence[int]) -> Tuple[int, ...]:
    """Codes per frame per level from the quantiser strides, e.g. [4, 2, 1] -> (1, 2, 4)."""
    return tuple(vq_strides[0] // s for s in vq_strides)


def codes_to_frames(codes: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[(B, F), (B, 2F), (B, 4F)]`` -> ``(B, F, 7)`` (other level counts work the same way)."""
    b, f = codes[0].shape
    sizes = []
    for level, c in enumerate(codes):
        if c.dim() != 2 or c.shape[0] != b or c.shape[1] % max(f, 1):
            raise ValueError(f"level {level} has shape {tuple(c.shape)}, not (B={b}, a multiple of F={f})")
        sizes.append(c.shape[1] // f if f else 2**level)
    per_level = [c.reshape(b, f, n) for c, n in zip(codes, sizes)]
    return torch.stack([per_level[level][:, :, k] for level, k in frame_order(sizes)], dim=-1)


def frames_to_codes(frames: torch.Tensor, level_sizes: Sequence[int] = LEVEL_SIZES_24KHZ) -> List[torch.Tensor]:
    """``(B, F, 7)`` -> ``[(B, F), (B, 2F), (B, 4F)]``; exact inverse of :func:`codes_to_frames`."""
    order = frame_order(level_sizes)
    if frames.dim() != 3 or frames.shape[-1] != len(order):
        raise ValueError(f"frames must have shape (B, F, {len(order)}), got {tuple(frames.shape)}")
    b, f, _ = frames.shape
    levels = [frames.new_empty(b, f, n) for n in level_sizes]
    for pos, (level, k) in enumerate(order):
        levels[level][:, :, k] = frames[:, :, pos]
    return [lv.reshape(b, -1) for lv in levels]
