"""Per-epoch metrics: streaming accumulators for loss, accuracy, MAE and R², and split evaluation."""
from __future__ import annotations

import numpy as np

from nnctl.engine.metrics import GENERATIVE_TASKS, r2_from_sums


def loss_targets(task: str, xb: np.ndarray, yb: np.ndarray | None) -> np.ndarray | None:
    """What the loss compares the outputs with: the labels, or for an autoencoder/VAE the
    (scaled) input batch itself, flattened to (b, D) like the reconstruction."""
    return xb.reshape(len(xb), -1) if task in GENERATIVE_TASKS else yb


def predicted_classes(z: np.ndarray) -> np.ndarray:
    """Class indices from raw outputs: argmax of logits, or z > 0 for a single logit (binary)."""
    if z.ndim == 2 and z.shape[1] == 1:
        return (z[:, 0] > 0).astype(np.int64)
    if z.ndim == 1:
        return (z > 0).astype(np.int64)
    return np.argmax(z, axis=1)


def target_classes(y: np.ndarray) -> np.ndarray:
    """Class indices of targets: int labels as they are; soft targets (mixup, cutmix) by their
    dominant label: argmax of a probability matrix (N, K), or p > 0.5 for binary probabilities (N,)."""
    if y.dtype.kind in "iub":
        return y
    if y.ndim == 2 and y.shape[1] > 1:
        return np.argmax(y, axis=1)
    return (y.reshape(len(y)) > 0.5).astype(np.int64)


class MetricAccumulator:
    """Accumulates batch results in float64 so epoch metrics don't depend on batch order noise.

    Classification logs loss and accuracy (against the dominant label of soft targets);
    regression logs loss, mae and r2 (R² averaged uniformly over outputs, like scikit-learn's
    r2_score).

    target_scale: (k,) scale of a standardized regression target. z and y are then in
    scaled units; mae is reported in the target's own units (errors times the scale; R²
    does not change under the affine map). The loss stays what the optimizer minimizes.
    """

    def __init__(self, task: str, target_scale: np.ndarray | None = None):
        self.task = task
        # an autoencoder/VAE logs the terms of its loss (Loss.loss_and_parts): reconstruction, kl
        self.generative = task in GENERATIVE_TASKS
        self.part_sums: dict[str, float] = {}
        self.target_scale = None if target_scale is None else np.asarray(target_scale, dtype=np.float64)
        self.n = 0
        self.loss_sum = 0.0
        self.correct = 0
        self.abs_sum = 0.0
        self.sq_err: np.ndarray | None = None
        self.y_sum: np.ndarray | None = None
        self.y_sq: np.ndarray | None = None

    def update(self, loss: float, z: np.ndarray, y: np.ndarray, parts: dict[str, float] | None = None) -> None:
        """One batch: its mean loss, outputs z and targets y, and for an autoencoder/VAE the
        terms that loss was computed from (the second value of Loss.loss_and_parts)."""
        b = len(y)
        self.n += b
        self.loss_sum += float(loss) * b
        if self.task == "classification":
            self.correct += int(np.count_nonzero(predicted_classes(z) == target_classes(y)))
            return
        if self.generative:
            for name, v in parts.items():
                self.part_sums[name] = self.part_sums.get(name, 0.0) + float(v) * b
            return
        y2 = y.reshape(b, -1).astype(np.float64)
        z2 = z.reshape(b, -1).astype(np.float64)
        if self.target_scale is not None:
            y2, z2 = y2 * self.target_scale, z2 * self.target_scale
        err = z2 - y2
        self.abs_sum += float(np.abs(err).sum()) / y2.shape[1]
        if self.sq_err is None:
            k = y2.shape[1]
            self.sq_err, self.y_sum, self.y_sq = np.zeros(k), np.zeros(k), np.zeros(k)
        self.sq_err += (err * err).sum(axis=0)
        self.y_sum += y2.sum(axis=0)
        self.y_sq += (y2 * y2).sum(axis=0)

    def result(self, prefix: str = "") -> dict[str, float]:
        if self.n == 0:
            return {}
        out = {f"{prefix}loss": self.loss_sum / self.n}
        if self.task == "classification":
            out[f"{prefix}accuracy"] = self.correct / self.n
        elif self.generative:
            out.update({f"{prefix}{k}": v / self.n for k, v in self.part_sums.items()})
        else:
            out[f"{prefix}mae"] = self.abs_sum / self.n
            ss_tot = self.y_sq - self.y_sum ** 2 / self.n
            ss_res = self.sq_err
            out[f"{prefix}r2"] = float(np.mean(r2_from_sums(ss_res, ss_tot)))
        return out


def evaluate(model, loss, split, standardizer, batch_size: int, task: str, dtype, prefix: str = "",
             target_scale: np.ndarray | None = None) -> dict[str, float]:
    """Loss and task metrics of `model` (in evaluation mode) over one split."""
    from nnctl.data import iterate_batches
    acc = MetricAccumulator(task, target_scale)
    for xb, yb in iterate_batches(split, batch_size, None, dtype, standardizer):
        z = model.forward(xb, training=False)
        yb = loss_targets(task, xb, yb)
        value, parts = loss.value_and_parts(z, yb)
        acc.update(value, z, yb, parts)
    return acc.result(prefix)
