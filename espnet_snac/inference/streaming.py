"""Streaming decoding: audio from SNAC code frames as they arrive, equal to the full decode.

The decoder is a stack of convolutions (plus windowed attention in the 32/44 kHz models), so an output
sample depends on a bounded span of latent frames: its receptive field, derived here from the
layers themselves. With the exact lookahead, :class:`StreamingDecoder` runs the decoder as a chain of
stages (one per DecoderBlock), each of which computes only its outputs whose inputs are final, from
the tail of its input they read: the audio equals ``SNAC.decode`` of the whole stream. With a
smaller lookahead it decodes, per push, a window of the latent (left context + new frames +
lookahead, zero-padded at its right edge as if the stream ended there) and emits the new frames of
it: lower latency, some error. Either way the work per push is bounded. The noise blocks draw their
noise by absolute position (``noise_seed``), so exactness holds with noise on.

Frames are ``(B, F, K)`` in the layout of :mod:`espnet_snac.model.frames` (``K = 7`` for 24 kHz, the
Orpheus order). Positions below are latent frames (``hop_length`` samples each) unless named frames.
"""
from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import nn

from espnet_snac.model.frames import frame_order, frames_to_codes, level_sizes_of
from espnet_snac.model.layers import Decoder, DecoderBlock, LocalMHA, NoiseBlock, ResidualUnit


class ReceptiveField(NamedTuple):
    """What a window decode needs to reproduce the full decode (worst case over frame phases)."""

    left: int  # latent frames of left context before the first emitted latent frame
    lookahead_frames: int  # coarse frames after the last emitted frame
    align: int  # window starts and lengths are multiples of this many latent frames (attention)


