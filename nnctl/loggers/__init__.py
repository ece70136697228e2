"""Experiment loggers (CSV, TensorBoard, MLflow) as training callbacks, built from the spec's `loggers:`.

Every logged value is a value of history.json (per epoch) or metrics.json (final test metrics).
A logger never stops training: its first failure is reported once through `warn` (the
command's console) and the logger switches itself off.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from nnctl.errors import NnctlError
from nnctl.training.callbacks import Callback, TrainState

Warn = Callable[[str], None]

EXTRA_MISSING = '{package} is not installed: pip install -e ".[{extra}]"'


class GuardedLogger(Callback):
    """Runs a logger's events; on the first exception it warns once and stops logging."""

    name = "logger"

    def __init__(self, warn: Warn):
        self.warn = warn
        self.failed = False

    def _guard(self, what: str, fn: Callable[[], None]) -> None:
        if self.failed:
            return
        try:
            fn()
        except Exception as err:  # any failure of a logger (server down, disk full) must not end training
            self.failed = True
            self.warn(f"{self.name} logger failed {what} ({type(err).__name__}: {err}); "
                      f"training goes on without it")

    def on_train_begin(self, state: TrainState) -> None:
        self._guard("to start", lambda: self.begin(state))

    def on_epoch_end(self, state: TrainState, record: dict[str, Any], improved: bool) -> None:
        self._guard(f"at epoch {record['epoch']}", lambda: self.epoch(state, record))

    def on_train_end(self, state: TrainState, result) -> None:
        self._guard("to finish", lambda: self.end(state, result))

    # what each logger writes
    def begin(self, state: TrainState) -> None: ...
    def epoch(self, state: TrainState, record: dict[str, Any]) -> None: ...
    def end(self, state: TrainState, result) -> None: ...


def epoch_values(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of one history record, by name (the epoch is the step, not a value)."""
    return {k: float(v) for k, v in record.items() if k != "epoch" and isinstance(v, (int, float))}


def _tensorboardx():
    import tensorboardX
    return tensorboardX


def _mlflow():
    import mlflow
    return mlflow


# logger name -> (how to import the package it needs, its pip name, the extra that installs it)
NEEDS = {
    "tensorboard": (_tensorboardx, "tensorboardX", "tensorboard"),
    "mlflow": (_mlflow, "mlflow-skinny", "mlflow"),
}


def check_installed(spec) -> None:
    """Every logger the spec asks for can be imported; else one line naming the extra.

    Called before the run folder exists, so a missing package writes nothing."""
    for entry in spec.loggers:
        (name, _), = entry.items()
        if name in NEEDS:
            require(*NEEDS[name])


def require(load: Callable[[], Any], package: str, extra: str):
    """Import an optional package, or a one-line error naming the extra that installs it."""
    try:
        return load()
    except ImportError:
        raise NnctlError(EXTRA_MISSING.format(package=package, extra=extra)) from None


def build_loggers(spec, run_path: Path, warn: Warn) -> list[Callback]:
    """The spec's loggers, in the spec's order, ready to append to the Trainer's callbacks."""
    from nnctl.loggers.csv_logger import CSVLogger
    from nnctl.loggers.mlflow_logger import MLflowLogger
    from nnctl.loggers.tensorboard import TensorBoardLogger
    kinds = {"csv": CSVLogger, "tensorboard": TensorBoardLogger, "mlflow": MLflowLogger}
    out = []
    for entry in spec.loggers:
        (name, options), = entry.items()
        out.append(kinds[name](Path(run_path), warn, **options))
    return out
