"""Inference fast paths (espnet_snac.model.fast): codes identical to the official package, decoded audio
within 1e-4 of the plain path under one noise seed, batch 1 and 8, 24 and 32 kHz architectures;
training and autograd keep the plain path."""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import pytest
import torch

from espnet_snac.model import fast
from espnet_snac.model.layers import Snake1d
from espnet_snac.model.snac import SNAC, SNAC_24KHZ, SNAC_32KHZ
from espnet_snac.tokens.batching import encode_exact
from speech_samples import demo_files, synthetic_speech


# The 32 kHz architecture (local attention, four levels, stride 3) at reduced width: same code paths.
SMALL_32KHZ: Dict = dict(SNAC_32KHZ, encoder_dim=16, decoder_dim=128)
CONFIGS = {"24k": SNAC_24KHZ, "32k": SMALL_32KHZ}


def _speech(rate: int, n: int, seconds: float) -> List[np.ndarray]:
    """``n`` crops of real speech (demo corpus; synthetic speech without it), mixed lengths."""
    from espnet_snac.io.audio_io import load_mono

    files = demo_files()
    out = []
    for i in range(n):
        length = int(rate * seconds * (0.55 + 0.45 * ((i * 7) % n) / max(1, n - 1)))
        if files:
            audio = load_mono(files[i % len(files)], rate)[0]
            start = min(rate // 5, max(0, len(audio) - length))
            audio = audio[start:start + length]
        else:
            audio = synthetic_speech(rate, length / rate + 0.01, seed=i)[:length]
        out.append(np.ascontiguousarray(audio, dtype=np.float32))
    return out


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request):
    """(ours, official, config name) with one set of random weights, at two threads (restored after)."""
    snac_official = pytest.importorskip("snac")  # only the tests comparing with it need the package
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    ours = SNAC(**CONFIGS[request.param]).eval()
    official = snac_official.SNAC(**CONFIGS[request.param]).eval()
    official.load_state_dict(ours.state_dict(), strict=True)
    yield ours, official, request.param
    torch.set_num_threads(threads)


@pytest.mark.parametrize("batch", [1, 8])
def test_fast_codes_identical_to_official(pair, batch):
    ours, official, _ = pair
    audio = _speech(ours.sampling_rate, batch, 0.8 if batch == 1 else 0.3)
    length = min(len(a) for a in audio)
    x = torch.stack([torch.from_numpy(a[:length]) for a in audio])[:, None]
    with torch.inference_mode():
        assert ours.uses_fast_path()
        got = ours.encode(x)
        want = official.encode(x)
    assert len(got) == len(want)
    for level, (g, w) in enumerate(zip(got, want)):
        assert torch.equal(g, w), f"level {level}: {(g != w).sum().item()} codes differ"


@pytest.mark.parametrize("batch", [1, 8])
def test_fast_decode_matches_plain_path(pair, batch):
    ours, _, _ = pair
    torch.manual_seed(1)
    frames = ours.num_frames(ours.pad_multiple)
    codes = [torch.randint(0, ours.codebook_size, (batch, n)) for n in frames]
    with torch.inference_mode():
        fast_audio = ours.decode(codes, noise_seed=7)
        ours.fast_inference = False
        try:
            plain_audio = ours.decode(codes, noise_seed=7)
        finally:
            ours.fast_inference = True
    assert fast_audio.shape == plain_audio.shape == (batch, 1, ours.pad_multiple)
    assert (fast_audio - plain_audio).abs().max().item() <= 1e-4


def test_fast_decode_global_rng_noise_matches_plain_path(pair):
    """Without a seed the NoiseBlocks draw from the global RNG, in the same order on both paths."""
    ours, _, _ = pair
    frames = ours.num_frames(3 * ours.pad_multiple)
    codes = [torch.randint(0, ours.codebook_size, (2, n), generator=torch.Generator().manual_seed(3)) for n in frames]
    with torch.inference_mode():
        torch.manual_seed(11)
        fast_audio = ours.decode(codes)
        ours.fast_inference = False
        try:
            torch.manual_seed(11)
            plain_audio = ours.decode(codes)
        finally:
            ours.fast_inference = True
    assert (fast_audio - plain_audio).abs().max().item() <= 1e-4


def test_masked_batch_equals_one_by_one(pair):
    """Mixed lengths in one masked call give each row its own codes: ours through the fast path
    (in-place masks), the official model through the conv hooks of tokens.batching."""
    ours, official, _ = pair
    audio = [torch.from_numpy(a) for a in _speech(ours.sampling_rate, 3, 0.5)]
    with torch.inference_mode():
        alone = [official.encode(a[None, None]) for a in audio]
        for model in (ours, official):
            batched = encode_exact(model, audio, rows_per_call=0)
            for i, (row, want) in enumerate(zip(batched, alone)):
                for level, (r, w) in enumerate(zip(row, want)):
                    assert torch.equal(r, w[0]), f"{type(model).__module__} utterance {i} level {level}"


