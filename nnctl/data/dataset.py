"""The `data` section turned into a Dataset: source, task, labels and seeded splits."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnctl.data.builtin import DATASETS, generate
from nnctl.data.files import (RawData, read_csv_data, read_npy_data, read_npz_data,
                              reshape_rows, suffix_of)
from nnctl.data.splits import Split, split_indices
from nnctl.data.targets import (CLASSIFICATION, REGRESSION, classes_of, encode_labels,
                                infer_task, merge_classes, regression_targets)
from nnctl.engine.hparams import Param, defaults, unknown_name_message
from nnctl.errors import ConfigError, DataError
from nnctl.fileio import check_regular, shown

PARAMS_DATA: dict[str, Param] = {
    "dataset": Param("str", doc="a built-in name (xor, spirals, moons, circles, blobs, sine, "
                                "digits, iris, ...) or a .csv, .npy or .npz file"),
    "target": Param("str", None, nullable=True,
                    doc="CSV target column; default 'label' if present, else 'target', else the last column"),
    "task": Param("str", None, choices=("classification", "regression"), nullable=True,
                  doc="inferred from the target when null (text/bools/few whole numbers: classification)"),
    "val_split": Param("float", 0.15, ge=0, lt=1,
                       doc="fraction of the rows held out for validation (stratified by class)"),
    "test_split": Param("float", 0.15, ge=0, lt=1,
                        doc="fraction of the rows held out for the final test"),
    "val_path": Param("str", None, nullable=True,
                      doc="a separate validation file (.csv or .npz); val_split is then unused"),
    "test_path": Param("str", None, nullable=True,
                       doc="a separate test file (.csv or .npz); test_split is then unused"),
    "standardize": Param("bool_or_choice", True, choices=("per_feature", "global"),
                         doc="zero mean, unit variance from the training rows: true/per_feature (each "
                             "feature its own statistics), global (one mean and scale for all values, "
                             "e.g. images), false"),
    "shape": Param("int_list", None, gt=0, nullable=True,
                   doc="reshape each sample, e.g. [1, 8, 8] for a conv net on digits"),
    "features": Param("any", None, nullable=True,
                      doc="CSV feature columns (a list of names); default: every other numeric column"),
    "target_path": Param("str", None, nullable=True,
                         doc="for a .npy dataset: the .npy file holding its targets, (N,) or (N, k)"),
    "options": Param("any", {}, doc="options of a built-in dataset, e.g. {n_samples: 1000, noise: 0.2}"),
    "augment": Param("any", [], doc="training-batch transforms in order, e.g. [{shift: {max: 2}}] (see Augmentations)"),
    "layout": Param("str", None, choices=("table", "signals", "sequences", "images"), nullable=True,
                    doc="how augment reads a sample; null: from its rank and the first layer (conv1d: signals)"),
}

# Separate random streams per use, so the data a generator makes does not depend on the
# splits and neither repeats the model's initialization stream drawn from the same seed.
_DATA_STREAM = 0xDA7A
_SPLIT_STREAM = 0x5B17


def stream(seed: int, which: int) -> np.random.Generator:
    return np.random.default_rng([which, int(seed) % 2**64])


@dataclass
class Dataset:
    """Everything the trainer needs about the data.

    train/val/test: Splits (val/test None when not held out); their x are raw features.
    input_shape: per-sample shape after data.shape, e.g. (64,) or (1, 8, 8).
    n_outputs: number of classes K, or of regression targets k.
    """

    train: Split
    val: Split | None
    test: Split | None
    task: str
    classes: list | None
    feature_names: list[str] | None
    input_shape: tuple[int, ...]
    n_outputs: int
    target_name: str | None
    source: str


def _options(data: dict) -> dict[str, Any]:
    unknown = [k for k in data if k not in PARAMS_DATA]
    if unknown:
        raise ConfigError(f"data: {unknown_name_message('key', unknown[0], sorted(PARAMS_DATA))}")
    if "dataset" not in data or data["dataset"] is None:
        raise ConfigError("data.dataset: required (a built-in name or a file path)")
    out = {**defaults(PARAMS_DATA), **data}
    if not isinstance(out["dataset"], str) or not out["dataset"].strip():
        raise ConfigError(f"data.dataset: must be a name or a path, got {out['dataset']!r}")
    for key in ("val_split", "test_split"):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise ConfigError(f"data.{key}: must be a fraction in [0, 1), got {v!r}")
    feats = out["features"]
    if feats is not None and (not isinstance(feats, list) or not feats
                              or not all(isinstance(f, str) for f in feats)):
        raise ConfigError(f"data.features: must be a non-empty list of column names, got {feats!r}")
    if feats is not None and len(set(feats)) != len(feats):
        dup = next(f for f in feats if feats.count(f) > 1)
        raise ConfigError(f"data.features: column '{dup}' is listed twice")
    if out["task"] not in (None, CLASSIFICATION, REGRESSION):
        raise ConfigError(f"data.task: must be classification or regression, got {out['task']!r}")
    shape = out["shape"]
    if shape is not None and (not isinstance(shape, (list, tuple)) or not shape or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
        raise ConfigError(f"data.shape: must be a list of positive integers, got {shape!r}")
    if out["options"] is None:
        out["options"] = {}
    if not isinstance(out["options"], dict):
        raise ConfigError(f"data.options: must be a mapping, got {out['options']!r}")
    return out


def _resolve(base_dir: Path, value: str, key: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path(base_dir) / path
    check_regular(path, DataError, f"data.{key}: {shown(value)}", missing_ok=True)
    path = path.resolve()
    if not path.exists():
        raise DataError(f"data.{key}: file not found: {value} (looked for {path})")
    return path


def _read_main(opts: dict, seed: int, base_dir: Path) -> tuple[RawData, str]:
    name = opts["dataset"]
    if name in DATASETS:
        for key in ("target", "features", "target_path"):
            if opts[key] is not None:
                raise ConfigError(f"data.{key}: applies to data files, not the built-in dataset '{name}'")
        raw = generate(name, opts["options"], stream(seed, _DATA_STREAM))
        return raw, raw.source
    if not Path(name).suffix:
        raise ConfigError(
            f"data.dataset: {unknown_name_message('dataset', name, DATASETS.names())} "
            "(or give a .csv, .npy or .npz file)"
        )
    if opts["options"]:
        raise ConfigError("data.options: only built-in datasets take options")
    suffix = suffix_of(Path(name), Path(name).name)
    path = _resolve(base_dir, name, "dataset")
    if suffix != ".csv":
        for key in ("target", "features"):
            if opts[key] is not None:
                raise ConfigError(f"data.{key}: names CSV columns; {path.name} is a {suffix} file")
    if suffix != ".npy" and opts["target_path"] is not None:
        raise ConfigError(f"data.target_path: only a .npy dataset takes one; {path.name} is a {suffix} file")
    if suffix == ".csv":
        raw = read_csv_data(path, opts["target"], opts["features"])
    elif suffix == ".npy":
        target = opts["target_path"]
        raw = read_npy_data(path, None if target is None else _resolve(base_dir, target, "target_path"))
    else:
        raw = read_npz_data(path)
    return raw, str(path)


def _read_extra(opts: dict, key: str, main: RawData, base_dir: Path) -> RawData:
    """A separate val/test file, read with the training file's columns."""
    value = opts[key]
    suffix = suffix_of(Path(value), Path(value).name)
    path = _resolve(base_dir, value, key)
    if suffix == ".csv":
        if main.target_name is None:
            raise ConfigError(f"data.{key}: a CSV file needs a CSV dataset (column names) to match")
        return read_csv_data(path, main.target_name, main.feature_names)
    if suffix == ".npz":
        raw = read_npz_data(path)
        if raw.parts:
            raise DataError(f"{path.name}: as data.{key} it must hold only 'x' and 'y'")
        return raw
    raise ConfigError(f"data.{key}: use a .csv or .npz file (x and y together), got {path.name}")


