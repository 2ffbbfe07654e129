"""Encode / decode speed: ours vs the official ``snac`` package, same weights, same audio, one process.

    python benchmarks/bench_codec.py [--device cpu|cuda] [--batch_size 1] [--threads 2]
                                     [--wav_scp data/test/wav.scp] [--repeats 3] [--seconds S]

Both models get the official 24 kHz architecture with one set of random weights (seed 0, no
download: the arithmetic costs the same as with trained weights). Audio: the demo corpus
(``local/demo_corpus``, resampled to 24 kHz) or a Kaldi ``wav.scp`` of 24 kHz files.

- official: ``snac.SNAC.encode`` / ``decode`` one utterance at a time (the package's exact path);
- ours: ``espnet_snac.SNAC`` in eval mode under ``torch.inference_mode()`` (the fast path), encoding
  through ``tokens.batching.encode_exact`` in length-sorted groups of ``--batch_size`` (exact
  codes) and decoding the same groups (on CPU one row per call; elsewhere zero-padded batches).

Each repeat times official and ours back to back (alternating, so background load hits both
alike); the median over repeats is reported. Peak memory: the largest resident-set growth during
a side's runs on CPU, ``torch.cuda.max_memory_allocated`` on CUDA. Codes of ours are compared with
the official codes utterance by utterance; decoded audio is compared one by one with the noise
blocks off on both sides (their noise is random by design). On CUDA both sides run in IEEE fp32 (TF32
off, deterministic cuDNN: ``tokens.batching.exact_cuda_math``), the setting under which codes can be
compared; PyTorch's default TF32 convolutions round differently per kernel. Last line:
``encode_speedup=X decode_speedup=Y codes_identical=true|false``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from espnet_snac.model import kernels  # noqa: E402
from espnet_snac.io.audio_io import load_mono, to_mono  # noqa: E402
from espnet_snac.model.snac import SNAC, SNAC_24KHZ  # noqa: E402
from espnet_snac.io.scp import load_scp_audio, read_scp  # noqa: E402
from espnet_snac.tokens.batching import default_rows_per_call, encode_exact, exact_cuda_math  # noqa: E402

RATE = 24000


def load_audio(wav_scp: str, num_files: int) -> List[Tuple[str, np.ndarray]]:
    """``[(name, samples at 24 kHz)]``; a wav.scp entry at another rate is an error."""
    if wav_scp:
        out = []
        for utt, value in read_scp(wav_scp).items():
            samples, rate = load_scp_audio(value, name=utt)
            if rate != RATE:
                raise SystemExit(f"{wav_scp}: {utt} is {rate} Hz; this benchmark takes 24 kHz audio "
                                 "(resample it, e.g. with sox or espnet_snac.bin.prepare_data)")
            out.append((utt, to_mono(samples)))
    else:
        files = sorted((REPO / "local" / "demo_corpus").rglob("*.flac"))
        if not files:
            raise SystemExit("local/demo_corpus has no audio; pass --wav_scp or run local/make_demo_corpus.sh")
        out = [(f.stem, load_mono(f, RATE)[0]) for f in files]
    if num_files > 0:
        out = out[:num_files]
    if not out:
        raise SystemExit(f"{wav_scp or 'local/demo_corpus'}: no utterances")
    return out


def join_utterances(items: Sequence[Tuple[str, np.ndarray]], seconds: float,
                    gap: float = 0.1) -> List[Tuple[str, np.ndarray]]:
    """Consecutive utterances joined, with ``gap`` seconds of silence between them, into files of
    at least ``seconds`` (the last one may be shorter): long real speech from short utterances."""
    out, parts, length = [], [], 0
    silence = np.zeros(int(gap * RATE), dtype=np.float32)
    for name, audio in items:
        parts += [np.asarray(audio, dtype=np.float32), silence]
        length += audio.shape[-1] + silence.size
        if length >= seconds * RATE:
            out.append((f"joined{len(out)}", np.concatenate(parts[:-1])))
            parts, length = [], 0
    if parts:
        out.append((f"joined{len(out)}", np.concatenate(parts[:-1])))
    return out


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_memory(device: torch.device, record: List[float]) -> Iterator[None]:
    """Appends the peak memory growth (MB) over the block to ``record``."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        yield
        torch.cuda.synchronize()
        record.append((torch.cuda.max_memory_allocated() - base) / 2**20)
        return
    if not os.path.exists("/proc/self/statm"):  # no cheap RSS probe on this OS
        yield
        return
    base, peak, done = _rss_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.002)

    probe = threading.Thread(target=sample, daemon=True)
    probe.start()
    try:
        yield
    finally:
        done.set()
        probe.join()
        record.append(max(0, max(peak[0], _rss_bytes()) - base) / 2**20)


