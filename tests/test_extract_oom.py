"""GPU out-of-memory during token extraction, and the exact-math settings of exact batching on CUDA.

Both reproduced on CPU: the OOM is injected into the extraction loop (``torch.OutOfMemoryError``
for any batch of more than one utterance), the CUDA settings are checked with the device mocked.
"""
from __future__ import annotations

import contextlib
import gc
import weakref
from pathlib import Path
from types import SimpleNamespace

import kaldiio
import numpy as np
import pytest
import torch

from espnet_snac.bin import extract_tokens
from espnet_snac.model.snac import SNAC, SNAC_24KHZ
from espnet_snac.tokens import batching
from speech_samples import demo_files

N_UTTS = 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("oom")
    torch.manual_seed(0)
    SNAC(**dict(SNAC_24KHZ, encoder_dim=8, decoder_dim=32)).eval().save_pretrained(root / "model")
    files = [f for f in demo_files() if "/test/" in f.as_posix()][:N_UTTS]
    if len(files) < N_UTTS:
        pytest.skip("demo corpus missing")
    (root / "wav.scp").write_text("".join(f"utt{i} {f}\n" for i, f in enumerate(files)))
    return root


def _extract(root: Path, out: Path) -> int:
    return extract_tokens.main(["--model", str(root / "model"), "--wav_scp", str(root / "wav.scp"),
                                "--output_dir", str(out), "--num_workers", "0", "--batch_size", "4",
                                "--no_progress"])


def test_oom_batch_is_released_then_retried_one_by_one_without_rejects(setup, tmp_path, monkeypatch):
    clean = tmp_path / "clean"
    assert _extract(setup, clean) == 0

    real = batching.encode_exact
    failed_batches: list = []  # weak references to the signals of each batch that ran out of memory
    alive_at_retry: list = []

    def encode_exact_oom(model, audios, rows_per_call=None, **options):
        if len(audios) > 1:
            failed_batches.append([weakref.ref(a) for a in audios])
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        gc.collect()  # only cycles aside: what is still referenced is kept alive on purpose
        alive_at_retry.append(sum(r() is not None for batch in failed_batches for r in batch))
        return real(model, audios, rows_per_call, **options)

    monkeypatch.setattr(batching, "encode_exact", encode_exact_oom)
    faulty = tmp_path / "faulty"
    assert _extract(setup, faulty) == 0
    assert len(failed_batches) == 1 and len(failed_batches[0]) == N_UTTS
    assert alive_at_retry == [0] * N_UTTS  # the failed batch's tensors were freed before each retry
    assert not (faulty / "rejected.tsv").read_text().strip()
    a = {k: np.asarray(v) for k, v in kaldiio.load_scp(str(clean / "codes.scp")).items()}
    b = {k: np.asarray(v) for k, v in kaldiio.load_scp(str(faulty / "codes.scp")).items()}
    assert len(a) == N_UTTS and list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert (clean / "text").read_text() == (faulty / "text").read_text()


class _Writer:
    def __init__(self):
        self.written, self.rejected = [], []

    def write(self, utt, frames, n):
        self.written.append(utt)

    def reject(self, utt, reason):
        self.rejected.append((utt, reason))


def test_retry_empties_the_cuda_cache_and_rejects_only_what_fails_alone(monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))

    def encode(audios):
        if len(audios) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        if audios[0].size == 3:
            raise RuntimeError("bad utterance")
        return [np.zeros((1, 7), np.int32)]

    encoder = SimpleNamespace(device=torch.device("cuda"), encode=encode)
    writer = _Writer()
    pool = [("a", np.zeros(5)), ("b", np.zeros(3)), ("c", np.zeros(4))]
    assert extract_tokens.encode_pool(encoder, writer, pool) == 2
    assert writer.written == ["a", "c"] and [u for u, _ in writer.rejected] == ["b"]
    assert "bad utterance" in writer.rejected[0][1]
    assert emptied == [True]  # once, after the batch failed, before the retries
    encoder.device = torch.device("cpu")
    assert extract_tokens.encode_pool(encoder, _Writer(), pool[:1] + pool[2:]) == 2
    assert emptied == [True]  # never on CPU