def test_snake_is_bit_identical():
    torch.manual_seed(0)
    layer = Snake1d(16)
    with torch.no_grad():
        layer.alpha.uniform_(0.2, 3.0)
    x = torch.randn(3, 16, 301) * 4
    with torch.no_grad():
        assert torch.equal(fast.snake(x, layer.alpha), layer(x))


def test_snake_into_buffer_is_bit_identical():
    torch.manual_seed(0)
    alpha = torch.rand(1, 16, 1) * 3 + 0.2
    x = torch.randn(2, 16, 513) * 4
    out = torch.full_like(x, float("nan"))
    got = fast.snake(x, alpha, out=out)
    assert got.data_ptr() == out.data_ptr()
    assert torch.equal(got, fast.snake(x, alpha))


@pytest.mark.parametrize("length", [1, 5, 40, 300])
@pytest.mark.parametrize("dilation", [1, 3, 9])
@pytest.mark.parametrize("bias", [True, False])
def test_depthwise_matches_conv1d(length, dilation, bias):
    """Shifted multiply-adds equal the zero-padded depthwise conv, also where the dilated kernel
    reaches past both ends of a short input."""
    torch.manual_seed(length + dilation)
    conv = torch.nn.Conv1d(6, 6, 7, dilation=dilation, padding=3 * dilation, groups=6, bias=bias)
    assert fast.is_same_depthwise(conv)
    x = torch.randn(2, 6, length)
    with torch.no_grad():
        want = conv(x)
        got = fast.depthwise(x, conv.weight, conv.bias, dilation, out=torch.full_like(x, float("nan")))
    assert torch.allclose(got, want, atol=1e-5)


def test_depthwise_detection():
    assert not fast.is_same_depthwise(torch.nn.Conv1d(6, 6, 7, padding=2, groups=6))  # not "same"
    assert not fast.is_same_depthwise(torch.nn.Conv1d(6, 6, 7, padding=3, groups=3))  # not depthwise
    assert not fast.is_same_depthwise(torch.nn.Conv1d(6, 6, 7, padding=3, groups=6, stride=2))
    assert fast.is_same_depthwise(torch.nn.Conv1d(6, 6, 7, padding=9, dilation=3, groups=6))


def test_workspace_reuses_only_dead_buffers():
    ws = fast.Workspace()
    like = torch.zeros(1)
    a = ws.empty((4, 8), like)
    b = ws.empty((4, 8), like)
    assert a.data_ptr() != b.data_ptr()  # a is alive
    view = a[1:3]  # a view keeps the buffer alive after the tensor itself is gone
    a_ptr = a.data_ptr()
    del a
    c = ws.empty((4, 8), like)
    assert c.data_ptr() not in (a_ptr, b.data_ptr())
    del view
    assert ws.empty((4, 8), like).data_ptr() == a_ptr  # dead now: reused
    assert ws.empty((2, 8), like).shape == (2, 8)  # another shape: its own buffer


def test_workspace_without_use_counts_never_reuses(monkeypatch):
    monkeypatch.setattr(fast, "_use_count", None)
    ws = fast.Workspace()
    first = ws.empty((4, 8), torch.zeros(1))
    second = ws.empty((4, 8), torch.zeros(1))
    assert first.shape == second.shape == (4, 8)
    assert not ws._buffers  # plain allocations, nothing kept for reuse


def test_buffer_pool_reuses_idle_buffers_across_calls_and_caps_its_memory():
    pool = fast.BufferPool(max_bytes=4 * 64)
    like = torch.zeros(1)
    a = pool.take((4, 8), like)
    a_ptr = a.data_ptr()
    b = pool.take((2, 8), like)
    assert b.data_ptr() != a_ptr  # a is alive
    del a
    c = pool.take((2, 8), like)  # a smaller request takes the front of an idle larger buffer
    assert c.data_ptr() == a_ptr and c.shape == (2, 8)
    keep = c[1:]
    del c
    assert pool.take((2, 8), like).data_ptr() != a_ptr  # a view keeps it busy
    assert pool.nbytes() <= 4 * 64
    big = pool.take((100,), like)  # beyond max_bytes: allocated, not kept
    assert big.shape == (100,) and pool.nbytes() <= 4 * 64
    del keep, b
    pool.clear()
    assert pool.nbytes() == 0
    import copy
    import pickle
    pool.take((8,), like)
    assert copy.deepcopy(pool).nbytes() == 0 and pickle.loads(pickle.dumps(pool)).nbytes() == 0


