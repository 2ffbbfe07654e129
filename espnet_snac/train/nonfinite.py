"""Gradient norms, per-network clipping and the guard against non-finite steps."""
from __future__ import annotations

import logging
import math
from typing import Dict, Iterable, List, Optional

import torch


class NonFiniteTrainingError(RuntimeError):
    """Raised after too many consecutive skipped (non-finite) steps of one network."""


def grad_norm(params: List[torch.nn.Parameter]) -> torch.Tensor:
    """L2 norm over the gradients of ``params`` (0 if none has one); a device tensor, no host sync."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        device = params[0].device if params else "cpu"
        return torch.zeros((), device=device)
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0, foreach=None)


def clip_to_norm_(params: List[torch.nn.Parameter], max_norm: Optional[float], norm: torch.Tensor) -> None:
    """Scale the gradients of ``params`` to at most ``max_norm`` given their norm (off if None or <= 0)."""
    if max_norm is None or max_norm <= 0:
        return
    with_grads = [p for p in params if p.grad is not None]
    if with_grads:
        torch.nn.utils.clip_grads_with_norm_(with_grads, max_norm, norm)


class NonFiniteGuard:
    """Counts skipped steps; stops training after ``max_consecutive`` in a row for one network.

    A step is skipped when its loss or its gradient norm is NaN/Inf (clipping on or off). Counting
    per network means a generator that fails every step while the discriminator trains still stops.
    """

    def __init__(self, max_consecutive: int = 10, names: Iterable[str] = ("generator", "discriminator")):
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive_nonfinite must be >= 1, got {max_consecutive}")
        self.max_consecutive = int(max_consecutive)
        self.total = 0
        self.consecutive: Dict[str, int] = {n: 0 for n in names}

    @property
    def healthy(self) -> bool:
        """No network is in a run of skipped steps (a checkpoint written now follows a good step)."""
        return not any(self.consecutive.values())

    def record(self, name: str, loss: float, norm: float, where: str = "") -> bool:
        """Register one step of network ``name``; returns True if it may be applied.

        Raises :class:`NonFiniteTrainingError` when ``name`` reaches ``max_consecutive`` skips in a row.
        """
        if math.isfinite(loss) and math.isfinite(norm):
            self.consecutive[name] = 0
            return True
        self.total += 1
        self.consecutive[name] += 1
        logging.warning(
            f"Non-finite {name} step skipped{where}: loss={loss}, grad_norm={norm} "
            f"({self.consecutive[name]} in a row, {self.total} in total)"
        )
        if self.consecutive[name] >= self.max_consecutive:
            raise NonFiniteTrainingError(
                f"{self.consecutive[name]} consecutive non-finite {name} steps{where} "
                f"(--max_consecutive_nonfinite {self.max_consecutive}): training stopped. "
                "Weights were not updated by any skipped step. Check the data for NaN/Inf or silent "
                "clips, lower the learning rate, enable gradient clipping (grad_clip_generator / "
                "grad_clip_discriminator) or train in fp32; then resume from the last checkpoint."
            )
        return False

    def state_dict(self) -> Dict[str, int]:
        return {"total": self.total}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        # A resumed run starts a fresh streak: the user has usually changed something.
        self.total = int(state.get("total", 0))
