"""Fused CPU kernels (espnet_snac.model.kernels): parity with the torch ops of the fast path (bit for bit
for the encoder's), the decoder with and without them, the build cache, and the fallback without a
compiler."""
from __future__ import annotations

import ctypes
import os
import stat
from typing import Optional

import pytest
import torch
import torch.nn.functional as F

from espnet_snac.model import fast, kernels
from espnet_snac.model.snac import SNAC, SNAC_24KHZ

needs_compiler = pytest.mark.skipif(kernels.compiler() is None, reason="no C compiler on this machine")


def fma_chain(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], dilation: int,
              bias_first: bool) -> torch.Tensor:
    """An independent model of ``kernels.depthwise_exact``: per output one float32 FMA chain over the
    taps in order (an FMA is the float64 product, exact for float32 inputs, plus the accumulator,
    rounded to float32), started from the bias or from zero with the bias added last."""
    b, c, t = x.shape
    k = weight.shape[-1]
    halo = k // 2 * dilation
    xp = F.pad(x.double(), (halo, halo))
    w = weight.detach().reshape(c, k).double()
    acc = torch.zeros(b, c, t)
    if bias_first and bias is not None:
        acc = acc + bias.detach().view(1, c, 1)
    for j in range(k):
        acc = (xp[..., j * dilation: j * dilation + t] * w[:, j].view(1, c, 1) + acc.double()).float()
    if not bias_first and bias is not None:
        acc = acc + bias.detach().view(1, c, 1)
    return acc


def conv1d_order(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], dilation: int) -> Optional[bool]:
    """Which tap order (``bias_first``) F.conv1d rounds in for these inputs on this machine, found
    with :func:`fma_chain` (not with the kernel under test); None if it is neither."""
    k = weight.shape[-1]
    with torch.no_grad():
        want = F.conv1d(x, weight, bias, padding=k // 2 * dilation, dilation=dilation, groups=x.shape[1])
    for bias_first in (True, False):
        if torch.equal(fma_chain(x, weight, bias, dilation, bias_first), want):
            return bias_first
    return None


def vssin_missing() -> Optional[str]:
    """Why the exact Snake kernel cannot exist here (None if it can): torch's CPU library must export
    MKL's vsSin and ``torch.sin`` must round like it. Checked by calling vsSin directly."""
    address = kernels.ExactSnake._find_vsin()
    if address is None:
        return "torch's CPU library has no MKL vsSin"
    vsin = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_int), ctypes.c_void_p, ctypes.c_void_p)(address)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4096, generator=g) * torch.logspace(-3, 3, 4096)
    y = torch.empty_like(x)
    vsin(ctypes.byref(ctypes.c_int(x.numel())), x.data_ptr(), y.data_ptr())
    return None if torch.equal(y, torch.sin(x)) else "torch.sin does not round like MKL's vsSin on this build"


@pytest.fixture
def fresh_kernels(monkeypatch, tmp_path):
    """Kernels built into a private cache; the process state is restored afterwards."""
    monkeypatch.setenv("ESPNET_SNAC_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ESPNET_SNAC_NATIVE", raising=False)
    kernels.reset()
    yield tmp_path / "cache"
    kernels.reset()


def _encoder_fast_and_plain(encoder_dim: int, batch: int, samples: int):
    """Latents of one random small SNAC-24k encoder through the fast path and the plain modules."""
    torch.manual_seed(0)
    model = SNAC(**dict(SNAC_24KHZ, encoder_dim=encoder_dim, decoder_dim=32)).eval()
    audio = torch.randn(batch, 1, samples) * 0.3
    with torch.inference_mode():
        return fast.FastPath(fast.FoldedWeights()).run(model.encoder, audio.clone()), model.encoder(audio)


