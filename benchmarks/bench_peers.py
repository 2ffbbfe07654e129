"""CPU encode / decode speed of every way to run SNAC-24k, one process, same weights, same speech.

    python benchmarks/bench_peers.py [--threads 2] [--num_files 4] [--join_seconds 7] [--repeats 1]
                                     [--compile] [--wav_scp data/test/wav.scp] [--peak_gflops X]

Sides (the official 24 kHz architecture with one set of random weights, seed 0: the arithmetic
costs what it costs with trained weights):

- ``official eager``: ``snac.SNAC.encode`` / ``decode`` one utterance at a time;
- ``official ORT static``: the official model with weight norm folded, exported with torch's dynamo
  exporter once per utterance at that utterance's exact shape (what a user gets from
  ``torch.onnx.export`` of the release: it does not export with a dynamic length), run in ONNX Runtime;
- ``official torch.compile`` (``--compile``): ``torch.compile`` of the official model under
  ``torch.no_grad`` (not inference_mode), compiled for every utterance's shape before timing;
- ``ours ONNX``: ``espnet-snac export`` (one graph for every length, noise on like the others) in
  ONNX Runtime;
- ``ours default``: ``espnet_snac.SNAC`` in eval mode under ``torch.inference_mode()``.

torch and ONNX Runtime get ``--threads`` intra-op threads. Each repeat times every side in turn
(the median over repeats is reported); export and compile times are printed, not counted. Codes of
each side are compared with the official eager codes, utterance by utterance. The FLOP count is the
multiply-adds of the convolutions, attention projections and quantizer projections (2 FLOPs each),
counted with forward hooks on one second of audio; the peak is ``threads x clock x FLOPs/cycle``
(32 with AVX2/AVX-512 on two 256-bit FMA pipes, 64 with two 512-bit pipes; ``--peak_gflops`` to
give the true figure) or torch's measured sgemm rate at the same threads, whichever is higher, so
"x from peak" is how far each side is from the machine's fp32 limit.
Last line: ``encode_vs_best_peer=X decode_vs_best_peer=Y codes_identical=true|false`` (ours default
against the fastest other side; codes: ours default vs official).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_codec import RATE, join_utterances, load_audio, official_decode, official_encode  # noqa: E402

from espnet_snac.model.snac import SNAC, SNAC_24KHZ  # noqa: E402
from espnet_snac.inference.onnx_export import OnnxSNAC, export_onnx, fold_weight_norm  # noqa: E402

Codes = List[List[np.ndarray]]  # per utterance, per level (T_l,)


# ---------------------------------------------------------------------------------------- FLOPs
def count_flops(model: SNAC, seconds: float = 1.0) -> Tuple[float, float]:
    """``(encoder, decoder)`` GFLOP per audio second: 2 x multiply-adds of convolutions and linears."""
    totals = {"enc": 0.0, "dec": 0.0}
    where = ["enc"]

    def hook(module, inputs, output):
        x = inputs[0]
        if isinstance(module, nn.ConvTranspose1d):
            macs = x.shape[0] * x.shape[-1] * module.in_channels * (module.out_channels // module.groups) \
                * module.kernel_size[0]
        elif isinstance(module, nn.Conv1d):
            macs = output.shape[0] * output.shape[-1] * module.out_channels * (module.in_channels // module.groups) \
                * module.kernel_size[0]
        else:  # nn.Linear
            macs = x.numel() // x.shape[-1] * module.in_features * module.out_features
        totals[where[0]] += 2.0 * macs

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d, nn.Linear))]
    samples = int(seconds * RATE)
    try:
        with torch.no_grad():
            x = model.preprocess(torch.zeros(1, 1, samples))
            z = model.encoder(x)  # hooks force the plain path: every module is called
            codes = model.quantizer(z).codes
            where[0] = "dec"
            model.decode(codes)
    finally:
        for h in handles:
            h.remove()
    per_second = x.shape[-1] / RATE
    return totals["enc"] / per_second / 1e9, totals["dec"] / per_second / 1e9


def measured_gemm_gflops(size: int = 1536, repeats: int = 5) -> float:
    """fp32 rate of torch's matrix product (MKL sgemm) at the current thread count: what the machine
    really sustains on dense arithmetic, whatever its clock and FMA pipes (best of ``repeats``)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best / 1e9