def _input_span(module: nn.Module, lo: int, hi: int, rate: int, bounds: List[int]) -> Tuple[int, int, int]:
    """Input positions ``[lo', hi']`` (inclusive) that output positions ``[lo, hi]`` of ``module`` read.

    ``rate`` is the module's output samples per latent frame; returns the input rate too. ``bounds``
    accumulates ``[min, max]`` of the latent frames whose extent holds every position read, at every
    layer: a window of latent frames reproduces the outputs only if it covers them all, because it
    zero-pads each layer at its own edges.
    """
    if isinstance(module, nn.ConvTranspose1d):
        (k,), (s,), (p,), (d,) = module.kernel_size, module.stride, module.padding, module.dilation
        # input i feeds outputs i * s - p + tap * d, tap = 0 .. k - 1
        lo, hi, rate = -(-(lo + p - d * (k - 1)) // s), (hi + p) // s, rate // s
    elif isinstance(module, nn.Conv1d):
        (k,), (s,), (p,), (d,) = module.kernel_size, module.stride, module.padding, module.dilation
        if s != 1 or not isinstance(p, int):
            raise NotImplementedError(f"streaming: strided or string-padded Conv1d in the decoder ({module})")
        lo, hi = lo - p, hi - p + d * (k - 1)
    elif isinstance(module, LocalMHA):
        w = module.window_size
        lo, hi = lo // w * w, (hi // w + 1) * w - 1
    elif isinstance(module, NoiseBlock):  # x + noise * linear(x)
        return _input_span(module.linear, lo, hi, rate, bounds)
    elif isinstance(module, ResidualUnit):
        block_lo, block_hi, _ = _input_span(module.block, lo, hi, rate, bounds)
        lo, hi = min(lo, block_lo), max(hi, block_hi)
    elif isinstance(module, (nn.Sequential, DecoderBlock, Decoder)):
        layers = module if isinstance(module, nn.Sequential) else (
            module.block if isinstance(module, DecoderBlock) else module.model)
        for layer in reversed(layers):
            lo, hi, rate = _input_span(layer, lo, hi, rate, bounds)
        return lo, hi, rate
    elif any(isinstance(m, (nn.Conv1d, nn.ConvTranspose1d, LocalMHA)) for m in module.modules()):
        raise NotImplementedError(f"streaming: unknown decoder module {type(module).__name__}; its "
                                  "receptive field cannot be derived")
    # anything else (Snake, Tanh) acts sample by sample
    bounds[0], bounds[1] = min(bounds[0], lo // rate), max(bounds[1], hi // rate)
    return lo, hi, rate


def _hop(decoder: nn.Module) -> int:
    return math.prod(m.stride[0] for m in decoder.modules() if isinstance(m, nn.ConvTranspose1d))


def latent_span(decoder: nn.Module, first: int, last: int) -> Tuple[int, int]:
    """Latent frames ``[lo, hi]`` a window must cover to reproduce output latent frames ``first .. last``."""
    hop = _hop(decoder)
    bounds = [first, last]
    _input_span(decoder, first * hop, (last + 1) * hop - 1, hop, bounds)
    return bounds[0], bounds[1]


def receptive_field(model) -> ReceptiveField:
    """Left context, exact lookahead and window alignment of ``model``'s decoder.

    Derived from the kernels, dilations, paddings and strides of every convolution and the window of
    every attention layer; the lookahead is the worst case over the position of a frame within an
    attention window.
    """
    stride = model.vq_strides[0]
    align, rate = 1, 1
    for module in model.decoder.modules():  # pre-order = forward order
        if isinstance(module, nn.ConvTranspose1d):
            rate *= module.stride[0]
        elif isinstance(module, LocalMHA):
            # attention windows sit at absolute multiples of window_size at that layer's rate
            align = math.lcm(align, module.window_size // math.gcd(module.window_size, rate))
    period = math.lcm(align, stride) // stride  # frame phases that can differ
    base = 64 * period  # far from the start, so that no span is clipped
    left, lookahead = 0, 0
    for frame in range(base, base + period):
        lo, _ = latent_span(model.decoder, frame * stride, frame * stride)
        left = max(left, frame * stride - lo)
        _, hi = latent_span(model.decoder, frame * stride - 1, frame * stride - 1)
        lookahead = max(lookahead, -(-(hi + 1) // stride) - frame)
    return ReceptiveField(left, lookahead, align)


class _Stage:
    """A run of decoder layers evaluated incrementally: each call computes only its outputs that are
    final (every position they read, at every layer, is final), reading back just the input tail
    they need. Chained stages reproduce the full decode; only each stage's short context is computed
    twice (about 2x the CPU of the full decode for 24 kHz, against 5-6x for re-decoded windows).
    """

    def __init__(self, layers: List[nn.Module]):
        self.module = nn.Sequential(*layers)
        self.stride, self.align, self.noise = 1, 1, []
        for module in self.module.modules():  # pre-order = forward order
            if isinstance(module, nn.ConvTranspose1d):
                self.stride *= module.stride[0]
            elif isinstance(module, LocalMHA):
                w = module.window_size
                self.align = math.lcm(self.align, w // math.gcd(w, self.stride))
            elif isinstance(module, NoiseBlock):
                self.noise.append((module, self.stride))
        # input positions read by output q, as offsets that repeat with period align * stride
        self.period = self.align * self.stride
        base = 64 * self.period
        self.lo_offset, self.hi_offset = [], []
        for phase in range(self.period):
            q = base + phase
            bounds = [q // self.stride, q // self.stride]
            _input_span(self.module, q, q, self.stride, bounds)
            self.lo_offset.append(bounds[0] - 64 * self.align)
            self.hi_offset.append(bounds[1] - 64 * self.align)
        self.reset()

    def reset(self) -> None:
        self.buffer: Optional[torch.Tensor] = None  # input positions self.start .. self.start + length
        self.start = 0
        self.done = 0  # outputs returned
        self.last_input = 0  # input positions read by the last call

    def _lo(self, q: int) -> int:
        return self.lo_offset[q % self.period] + q // self.period * self.align

    def advance(self, x: Optional[torch.Tensor], end: bool) -> Optional[torch.Tensor]:
        """Append inputs ``x (B, C, n)``; return the new final outputs (all of them when ``end``)."""
        if x is not None and x.shape[-1]:
            self.buffer = x if self.buffer is None else torch.cat([self.buffer, x], dim=-1)
        if self.buffer is None:
            return None
        available = self.start + self.buffer.shape[-1]
        if end:
            until = available * self.stride
        else:  # the largest prefix of outputs whose reads all lie below `available`
            until = 1 + max(phase + (available - 1 - hi) // self.align * self.period
                            for phase, hi in enumerate(self.hi_offset))
            until = min(until, available * self.stride)
        if until <= self.done:
            return None
        first = max(0, self._lo(self.done)) // self.align * self.align
        x = self.buffer[..., first - self.start:]
        x = nn.functional.pad(x, (0, -x.shape[-1] % self.align))  # attention needs whole windows
        self.last_input = x.shape[-1]
        for block, upsampling in self.noise:
            block.offset = first * upsampling
        y = self.module(x)[..., self.done - first * self.stride: until - first * self.stride]
        self.done = until
        keep = min(available, max(0, self._lo(until)) // self.align * self.align)
        self.buffer, self.start = self.buffer[..., keep - self.start:], keep
        return y


def _stages(decoder: nn.Module) -> List[_Stage]:
    """Cut the decoder into stages at its DecoderBlocks."""
    stages, pending = [], []
    for layer in decoder.model:
        if isinstance(layer, DecoderBlock):
            if pending:
                stages.append(_Stage(pending))
            stages.append(_Stage([layer]))
            pending = []
        else:
            pending.append(layer)
    if pending:
        stages.append(_Stage(pending))
    return stages


class StreamingDecoder:
    """Decode SNAC frames incrementally.

    Args:
        model: a :class:`espnet_snac.model.snac.SNAC` (eval mode; its device is used).
        lookahead_frames: coarse frames held back before a frame is emitted. ``None`` = the exact
            lookahead (:meth:`exact_lookahead_frames`), which makes the concatenated output equal to
            ``model.decode`` of all frames. Smaller values lower the latency at some error.
        noise_seed: seed of the decoder noise, drawn by absolute position; ``None`` draws one from
            the global RNG (see :attr:`noise_seed`), so the output equals
            ``model.decode(codes, noise_seed=decoder.noise_seed)``.
        add_noise: ``False`` switches the noise blocks off (``model.decode(..., add_noise=False)``).

    The work of a :meth:`push` depends on the number of pushed frames only, not on the length of
    the stream: :attr:`last_window_frames` latent frames enter the decoder (exact: the first stage's
    input, about pushed + 6 latent frames for 24 kHz; approximate: left context + pushed frames +
    lookahead, aligned to attention windows).
    """

    def __init__(self, model, lookahead_frames: Optional[int] = None, noise_seed: Optional[int] = None,
                 add_noise: bool = True):
        self.model = model
        self.field = receptive_field(model)
        if lookahead_frames is None:
            lookahead_frames = self.field.lookahead_frames
        if int(lookahead_frames) != lookahead_frames or lookahead_frames < 0:
            raise ValueError(f"lookahead_frames must be an integer >= 0, got {lookahead_frames!r}")
        self.lookahead_frames = int(lookahead_frames)
        if noise_seed is None and add_noise:
            noise_seed = int(torch.randint(0, 2**62, ()).item())
        self.noise_seed = noise_seed
        self.add_noise = add_noise
        self.level_sizes = level_sizes_of(model.vq_strides)
        self.frame_size = len(frame_order(self.level_sizes))
        self.stride = model.vq_strides[0]  # latent frames per coarse frame
        self.hop = _hop(model.decoder)  # samples per latent frame
        self.samples_per_frame = self.hop * self.stride
        #: latent frames that entered the decoder in the last push/flush (see the class docstring)
        self.last_window_frames = 0
        # exact lookahead: run the decoder as a chain of incremental stages (one per DecoderBlock)
        self._stages = _stages(model.decoder) if self.lookahead_frames >= self.field.lookahead_frames else None
        self.reset()

    @staticmethod
    def exact_lookahead_frames(model) -> int:
        """Smallest lookahead (coarse frames) at which streaming equals the full decode."""
        return receptive_field(model).lookahead_frames

    def reset(self) -> None:
        """Forget the stream (the next push starts a new one)."""
        self._buffer: Optional[torch.Tensor] = None  # (B, frames, K) from frame self._buffer_start
        self._buffer_start = 0
        self._batch: Optional[int] = None
        self._final: Optional[torch.Tensor] = None  # exact path: final audio not yet returned
        for stage in self._stages or ():
            stage.reset()
        self._received = 0  # frames pushed
        self._emitted = 0  # frames whose audio has been returned

    @property
    def latency_samples(self) -> int:
        """Samples that arrive before a frame's audio can be emitted (the lookahead)."""
        return self.lookahead_frames * self.samples_per_frame

    def push(self, frames: torch.Tensor) -> torch.Tensor:
        """Add ``frames (B, F, K)``; returns the audio that is final so far, ``(B, 1, samples)``."""
        frames = self._check(frames)
        self._batch = frames.shape[0]
        self._received += frames.shape[1]
        if self._stages is not None:
            self._run_stages(frames, end=False)
        else:
            self._buffer = frames if self._buffer is None else torch.cat([self._buffer, frames], dim=1)
        return self._emit(max(self._emitted, self._received - self.lookahead_frames))

    def flush(self) -> torch.Tensor:
        """End of stream: the remaining audio ``(B, 1, samples)``; the decoder is then reset.

        With attention (32/44 kHz), a stream that ends inside an attention window is decoded as if
        zero latents followed (``SNAC.decode`` refuses such lengths).
        """
        if self._stages is not None and self._received:
            self._run_stages(None, end=True)
        audio = self._emit(self._received)
        self.reset()
        return audio

    # ------------------------------------------------------------------ internals
    def _check(self, frames: torch.Tensor) -> torch.Tensor:
        frames = torch.as_tensor(frames)
        if frames.dim() != 3 or frames.shape[-1] != self.frame_size:
            raise ValueError(f"frames must have shape (B, F, {self.frame_size}), got {tuple(frames.shape)}")
        if frames.dtype.is_floating_point or frames.dtype == torch.bool:
            raise ValueError(f"frames must hold integer codes, got dtype {frames.dtype}")
        if self._batch is not None and frames.shape[0] != self._batch:
            raise ValueError(f"batch size changed from {self._batch} to {frames.shape[0]} within a "
                             "stream; call flush() or reset() first")
        if frames.numel() and (int(frames.min()) < 0 or int(frames.max()) >= self.model.codebook_size):
            raise ValueError(f"codes must be in [0, {self.model.codebook_size}), got min {int(frames.min())}, "
                             f"max {int(frames.max())}")
        device = next(self.model.parameters()).device
        return frames.to(device=device, dtype=torch.long)

    def _window_start(self, first_frame: int) -> int:
        """First latent frame of a window that reproduces latent frames from ``first_frame`` on."""
        start = first_frame * self.stride - self.field.left
        return max(0, start // self.field.align * self.field.align)

    def _empty(self) -> torch.Tensor:
        param = next(self.model.parameters())
        return torch.zeros(self._batch or 0, 1, 0, device=param.device, dtype=param.dtype)

    def _run_stages(self, frames: Optional[torch.Tensor], end: bool) -> None:
        """Exact path: feed the latent of new ``frames`` through the stages, collect final audio."""
        with torch.inference_mode():
            x = None
            if frames is not None and frames.shape[1]:
                x = self.model.quantizer.from_codes(frames_to_codes(frames, self.level_sizes))
            with self.model.noise(seed=self.noise_seed, enabled=self.add_noise):
                for stage in self._stages:
                    x = stage.advance(x, end)
                    if x is None and not end:
                        break
            self.last_window_frames = self._stages[0].last_input
            if x is not None:
                self._final = x if self._final is None else torch.cat([self._final, x], dim=-1)

    def _emit(self, until: int) -> torch.Tensor:
        """Return the audio of frames ``self._emitted .. until - 1``."""
        if until <= self._emitted:
            return self._empty()
        if self._stages is not None:  # final already; hold back to the frame boundary
            n = (until - self._emitted) * self.samples_per_frame
            audio, self._final = self._final[..., :n], self._final[..., n:]
            self._emitted = until
            return audio
        start = self._window_start(self._emitted)
        first = start // self.stride  # the window's first latent frame lies in this coarse frame
        codes = frames_to_codes(self._buffer[:, first - self._buffer_start:], self.level_sizes)
        with torch.inference_mode():
            z = self.model.quantizer.from_codes(codes)[..., start - first * self.stride:]
            # attention needs whole windows; what follows the last frame only affects held-back samples
            z = nn.functional.pad(z, (0, -z.shape[-1] % self.field.align))
            self.last_window_frames = z.shape[-1]
            with self.model.noise(seed=self.noise_seed, enabled=self.add_noise, start_frame=start):
                audio = self.model.decoder(z)
        begin = (self._emitted * self.stride - start) * self.hop
        audio = audio[..., begin: begin + (until - self._emitted) * self.samples_per_frame]
        self._emitted = until
        # keep only the frames a later window can start at
        keep = self._window_start(self._emitted) // self.stride
        self._buffer = self._buffer[:, keep - self._buffer_start:]
        self._buffer_start = keep
        return audio
