"""Training speed of one full GAN iteration (discriminator step + generator step, all losses).

    python benchmarks/bench_train.py [--device cpu|cuda] [--precisions fp32,bf16] [--batch_size N]
                                     [--samples 20480] [--iters 10] [--warmup 3] [--config CONF]

Runs the trainer's own step code (``espnet_snac.train.step.GANStep``: forward, backward, per-network
gradient norms, optimizer and scheduler steps, the one host transfer of the stats per step) on the
model, losses and optimizers of ``--config`` (default: the paper config, SNAC-24k + DAC's
discriminator). Batch: ``--batch_size`` clips of ``--samples`` samples (paper: 16 x 20480; default 16
on CUDA, 2 on CPU), synthetic speech-like audio (the cost does not depend on the content), so no data
loading is timed. Peak memory: CUDA ``max_memory_allocated`` (reset per precision); on CPU the peak
resident set size of the process so far (model building and earlier precisions included).

Prints one line per precision, then a last line ``ms_per_iter=X peak_mem_mb=Y`` for the last
precision of ``--precisions``.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from espnet_snac.registry import register  # noqa: E402

register()

from espnet2.gan_codec.espnet_model import ESPnetGANCodecModel  # noqa: E402
from espnet2.tasks.abs_task import optim_classes, scheduler_classes  # noqa: E402

from espnet_snac.objective.codec import SNACCodec  # noqa: E402
from espnet_snac.train.step import GANStep, StepConfig  # noqa: E402


def build(config: dict, device: torch.device, precision: str) -> GANStep:
    torch.manual_seed(0)
    model = ESPnetGANCodecModel(SNACCodec(**config["codec_conf"])).to(device)
    codec = model.codec
    opts, scheds = [], []
    for suffix, params in (("", codec.generator.parameters()), ("2", codec.discriminator.parameters())):
        opt = optim_classes[config.get(f"optim{suffix}", "adamw")](params, **config.get(f"optim{suffix}_conf", {}))
        name = config.get(f"scheduler{suffix}")
        opts.append(opt)
        scheds.append(scheduler_classes[name](opt, **config.get(f"scheduler{suffix}_conf", {})) if name else None)
    step_conf = StepConfig(
        grad_clip_generator=config.get("grad_clip_generator"),
        grad_clip_discriminator=config.get("grad_clip_discriminator"),
        precision=precision, generator_first=bool(config.get("generator_first", False)),
    )
    return GANStep(model, opts, scheds, step_conf, device=str(device))


def speech_like(batch: int, samples: int, device: torch.device) -> torch.Tensor:
    t = torch.arange(samples, device=device) / 24000
    f0 = torch.linspace(110, 220, batch, device=device)[:, None]
    harmonics = sum(torch.sin(2 * torch.pi * k * f0 * t) / k for k in range(1, 8))
    return 0.2 * harmonics + 0.02 * torch.randn(batch, samples, device=device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16, fp16")
    parser.add_argument("--batch_size", type=int, default=None, help="default: 16 on CUDA (paper), 2 on CPU")
    parser.add_argument("--samples", type=int, default=20480, help="samples per clip (paper: 20480)")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    parser.add_argument("--config", default=str(REPO / "conf" / "train_snac24k.yaml"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    batch = args.batch_size or (16 if device.type == "cuda" else 2)
    config = yaml.safe_load(Path(args.config).read_text())
    print(f"config={args.config} device={device} batch={batch}x{args.samples} iters={args.iters} "
          f"warmup={args.warmup} threads={torch.get_num_threads()}")
    result = None
    for precision in [p.strip() for p in args.precisions.split(",") if p.strip()]:
        step = build(config, device, precision)
        audio = speech_like(batch, args.samples, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(args.warmup):
            step(audio)
        sync(device)
        start = time.perf_counter()
        for _ in range(args.iters):
            weighted, plain = step(audio)
        sync(device)
        ms = (time.perf_counter() - start) / args.iters * 1000
        mem = peak_mem_mb(device)
        print(f"precision={precision} ms_per_iter={ms:.1f} samples_per_s={batch * 1000 / ms:.2f} "
              f"audio_s_per_s={batch * args.samples / 24000 * 1000 / ms:.2f} peak_mem_mb={mem:.0f} "
              f"mel_loss={weighted['mel_loss']:.3f} nonfinite_steps={int(plain['nonfinite_steps'])}")
        result = (ms, mem)
        del step, audio
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if result is None:
        raise SystemExit("no precision given")
    print(f"ms_per_iter={result[0]:.1f} peak_mem_mb={result[1]:.0f}")


if __name__ == "__main__":
    main()
