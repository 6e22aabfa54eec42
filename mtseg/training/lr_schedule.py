"""The learning rate over a run (``optimizer.lr_decay``, ``optimizer.warmup``)."""

from __future__ import annotations

import math

#: Learning-rate schedules over the run (``optimizer.lr_decay``).
LR_DECAYS = ("constant", "cosine")


def lr_factor(decay: str, warmup: float, total: int):
    """The factor on the learning rate at each step (0 to ``total - 1``) of a run of ``total`` steps:
    a linear warm-up over the first ``warmup`` fraction, then constant, or a cosine that
    reaches 0 as the run ends (at step ``total``, which is never taken)."""
    warm = int(round(warmup * total))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if decay == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(step - warm, total - warm) / max(total - warm, 1)))
        return 1.0

    return factor
