"""The encoder's exact kernel-1 convolution (kernels.ExactPointwise, csrc/exact.c): bit for bit like
an independent float32 FMA-chain model and like F.conv1d wherever oneDNN rounds in one of its two
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
              residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Independent model: per output one float32 FMA chain over the input channels in order (the
    float64 product of two float32 is exact; plus the accumulator, rounded to float32), from the bias
    or from zero with the bias added last; then plus ``residual``."""
    _, c_in, t = x.shape
    w = weight[:, :, 0].double()
    acc = torch.zeros(1, weight.shape[0], t)
    if bias_first and bias is not None:
        acc = acc + bias.view(1, -1, 1)
    for ci in range(c_in):
        acc = (x[:, ci: ci + 1].double() * w[:, ci].view(1, -1, 1) + acc.double()).float()
    if not bias_first and bias is not None:
        acc = acc + bias.view(1, -1, 1)
    return acc if residual is None else acc + residual


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
    got = kernels.pointwise_exact(x, weight, bias, bias_first, torch.empty(1, c_out, t), residual)
    assert torch.equal(got, fma_chain(x, weight, bias, bias_first, residual))
    no_bias = kernels.pointwise_exact(x, weight, None, bias_first, torch.empty(1, c_out, t), residual)
    assert torch.equal(no_bias, fma_chain(x, weight, None, bias_first, residual))


@needs_compiler
def test_declines_what_it_cannot_take(fresh_kernels):
    x, weight, bias, _ = _inputs(8, 12, 100, seed=0)  # C_out not a multiple of 8
    assert kernels.exact_pointwise(x, weight, bias, torch.empty(1, 12, 100)) is None
    x2 = torch.randn(2, 8, 100)  # batches go to F.conv1d
    assert kernels.exact_pointwise(x2, torch.randn(8, 8, 1), None, torch.empty(2, 8, 100)) is None


@needs_compiler
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("c,t", [(48, 6000), (48, 300), (96, 3000), (192, 750), (192, 1024), (384, 96)])
def test_exact_pointwise_rounds_like_conv1d(fresh_kernels, threads, n_threads, c, t):
    """Every call equals F.conv1d plus the residual (as torch adds it); the first call of a shape
    decides the order, and where F.conv1d equals one of the two FMA chains (checked with the
    independent model) the kernel is chosen for the later calls of that shape."""
    threads(n_threads)
    x, weight, bias, residual = _inputs(c, c, t, seed=c)
    want = F.conv1d(x, weight, bias)
    known = [first for first in (True, False) if torch.equal(fma_chain(x, weight, bias, first), want)]
    pointwise = kernels.exact_pointwise
    assert pointwise.known(x, weight, bias) == (False, None)
    assert torch.equal(pointwise(x, weight, bias, torch.empty(1, c, t), residual), want + residual)
    decided, bias_first = pointwise.known(x, weight, bias)
    assert decided
    x2, _, _, residual2 = _inputs(c, c, t, seed=c + 1)  # same shape, other data: the decided order
    assert torch.equal(pointwise(x2, weight, bias, torch.empty(1, c, t), residual2),
                       F.conv1d(x2, weight, bias) + residual2)
    if not known:
        assert bias_first is None
        pytest.skip(f"oneDNN rounds in neither order for ({c}, {t}) at {n_threads} threads; F.conv1d kept")
    assert bias_first == known[0], "F.conv1d rounds in one of the kernel's orders, yet it was not chosen"


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
                        lambda x, w, b, first, out, res=None: real(x, w, b, first, out, res).add_(1e-3))
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
