"""A measured learning curve: train with the real GAN step for M minutes, score a held-out list as it goes.

The model, optimizers and schedulers are built from the config exactly as ESPnet's task builds them
for training (``SNACGANCodecTask`` parser, ``build_model``, ``build_optimizers``, ESPnet's scheduler
classes), and every iteration is :class:`~espnet_snac.train.step.GANStep` with the config's
clipping, precision, augmentation and discriminator skipping: both networks and all losses. Only the
data loading differs from training (random chunks drawn in-process, see ``curve_data``).

Evaluations (iteration 0, every ``eval_every`` minutes of training, and the end) decode the held-out
list in eval mode with a fixed noise seed and record mean PESQ-WB, STOI and mel distance, the distinct
codes per level over the whole list, and the means of both gradient norms and the training losses
since the previous evaluation. Time spent evaluating is not counted as training time.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import yaml

from espnet_snac.train.curve_data import ChunkSampler, check_inputs, load_eval_set
from espnet_snac.train.curve_report import final_line, write_csv, write_plot

NOISE_SEED = 0  # decoder noise of every evaluation (the same draw each time)


@dataclasses.dataclass
class Training:
    """What the task builds from a config: the ESPnet model, its optimizers/schedulers, the step."""

    args: Any  # the parsed training options (argparse.Namespace)
    model: torch.nn.Module  # ESPnetGANCodecModel
    step: Any  # GANStep
    sample_rate: int


def build_training(config: Path, device: str = "cpu", seed: Optional[int] = None) -> Training:
    """Parse ``config`` with the training parser and build everything as ``AbsTask.main_worker`` does."""
    from espnet2.torch_utils.set_all_random_seed import set_all_random_seed

    # Importing the task imports espnet2.tasks.gan_codec, which registers ``snac`` and the
    # per-iteration scheduler through the import hook that ``import espnet_snac`` installed.
    from espnet_snac.train.step import GANStep
    from espnet_snac.train.task import SNACGANCodecTask
    from espnet_snac.train.trainer import step_config
    from espnet2.tasks.abs_task import scheduler_classes

    config = Path(config)
    if not config.is_file():
        raise FileNotFoundError(f"{config}: no such config file (--config)")
    with open(config, encoding="utf-8") as f:
        conf = yaml.safe_load(f) or {}
    if not isinstance(conf, dict):
        raise ValueError(f"{config}: expected a mapping of training options")
    parser = SNACGANCodecTask.get_parser()
    if "required" in conf:
        # An experiment's config.yaml (ESPnet's dump of the run's namespace) also holds values that
        # are not options (required, distributed, version, ...); a user's config is parsed strictly.
        options = {a.dest for a in parser._actions} - {"config", "print_config"}
        conf = {k: v for k, v in conf.items() if k in options}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as tmp:
        yaml.safe_dump(conf, tmp)
        tmp.flush()
        cmd = ["--config", tmp.name, "--ngpu", "1" if device.startswith("cuda") else "0"]
        if seed is not None:
            cmd += ["--seed", str(seed)]
        args = parser.parse_args(cmd)
    if args.iterator_type != "chunk" or not args.chunk_length:
        logging.warning(f"{config}: iterator_type is {args.iterator_type!r}; the curve uses chunks of "
                        f"chunk_length={args.chunk_length}")
    options = SNACGANCodecTask.trainer.build_options(args)  # validates clipping, precision, augment_conf

    set_all_random_seed(args.seed)
    model = SNACGANCodecTask.build_model(args=args).to(dtype=getattr(torch, args.train_dtype), device=device)
    optimizers = SNACGANCodecTask.build_optimizers(args, model=model)
    schedulers = []
    for i, optimizer in enumerate(optimizers, 1):
        suffix = "" if i == 1 else str(i)
        name = getattr(args, f"scheduler{suffix}")
        if name is None:
            schedulers.append(None)
            continue
        if name not in scheduler_classes:
            raise ValueError(f"{config}: scheduler{suffix} must be one of {list(scheduler_classes)}, got {name!r}")
        schedulers.append(scheduler_classes[name](optimizer, **getattr(args, f"scheduler{suffix}_conf")))
    step = GANStep(model, optimizers, schedulers, step_config(options), device=device)
    return Training(args, model, step, int(model.codec.generator.sampling_rate))


@torch.no_grad()
def evaluate(generator: torch.nn.Module, utts: Dict[str, np.ndarray], sample_rate: int,
             device: str = "cpu", noise_seed: int = NOISE_SEED) -> Dict[str, float]:
    """Mean ``pesq``/``stoi``/``mel`` over ``utts`` (mono at ``sample_rate``) and ``codes_used_<l>``.

    An utterance whose metrics fail (e.g. PESQ finds no speech, non-finite output) is counted in
    ``eval_failed`` and left out of the means; the codes count for every utterance.
    """
    from espnet_snac.scoring.metrics import MetricError, mel_distance, pesq_wb, stoi

    was_training = generator.training
    generator.eval()
    used: Optional[List[torch.Tensor]] = None
    sums: Dict[str, List[float]] = defaultdict(list)
    failed = 0
    try:
        for utt, x in utts.items():
            audio = torch.from_numpy(x).to(device).view(1, 1, -1)
            codes = generator.encode(audio)
            if used is None:
                used = [torch.zeros(generator.codebook_size, dtype=torch.bool, device=device) for _ in codes]
            for seen, c in zip(used, codes):
                seen[c.reshape(-1)] = True
            y = generator.decode(codes, length=x.size, noise_seed=noise_seed).reshape(-1).float().cpu().numpy()
            try:
                if not np.all(np.isfinite(y)):
                    raise MetricError("non-finite reconstruction")
                values = {"pesq": pesq_wb(x, y, sample_rate), "stoi": stoi(x, y, sample_rate),
                          "mel": mel_distance(x, y, sample_rate)}
            except MetricError as e:
                failed += 1
                logging.warning(f"evaluation of {utt} failed: {e}")
                continue
            for k, v in values.items():
                sums[k].append(v)
    finally:
        generator.train(was_training)
    out = {k: float(np.mean(sums[k])) if sums[k] else math.nan for k in ("pesq", "stoi", "mel")}
    out.update({f"codes_used_{i}": int(seen.sum()) for i, seen in enumerate(used or [])})
    out.update(eval_utts=len(utts), eval_failed=failed)
    return out


class RunningMeans:
    """Means of the per-step training stats since the last :meth:`pop`."""

    def __init__(self):
        self.sums: Dict[str, float] = defaultdict(float)
        self.counts: Dict[str, int] = defaultdict(int)

    def add(self, stats: Dict[str, float]) -> None:
        for k, v in stats.items():
            if math.isfinite(v):
                self.sums[k] += v
                self.counts[k] += 1

    def pop(self) -> Dict[str, float]:
        out = {k: self.sums[k] / self.counts[k] for k in self.sums}
        self.sums.clear()
        self.counts.clear()
        return out


def eval_times(minutes: float, eval_every: Optional[float], num_evals: int) -> List[float]:
    """Training minutes at which to evaluate, before the final evaluation at ``minutes``."""
    if minutes <= 0:
        raise ValueError(f"--minutes must be > 0, got {minutes}")
    if eval_every is not None:
        if eval_every <= 0:
            raise ValueError(f"--eval_every_minutes must be > 0, got {eval_every}")
        n = int(math.ceil(minutes / eval_every - 1e-9))
        return [eval_every * i for i in range(1, n)]
    if num_evals < 1:
        raise ValueError(f"--num_evals must be >= 1, got {num_evals}")
    return [minutes * i / num_evals for i in range(1, num_evals)]


def run_curve(config: Path, train_dir: Path, eval_scp: Path, minutes: float, output_dir: Path,
              eval_every: Optional[float] = None, num_evals: int = 8, seed: Optional[int] = None,
              device: str = "cpu", max_eval_utts: Optional[int] = None) -> Tuple[List[Dict[str, Any]], str]:
    """Train for ``minutes`` of training time, evaluating as it goes; returns the CSV rows and the last line."""
    times = eval_times(minutes, eval_every, num_evals)
    check_inputs(train_dir, eval_scp)  # fail before the (slow) model build
    output_dir = Path(output_dir)
    training = build_training(config, device=device, seed=seed)
    args, step = training.args, training.step
    sampler = ChunkSampler(train_dir, training.sample_rate, args.chunk_length, args.batch_size, seed=args.seed)
    utts = load_eval_set(eval_scp, training.sample_rate, max_eval_utts)
    output_dir.mkdir(parents=True, exist_ok=True)
    logging.info(f"learning curve: {len(sampler)} training utterances ({len(sampler.rejected)} rejected), "
                 f"{len(utts)} held-out, batch {args.batch_size} x {args.chunk_length} samples, "
                 f"{minutes} min, evaluations at {['%.2f' % t for t in times]} min and the end")

    generator = step.codec.generator
    rows: List[Dict[str, Any]] = []
    means = RunningMeans()
    trained = 0.0  # seconds of training (evaluations excluded)
    wall_start = time.perf_counter()

    def record() -> None:
        row: Dict[str, Any] = {"iteration": step.iteration, "minutes": trained / 60,
                               "wall_minutes": (time.perf_counter() - wall_start) / 60}
        row.update(evaluate(generator, utts, training.sample_rate, device=device))
        row["sec_per_iter"] = trained / step.iteration if step.iteration else math.nan
        row["nonfinite_steps"] = step.guard.total
        row["lr_generator"] = step.optimizers[0].param_groups[0]["lr"]
        row.update(means.pop())
        rows.append(row)
        write_csv(output_dir / "curve.csv", rows)
        print(f"iteration {row['iteration']} ({row['minutes']:.2f} min): pesq={row['pesq']:.3f} "
              f"stoi={row['stoi']:.3f} mel={row['mel']:.3f}", flush=True)

    record()
    step.model.train()
    pending = list(times)
    while trained < minutes * 60:
        start = time.perf_counter()
        out = step(sampler.batch().to(device))
        trained += time.perf_counter() - start
        if out is not None:
            weighted, plain = out
            means.add({f"train_{k}": v for k, v in weighted.items()})
            means.add({k: v for k, v in plain.items() if k.startswith("grad_norm_")})
        if pending and trained >= pending[0] * 60:
            while pending and trained >= pending[0] * 60:
                pending.pop(0)
            if trained < minutes * 60:
                record()
    record()
    write_plot(output_dir / "curve.png", rows, title=f"{Path(config).name}: {rows[-1]['iteration']} iterations")
    return rows, final_line(rows[-1])