def _flags():
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    return (cudnn.conv.fp32_precision, matmul.fp32_precision, cudnn.deterministic, cudnn.benchmark)


def test_exact_batching_on_cuda_turns_tf32_and_autotuning_off_and_restores_them(monkeypatch):
    seen = []
    monkeypatch.setattr(batching, "_encode_rows", lambda model, batch, lengths: seen.append(_flags()) or
                        [torch.zeros(batch.shape[0], batch.shape[-1] // 2048, dtype=torch.long)])
    fake_cuda = SimpleNamespace(parameters=lambda: iter([SimpleNamespace(device=torch.device("cuda"))]),
                                pad_multiple=2048)
    monkeypatch.setattr(batching, "torch", SimpleNamespace(  # tensors stay on CPU, the model says cuda
        zeros=lambda *a, device=None, **k: torch.zeros(*a, **k), tensor=lambda x, device=None: torch.tensor(x),
        no_grad=torch.no_grad, backends=torch.backends, device=torch.device))
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    # a user's own settings: TF32 on, autotuning on
    before = (cudnn.conv.fp32_precision, matmul.fp32_precision, cudnn.deterministic, cudnn.benchmark)
    try:
        cudnn.conv.fp32_precision, matmul.fp32_precision = "tf32", "tf32"
        cudnn.deterministic, cudnn.benchmark = False, True
        out = batching.encode_exact(fake_cuda, [torch.zeros(3000), torch.zeros(5000)])
        assert seen == [("ieee", "ieee", True, False)]  # inside the exact encode
        assert _flags() == ("tf32", "tf32", False, True)  # the user's settings are back
        assert [c.shape[0] for c in out[0]] == [2] and [c.shape[0] for c in out[1]] == [3]  # rows cut to own length
        batching.encode_exact(fake_cuda, [torch.zeros(3000)], cuda_exact_math=False)  # measuring the cost
        assert seen[1] == ("tf32", "tf32", False, True)  # the caller's settings, untouched

        def boom(model, batch, lengths):
            raise torch.OutOfMemoryError("injected")

        monkeypatch.setattr(batching, "_encode_rows", boom)
        with pytest.raises(torch.OutOfMemoryError):
            batching.encode_exact(fake_cuda, [torch.zeros(3000)])
        assert _flags() == ("tf32", "tf32", False, True)  # restored after an error too
    finally:
        cudnn.conv.fp32_precision, matmul.fp32_precision, cudnn.deterministic, cudnn.benchmark = before
    seen.clear()
    monkeypatch.setattr(batching, "_encode_rows", lambda model, batch, lengths: seen.append(_flags()) or
                        [torch.zeros(batch.shape[0], 1, dtype=torch.long)])
    fake_cpu = SimpleNamespace(parameters=lambda: iter([SimpleNamespace(device=torch.device("cpu"))]),
                               pad_multiple=2048)
    batching.encode_exact(fake_cpu, [torch.zeros(100)])
    assert seen == [before]  # CPU: nothing changed


def test_tokenizer_encodes_whole_batches_under_the_same_exact_math(monkeypatch):
    """``SNACTokenizer.encode(wavs)`` and ``encode(wavs, lengths)`` must agree on CUDA too: the plain
    path runs under the exact path's settings."""
    from espnet_snac.inference import tokenizer as tok

    calls = []

    @contextlib.contextmanager
    def record(device):
        calls.append(torch.device(device).type)
        yield

    monkeypatch.setattr(tok, "exact_cuda_math", record)
    torch.manual_seed(0)
    t = tok.SNACTokenizer(SNAC(**dict(SNAC_24KHZ, encoder_dim=8, decoder_dim=32)))
    monkeypatch.setattr(tok.SNACTokenizer, "device", property(lambda self: torch.device("cuda")))
    monkeypatch.setattr(tok.SNACTokenizer, "_wavs", lambda self, wavs: wavs)  # the tensors stay on CPU
    monkeypatch.setattr(tok.SNACTokenizer, "_autocast", lambda self: contextlib.nullcontext())
    codes = t.encode(torch.zeros(1, 1, 4096))
    assert calls == ["cuda"] and codes.shape == (1, 2, 7)