def estimate_peak_gflops(threads: int) -> Tuple[float, str]:
    """fp32 peak of ``threads`` cores from /proc/cpuinfo (clock x FLOPs per cycle), with how it was got."""
    mhz, flags, name = 0.0, set(), "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "cpu MHz" and not mhz:
                mhz = float(value)
            elif key == "flags" and not flags:
                flags = set(value.split())
            elif key == "model name" and name == "unknown CPU":
                name = value.strip()
    except OSError:
        pass
    per_cycle = 32 if ("avx2" in flags or "avx512f" in flags) else 16
    if not mhz:
        mhz = 3000.0
    peak = threads * mhz * per_cycle / 1000
    return peak, (f"{name}, {mhz:.0f} MHz x {per_cycle} fp32 FLOP/cycle x {threads} cores "
                  f"({'AVX-512' if 'avx512f' in flags else 'AVX2' if 'avx2' in flags else 'SSE'}; "
                  "two 256-bit FMA pipes assumed: pass --peak_gflops for the true figure)")


# ---------------------------------------------------------------------------------------- sides
class Side:
    """One way of running the codec: ``encode(i) -> [levels]``, ``decode(i, codes) -> audio``."""

    def __init__(self, name: str, encode: Callable, decode: Callable, peer: bool = True):
        self.name, self.encode, self.decode, self.peer = name, encode, decode, peer
        self.enc_times: List[float] = []
        self.dec_times: List[float] = []
        self.codes: Optional[Codes] = None
        self.note = ""


def _ort_options(threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return options


class _OfficialEncode(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, audio):
        return self.model.encode(audio)


class _OfficialDecode(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *codes):
        return self.model.decode(list(codes))


def _export_static(module: nn.Module, args: tuple, threads: int):
    """ORT session of ``module`` exported by torch's dynamo exporter at exactly these shapes."""
    import contextlib
    import io
    import logging
    import warnings

    import onnxruntime as ort

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, args, dynamo=True, optimize=True, verbose=False)
    return ort.InferenceSession(program.model_proto.SerializeToString(), _ort_options(threads),
                                providers=["CPUExecutionProvider"])


def official_ort_side(official, audios: List[torch.Tensor], off_codes: Codes, threads: int) -> Side:
    folded = fold_weight_norm(official).eval()
    enc_sessions, dec_sessions = [], []
    start = time.perf_counter()
    for audio, codes in zip(audios, off_codes):
        enc_sessions.append(_export_static(_OfficialEncode(folded), (audio.view(1, 1, -1),), threads))
        dec_sessions.append(_export_static(_OfficialDecode(folded),
                                           tuple(torch.from_numpy(c)[None] for c in codes), threads))
    export_seconds = time.perf_counter() - start

    def encode(i):
        out = enc_sessions[i].run(None, {enc_sessions[i].get_inputs()[0].name: audios[i].numpy().reshape(1, 1, -1)})
        return [c[0] for c in out]

    def decode(i, codes):
        session = dec_sessions[i]
        feed = {inp.name: c[None] for inp, c in zip(session.get_inputs(), codes)}
        return session.run(None, feed)[0][0, 0]

    side = Side("official ORT static", encode, decode)
    side.note = f"{2 * len(audios)} exports (one per utterance and direction): {export_seconds:.0f} s"
    return side


