"""Early stopping and best-epoch tracking, with the Keras semantics users know."""
from __future__ import annotations

import math
from typing import Any

from nnctl.engine.metrics import auto_mode
from nnctl.training.callbacks import Callback, TrainState


class EarlyStopping(Callback):
    """Tracks the best value of `monitor` and decides when to stop.

    An epoch improves when its value beats the best by more than `min_delta`
    (value < best - min_delta in "min" mode). Epochs before `start_from_epoch` (1-based
    count of completed epochs) are neither counted nor tracked, as in Keras. `patience`
    epochs without improvement stop training. With patience=None it only tracks the best
    epoch (used when the spec has no early_stopping, so best.npz is still kept).

    The Trainer owns one (it decides which epochs "improved", which every other callback is
    told) and calls it first among the callbacks: its `on_epoch_end` asks for the stop.
    """

    def __init__(self, monitor: str, mode: str = "auto", patience: int | None = 5,
                 min_delta: float = 0.0, start_from_epoch: int = 0):
        self.monitor = monitor
        self.mode = auto_mode(monitor) if mode == "auto" else mode
        self.patience = patience
        self.min_delta = abs(min_delta)
        self.start_from_epoch = start_from_epoch
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.wait = 0
        self.stopped_epoch: int | None = None

    def improved(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, epoch: int, logs: dict[str, float]) -> tuple[bool, bool]:
        """Feed the logs of completed epoch `epoch` (1-based); return (improved, should_stop)."""
        if epoch <= self.start_from_epoch:
            return False, False
        value = logs[self.monitor]
        if self.improved(value):
            self.best, self.best_epoch, self.wait = float(value), epoch, 0
            return True, False
        self.wait += 1
        if self.patience is not None and self.wait >= self.patience:
            self.stopped_epoch = epoch
            return False, True
        return False, False

    def on_epoch_end(self, state: TrainState, record: dict[str, Any], improved: bool) -> None:
        if self.stopped_epoch is not None and self.stopped_epoch == state.epoch:
            state.request_stop("stopped_early", f"{self.monitor} did not improve for {self.patience} epochs")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")
        self.best_epoch = state.get("best_epoch")
        self.wait = int(state.get("wait", 0))
        self.stopped_epoch = state.get("stopped_epoch")
