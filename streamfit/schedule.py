"""The learning-rate factor both fitting (``FitConfig.lr_factor``) and training
(``streamfit.train.schedule.WarmupCosine``) follow: linear warm-up, a hold at the full rate,
cosine decay to a floor."""

from __future__ import annotations

import math


def warmup_cosine(step: int, warmup: int, decay_start: int, decay_end: int, floor: float) -> float:
    """Multiplier of the peak rate at ``step`` (0-based): ``(step + 1) / warmup`` during
    warm-up, 1 until ``decay_start``, then cosine from 1 to ``floor`` at ``decay_end``, and
    ``floor`` after."""
    if step < warmup:
        return (step + 1) / warmup
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start) / max(1, decay_end - decay_start))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
