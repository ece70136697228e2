"""The learning-rate range test: train a fresh model while the lr grows exponentially, watch the loss.

One mini-batch per lr, from `min_lr` to `max_lr` in `steps` geometric steps (the data
reshuffled each pass, seeded by the spec's seed, so the curve is reproducible). The test
stops early when the loss diverges. Nothing is kept of the model or the optimizer: the
caller only gets the curve and the suggestions.

Notes
-----
lr_i = min_lr * (max_lr / min_lr) ** (i / (steps - 1)),  i = 0 .. steps-1
Stopping (online, so it can only look back): a bias-corrected exponential average
  a_i = beta a_{i-1} + (1 - beta) loss_i,  e_i = a_i / (1 - beta^(i+1)),  beta = 0.9;
  diverged: a non-finite loss, or e_i > DIVERGE x min_j<=i e_j.
Suggestions (after the test, so they can look both ways): the curve s is the centred mean
of log(loss) over the 2 HALF + 1 steps around each point (cut at the ends). The running
average e trails the batch loss by about 1 / (1 - beta) = 10 steps, which at 100 steps over
six decades is a factor ~4 in lr, and its arithmetic mean is dominated by the larger, older
losses while the loss falls by orders of magnitude; s has neither bias.
  suggested   half the lr at the minimum of s. The minimum is where a step starts to
              overshoot; for a quadratic with curvature h the loss grows once lr > 2/h and
              falls fastest at lr = 1/h, so half of it is the fastest stable constant lr.
              This tracks the stability edge, which moves with the loss scale (raw
              regression targets need large output weights, hence more curvature);
  steepest    the lr where d log(s) / d log(lr) is most negative, past the first HALF points:
              where learning starts within this test's budget, so it moves with --steps
              (fewer steps, larger lr) and says nothing about the stability edge;
  min / 10    a tenth of the lr at the minimum of s (the usual conservative rule).
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
HALF = 5          # the centred window's half width: 11 steps, the running average's span


@dataclass
class LRFindResult:
    lrs: list[float]                 # the lr of each step taken
    losses: list[float]              # the batch loss at that lr (before the step)
    smoothed: list[float]            # exp of the centred mean of log(loss) (see Notes)
    stopped: str                     # "diverged at lr ..." or "reached max_lr"
    suggested: float | None = None   # half the lr at the smoothed loss' minimum
    steepest: float | None = None    # steepest descent of the smoothed loss
    min_over_10: float | None = None  # the lr at the smoothed loss' minimum, / 10
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "stopped": self.stopped,
                "suggestion": {"suggested": self.suggested, "steepest": self.steepest,
                               "min_over_10": self.min_over_10},
                "curve": [{"lr": lr, "loss": loss, "smoothed": s}
                          for lr, loss, s in zip(self.lrs, self.losses, self.smoothed)]}


def lr_schedule(min_lr: float, max_lr: float, steps: int) -> np.ndarray:
    if not (0 < min_lr < max_lr) or not math.isfinite(max_lr):
        raise NnctlError(f"--min/--max: need 0 < min < max, got min {min_lr} and max {max_lr}")
    if steps < 5:
        raise NnctlError(f"--steps: need at least 5 steps for a curve, got {steps}")
    return min_lr * (max_lr / min_lr) ** (np.arange(steps) / (steps - 1))


def centred_smooth(losses: np.ndarray) -> np.ndarray:
    """exp of the mean of log(loss) over the 2 HALF + 1 steps around each point (losses > 0)."""
    logs = np.log(losses)
    sums = np.concatenate([[0.0], np.cumsum(logs)])
    idx = np.arange(len(logs))
    lo, hi = np.maximum(idx - HALF, 0), np.minimum(idx + HALF + 1, len(logs))
    return np.exp((sums[hi] - sums[lo]) / (hi - lo))


def suggest(lrs: np.ndarray, smoothed: np.ndarray) -> tuple[float | None, float | None, float | None]:
    """(suggested, steepest, min/10) from the smoothed curve (see Notes)."""
    if len(smoothed) < 3:
        return None, None, None
    lowest = int(np.argmin(smoothed))
    suggested, min_over_10 = float(lrs[lowest] / 2.0), float(lrs[lowest] / 10.0)
    if lowest == 0:   # the loss only rose: no lr in the range learns
        return None, None, min_over_10
    if lowest - HALF < 2:
        return suggested, None, min_over_10
    slope = np.gradient(np.log(smoothed[HALF:lowest + 1]), np.log(lrs[HALF:lowest + 1]))
    return suggested, float(lrs[HALF + int(np.argmin(slope))]), min_over_10


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

    taken, losses = [], []
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
            running = avg / (1 - BETA ** (i + 1))
            taken.append(float(lr))
            losses.append(float(value))
            best = min(best, running)
            if running > DIVERGE * best:
                stopped = (f"diverged at lr {lr:.3g} (averaged loss {running:.4g} > {DIVERGE:g} x its minimum "
                           f"{best:.4g})")
                break
            model.backward(dz)
            opt.step(params, grads)
    # a zero loss (a fit to the last bit) would make log(0); the floor keeps the curve finite
    smoothed = centred_smooth(np.maximum(np.array(losses), np.finfo(np.float64).tiny)) if losses else np.array([])
    suggested, steepest, min_over_10 = suggest(np.array(taken), smoothed)
    settings = {"min_lr": min_lr, "max_lr": max_lr, "steps": steps, "beta": BETA, "diverge": DIVERGE,
                "half_window": HALF, "batch_size": spec.training.batch_size, "optimizer": spec.optimizer.get("name"),
                "seed": spec.seed}
    return LRFindResult(taken, losses, [float(v) for v in smoothed], stopped, suggested, steepest, min_over_10,
                        settings)
