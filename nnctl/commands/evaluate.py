"""`nnctl eval`: rebuild a checkpoint's model from its own metadata and score it on a split, a file or a dataset.

Nothing outside the checkpoint is needed to rebuild the model: its layer specs, input
shape, dtype, loss, label list and standardization statistics are all stored in it. The
data to score on is the run's own split (recreated from the stored config and seed, so it
is exactly the split training held out), a labelled file, or a built-in dataset.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnctl.data import (DATASETS, Preprocessor, Split, Standardizer, encode_labels, encode_targets, iterate_batches,
                        load_dataset, load_features)
from nnctl.errors import CheckpointError, DataError, NnctlError
from nnctl.report.metrics import (classification_report, finite_json, regression_report, top_k_hits,
                                  top_k_values)
from nnctl.runs.checkpoint import Checkpoint, load_checkpoint, resolve_checkpoint_path
from nnctl.runs.store import read_json
from nnctl.training.metrics import MetricAccumulator, predicted_classes

SPLITS = ("test", "val", "train")
CLASSIFICATION = "classification"


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, with everything needed to feed it raw features.

    input_shape: per-sample shape, e.g. (64,). classes: the original labels, index = class.
    """

    path: Path
    meta: dict[str, Any]
    model: Any
    loss: Any
    standardizer: Standardizer | None
    dtype: np.dtype
    task: str
    classes: list | None
    feature_names: list[str] | None
    target_name: str | None
    n_outputs: int
    input_shape: tuple[int, ...]
    preprocessor: Preprocessor | None = None   # table encoding, target scale (data layer)

    def __post_init__(self):
        if self.preprocessor is None:
            self.preprocessor = Preprocessor(standardizer=self.standardizer)

    @property
    def epoch(self) -> int:
        return int(self.meta.get("epoch", 0))

    def batches(self, split: Split, batch_size: int):
        """(z, yb) per batch in row order: z the raw outputs (b, n_out), yb targets or None."""
        for xb, yb in iterate_batches(split, batch_size, None, self.dtype, self.standardizer):
            yield self.model.forward(xb, training=False), yb

    def probabilities(self, z: np.ndarray) -> np.ndarray:
        """Class probabilities (b, K) from raw outputs; a single logit (binary) becomes [1 - p, p]."""
        p = np.asarray(self.loss.output(z))
        if p.ndim == 1:
            p = p[:, None]
        if p.shape[1] == 1 and self.classes is not None and len(self.classes) == 2:
            p = np.concatenate([1.0 - p, p], axis=1)
        return p

    def output_names(self) -> list[str]:
        """Regression column names: the target's name for one output, else y0..y{k-1}."""
        if self.n_outputs == 1 and self.target_name:
            return [self.target_name]
        return [f"y{j}" for j in range(self.n_outputs)]


def checkpoint_for(target: Path) -> Path:
    """The checkpoint a path means: a file is itself; a run directory means the weights its
    test metrics were computed with (best.npz, or last.npz when metrics.json says weights: last)."""
    target = Path(target)
    if target.is_dir():
        if not (target / "checkpoints").is_dir():
            raise CheckpointError(f"{target}: not a run directory with checkpoints (no checkpoints/ folder)")
        metrics = read_json(target / "metrics.json") or {}
        which = "last" if isinstance(metrics, dict) and metrics.get("weights") == "last" else "best"
        return resolve_checkpoint_path(target, which)
    if not target.exists():
        raise CheckpointError(f"{target}: no such checkpoint or run directory")
    return target


def _field(path: Path, meta: dict[str, Any], key: str, kind: type, where: str | None = None):
    value = meta.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise CheckpointError(f"{path}: metadata field {where or key} is missing or not a {kind.__name__}")
    return value