class _Recording:
    """An ``ExactDepthwise`` that counts the calls it served and keeps the inputs of those it declined."""

    def __init__(self, real: "kernels.ExactDepthwise"):
        self.real, self.ran, self.declined = real, 0, []

    def known(self, x, weight, bias, dilation):
        return self.real.known(x, weight, bias, dilation)

    def __call__(self, x, weight, bias, dilation, out):
        y = self.real(x, weight, bias, dilation, out)
        if y is None:
            self.declined.append((x.clone(), weight, bias, dilation))
        else:
            self.ran += 1
        return y


def _rows(batch: int, channels: int, length: int, seed: int) -> torch.Tensor:
    """``(B, C, T)`` whose rows are a slice of a wider buffer (not contiguous, evenly spaced)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, channels, length + 7, generator=g) * 3)[..., 4: 4 + length]


@needs_compiler
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 5), (1, 16, 1500), (3, 1, 2049), (2, 64, 3000)])
def test_snake_kernel_matches_torch_ops(fresh_kernels, shape):
    x = _rows(*shape, seed=sum(shape))
    alpha = torch.rand(1, shape[1], 1) * 3 + 0.05
    assert kernels.usable(x) and kernels.status() == "on"
    got = kernels.snake(x, alpha, out=torch.full(shape, float("nan")))
    assert torch.allclose(got, fast.snake(x, alpha), atol=1e-5, rtol=1e-5)


@needs_compiler
@pytest.mark.parametrize("length", [1, 5, 40, 1024, 2500])
@pytest.mark.parametrize("dilation", [1, 3, 9])
@pytest.mark.parametrize("bias", [True, False])
def test_snake_depthwise_kernel_matches_torch_ops(fresh_kernels, length, dilation, bias):
    """One pass equals Snake then the zero-padded depthwise conv, across tile borders (1024) and
    where the dilated kernel reaches past both ends of a short input."""
    torch.manual_seed(length + dilation)
    conv = torch.nn.Conv1d(6, 6, 7, dilation=dilation, padding=3 * dilation, groups=6, bias=bias)
    x = _rows(2, 6, length, seed=length)
    alpha = torch.rand(1, 6, 1) * 3 + 0.05
    with torch.no_grad():
        want = conv(fast.snake(x, alpha))
        got = kernels.snake_depthwise(x, alpha, conv.weight, conv.bias, dilation,
                                      out=torch.full(x.shape, float("nan")))
    assert got is not None
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


@needs_compiler
@pytest.mark.parametrize("batch,channels,length", [(1, 64, 3000), (2, 5, 1), (3, 16, 1025)])
@pytest.mark.parametrize("bias", [True, False])
def test_snake_conv_out_matches_torch_ops(fresh_kernels, batch, channels, length, bias):
    """The decoder's output layer (Snake, then a conv to one channel, k7 "same") in one pass."""
    torch.manual_seed(length)
    conv = torch.nn.Conv1d(channels, 1, 7, padding=3, bias=bias)
    x = torch.randn(batch, channels, length) * 2
    alpha = torch.rand(1, channels, 1) * 3 + 0.05
    with torch.no_grad():
        want = conv(fast.snake(x, alpha))
        got = kernels.snake_conv_out(x, alpha, conv.weight, conv.bias, out=torch.full((batch, 1, length), float("nan")))
    assert got is not None and got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    wide = torch.randn(1, channels, 2 * kernels.MAX_HALO + 3)
    assert kernels.snake_conv_out(x, alpha, wide, None, out=torch.empty(batch, 1, length)) is None


@needs_compiler
def test_snake_depthwise_too_wide_declines(fresh_kernels):
    x = _rows(1, 2, 50, seed=0)
    weight = torch.randn(2, 1, 7)
    alpha = torch.ones(1, 2, 1)
    assert kernels.snake_depthwise(x, alpha, weight, None, kernels.MAX_HALO, out=torch.empty(x.shape)) is None
    assert kernels.snake_depthwise(x, alpha, torch.randn(2, 1, 4), None, 1, out=torch.empty(x.shape)) is None


