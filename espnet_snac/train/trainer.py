"""``SNACGANTrainer``: ESPnet's GAN trainer with per-network clipping, bf16/fp16, non-finite step
guarding, rank-consistent discriminator skipping, and checkpoints that survive a kill.

ESPnet's ``GANTrainer.run`` writes ``checkpoint.pth`` in place at epoch ends only; ``run`` here
keeps ESPnet's epoch loop and outputs (``Nepoch.pth``, ``latest.pth``, ``*.best.pth``, images,
tensorboard) and adds atomic checkpoints every N iterations / minutes with exact mid-epoch resume:
the consumed batches of the epoch are skipped (the iterators are deterministic per epoch) and the
random state saved with the checkpoint is restored after them.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import humanfriendly
import torch
from espnet2.main_funcs.average_nbest_models import average_nbest_models
from espnet2.schedulers.abs_scheduler import AbsEpochStepScheduler, AbsValEpochStepScheduler
from espnet2.torch_utils.set_all_random_seed import set_all_random_seed
from espnet2.train.distributed_utils import DistributedOption
from espnet2.train.gan_trainer import GANTrainer, GANTrainerOptions
from espnet2.train.reporter import Reporter, SubReporter
from espnet2.utils.build_dataclass import build_dataclass
from espnet2.utils.types import float_or_none, int_or_none

from espnet_snac.io.atomic_files import atomic_torch_save
from espnet_snac.train import checkpointing as ckpt
from espnet_snac.train import preemption
from espnet_snac.train.nonfinite import NonFiniteTrainingError
from espnet_snac.train.preemption import TrainingPreempted
from espnet_snac.train.samples import write_validation_samples
from espnet_snac.train.step import PRECISIONS, GANStep, StepConfig, clear_cache, unwrap
from espnet_snac.train.unreadable_audio import tolerant_dataset

SAMPLES_DIR = "samples"
MAX_SAMPLE_CLIPS = 4


@dataclasses.dataclass
class SNACGANTrainerOptions(GANTrainerOptions):
    grad_clip_generator: Optional[float]
    grad_clip_discriminator: Optional[float]
    precision: str
    max_consecutive_nonfinite: int
    checkpoint_interval_iters: Optional[int]
    checkpoint_interval_minutes: Optional[float]
    augment_conf: Dict[str, Any]


def step_config(options: SNACGANTrainerOptions) -> StepConfig:
    return StepConfig(
        grad_clip_generator=options.grad_clip_generator, grad_clip_discriminator=options.grad_clip_discriminator,
        precision=options.precision, max_consecutive_nonfinite=options.max_consecutive_nonfinite,
        generator_first=options.generator_first, skip_discriminator_prob=options.skip_discriminator_prob,
        seed=options.seed, augment_conf=dict(options.augment_conf or {}),
    )


class SNACGANTrainer(GANTrainer):
    """GAN trainer for ``codec: snac`` (works for any ESPnet GAN codec with ``generator`` and
    ``discriminator``). See the README section "Our trainer" for the options."""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser):
        super().add_arguments(parser)
        group = parser.add_argument_group("SNAC GAN trainer")
        group.add_argument("--grad_clip_generator", type=float_or_none, default=None,
                           help="Max gradient norm of the generator over its own parameters (null or <= 0: off)")
        group.add_argument("--grad_clip_discriminator", type=float_or_none, default=None,
                           help="Max gradient norm of the discriminator over its own parameters (null or <= 0: off)")
        group.add_argument("--precision", choices=PRECISIONS, default="fp32",
                           help="fp32, bf16 (autocast; losses, STFTs and quantizer in fp32) or fp16 "
                                "(autocast + one GradScaler per network); --use_amp true means fp16")
        group.add_argument("--max_consecutive_nonfinite", type=int, default=10,
                           help="Stop after this many consecutive skipped (NaN/Inf) steps of one network")
        group.add_argument("--checkpoint_interval_iters", type=int_or_none, default=None,
                           help="Also write checkpoint.pth every N training iterations (null: epoch ends only)")
        group.add_argument("--checkpoint_interval_minutes", type=float_or_none, default=None,
                           help="Also write checkpoint.pth every M minutes of training (null: off)")

    @classmethod
    def build_options(cls, args: argparse.Namespace) -> SNACGANTrainerOptions:
        if not hasattr(args, "augment_conf"):
            args.augment_conf = {}
        if getattr(args, "use_amp", False):
            if args.precision == "bf16":
                raise ValueError("use_amp true is ESPnet's fp16 switch and conflicts with precision bf16; "
                                 "set use_amp false")
            args.precision = "fp16"
        options = build_dataclass(SNACGANTrainerOptions, args)
        if options.grad_clip and options.grad_clip > 0:
            raise ValueError(
                f"grad_clip {options.grad_clip}: ESPnet's single clipping norm over generator and discriminator "
                "is not used by this trainer. Set grad_clip: 0 and use grad_clip_generator / "
                "grad_clip_discriminator (null = off; DAC: 1000 / 10)."
            )
        if options.accum_grad > 1 or options.grad_noise:
            raise ValueError("accum_grad > 1 and grad_noise are not supported in GAN training")
        if options.max_consecutive_nonfinite < 1:
            raise ValueError(f"max_consecutive_nonfinite must be >= 1, got {options.max_consecutive_nonfinite}")
        step_config(options)  # validates the remaining values
        return options

    # ------------------------------------------------------------------ main loop
    @classmethod
    def run(cls, model, optimizers, schedulers, train_iter_factory, valid_iter_factory,
            plot_attention_iter_factory, trainer_options: SNACGANTrainerOptions,
            distributed_option: DistributedOption) -> None:
        opts = trainer_options
        output_dir = Path(opts.output_dir)
        rank0 = not distributed_option.distributed or distributed_option.dist_rank == 0
        device = "cuda" if opts.ngpu > 0 else "cpu"
        keep_nbest = [opts.keep_nbest_models] if isinstance(opts.keep_nbest_models, int) else (
            list(opts.keep_nbest_models) or [1])
        if plot_attention_iter_factory is not None:
            logging.warning("Attention plots are not supported for GAN codecs; num_att_plot is ignored")

        with preemption.armed():
            cls._run(model, optimizers, schedulers, train_iter_factory, valid_iter_factory, opts,
                     distributed_option, output_dir, rank0, device, keep_nbest)

    @classmethod
    def _run(cls, model, optimizers, schedulers, train_iter_factory, valid_iter_factory, opts,
             distributed_option, output_dir, rank0, device, keep_nbest) -> None:
        distributed = distributed_option.distributed
        _refuse_data_parallel(distributed_option)  # before any work
        reporter = Reporter()
        resume = cls._resume(opts, model, optimizers, schedulers, reporter, distributed_option)
        dp_model = cls._wrap(model, opts, distributed_option)  # after the resume: DDP syncs rank 0's weights
        step = GANStep(dp_model, optimizers, schedulers, step_config(opts), device=device,
                       distributed=distributed_option.distributed)
        if resume:
            step.load_state_dict(resume["trainer"])
        start_epoch = reporter.get_epoch() + 1
        if start_epoch == opts.max_epoch + 1:
            logging.warning(f"The training has already reached at max_epoch: {start_epoch}")

        writers = {}
        if opts.use_tensorboard and rank0:
            from torch.utils.tensorboard import SummaryWriter

            writers = {k: SummaryWriter(str(output_dir / "tensorboard" / k)) for k in ("train", "valid")}
        schedule = ckpt.CheckpointSchedule(opts.checkpoint_interval_iters, opts.checkpoint_interval_minutes)
        sample_audio: List[Optional[torch.Tensor]] = [None]
        start_time = time.perf_counter()
        for iepoch in range(start_epoch, opts.max_epoch + 1):
            if iepoch != start_epoch:
                eta = (time.perf_counter() - start_time) / (iepoch - start_epoch) * (opts.max_epoch - iepoch + 1)
                logging.info(f"{iepoch}/{opts.max_epoch}epoch started. "
                             f"Estimated time to finish: {humanfriendly.format_timespan(eta)}")
            else:
                logging.info(f"{iepoch}/{opts.max_epoch}epoch started")
            set_all_random_seed(opts.seed + iepoch)
            reporter.set_epoch(iepoch)
            skip = resume["batches"] if resume and resume["epoch"] == iepoch else 0

            def save_mid_epoch(batches: int, _epoch=iepoch):
                # Every rank's random state goes into the file (a collective: all ranks call this).
                rng_ranks = ckpt.gather_rng_states(distributed)
                if rank0:
                    cls._save(output_dir, model, optimizers, schedulers, reporter, step,
                              completed_epoch=_epoch - 1, epoch=_epoch, batches=batches, rng_ranks=rng_ranks)

            with reporter.observe("train") as sub_reporter:
                sub_reporter.total_count += skip  # keep tensorboard steps monotonic after a resume
                try:
                    all_steps_are_invalid = cls.train_one_epoch(
                        model=dp_model, iterator=train_iter_factory.build_iter(iepoch), step=step,
                        reporter=sub_reporter, summary_writer=writers.get("train"), options=opts,
                        distributed_option=distributed_option, skip_batches=skip,
                        rng_after_skip=resume["rng"] if skip else None, schedule=schedule, save=save_mid_epoch,
                        unreadable=tolerant_dataset(train_iter_factory),
                    )
                except NonFiniteTrainingError as e:
                    last = output_dir / ckpt.LATEST
                    logging.error(f"{e} Last good checkpoint: {last if last.exists() else 'none yet'}")
                    raise
                except TrainingPreempted as e:
                    _log_preempted(f"{e}: {output_dir / ckpt.LATEST} written; rerun the same command to continue",
                                   distributed_option)
                    raise
            with reporter.observe("valid") as sub_reporter:
                cls.validate_one_epoch(
                    model=dp_model, iterator=valid_iter_factory.build_iter(iepoch), reporter=sub_reporter,
                    options=opts, distributed_option=distributed_option, step=step,
                    sample_audio=sample_audio, output_dir=output_dir, epoch=iepoch,
                    summary_writer=writers.get("valid") if rank0 else None, rank0=rank0,
                )
            for scheduler in schedulers:
                if isinstance(scheduler, AbsValEpochStepScheduler):
                    scheduler.step(reporter.get_value(*opts.val_scheduler_criterion))
                elif isinstance(scheduler, AbsEpochStepScheduler):
                    scheduler.step()
            if rank0:
                cls._end_of_epoch(output_dir, model, optimizers, schedulers, reporter, step, opts, iepoch,
                                  keep_nbest, writers)
                schedule.written()
            if _any_rank(preemption.requested(), distributed) and iepoch < opts.max_epoch:
                # A signal during validation or the epoch's end: the epoch's checkpoint is written.
                where = f"({preemption.signal_name()}) after epoch {iepoch}, iteration {step.iteration}"
                _log_preempted(f"{where}: {output_dir / ckpt.LATEST} written; rerun the same command to continue",
                               distributed_option)
                raise TrainingPreempted(where)
            if all_steps_are_invalid:
                logging.warning("The gradients at all steps are invalid in this epoch. "
                                f"Something seems wrong. This training was stopped at {iepoch}epoch")
                break
            if opts.patience is not None and reporter.check_early_stopping(
                    opts.patience, *opts.early_stopping_criterion):
                break
        else:
            logging.info(f"The training was finished at {opts.max_epoch} epochs ")
        if rank0:
            average_nbest_models(reporter=reporter, output_dir=output_dir,
                                 best_model_criterion=opts.best_model_criterion, nbest=keep_nbest)

    @staticmethod
    def _wrap(model, opts, distributed_option):
        """DDP for distributed runs, else the model itself (``_run`` has refused DataParallel before).

        ``find_unused_parameters=True`` whatever ESPnet's ``unused_parameters`` says: the two turns
        alternate on one wrapped model and the discriminator turn never uses the generator's
        parameters (the generator runs without gradients there), so DDP must find them each forward.
        ``broadcast_buffers=False``: rank 0's buffers would be re-sent every forward, yet SNAC's
        buffers are constants (STFT windows, mel filterbanks, the quantizer's fixed tables), identical
        on every rank from construction or the checkpoint, and nothing writes them during training.
        """
        if distributed_option.distributed:
            single = distributed_option.ngpu == 1
            return torch.nn.parallel.DistributedDataParallel(
                model,
                device_ids=[torch.cuda.current_device()] if single and opts.ngpu > 0 else None,
                output_device=torch.cuda.current_device() if single and opts.ngpu > 0 else None,
                find_unused_parameters=True,
                broadcast_buffers=False,
                gradient_as_bucket_view=opts.gradient_as_bucket_view,
            )
        return model

    # ------------------------------------------------------------------ checkpoints
    @staticmethod
    def _resume(opts, model, optimizers, schedulers, reporter,
                distributed_option: Optional[DistributedOption] = None) -> Optional[Dict[str, Any]]:
        """Load the newest readable checkpoint into the model, optimizers, schedulers and reporter;
        returns what the epoch loop needs (position in the epoch, this rank's random state, trainer state).

        The file is mapped to the CPU whatever the training device: the random states must be CPU
        tensors for ``torch.set_rng_state``/NumPy, ``load_state_dict`` copies the weights onto the
        model's device, and the optimizers move their moments to their parameters' device while
        keeping AdamW's ``step`` counters on the CPU, as torch expects (no host sync per step).
        """
        if not opts.resume:
            return None
        found = ckpt.load_checkpoint(opts.output_dir, map_location="cpu")
        if found is None:
            return None
        state, path = found
        model.load_state_dict(state["model"])
        for optimizer, s in zip(optimizers, state["optimizers"]):
            optimizer.load_state_dict(s)
        for scheduler, s in zip(schedulers, state["schedulers"]):
            if scheduler is not None and s is not None:
                scheduler.load_state_dict(s)
        ckpt.load_reporter_state(reporter, state["reporter"])
        t = state["trainer"]
        where = f"epoch {t['epoch']}, {t['batches']} batches in" if t["batches"] else f"end of epoch {reporter.get_epoch()}"
        logging.info(f"The training was resumed using {path} ({where}, iteration {t['iteration']})")
        distributed = distributed_option is not None and distributed_option.distributed
        rank = distributed_option.dist_rank if distributed else 0
        world = distributed_option.dist_world_size if distributed else 1
        # Only a mid-epoch resume restores the random state; an epoch's end has rank 0's alone (no
        # warning about the other ranks' there).
        rng = ckpt.rank_rng_state(state, rank, world) if t["batches"] else None
        return {"epoch": int(t["epoch"]), "batches": int(t["batches"]), "rng": rng, "trainer": t}

    @staticmethod
    def _save(output_dir, model, optimizers, schedulers, reporter, step, completed_epoch, epoch, batches,
              rng_ranks: Optional[List[Dict[str, Any]]] = None):
        """``rng_ranks``: every rank's random state (rank order); None: this process's only."""
        rng_ranks = rng_ranks or [ckpt.rng_state()]
        trainer_state = {**step.state_dict(), "epoch": int(epoch), "batches": int(batches)}
        ckpt.save_checkpoint(output_dir, {
            "model": model.state_dict(),
            "optimizers": [o.state_dict() for o in optimizers],
            "schedulers": [s.state_dict() if s is not None else None for s in schedulers],
            "reporter": ckpt.reporter_state(reporter, completed_epoch),
            "trainer": trainer_state,
            "scaler": None,  # ESPnet's key; our scalers (one per network) are in trainer["scalers"]
            "rng": rng_ranks[0],  # rank 0's (also what older readers use)
            "rng_ranks": rng_ranks,
        })

    @classmethod
    def _end_of_epoch(cls, output_dir, model, optimizers, schedulers, reporter, step, opts, iepoch,
                      keep_nbest, writers):
        logging.info(reporter.log_message())
        if opts.use_matplotlib:
            reporter.matplotlib_plot(output_dir / "images")
        if writers:
            reporter.tensorboard_add_scalar(writers["train"], key1="train")
            reporter.tensorboard_add_scalar(writers["valid"], key1="valid")
        if opts.use_wandb:
            reporter.wandb_log()
        cls._save(output_dir, model, optimizers, schedulers, reporter, step,
                  completed_epoch=iepoch, epoch=iepoch + 1, batches=0)
        atomic_torch_save(model.state_dict(), output_dir / f"{iepoch}epoch.pth")
        _symlink(output_dir / "latest.pth", f"{iepoch}epoch.pth")
        improved = []
        for phase, key, mode in opts.best_model_criterion:
            if reporter.has(phase, key) and reporter.get_best_epoch(phase, key, mode) == iepoch:
                _symlink(output_dir / f"{phase}.{key}.best.pth", f"{iepoch}epoch.pth")
                improved.append(f"{phase}.{key}")
        logging.info("The best model has been updated: " + ", ".join(improved) if improved
                     else "There are no improvements in this epoch")
        nbests = set().union(*[set(reporter.sort_epochs(ph, k, m)[: max(keep_nbest)])
                               for ph, k, m in opts.best_model_criterion if reporter.has(ph, k)])
        if opts.nbest_averaging_interval > 0 and iepoch % opts.nbest_averaging_interval == 0:
            average_nbest_models(reporter=reporter, output_dir=output_dir,
                                 best_model_criterion=opts.best_model_criterion, nbest=keep_nbest,
                                 suffix=f"till{iepoch}epoch")
        removed = []
        for e in range(1, iepoch):
            p = output_dir / f"{e}epoch.pth"
            if p.exists() and e not in nbests:
                p.unlink()
                removed.append(str(p))
        if removed:
            logging.info("The model files were removed: " + ", ".join(removed))

    # ------------------------------------------------------------------ one epoch
    @classmethod
    def train_one_epoch(cls, model: torch.nn.Module, iterator: Iterable, step: GANStep, reporter: SubReporter,
                        summary_writer, options: SNACGANTrainerOptions, distributed_option: DistributedOption,
                        skip_batches: int = 0, rng_after_skip: Optional[Dict[str, Any]] = None,
                        schedule: Optional[ckpt.CheckpointSchedule] = None, save=None,
                        unreadable=None) -> bool:
        """Train one epoch; returns True if no step of the epoch was applied (ESPnet's stop signal).

        ``skip_batches`` batches are drawn and dropped first (mid-epoch resume), then the random
        state ``rng_after_skip`` of the interrupted run is restored. ``unreadable``: the
        :class:`~espnet_snac.train.unreadable_audio.TolerantDataset` whose count of skipped files is logged.
        """
        distributed = distributed_option.distributed
        device = step.device
        log_interval = options.log_interval or 100
        model.train()
        # Batches skipped on resume were trained (and checkpointed healthy) before the interruption: an
        # epoch resumed after its last batch must not look like one whose steps were all invalid,
        # which would stop the whole training at this epoch.
        all_steps_are_invalid = skip_batches == 0
        stop = torch.zeros(())  # a CPU flag on the control group: no GPU synchronisation
        iterator = iter(iterator)
        for _ in range(skip_batches):
            if next(iterator, None) is None:
                break
        if skip_batches:
            logging.info(f"Skipped the {skip_batches} batches of epoch {reporter.get_epoch()} trained before the interruption")
            if rng_after_skip is not None:
                ckpt.set_rng_state(rng_after_skip)
        batches = skip_batches
        applied_before = step.applied_steps
        start = time.perf_counter()
        for iiter, (_, batch) in enumerate(reporter.measure_iter_time(iterator, "iter_time"), 1):
            if distributed:
                torch.distributed.all_reduce(stop, torch.distributed.ReduceOp.SUM, group=_control_group())
                if stop > 0:
                    break
            batches += 1
            step.where = f" at epoch {reporter.get_epoch()}, batch {batches}"
            if options.no_forward_run:
                all_steps_are_invalid = False
                continue
            audio = batch["audio"].to(device, non_blocking=True)
            out = step(audio)
            if out is not None:
                weighted, plain = out
                reporter.register(weighted, audio.shape[0])
                plain["train_time"] = time.perf_counter() - start
                if unreadable is not None:
                    plain["unreadable_audio_files"] = float(unreadable.total)
                reporter.register(plain)
            start = time.perf_counter()
            reporter.next()
            if iiter % log_interval == 0:
                logging.info(reporter.log_message(-log_interval))
                if summary_writer is not None:
                    reporter.tensorboard_add_scalar(summary_writer, -log_interval)
                if options.use_wandb:
                    reporter.wandb_log()
            # Checkpoint and preemption decisions are agreed by all ranks (one all-reduce): a rank's
            # clock or signal decides for everyone, so all save together and stop at this iteration.
            due = bool(schedule is not None and save is not None and step.guard.healthy
                       and schedule.due(step.iteration))
            due, preempted = _any_rank([due, preemption.requested()], distributed)
            if (due or preempted) and save is not None:
                save(batches)
                if schedule is not None:
                    schedule.written()
            if preempted:
                raise TrainingPreempted(f"({preemption.signal_name()}) at epoch {reporter.get_epoch()}, "
                                        f"batch {batches}, iteration {step.iteration}")
        else:
            if distributed:
                stop.fill_(1)
                torch.distributed.all_reduce(stop, torch.distributed.ReduceOp.SUM, group=_control_group())
        return all_steps_are_invalid and step.applied_steps == applied_before

    @classmethod
    @torch.no_grad()
    def validate_one_epoch(cls, model: torch.nn.Module, iterator: Iterable, reporter: SubReporter,
                           options: SNACGANTrainerOptions, distributed_option: DistributedOption,
                           step: Optional[GANStep] = None, sample_audio: Optional[List] = None,
                           output_dir: Optional[Path] = None, epoch: int = 0, summary_writer=None,
                           rank0: bool = True) -> None:
        """Validation losses of both turns (one host transfer per batch), the codec's validation
        hooks, and the fixed validation samples."""
        distributed = distributed_option.distributed
        device = torch.device("cuda" if options.ngpu > 0 else "cpu")
        codec = unwrap(model).codec
        model.eval()
        _call(codec, "validation_start")
        turns = ["generator", "discriminator"] if options.generator_first else ["discriminator", "generator"]
        stop = torch.zeros((), device=device)
        for _, batch in iterator:
            if distributed:
                torch.distributed.all_reduce(stop, torch.distributed.ReduceOp.SUM)
                if stop > 0:
                    break
            audio = batch["audio"].to(device, non_blocking=True)
            if sample_audio is not None and sample_audio[0] is None:
                sample_audio[0] = audio[:MAX_SAMPLE_CLIPS].detach().cpu().clone()
            if options.no_forward_run:
                continue
            names, values = [], []
            for turn in turns:
                with step.autocast() if step is not None else torch.autocast(device.type, enabled=False):
                    retval = model(forward_generator=turn == "generator", audio=audio)
                stats = {k: v for k, v in retval["stats"].items() if v is not None}
                names += list(stats)
                values += [torch.as_tensor(v, device=device).float().reshape(-1).mean() for v in stats.values()]
            clear_cache(codec)
            packed = torch.stack(values)
            if distributed:
                torch.distributed.all_reduce(packed)
                packed /= torch.distributed.get_world_size()
            reporter.register(dict(zip(names, packed.cpu().tolist())), audio.shape[0])
            reporter.next()
        else:
            if distributed:
                stop.fill_(1)
                torch.distributed.all_reduce(stop, torch.distributed.ReduceOp.SUM)
        end_stats = _call(codec, "validation_end")
        if end_stats:
            reporter.register({k: float(v) for k, v in end_stats.items()})
            reporter.next()
        if rank0 and output_dir is not None and sample_audio and sample_audio[0] is not None:
            _write_samples(codec, sample_audio[0], output_dir / SAMPLES_DIR / f"epoch_{epoch}", epoch, summary_writer)


def _log_preempted(message: str, distributed_option: DistributedOption) -> None:
    """``Training preempted ...`` in the log; other ranks (ESPnet logs only their errors) say it on stderr."""
    if distributed_option.distributed and distributed_option.dist_rank:
        print(f"[rank {distributed_option.dist_rank}] Training preempted {message}", file=sys.stderr, flush=True)
    else:
        logging.warning(f"Training preempted {message}")


def _refuse_data_parallel(distributed_option: DistributedOption) -> None:
    if not distributed_option.distributed and distributed_option.ngpu > 1:
        raise ValueError(
            f"--ngpu {distributed_option.ngpu} without --multiprocessing_distributed true would train with "
            "torch DataParallel, which this GAN trainer does not support (the turn index cannot be gathered "
            "and the replicas would share one codebook-health tracker). Add --multiprocessing_distributed "
            "true (one process per GPU with DistributedDataParallel; the recipe does this for --ngpu > 1) "
            "or use --ngpu 1."
        )


_CONTROL_GROUPS: Dict[int, Any] = {}


def _control_group():
    """The process group for the per-iteration control flags (end of data, checkpoint due, preempted):
    the default group when it is gloo, else a gloo group over the same ranks, created once (all ranks
    reach the first call together). CPU flags on gloo cost no GPU synchronisation, where NCCL would
    need device tensors and a device-to-host copy each iteration."""
    dist = torch.distributed
    if dist.get_backend() == "gloo":
        return None
    key = id(dist.group.WORLD)
    if key not in _CONTROL_GROUPS:
        _CONTROL_GROUPS[key] = dist.new_group(backend="gloo")
    return _CONTROL_GROUPS[key]


def _any_rank(flags, distributed: bool):
    """``flags`` (a bool or a list of bools) OR-ed over all ranks (a MAX all-reduce when distributed)."""
    single = isinstance(flags, bool)
    values = [bool(f) for f in ([flags] if single else flags)]
    if distributed:
        t = torch.tensor([float(v) for v in values])
        torch.distributed.all_reduce(t, torch.distributed.ReduceOp.MAX, group=_control_group())
        values = [v > 0 for v in t.tolist()]
    return values[0] if single else values


def _call(codec, name: str):
    hook = getattr(codec, name, None)
    return hook() if callable(hook) else None


def _write_samples(codec, audio, output_dir: Path, epoch: int, summary_writer) -> None:
    try:
        write_validation_samples(codec, audio, output_dir, epoch, summary_writer)
    except Exception:  # noqa: BLE001 - listening aids must never stop a week-long run
        logging.exception(f"Writing validation samples to {output_dir} failed; training continues")


def _symlink(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` atomically (a new link under a temporary name, then rename)."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link)
