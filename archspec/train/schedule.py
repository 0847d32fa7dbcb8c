"""The learning-rate schedule: a linear warmup from 0 to the peak over `warmup` steps, then

    cosine:    lr = min + (peak - min) * (1 + cos(pi * f)) / 2
    linear:    lr = peak - (peak - min) * f
    constant:  lr = peak

where f = (step - warmup) / (steps - warmup) runs from 0 to 1 and min = min_lr_ratio * peak.
`lr_factor` returns lr / peak, the multiplier torch's LambdaLR applies; step counts optimizer
steps from 0 (the first step runs at factor lr_factor(0))."""
from __future__ import annotations

import math

SCHEDULES = ("cosine", "linear", "constant")


def lr_factor(step: int, steps: int, warmup: int, schedule: str, min_lr_ratio: float = 0.1) -> float:
    if step < warmup:
        return (step + 1) / (warmup + 1)  # never 0: a step at lr 0 would be wasted
    if schedule == "constant" or steps <= warmup:
        return 1.0
    f = min(1.0, (step - warmup) / max(1, steps - warmup - 1))
    if schedule == "cosine":
        return min_lr_ratio + (1 - min_lr_ratio) * (1 + math.cos(math.pi * f)) / 2
    if schedule == "linear":
        return 1.0 - (1 - min_lr_ratio) * f
    raise ValueError(f"unknown schedule '{schedule}' (use one of {', '.join(SCHEDULES)})")
