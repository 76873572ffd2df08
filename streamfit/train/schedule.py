"""Per-group learning-rate schedule: linear warm-up then cosine decay, as a factor applied to
each parameter group's own peak lr, so lr multipliers between groups hold at every step."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR

from streamfit.schedule import warmup_cosine


class WarmupCosine:
    """``factor(step)``: ``(step + 1) / warmup`` during warm-up, then cosine from 1 to
    ``min_ratio`` over the remaining ``total - warmup`` steps, ``min_ratio`` after ``total``.

    A class rather than a closure so that ``LambdaLR.state_dict`` saves its settings.
    """

    def __init__(self, warmup: int, total: int, min_ratio: float = 0.0) -> None:
        self.warmup, self.total, self.min_ratio = warmup, max(total, 1), min_ratio

    def __call__(self, step: int) -> float:
        return warmup_cosine(step, self.warmup, self.warmup, self.total, self.min_ratio)


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup: int, total: int, min_ratio: float = 0.0
) -> LambdaLR:
    """A scheduler setting group ``g``'s lr to ``g["base_lr"] * factor(step)`` (``base_lr`` as
    the model's ``param_groups`` sets it; the group's lr at creation when absent)."""
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
        # LambdaLR scales "initial_lr"; pin it to the group's own peak.
        group["initial_lr"] = group["base_lr"]
    return LambdaLR(optimizer, WarmupCosine(warmup, total, min_ratio))