def _encode(raw: RawData, task: str, classes: list | None) -> np.ndarray:
    where = dict(lines=raw.lines, column=raw.target_name if raw.lines is not None else None)
    if task == CLASSIFICATION:
        return encode_labels(raw.y, classes, raw.source, **where)
    return regression_targets(raw.y, raw.source, **where)


def load_dataset(data: dict, seed: int, base_dir: Path) -> Dataset:
    """Load, label and split the data a spec's `data` section describes.

    data: the `data` section as a plain dict (keys of PARAMS_DATA; missing keys take their
    defaults). Relative paths resolve against base_dir (the spec file's folder).

    Notes
    -----
    A pure function of (data, seed, base_dir's files): a built-in generator and the split
    each draw from their own stream of `seed`, so evaluation rebuilds exactly the test
    split training held out. Rows of one file share one x; each split holds sorted row
    indices into it (a memory-mapped .npy is never copied). Separate val/test files (or an
    .npz's x_val/x_test) replace the corresponding fraction, which then applies to nothing;
    the remaining fractions apply to the main file's rows.
    """
    opts = _options(data)
    raw, source = _read_main(opts, seed, Path(base_dir))
    if raw.y is None:
        raise DataError(f"{raw.source}: has no targets to train on")
    if opts["shape"] is not None:
        raw.x = reshape_rows(raw.x, opts["shape"], raw.source)

    extra: dict[str, RawData] = {}
    for part in ("val", "test"):
        key = f"{part}_path"
        if opts[key] is not None:
            if part in raw.parts:
                raise ConfigError(f"data.{key}: {raw.source} already has 'x_{part}'; use one of the two")
            extra[part] = _read_extra(opts, key, raw, Path(base_dir))
        elif part in raw.parts:
            extra[part] = raw.parts[part]
    input_shape = tuple(int(s) for s in raw.x.shape[1:])
    for part, other in extra.items():
        if opts["shape"] is not None:
            other.x = reshape_rows(other.x, opts["shape"], other.source)
        if tuple(other.x.shape[1:]) != input_shape:
            raise DataError(
                f"{other.source}: {part} samples have shape {list(other.x.shape[1:])}, "
                f"the training samples {list(input_shape)}"
            )

    task = opts["task"] or raw.task or infer_task(raw.y)
    classes = None
    if task == CLASSIFICATION:
        lists = [classes_of(r.y, r.source, lines=r.lines,
                            column=r.target_name if r.lines is not None else None)
                 for r in (raw, *extra.values())]
        classes = merge_classes(lists)
    y = _encode(raw, task, classes)
    n_outputs = len(classes) if task == CLASSIFICATION else int(y.shape[1])

    val_fraction = 0.0 if "val" in extra else float(opts["val_split"])
    test_fraction = 0.0 if "test" in extra else float(opts["test_split"])
    if val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"data.val_split + data.test_split must be < 1, got {val_fraction:g} + {test_fraction:g}"
        )
    splits: dict[str, Split | None] = {"val": None, "test": None}
    if val_fraction == 0 and test_fraction == 0:
        train = Split(raw.x, y, None)
    else:
        labels = y if task == CLASSIFICATION else None
        tr, va, te = split_indices(len(raw.x), labels, val_fraction, test_fraction,
                                   stream(seed, _SPLIT_STREAM))
        train = Split(raw.x, y, tr)
        if val_fraction > 0:
            splits["val"] = Split(raw.x, y, va)
        if test_fraction > 0:
            splits["test"] = Split(raw.x, y, te)
    for part, other in extra.items():
        yo = _encode(other, task, classes)
        if task == REGRESSION and yo.shape[1] != n_outputs:
            raise DataError(f"{other.source}: {yo.shape[1]} target columns, the training data has {n_outputs}")
        splits[part] = Split(other.x, yo, None)

    return Dataset(
        train=train,
        val=splits["val"],
        test=splits["test"],
        task=task,
        classes=classes,
        feature_names=raw.feature_names,
        input_shape=input_shape,
        n_outputs=n_outputs,
        target_name=raw.target_name,
        source=source,
    )
