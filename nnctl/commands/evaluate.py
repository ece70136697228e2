"""`nnctl eval`: score a checkpoint's model (rebuilt by nnctl.runs.model) on a split, a file or a dataset.

What to score on (the run's own split, a labelled file, a built-in dataset) is chosen by
nnctl.runs.sources; this module does the scoring.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nnctl.data import Split, iterate_batches
from nnctl.engine.metrics import GENERATIVE_TASKS
from nnctl.errors import DataError
from nnctl.report.metrics import (classification_report, finite_json, regression_report, top_k_hits,
                                  top_k_values)
from nnctl.runs.generative import unscale_inputs
from nnctl.runs.model import CLASSIFICATION, LoadedModel, default_batch_size, load_model
from nnctl.runs.sources import data_source, run_split
from nnctl.training.metrics import MetricAccumulator, loss_targets, predicted_classes


def evaluate_model(lm: LoadedModel, split: Split, batch_size: int) -> dict[str, Any]:
    """Loss and metrics of the model over a labelled split.

    loss, accuracy, mae and r2 come from the trainer's own MetricAccumulator over batches
    of the same size, so on the run's test split they equal metrics.json bit for bit; the
    rest (per-class scores, confusion matrix, top-k, MSE/RMSE) from nnctl.report.metrics.
    """
    if len(split) == 0:
        raise DataError("no rows to evaluate")
    if lm.task in GENERATIVE_TASKS:
        return reconstruction_scores(lm, split, batch_size)
    if split.y is None:
        raise DataError("no targets to evaluate against")
    acc = MetricAccumulator(lm.task, lm.preprocessor.target_scale)
    classification = lm.task == CLASSIFICATION
    ks = top_k_values(lm.n_outputs) if classification else []
    hits = {k: 0 for k in ks}
    preds: list[np.ndarray] = []
    trues: list[np.ndarray] = []
    for z, yb in lm.batches(split, batch_size):
        acc.update(lm.loss.value(z, yb), z, yb)
        # yb is a view of a reused buffer; regression values back in the target's units
        trues.append(np.array(yb, copy=True) if classification else lm.preprocessor.unscale(yb))
        if classification:
            preds.append(predicted_classes(z).astype(np.int64))
            for k in ks:
                hits[k] += int(top_k_hits(yb, z, k).sum())
        else:
            preds.append(lm.preprocessor.unscale(z))
    head = acc.result()
    y_true, y_pred = np.concatenate(trues), np.concatenate(preds)
    n = len(y_true)
    out: dict[str, Any] = {"task": lm.task, "n": n, "loss": head["loss"], "loss_name": lm.loss_name}
    if lm.preprocessor.target_scale is not None:
        # the loss is what training minimized, on (y - mean) / std; mse, rmse, mae are in y's units
        out["loss_units"] = "standardized target"
    if classification:
        rep = classification_report(y_true, y_pred, lm.n_outputs)
        out["accuracy"] = head["accuracy"]
        for k in ks:
            out[f"top_{k}_accuracy"] = hits[k] / n
        out["classes"] = list(lm.classes)
        per = rep["per_class"]
        out["per_class"] = [{"label": label, "precision": per["precision"][c], "recall": per["recall"][c],
                             "f1": per["f1"][c], "support": per["support"][c]}
                            for c, label in enumerate(lm.classes)]
        out["macro_avg"] = rep["macro_avg"]
        out["weighted_avg"] = rep["weighted_avg"]
        out["confusion_matrix"] = rep["confusion_matrix"]
    else:
        rep = regression_report(y_true, y_pred)
        out.update(mse=rep["mse"], rmse=rep["rmse"], mae=head["mae"], r2=head["r2"])
        out["outputs"] = lm.output_names()
        if lm.n_outputs > 1:
            out["per_output"] = rep["per_output"]
    return out


def reconstruction_scores(lm: LoadedModel, split: Split, batch_size: int) -> dict[str, Any]:
    """An autoencoder's or VAE's scores: the logged loss terms (the trainer's accumulator, so the
    run's test split gives metrics.json's numbers), the ELBO, and the MSE in the data's units."""
    acc = MetricAccumulator(lm.task)
    sq, count = 0.0, 0
    for xb, _ in iterate_batches(split, batch_size, None, lm.dtype, lm.standardizer):
        z = lm.model.forward(xb, training=False)
        target = loss_targets(lm.task, xb, None)
        value, parts = lm.loss.value_and_parts(z, target)
        acc.update(value, z, target, parts)
        recon = lm.loss.output(z[:, :target.shape[1]]).astype(np.float64)
        err = unscale_inputs(lm, recon) - unscale_inputs(lm, target.astype(np.float64))
        sq += float((err * err).sum())
        count += err.size
    head = acc.result()
    out: dict[str, Any] = {"task": lm.task, "n": len(split), "loss": head["loss"], "loss_name": lm.loss_name,
                           "reconstruction": head["reconstruction"]}
    if "kl" in head:
        out["kl"] = head["kl"]
        # the bound itself at beta = 1 (nats per sample under binary_cross_entropy)
        out["elbo"] = -(head["reconstruction"] + head["kl"])
    out["mse"] = sq / max(count, 1)
    return out


def run_eval(target: Path, data: str | None, split: str, batch_size: int | None) -> dict[str, Any]:
    """The whole of `nnctl eval` but the rendering: a JSON-able result."""
    lm = load_model(target)
    source = run_split(lm, split) if data is None else data_source(lm, data, need_targets=lm.task not in GENERATIVE_TASKS)
    result = evaluate_model(lm, source.split, batch_size or default_batch_size(lm))
    head = {"checkpoint": str(lm.path), "epoch": lm.epoch, "data": source.description,
            "split": source.split_name}
    if source.note:
        head["note"] = source.note
    return finite_json({**head, **result})