@needs_compiler
def test_usable_layouts(fresh_kernels):
    x = torch.randn(2, 4, 30)
    assert kernels.usable(x)
    assert kernels.usable(x[1:])  # one row block, offset
    assert not kernels.usable(x.double())
    assert not kernels.usable(x.transpose(1, 2))  # samples not contiguous
    assert not kernels.usable(x.transpose(0, 1))  # rows unevenly spaced
    assert not kernels.usable(x[0])  # not (B, C, T)


@needs_compiler
def test_decoder_with_and_without_kernels(fresh_kernels):
    """The decoder's fast path with the fused kernels, with torch ops only and the plain modules agree
    within 1e-4 under one noise seed (batch 1 and 3)."""
    torch.manual_seed(0)
    model = SNAC(**dict(SNAC_24KHZ, encoder_dim=8, decoder_dim=64)).eval()
    for batch in (1, 3):
        frames = model.num_frames(2 * model.pad_multiple)
        codes = [torch.randint(0, model.codebook_size, (batch, n)) for n in frames]
        with torch.inference_mode():
            assert kernels.status() == "on"
            native = model.decode(codes, noise_seed=5)
            os.environ["ESPNET_SNAC_NATIVE"] = "0"
            kernels.reset()
            try:
                assert kernels.status().startswith("off")
                torch_ops = model.decode(codes, noise_seed=5)
            finally:
                del os.environ["ESPNET_SNAC_NATIVE"]
                kernels.reset()
            model.fast_inference = False
            try:
                plain = model.decode(codes, noise_seed=5)
            finally:
                model.fast_inference = True
        assert (native - torch_ops).abs().max().item() <= 1e-4
        assert (native - plain).abs().max().item() <= 1e-4


@needs_compiler
def test_build_is_cached_and_follows_umask(fresh_kernels):
    old = os.umask(0o027)
    try:
        assert kernels.load() is not None
    finally:
        os.umask(old)
    (lib,) = fresh_kernels.glob("kernels/*/libsnake.so")
    assert stat.S_IMODE(lib.stat().st_mode) & 0o027 == 0  # nothing for others, no group write
    assert not list(lib.parent.glob(".*.tmp"))
    built = lib.stat().st_mtime_ns
    kernels.reset()
    assert kernels.load() is not None
    assert lib.stat().st_mtime_ns == built  # loaded from the cache, not rebuilt


