"""The encoder's exact kernel-1 convolution (kernels.ExactPointwise, csrc/exact.c): bit for bit like
an independent float32 FMA-chain model and like F.conv1d wherever oneDNN rounds in one of its
orders, declines otherwise, and leaves the encoder's latents and codes identical to the plain
modules at 1 and 2 threads (random weights and real speech)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest
import torch
import torch.nn.functional as F

from espnet_snac.model import fast, kernels
from espnet_snac.model.snac import SNAC, SNAC_24KHZ

needs_compiler = pytest.mark.skipif(kernels.compiler() is None, reason="no C compiler on this machine")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh_kernels(monkeypatch, tmp_path):
    monkeypatch.setenv("ESPNET_SNAC_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ESPNET_SNAC_NATIVE", raising=False)
    kernels.reset()
    monkeypatch.setattr(kernels, "exact_pointwise", kernels.ExactPointwise())
    yield
    kernels.reset()


@pytest.fixture
def threads():
    old = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(old)


def fma_chain(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], bias_first: bool,
              residual: Optional[torch.Tensor] = None, reduce_block: int = 0) -> torch.Tensor:
    """Independent model: the input channels in blocks of ``reduce_block`` (0: one block), per output
    and block one float32 FMA chain over the block's channels in order (the float64 product of two
    float32 is exact; plus the accumulator, rounded to float32), the first block's from the bias, the
    others from zero, each block's chain added to the sum of the ones before (or the bias added last);
    then plus ``residual``."""
    _, c_in, t = x.shape
    w = weight[:, :, 0].double()
    block = reduce_block if 0 < reduce_block < c_in else c_in
    total = None
    for start in range(0, c_in, block):
        acc = torch.zeros(1, weight.shape[0], t)
        if start == 0 and bias_first and bias is not None:
            acc = acc + bias.view(1, -1, 1)
        for ci in range(start, min(c_in, start + block)):
            acc = (x[:, ci: ci + 1].double() * w[:, ci].view(1, -1, 1) + acc.double()).float()
        total = acc if total is None else total + acc
    if not bias_first and bias is not None:
        total = total + bias.view(1, -1, 1)
    return total if residual is None else total + residual


def conv1d_orders(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> list:
    """The first ``Order`` (single chain, then blocks of 16k channels; the kernel's candidates in its
    order) in which F.conv1d rounds for these inputs, as a list (empty: none), found with
    :func:`fma_chain` (not with the kernel under test) on the first 8 output channels of F.conv1d's
    full-shape result (outputs are independent, and the shape decides oneDNN's order)."""
    want = F.conv1d(x, weight, bias)[:, :8]
    w8, b8 = weight[:8], None if bias is None else bias[:8]
    orders = [kernels.Order(first) for first in (True, False)]
    orders += [kernels.Order(first, block) for block in range(16, x.shape[1], 16) for first in (True, False)]
    for o in orders:
        if torch.equal(fma_chain(x, w8, b8, o.bias_first, reduce_block=o.reduce_block), want):
            return [o]
    return []


def _inputs(c_in: int, c_out: int, t: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(1, c_in, t + 9, generator=g) * 2)[..., 5: 5 + t]  # rows not contiguous
    weight = torch.randn(c_out, c_in, 1, generator=g) / c_in ** 0.5
    return x, weight, torch.randn(c_out, generator=g), torch.randn(1, c_out, t, generator=g)


@needs_compiler
@pytest.mark.parametrize("c_in,c_out,t", [(8, 8, 1), (16, 8, 47), (48, 48, 97), (96, 16, 480), (3, 24, 1000)])
@pytest.mark.parametrize("bias_first", [True, False])
@pytest.mark.parametrize("with_residual", [True, False])
def test_kernel_is_the_fma_chain(fresh_kernels, c_in, c_out, t, bias_first, with_residual):
    x, weight, bias, residual = _inputs(c_in, c_out, t, seed=c_in + t)
    residual = residual if with_residual else None
    for reduce_block in (0, 16, 32):  # one chain, or the reduction split in blocks
        got = kernels.pointwise_exact(x, weight, bias, bias_first, torch.empty(1, c_out, t), residual, reduce_block)
        assert torch.equal(got, fma_chain(x, weight, bias, bias_first, residual, reduce_block)), reduce_block
        no_bias = kernels.pointwise_exact(x, weight, None, bias_first, torch.empty(1, c_out, t), residual, reduce_block)
        assert torch.equal(no_bias, fma_chain(x, weight, None, bias_first, residual, reduce_block)), reduce_block


@needs_compiler
def test_declines_what_it_cannot_take(fresh_kernels):
    x, weight, bias, _ = _inputs(8, 12, 100, seed=0)  # C_out not a multiple of 8
    assert kernels.exact_pointwise(x, weight, bias, torch.empty(1, 12, 100)) is None
    x2 = torch.randn(2, 8, 100)  # batches go to F.conv1d
    assert kernels.exact_pointwise(x2, torch.randn(8, 8, 1), None, torch.empty(2, 8, 100)) is None
    x3, weight3, bias3, _ = _inputs(384, 384, 100, seed=0)  # wider than MAX_CHANNELS: F.conv1d is as fast
    assert kernels.exact_pointwise(x3, weight3, bias3, torch.empty(1, 384, 100)) is None


@needs_compiler
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("c,t", [(48, 6000), (48, 300), (96, 3000), (192, 750), (192, 1024), (192, 2048)])
def test_exact_pointwise_rounds_like_conv1d(fresh_kernels, threads, n_threads, c, t):
    """Every call equals F.conv1d plus the residual (as torch adds it); the first call of a shape
    decides the order, and where F.conv1d equals one of the kernel's orders (single chain or split
    reduction, checked with the independent model) the kernel is chosen for the later calls of that
    shape (192 channels at 1024 and 2048 samples: oneDNN splits the reduction at 2 threads here)."""
    threads(n_threads)
    x, weight, bias, residual = _inputs(c, c, t, seed=c)
    want = F.conv1d(x, weight, bias)
    known = conv1d_orders(x, weight, bias)
    pointwise = kernels.exact_pointwise
    assert pointwise.known(x, weight, bias) == (False, None)
    assert torch.equal(pointwise(x, weight, bias, torch.empty(1, c, t), residual), want + residual)
    decided, order = pointwise.known(x, weight, bias)
    assert decided
    x2, _, _, residual2 = _inputs(c, c, t, seed=c + 1)  # same shape, other data: the decided order
    out = torch.empty(1, c, t)
    got = pointwise(x2, weight, bias, out, residual2)
    assert torch.equal(got, F.conv1d(x2, weight, bias) + residual2)
    if not known:
        assert order is None
        pytest.skip(f"oneDNN rounds in none of the kernel's orders for ({c}, {t}) at {n_threads} threads")
    assert order == known[0], "F.conv1d rounds in one of the kernel's orders, yet it was not chosen"
    assert got.data_ptr() == out.data_ptr(), "the order is known, yet the kernel did not run"


@needs_compiler
def test_length_class_lends_its_order_only_when_consistent(fresh_kernels, monkeypatch):
    """After TRUST_AFTER lengths of one class decided alike, its other lengths use that order without
    F.conv1d, except near a power of two; a class whose lengths disagree lends nothing."""
    pointwise = kernels.exact_pointwise
    calls = []
    real_conv1d = F.conv1d
    monkeypatch.setattr(kernels.F, "conv1d", lambda *a, **k: calls.append(a[0].shape) or real_conv1d(*a, **k))
    _, weight, bias, _ = _inputs(48, 48, 8, seed=5)
    lengths = [5000, 6000, 70000]  # one class: >= 2048 samples, none near a power of two
    for t in lengths[: kernels.ExactPointwise.TRUST_AFTER]:
        x = _inputs(48, 48, t, seed=t)[0]
        pointwise(x, weight, bias, torch.empty(1, 48, t))
    decided = [pointwise.known(_inputs(48, 48, t, seed=t)[0], weight, bias) for t in lengths[:2]]
    if decided[0][1] is None or decided[0] != decided[1]:
        pytest.skip(f"oneDNN's orders on this CPU: {decided}")
    calls.clear()
    x = _inputs(48, 48, 70000, seed=7000)[0]
    got = pointwise(x, weight, bias, torch.empty(1, 48, 70000))
    assert calls == [] and torch.equal(got, real_conv1d(x, weight, bias))  # lent: no F.conv1d
    near = _inputs(48, 48, 8190, seed=1)[0]  # within NEAR_POWER_OF_TWO of 8192: decided on its own
    assert pointwise.known(near, weight, bias) == (False, None)
    # wider layers never lend: at 2 threads 192 channels split the reduction at multiples of 1024 only
    assert kernels.ExactPointwise._class_of((192, 192, 20480, True, 2)) is None
    # a class with two different orders lends nothing
    pointwise._classes[(96, 96, True, torch.get_num_threads())] = [kernels.Order(True), kernels.Order(False)]
    _, weight96, bias96, _ = _inputs(96, 96, 8, seed=6)
    assert pointwise.known(_inputs(96, 96, 20000, seed=2)[0], weight96, bias96) == (False, None)


@needs_compiler
def test_silence_does_not_decide_and_mismatch_keeps_conv1d(fresh_kernels, monkeypatch):
    """A call on which the two orders agree nearly everywhere (constant input) returns F.conv1d's
    result without deciding; an order that matches nothing leaves the shape on F.conv1d."""
    pointwise = kernels.exact_pointwise
    x, weight, bias, residual = _inputs(48, 48, 500, seed=3)
    silence = torch.zeros(1, 48, 500)
    assert torch.equal(pointwise(silence, weight, bias, torch.empty(1, 48, 500)), F.conv1d(silence, weight, bias))
    assert pointwise.known(silence, weight, bias) == (False, None)
    real = kernels.pointwise_exact
    monkeypatch.setattr(kernels, "pointwise_exact",
                        lambda x, w, b, first, out, res=None, reduce_block=0: real(x, w, b, first, out, res,
                                                                                   reduce_block).add_(1e-3))
    assert torch.equal(pointwise(x, weight, bias, torch.empty(1, 48, 500), residual),
                       F.conv1d(x, weight, bias) + residual)
    assert pointwise.known(x, weight, bias) == (True, None)
    assert torch.equal(pointwise(x, weight, bias, torch.empty(1, 48, 500), residual),
                       F.conv1d(x, weight, bias) + residual)


def _speech(seconds: float) -> torch.Tensor:
    from espnet_snac.io.audio_io import load_mono
    files = sorted((REPO / "local" / "demo_corpus").rglob("*.flac"))
    if not files:
        pytest.skip("no demo corpus")
    parts, n = [], 0
    for f in files:
        parts.append(torch.as_tensor(load_mono(f, 24000)[0], dtype=torch.float32).reshape(-1))
        n += parts[-1].numel()
        if n >= seconds * 24000:
            break
    return torch.cat(parts).view(1, 1, -1)


@needs_compiler
@pytest.mark.parametrize("n_threads", [1, 2])
def test_encoder_latents_and_codes_identical_on_speech(fresh_kernels, monkeypatch, threads, n_threads):
    """The 24 kHz architecture (official-style random weights) on real speech: the fast path's
    latents equal the plain modules' bit for bit and so do the codes, and the exact pointwise
    kernel chosen for some layer."""
    threads(n_threads)
    torch.manual_seed(0)
    model = SNAC(**SNAC_24KHZ).eval()
    audio = model.preprocess(_speech(4.0))
    with torch.inference_mode():
        fast_z = fast.FastPath(fast.FoldedWeights()).run(model.encoder, audio.clone())
        plain_z = model.encoder(audio)
        assert torch.equal(fast_z, plain_z)
        fast_codes = model.encode(audio)
        model.fast_inference = False
        plain_codes = model.encode(audio)
    assert all(torch.equal(a, b) for a, b in zip(fast_codes, plain_codes))
    assert kernels.status() == "on"
    chosen = [key for key, first in kernels.exact_pointwise._orders.items() if first is not None]
    if not chosen:
        pytest.skip(f"every kernel-1 layer rounds in neither order at {n_threads} threads on this CPU")


@needs_compiler
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("channels,dilation,length", [(48, 9, 5000), (96, 1, 3000), (16, 3, 700)])
def test_fused_residual_unit_is_bit_identical(fresh_kernels, monkeypatch, threads, n_threads, channels, dilation,
                                              length):
    """A residual unit in one fused pass equals the plain module bit for bit, once its convolutions'
    orders are decided (the first call decides them through the separate kernels)."""
    from espnet_snac.model.layers import ResidualUnit

    threads(n_threads)
    monkeypatch.setattr(kernels, "exact_depthwise", kernels.ExactDepthwise())
    torch.manual_seed(channels + dilation)
    unit = ResidualUnit(channels, dilation=dilation, groups=channels).eval()
    for snake in (unit.block[0], unit.block[2]):
        snake.alpha.data.uniform_(0.3, 2.0)
    fused = []
    real = kernels.residual_unit_exact
    monkeypatch.setattr(kernels, "residual_unit_exact",
                        lambda *a, **k: (lambda y: fused.append(y is not None) or y)(real(*a, **k)))
    path = fast.FastPath(fast.FoldedWeights())
    with torch.inference_mode():
        for seed in (1, 2, 3):
            x = torch.randn(1, channels, length, generator=torch.Generator().manual_seed(seed)) * 2
            want = unit(x)
            assert torch.equal(path.residual_unit(unit, x.clone()), want), seed
    if not kernels.exact_snake.available():
        pytest.skip("torch's sine is not MKL's vsSin here: no exact Snake, no fused unit")
    dw = kernels.exact_depthwise.known(x, unit.block[1].weight, unit.block[1].bias, dilation)
    pw = kernels.exact_pointwise.known(x, unit.block[3].weight, unit.block[3].bias)
    if dw[1] is None or pw[1] is None:
        pytest.skip(f"oneDNN rounds in none of the kernels' orders here (depthwise {dw}, kernel-1 {pw})")
    assert fused[0] is False and fused[-1] is True, fused  # decided on the first call, fused after
