"""Batched encoding where every utterance gets exactly the codes that encoding it alone gives.

Why masking is needed: ``SNAC.encode`` right-pads one signal with zeros to a multiple of
``pad_multiple`` (2048 samples for 24 kHz) and every convolution of the encoder zero-pads its own
input at the ends. In a batch, a shorter utterance is followed by more padding, and after the first
layer that padding is no longer zero (biases, Snake), so the convolutions near its end see different
values than when it is encoded alone: the last coarse frame (and the codes of the finer levels under
it) can change. Here every utterance is padded to its own multiple of ``pad_multiple`` and the input
of every encoder ``Conv1d`` is zeroed beyond that utterance's length at that layer's resolution, so
each convolution sees exactly the zeros it would see for the utterance alone. Convolutions are the
only encoder operations that mix time steps (Snake and the residual sums are pointwise; the
quantizer pools whole frames; local attention windows divide ``pad_multiple``), hence the codes of
each utterance are mathematically those of the single-utterance path.

Long recordings are cut into windows of whole coarse frames, each extended by ``context`` frames
on both sides (clipped at the ends). The codes of the extended window are computed and only the
central frames are kept. The encoder's receptive field reaches about 5.3k samples (0.22 s) to each
side of a latent step for SNAC-24k; when the context covers it (default 0.5 s), the kept codes depend
on exactly the same samples as in whole-file encoding and are identical up to floating-point
summation order. Without context, codes within a frame or two of each join change (a test
measures this).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from espnet_snac.model.frames import FRAME_SIZE, codes_to_frames


@dataclass(frozen=True)
class Piece:
    """One encoder input cut from utterance ``item``: samples ``[start, end)``; of its codes, the
    coarse frames ``[keep_from, keep_from + keep_frames)`` are kept."""

    item: int
    start: int
    end: int
    keep_from: int
    keep_frames: int


def plan_pieces(item: int, num_samples: int, frame_samples: int, window_frames: int,
                context_frames: int) -> List[Piece]:
    """Cut an utterance of ``num_samples`` into pieces (one piece when it fits in a window).

    ``window_frames <= 0`` disables windowing. Pieces start on coarse-frame boundaries so that
    their frames coincide with the frames of the whole utterance.
    """
    total = math.ceil(num_samples / frame_samples)
    if window_frames <= 0 or total <= window_frames + 2 * context_frames:
        return [Piece(item, 0, num_samples, 0, total)]
    pieces = []
    for first in range(0, total, window_frames):
        last = min(total, first + window_frames)
        lo = max(0, first - context_frames)
        hi = min(total, last + context_frames)
        pieces.append(Piece(item, lo * frame_samples, min(num_samples, hi * frame_samples), first - lo, last - first))
    return pieces


@contextlib.contextmanager
def masked_convolutions(encoder: nn.Module, lengths: torch.Tensor, total: int) -> Iterator[None]:
    """Zero the input of every ``Conv1d`` in ``encoder`` beyond each row's valid length.

    ``lengths (B,)`` are valid input samples per row (multiples of the encoder's total stride) of an
    input of ``total`` samples; at a layer whose input has ``T`` steps, row ``b`` keeps
    ``lengths[b] * T / total`` steps.
    """

    def zero_tail(module: nn.Module, args):
        x = args[0]
        steps = x.shape[-1]
        if bool(((lengths * steps) % total).any()):
            raise RuntimeError(
                f"{type(module).__name__} input of {steps} steps does not divide the padded length {total}; "
                "pad every utterance to a multiple of the model's pad_multiple"
            )
        valid = lengths * steps // total
        keep = torch.arange(steps, device=x.device)[None, :] < valid[:, None]
        return (x * keep[:, None, :].to(x.dtype),) + tuple(args[1:])

    handles = [m.register_forward_pre_hook(zero_tail) for m in encoder.modules() if isinstance(m, nn.Conv1d)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def pad_multiple_of(model: nn.Module) -> int:
    """Padding multiple of ours or of the official ``snac.SNAC``."""
    multiple = getattr(model, "pad_multiple", None)
    if multiple is None:  # official package: hop_length * lcm(vq_strides[0], attn_window_size or 1)
        multiple = model.hop_length * math.lcm(model.vq_strides[0], getattr(model, "attn_window_size", None) or 1)
    return int(multiple)


def default_rows_per_call(device: torch.device) -> int:
    """How many rows of a batch one encoder call takes: 1 on CPU, all elsewhere.

    On CPU a batch is never faster than its rows one by one: the convolutions already use every
    core on one utterance, and B-times larger activations only add memory traffic (each Snake and
    residual sum streams the whole batch through memory). Measured on 2 cores with 8 utterances:
    equal lengths in one call took 1.4x the time of one by one; mixed lengths (padding to the
    longest row, plus one full masking pass per convolution) 3.5x.
    So on CPU rows go one at a time, each trimmed to its own padded length - the single-utterance
    path itself, with no masking needed.
    """
    return 1 if device.type == "cpu" else 0


@contextlib.contextmanager
def exact_cuda_math(device: torch.device) -> Iterator[None]:
    """On CUDA: IEEE fp32 convolutions and matmuls (no TF32) and deterministic cuDNN algorithms
    without autotuning, restored on exit; elsewhere nothing.

    Why: PyTorch runs cuDNN convolutions in TF32 by default (10-bit mantissa), which rounds each row
    differently depending on the kernel cuDNN picks, and with ``benchmark=True`` the pick depends on
    the batch shape; codes are an argmin over distances, so such differences flip codes. TF32 is set
    through the ``fp32_precision`` API (torch >= 2.9): mixing it with the legacy ``allow_tf32`` flags
    makes torch refuse to read them. What stays: cuDNN may still pick a different (deterministic)
    algorithm for a batch than for one row, so exactness on a GPU is measured, not proven
    (``tests/test_cuda_only.py``, ``benchmarks/gpu_check.sh``).
    """
    if device.type != "cuda":
        yield
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.conv.fp32_precision, matmul.fp32_precision, cudnn.deterministic, cudnn.benchmark)
    cudnn.conv.fp32_precision = "ieee"
    matmul.fp32_precision = "ieee"
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        cudnn.conv.fp32_precision, matmul.fp32_precision, cudnn.deterministic, cudnn.benchmark = saved


def _encode_rows(model: nn.Module, batch: torch.Tensor, lengths: torch.Tensor) -> List[torch.Tensor]:
    """Codes of a zero-padded ``batch (B, 1, T)`` whose rows are valid for ``lengths`` samples."""
    total = batch.shape[-1]
    if all(int(n) == total for n in lengths):
        return model.encode(batch)
    fast = getattr(model, "uses_fast_path", None)
    if fast is not None and fast():  # ours: masks applied in place by the fast encoder
        return model.encode_masked(batch, lengths)
    with masked_convolutions(model.encoder, lengths, total):  # official model, or ours with autograd
        return model.encode(batch)


@torch.no_grad()
def encode_exact(model: nn.Module, audios: Sequence[torch.Tensor],
                 rows_per_call: Optional[int] = None, cuda_exact_math: bool = True) -> List[List[torch.Tensor]]:
    """Encode 1-D signals of any lengths in one batch.

    Returns per signal the list of per-level codes ``[(T_0,), (T_1,), ...]``, equal to
    ``model.encode(audio[None, None])`` for that signal alone. All signals must be on one device.
    ``rows_per_call``: rows per encoder call (``None``: :func:`default_rows_per_call`; 0: all).
    ``cuda_exact_math=False`` keeps the caller's TF32/cuDNN settings on CUDA (faster, not exact:
    for measuring what :func:`exact_cuda_math` costs).
    """
    if not audios:
        return []
    multiple = pad_multiple_of(model)
    first = next(model.parameters())
    if rows_per_call is None:
        rows_per_call = default_rows_per_call(first.device)
    rows_per_call = rows_per_call if rows_per_call > 0 else len(audios)
    out: List[List[torch.Tensor]] = []
    for s in range(0, len(audios), rows_per_call):
        group = audios[s: s + rows_per_call]
        padded = [max(1, math.ceil(a.shape[-1] / multiple)) * multiple for a in group]
        total = max(padded)
        batch = torch.zeros(len(group), 1, total, device=first.device, dtype=group[0].dtype)
        for row, a in enumerate(group):
            batch[row, 0, : a.shape[-1]] = a
        with exact_cuda_math(first.device if cuda_exact_math else torch.device("cpu")):
            codes = _encode_rows(model, batch, torch.tensor(padded, device=first.device))
        for row, p in enumerate(padded):
            out.append([c[row, : c.shape[1] * p // total] for c in codes])
    return out


class BatchEncoder:
    """Encode many utterances with length-sorted batches and windows for long ones.

    ``encode(audios)`` returns per utterance an int32 array ``(frames, 7)`` (SNAC-24k layout), equal
    to encoding the utterance alone when it fits in one window.
    """

    def __init__(self, model: nn.Module, batch_size: int = 8, window_seconds: float = 30.0,
                 context_seconds: float = 0.5, dtype: torch.dtype = torch.float32,
                 max_batch_samples: Optional[int] = None, cuda_exact_math: bool = True):
        strides = list(model.vq_strides)
        if strides != [4, 2, 1]:
            raise ValueError(
                f"the 7-token frame layout needs vq_strides [4, 2, 1] (SNAC-24k), this model has {strides}"
            )
        self.model = model
        self.batch_size = max(1, int(batch_size))
        self.frame_samples = pad_multiple_of(model)
        rate = int(model.sampling_rate)
        self.window_frames = int(window_seconds * rate) // self.frame_samples if window_seconds > 0 else 0
        self.context_frames = math.ceil(context_seconds * rate / self.frame_samples) if context_seconds > 0 else 0
        if window_seconds > 0 and self.window_frames < 1:
            raise ValueError(f"window_seconds={window_seconds} is shorter than one frame "
                             f"({self.frame_samples / rate:.3f} s)")
        self.dtype = dtype
        self.max_batch_samples = max_batch_samples
        self.cuda_exact_math = cuda_exact_math  # False: only to measure what exactness costs on CUDA
        self.device = next(model.parameters()).device

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def batches(self, pieces: List[Piece]) -> Iterator[List[Piece]]:
        """Length-sorted batches of at most ``batch_size`` pieces (and ``max_batch_samples``)."""
        order = sorted(pieces, key=lambda p: p.end - p.start, reverse=True)
        batch: List[Piece] = []
        for p in order:
            longest = (batch[0].end - batch[0].start) if batch else p.end - p.start
            too_big = self.max_batch_samples and batch and longest * (len(batch) + 1) > self.max_batch_samples
            if len(batch) == self.batch_size or too_big:
                yield batch
                batch = []
            batch.append(p)
        if batch:
            yield batch

    @torch.no_grad()
    def encode(self, audios: Sequence[np.ndarray]) -> List[np.ndarray]:
        """``audios``: 1-D float arrays at the model rate -> per utterance ``(frames, 7)`` int32."""
        pieces = [p for i, a in enumerate(audios)
                  for p in plan_pieces(i, len(a), self.frame_samples, self.window_frames, self.context_frames)]
        kept: dict = {}
        for batch in self.batches(pieces):
            signals = [torch.from_numpy(np.ascontiguousarray(audios[p.item][p.start:p.end], dtype=np.float32))
                       .to(self.device) for p in batch]
            with self._autocast():
                codes = encode_exact(self.model, signals, cuda_exact_math=self.cuda_exact_math)
            for p, levels in zip(batch, codes):
                frames = codes_to_frames([c[None] for c in levels])[0]
                kept[(p.item, p.start)] = frames[p.keep_from: p.keep_from + p.keep_frames].to(torch.int32).cpu()
        parts: List[List[torch.Tensor]] = [[] for _ in audios]
        for p in pieces:  # pieces are in time order within each utterance
            parts[p.item].append(kept[(p.item, p.start)])
        return [torch.cat(x).numpy() if x else np.zeros((0, FRAME_SIZE), np.int32) for x in parts]
