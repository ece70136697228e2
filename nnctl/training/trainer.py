"""The training loop: epochs of shuffled mini-batches, metrics, early stopping, checkpoints, resume.

The trainer prints nothing. It reports through a listener (`on_epoch_begin`,
`on_batch_end`, `on_epoch_end`, ...) and writes the run directory through `RunDir`, so the
CLI decides how progress looks.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nnctl import __version__
from nnctl.data import iterate_batches
from nnctl.errors import CheckpointError, TrainingError
from nnctl.runs.checkpoint import Checkpoint, save_checkpoint
from nnctl.runs.store import RunDir
from nnctl.training.early_stopping import EarlyStopping
from nnctl.training.experiment import Experiment
from nnctl.training.metrics import MetricAccumulator, evaluate


class Listener:
    """Progress events; every method is optional to override."""

    def on_train_begin(self, trainer: "Trainer") -> None: ...
    def on_epoch_begin(self, epoch: int, epochs: int, steps: int) -> None: ...
    def on_batch_end(self, epoch: int, batch: int, loss: float) -> None: ...
    def on_epoch_end(self, record: dict[str, Any], improved: bool) -> None: ...
    def on_train_end(self, result: "Result") -> None: ...


@dataclass
class Result:
    status: str                         # completed | stopped_early | failed | interrupted
    epochs_run: int
    best_epoch: int | None
    best_value: float | None
    monitor: str
    test_metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    message: str = ""


class Trainer:
    """Runs an Experiment into a RunDir. `fit()` returns a Result; it never prints."""

    def __init__(self, exp: Experiment, run: RunDir, listener: Listener | None = None):
        self.exp = exp
        self.run = run
        self.listener = listener or Listener()
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
        self.has_val = has_val
        self.epoch = 0          # completed epochs
        self.saved_epoch = 0    # the epoch last.npz holds
        self.step = 0           # completed batches
        self.history: list[dict[str, Any]] = []
        self.best_state: dict[str, np.ndarray] | None = None
        self.started = time.time()
        self.elapsed_before = 0.0

    # -- checkpoint state ----------------------------------------------------------------
    def _meta(self, kind: str) -> dict[str, Any]:
        exp, data = self.exp, self.exp.dataset
        # runsui: the typed metadata shared with the readers (runs/meta.py, runs/model.py)
        from nnctl.runs.meta import CheckpointMeta
        return CheckpointMeta(
            kind=kind,
            epoch=self.epoch,
            step=self.step,
            config=exp.spec.to_dict(),
            model={"layers": exp.layer_specs, "input_shape": list(data.input_shape),
                   "dtype": exp.spec.training.dtype},
            task=data.task,
            classes=data.classes,
            feature_names=data.feature_names,
            target_name=data.target_name,
            n_outputs=data.n_outputs,
            preprocess=exp.preprocessor.to_meta(),  # CSV table encoding (data layer)
            loss=exp.loss_spec,
            optimizer={"name": exp.spec.optimizer["name"], "state": exp.optimizer.state_dict()["scalars"]},
            schedule=exp.schedule.state_dict(),
            early_stopping=self.stopper.state_dict(),
            rng={"model": exp.model.rng.bit_generator.state},
            # the history rides in last.npz, so checkpoint and history can never disagree on resume
            history=self.history if kind == "last" else [],
            elapsed=self.elapsed_before + (time.time() - self.started),
        ).to_meta()

    def _arrays(self, model_state: dict[str, np.ndarray], with_optimizer: bool) -> dict[str, np.ndarray]:
        arrays = {f"model/{k}": v for k, v in model_state.items()}
        if with_optimizer:
            arrays.update({f"optim/{k}": v for k, v in self.exp.optimizer.state_dict()["arrays"].items()})
        arrays.update(self.exp.preprocessor.to_arrays())  # standardize/*, target/* (data layer)
        return arrays

    def save_last(self) -> None:
        save_checkpoint(self.run.last, self._meta("last"), self._arrays(self.exp.model.state_dict(), True))
        self.saved_epoch = self.epoch

    def save_best(self) -> None:
        assert self.best_state is not None
        meta = self._meta("best")
        meta["epoch"] = self.stopper.best_epoch or self.epoch
        save_checkpoint(self.run.best, meta, self._arrays(self.best_state, False))

    def restore(self, ckpt: Checkpoint, best: Checkpoint | None) -> None:
        """Continue exactly where `ckpt` (a last.npz) left off."""
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
            self.saved_epoch = self.epoch
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
        self.run.write_history(self.history)  # history.json may have been a write behind
        if best is not None:
            self.best_state = {k: v.copy() for k, v in best.model_state.items()}

    # -- the loop ------------------------------------------------------------------------
    def _train_epoch(self, epoch_index: int) -> dict[str, float]:
        exp = self.exp
        model, loss, opt, sched = exp.model, exp.loss, exp.optimizer, exp.schedule
        params, grads = model.named_parameters(), model.named_grads()
        acc = MetricAccumulator(exp.dataset.task, exp.target_scale)
        # A fresh Generator per epoch from (seed, epoch): the shuffle order needs no saved state,
        # so a resumed run sees exactly the batches the uninterrupted run saw.
        rng = np.random.default_rng([exp.spec.seed, 1, epoch_index]) if exp.spec.training.shuffle else None
        batches = iterate_batches(exp.dataset.train, exp.spec.training.batch_size, rng, exp.dtype, exp.standardizer)
        lr = opt.lr
        for b, (xb, yb) in enumerate(batches):
            lr = sched.lr_at(epoch_index, self.step)
            opt.lr = lr
            z = model.forward(xb, training=True)
            value, dz = loss(z, yb)
            if not math.isfinite(value):
                raise TrainingError(f"loss is {value} at epoch {epoch_index + 1}, step {b + 1} "
                                    f"(global step {self.step + 1}); try a lower optimizer.lr or clip_norm")
            acc.update(value, z, yb)
            model.backward(dz)
            opt.step(params, grads)
            self.step += 1
            self.listener.on_batch_end(epoch_index + 1, b + 1, value)
        logs = acc.result()
        logs["lr"] = lr
        return logs

    def fit(self) -> Result:
        exp, spec = self.exp, self.exp.spec
        epochs = spec.training.epochs
        self.started = time.time()
        self.run.set_status("running", epochs=epochs)
        if self.epoch == 0 and not self.run.last.exists():
            self.save_last()  # so even an interrupt during epoch 1 leaves a loadable checkpoint
        self.listener.on_train_begin(self)
        status, message = "completed", ""
        try:
            while self.epoch < epochs:
                if self.stopper.stopped_epoch is not None:
                    status = "stopped_early"
                    break
                t0 = time.perf_counter()
                self.listener.on_epoch_begin(self.epoch + 1, epochs, exp.steps_per_epoch)
                # Overflow is caught as a non-finite loss with a clear message; numpy's own
                # RuntimeWarnings would only add noise in front of it.
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                    logs = self._train_epoch(self.epoch)
                    if self.has_val:
                        logs.update(evaluate(exp.model, exp.loss, exp.dataset.val, exp.standardizer,
                                             spec.training.eval_batch_size, exp.dataset.task, exp.dtype,
                                             prefix="val_", target_scale=exp.target_scale))
                self.epoch += 1
                record = {"epoch": self.epoch, "lr": logs.pop("lr"), **logs,
                          "seconds": round(time.perf_counter() - t0, 4)}
                exp.schedule.observe(self.epoch - 1, logs)
                improved, stop = self.stopper.update(self.epoch, logs)
                self.history.append(record)
                if improved or self.best_state is None:
                    self.best_state = exp.model.state_dict()
                    self.save_best()
                # last.npz carries the history too; history.json is a readable copy of it.
                self.save_last()
                self.run.write_history(self.history)
                self.listener.on_epoch_end(record, improved)
                if stop:
                    status = "stopped_early"
                    break
        except TrainingError as err:
            status, message = "failed", str(err)
        except KeyboardInterrupt:
            status, message = "interrupted", "interrupted by the user"
            self._back_to_last_checkpoint()
        result = self._finish(status, message)
        self.listener.on_train_end(result)
        return result

    def _back_to_last_checkpoint(self) -> None:
        """After an interrupt inside an epoch's writes, report (and list) what last.npz holds.

        An interrupt between appending epoch e+1 to the history and saving it (or between
        saving last.npz and history.json) would otherwise leave the status, the message and
        history.json one epoch apart from the checkpoint a resume starts from.
        """
        if self.saved_epoch != self.epoch or len(self.history) != self.saved_epoch:
            self.epoch = self.saved_epoch
            self.history = self.history[:self.saved_epoch]
        try:
            self.run.write_history(self.history)
        except OSError:
            pass  # last.npz carries the history; resume rewrites history.json from it

    def _finish(self, status: str, message: str) -> Result:
        exp, spec = self.exp, self.exp.spec
        seconds = self.elapsed_before + (time.time() - self.started)
        result = Result(status=status, epochs_run=self.epoch, best_epoch=self.stopper.best_epoch,
                        best_value=self.stopper.best, monitor=self.stopper.monitor, seconds=seconds,
                        message=message)
        if status in ("failed", "interrupted"):
            self.run.set_status(status, error=message if status == "failed" else None, epochs_done=self.epoch)
            return result
        if self.restore_best and self.best_state is not None:
            exp.model.load_state_dict(self.best_state)
        test = exp.dataset.test
        if test is not None and len(test) > 0:
            result.test_metrics = evaluate(exp.model, exp.loss, test, exp.standardizer,
                                           spec.training.eval_batch_size, exp.dataset.task, exp.dtype, prefix="test_",
                                           target_scale=exp.target_scale)
        best_record = next((r for r in self.history if r["epoch"] == result.best_epoch), None)
        metrics = {
            "status": status,
            "epochs": self.epoch,
            "best_epoch": result.best_epoch,
            "monitor": result.monitor,
            "best_value": result.best_value,
            "best": {k: v for k, v in (best_record or {}).items() if k not in ("seconds",)},
            "test": result.test_metrics,
            "weights": "best" if self.restore_best else "last",
            "parameters": exp.model.num_parameters(),
            "seconds": round(seconds, 3),
            "nnctl_version": __version__,
        }
        self.run.write_metrics(metrics)
        self.run.set_status(status, epochs_done=self.epoch)
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
            return f"{key} must be a non-negative integer, got {meta.get(key)!r}"
    es = meta.get("early_stopping")
    if not isinstance(es, dict):
        return f"early_stopping state must be a mapping, got {type(es).__name__}"
    best = es.get("best")
    if best is not None and (isinstance(best, bool) or not isinstance(best, (int, float))):
        return f"early_stopping.best must be a number or null, got {best!r}"
    for key in ("best_epoch", "stopped_epoch"):
        if es.get(key) is not None and not _count(es[key]):
            return f"early_stopping.{key} must be an epoch number or null, got {es[key]!r}"
    if not _count(es.get("wait", 0)):
        return f"early_stopping.wait must be a non-negative integer, got {es.get('wait')!r}"
    return None