def official_compile_side(official, audios: List[torch.Tensor], off_codes: Codes) -> Side:
    compiled_enc = torch.compile(official.encode)
    compiled_dec = torch.compile(official.decode)

    def encode(i):
        with torch.no_grad():
            return [c[0].numpy() for c in compiled_enc(audios[i].view(1, 1, -1))]

    def decode(i, codes):
        with torch.no_grad():
            return compiled_dec([torch.from_numpy(c)[None] for c in codes])[0, 0].numpy()

    start = time.perf_counter()
    for i, codes in enumerate(off_codes):  # one compilation per shape, before any timing
        encode(i)
        decode(i, codes)
    side = Side("official torch.compile", encode, decode)
    side.note = f"compilation for {len(audios)} shapes: {time.perf_counter() - start:.0f} s"
    return side


def ours_onnx_side(ours: SNAC, audios: List[torch.Tensor], threads: int, workdir: Path) -> Side:
    start = time.perf_counter()
    export_onnx(ours, workdir, noise=True)  # noise on: the same work as the other decoders
    export_seconds = time.perf_counter() - start
    session = OnnxSNAC(workdir, threads=threads)

    def encode(i):
        return [c[0] for c in session.encode(audios[i].numpy().reshape(1, 1, -1))]

    def decode(i, codes):
        return session.decode([c[None] for c in codes])[0, 0]

    side = Side("ours ONNX (espnet-snac export)", encode, decode)
    side.note = f"one export for all lengths: {export_seconds:.0f} s"
    return side


def ours_default_side(ours: SNAC, audios: List[torch.Tensor]) -> Side:
    def encode(i):
        with torch.inference_mode():
            return [c[0].numpy() for c in ours.encode(audios[i].view(1, 1, -1))]

    def decode(i, codes):
        with torch.inference_mode():
            return ours.decode([torch.from_numpy(c)[None] for c in codes])[0, 0].numpy()

    return Side("ours default (eager, fast path)", encode, decode, peer=False)


def official_eager_side(official, audios: List[torch.Tensor]) -> Side:
    def encode(i):
        with torch.inference_mode():
            return [c[0].numpy() for c in official_encode(official, [audios[i]])[0]]

    def decode(i, codes):
        with torch.inference_mode():
            return official_decode(official, [[torch.from_numpy(c) for c in codes]])[0].numpy()

    return Side("official eager", encode, decode)


