"""Checks that need a CUDA device (marker ``cuda``; skipped without one, run by benchmarks/gpu_check.sh).

    python -m pytest -q -m cuda tests/test_cuda_only.py

Exact batching on the GPU equals one by one, the GPU codes agree with the CPU codes, token
extraction on ``--device cuda`` (with an out-of-memory retry), a bf16 GAN step stays finite, the
streaming decoder equals the full decode, and the trainer resumes on the GPU.
"""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import torch

from espnet_snac.model.frames import codes_to_frames
from espnet_snac.model.snac import SNAC, SNAC_24KHZ
from espnet_snac.tokens.batching import BatchEncoder, exact_cuda_math
from speech_samples import demo_files

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def model_cpu() -> SNAC:
    torch.manual_seed(0)
    return SNAC(**SNAC_24KHZ).eval()


@pytest.fixture(scope="module")
def model_gpu(model_cpu) -> SNAC:
    torch.manual_seed(0)
    gpu = SNAC(**SNAC_24KHZ).eval().cuda()
    gpu.load_state_dict(model_cpu.state_dict())
    return gpu


@pytest.fixture(scope="module")
def speech() -> list:
    from espnet_snac.io.audio_io import load_mono

    files = demo_files()[:24]
    if len(files) < 24:
        pytest.skip("demo corpus missing")
    return [load_mono(f, 24000)[0] for f in files]


def _alone(model: SNAC, audio: np.ndarray) -> np.ndarray:
    device = next(model.parameters()).device
    with torch.inference_mode(), exact_cuda_math(device):
        codes = model.encode(torch.from_numpy(audio).to(device)[None, None])
    return codes_to_frames(codes)[0].cpu().numpy()


def test_exact_batches_of_16_equal_one_by_one_on_cuda(model_gpu, speech):
    batched = BatchEncoder(model_gpu, batch_size=16).encode(speech)
    differ = [i for i, (a, f) in enumerate(zip(speech, batched)) if not np.array_equal(f, _alone(model_gpu, a))]
    assert differ == [], f"utterances whose batched codes differ from one by one: {differ}"


def test_gpu_codes_agree_with_cpu_codes(model_cpu, model_gpu, speech):
    """Different kernels round differently, so a code that sits on a tie may flip (about 1 in 10^4 on
    CPU kernels): the codes must agree almost everywhere, not bit for bit."""
    total = same = 0
    for audio in speech[:8]:
        a, b = _alone(model_cpu, audio), _alone(model_gpu, audio)
        total += a.size
        same += int((a == b).sum())
    assert same / total >= 0.999, f"{total - same} of {total} codes differ between CPU and GPU"


def test_extract_tokens_on_cuda_with_an_out_of_memory_batch(model_cpu, tmp_path, monkeypatch):
    from espnet_snac.bin import extract_tokens
    from espnet_snac.tokens import batching

    model_cpu.save_pretrained(tmp_path / "model")
    files = demo_files()[:6]
    (tmp_path / "wav.scp").write_text("".join(f"u{i} {f}\n" for i, f in enumerate(files)))
    args = ["--model", str(tmp_path / "model"), "--wav_scp", str(tmp_path / "wav.scp"), "--device", "cuda",
            "--num_workers", "0", "--no_progress", "--batch_size", "6"]
    assert extract_tokens.main([*args, "--output_dir", str(tmp_path / "clean")]) == 0
    real = batching.encode_exact

    def oom_for_batches(model, audios, rows_per_call=None, **options):
        if len(audios) > 1:
            _held = torch.empty(len(audios), 1 << 20, device="cuda")  # real GPU memory in the failed frame  # noqa: F841
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(model, audios, rows_per_call, **options)

    monkeypatch.setattr(batching, "encode_exact", oom_for_batches)
    assert extract_tokens.main([*args, "--output_dir", str(tmp_path / "oom")]) == 0
    a = {k: np.asarray(v) for k, v in kaldiio.load_scp(str(tmp_path / "clean" / "codes.scp")).items()}
    b = {k: np.asarray(v) for k, v in kaldiio.load_scp(str(tmp_path / "oom" / "codes.scp")).items()}
    assert len(a) == 6 and list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "oom" / "rejected.tsv").read_text().strip()


def test_bf16_gan_step_on_cuda_is_finite():
    from espnet_snac.train.step import GANStep, StepConfig
    from tiny_training import optimizers, speech_like, tiny_model

    model = tiny_model().cuda()
    step = GANStep(model, optimizers(model), [None, None], StepConfig(precision="bf16"), device="cuda")
    audio = speech_like(batch=2).cuda()
    for _ in range(3):
        weighted, plain = step(audio)
    assert plain["nonfinite_steps"] == 0 and all(math.isfinite(v) for v in weighted.values())
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in model.parameters())


def test_streaming_decoder_on_cuda_equals_full_decode(model_gpu, speech):
    from espnet_snac.inference.streaming import StreamingDecoder

    # IEEE fp32 on both sides: what is compared is the streaming algorithm, not TF32 rounding
    with torch.inference_mode(), exact_cuda_math(torch.device("cuda")):
        codes = model_gpu.encode(torch.from_numpy(speech[0][:48000]).cuda()[None, None])
        full = model_gpu.decode(codes, add_noise=False)
        frames = codes_to_frames(codes)
        decoder = StreamingDecoder(model_gpu, add_noise=False)
        pieces = [decoder.push(frames[:, i: i + 1]) for i in range(frames.shape[1])] + [decoder.flush()]
    streamed = torch.cat(pieces, dim=-1)
    assert streamed.device.type == "cuda" and streamed.shape == full.shape
    assert float((streamed - full).abs().max()) < 1e-4


def test_trainer_resumes_on_cuda(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "resume_check.py"), "--device", "cuda",
                           "--work_dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "resume_ok=true" in proc.stdout.splitlines()[-1]
