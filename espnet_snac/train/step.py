"""One GAN training iteration (discriminator turn + generator turn), shared by the trainer and benchmarks.

Per turn: forward under the chosen precision, backward, the norm of the gradients of the network
being trained (over its own parameters only), optional clipping to that network's limit, then a
host transfer of ``[loss, grad_norm, *stats]`` that decides whether the step is applied. A
non-finite loss or norm skips the optimizer and scheduler step, zeroes the gradients and is
counted by :class:`~espnet_snac.train.nonfinite.NonFiniteGuard`. With fused optimizers
(``optim_conf: {fused: true}``) the first turn's skip is decided on the device and both turns share
one host transfer per iteration (see :meth:`GANStep.iteration_on`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from espnet2.schedulers.abs_scheduler import AbsBatchStepScheduler

from espnet_snac.train.augment import BatchAugment
from espnet_snac.train.nonfinite import NonFiniteGuard, clip_to_norm_, grad_norm

PRECISIONS = ("fp32", "bf16", "fp16")
TURN_INDEX = {"generator": 0, "discriminator": 1}  # = ESPnet's optim_idx


@dataclasses.dataclass
class StepConfig:
    """What one GAN iteration needs to know (built from the trainer options)."""

    grad_clip_generator: Optional[float] = None  # None or <= 0: no clipping
    grad_clip_discriminator: Optional[float] = None
    precision: str = "fp32"
    max_consecutive_nonfinite: int = 10
    generator_first: bool = False
    skip_discriminator_prob: float = 0.0
    seed: int = 0
    augment_conf: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("grad_clip_generator", "grad_clip_discriminator"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be null or a number (max gradient norm), got {value!r}")
        if not 0.0 <= float(self.skip_discriminator_prob) < 1.0:
            raise ValueError(f"skip_discriminator_prob must be in [0, 1), got {self.skip_discriminator_prob}")
        if not isinstance(self.augment_conf, dict):
            raise ValueError(f"augment_conf must be a mapping, got {self.augment_conf!r}")


def skip_discriminator(seed: int, iteration: int, prob: float) -> bool:
    """Whether to skip the discriminator turn of ``iteration``.

    Every rank gets the same answer without communication: the draw comes from a generator seeded by
    ``(seed, iteration)``, which all ranks share, not from the (per-rank) global RNG.
    """
    if prob <= 0:
        return False
    gen = torch.Generator().manual_seed((int(seed) << 32) + int(iteration))
    return bool(torch.rand((), generator=gen) < prob)


def clear_cache(codec) -> None:
    """Drop a codec's cached generator output (``SNACCodec.clear_cache``; ESPnet codecs: ``_cache``)."""
    if callable(getattr(codec, "clear_cache", None)):
        codec.clear_cache()
    elif hasattr(codec, "_cache"):
        codec._cache = None


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The ESPnet model inside DDP / DataParallel."""
    return model.module if hasattr(model, "module") else model


def build_augment(conf: Dict[str, Any]):
    """``espnet_snac.train.augment.BatchAugment(**conf)`` or None when ``conf`` is empty."""
    return BatchAugment(**conf) if conf else None


class GANStep:
    """Runs training iterations of an ``ESPnetGANCodecModel`` (optionally DDP-wrapped).

    ``optimizers``/``schedulers``: ``[generator, discriminator]`` as built by ESPnet's GAN-codec task.
    fp16 uses one ``GradScaler`` per network: the two turns are separate backward passes with
    gradients of very different size (the generator's carries the mel loss x15), so a shared dynamic
    scale would be lowered by one network's overflows and waste the other's range; each scaler is
    updated once per step of its own network.
    """

    def __init__(self, model: torch.nn.Module, optimizers: Sequence[torch.optim.Optimizer],
                 schedulers: Sequence[Any], config: StepConfig, device: str = "cpu",
                 distributed: bool = False):
        if len(optimizers) != 2:
            raise ValueError(f"GAN training needs 2 optimizers (generator, discriminator), got {len(optimizers)}")
        self.model = model
        self.codec = unwrap(model).codec
        self.optimizers = list(optimizers)
        self.schedulers = list(schedulers)
        self.config = config
        self.device = torch.device(device)
        self.distributed = distributed
        self.params = [[p for p in self.codec.generator.parameters() if p.requires_grad],
                       [p for p in self.codec.discriminator.parameters() if p.requires_grad]]
        self.clips = [config.grad_clip_generator, config.grad_clip_discriminator]
        fp16 = config.precision == "fp16"
        self.scalers = [torch.amp.GradScaler(self.device.type, enabled=fp16) for _ in range(2)]
        self.guard = NonFiniteGuard(config.max_consecutive_nonfinite)
        self.augment = build_augment(config.augment_conf)
        self.iteration = 0  # iterations run so far (all ranks agree): seeds the skip decisions
        self.empty_batches = 0  # batches the augmentation emptied (skipped)
        self.applied_steps = 0  # optimizer steps applied (both networks)
        self.overflow_steps = 0  # fp16: steps skipped because the scaled gradients overflowed
        self.host_transfers = 0  # device-to-host synchronisations of the stats (one or two per iteration)
        self.where = ""  # "at epoch E, iteration I", for messages

    # ------------------------------------------------------------------ precision
    def autocast(self):
        if self.config.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    # ------------------------------------------------------------------ decisions
    def skip_discriminator(self) -> bool:
        return skip_discriminator(self.config.seed, self.iteration, self.config.skip_discriminator_prob)

    def _all_ranks_min(self, n: int) -> int:
        if not self.distributed:
            return n
        t = torch.tensor([n], device=self.device)
        torch.distributed.all_reduce(t, torch.distributed.ReduceOp.MIN)
        return int(t.item())

    # ------------------------------------------------------------------ one iteration
    def __call__(self, audio: torch.Tensor) -> Optional[Tuple[Dict[str, float], Dict[str, float]]]:
        """Augment (if configured) and train on ``audio (B, T)``.

        Returns ``(weighted, plain)`` host stats (``weighted`` per batch item) or ``None`` when the
        augmentation left no item on some rank (the iteration is skipped everywhere and counted).
        """
        plain: Dict[str, float] = {}
        if self.augment is not None:
            audio, aug_stats = self.augment(audio)
            plain.update({k: float(v) for k, v in aug_stats.items()})
            if self._all_ranks_min(int(audio.shape[0])) == 0:
                self.empty_batches += 1
                return None
        weighted, more = self.iteration_on(audio)
        plain.update(more)
        plain["augment_empty_batches"] = float(self.empty_batches)
        return weighted, plain

    def iteration_on(self, audio: torch.Tensor) -> Tuple[Dict[str, float], Dict[str, float]]:
        """One discriminator turn (unless skipped) and one generator turn on ``audio (B, T)``.

        A turn whose optimizer can skip a step on the device (fused Adam/AdamW: ``found_inf``, as
        ``GradScaler`` uses it) and that is not the last of the iteration does not wait for the host:
        its loss and norm travel with the last turn's, so the iteration synchronises with the host
        once instead of once per turn. Other optimizers decide on the host after each turn.
        """
        turns = ["generator", "discriminator"] if self.config.generator_first else ["discriminator", "generator"]
        skip_d = self.skip_discriminator()
        active = [t for t in turns if not (t == "discriminator" and skip_d)]
        weighted: Dict[str, float] = {}
        plain: Dict[str, float] = {}
        pending: List[Tuple[str, List[str], torch.Tensor, bool]] = []  # (turn, names, packed, decided on device)
        try:
            for k, turn in enumerate(active):
                names, packed = self._forward_backward(turn, audio)
                if k < len(active) - 1 and self._device_skip(TURN_INDEX[turn]):
                    self._step_on_device(TURN_INDEX[turn], packed)
                    pending.append((turn, names, packed, True))
                    continue
                pending.append((turn, names, packed, False))
                host = self._to_host(torch.cat([p for _, _, p, _ in pending]))
                offset = 0
                for t, n, p, on_device in pending:
                    w, pl = self._finish(t, n, host[offset:offset + p.numel()], on_device)
                    offset += p.numel()
                    weighted.update(w)
                    plain.update(pl)
                pending = []
        finally:
            clear_cache(self.codec)  # never carried into the next batch (memory, staleness)
        self.iteration += 1
        plain["discriminator_skipped"] = float(skip_d)
        plain["nonfinite_steps"] = float(self.guard.total)
        hook = getattr(self.codec, "training_step_end", None)
        if callable(hook):
            plain.update({k: float(v) for k, v in (hook() or {}).items()})
        return weighted, plain

    def turn(self, turn: str, audio: torch.Tensor) -> Tuple[Dict[str, float], Dict[str, float]]:
        """One turn decided on the host (forward, backward, clipping, step or skip)."""
        names, packed = self._forward_backward(turn, audio)
        return self._finish(turn, names, self._to_host(packed), on_device=False)

    def _device_skip(self, idx: int) -> bool:
        return (not self.scalers[idx].is_enabled()
                and bool(getattr(self.optimizers[idx], "_step_supports_amp_scaling", False)))

    def _to_host(self, packed: torch.Tensor) -> List[float]:
        self.host_transfers += 1
        return packed.cpu().tolist()

    def _forward_backward(self, turn: str, audio: torch.Tensor) -> Tuple[List[str], torch.Tensor]:
        """Forward, backward, norm and clipping of ``turn``; returns the stat names and the device
        vector ``[loss, grad_norm, *stats]`` (all-reduced over the ranks)."""
        idx = TURN_INDEX[turn]
        optimizer, scaler, params = self.optimizers[idx], self.scalers[idx], self.params[idx]
        with self.autocast():
            retval = self.model(forward_generator=turn == "generator", audio=audio)
        if retval.get("optim_idx", idx) != idx:
            raise RuntimeError(f"the codec answered the {turn} turn with optim_idx {retval['optim_idx']}")
        loss, names, values = _reduce_replicas(retval)
        scaler.scale(loss).backward()
        if scaler.is_enabled():
            scaler.unscale_(optimizer)
        norm = grad_norm(params)
        clip_to_norm_(params, self.clips[idx], norm)  # a NaN norm makes NaN grads; the step is skipped
        packed = torch.stack([loss.detach().float(), norm.float(), *values])
        if self.distributed:
            torch.distributed.all_reduce(packed)
            packed /= torch.distributed.get_world_size()
        return names, packed

    def _step_on_device(self, idx: int, packed: torch.Tensor) -> None:
        """Step unless the loss or norm is non-finite, decided on the device (the fused optimizer
        skips the update and its step count where ``found_inf`` is 1)."""
        optimizer = self.optimizers[idx]
        optimizer.found_inf = (~torch.isfinite(packed[:2]).all()).float()
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def _finish(self, turn: str, names: List[str], host: List[float],
                on_device: bool) -> Tuple[Dict[str, float], Dict[str, float]]:
        """The host side of a turn: count or skip the step (apply it unless already decided on the
        device), the batch scheduler, the fp16 scaler, and the turn's stats."""
        idx = TURN_INDEX[turn]
        optimizer, scheduler, scaler = self.optimizers[idx], self.schedulers[idx], self.scalers[idx]
        if on_device:  # the optimizer already stepped or skipped by the same rule
            if self.guard.record(turn, host[0], host[1], self.where):
                self.applied_steps += 1
                if isinstance(scheduler, AbsBatchStepScheduler):
                    scheduler.step()
        else:
            if self._fp16_overflow(scaler, host[0], host[1]):
                self.overflow_steps += 1  # skipped; the scaler lowers its scale below (not a fault)
            elif self.guard.record(turn, host[0], host[1], self.where):
                self.applied_steps += 1
                optimizer.step()  # fp16: gradients are unscaled and finite, as GradScaler.step would check
                if isinstance(scheduler, AbsBatchStepScheduler):
                    scheduler.step()
            if scaler.is_enabled():
                scaler.update()  # lowers the scale after an overflow
            for opt in self.optimizers:  # the generator's loss also fills the discriminator's gradients
                opt.zero_grad(set_to_none=True)
        weighted = dict(zip(names, host[2:]))
        plain = {f"grad_norm_{turn}": host[1]}
        plain.update({f"optim{idx}_lr{i}": float(g["lr"]) for i, g in enumerate(optimizer.param_groups)})
        if scaler.is_enabled():
            plain[f"loss_scale_{turn}"] = float(scaler.get_scale())
            plain["fp16_overflow_steps"] = float(self.overflow_steps)
        return weighted, plain

    @staticmethod
    def _fp16_overflow(scaler, loss: float, norm: float) -> bool:
        """fp16: a finite loss with inf/NaN gradients is the scaler's overflow, which it handles by
        halving its scale; only at a scale below 1 does it count as a fault."""
        return (scaler.is_enabled() and math.isfinite(loss) and not math.isfinite(norm)
                and scaler.get_scale() >= 1.0)

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> Dict[str, Any]:
        return {"iteration": self.iteration, "empty_batches": self.empty_batches,
                "overflow_steps": self.overflow_steps,
                "guard": self.guard.state_dict(), "scalers": [s.state_dict() for s in self.scalers],
                "augment": self.augment.state_dict() if self.augment is not None else None}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        self.empty_batches = int(state.get("empty_batches", 0))
        self.overflow_steps = int(state.get("overflow_steps", 0))
        self.guard.load_state_dict(state["guard"])
        for scaler, s in zip(self.scalers, state["scalers"]):
            if s and scaler.is_enabled():
                scaler.load_state_dict(s)
        if self.augment is not None and state.get("augment"):
            self.augment.load_state_dict(state["augment"])  # its CPU generator: the same draws after a resume


def _reduce_replicas(retval: Dict[str, Any]) -> Tuple[torch.Tensor, List[str], List[torch.Tensor]]:
    """Loss and stats as fp32 0-dim tensors; DataParallel replicas averaged by their batch weight."""
    loss, stats, weight = retval["loss"], retval["stats"], retval["weight"]
    stats = {k: v for k, v in stats.items() if v is not None}
    w = weight.to(device=loss.device, dtype=torch.float32).reshape(-1)

    def mean(v) -> torch.Tensor:
        v = torch.as_tensor(v, device=loss.device).float().reshape(-1)
        return v[0] if v.numel() == 1 else (v * w).sum() / w.sum()

    return mean(loss), list(stats), [mean(v).detach() for v in stats.values()]