def test_no_compiler_falls_back_to_torch_ops(fresh_kernels, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-here")
    monkeypatch.setenv("PATH", str(fresh_kernels))  # nothing to find
    kernels.reset()
    assert kernels.load() is None
    assert kernels.status() == "off (no C compiler found (set CC, or install gcc))"
    x = torch.randn(1, 4, 20)
    assert not kernels.usable(x)
    path = fast.FastPath(fast.FoldedWeights(), exact=False)
    assert torch.equal(path.snake(x, torch.ones(1, 4, 1)), fast.snake(x, torch.ones(1, 4, 1)))


def test_failing_compiler_is_reported(fresh_kernels, monkeypatch, tmp_path):
    broken = tmp_path / "broken-cc"
    broken.write_text("#!/bin/sh\necho 'cc: fatal error: out of licences' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    kernels.reset()
    assert kernels.load() is None
    assert "cannot compile the fused kernels" in kernels.status()
    assert "out of licences" in kernels.status()
    assert not list(fresh_kernels.rglob("*.so")) and not list(fresh_kernels.rglob(".*.tmp"))


def test_switched_off_by_environment(fresh_kernels, monkeypatch):
    monkeypatch.setenv("ESPNET_SNAC_NATIVE", "0")
    kernels.reset()
    assert kernels.status() == "off (ESPNET_SNAC_NATIVE=0)"
    assert not list(fresh_kernels.rglob("*.so"))


@needs_compiler
def test_loading_keeps_denormals(fresh_kernels):
    """Loading the library must not switch the process to flush-to-zero (``-ffast-math`` at link
    time would: crtfastmath.o), which would change every other result, codes included."""
    tiny = torch.tensor([1e-39])
    assert (tiny * 1).item() != 0.0
    assert kernels.load() is not None
    assert (tiny * 1).item() != 0.0


@needs_compiler
@pytest.mark.parametrize("length", [1, 7, 40, 1024, 3000])
@pytest.mark.parametrize("dilation", [1, 3, 9])
@pytest.mark.parametrize("bias", [True, False])
def test_exact_depthwise_rounds_like_conv1d(fresh_kernels, length, dilation, bias):
    """Both tap orders of the kernel equal an independent FMA-chain model bit for bit (always: a broken
    kernel fails here, it is never skipped); the first call of a shape returns F.conv1d's result and
    decides the order on its inputs; where F.conv1d rounds in one of the kernel's orders (found with
    the model) that one is chosen and the later calls of the shape run the kernel, equal to F.conv1d."""
    torch.manual_seed(length * dilation)
    conv = torch.nn.Conv1d(48, 48, 7, dilation=dilation, padding=3 * dilation, groups=48, bias=bias)
    x = _rows(1, 48, length, seed=dilation)
    depthwise = kernels.ExactDepthwise()
    with torch.no_grad():
        for bias_first in (True, False):
            got = kernels.depthwise_exact(x, conv.weight, conv.bias, dilation, bias_first,
                                          out=torch.full(x.shape, float("nan")))
            assert torch.equal(got, fma_chain(x, conv.weight, conv.bias, dilation, bias_first)), bias_first
        want = conv(x)
        first = depthwise(x, conv.weight, conv.bias, dilation, out=torch.full(x.shape, float("nan")))
        decided, order = depthwise.known(x, conv.weight, conv.bias, dilation)
        x2 = _rows(1, 48, length, seed=dilation + 100)  # same shape, other data
        out = torch.full(x.shape, float("nan"))
        second = depthwise(x2, conv.weight, conv.bias, dilation, out=out)
        want2 = conv(x2)
    expected = conv1d_order(x, conv.weight, conv.bias, dilation)
    if decided and order is None:
        assert expected is None, "F.conv1d rounds in one of the kernel's orders, yet ExactDepthwise declined"
        assert first is None and second is None  # the caller keeps F.conv1d
        pytest.skip(f"this CPU's oneDNN kernel for {tuple(x.shape)}, dilation {dilation} rounds in another order")
    assert torch.equal(first, want)
    if not decided:  # too few outputs to tell the orders apart (a few samples): still F.conv1d's result
        assert length < 8 and torch.equal(second, want2)
        return
    assert order == expected
    assert second.data_ptr() == out.data_ptr() and torch.equal(second, want2)


@needs_compiler
def test_exact_depthwise_falls_back_when_no_order_matches(fresh_kernels, monkeypatch):
    """A shape whose probe matches neither order keeps F.conv1d: the encoder's output is still
    bit-identical to the plain modules."""
    real = kernels.depthwise_exact
    monkeypatch.setattr(kernels, "depthwise_exact",
                        lambda x, w, b, d, first, out: real(x, w, b, d, first, out).add_(1e-3))
    monkeypatch.setattr(kernels, "exact_depthwise", kernels.ExactDepthwise())
    x = _rows(1, 8, 300, seed=1)
    assert kernels.exact_depthwise(x, torch.randn(8, 1, 7), torch.randn(8), 3, out=torch.empty(x.shape)) is None
    fast_z, plain_z = _encoder_fast_and_plain(8, 1, 4096)
    assert torch.equal(fast_z, plain_z)


def test_depthwise_decision_needs_telling_inputs(fresh_kernels):
    """Silence cannot tell the two orders apart: the call returns F.conv1d's result and decides nothing."""
    depthwise = kernels.ExactDepthwise()
    weight, bias = torch.randn(48, 1, 7), torch.randn(48)
    silence = torch.zeros(1, 48, 3000)
    want = F.conv1d(silence, weight, bias, padding=3, groups=48)
    assert torch.equal(depthwise(silence, weight, bias, 1, out=torch.empty(silence.shape)), want)
    assert depthwise.known(silence, weight, bias, 1) == (False, None)


@needs_compiler
@pytest.mark.parametrize("threads", [1, 2])
def test_encoder_latents_bit_identical_with_kernels(fresh_kernels, monkeypatch, threads):
    """The encoder's fast path with the exact kernels gives the plain modules' latents bit for bit
    (hence their codes), at 1 and 2 threads (oneDNN's rounding order depends on both), and the exact
    kernels really ran: every depthwise layer whose F.conv1d order is known (checked independently
    with :func:`fma_chain`) went through an exact kernel, and the exact Snake ran wherever torch's
    sine is MKL's vsSin."""
    depthwise, snake = _Recording(kernels.ExactDepthwise()), kernels.ExactSnake()
    monkeypatch.setattr(kernels, "exact_depthwise", depthwise)
    monkeypatch.setattr(kernels, "exact_snake", snake)
    snake_calls = {"snake": 0, "snake_depthwise": 0}
    declined = []  # (x, weight, bias, dilation) of fused Snake + depthwise calls that returned None
    real_snake, real_snake_depthwise = snake.snake, snake.snake_depthwise

    def counted_snake(x, alpha, out):
        snake_calls["snake"] += 1
        return real_snake(x, alpha, out)

    def counted_snake_depthwise(x, alpha, weight, bias, dilation, out):
        y = real_snake_depthwise(x, alpha, weight, bias, dilation, out)
        if y is None and depthwise.known(x, weight, bias, dilation)[0]:  # undecided: the caller decides
            declined.append((fast.snake(x, alpha), weight, bias, dilation))
        else:
            snake_calls["snake_depthwise"] += 1
        return y

    monkeypatch.setattr(snake, "snake", counted_snake)
    monkeypatch.setattr(snake, "snake_depthwise", counted_snake_depthwise)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(2):  # the first pass decides the orders, the second runs the kernels
            fast_z, plain_z = _encoder_fast_and_plain(16, 2, 3 * 4096)
            assert kernels.status() == "on"
            assert torch.equal(fast_z, plain_z)
        # a decline is right only where F.conv1d rounds in neither order
        wrongly_declined = sorted({(tuple(x.shape), d) for x, w, b, d in declined + depthwise.declined
                                   if conv1d_order(x, w, b, d) is not None})
    finally:
        torch.set_num_threads(old)
    assert not wrongly_declined, f"exact kernels declined shapes whose F.conv1d order is known: {wrongly_declined}"
    exact_depthwise_runs = depthwise.ran + snake_calls["snake_depthwise"]
    assert exact_depthwise_runs + len(declined) + len(depthwise.declined) > 0, "no depthwise layer reached a kernel"
    reason = vssin_missing()
    if reason is None:
        assert snake.available(), "torch.sin is MKL's vsSin, yet the exact Snake kernel's probe failed"
        assert snake_calls["snake"] > 0 and snake_calls["snake_depthwise"] > 0, snake_calls
    if declined or depthwise.declined:
        pytest.skip(f"{len(declined) + len(depthwise.declined)} depthwise layers round in another order on this CPU")
    assert exact_depthwise_runs > 0
    if reason is not None:
        pytest.skip(f"latents identical; the exact Snake kernel cannot run: {reason}")


@needs_compiler
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 5), (1, 16, 1500), (3, 1, 2049)])
def test_exact_snake_is_bit_identical(fresh_kernels, shape):
    reason = vssin_missing()
    if reason:
        pytest.skip(reason)
    snake = kernels.ExactSnake()
    assert snake.available(), "torch.sin is MKL's vsSin, yet the exact Snake kernel's probe failed"
    x = _rows(*shape, seed=sum(shape)) * 10
    alpha = torch.rand(1, shape[1], 1) * 3 + 0.05
    want = x + (alpha + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)
    assert torch.equal(snake.snake(x, alpha, out=torch.full(shape, float("nan"))), want)


