"""The learning rate at each step: linear warmup, then cosine or linear decay (or constant).
"""
from __future__ import annotations

import math


def lr_at(step: int, total: int, lr: float, min_lr: float, warmup: int, schedule: str) -> float:
    """Learning rate of optimizer step `step` (0-based) of `total`: linear warmup, then the decay."""
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)  # never 0: a first step at lr 0 would be wasted
    if schedule == "constant":
        return lr
    progress = (step - warmup) / max(1, total - warmup)  # 0 -> 1 over the decay
    coeff = 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr + coeff * (lr - min_lr)
