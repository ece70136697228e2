"""`nnctl init`: look at a data file and write a commented starter spec for it.

Every decision is made from the data and shown (the returned `Profile` lists them and the
spec's comments repeat them): which column is the target and why, the task and why, which
columns are left out (IDs, text) and which are used, a model sized to the data, early
stopping on. Nothing is guessed silently: the user reads the choices in the file it writes.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnctl.data.files import is_missing, is_number, parse_floats
from nnctl.errors import ConfigError, DataError
from nnctl.fileio import check_regular

SUFFIXES = (".csv", ".npy", ".npz")
# Sibling files `init x.npy` looks in for the targets, in this order ({stem} = the data file's stem).
NPY_TARGETS = ("{stem}_y.npy", "{stem}_labels.npy", "{stem}_targets.npy", "y.npy", "labels.npy", "targets.npy")
# A text column with at most this many distinct values (and repeats) is a category, not free text.
MAX_CATEGORIES = 50
# A numeric column of 3..MAX_CODES distinct whole numbers may be codes (plan 1/2/3): init says so.
MAX_CODES = 10
# Starter CNNs are sized for images at most this many pixels on a side (larger ones are resized).
MAX_SIDE = 64
_ID_NAME = re.compile(r"(^|[_\W])(id|uuid|guid|index|idx)$", re.IGNORECASE)


@dataclass
class Column:
    """A column that is not used as a feature, and why."""

    name: str
    kind: str           # "id" | "categorical" | "text"
    distinct: int
    why: str


@dataclass
class Profile:
    """What `init` found in a data file and what it chose; every field is shown to the user."""

    path: Path
    rows: int
    input_shape: tuple[int, ...]
    target: str | None                  # CSV column, or the .npy targets file, or "y" of an .npz
    target_why: str
    task: str
    task_why: str
    classes: list | None
    n_outputs: int
    features: list[str] | None = None   # CSV only: the columns used (numeric and categorical)
    categorical: list[Column] = field(default_factory=list)   # CSV: one-hot encoded by the loader
    codes: list[Column] = field(default_factory=list)         # CSV: whole numbers that may be category codes
    left_out: list[Column] = field(default_factory=list)      # CSV: written as data.ignore
    # CSV: missing cells (empty, NA, N/A, NaN) per used feature column, and in the target;
    # any of them makes the spec say data.missing: impute instead of failing at validate
    missing: dict[str, int] = field(default_factory=dict)
    target_missing: int = 0
    target_path: Path | None = None     # .npy only
    image_size: list[int] | None = None  # image folder only: [H, W] every image is resized to
    color: str | None = None            # image folder only: grayscale | rgb
    image_why: str = ""                 # image folder only: how the size and color were chosen
    filters: list[int] = field(default_factory=list)   # image folder: conv filters per conv+pool stage
    hidden: list[int] = field(default_factory=list)
    batch_size: int = 32
    epochs: int = 100
    patience: int = 10
    split: float = 0.15

    @property
    def n_features(self) -> int:
        return math.prod(self.input_shape)


# ---------------------------------------------------------------------------- reading

def _id_like_numbers(values: np.ndarray) -> bool:
    """Whole numbers, all different and in steps of one once sorted: a row number, not a measurement."""
    if len(values) < 3 or not np.all(values == np.round(values)):
        return False
    ordered = np.sort(values)
    return bool(np.all(np.diff(ordered) == 1))


def _csv_profile(path: Path, target: str | None) -> Profile:
    from nnctl.data.files import default_target, read_csv
    from nnctl.data.targets import infer_task

    table = read_csv(path, path.name)
    if not table.rows:
        raise DataError(f"{path.name}: no data rows")
    if target is None:
        target = default_target(table.header)
        target_why = (f"the column named '{target}'" if target in ("label", "target")
                      else "the last column (no column is named label or target; use --target COL)")
    else:
        if target not in table.header:
            raise table.no_column(target)
        target_why = "given with --target"
    features, left_out, categorical, codes, missing = [], [], [], [], {}
    for j, name in enumerate(table.header):
        if name == target:
            continue
        # a missing cell is neither text nor a number: the column's kind comes from the others
        column = table.column(j)
        cells = [c.strip() for c in column if not is_missing(c)]
        holes = len(column) - len(cells)
        distinct = len(set(cells))
        numbers = parse_floats(cells)
        if not cells:
            left_out.append(Column(name, "empty", 0, "every cell is missing"))
        elif numbers is None:
            if any(is_number(c) for c in cells):
                bad = next(i for i, c in enumerate(column) if not is_missing(c) and not is_number(c))
                left_out.append(Column(name, "text", distinct, f"partly numeric (row {table.lines[bad]}: "
                                                                 f"{column[bad].strip()!r}); "
                                                                 "fix it to use the column"))
            elif _ID_NAME.search(name) or distinct == len(cells):
                left_out.append(Column(name, "id", distinct, "a different text in every row: an ID"))
            elif distinct <= MAX_CATEGORIES:
                # the loader one-hot encodes a column without numbers (data.categorical: auto)
                categorical.append(Column(name, "categorical", distinct,
                                          f"{distinct} categories, one-hot encoded (plus one for unknown)"))
                features.append(name)
            else:
                left_out.append(Column(name, "text", distinct, f"free text (over {MAX_CATEGORIES} values)"))
        elif _ID_NAME.search(name) or _id_like_numbers(numbers):
            left_out.append(Column(name, "id", distinct, "numbered 1 by 1 like a row ID"
                                   if _id_like_numbers(numbers) else "named like an ID"))
        elif not np.all(np.isfinite(numbers)):
            left_out.append(Column(name, "text", distinct, "holds inf"))
        else:
            features.append(name)
            values = np.unique(numbers)
            if 3 <= len(values) <= MAX_CODES and np.all(values == np.round(values)) and len(values) < len(cells):
                shown = ", ".join(f"{v:g}" for v in values[:MAX_CODES])
                codes.append(Column(name, "code", len(values), f"{len(values)} whole numbers ({shown}): if "
                                    "they are codes, not amounts, add it to data.categorical"))
        if holes and name in features:
            missing[name] = holes
    if not features:
        raise DataError(f"{path.name}: no usable feature column besides the target '{target}' "
                        f"(left out: {', '.join(c.name for c in left_out) or 'none'})")
    t = table.header.index(target)
    # rows without a target are dropped (and counted) under data.missing: drop or impute
    cells = [c.strip() for c in table.column(t) if not is_missing(c)]
    if not cells:
        raise DataError(f"{path.name}: column '{target}': every target cell is missing")
    numbers = parse_floats(cells)
    raw_y = numbers if numbers is not None else np.array(cells, dtype=str)
    task, task_why, classes = _task(raw_y, infer_task)
    # each categorical column becomes one input per category plus one for unknown values
    width = len(features) + sum(c.distinct for c in categorical)
    return Profile(path=path, rows=len(table.rows), input_shape=(width,), target=target,
                   target_why=target_why, task=task, task_why=task_why, classes=classes,
                   n_outputs=len(classes) if classes is not None else 1, features=features,
                   categorical=categorical, codes=codes, left_out=left_out, missing=missing,
                   target_missing=len(table.rows) - len(cells))


def _task(raw_y: np.ndarray, infer_task) -> tuple[str, str, list | None]:
    """(task, why, classes) of a target, by the rule training itself applies (data.targets.infer_task)."""
    y = np.asarray(raw_y)
    task = infer_task(y)
    if y.ndim > 1 and int(np.prod(y.shape[1:])) > 1:
        return task, f"{int(np.prod(y.shape[1:]))} target values per row", None
    flat = y.reshape(-1)
    distinct = np.unique(flat)
    if task == "classification":
        kind = "text labels" if flat.dtype.kind in "USO" else (
            "true/false" if flat.dtype.kind == "b" else "whole numbers that repeat")
        classes = [v.item() if hasattr(v, "item") else v for v in distinct]
        return task, f"{kind}, {len(classes)} classes", classes
    if flat.dtype.kind == "f" and not np.all(flat == np.round(flat)):
        return task, "numbers with fractions", None
    return task, f"{len(distinct)} distinct whole numbers (too many, or none repeats, for classes)", None


def _npy_profile(path: Path, target: str | None) -> Profile:
    from nnctl.data.targets import infer_task
    x = np.load(path, mmap_mode="r", allow_pickle=False)
    if target is not None:
        target_path = Path(target) if Path(target).is_absolute() else Path(target)
        if not target_path.exists():
            target_path = path.parent / target
        why = "given with --target"
    else:
        stem = path.stem
        candidates = [path.parent / n.format(stem=stem) for n in NPY_TARGETS]
        if stem.lower() == "x":
            candidates.insert(0, path.parent / ("Y.npy" if stem == "X" else "y.npy"))
        target_path = next((c for c in candidates if c.is_file() and c.resolve() != path.resolve()), None)
        if target_path is None:
            raise DataError(f"{path.name}: a .npy file holds features only; give the targets file with "
                            f"--target FILE.npy (looked for {', '.join(c.name for c in candidates)})")
        why = f"found beside {path.name}"
    if not target_path.is_file():
        raise DataError(f"--target {target}: file not found (looked in {path.parent})")
    y = np.load(target_path, allow_pickle=False)
    if len(y) != len(x):
        raise DataError(f"{target_path.name}: {len(y)} targets for {len(x)} rows of {path.name}")
    task, task_why, classes = _task(y, infer_task)
    n_out = len(classes) if classes is not None else (int(np.prod(y.shape[1:])) if y.ndim > 1 else 1)
    return Profile(path=path, rows=len(x), input_shape=tuple(int(s) for s in x.shape[1:]),
                   target=target_path.name, target_why=why, task=task, task_why=task_why, classes=classes,
                   n_outputs=n_out, target_path=target_path)


def _npz_profile(path: Path, target: str | None) -> Profile:
    from nnctl.data.targets import infer_task
    if target is not None:
        raise ConfigError("--target: an .npz file keeps its targets in its array 'y'; --target is for CSV "
                          "columns and .npy target files")
    with np.load(path, allow_pickle=False) as z:
        if "x" not in z.files or "y" not in z.files:
            raise DataError(f"{path.name}: needs arrays 'x' and 'y' (has: {', '.join(z.files) or 'none'})")
        x, y = z["x"], z["y"]
    if len(x) != len(y):
        raise DataError(f"{path.name}: {len(y)} targets in 'y' for {len(x)} rows in 'x'")
    task, task_why, classes = _task(y, infer_task)
    n_out = len(classes) if classes is not None else (int(np.prod(y.shape[1:])) if y.ndim > 1 else 1)
    return Profile(path=path, rows=len(x), input_shape=tuple(int(s) for s in x.shape[1:]), target="y",
                   target_why="the array 'y' of the .npz", task=task, task_why=task_why, classes=classes,
                   n_outputs=n_out)


def _image_profile(path: Path, target: str | None) -> Profile:
    """A folder with one subfolder per class of images: classes, rows, and one size and color for all.

    Only the image headers are read (Pillow opens a file lazily), so this stays quick on a
    large folder. Mixed sizes: the most common one is chosen and the others are resized;
    a side over MAX_SIDE pixels is scaled down (keeping the aspect) so the starter CNN
    trains in reasonable time on a CPU.
    """
    from collections import Counter

    from nnctl.data.images import _pil, class_folders
    if target is not None:
        raise ConfigError("--target: an image folder's classes are its subfolders; --target is for CSV "
                          "columns and .npy target files")
    Image = _pil()
    folders = class_folders(path, path.name)
    sizes: Counter = Counter()
    rgb = 0
    rows = 0
    for c, files in folders:
        for f in files:
            try:
                with Image.open(f) as im:
                    sizes[(im.height, im.width)] += 1
                    rgb += im.mode not in ("1", "L", "LA", "I", "I;16", "F")   # a palette (P) may hold color
            except (OSError, ValueError) as err:
                raise DataError(f"{c.name}/{f.name}: not a readable image ({type(err).__name__}: {err})") from None
        rows += len(files)
    (h, w), count = sizes.most_common(1)[0]
    why = f"all {h}x{w}" if len(sizes) == 1 else f"{count} of {rows} are {h}x{w}, the others are resized"
    if max(h, w) > MAX_SIDE:
        scale = MAX_SIDE / max(h, w)
        h, w = max(1, round(h * scale)), max(1, round(w * scale))
        why += f"; scaled to {h}x{w} for a CPU-sized CNN"
    color = "rgb" if rgb else "grayscale"
    why += f"; {'color' if rgb else 'grayscale'} images" + (f" ({rgb} in color)" if rgb and rgb < rows else "")
    names = [c.name for c, _ in folders]
    return Profile(path=path, rows=rows, input_shape=(3 if rgb else 1, h, w), target="the class subfolders",
                   target_why="one subfolder per class", task="classification",
                   task_why=f"an image folder, {len(names)} classes", classes=names, n_outputs=len(names),
                   image_size=[h, w], color=color, image_why=why)


def _size(profile: Profile) -> None:
    """A model and schedule sized to the data (rules of thumb, written into the spec's comments).

    Width: the power of two at or above twice the number of features, between 16 and 256;
    a second, half-as-wide layer from 5,000 rows. Larger data: larger batches, fewer epochs.
    """
    f, n = profile.n_features, profile.rows
    width = min(256, max(16, 2 ** math.ceil(math.log2(max(1, 2 * f)))))
    profile.hidden = [width, width // 2] if n >= 5000 else [width]
    profile.batch_size = 32 if n < 5000 else 64 if n < 50_000 else 128
    profile.epochs = 200 if n < 1000 else 100 if n < 50_000 else 30
    profile.split = 0.2 if n < 500 else 0.15
    # a batch never larger than the training split (the splits round their rows up)
    train_rows = n - 2 * math.ceil(n * profile.split)
    profile.batch_size = max(1, min(profile.batch_size, train_rows))
    if profile.image_size is not None:
        # conv + 2x2 max-pool stages until the feature map is about 4 pixels on its short side
        side = min(profile.image_size)
        stages = max(1, min(3, int(math.log2(max(2, side) / 2))))
        profile.filters = [16 * 2 ** i for i in range(stages)]
        profile.epochs = min(profile.epochs, 50)   # a CNN step costs far more than a dense one


def profile_data(path: Path, target: str | None = None) -> Profile:
    """Read `path` (.csv, .npy with its targets file, .npz, an image folder) and decide every key of a starter spec."""
    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir():
        # resolved, so `nnctl init .` names the folder (and the spec) after the folder itself
        profile = _image_profile(path.resolve(), target)
        if profile.rows < 10:
            raise DataError(f"{path.name}: {profile.rows} images are too few to split and train on")
        _size(profile)
        return profile
    if suffix not in SUFFIXES:
        raise DataError(f"{path.name}: nnctl init reads .csv, .npy and .npz files, got '{suffix or path.name}'")
    check_regular(path, DataError)  # "no such file", or a FIFO/device/loop that would hang or never end
    try:
        reader = {".csv": _csv_profile, ".npy": _npy_profile, ".npz": _npz_profile}[suffix]
        profile = reader(path, target)
    except (ValueError, OSError) as err:
        raise DataError(f"{path.name}: cannot read it ({err})") from None
    if profile.rows < 10:
        raise DataError(f"{path.name}: {profile.rows} rows are too few to split and train on")
    _size(profile)
    return profile


# ---------------------------------------------------------------------------- writing

def _quote(value) -> str:
    """A YAML scalar that reads back as exactly `value` (a column named `yes` or `1e3` stays text)."""
    import json

    import yaml
    text = str(value)
    if isinstance(value, str) and re.fullmatch(r"[\w./-]+", text):
        try:
            if yaml.safe_load(text) == value:
                return text
        except yaml.YAMLError:
            pass
    return json.dumps(value) if isinstance(value, str) else text


def _flow(items: list) -> str:
    return "[" + ", ".join(_quote(i) for i in items) + "]"


def render_spec(profile: Profile, spec_dir: Path) -> str:
    """The starter spec as YAML text, every key commented; paths relative to `spec_dir`."""
    p = profile
    data_rel = Path(os.path.relpath(p.path.resolve(), spec_dir.resolve())).as_posix()
    classes = ""
    if p.classes is not None:
        shown = ", ".join(str(c) for c in p.classes[:10]) + (", ..." if len(p.classes) > 10 else "")
        classes = f" ({shown})"
    lines = [
        f"# Starter spec written by `nnctl init {p.path.name}`: read the choices below, then",
        "#   nnctl validate <this file>   and   nnctl train <this file>",
        f"# Data: {amount(p)}; target {p.target} ({p.target_why});",
        f"# task {p.task}: {p.task_why}{classes}.",
    ]
    for c in p.categorical:
        lines.append(f"# Categorical: column '{c.name}': {c.why}.")
    for c in p.codes:
        lines.append(f"# Maybe categorical: column '{c.name}': {c.why}.")
    for c in p.left_out:
        lines.append(f"# Left out: column '{c.name}' ({c.kind}, {c.distinct} distinct values): {c.why}.")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", p.path.stem).strip(".-") or "run"
    lines += [
        f"name: {name}\t# runs/<name>-<time>/ holds everything about a run",
        "seed: 0\t# seeds the split, the initial weights and the shuffling",
        "data:",
        f"  dataset: {_quote(data_rel + '/' if p.image_size else data_rel)}\t# the data "
        + ("folder (one subfolder per class)" if p.image_size else "file") + ", relative to this spec",
    ]
    if p.image_size is not None:
        lines += [f"  image_size: {_flow(p.image_size)}\t# [H, W] every image is resized to ({p.image_why})",
                  f"  color: {p.color}\t# {p.input_shape[0]} channel{'s' * (p.input_shape[0] > 1)}; "
                  "pixels scaled to [0, 1]"]
    if p.features is not None:
        lines.append(f"  target: {_quote(p.target)}\t# the column to predict ({p.target_why})")
        if p.left_out:
            lines.append(f"  ignore: {_flow([c.name for c in p.left_out])}\t# not features (see Left out above); "
                         "predict --keep can copy them")
        if p.categorical:
            lines.append(f"  categorical: {_flow([c.name for c in p.categorical])}\t# text columns, one-hot "
                         "encoded (plus an unknown slot); add integer codes here too")
        else:
            lines.append("  categorical: auto\t# a column without numbers would be one-hot encoded")
        if p.missing or p.target_missing:
            lines.append(f"  missing: impute\t# {missing_summary(p)}; drop: remove those rows instead")
    if p.target_path is not None:
        rel = Path(os.path.relpath(p.target_path.resolve(), spec_dir.resolve())).as_posix()
        lines.append(f"  target_path: {_quote(rel)}\t# the targets of each row of the dataset")
    lines += [
        f"  task: {p.task}\t# {p.task_why}; set it to override",
        f"  val_split: {p.split}\t# fraction of rows held out to pick the best epoch and stop early",
        f"  test_split: {p.split}\t# fraction of rows held out for the final, untouched score",
        "  standardize: global\t# one mean and scale over all pixels, from the training rows only"
        if p.image_size else
        "  standardize: true\t# zero mean, unit variance per feature, from the training rows only",
        "model:",
    ]
    if p.image_size is not None:
        side, layers = min(p.image_size), []
        for i, f in enumerate(p.filters):
            layers.append(f"    - conv2d: {{filters: {f}, kernel_size: 3, padding: same, activation: relu}}")
            if side >= 2:
                layers.append("    - maxpool2d: {size: 2}\t# halves height and width")
                side //= 2
        layers.append("    - flatten\t# the feature maps as one vector for the output layer")
        lines += [f"  # a small CNN for {'x'.join(map(str, p.input_shape))} images, {p.rows:,} of them "
                  "(the output layer is added for you)", "  layers:", *layers]
    elif len(p.input_shape) > 1:
        layers = ["    - flatten\t# samples are " + "x".join(map(str, p.input_shape))
                  + "; for images see configs/cnn-digits.yaml"]
        layers += [f"    - dense: {{units: {u}, activation: relu}}" for u in p.hidden]
        lines += [f"  # sized to the data: {p.n_features:,} inputs, {p.rows:,} rows "
                  "(the output layer is added for you)", "  layers:", *layers]
    else:
        lines += [
            f"  hidden: {_flow(p.hidden)}\t# sized to {p.n_features} features, {p.rows:,} rows; "
            "the output layer is added",
            "  activation: relu\t# of the hidden layers",
            "  dropout: 0.0\t# raise (e.g. 0.2) if validation loss rises while training loss falls",
        ]
    loss = "cross_entropy" if p.task == "classification" else "mse"
    lines += [
        f"loss: {loss}\t# {'for class labels' if loss == 'cross_entropy' else 'mean squared error, for numbers'}",
        "optimizer:",
        "  name: adam\t# adam, adamw, sgd, momentum, nesterov, rmsprop, adagrad",
        "  lr: 0.001\t# learning rate; try 0.003 or 0.0003 if training is slow or unstable",
        "training:",
        f"  epochs: {p.epochs}\t# at most this many passes over the training rows",
        f"  batch_size: {p.batch_size}\t# rows per gradient step",
        "  early_stopping:",
        "    monitor: val_loss\t# the metric that picks the best epoch",
        f"    patience: {p.patience}\t# stop after this many epochs without improvement",
        "    restore_best: true\t# keep the best epoch's weights, not the last",
    ]
    return "\n".join(_align(line) for line in lines) + "\n"


def missing_summary(p: Profile) -> str:
    """The missing cells init found and what `data.missing: impute` does with them."""
    parts = []
    if p.missing:
        cells = ", ".join(f"{name} {n}" for name, n in p.missing.items())
        parts.append(f"missing cells ({cells}) get the training split's mean or most frequent value")
    if p.target_missing:
        parts.append(f"{p.target_missing} row{'s' * (p.target_missing != 1)} without a target "
                     f"{'are' if p.target_missing != 1 else 'is'} dropped")
    return "; ".join(parts)


def amount(p: Profile) -> str:
    """How much data: "300 images of 1x8x8" or "120 rows, 6 features"."""
    if p.image_size is not None:
        return f"{p.rows:,} images of {'x'.join(map(str, p.input_shape))}"
    return f"{p.rows:,} rows, {p.n_features:,} features"


def _align(line: str) -> str:
    """Comments of the keys start in one column (the tab marks where a key's comment begins)."""
    code, sep, comment = line.partition("\t# ")
    return f"{code:<30}  # {comment}" if sep else line


def write_starter(data: Path, target: str | None, out: Path | None, force: bool) -> tuple[Profile, Path]:
    """Profile `data` and write its starter spec to `out` (default: <data stem>.yaml here)."""
    profile = profile_data(data, target)
    out = Path(out) if out is not None else Path(f"{profile.path.stem}.yaml")
    if out.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigError(f"--out {out}: a spec file ends in .yaml or .yml")
    if out.exists() and not force:
        raise ConfigError(f"{out}: exists; choose another name with --out or overwrite it with --force")
    text = render_spec(profile, out.parent if str(out.parent) else Path("."))
    from nnctl.runs.store import atomic_write
    atomic_write(out, lambda f: f.write(text), binary=False)
    return profile, out