@needs_compiler
@pytest.mark.parametrize("length", [1, 40, 2500])
@pytest.mark.parametrize("dilation", [1, 9])
def test_exact_snake_depthwise_is_bit_identical(fresh_kernels, monkeypatch, length, dilation):
    reason = vssin_missing()
    if reason:
        pytest.skip(reason)
    snake = kernels.ExactSnake()
    assert snake.available(), "torch.sin is MKL's vsSin, yet the exact Snake kernel's probe failed"
    monkeypatch.setattr(kernels, "exact_depthwise", kernels.ExactDepthwise())
    torch.manual_seed(length)
    conv = torch.nn.Conv1d(16, 16, 7, dilation=dilation, padding=3 * dilation, groups=16)
    x = _rows(1, 16, length, seed=length)
    alpha = torch.rand(1, 16, 1) * 3 + 0.05
    with torch.no_grad():
        want = conv(fast.snake(x, alpha))
        args = (x, alpha, conv.weight, conv.bias, dilation)
        # undecided shape: the fused kernel declines; the caller's depthwise call decides the order
        assert snake.snake_depthwise(*args, out=torch.empty(x.shape)) is None
        kernels.exact_depthwise(fast.snake(x, alpha), conv.weight, conv.bias, dilation, out=torch.empty(x.shape))
        got = snake.snake_depthwise(*args, out=torch.full(x.shape, float("nan")))
    decided, _ = kernels.exact_depthwise.known(x, conv.weight, conv.bias, dilation)
    if conv1d_order(fast.snake(x, alpha), conv.weight, conv.bias, dilation) is None or not decided:
        assert got is None
        pytest.skip("F.conv1d rounds in neither of the kernel's orders for this shape on this CPU, "
                    "or too few samples to tell")
    assert got is not None and torch.equal(got, want)


