"""Inference fast path of the SNAC encoder and decoder (no autograd, eval mode).

The plain modules spend most of their CPU time outside the convolutions: each Snake allocates five
full-size temporaries (mul, sin, pow, mul, add), every weight-normalised conv recomputes its weight
on every call, residual sums allocate once more, and on CPU every fresh activation-sized tensor is
fresh memory whose first write page-faults. This path walks the same modules and computes:

- Snake into a reused buffer with in-place ``sin_ / square_ / mul_ / add_``: the same arithmetic in
  the same order, hence bit-identical to :class:`espnet_snac.model.layers.Snake1d`;
- outputs of the ops it owns in buffers reused within a block (:class:`Workspace`);
- convolutions with weights folded once (``g * v / ||v||``, the value the parametrization yields) and
  cached until a parameter changes (in place, by an optimizer or a load, or by ``.to()``);
- residual sums in place (``y += x``, bit-identical to ``x + y``).

Encoder outputs, hence codes, are bit-identical to the plain modules: its convolutions are the plain
``F.conv1d`` calls, or kernels proven to round like them (:mod:`espnet_snac.model.kernels`: depthwise,
Snake, and kernel-1 convolutions of one utterance with the residual sum fused), because any
other algorithm rounds differently, and about one code in 10^4 sits within 1e-6 of a tie (README,
"Speed"). The decoder additionally runs kernel-1 convolutions (also the NoiseBlocks' projection)
as GEMMs, each residual unit's last one accumulated straight into the unit's input; transposed
convolutions as one GEMM over polyphase weights and the stacked shifted inputs (the CPU conv
kernels re-layout wide weights on every call); on CPU the depthwise convolutions as multiply-adds
over shifted views, or, where a C compiler is at hand, Snake and each residual unit's Snake +
depthwise conv as fused one-pass kernels. All equal up to float rounding, checked to 1e-4 by the
tests. The NoiseBlocks draw their noise through the module (same generator, same order). LocalMHA
is called as usual. Everything else - state-dict keys, checkpoints, training - stays on the plain
path.
"""
from __future__ import annotations

import ctypes
import math
import sys
import threading
import weakref
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from espnet_snac.model import kernels
from espnet_snac.model.layers import (Decoder, DecoderBlock, Encoder, EncoderBlock, NoiseBlock, ResidualUnit,
                                 Snake1d)