# ---------------------------------------------------------------------------------------- main
def run_side(side: Side, n: int, reference: Codes) -> None:
    start = time.perf_counter()
    codes = [side.encode(i) for i in range(n)]
    side.enc_times.append(time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(n):
        side.decode(i, reference[i])  # every side decodes the same (official) codes
    side.dec_times.append(time.perf_counter() - start)
    side.codes = codes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for torch and ONNX Runtime")
    p.add_argument("--wav_scp", default="", help="Kaldi wav.scp of 24 kHz audio (default: the demo corpus)")
    p.add_argument("--num_files", type=int, default=4, help="utterances (after joining; 0: all)")
    p.add_argument("--join_seconds", type=float, default=7.0,
                   help="join consecutive utterances into files of at least this many seconds (0: off)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per side (median reported)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the official model")
    p.add_argument("--no_official_ort", action="store_true",
                   help="skip the official model in ONNX Runtime (its per-utterance exports take minutes)")
    p.add_argument("--peak_gflops", type=float, default=0.0, help="fp32 peak of the threads used (0: estimate)")
    args = p.parse_args()
    if args.threads < 1 or args.repeats < 1:
        raise SystemExit("--threads and --repeats must be >= 1")
    torch.set_num_threads(args.threads)
    import snac as official_pkg

    torch.manual_seed(0)
    ours = SNAC(**SNAC_24KHZ).eval()
    official = official_pkg.SNAC(**SNAC_24KHZ).eval()
    official.load_state_dict(ours.state_dict(), strict=True)
    items = load_audio(args.wav_scp, 0 if args.join_seconds > 0 else args.num_files)
    if args.join_seconds > 0:
        items = join_utterances(items, args.join_seconds)
        items = items[:args.num_files] if args.num_files > 0 else items
    audios = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for _, a in items]
    seconds = sum(a.shape[-1] for a in audios) / RATE
    import onnxruntime as ort

    print(f"torch {torch.__version__} ({args.threads} threads), onnxruntime {ort.__version__}, "
          f"snac {getattr(official_pkg, '__version__', '?')}")
    print(f"audio: {len(audios)} files, {seconds:.1f} s of real speech ({args.wav_scp or 'local/demo_corpus'}"
          f"{f', joined into files of >= {args.join_seconds:g} s' if args.join_seconds > 0 else ''}); "
          f"{args.repeats} repeat(s), median")
    enc_gflop, dec_gflop = count_flops(ours)
    estimate, how = (args.peak_gflops, "given") if args.peak_gflops > 0 else estimate_peak_gflops(args.threads)
    gemm = measured_gemm_gflops()
    # "x peak" against the higher of the two: a spec estimate can be below what sgemm really sustains
    peak = max(estimate, gemm)
    print(f"work: encoder {enc_gflop:.2f} GFLOP and decoder {dec_gflop:.2f} GFLOP per audio second; "
          f"fp32 peak {estimate:.0f} GFLOP/s ({how}); measured sgemm {gemm:.0f} GFLOP/s; "
          f"'x peak' = {peak:.0f} / side's GFLOP/s")

    eager = official_eager_side(official, audios)
    with torch.inference_mode():
        reference = [[c.numpy() for c in levels] for levels in official_encode(official, audios)]
    sides = [eager]
    if not args.no_official_ort:
        sides.append(official_ort_side(official, audios, reference, args.threads))
    if args.compile:
        sides.append(official_compile_side(official, audios, reference))
    workdir = Path(tempfile.mkdtemp(prefix="bench_peers_"))
    sides.append(ours_onnx_side(ours, audios, args.threads, workdir))
    sides.append(ours_default_side(ours, audios))
    for side in sides:  # warm-up: first-call allocations, folded weights, ORT arenas
        side.encode(0)
        side.decode(0, reference[0])
        if side.note:
            print(f"{side.name}: {side.note}")
    for _ in range(args.repeats):
        for side in sides:
            run_side(side, len(audios), reference)

    header = (f"{'side':<32} {'enc s':>7} {'enc a-s/s':>9} {'enc GF/s':>8} {'x peak':>6} "
              f"{'dec s':>7} {'dec a-s/s':>9} {'dec GF/s':>8} {'x peak':>6}  codes")
    print(header)
    rates: Dict[str, Tuple[float, float]] = {}
    for side in sides:
        enc, dec = statistics.median(side.enc_times), statistics.median(side.dec_times)
        enc_rate, dec_rate = seconds / enc, seconds / dec
        rates[side.name] = (enc_rate, dec_rate)
        same = all(all(np.array_equal(a, b) for a, b in zip(x, y)) for x, y in zip(side.codes, reference))
        enc_flops, dec_flops = enc_gflop * enc_rate, dec_gflop * dec_rate
        print(f"{side.name:<32} {enc:>7.2f} {enc_rate:>9.2f} {enc_flops:>8.1f} {peak / enc_flops:>6.1f} "
              f"{dec:>7.2f} {dec_rate:>9.2f} {dec_flops:>8.1f} {peak / dec_flops:>6.1f}  "
              f"{'reference' if side is eager else 'identical' if same else 'DIFFER'}")
    ours_side = sides[-1]
    peers = [s for s in sides if s.peer]
    best_enc = max(peers, key=lambda s: rates[s.name][0])
    best_dec = max(peers, key=lambda s: rates[s.name][1])
    enc_ratio = rates[ours_side.name][0] / rates[best_enc.name][0]
    dec_ratio = rates[ours_side.name][1] / rates[best_dec.name][1]
    identical = all(all(np.array_equal(a, b) for a, b in zip(x, y)) for x, y in zip(ours_side.codes, reference))
    print(f"fastest peer: encode {best_enc.name}, decode {best_dec.name}")
    print(f"encode_vs_best_peer={enc_ratio:.2f} decode_vs_best_peer={dec_ratio:.2f} "
          f"codes_identical={'true' if identical else 'false'}")


if __name__ == "__main__":
    main()