@needs_compiler
def test_encoder_without_exact_snake_uses_torch_ops(fresh_kernels, monkeypatch):
    """Where the probe fails (another sine), the encoder keeps torch's Snake and stays bit-identical."""
    snake = kernels.ExactSnake()
    monkeypatch.setattr(snake, "_probe", lambda: False)
    monkeypatch.setattr(kernels, "exact_snake", snake)
    fast_z, plain_z = _encoder_fast_and_plain(8, 1, 4096)
    assert not snake.available()
    assert torch.equal(fast_z, plain_z)


@needs_compiler
@pytest.mark.parametrize("threads", [1, 2])
def test_first_layer_from_one_channel_rounds_like_conv1d(fresh_kernels, monkeypatch, threads):
    """The encoder's first conv (1 -> C channels, k7 "same") as C depthwise rows of the one input: the
    first call returns F.conv1d's result and decides; later calls run the kernel, equal to F.conv1d
    bit for bit, where F.conv1d rounds in one of the kernel's orders (found with the model)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        depthwise = kernels.ExactDepthwise()
        torch.manual_seed(3)
        conv = torch.nn.Conv1d(1, 48, 7, padding=3)
        x = _rows(1, 1, 5000, seed=4)
        with torch.no_grad():
            want = conv(x)
            assert torch.equal(depthwise(x, conv.weight, conv.bias, 1, out=torch.empty(1, 48, 5000)), want)
            decided, order = depthwise.known(x, conv.weight, conv.bias, 1)
            x2 = _rows(1, 1, 5000, seed=5)
            out = torch.full((1, 48, 5000), float("nan"))
            got = depthwise(x2, conv.weight, conv.bias, 1, out=out)
            want2 = conv(x2)
            model_want = F.conv1d(x, conv.weight, conv.bias, padding=3)
            model = fma_chain(x.expand(1, 48, 5000), conv.weight, conv.bias, 1, bool(order)) if order is not None else None
    finally:
        torch.set_num_threads(old)
    assert decided
    if order is None:
        assert got is None
        pytest.skip("oneDNN's one-channel kernel rounds in neither order here")
    assert torch.equal(model, model_want), "the chosen order is not F.conv1d's (independent model)"
    assert got.data_ptr() == out.data_ptr() and torch.equal(got, want2)