def snake(x: torch.Tensor, alpha: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x + sin(alpha x)^2 / (alpha + 1e-9)`` with a single temporary (or into ``out``, which must
    not overlap ``x``); bit-identical to Snake1d."""
    y = torch.mul(alpha, x, out=out)
    return y.sin_().square_().mul_((alpha + 1e-9).reciprocal()).add_(x)


# Private torch API (present in the torch versions we support); without it buffers are not reused.
_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _storage_uses(t: torch.Tensor) -> int:
    """References to ``t``'s storage (tensors and views holding it, plus one for the query)."""
    return _use_count(t.untyped_storage()._cdata)


_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14
_libc = None


def advise_huge_pages(t: torch.Tensor) -> None:
    """Ask Linux to back the 2 MiB-aligned interior of a large CPU buffer with transparent huge pages
    (where THP is in ``madvise`` mode): its first write then faults once per 2 MiB instead of once
    per 4 KiB. Advisory only: nothing happens elsewhere or when the call fails."""
    global _libc
    if t.nbytes < 4 * _HUGE_PAGE or not sys.platform.startswith("linux"):
        return
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        except (OSError, AttributeError):
            _libc = False
    if not _libc:
        return
    start = -(-t.data_ptr() // _HUGE_PAGE) * _HUGE_PAGE
    end = (t.data_ptr() + t.nbytes) // _HUGE_PAGE * _HUGE_PAGE
    if end > start:
        _libc.madvise(start, end - start, _MADV_HUGEPAGE)


class BufferPool:
    """Flat activation buffers kept from one call to the next (a model's :class:`Workspace` memory).

    On CPU, memory freed after a call goes back to the system (large blocks are ``mmap``-ed), so the
    next call's first write to every 4 KiB page faults again: a 7.8 s decode page-faulted 222k times
    and spent 0.41 s of system time, a third of its CPU time. Buffers kept here are written again
    without faults. A request takes the smallest idle buffer at least as large (a view of its front),
    else a new one; at most ``max_bytes`` are kept (larger working sets allocate the rest per call).
    ``clear()`` frees them; pickling and copying a model carry none.
    """

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes = max_bytes
        self._flat: Dict[tuple, list] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self._idle = _storage_uses(torch.empty(0)) if _use_count is not None else 0

    def take(self, shape: Tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """An uninitialised ``shape`` tensor (dtype and device of ``like``) that nothing else holds."""
        numel = math.prod(shape)
        if _use_count is None:
            return torch.empty(shape, dtype=like.dtype, device=like.device)
        with self._lock:  # the idle check and the view that makes the buffer busy, as one step
            bases = self._flat.setdefault((like.dtype, like.device), [])
            fits = [b for b in bases if b.numel() >= numel and _storage_uses(b) == self._idle]
            if fits:
                return min(fits, key=torch.Tensor.numel)[:numel].view(shape)
            base = torch.empty(numel, dtype=like.dtype, device=like.device)
            if base.device.type == "cpu":
                advise_huge_pages(base)
            if self._bytes + base.nbytes <= self.max_bytes:
                bases.append(base)
                self._bytes += base.nbytes
            return base.view(shape)

    def nbytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._flat.clear()
            self._bytes = 0

    def __getstate__(self) -> dict:
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_bytes"])

    def __deepcopy__(self, memo) -> "BufferPool":
        return BufferPool(self.max_bytes)


class Workspace:
    """Output buffers reused within one pass.

    On CPU a fresh activation-sized tensor (tens of MB) is a fresh ``mmap``: its first write
    page-faults every 4 KiB and costs several times the arithmetic written into it (a Snake on
    64 x 240k samples: 23 ms into new memory, 5 ms into a reused buffer). :meth:`empty` hands out
    views of buffers whose storage nothing else references, so a buffer is reused as soon as the
    activation it held is dead, and never while it is alive. With a :class:`BufferPool` the buffers
    come from (and stay in) the pool, across blocks and calls.
    """

    def __init__(self, pool: Optional[BufferPool] = None) -> None:
        self._pool = pool
        self._buffers: Dict[tuple, list] = {}
        # the count of a buffer that only this object holds
        self._idle = _storage_uses(torch.empty(0)) if _use_count is not None else 0

    def empty(self, shape: Tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        if self._pool is not None:
            return self._pool.take(tuple(shape), like)
        if _use_count is None:
            return torch.empty(shape, dtype=like.dtype, device=like.device)
        bases = self._buffers.setdefault((tuple(shape), like.dtype, like.device), [])
        for base in bases:
            if _storage_uses(base) == self._idle:
                return base.view(shape)
        base = torch.empty(shape, dtype=like.dtype, device=like.device)
        bases.append(base)
        return base.view(shape)


def _weight_sources(conv: nn.Module) -> Tuple[torch.Tensor, ...]:
    if parametrize.is_parametrized(conv, "weight"):
        return (conv.parametrizations.weight.original0, conv.parametrizations.weight.original1)
    return (conv.weight,)


class FoldedWeights:
    """Conv weights with weight norm applied, recomputed only when one of their sources changed.

    A source counts as changed when its storage, device, dtype or in-place version counter differs
    from the cached one (``load_state_dict``, optimizer steps and ``.to()`` all change one of them).
    The polyphase form of each transposed convolution is cached the same way.
    """

    def __init__(self) -> None:
        # conv module -> {form: (source key, folded weight)}; weak so that dropped modules go away.
        self._store: "weakref.WeakKeyDictionary[nn.Module, Dict[str, Tuple[tuple, torch.Tensor]]]" = (
            weakref.WeakKeyDictionary())

    @staticmethod
    def _key(sources: Tuple[torch.Tensor, ...]) -> tuple:
        return tuple((p.data_ptr(), p.device, p.dtype, p._version) for p in sources)

    def get(self, conv: nn.Module, form: str = "plain") -> torch.Tensor:
        sources = _weight_sources(conv)
        key = self._key(sources)
        forms = self._store.setdefault(conv, {})
        hit = forms.get(form)
        if hit is not None and hit[0] == key:
            return hit[1]
        with torch.no_grad():
            weight = conv.weight.detach()
            if form == "polyphase":
                weight = polyphase_weight(weight, conv.stride[0])
        forms[form] = (key, weight)
        return weight

    def clear(self) -> None:
        self._store.clear()


def polyphase_weight(weight: torch.Tensor, stride: int) -> torch.Tensor:
    """ConvTranspose1d weight ``(C_in, C_out, K)`` -> stride-1 conv weight ``(stride * C_out, M, C_in)``
    in the tap-major layout of :func:`conv_taps`.

    A transposed convolution with stride ``s`` writes output sample ``q * s + r`` from inputs
    ``q - m`` through tap ``m * s + r``. Grouping the taps by phase ``r`` gives ``s`` ordinary
    convolutions of ``M = ceil(K / s)`` taps (kernel flipped, because a convolution correlates),
    stacked here as output channels ``r * C_out + c``.
    """
    c_in, c_out, k = weight.shape
    taps = math.ceil(k / stride)
    w = F.pad(weight, (0, taps * stride - k))  # (C_in, C_out, M * s), zero taps past K
    w = w.reshape(c_in, c_out, taps, stride).flip(2)  # [ci, co, j, r] = tap (M-1-j) * s + r
    return w.permute(3, 1, 2, 0).reshape(stride * c_out, taps, c_in).contiguous()


def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
              out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Kernel-1 conv as one GEMM ``(C_out, C_in) @ (B, C_in, T)``; skips the per-call weight reorder
    of the CPU conv kernels, which dominates for wide layers at low frame rates."""
    y = torch.matmul(weight[:, :, 0], x, out=out)
    return y if bias is None else y.add_(bias[:, None])


def conv_taps(x: torch.Tensor, weight: torch.Tensor, pad: int, out: torch.Tensor, ws: "Workspace") -> torch.Tensor:
    """Stride-1, ungrouped conv with a short kernel, zero padding ``pad``, as one GEMM over the
    stacked shifted inputs: ``weight (C_out, K, C_in)`` (tap-major, see :func:`polyphase_weight`)
    times columns ``(B, K * C_in, L)`` (a buffer of ``ws``); into ``out`` ``(B, C_out, L)``,
    ``L = T + 2 pad - K + 1``."""
    c_out, taps, c_in = weight.shape
    b, _, t = x.shape
    length = t + 2 * pad - taps + 1
    cols = ws.empty((b, taps, c_in, length), x)
    for j in range(taps):  # cols[:, j, :, i] = x[..., i + j - pad], zero outside x
        lo, hi = max(0, pad - j), min(length, t + pad - j)
        cols[:, j, :, :lo].zero_()
        cols[:, j, :, hi:].zero_()
        if hi > lo:
            cols[:, j, :, lo:hi].copy_(x[..., lo + j - pad: hi + j - pad])
    return torch.matmul(weight.reshape(c_out, taps * c_in), cols.view(b, taps * c_in, length), out=out)


def depthwise(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], dilation: int,
              out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Depthwise "same" conv ``(C, 1, K)`` (odd K, padding ``dilation * (K - 1) / 2``) as one
    multiply-add per tap over shifted views: no padded copy, and into a reused buffer (the CPU
    depthwise kernel re-lays out its input and output on every call)."""
    taps = weight.shape[-1]
    half = taps // 2
    w = weight[:, 0, :, None]  # (C, K, 1)
    if out is None:
        out = torch.empty_like(x)
    if bias is None:
        torch.mul(x, w[:, half], out=out)
    else:
        torch.addcmul(bias[:, None], x, w[:, half], out=out)
    t = x.shape[-1]
    for j in range(taps):
        shift = (j - half) * dilation  # out[i] += w[j] * x[i + shift]
        if j == half or abs(shift) >= t:
            continue
        if shift > 0:
            out[..., : t - shift].addcmul_(x[..., shift:], w[:, j])
        else:
            out[..., -shift:].addcmul_(x[..., : t + shift], w[:, j])
    return out


def is_pointwise(conv: nn.Conv1d) -> bool:
    """Kernel-1, ungrouped, unpadded, stride-1 conv: a matrix product over channels."""
    return conv.kernel_size[0] == 1 and conv.groups == 1 and conv.padding[0] == 0 and conv.stride[0] == 1


def is_same_depthwise(conv: nn.Conv1d) -> bool:
    """Stride-1 depthwise conv with an odd kernel and "same" padding (the residual units' first conv)."""
    k, d = conv.kernel_size[0], conv.dilation[0]
    return (conv.groups == conv.in_channels == conv.out_channels and conv.stride[0] == 1 and k % 2 == 1
            and conv.padding[0] == d * (k - 1) // 2 and conv.padding_mode == "zeros")


def is_single_input_same(conv: nn.Conv1d) -> bool:
    """Stride-1 conv from one input channel with an odd kernel and "same" zero padding (the encoder's
    first layer)."""
    k, d = conv.kernel_size[0], conv.dilation[0]
    return (conv.in_channels == 1 and conv.groups == 1 and conv.stride[0] == 1 and k % 2 == 1
            and conv.padding[0] == d * (k - 1) // 2 and conv.padding_mode == "zeros")


def conv_transpose_polyphase(x: torch.Tensor, conv: nn.ConvTranspose1d, weight: torch.Tensor,
                             ws: Optional["Workspace"] = None) -> torch.Tensor:
    """``conv(x)`` computed as one stride-1 convolution plus an interleave; ``x (B, C_in, T)``."""
    ws = ws or Workspace()
    stride, pad, out_pad = conv.stride[0], conv.padding[0], conv.output_padding[0]
    k = conv.kernel_size[0]
    b, _, t = x.shape
    taps = weight.shape[1]
    c_out = weight.shape[0] // stride
    frames = t + taps - 1
    y = conv_taps(x, weight, taps - 1, out=ws.empty((b, stride * c_out, frames), x), ws=ws)  # (B, s * C_out, T + M - 1)
    full = ws.empty((b, c_out, frames * stride), x)
    full.view(b, c_out, frames, stride).copy_(y.view(b, stride, c_out, frames).permute(0, 2, 3, 1))  # sample q*s + r
    del y
    length = (t - 1) * stride - 2 * pad + k + out_pad
    full = full[..., pad: pad + length]
    if conv.bias is not None:
        full.add_(conv.bias[:, None])
    return full


class FastPath:
    """Runs :class:`Encoder` / :class:`Decoder` modules with the fast kernels of this module.

    ``lengths`` (encoder only): per row, the valid input samples of a batch of ``total`` samples;
    the input of every Conv1d is then zeroed beyond each row's valid length at that layer's
    resolution (see :mod:`espnet_snac.tokens.batching`), done in place on the tail only.
    ``exact=False`` (decoder) also runs kernel-1 convolutions as GEMMs and, on CPU, depthwise ones
    as shifted multiply-adds, or with ``native`` (and a C compiler, :mod:`espnet_snac.model.kernels`)
    Snake and Snake + depthwise conv as fused kernels: faster, equal up to float rounding. With
    ``exact`` and ``native``, depthwise convolutions on CPU run the kernel that rounds like
    ``F.conv1d`` (:class:`espnet_snac.model.kernels.ExactDepthwise`), bit for bit.
    """

    def __init__(self, weights: FoldedWeights, lengths: Optional[torch.Tensor] = None, total: int = 0,
                 exact: bool = True, native: bool = True, pool: Optional[BufferPool] = None):
        self.weights = weights
        self.pool = pool
        self.exact = exact
        self.native = native
        if lengths is not None:  # plain ints: one device sync here instead of one per layer
            lengths = [int(n) for n in (lengths.tolist() if torch.is_tensor(lengths) else lengths)]
        self.lengths = lengths
        self.total = total
        self.ws = Workspace(pool)

    # ------------------------------------------------------------------ layers
    def conv(self, conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
        if self.lengths is not None:
            self._zero_tail(x)
        if self.native and is_same_depthwise(conv) and kernels.usable(x):
            weight, out = self.weights.get(conv), self.ws.empty(x.shape, x)
            if not self.exact:
                return kernels.depthwise_exact(x, weight, conv.bias, conv.dilation[0], True, out)
            y = kernels.exact_depthwise(x, weight, conv.bias, conv.dilation[0], out)
            if y is not None:
                return y
        if self.exact and is_pointwise(conv):
            y = self.exact_pointwise(conv, x)
            if y is not None:
                return y
        if self.exact and self.native and is_single_input_same(conv) and x.shape[0] == 1 and kernels.usable(x):
            # the encoder's first layer: C depthwise rows of the one input channel, rounded like oneDNN
            y = kernels.exact_depthwise(x, self.weights.get(conv), conv.bias, conv.dilation[0],
                                        self.ws.empty((1, conv.out_channels, x.shape[-1]), x))
            if y is not None:
                return y
        if not self.exact and conv.stride[0] == 1:
            b, _, t = x.shape
            if is_pointwise(conv):
                return pointwise(x, self.weights.get(conv), conv.bias, out=self.ws.empty((b, conv.out_channels, t), x))
            if is_same_depthwise(conv) and x.device.type == "cpu":  # cuDNN has a one-kernel depthwise conv
                return depthwise(x, self.weights.get(conv), conv.bias, conv.dilation[0], out=self.ws.empty(x.shape, x))
        return F.conv1d(x, self.weights.get(conv), conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)

    def exact_pointwise(self, conv: nn.Conv1d, x: torch.Tensor,
                        residual: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """Kernel-1 ``conv(x)`` (plus ``residual``) bit for bit like ``F.conv1d`` (then ``+ residual``),
        through the fused kernel into a reused buffer where it reproduces ``F.conv1d`` for this shape
        (:class:`espnet_snac.model.kernels.ExactPointwise`); None for shapes it does not take.
        ``x``'s tail is zeroed first."""
        weight = self.weights.get(conv)
        if not (self.native and kernels.exact_pointwise.takes(x, weight)):
            return None
        if self.lengths is not None:
            self._zero_tail(x)
        decided, order = kernels.exact_pointwise.known(x, weight, conv.bias)
        if decided and order is None:
            return None
        out = self.ws.empty((1, conv.out_channels, x.shape[-1]), x)
        return kernels.exact_pointwise(x, weight, conv.bias, out, residual)

    def _zero_tail(self, x: torch.Tensor) -> None:
        """Zero, in place, the steps of a conv input ``x (B, C, T)`` past each row's valid length."""
        steps = x.shape[-1]
        if any(n * steps % self.total for n in self.lengths):
            raise RuntimeError(f"conv input of {steps} steps does not divide the padded length {self.total}; "
                               "pad every utterance to a multiple of the model's pad_multiple")
        for row, n in enumerate(self.lengths):
            valid = n * steps // self.total
            if valid < steps:
                x[row, :, valid:] = 0

    def residual_unit(self, unit: ResidualUnit, x: torch.Tensor) -> torch.Tensor:
        snake1, conv1, snake2, conv2 = unit.block
        if (self.exact and self.native and self.lengths is None and is_same_depthwise(conv1)
                and is_pointwise(conv2) and conv2.in_channels == conv2.out_channels == x.shape[1]):
            # the whole unit in one cache-resident pass once both convolutions' orders are known
            y = kernels.residual_unit_exact(x, snake1.alpha, self.weights.get(conv1), conv1.bias, conv1.dilation[0],
                                            snake2.alpha, self.weights.get(conv2), conv2.bias,
                                            self.ws.empty(x.shape, x))
            if y is not None:
                return y
        y = self.snake(self.snake_conv(snake1.alpha, conv1, x), snake2.alpha)
        if not self.exact and y.shape == x.shape and is_pointwise(conv2):
            # x is this unit's own input (dead after it): accumulate W @ y into it, one pass fewer
            weight = self.weights.get(conv2)[:, :, 0]
            for row in range(x.shape[0]):  # addmm_ per row: baddbmm_ would copy the expanded weight
                x[row].addmm_(weight, y[row])
            return x if conv2.bias is None else x.add_(conv2.bias[:, None])
        if self.exact and y.shape == x.shape and is_pointwise(conv2):
            out = self.exact_pointwise(conv2, y, residual=x)  # conv2(y) + x, the sum fused
            if out is not None:
                return out
        y = self.conv(conv2, y)
        trim = (x.shape[-1] - y.shape[-1]) // 2
        if trim > 0:
            x = x[..., trim:-trim]
        return y.add_(x)

    def snake(self, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        out = self.ws.empty(x.shape, x)
        if self.native and kernels.usable(x):
            if not self.exact:
                return kernels.snake(x, alpha, out=out)
            if kernels.exact_snake.available():
                return kernels.exact_snake.snake(x, alpha, out=out)
        return snake(x, alpha, out=out)

    def snake_conv(self, alpha: torch.Tensor, conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
        """``conv(snake(x))``; one fused pass when ``conv`` is a depthwise "same" conv."""
        if self.native and is_same_depthwise(conv) and kernels.usable(x):
            args = (x, alpha, self.weights.get(conv), conv.bias, conv.dilation[0])
            if not self.exact:
                y = kernels.snake_depthwise(*args, out=self.ws.empty(x.shape, x))
            elif self.lengths is None and kernels.exact_snake.available():
                y = kernels.exact_snake.snake_depthwise(*args, out=self.ws.empty(x.shape, x))
            else:
                y = None
            if y is not None:
                return y
        return self.conv(conv, self.snake(x, alpha))

    def snake_conv_out(self, snake: nn.Module, conv: nn.Module, x: torch.Tensor) -> Optional[torch.Tensor]:
        """``conv(snake(x))`` in one pass where ``conv`` has one output channel (the decoder's output
        layer: its oneDNN kernel re-lays out the whole input), on CPU with the fused kernels, outside
        the exact encoder; None otherwise."""
        if (self.exact or not self.native or not isinstance(snake, Snake1d) or not isinstance(conv, nn.Conv1d)
                or conv.out_channels != 1 or conv.groups != 1 or conv.stride[0] != 1 or conv.dilation[0] != 1
                or conv.padding_mode != "zeros" or conv.padding[0] != conv.kernel_size[0] // 2
                or not x.is_contiguous() or not kernels.usable(x)):
            return None
        out = torch.empty((x.shape[0], 1, x.shape[-1]), dtype=x.dtype)  # the caller's result: not a pool buffer
        return kernels.snake_conv_out(x, snake.alpha, self.weights.get(conv), conv.bias, out)

    def noise_block(self, block: NoiseBlock, x: torch.Tensor) -> torch.Tensor:
        """``x + noise * linear(x)`` with the module's own noise draw, accumulated in place."""
        if not block.enabled:
            return x
        noise = block.draw(x)
        return self.conv(block.linear, x).mul_(noise).add_(x)

    # ------------------------------------------------------------------ walking
    def run(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if isinstance(module, (nn.Sequential, Encoder, Decoder, EncoderBlock, DecoderBlock)):
            # Each block works at its own resolution: its buffers go when it ends (memory stays
            # about one resolution's working set, not the sum over blocks).
            outer = self.ws
            if isinstance(module, (EncoderBlock, DecoderBlock)):
                self.ws = Workspace(self.pool)
            try:
                children = list(module.children())
                i = 0
                while i < len(children):
                    if i + 1 < len(children):
                        y = self.snake_conv_out(children[i], children[i + 1], x)
                        if y is not None:  # the decoder's last Snake and conv, fused
                            x, i = y, i + 2
                            continue
                    x = self.run(children[i], x)
                    i += 1
                return x
            finally:
                self.ws = outer
        if isinstance(module, ResidualUnit):
            return self.residual_unit(module, x)
        if isinstance(module, Snake1d):
            return self.snake(x, module.alpha)
        if isinstance(module, NoiseBlock):
            return self.noise_block(module, x)
        if isinstance(module, nn.ConvTranspose1d):
            if self.lengths is not None:
                raise RuntimeError("length masks apply to the encoder only")
            return conv_transpose_polyphase(x, module, self.weights.get(module, "polyphase"), self.ws)
        if isinstance(module, nn.Conv1d):
            return self.conv(module, x)
        if isinstance(module, nn.Tanh):
            return x.tanh_()
        return module(x)  # LocalMHA: unchanged behaviour


def has_hooks(module: nn.Module) -> bool:
    """True if any submodule carries forward hooks (which a fast path would bypass)."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())
