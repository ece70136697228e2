"""The run folder as a training callback: status, history, best/last checkpoints and metrics.

Write order per epoch: best.npz (when the best changed), last.npz (which carries the history
too), then history.json, a readable copy. A crash between two writes leaves history.json at most
one epoch behind last.npz, and a resume rewrites it from last.npz.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from nnctl import __version__
from nnctl.runs.checkpoint import save_checkpoint
from nnctl.runs.meta import CheckpointMeta
from nnctl.runs.store import RunDir


def describe(exp) -> dict[str, Any]:
    """What a checkpoint says about the model and data (CheckpointMeta's fields besides the
    resume state), so it can be used without the spec file."""
    data = exp.dataset
    return {
        "config": exp.spec.to_dict(),
        "model": {"layers": exp.layer_specs, "input_shape": list(data.input_shape), "dtype": exp.spec.training.dtype},
        "task": data.task,
        "classes": data.classes,
        "feature_names": data.feature_names,
        "target_name": data.target_name,
        "n_outputs": data.n_outputs,
        "loss": exp.loss_spec,
        "preprocess": exp.preprocessor.to_meta(),   # data layer: the CSV table encoding
    }


class RunRecorder:
    """Writes one run's folder (see runs/store.py for the layout) as training goes.

    A training callback (nnctl.training.callbacks.Callback) by its methods, not by inheritance:
    runs/ sits below training/ and imports nothing from it. The state it gets is a TrainState.
    """

    def __init__(self, run: RunDir):
        self.run = run
        self.saved_epoch: int | None = None   # the epoch last.npz holds, once this process knows
        self._best_written: dict | None = None

    # -- checkpoints ---------------------------------------------------------------------
    def _arrays(self, state: Any, model_state: dict[str, np.ndarray], with_optimizer: bool) -> dict:
        arrays = {f"model/{k}": v for k, v in model_state.items()}
        if with_optimizer:
            arrays.update({f"optim/{k}": v for k, v in state.optimizer_arrays().items()})
        arrays.update(state.experiment.preprocessor.to_arrays())   # standardize/*, target/* (data layer)
        return arrays

    def save_last(self, state: Any) -> None:
        meta = CheckpointMeta(kind="last", **describe(state.experiment), **state.resume_state()).to_meta()
        save_checkpoint(self.run.last, meta, self._arrays(state, state.model.state_dict(), True))
        self.saved_epoch = state.epoch

    def save_best(self, state: Any) -> None:
        best = state.best_state
        assert best is not None
        resume = {**state.resume_state(), "epoch": state.best_epoch or state.epoch,
                  "history": []}   # only last.npz carries the history
        meta = CheckpointMeta(kind="best", **describe(state.experiment), **resume).to_meta()
        save_checkpoint(self.run.best, meta, self._arrays(state, best, False))
        self._best_written = best

    # -- events --------------------------------------------------------------------------
    def on_train_begin(self, state: Any) -> None:
        self.run.set_status("running", epochs=state.epochs)
        if state.resumed:
            self.saved_epoch = state.epoch
            self._best_written = state.best_state      # read from best.npz: already on disk
            self.run.write_history(state.history)      # history.json may have been a write behind
        elif not self.run.last.exists():
            self.save_last(state)  # so even an interrupt during epoch 1 leaves a loadable checkpoint

    def on_epoch_begin(self, state: Any) -> None:
        pass

    def on_batch_end(self, state: Any, batch: int, loss: float) -> None:
        pass

    def on_epoch_end(self, state: Any, record: dict[str, Any], improved: bool) -> None:
        if state.best_state is not None and state.best_state is not self._best_written:
            self.save_best(state)
        self.save_last(state)
        self.run.write_history(state.history)

    def on_train_end(self, state: Any, result) -> None:
        if result.status in ("failed", "interrupted"):
            self._end_unclean(state, result)
            return
        best_record = next((r for r in state.history if r["epoch"] == result.best_epoch), None)
        self.run.write_metrics({
            "status": result.status,
            "epochs": result.epochs_run,
            "best_epoch": result.best_epoch,
            "monitor": result.monitor,
            "best_value": result.best_value,
            "best": {k: v for k, v in (best_record or {}).items() if k != "seconds"},
            "test": result.test_metrics,
            "weights": result.weights,
            "parameters": state.model.num_parameters(),
            "seconds": round(result.seconds, 3),
            "nnctl_version": __version__,
        })
        if state.stop_requested == "interrupted":
            # a signal while finishing: metrics.json may be written, but the run is not marked
            # done, so a resume finishes it (with nothing left to train)
            result.status, result.message = "interrupted", "interrupted while finishing"
            self._end_unclean(state, result)
            return
        self.run.set_status(result.status, epochs_done=result.epochs_run)

    def _end_unclean(self, state: Any, result) -> None:
        # What the run folder holds is what last.npz holds: an epoch whose writes were cut off
        # (an exception inside a callback) is not reported as done.
        if self.saved_epoch is not None and self.saved_epoch != result.epochs_run:
            result.epochs_run = self.saved_epoch
            try:
                self.run.write_history(state.history[:self.saved_epoch])
            except OSError:
                pass  # last.npz carries the history; a resume rewrites history.json from it
        self.run.set_status(result.status, error=result.message if result.status == "failed" else None,
                            epochs_done=result.epochs_run)