def groups(lengths: Sequence[int], batch_size: int) -> List[List[int]]:
    """Indices in length-sorted groups of ``batch_size`` (longest first)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[s: s + batch_size] for s in range(0, len(order), batch_size)]


def official_encode(model, audios: List[torch.Tensor]) -> List[List[torch.Tensor]]:
    return [[c[0] for c in model.encode(a[None, None])] for a in audios]


def official_decode(model, codes: List[List[torch.Tensor]]) -> List[torch.Tensor]:
    return [model.decode([c[None] for c in levels])[0, 0] for levels in codes]


def ours_encode(model: SNAC, audios: List[torch.Tensor], batch_size: int) -> List[List[torch.Tensor]]:
    out: Dict[int, List[torch.Tensor]] = {}
    for idx in groups([a.shape[-1] for a in audios], batch_size):
        for i, levels in zip(idx, encode_exact(model, [audios[i] for i in idx])):
            out[i] = levels
    return [out[i] for i in range(len(audios))]


def ours_decode(model: SNAC, codes: List[List[torch.Tensor]], batch_size: int,
                add_noise: bool = True) -> List[torch.Tensor]:
    rows = default_rows_per_call(next(model.parameters()).device) or batch_size
    out: Dict[int, torch.Tensor] = {}
    for idx in groups([c[0].shape[-1] for c in codes], min(rows, batch_size)):
        longest = [max(codes[i][level].shape[-1] for i in idx) for level in range(len(codes[0]))]
        batch = [torch.stack([torch.nn.functional.pad(codes[i][level], (0, n - codes[i][level].shape[-1]))
                              for i in idx]) for level, n in enumerate(longest)]
        audio = model.decode(batch, add_noise=add_noise)
        for row, i in enumerate(idx):
            out[i] = audio[row, 0, : codes[i][-1].shape[-1] * model.hop_length]
    return [out[i] for i in range(len(codes))]


@contextmanager
def official_noise_off(model) -> Iterator[None]:
    """The official NoiseBlocks as identities (for the decoded-audio comparison only)."""
    blocks = [m for m in model.modules() if type(m).__name__ == "NoiseBlock"]
    for b in blocks:
        b.forward = lambda x: x
    try:
        yield
    finally:
        for b in blocks:
            del b.forward


def timed(fn: Callable, device: torch.device, times: List[float], memory: List[float]):
    if device.type == "cuda":
        torch.cuda.synchronize()
    with peak_memory(device, memory):
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch_size", type=int, default=1, help="ours: utterances per group (official: 1)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--wav_scp", default="", help="Kaldi wav.scp of 24 kHz audio (default: the demo corpus)")
    p.add_argument("--num_files", type=int, default=0, help="use only the first N utterances (0: all)")
    p.add_argument("--join_seconds", type=float, default=0.0,
                   help="join consecutive utterances (0.1 s pauses) into files of at least this many "
                        "seconds before --num_files applies: long real speech from short utterances")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side; the median is reported")
    p.add_argument("--seconds", type=float, default=0.0, help="cut each utterance to this many seconds (0: whole)")
    args = p.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible to torch")
    if args.batch_size < 1 or args.repeats < 1:
        raise SystemExit("--batch_size and --repeats must be >= 1")
    import snac as official_pkg

    device = torch.device(args.device)
    torch.manual_seed(0)
    ours = SNAC(**SNAC_24KHZ).eval().to(device)
    official = official_pkg.SNAC(**SNAC_24KHZ).eval().to(device)
    official.load_state_dict(ours.state_dict(), strict=True)
    items = load_audio(args.wav_scp, 0 if args.join_seconds > 0 else args.num_files)
    if args.join_seconds > 0:
        items = join_utterances(items, args.join_seconds)
        items = items[:args.num_files] if args.num_files > 0 else items
    if args.seconds > 0:
        items = [(name, a[: int(args.seconds * RATE)]) for name, a in items]
    audios = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device) for _, a in items]
    seconds = sum(a.shape[-1] for a in audios) / RATE
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"device {device} ({where}), torch {torch.__version__}, snac {getattr(official_pkg, '__version__', '?')}")
    if device.type == "cpu":
        exact = "on" if kernels.status() == "on" and kernels.exact_snake.available() else "off"
        print(f"fused kernels (espnet_snac.model.kernels): {kernels.status()}; encoder Snake exact kernel: {exact}")
    joined = f", joined into files of >= {args.join_seconds:g} s" if args.join_seconds > 0 else ""
    print(f"audio: {len(audios)} utterances, {seconds:.1f} s ({args.wav_scp or 'local/demo_corpus'}{joined}); "
          f"ours batch_size {args.batch_size}; {args.repeats} alternating repeats, median")

    times: Dict[str, List[float]] = {k: [] for k in ("off_enc", "our_enc", "off_dec", "our_dec")}
    memory: Dict[str, List[float]] = {k: [] for k in times}
    with torch.inference_mode(), exact_cuda_math(device):
        ours_encode(ours, audios[:1], 1)  # warm-up: allocator, kernels, folded weights
        official_encode(official, audios[:1])
        for _ in range(args.repeats):
            off_codes = timed(lambda: official_encode(official, audios), device, times["off_enc"], memory["off_enc"])
            our_codes = timed(lambda: ours_encode(ours, audios, args.batch_size), device,
                              times["our_enc"], memory["our_enc"])
            timed(lambda: official_decode(official, off_codes), device, times["off_dec"], memory["off_dec"])
            timed(lambda: ours_decode(ours, off_codes, args.batch_size), device, times["our_dec"], memory["our_dec"])
        differ = sum(any(not torch.equal(a, b) for a, b in zip(x, y)) for x, y in zip(off_codes, our_codes))
        with official_noise_off(official):
            want = official_decode(official, off_codes)
        got = ours_decode(ours, off_codes, 1, add_noise=False)
        max_diff = max(float((w - g).abs().max()) for w, g in zip(want, got))

    med = {k: statistics.median(v) for k, v in times.items()}
    peak = {k: max(v) if v else float("nan") for k, v in memory.items()}
    print(f"{'side':<28} {'median s':>9} {'audio-s/s':>10} {'peak MB':>9}")
    for key, label in (("off_enc", "official encode (1 by 1)"), ("our_enc", f"ours encode (batch {args.batch_size})"),
                       ("off_dec", "official decode (1 by 1)"), ("our_dec", f"ours decode (batch {args.batch_size})")):
        print(f"{label:<28} {med[key]:>9.3f} {seconds / med[key]:>10.1f} {peak[key]:>9.0f}")
    enc_speedup, dec_speedup = med["off_enc"] / med["our_enc"], med["off_dec"] / med["our_dec"]
    print(f"utterances whose codes differ: {differ}/{len(audios)}; "
          f"max |decoded ours - official| (noise off): {max_diff:.3g}")
    print(f"encode_speedup={enc_speedup:.2f} decode_speedup={dec_speedup:.2f} "
          f"codes_identical={'true' if differ == 0 else 'false'}")


if __name__ == "__main__":
    main()
