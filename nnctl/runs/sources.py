"""What a checkpoint's model is scored or checked on: the run's own split, a labelled file, or a dataset.

The run's split is recreated from the stored config and seed, so it is exactly the split training
held out. Read by `nnctl eval` and by the exporter's parity check.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnctl.data import DATASETS, Split, encode_labels, encode_targets, load_dataset, load_features
from nnctl.engine.metrics import GENERATIVE_TASKS
from nnctl.errors import DataError, NnctlError
from nnctl.runs.model import CLASSIFICATION, LoadedModel

SPLITS = ("test", "val", "train")


@dataclass
class EvalData:
    split: Split
    description: str
    split_name: str | None = None
    note: str | None = None   # e.g. how many categories the training split never had
    classes: list | None = None   # the names of a classification split's label indices


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
    return EvalData(split, f"the {which} split of {dataset.source}", which, classes=dataset.classes)


def _align_classes(lm: LoadedModel, classes: list | None, split: Split, source: str) -> Split:
    """Re-index a dataset's class indices onto the checkpoint's class list (usually identical)."""
    if lm.task != CLASSIFICATION or classes == lm.classes:
        return split
    mapping = encode_labels(np.asarray(classes), lm.classes, source)
    return Split(split.x, mapping[split.y], split.idx, split.divisor)


def data_source(lm: LoadedModel, value: str, need_targets: bool) -> EvalData:
    """`--data`: a .csv/.npz/.npy file (features matched to the model's), an image folder (one
    subfolder per class) or a built-in dataset name."""
    path = Path(value)
    if not path.exists() and value in DATASETS:
        return _builtin(lm, value)
    if not path.suffix and not path.exists():
        from nnctl.hparams import unknown_name_message
        raise DataError(f"--data: {unknown_name_message('dataset', value, DATASETS.names())} "
                        "(or give a .csv, .npy or .npz file)")
    if path.is_dir():
        return _image_folder(lm, path)
    notes: list[str] = []
    # an autoencoder's label column is not read: a file without it, or with gaps in it, is fine
    target = None if lm.task in GENERATIVE_TASKS else lm.target_name
    x, raw_y = load_features(path, lm.feature_names, lm.input_shape, target,
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


def _image_folder(lm: LoadedModel, path: Path) -> EvalData:
    """A folder with one subfolder per class, decoded with the run's image size and color."""
    from nnctl.data.dataset import PIXEL_MAX
    from nnctl.data.images import read_image_folder
    if len(lm.input_shape) != 3:
        raise DataError(f"{path.name}: a folder is read as images, and the model takes samples of "
                        f"{list(lm.input_shape)}, not images (C, H, W)")
    data = lm.meta["config"].get("data") or {}
    raw = read_image_folder(path, data.get("image_size"), data.get("color", "grayscale"), path.name)
    if tuple(raw.x.shape[1:]) != lm.input_shape:
        raise DataError(f"{path.name}: images are {list(raw.x.shape[1:])} (C, H, W), the model expects "
                        f"{list(lm.input_shape)}")
    if lm.task != CLASSIFICATION:
        raise DataError(f"{path.name}: an image folder's labels are class names; the model does {lm.task}")
    y = encode_targets(raw.y, lm.task, lm.classes, path.name)
    return EvalData(Split(raw.x, y, None, PIXEL_MAX), str(path))


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
        split = Split(split.x, lm.preprocessor.scale_targets(split.y), split.idx, split.divisor)
    return EvalData(_align_classes(lm, dataset.classes, split, dataset.source), f"all of {dataset.source}")
