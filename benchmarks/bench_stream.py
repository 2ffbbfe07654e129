"""Streaming decoding: latency, speed and error against the full decode, per lookahead.

    python benchmarks/bench_stream.py [--num_files 3] [--seconds 4] [--device cpu|cuda] [--threads 1]

Model: the official 24 kHz architecture with random weights (seed 0; no download). Audio: the demo
corpus (``local/demo_corpus/test``), resampled to 24 kHz, encoded to codes; each utterance is cut to
``--seconds``. Frames (7 codes, 2048 samples = 85.3 ms) arrive one at a time. Rows:

- ``stream, lookahead L``: :class:`espnet_snac.inference.streaming.StreamingDecoder` for L = 0 .. exact;
- ``Orpheus 4-frame window``: on every frame, decode the last 4 frames and keep samples 2048-4096
  (the second frame), as Orpheus-TTS does; it holds back 2 frames, so it sits next to L = 2;
- ``full decode (reference)``: ``SNAC.decode`` of the whole utterance, its cost spread over the frames.

Columns: lookahead (frames and ms), mean wall-clock compute per pushed frame (ms) and the CPU time of
this process for it (less sensitive to other load on the machine), latency = lookahead + compute
(ms), real-time factor per frame (wall and CPU time / 85.3 ms), and SNR (dB) of the streamed audio
against ``SNAC.decode`` of the whole utterance. Noise is off (``add_noise=False``) unless ``--noise``,
which gives every decode the same position-seeded noise. The SNR is taken over the samples every row
emits: frames 1 .. F-3 (the Orpheus window never emits the first frame and the last two).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from espnet_snac.io.audio_io import load_mono  # noqa: E402
from espnet_snac.model.frames import codes_to_frames, frames_to_codes  # noqa: E402
from espnet_snac.model.snac import SNAC, SNAC_24KHZ  # noqa: E402
from espnet_snac.inference.streaming import StreamingDecoder  # noqa: E402

FRAME = 2048  # samples per frame at 24 kHz


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def stream(model: SNAC, frames: torch.Tensor, lookahead: int, seed, noise: bool,
           device: torch.device) -> Tuple[torch.Tensor, List[Tuple[float, float]]]:
    """Push one frame at a time; returns the audio and (wall, CPU) seconds of every push that emitted audio."""
    decoder = StreamingDecoder(model, lookahead_frames=lookahead, noise_seed=seed, add_noise=noise)
    pieces, seconds = [], []
    for i in range(frames.shape[1]):
        sync(device)
        start, cpu = time.perf_counter(), time.process_time()
        pieces.append(decoder.push(frames[:, i: i + 1]))
        sync(device)
        if pieces[-1].shape[-1]:  # pushes that only buffer (the first `lookahead`) cost nothing
            seconds.append((time.perf_counter() - start, time.process_time() - cpu))
    pieces.append(decoder.flush())
    return torch.cat(pieces, dim=-1), seconds


def orpheus_window(model: SNAC, frames: torch.Tensor, seed, noise: bool,
                   device: torch.device) -> Tuple[torch.Tensor, List[Tuple[float, float]]]:
    """Orpheus-TTS: per frame from the 4th on, decode frames [i-3, i] and keep samples 2048-4096.

    Output sample positions are those of the full decode (frame 0 and the last two stay zero).
    """
    n = frames.shape[1]
    out = torch.zeros(frames.shape[0], 1, n * FRAME, device=device)
    seconds = []
    for i in range(3, n):
        sync(device)
        start, cpu = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            z = model.quantizer.from_codes(frames_to_codes(frames[:, i - 3: i + 1]))
            # same noise as the full decode at these positions, so only the window edges differ
            with model.noise(seed=seed, enabled=noise, start_frame=(i - 3) * model.vq_strides[0]):
                audio = model.decoder(z)[..., FRAME: 2 * FRAME]
        sync(device)
        seconds.append((time.perf_counter() - start, time.process_time() - cpu))
        out[..., (i - 2) * FRAME: (i - 1) * FRAME] = audio
    return out, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_files", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="cut each utterance to this length")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--noise", action="store_true", help="decode with position-seeded noise")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    files = sorted((REPO / "local" / "demo_corpus" / "test").glob("*.flac"))[: args.num_files]
    if not files:
        raise SystemExit("local/demo_corpus/test has no audio; run local/make_demo_corpus.sh")
    torch.manual_seed(0)
    model = SNAC(**SNAC_24KHZ).eval().to(device)
    exact = StreamingDecoder.exact_lookahead_frames(model)
    seed = 0 if args.noise else None
    frame_ms = 1000 * FRAME / model.sampling_rate

    rows: Dict[str, Dict[str, object]] = {}
    total_frames = 0
    for path in files:
        audio = torch.from_numpy(load_mono(path, 24000)[0][: int(args.seconds * 24000)]).to(device)
        with torch.inference_mode():
            codes = model.encode(audio.view(1, 1, -1))
            sync(device)
            start, cpu = time.perf_counter(), time.process_time()
            full = model.decode(codes, noise_seed=seed, add_noise=args.noise)
            sync(device)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        frames = codes_to_frames(codes)
        n = frames.shape[1]
        row = rows.setdefault("full decode (reference)", dict(lookahead=None, seconds=[], signal=0.0, error=0.0))
        row["seconds"] += [(wall / n, cpu / n)] * n
        total_frames += n
        region = slice(FRAME, (n - 2) * FRAME)
        ref = full[..., region]
        runs = [(f"stream, lookahead {la}", la, lambda la=la: stream(model, frames, la, seed, args.noise, device))
                for la in range(exact + 1)]
        runs.append(("Orpheus 4-frame window", 2, lambda: orpheus_window(model, frames, seed, args.noise, device)))
        for name, lookahead, run in runs:
            out, seconds = run()
            row = rows.setdefault(name, dict(lookahead=lookahead, seconds=[], signal=0.0, error=0.0))
            row["seconds"] += seconds
            row["signal"] += ref.double().pow(2).sum().item()
            row["error"] += (out[..., region] - ref).double().pow(2).sum().item()

    print(f"SNAC 24 kHz architecture, random weights; {len(files)} utterances from local/demo_corpus/test, "
          f"{total_frames} frames ({total_frames * frame_ms / 1000:.1f} s); device {device}, "
          f"{torch.get_num_threads()} thread(s); noise {'on (seeded)' if args.noise else 'off'}; "
          f"exact lookahead {exact} frames")
    print()
    print("| decoder | lookahead (frames / ms) | compute per frame (ms) | CPU per frame (ms) | latency (ms) "
          "| RTF per frame (wall / CPU) | SNR (dB) |")
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        compute = 1000 * sum(wall for wall, _ in row["seconds"]) / len(row["seconds"])
        cpu = 1000 * sum(c for _, c in row["seconds"]) / len(row["seconds"])
        rtf = f"{compute / frame_ms:.2f} / {cpu / frame_ms:.2f}"
        if row["lookahead"] is None:  # the whole utterance is needed first
            print(f"| {name} | whole utterance | {compute:.1f} | {cpu:.1f} | utterance + decode | {rtf} | - |")
            continue
        la_ms = row["lookahead"] * frame_ms
        snr = math.inf if row["error"] == 0 else 10 * math.log10(row["signal"] / row["error"])
        snr_text = "exact (0 error)" if snr == math.inf else f"{snr:.1f}"
        print(f"| {name} | {row['lookahead']} / {la_ms:.1f} | {compute:.1f} | {cpu:.1f} | {la_ms + compute:.1f} | "
              f"{rtf} | {snr_text} |")


if __name__ == "__main__":
    main()