def model_from_checkpoint(ckpt: Checkpoint) -> LoadedModel:
    """Rebuild and load the model; any mismatch between metadata and arrays is a CheckpointError."""
    from nnctl.engine.losses import LOSSES
    from nnctl.engine.model import Sequential

    path, meta = ckpt.path, ckpt.meta
    spec = meta["model"]
    layers = _field(path, spec, "layers", list, "model.layers")
    input_shape = _field(path, spec, "input_shape", list, "model.input_shape")
    if not input_shape or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in input_shape):
        raise CheckpointError(f"{path}: metadata field model.input_shape must be positive integers, "
                              f"got {input_shape!r}")
    dtype_name = spec.get("dtype", "float32")
    if dtype_name not in ("float32", "float64"):
        raise CheckpointError(f"{path}: metadata field model.dtype must be float32 or float64, got {dtype_name!r}")
    dtype = np.dtype(dtype_name)
    task = meta["task"]
    if task not in ("classification", "regression"):
        raise CheckpointError(f"{path}: metadata field task must be classification or regression, got {task!r}")
    n_outputs = _field(path, meta, "n_outputs", int)
    classes = None
    if task == CLASSIFICATION:
        classes = _field(path, meta, "classes", list)
        if len(classes) != n_outputs:
            raise CheckpointError(f"{path}: metadata lists {len(classes)} classes but n_outputs is {n_outputs}")
        if len(classes) < 2:   # e.g. trained before a single-class target was refused
            raise CheckpointError(f"{path}: a classification model needs at least two classes, this one has "
                                  f"{len(classes)} ({', '.join(map(repr, classes))})")
    if classes is not None and not all(isinstance(c, (str, int, float)) for c in classes):
        raise CheckpointError(f"{path}: metadata field classes must hold plain labels (text or numbers)")
    feature_names = meta.get("feature_names")
    if feature_names is not None and not (isinstance(feature_names, list)
                                          and all(isinstance(f, str) for f in feature_names)):
        raise CheckpointError(f"{path}: metadata field feature_names must be a list of column names")
    if feature_names is not None and len(feature_names) != math.prod(input_shape):
        raise CheckpointError(f"{path}: metadata lists {len(feature_names)} feature names for input shape "
                              f"{input_shape}")
    target_name = meta.get("target_name") if isinstance(meta.get("target_name"), str) else None
    loss_spec = _field(path, meta, "loss", dict)
    if not isinstance(loss_spec.get("name"), str):
        raise CheckpointError(f"{path}: metadata field loss.name is missing or not a str")

    standardizer = None
    std = ckpt.group("standardize")
    if std and set(std) != {"mean", "scale"}:
        odd = sorted(set(std) ^ {"mean", "scale"})
        raise CheckpointError(f"{path}: standardize/ must hold exactly mean and scale; "
                              f"unexpected or missing: {', '.join(odd)}")
    arrays = ckpt.standardizer_arrays()
    if arrays is not None:
        # checked before the model is built: an input shape that lies is found without allocating for it
        mean, scale = arrays
        if tuple(mean.shape) != tuple(input_shape):
            raise CheckpointError(f"{path}: standardize/mean has shape {list(mean.shape)}, "
                                  f"the model's input shape is {input_shape}")
        try:
            standardizer = Standardizer.from_arrays(mean, scale)
        except DataError as err:
            raise CheckpointError(f"{path}: {err}") from None

    try:
        # data layer: the CSV encoding and target scale (absent in older checkpoints: none)
        preprocessor = Preprocessor.from_checkpoint(meta, ckpt.group("target"), str(path), n_outputs, standardizer)
    except DataError as err:
        raise CheckpointError(str(err)) from None
    if preprocessor.table is not None and feature_names != preprocessor.table.feature_names:
        raise CheckpointError(f"{path}: metadata feature_names do not match its preprocess.table")

    try:
        model = Sequential.from_config(layers, tuple(input_shape), np.random.default_rng(0), dtype)
    except (NnctlError, TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{path}: cannot rebuild the model from its metadata: {_why(err)}") from None
    except (MemoryError, OverflowError, RecursionError) as err:
        raise CheckpointError(f"{path}: cannot rebuild the model from its metadata: the layers it lists are "
                              f"too large or too deeply nested ({type(err).__name__})") from None
    try:
        model.load_state_dict(ckpt.model_state, strict=True)
    except (NnctlError, KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: weights do not fit the model in its metadata: {_why(err)}") from None
    try:
        loss = LOSSES.get(loss_spec["name"])(**{k: v for k, v in loss_spec.items() if k != "name"})
    except (NnctlError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot rebuild the loss from its metadata: {_why(err)}") from None
    from nnctl.config.spec import CLASSIFICATION_LOSSES
    loss_name = LOSSES.canonical(loss_spec["name"])
    if (loss_name in CLASSIFICATION_LOSSES) != (task == CLASSIFICATION):
        raise CheckpointError(f"{path}: metadata loss {loss_name} does not fit task {task}")
    outputs = math.prod(model.output_shape or ())
    binary = loss_name == "binary_cross_entropy" and n_outputs == 2
    if outputs != (1 if binary else n_outputs):
        raise CheckpointError(f"{path}: the model has {outputs} outputs but metadata n_outputs is {n_outputs}")
    return LoadedModel(path=path, meta=meta, model=model, loss=loss, standardizer=standardizer, dtype=dtype,
                       task=task, classes=classes, feature_names=feature_names, target_name=target_name,
                       n_outputs=n_outputs, input_shape=tuple(input_shape), preprocessor=preprocessor)


def _why(err: BaseException) -> str:
    text = str(err)
    if isinstance(err, KeyError) and err.args:
        text = f"key {err.args[0]!r}"
    return text or type(err).__name__


def load_model(target: Path) -> LoadedModel:
    """A checkpoint file or run directory -> the rebuilt, loaded model."""
    ckpt = load_checkpoint(checkpoint_for(target))
    return model_from_checkpoint(ckpt)


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
    dataset = load_dataset(data, spec.seed, spec.base_dir, lm.dtype)
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
        from nnctl.engine.hparams import unknown_name_message
        raise DataError(f"--data: {unknown_name_message('dataset', value, DATASETS.names())} "
                        "(or give a .csv, .npy or .npz file)")
    notes: list[str] = []
    x, raw_y = load_features(path, lm.feature_names, lm.input_shape, lm.target_name,
                             table=lm.preprocessor.table, dtype=lm.dtype, notes=notes)
    y = None
    if raw_y is not None:
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
    data = {"dataset": name, "val_split": 0.0, "test_split": 0.0, "task": lm.task,
            "options": trained.get("options") or {} if same else {},
            "shape": trained.get("shape") if same else None,
            "standardize_target": False}
    seed = config.get("seed", 0) if isinstance(config.get("seed"), int) else 0
    dataset = load_dataset(data, seed, Path("."), lm.dtype)
    if tuple(dataset.input_shape) != lm.input_shape:
        raise DataError(f"--data {name}: samples have shape {list(dataset.input_shape)}, "
                        f"the model expects {list(lm.input_shape)}")
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
    if split.y is None:
        raise DataError("no targets to evaluate against")
    if len(split) == 0:
        raise DataError("no rows to evaluate")
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
    out: dict[str, Any] = {"task": lm.task, "n": n, "loss": head["loss"]}
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


def default_batch_size(lm: LoadedModel) -> int:
    """The run's eval_batch_size (what training scored the test split with), else 1024."""
    training = lm.meta["config"].get("training")
    value = training.get("eval_batch_size") if isinstance(training, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1024


def run_eval(target: Path, data: str | None, split: str, batch_size: int | None) -> dict[str, Any]:
    """The whole of `nnctl eval` but the rendering: a JSON-able result."""
    lm = load_model(target)
    source = run_split(lm, split) if data is None else data_source(lm, data, need_targets=True)
    result = evaluate_model(lm, source.split, batch_size or default_batch_size(lm))
    head = {"checkpoint": str(lm.path), "epoch": lm.epoch, "data": source.description,
            "split": source.split_name}
    if source.note:
        head["note"] = source.note
    return finite_json({**head, **result})
