"""`nnctl eval`: score a checkpoint's model (rebuilt by nnctl.runs.model) on a split, a file or a dataset.

The data to score on is the run's own split (recreated from the stored config and seed, so
it is exactly the split training held out), a labelled file, or a built-in dataset.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnctl.data import DATASETS, Split, encode_labels, encode_targets, load_dataset, load_features
from nnctl.errors import DataError, NnctlError
from nnctl.report.metrics import (classification_report, finite_json, regression_report, top_k_hits,
                                  top_k_values)
from nnctl.runs.model import CLASSIFICATION, LoadedModel, default_batch_size, load_model
from nnctl.data import iterate_batches
from nnctl.engine.metrics import GENERATIVE_TASKS
from nnctl.training.metrics import MetricAccumulator, loss_targets, predicted_classes

SPLITS = ("test", "val", "train")


# ---------------------------------------------------------------------------- data

@dataclass
class EvalData:
    split: Split
    description: str
    split_name: str | None = None
    note: str | None = None   # e.g. how many categories the training split never had


def run_split(lm: LoadedModel, which: str) -> EvalData:
    """The run's own train/val/test split, rebuilt from the stored config and seed."""
    from nnctl.config.spec import spec_from_dict

    if which not in SPLITS:
        raise NnctlError(f"--split must be one of {', '.join(SPLITS)}, got {which!r}")
    spec = spec_from_dict(lm.meta["config"], filename=f"{lm.path} (stored config)")
    # the targets in the units the model was trained on (older checkpoints: not scaled)
    data = {**spec.data, "standardize_target": lm.preprocessor.target_scale is not None}
    dataset = load_dataset(data, spec.seed, spec.base_dir, lm.dtype, unlabelled_ok=lm.task in GENERATIVE_TASKS)
    if tuple(dataset.input_shape) != lm.input_shape:
        raise DataError(f"{dataset.source}: samples have shape {list(dataset.input_shape)}, "
                        f"the model in {lm.path.name} expects {list(lm.input_shape)}; has the data changed?")
    split = getattr(dataset, which)
    if split is None or len(split) == 0:
        raise DataError(f"{lm.path}: the run has no {which} split (data.{which}_split is 0); "
                        f"use --split {'val' if which == 'test' else 'train'} or --data FILE")
    split = _align_classes(lm, dataset.classes, split, dataset.source)
    return EvalData(split, f"the {which} split of {dataset.source}", which)


def _align_classes(lm: LoadedModel, classes: list | None, split: Split, source: str) -> Split:
    """Re-index a dataset's class indices onto the checkpoint's class list (usually identical)."""
    if lm.task != CLASSIFICATION or classes == lm.classes:
        return split
    mapping = encode_labels(np.asarray(classes), lm.classes, source)
    return Split(split.x, mapping[split.y], split.idx)


def data_source(lm: LoadedModel, value: str, need_targets: bool) -> EvalData:
    """`--data`: a .csv/.npz/.npy file (features matched to the model's) or a built-in dataset name."""
    path = Path(value)
    if not path.exists() and value in DATASETS:
        return _builtin(lm, value)
    if not path.suffix and not path.exists():
        from nnctl.hparams import unknown_name_message
        raise DataError(f"--data: {unknown_name_message('dataset', value, DATASETS.names())} "
                        "(or give a .csv, .npy or .npz file)")
    notes: list[str] = []
    x, raw_y = load_features(path, lm.feature_names, lm.input_shape, lm.target_name,
                             table=lm.preprocessor.table, dtype=lm.dtype, notes=notes)
    y = None
    if lm.task in GENERATIVE_TASKS:
        pass   # an autoencoder's target is its input; a label column is not needed
    elif raw_y is not None:
        y = encode_targets(raw_y, lm.task, lm.classes, path.name)
        if lm.task != CLASSIFICATION and y.shape[1] != lm.n_outputs:
            raise DataError(f"{path.name}: {y.shape[1]} target columns, the model predicts {lm.n_outputs}")
        if lm.task != CLASSIFICATION:
            y = lm.preprocessor.scale_targets(y)
    elif need_targets:
        if path.suffix.lower() == ".npy":
            raise DataError(f"{path.name}: a .npy file holds features only; to evaluate, give an .npz "
                            "with 'x' and 'y' or a CSV with the target column")
        if path.suffix.lower() == ".npz":
            raise DataError(f"{path.name}: no array 'y' with the targets to evaluate against")
        raise DataError(f"{path.name}: no target column '{lm.target_name or 'label'}' to evaluate against "
                        "(nnctl predict needs none)")
    return EvalData(Split(x, y, None), str(path), note="; ".join(notes) or None)


def _builtin(lm: LoadedModel, name: str) -> EvalData:
    """Every row of a built-in dataset; with the run's own options when it was trained on it."""
    config = lm.meta["config"]
    trained = config.get("data", {}) if isinstance(config.get("data"), dict) else {}
    same = (isinstance(trained.get("dataset"), str)
            and DATASETS.canonical(trained["dataset"]) == DATASETS.canonical(name))
    generative = lm.task in GENERATIVE_TASKS   # labels, if any, are only carried along
    data = {"dataset": name, "val_split": 0.0, "test_split": 0.0, "task": None if generative else lm.task,
            "options": trained.get("options") or {} if same else {},
            "shape": trained.get("shape") if same else None,
            "standardize_target": False}
    seed = config.get("seed", 0) if isinstance(config.get("seed"), int) else 0
    dataset = load_dataset(data, seed, Path("."), lm.dtype)
    if tuple(dataset.input_shape) != lm.input_shape:
        raise DataError(f"--data {name}: samples have shape {list(dataset.input_shape)}, "
                        f"the model expects {list(lm.input_shape)}")
    if generative:
        return EvalData(dataset.train, f"all of {dataset.source}")
    if lm.task != CLASSIFICATION and dataset.n_outputs != lm.n_outputs:
        raise DataError(f"--data {name}: {dataset.n_outputs} targets, the model predicts {lm.n_outputs}")
    split = dataset.train
    if lm.task != CLASSIFICATION:   # in the units the model was trained on
        split = Split(split.x, lm.preprocessor.scale_targets(split.y), split.idx)
    return EvalData(_align_classes(lm, dataset.classes, split, dataset.source), f"all of {dataset.source}")


# ---------------------------------------------------------------------------- scoring

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
    acc = MetricAccumulator(lm.task, None, lm.loss)
    sq, count = 0.0, 0
    for xb, _ in iterate_batches(split, batch_size, None, lm.dtype, lm.standardizer):
        z = lm.model.forward(xb, training=False)
        target = loss_targets(lm.task, xb, None)
        acc.update(lm.loss.value(z, target), z, target)
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


def unscale_inputs(lm: LoadedModel, flat: np.ndarray) -> np.ndarray:
    """Flattened scaled inputs or reconstructions (N, D) back in the data's units."""
    if lm.standardizer is None:
        return flat
    return flat * lm.standardizer.scale.reshape(-1) + lm.standardizer.mean.reshape(-1)


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
