"""The metric vocabulary: which metrics a task logs, which way each is better, and R².

One declaration read by everything that ranks or validates metrics: spec validation,
early stopping's and reduce_on_plateau's "auto" mode, the sweep goal, `nnctl runs --sort`
and the colours of `nnctl diff`. Names may carry a split prefix (val_accuracy, test_r2).
"""
from __future__ import annotations

import numpy as np

# Every task nnctl trains. The generative ones reconstruct their input: the target of a batch
# is the batch itself (flattened), and labels, if any, are kept only to colour latent plots.
SUPERVISED_TASKS = ("classification", "regression")
GENERATIVE_TASKS = ("autoencoder", "vae")
TASKS = SUPERVISED_TASKS + GENERATIVE_TASKS

# base metric -> (direction, the tasks that log it). "max": higher is better.
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "loss": ("min", TASKS),
    "accuracy": ("max", ("classification",)),
    "mae": ("min", ("regression",)),
    "r2": ("max", ("regression",)),
    "reconstruction": ("min", GENERATIVE_TASKS),   # per-sample sum over features (engine/losses.py)
    "kl": ("min", ("vae",)),
    # reported by eval (not logged per epoch), ranked the same way
    "mse": ("min", ()),
    "rmse": ("min", ()),
    "f1": ("max", ()),
}

SPLIT_PREFIXES = ("val_", "test_")

# The headline metric of a task (the runs table's test column, show's sparklines).
MAIN_METRIC = {"classification": "accuracy", "regression": "r2", "autoencoder": "reconstruction",
               "vae": "reconstruction"}


def base_name(metric: str) -> str:
    """val_accuracy -> accuracy; test_loss -> loss; top_3_accuracy stays itself."""
    for prefix in SPLIT_PREFIXES:
        if metric.startswith(prefix):
            return metric[len(prefix):]
    return metric


def direction(metric: str) -> str | None:
    """'max' when higher is better, 'min' when lower is, None for a name we do not know."""
    base = base_name(metric)
    if base in METRICS:
        return METRICS[base][0]
    if base.endswith("accuracy"):  # top_3_accuracy, macro accuracy ...
        return "max"
    return None


def auto_mode(metric: str) -> str:
    """The "auto" mode of a monitor: its direction, 'min' for a name we do not know (like Keras)."""
    return direction(metric) or "min"


def metric_names(task: str | None, has_val: bool) -> list[str]:
    """Every metric the trainer logs for this task (task None: the union of the supervised ones), in log order."""
    wanted = SUPERVISED_TASKS if task is None else (task,)
    train = [m for m, (_, tasks) in METRICS.items() if any(t in tasks for t in wanted)]
    return train + ([f"val_{m}" for m in train] if has_val else [])


def r2_from_sums(ss_res: np.ndarray, ss_tot: np.ndarray) -> np.ndarray:
    """R² per output from the residual and total sums of squares (float64 arrays of equal shape).

    Notes
    -----
    R² = 1 - ss_res / ss_tot. A constant target (ss_tot == 0) has no variance to explain:
    R² is 1 for a perfect fit and 0 otherwise (scikit-learn's force_finite).
    """
    ss_res = np.asarray(ss_res, dtype=np.float64)
    ss_tot = np.asarray(ss_tot, dtype=np.float64)
    out = np.where(ss_res == 0, 1.0, 0.0)
    np.subtract(1.0, ss_res / np.where(ss_tot > 0, ss_tot, 1.0), out=out, where=ss_tot > 0)
    return out
