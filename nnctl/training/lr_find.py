"""The learning-rate range test: train a fresh model while the lr grows exponentially, watch the loss.

One mini-batch per lr, from `min_lr` to `max_lr` in `steps` geometric steps (the data
reshuffled each pass, seeded by the spec's seed, so the curve is reproducible). The test
stops early when the loss diverges. Nothing is kept of the model or the optimizer: the
caller only gets the curve and the suggestions.

Notes
-----
lr_i = min_lr * (max_lr / min_lr) ** (i / (steps - 1)),  i = 0 .. steps-1
Smoothed loss (bias-corrected exponential average, as the loss of one batch is noisy):
  a_i = beta a_{i-1} + (1 - beta) loss_i,  s_i = a_i / (1 - beta^(i+1)),  beta = 0.9
Diverged: a non-finite loss, or s_i > DIVERGE x min_j<=i s_j.
Suggestions, both over the points up to the minimum of s:
  steepest    the lr where d log(s) / d log(lr) is most negative: the loss falls fastest, by
              fraction (a loss falling 10 -> 5 is as fast as 0.2 -> 0.1), skipping the first
              1 / (1 - beta) points, where the average still follows single noisy batches;
  min / 10    a tenth of the lr at the minimum of s (the minimum sits at the edge of divergence).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nnctl.data import iterate_batches
from nnctl.errors import NnctlError
from nnctl.training.experiment import Experiment

BETA = 0.9
DIVERGE = 4.0


@dataclass
class LRFindResult:
    lrs: list[float]                 # the lr of each step taken
    losses: list[float]              # the batch loss at that lr (before the step)
    smoothed: list[float]
    stopped: str                     # "diverged at lr ..." or "reached max_lr"
    steepest: float | None = None    # suggested lr: steepest descent of the smoothed loss
    min_over_10: float | None = None  # the lr at the smoothed loss' minimum, / 10
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "stopped": self.stopped,
                "suggestion": {"steepest": self.steepest, "min_over_10": self.min_over_10},
                "curve": [{"lr": lr, "loss": loss, "smoothed": s}
                          for lr, loss, s in zip(self.lrs, self.losses, self.smoothed)]}


def lr_schedule(min_lr: float, max_lr: float, steps: int) -> np.ndarray:
    if not (0 < min_lr < max_lr) or not math.isfinite(max_lr):
        raise NnctlError(f"--min/--max: need 0 < min < max, got min {min_lr} and max {max_lr}")
    if steps < 5:
        raise NnctlError(f"--steps: need at least 5 steps for a curve, got {steps}")
    return min_lr * (max_lr / min_lr) ** (np.arange(steps) / (steps - 1))


def suggest(lrs: np.ndarray, smoothed: np.ndarray) -> tuple[float | None, float | None]:
    """(steepest, min/10) over the points up to the minimum of the smoothed loss (see Notes)."""
    if len(smoothed) < 3:
        return None, None
    lowest = int(np.argmin(smoothed))
    min_over_10 = float(lrs[lowest] / 10.0)
    skip = int(round(1 / (1 - BETA)))
    if lowest - skip < 2 or np.any(smoothed[skip:lowest + 1] <= 0):
        return None, min_over_10
    part = np.log(smoothed[skip:lowest + 1])
    slope = np.gradient(part, np.log(lrs[skip:lowest + 1]))
    return float(lrs[skip + int(np.argmin(slope))]), min_over_10


def find_lr(exp: Experiment, min_lr: float = 1e-7, max_lr: float = 10.0, steps: int = 100) -> LRFindResult:
    """Run the range test on `exp` (freshly prepared: its model and optimizer are used up)."""
    lrs = lr_schedule(min_lr, max_lr, steps)
    spec = exp.spec
    model, loss, opt = exp.model, exp.loss, exp.optimizer
    params, grads = model.named_parameters(), model.named_grads()
    train = exp.dataset.train

    def batches():
        epoch = 0
        while True:
            # its own stream (seed, 2, pass): the test never shares the trainer's shuffles
            rng = np.random.default_rng([spec.seed, 2, epoch])
            yield from iterate_batches(train, spec.training.batch_size, rng, exp.dtype, exp.standardizer)
            epoch += 1

    taken, losses, smoothed = [], [], []
    avg, best = 0.0, math.inf
    stopped = "reached max_lr"
    stream = batches()
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for i, lr in enumerate(lrs):
            xb, yb = next(stream)
            opt.lr = float(lr)
            z = model.forward(xb, training=True)
            value, dz = loss(z, yb)
            if not math.isfinite(value):
                stopped = f"diverged at lr {lr:.3g} (loss {value})"
                break
            avg = BETA * avg + (1 - BETA) * value
            s = avg / (1 - BETA ** (i + 1))
            taken.append(float(lr))
            losses.append(float(value))
            smoothed.append(float(s))
            best = min(best, s)
            if s > DIVERGE * best:
                stopped = f"diverged at lr {lr:.3g} (smoothed loss {s:.4g} > {DIVERGE:g} x its minimum {best:.4g})"
                break
            model.backward(dz)
            opt.step(params, grads)
    steepest, min_over_10 = suggest(np.array(taken), np.array(smoothed))
    settings = {"min_lr": min_lr, "max_lr": max_lr, "steps": steps, "beta": BETA, "diverge": DIVERGE,
                "batch_size": spec.training.batch_size, "optimizer": spec.optimizer.get("name"), "seed": spec.seed}
    return LRFindResult(taken, losses, smoothed, stopped, steepest, min_over_10, settings)
