"""Token extraction speed: ours vs the official ``snac`` package, same weights, same audio, one run.

    python benchmarks/bench_extract.py [--device cpu|cuda] [--num_files 16] [--batch_size 8]

Both models get the official 24 kHz architecture with one set of random weights (no download:
codes from random weights cost the same to compute as from trained ones). Audio: the demo corpus
(``local/demo_corpus``), resampled to 24 kHz. Rows:

- ``official, one by one``: ``snac.SNAC.encode`` per utterance (the exact path of the package);
- ``official, padded batch``: one zero-padded batch per ``batch_size`` utterances (faster on GPU,
  but codes near the end of shorter utterances change, counted in the last column);
- ``ours, one by one``: ``espnet_snac.SNAC.encode`` per utterance;
- ``ours, exact batches``: ``tokens.batching.BatchEncoder`` (length-sorted, masked; codes equal
  to one by one).

Prints measured numbers only: wall seconds, audio seconds per second, real-time factor, and how
many utterances' codes differ from the official one-by-one codes. On CUDA every row runs in IEEE
fp32 (TF32 off, deterministic cuDNN: ``tokens.batching.exact_cuda_math``, the setting of the exact
path), so differences come from the method, not from TF32; one more row on CUDA, the same batches
with PyTorch's TF32 defaults, measures what exactness costs. Last line: ``audio_s_per_s=X rtf=Y
codes_identical=true|false`` for the exact batches against ours one by one (``tf32_audio_s_per_s=Z``
on CUDA).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Callable, List

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from espnet_snac.io.audio_io import load_mono  # noqa: E402
from espnet_snac.model.frames import codes_to_frames  # noqa: E402
from espnet_snac.model.snac import SNAC, SNAC_24KHZ  # noqa: E402
from espnet_snac.tokens.batching import BatchEncoder, exact_cuda_math  # noqa: E402


def load_audio(n: int) -> List[np.ndarray]:
    files = sorted((REPO / "local" / "demo_corpus").rglob("*.flac"))
    files = files[:n] if n > 0 else files
    if not files:
        raise SystemExit("local/demo_corpus has no audio; run local/make_demo_corpus.sh")
    return [load_mono(f, 24000)[0] for f in files]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def one_by_one(model, audios, device) -> List[np.ndarray]:
    out = []
    for a in audios:
        codes = model.encode(torch.from_numpy(a).to(device)[None, None])
        out.append(codes_to_frames(codes)[0].cpu().numpy())
    return out


def padded_batches(model, audios, device, batch_size) -> List[np.ndarray]:
    out = []
    order = sorted(range(len(audios)), key=lambda i: -len(audios[i]))
    results = {}
    for s in range(0, len(order), batch_size):
        idx = order[s: s + batch_size]
        longest = len(audios[idx[0]])
        x = torch.zeros(len(idx), 1, longest)
        for r, i in enumerate(idx):
            x[r, 0, : len(audios[i])] = torch.from_numpy(audios[i])
        frames = codes_to_frames(model.encode(x.to(device))).cpu().numpy()
        for r, i in enumerate(idx):
            results[i] = frames[r, : math.ceil(len(audios[i]) / 2048)]
    out = [results[i] for i in range(len(audios))]
    return out


def timed(fn: Callable, device, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        with torch.no_grad():
            result = fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best, result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--num_files", type=int, default=16, help="first N demo-corpus utterances (0: all)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--repeats", type=int, default=2, help="best of N runs per row")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import snac as official_pkg

    device = torch.device(args.device)
    torch.manual_seed(0)
    ours = SNAC(**SNAC_24KHZ).eval()
    official = official_pkg.SNAC(**SNAC_24KHZ).eval()
    official.load_state_dict(ours.state_dict(), strict=True)  # same weights
    ours.to(device)
    official.to(device)
    audios = load_audio(args.num_files)
    seconds = sum(len(a) for a in audios) / 24000
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
          f"torch {torch.__version__}, snac {getattr(official_pkg, '__version__', '?')}")
    print(f"audio: {len(audios)} utterances, {seconds:.1f} s; batch_size {args.batch_size}")

    # warm-up (allocator, kernels)
    with torch.no_grad():
        one_by_one(ours, audios[:1], device)
        one_by_one(official, audios[:1], device)
    encoder = BatchEncoder(ours, batch_size=args.batch_size)
    rows = [
        ("official, one by one", lambda: one_by_one(official, audios, device)),
        ("official, padded batch", lambda: padded_batches(official, audios, device, args.batch_size)),
        ("ours, one by one", lambda: one_by_one(ours, audios, device)),
        ("ours, exact batches", lambda: encoder.encode(audios)),
    ]
    reference = None
    results = {}
    print(f"{'method':<28} {'wall s':>8} {'audio-s/s':>10} {'RTF':>8} {'utts differing':>15}")

    def row(name: str, fn: Callable) -> None:
        nonlocal reference
        wall, frames = timed(fn, device, args.repeats)
        if reference is None:
            reference = frames
        results[name] = (wall, frames)
        differ = sum(not np.array_equal(a, b) for a, b in zip(frames, reference))
        print(f"{name:<28} {wall:>8.2f} {seconds / wall:>10.1f} {wall / seconds:>8.4f} {differ:>9}/{len(audios)}")

    with exact_cuda_math(device):
        for name, fn in rows:
            row(name, fn)
    extra = ""
    if device.type == "cuda":  # what exactness costs: the same batches with PyTorch's TF32 defaults
        inexact = BatchEncoder(ours, batch_size=args.batch_size, cuda_exact_math=False)
        row("ours, batches, TF32 default", lambda: inexact.encode(audios))
        tf32_wall = results["ours, batches, TF32 default"][0]
        extra = f" tf32_audio_s_per_s={seconds / tf32_wall:.1f}"
    wall, exact = results["ours, exact batches"]
    alone = results["ours, one by one"][1]
    identical = all(np.array_equal(a, b) for a, b in zip(exact, alone))
    print(f"audio_s_per_s={seconds / wall:.1f} rtf={wall / seconds:.5f} "
          f"codes_identical={'true' if identical else 'false'}{extra}")


if __name__ == "__main__":
    main()
