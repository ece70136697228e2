"""Evaluation metrics from predictions (pure NumPy): confusion matrix, per-class report, top-k, regression errors.

The definitions follow scikit-learn's, so numbers can be checked against it:
precision/recall/F1 of a class with nothing to divide by are 0 (sklearn's
`zero_division=0`), macro averages run over the classes that occur in the targets or the
predictions, weighted averages weight each class by its support, and R² of several
outputs is their uniform average.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from nnctl.engine.metrics import r2_from_sums


def _as_labels(y: np.ndarray, n_classes: int, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{what} must be 1-D class indices, got shape {y.shape}")
    if y.dtype.kind not in "iub":
        raise ValueError(f"{what} must be integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64, copy=False)
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"{what} holds a class index outside 0..{n_classes - 1}")
    return y


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts of (true, predicted) class pairs.

    y_true, y_pred: int (N,) class indices in 0..n_classes-1.
    Returns int64 (n_classes, n_classes): row = true class, column = predicted class.
    """
    y_true = _as_labels(y_true, n_classes, "y_true")
    y_pred = _as_labels(y_pred, n_classes, "y_pred")
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} samples, y_pred {len(y_pred)}")
    flat = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes).astype(np.int64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, 0 where den is 0 (nothing predicted / no support)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den != 0)
    return out


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 (float64 (K,)) and support (int64 (K,)) of every class.

    cm: (K, K) confusion matrix, rows true, columns predicted.

    Notes
    -----
    With TP_c = cm[c, c], precision_c = TP_c / sum_r cm[r, c] (column),
    recall_c = TP_c / sum_j cm[c, j] (row = support_c), F1_c = 2 P R / (P + R);
    each is 0 when its denominator is.
    """
    cm = np.asarray(cm)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1).astype(np.int64)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    f1 = _ratio(2.0 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Accuracy, per-class scores, macro and weighted averages, and the confusion matrix.

    y_true, y_pred: int (N,) class indices in 0..n_classes-1.
    Returns plain Python values: {"n", "accuracy", "confusion_matrix" (K lists of K ints),
    "per_class": {"precision", "recall", "f1", "support"} (lists of K),
    "macro_avg" / "weighted_avg": {"precision", "recall", "f1", "support"}}.

    Notes
    -----
    Macro: the unweighted mean over the classes present in y_true or y_pred (a class the
    data never mentions says nothing about the model). Weighted: sum_c s_c m_c / sum_c s_c
    with s_c the support, so it equals recall-weighted accuracy for recall.
    """
    cm = confusion_matrix(y_true, y_pred, n_classes)
    scores = per_class_scores(cm)
    n = int(cm.sum())
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    support = scores["support"]
    macro: dict[str, Any] = {}
    weighted: dict[str, Any] = {}
    for key in ("precision", "recall", "f1"):
        values = scores[key]
        macro[key] = float(values[present].mean()) if present.any() else 0.0
        weighted[key] = float((values * support).sum() / n) if n else 0.0
    macro["support"] = weighted["support"] = n
    return {
        "n": n,
        "accuracy": float(np.trace(cm) / n) if n else 0.0,
        "confusion_matrix": cm.tolist(),
        "per_class": {k: v.tolist() for k, v in scores.items()},
        "macro_avg": macro,
        "weighted_avg": weighted,
    }


def top_k_hits(y_true: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Whether the true class is among the k highest scores: bool (N,).

    y_true: int (N,) class indices; scores: (N, K) logits or probabilities (any monotone
    transform gives the same answer).

    Notes
    -----
    A sample is a hit when fewer than k classes score strictly higher than its true class,
    so ties are resolved in the model's favour and the result does not depend on the
    order of the classes.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (N, K), got shape {scores.shape}")
    y_true = _as_labels(y_true, scores.shape[1], "y_true")
    if len(y_true) != len(scores):
        raise ValueError(f"y_true has {len(y_true)} samples, scores {len(scores)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    true_score = scores[np.arange(len(y_true)), y_true][:, None]
    return (scores > true_score).sum(axis=1) < k


def top_k_accuracy(y_true: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Fraction of samples whose true class is among the k highest scores (see top_k_hits)."""
    hits = top_k_hits(y_true, scores, k)
    return float(hits.mean()) if len(hits) else 0.0


def top_k_values(n_classes: int) -> list[int]:
    """The k worth reporting for K classes: 3 and 5, each only when k < K (top-K is always 1)."""
    return [k for k in (3, 5) if k < n_classes]


def regression_report(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """MSE, RMSE, MAE and R², overall and per output.

    y_true, y_pred: (N,) or (N, k) numbers (computed in float64).
    Returns {"n", "mse", "rmse", "mae", "r2", "per_output": {"mse", "rmse", "mae", "r2"}
    (lists of k)}; overall values are uniform averages over the k outputs.

    Notes
    -----
    Per output j: MSE_j = mean_i (p_ij - y_ij)^2, RMSE_j = sqrt(MSE_j),
    MAE_j = mean_i |p_ij - y_ij|, R²_j = 1 - sum_i (p_ij - y_ij)^2 / sum_i (y_ij - mean_i y_ij)^2.
    The overall RMSE is the mean of the RMSE_j (as sklearn), not sqrt of the overall MSE.
    """
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    t = t.reshape(len(t), -1)
    p = p.reshape(len(p), -1)
    if t.shape != p.shape:
        raise ValueError(f"y_true has shape {t.shape}, y_pred {p.shape}")
    n = len(t)
    if n == 0:
        raise ValueError("no samples")
    err = p - t
    mse = (err * err).mean(axis=0)
    mae = np.abs(err).mean(axis=0)
    rmse = np.sqrt(mse)
    ss_res = (err * err).sum(axis=0)
    ss_tot = ((t - t.mean(axis=0)) ** 2).sum(axis=0)
    r2 = r2_from_sums(ss_res, ss_tot)
    return {
        "n": n,
        "mse": float(mse.mean()),
        "rmse": float(rmse.mean()),
        "mae": float(mae.mean()),
        "r2": float(r2.mean()),
        "per_output": {"mse": mse.tolist(), "rmse": rmse.tolist(), "mae": mae.tolist(), "r2": r2.tolist()},
    }


def finite_json(value: Any) -> Any:
    """A metrics structure as strict JSON values: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value
