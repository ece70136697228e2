"""The run folder as a training callback: status, history, best/last checkpoints and metrics.

Write order per epoch: best.npz (when the best changed), last.npz (which carries the history
too), then history.json, a readable copy. A crash between two writes leaves history.json at most
one epoch behind last.npz, and a resume rewrites it from last.npz.

An epoch's three writes run in a background thread while the next epoch trains: on small, fast
epochs the fsynced writes cost more than the epoch itself (a 20-64-64-2 MLP on 1,500 rows: 6-33 ms
of writes against 5-10 ms of training). What they write is copied first, so it is exactly what a
synchronous write at the end of that epoch would hold, and resume stays bitwise. At most one
epoch's writes are in flight: the next epoch end, and the end of training, wait for them, and a
write's error is raised there, in the training thread, as if the write had been synchronous.
"""
from __future__ import annotations

import signal
import threading
from typing import Any, Callable

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


class _BackgroundWriter:
    """Runs one job at a time in its own thread; `submit` first waits for the job before it.

    Not a daemon thread: an interpreter exiting on an unexpected error still finishes the
    write in flight (each file is renamed into place whole, so nothing is ever torn).
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, job: Callable[[], None]) -> None:
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(job,), name="nnctl-checkpoint-writer")
        self._thread.start()

    def _run(self, job: Callable[[], None]) -> None:
        # Ctrl-C and SIGTERM are the training thread's to handle (it stops at a batch boundary,
        # then waits for this write). Blocked here, the kernel never hands them to this thread,
        # where CPython could only note them while the main thread sleeps in join().
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            job()
        except BaseException as err:  # handed to the training thread by wait()
            self._error = err

    def wait(self) -> None:
        """Block until the job in flight is done; raise its error, if it had one."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err


class RunRecorder:
    """Writes one run's folder (see runs/store.py for the layout) as training goes.

    A training callback (nnctl.training.callbacks.Callback) by its methods, not by inheritance:
    runs/ sits below training/ and imports nothing from it. The state it gets is a TrainState.
    """

    def __init__(self, run: RunDir):
        self.run = run
        self.saved_epoch: int | None = None   # the epoch last.npz holds, once this process knows
        self._best_written: dict | None = None
        self._writer = _BackgroundWriter()

    # -- checkpoints ---------------------------------------------------------------------
    def _arrays(self, state: Any, model_state: dict[str, np.ndarray], with_optimizer: bool) -> dict:
        arrays = {f"model/{k}": v for k, v in model_state.items()}
        if with_optimizer:
            arrays.update({f"optim/{k}": v for k, v in state.optimizer_arrays().items()})
        arrays.update(state.experiment.preprocessor.to_arrays())   # standardize/*, target/* (data layer)
        return arrays

    # Each returns a job that writes what the state holds now: the model's and the optimizer's
    # state_dict() are copies already, and so is the metadata (the history, the rng states):
    # to_meta() is dataclasses.asdict, which copies every dict and list it holds.
    def _last_job(self, state: Any, with_history: bool = False) -> Callable[[], None]:
        """last.npz's write; `with_history`: then history.json's, from the same copy of the history."""
        meta = CheckpointMeta(kind="last", **describe(state.experiment), **state.resume_state()).to_meta()
        arrays = self._arrays(state, state.model.state_dict(), True)
        epoch = state.epoch

        def job() -> None:
            save_checkpoint(self.run.last, meta, arrays)
            self.saved_epoch = epoch
            if with_history:
                self.run.write_history(meta["history"])
        return job

    def _best_job(self, state: Any) -> Callable[[], None]:
        best = state.best_state   # the trainer replaces this dict of copies; it never mutates it
        assert best is not None
        resume = {**state.resume_state(), "epoch": state.best_epoch or state.epoch,
                  "history": []}   # only last.npz carries the history
        meta = CheckpointMeta(kind="best", **describe(state.experiment), **resume).to_meta()
        arrays = self._arrays(state, best, False)
        self._best_written = best
        return lambda: save_checkpoint(self.run.best, meta, arrays)

    def save_last(self, state: Any) -> None:
        """Write last.npz now, in this thread (after any writes in flight)."""
        self._writer.wait()
        self._last_job(state)()

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
        self._writer.wait()   # the previous epoch's writes: their error surfaces here
        jobs = []
        if state.best_state is not None and state.best_state is not self._best_written:
            jobs.append(self._best_job(state))
        jobs.append(self._last_job(state, with_history=True))

        def epoch_writes() -> None:
            for job in jobs:
                job()
        self._writer.submit(epoch_writes)

    def on_train_end(self, state: Any, result) -> None:
        self._writer.wait()
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
