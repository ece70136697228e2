"""The TensorBoard logger: event files under `<run>/tensorboard/`, one scalar per metric per epoch."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from nnctl.loggers import NEEDS, GuardedLogger, Warn, epoch_values, require
from nnctl.training.callbacks import TrainState

FOLDER = "tensorboard"


class TensorBoardLogger(GuardedLogger):
    name = "tensorboard"

    def __init__(self, run_path: Path, warn: Warn):
        super().__init__(warn)
        self.logdir = run_path / FOLDER
        self.writer = None

    def begin(self, state: TrainState) -> None:
        tbx = require(*NEEDS["tensorboard"])
        # A resumed run starts a new event file that purges every earlier step and logs the
        # history again: what TensorBoard shows is then exactly history.json, even if the
        # previous process died between its checkpoint and its last event.
        self.writer = tbx.SummaryWriter(logdir=str(self.logdir), purge_step=1 if state.history else None,
                                        flush_secs=30)
        for record in state.history:
            self._scalars(record)
        self.writer.flush()

    def _scalars(self, record: dict[str, Any]) -> None:
        for key, value in epoch_values(record).items():
            self.writer.add_scalar(key, value, global_step=record["epoch"])

    def epoch(self, state: TrainState, record: dict[str, Any]) -> None:
        self._scalars(record)
        self.writer.flush()

    def end(self, state: TrainState, result) -> None:
        if self.writer is None:
            return
        for key, value in result.test_metrics.items():
            self.writer.add_scalar(key, float(value), global_step=result.epochs_run)
        self.writer.close()
