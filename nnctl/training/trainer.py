"""The training loop: epochs of shuffled mini-batches, metrics, early stopping, resume.

The trainer prints nothing and touches no files. It emits events to a list of callbacks
(nnctl/training/callbacks.py) in order: early stopping, the run folder (runs/recorder.py),
progress, loggers and pruning are all callbacks. A stop is a request (`TrainState.request_stop`),
honoured at the next batch boundary ("interrupted") or after the epoch's bookkeeping
("stopped_early", "pruned"), so no event is ever cut off half-way by a signal.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nnctl.data import iterate_batches
from nnctl.errors import CheckpointError, TrainingError, quoted
from nnctl.status import CLEAN_ENDS
from nnctl.training.callbacks import Callback, TrainState
from nnctl.training.early_stopping import EarlyStopping
from nnctl.training.experiment import Experiment
from nnctl.training.metrics import MetricAccumulator, evaluate, loss_targets


class _Interrupted(Exception):
    """Raised inside the loop at a batch boundary once an interrupt was requested."""


@dataclass
class Result:
    status: str                         # completed | stopped_early | pruned | failed | interrupted
    epochs_run: int
    best_epoch: int | None
    best_value: float | None
    monitor: str
    test_metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    message: str = ""
    weights: str = "best"               # which weights the model holds at the end: best | last


class Trainer:
    """Runs an Experiment, telling `callbacks` (in order) what happens. `fit()` returns a Result."""

    def __init__(self, exp: Experiment, callbacks: list[Callback] | None = None):
        self.exp = exp
        spec = exp.spec
        has_val = exp.dataset.val is not None and len(exp.dataset.val) > 0
        es = spec.training.early_stopping
        if es is not None:
            self.stopper = EarlyStopping(es.monitor, es.mode, es.patience, es.min_delta, es.start_from_epoch)
            self.restore_best = es.restore_best
        else:
            # No early stopping asked for: still keep the best weights, by the validation loss.
            self.stopper = EarlyStopping("val_loss" if has_val else "loss", "min", None)
            self.restore_best = True
        # the stopper decides "improved" for everyone, so it hears every epoch first
        self.callbacks: list[Callback] = [self.stopper, *(callbacks or [])]
        self.state = TrainState(self)
        self.has_val = has_val
        self.epoch = 0          # completed epochs
        self.step = 0           # completed batches
        self.history: list[dict[str, Any]] = []
        self.best_state: dict[str, np.ndarray] | None = None
        self.resumed = False
        self.stop_status: str | None = None
        self.stop_message = ""
        self.started = time.time()
        self.elapsed_before = 0.0

    # -- resume state --------------------------------------------------------------------
    def resume_state(self) -> dict[str, Any]:
        """Everything besides the arrays that a resume needs to continue exactly."""
        exp = self.exp
        return {
            "epoch": self.epoch,
            "step": self.step,
            "optimizer": {"name": exp.spec.optimizer["name"], "state": exp.optimizer.state_dict()["scalars"]},
            "schedule": exp.schedule.state_dict(),
            "early_stopping": self.stopper.state_dict(),
            "rng": {"model": exp.model.rng.bit_generator.state},
            "history": self.history,
            "elapsed": self.elapsed_before + (time.time() - self.started),
        }

    def restore(self, ckpt: Any, best: Any | None) -> None:
        """Continue exactly where `ckpt` (a last checkpoint) left off; `best` holds the best weights.

        Both are checkpoints as `runs.checkpoint.load_checkpoint` returns them (meta, arrays,
        path). Everything is checked here, before any callback writes anything; every error
        names the file it is about.
        """
        meta = ckpt.meta
        problem = _resume_fields_problem(meta)
        if problem:
            raise CheckpointError(f"{ckpt.path}: cannot resume from this checkpoint ({problem})")
        try:
            self.exp.model.load_state_dict(ckpt.model_state)
            self.exp.optimizer.load_state_dict({"scalars": meta["optimizer"]["state"], "arrays": ckpt.group("optim")},
                                              params=self.exp.model.named_parameters())
            self.exp.schedule.load_state_dict(meta["schedule"])
            self.stopper.load_state_dict(meta["early_stopping"])
            self.exp.model.rng.bit_generator.state = meta["rng"]["model"]
            self.epoch, self.step = int(meta["epoch"]), int(meta["step"])
            self.elapsed_before = float(meta.get("elapsed", 0.0))
        except CheckpointError as err:
            # the engine's loaders say what does not fit; which file it is in, only we know
            raise CheckpointError(f"{ckpt.path}: {err}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise CheckpointError(f"{ckpt.path}: cannot resume from this checkpoint ({type(err).__name__}: {err})") from None
        history = meta.get("history")
        # each epoch exactly once, in order: a resumed run appends epoch+1 next
        if (not isinstance(history, list) or len(history) != self.epoch
                or [r.get("epoch") if isinstance(r, dict) else None for r in history] != list(range(1, self.epoch + 1))):
            raise CheckpointError(f"{ckpt.path}: history in the checkpoint is not the records of epochs "
                                  f"1..{self.epoch}")
        self.history = history
        if best is not None:
            problem = _weights_problem(self.exp.model.state_dict(), best.model_state)
            if problem:
                raise CheckpointError(f"{best.path}: does not fit the model of {ckpt.path} ({problem})")
            self.best_state = {k: v.copy() for k, v in best.model_state.items()}
        self.resumed = True

    # -- the loop ------------------------------------------------------------------------
    def _check_interrupt(self) -> None:
        if self.stop_status == "interrupted":
            raise _Interrupted

    def _train_epoch(self, epoch_index: int) -> dict[str, float]:
        exp = self.exp
        model, loss, opt, sched = exp.model, exp.loss, exp.optimizer, exp.schedule
        params, grads = model.named_parameters(), model.named_grads()
        acc = MetricAccumulator(exp.dataset.task, exp.target_scale)
        # A fresh Generator per epoch from (seed, epoch): the shuffle order needs no saved state,
        # so a resumed run sees exactly the batches the uninterrupted run saw.
        rng = np.random.default_rng([exp.spec.seed, 1, epoch_index]) if exp.spec.training.shuffle else None
        batches = iterate_batches(exp.dataset.train, exp.spec.training.batch_size, rng, exp.dtype, exp.standardizer,
                                  augment=exp.augmenter.for_epoch(exp.spec.seed, epoch_index))
        lr = opt.lr
        for b, (xb, yb) in enumerate(batches):
            lr = sched.lr_at(epoch_index, self.step)
            opt.lr = lr
            z = model.forward(xb, training=True)
            yb = loss_targets(exp.dataset.task, xb, yb)
            value, dz, parts = loss.loss_and_parts(z, yb)   # parts: an autoencoder's logged terms
            if not math.isfinite(value):
                raise TrainingError(f"loss is {value} at epoch {epoch_index + 1}, step {b + 1} "
                                    f"(global step {self.step + 1}); try a lower optimizer.lr or clip_norm")
            acc.update(value, z, yb, parts)
            model.backward(dz)
            opt.step(params, grads)
            self.step += 1
            for cb in self.callbacks:
                cb.on_batch_end(self.state, b + 1, value)
            self._check_interrupt()
        logs = acc.result()
        logs["lr"] = lr
        return logs

    def fit(self) -> Result:
        exp, spec = self.exp, self.exp.spec
        epochs = spec.training.epochs
        self.started = time.time()
        status, message = "completed", ""
        try:
            for cb in self.callbacks:
                cb.on_train_begin(self.state)
            # a run resumed after early stopping fired has nothing left to train
            if self.stopper.stopped_epoch is not None:
                self.state.request_stop("stopped_early")
            while self.epoch < epochs and self.stop_status is None:
                t0 = time.perf_counter()
                for cb in self.callbacks:
                    cb.on_epoch_begin(self.state)
                # Overflow is caught as a non-finite loss with a clear message; numpy's own
                # RuntimeWarnings would only add noise in front of it.
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                    logs = self._train_epoch(self.epoch)
                    if self.has_val:
                        logs.update(evaluate(exp.model, exp.loss, exp.dataset.val, exp.standardizer,
                                             spec.training.eval_batch_size, exp.dataset.task, exp.dtype,
                                             prefix="val_", target_scale=exp.target_scale))
                self._check_interrupt()
                self.epoch += 1
                record = {"epoch": self.epoch, "lr": logs.pop("lr"), **logs,
                          "seconds": round(time.perf_counter() - t0, 4)}
                exp.schedule.observe(self.epoch - 1, logs)
                improved, _ = self.stopper.update(self.epoch, logs)
                self.history.append(record)
                if improved or self.best_state is None:
                    self.best_state = exp.model.state_dict()
                for cb in self.callbacks:
                    cb.on_epoch_end(self.state, record, improved)
            self._check_interrupt()
            if self.stop_status is not None:
                status, message = self.stop_status, self.stop_message
        except TrainingError as err:
            status, message = "failed", str(err)
        except (_Interrupted, KeyboardInterrupt):
            status, message = "interrupted", self.stop_message or "interrupted by the user"
        result = self._finish(status, message)
        for cb in self.callbacks:
            cb.on_train_end(self.state, result)
        return result

    def _finish(self, status: str, message: str) -> Result:
        exp, spec = self.exp, self.exp.spec
        seconds = self.elapsed_before + (time.time() - self.started)
        result = Result(status=status, epochs_run=self.epoch, best_epoch=self.stopper.best_epoch,
                        best_value=self.stopper.best, monitor=self.stopper.monitor, seconds=seconds,
                        message=message, weights="best" if self.restore_best else "last")
        if status not in CLEAN_ENDS:
            return result
        if self.restore_best and self.best_state is not None:
            exp.model.load_state_dict(self.best_state)
        test = exp.dataset.test
        if test is not None and len(test) > 0:
            result.test_metrics = evaluate(exp.model, exp.loss, test, exp.standardizer,
                                           spec.training.eval_batch_size, exp.dataset.task, exp.dtype, prefix="test_",
                                           target_scale=exp.target_scale)
        if self.stop_status == "interrupted":  # a signal during the test evaluation
            result.status, result.message = "interrupted", self.stop_message
        return result


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _resume_fields_problem(meta: dict[str, Any]) -> str | None:
    """Why the scalar resume state of a last.npz cannot be used, or None.

    The loaders of the engine's state check their own parts; these are the ones that would
    otherwise be taken as they are and only fail (or silently mislead) epochs later.
    """
    for key in ("epoch", "step"):
        if not _count(meta.get(key)):
            return f"{key} must be a non-negative integer, got {quoted(meta.get(key))}"
    es = meta.get("early_stopping")
    if not isinstance(es, dict):
        return f"early_stopping state must be a mapping, got {type(es).__name__}"
    best = es.get("best")
    if best is not None and (isinstance(best, bool) or not isinstance(best, (int, float))):
        return f"early_stopping.best must be a number or null, got {quoted(best)}"
    for key in ("best_epoch", "stopped_epoch"):
        if es.get(key) is not None and not _count(es[key]):
            return f"early_stopping.{key} must be an epoch number or null, got {quoted(es[key])}"
    if not _count(es.get("wait", 0)):
        return f"early_stopping.wait must be a non-negative integer, got {quoted(es.get('wait'))}"
    return None


def _weights_problem(expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> str | None:
    """Why `got` cannot be loaded into a model whose state is `expected`, or None."""
    missing = sorted(set(expected) - set(got))
    if missing:
        return f"missing {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
    extra = sorted(set(got) - set(expected))
    if extra:
        return f"unexpected {extra[0]}" + (f" and {len(extra) - 1} more" if len(extra) > 1 else "")
    for name, value in expected.items():
        if got[name].shape != value.shape:
            return f"{name} has shape {got[name].shape}, the model needs {value.shape}"
    return None
