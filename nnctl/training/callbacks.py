"""Training events: the `Callback` base and the read-only `TrainState` the Trainer hands to callbacks.

The Trainer calls its callbacks in list order. Everything that reacts to training (early
stopping, the run folder, progress, loggers, pruning) is a callback, so the loop itself stays
free of files and output.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nnctl.status import STOP_REQUESTS

if TYPE_CHECKING:  # only for annotations: callbacks never hold the Trainer itself
    from nnctl.training.trainer import Result, Trainer


class TrainState:
    """What a callback may look at while training runs: a view, not the Trainer.

    `history` is the Trainer's own list (read it, don't change it); `spec`, `dataset` and
    `model` are there for callbacks that save or log them.
    """

    def __init__(self, trainer: "Trainer"):
        self._trainer = trainer

    @property
    def epoch(self) -> int:
        """Completed epochs."""
        return self._trainer.epoch

    @property
    def epochs(self) -> int:
        """Planned epochs."""
        return self._trainer.exp.spec.training.epochs

    @property
    def step(self) -> int:
        """Completed batches, counted over the whole run."""
        return self._trainer.step

    @property
    def steps_per_epoch(self) -> int:
        return self._trainer.exp.steps_per_epoch

    @property
    def history(self) -> list[dict[str, Any]]:
        return self._trainer.history

    @property
    def spec(self):
        return self._trainer.exp.spec

    @property
    def dataset(self):
        return self._trainer.exp.dataset

    @property
    def model(self):
        return self._trainer.exp.model

    @property
    def experiment(self):
        """Everything `prepare` built (optimizer, schedule, standardizer): for checkpoint writers."""
        return self._trainer.exp

    @property
    def best_epoch(self) -> int | None:
        return self._trainer.stopper.best_epoch

    @property
    def best_state(self) -> dict | None:
        """The weights of the best epoch so far (the Trainer's copy; don't change it)."""
        return self._trainer.best_state

    @property
    def resumed(self) -> bool:
        """True when this process continues a run from its last checkpoint."""
        return self._trainer.resumed

    def resume_state(self) -> dict[str, Any]:
        """The Trainer's scalar state a resume needs (epoch, step, optimizer scalars, schedule, ...)."""
        return self._trainer.resume_state()

    def optimizer_arrays(self) -> dict[str, Any]:
        return self._trainer.exp.optimizer.state_dict()["arrays"]

    @property
    def stop_requested(self) -> str | None:
        """The status a callback (or a signal) asked to end with, or None."""
        return self._trainer.stop_status

    def request_stop(self, status: str, message: str = "") -> None:
        """Ask the Trainer to end with `status` (one of STOP_REQUESTS).

        "stopped_early" and "pruned" end after the current epoch's bookkeeping; "interrupted"
        ends at the next batch boundary (the partial epoch is dropped: last.npz holds the
        previous one). Safe to call from a signal handler: it only sets two attributes.
        """
        if status not in STOP_REQUESTS:
            raise ValueError(f"request_stop: status must be one of {', '.join(STOP_REQUESTS)}, got {status!r}")
        t = self._trainer
        # an interrupt wins over a clean end asked for earlier; otherwise the first request stands
        if t.stop_status is None or status == "interrupted":
            t.stop_status, t.stop_message = status, message


class Callback:
    """Training events, every method optional. Called in the order of the Trainer's list."""

    def on_train_begin(self, state: TrainState) -> None: ...
    def on_epoch_begin(self, state: TrainState) -> None: ...
    def on_batch_end(self, state: TrainState, batch: int, loss: float) -> None: ...
    def on_epoch_end(self, state: TrainState, record: dict[str, Any], improved: bool) -> None: ...
    def on_train_end(self, state: TrainState, result: "Result") -> None: ...