def test_model_keeps_activation_memory_between_calls_and_results_are_not_overwritten():
    """The second decode reuses the first one's buffers (no new activation memory), the returned audio
    of the first call is not a pool buffer that the second call overwrites, and ``release_buffers``
    empties the pool."""
    torch.manual_seed(0)
    model = SNAC(**dict(SNAC_24KHZ, encoder_dim=8, decoder_dim=32)).eval()
    audio = torch.randn(1, 1, 2 * 4096) * 0.3
    with torch.inference_mode():
        codes = model.encode(audio)
        torch.manual_seed(1)
        first = model.decode(codes)
        kept = first.clone()
        held = model._activation_pool.nbytes()
        assert held > 0
        torch.manual_seed(1)
        second = model.decode(codes)
        assert model._activation_pool.nbytes() == held
        assert torch.equal(first, kept) and torch.equal(second, kept)
        z = model.encode(audio)
        assert all(torch.equal(x, y) for x, y in zip(z, codes))
    model.release_buffers()
    assert model._activation_pool.nbytes() == 0


@pytest.mark.parametrize("stride", [2, 3, 4, 8])
@pytest.mark.parametrize("length", [1, 2, 17])
def test_polyphase_transposed_conv(stride, length):
    """One GEMM over the stacked, zero-padded shifted inputs equals the transposed conv, also for
    inputs shorter than the kernel's taps."""
    torch.manual_seed(stride)
    conv = torch.nn.ConvTranspose1d(12, 5, kernel_size=2 * stride, stride=stride,
                                    padding=(stride + 1) // 2, output_padding=stride % 2)
    x = torch.randn(2, 12, length)
    with torch.no_grad():
        want = conv(x)
        got = fast.conv_transpose_polyphase(x, conv, fast.polyphase_weight(conv.weight, stride))
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5)


def test_train_mode_and_autograd_use_plain_path(monkeypatch):
    torch.manual_seed(0)
    model = SNAC(**SMALL_32KHZ)
    x = torch.from_numpy(_speech(32000, 1, 0.3)[0])[None, None]
    calls = []
    real_init = fast.FastPath.__init__

    def spy(self, *args, **kwargs):  # one FastPath per fast encode / decode call
        calls.append(1)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(fast.FastPath, "__init__", spy)

    with torch.no_grad():
        model.train()
        assert not model.uses_fast_path()
        model.encode(x)
    assert not calls
    model.eval()
    model.encode(x)  # autograd enabled: plain path
    assert not calls
    with torch.inference_mode():
        codes = model.encode(x)
        model.decode(codes, noise_seed=0)
    assert len(calls) == 2
    model.train()
    with torch.no_grad():
        model.encode(x)
    assert len(calls) == 2


def test_gradients_and_weight_updates_after_fast_calls():
    """Fast calls leave training intact: gradients flow, the state dict is unchanged, and a weight
    update is seen by the next fast call (the folded-weight cache is invalidated)."""
    torch.manual_seed(0)
    model = SNAC(**SMALL_32KHZ).eval()
    keys = list(model.state_dict())
    x = torch.from_numpy(_speech(32000, 1, 0.3)[0])[None, None]
    with torch.inference_mode():
        codes = model.encode(x)
        before = model.decode(codes, noise_seed=0)
    assert list(model.state_dict()) == keys

    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    out = model.forward_with_losses(x)
    (out.audio_hat.abs().mean() + out.commitment_loss.sum()).backward()
    grads = [p.grad for p in model.decoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    opt.step()

    model.eval()
    with torch.inference_mode():
        after = model.decode(codes, noise_seed=0)
        model.fast_inference = False
        plain = model.decode(codes, noise_seed=0)
        model.fast_inference = True
    assert not torch.allclose(after, before)
    assert (after - plain).abs().max().item() <= 1e-4


def test_hooks_force_plain_path():
    """A forward hook on an encoder module must run: such calls go through the modules."""
    torch.manual_seed(0)
    model = SNAC(**SMALL_32KHZ).eval()
    seen = []
    handle = model.encoder.block[0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.inference_mode():
        model.encode(torch.zeros(1, 1, model.pad_multiple))
    handle.remove()
    assert len(seen) == 1


def _huge_kib(address: int) -> int:
    """AnonHugePages (kB) of the mapping that holds ``address`` (/proc/self/smaps)."""
    found = False
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            lo, hi = (int(v, 16) for v in head.split("-"))
            found = lo <= address < hi
        elif found and line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


def test_pool_buffers_ask_for_huge_pages():
    """Large pool buffers are advised for transparent huge pages: written once, part of them is backed
    by 2 MiB pages where the kernel's THP mode honours the advice (``madvise`` or ``always``)."""
    from pathlib import Path

    mode = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not mode.exists() or "[never]" in mode.read_text():
        pytest.skip("no transparent huge pages on this system")
    pool = fast.BufferPool()
    buf = pool.take(((64 << 20) // 4,), torch.zeros(1))
    buf.fill_(1.0)
    assert _huge_kib(buf.data_ptr() + (32 << 20)) > 0
    small = pool.take((1024,), torch.zeros(1))  # below the size worth advising: left alone
    assert small.numel() == 1024
