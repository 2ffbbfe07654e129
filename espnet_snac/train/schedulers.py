"""Learning-rate schedules that ESPnet lacks."""
from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class ExponentialDecayLR(LRScheduler):
    """``lr = base_lr * gamma ** iteration``, stepped after every optimiser update.

    ESPnet steps ``exponentiallr`` once per *epoch*; SNAC/DAC decay per iteration
    (SNAC-24k: gamma 0.999994). Registered with ESPnet as ``exponentialdecay``.
    """

    def __init__(self, optimizer: Optimizer, gamma: float = 0.999994, min_lr: float = 0.0, last_epoch: int = -1):
        self.gamma = gamma
        self.min_lr = min_lr
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [max(base * self.gamma**self.last_epoch, self.min_lr) for base in self.base_lrs]
