"""The `data` section turned into a Dataset: source, task, labels and seeded splits."""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnctl.data import fast_csv
from nnctl.data.builtin import DATASETS, generate
from nnctl.data.files import (CATEGORICAL, RawData, read_csv_data, read_npy_data, read_npz_data,
                              reshape_rows, suffix_of)
from nnctl.data.images import PIXEL_MAX   # a Split of an image folder's uint8 pixels divides by it
from nnctl.data.preprocess import TableEncoder, fit_target_scale, handle_missing
from nnctl.data.splits import Split, split_indices
from nnctl.data.table_cache import TableCache, cache_root
from nnctl.data.targets import (CLASSIFICATION, REGRESSION, classes_of, encode_labels,
                                infer_task, merge_classes, regression_targets)
from nnctl.engine.metrics import GENERATIVE_TASKS
from nnctl.hparams import Param, defaults, unknown_name_message
from nnctl.errors import ConfigError, DataError
from nnctl.fileio import check_regular, shown

PARAMS_DATA: dict[str, Param] = {
    "dataset": Param("str", doc="a built-in name (xor, spirals, moons, circles, blobs, sine, "
                                "digits, iris, ...), a .csv, .npy or .npz file, or a folder of images "
                                "with one subfolder per class"),
    "target": Param("str", None, nullable=True,
                    doc="the CSV column to predict; required for CSV files (never guessed), except for task "
                        "autoencoder/vae, where it is optional, not a feature, and only colours plot --latent"),
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
                      doc="CSV feature columns (a list of names); default: every column but the target and ignore"),
    "ignore": Param("any", None, nullable=True,
                    doc="CSV columns that are not features, e.g. [customer_id] (predict --keep can copy them)"),
    "categorical": Param("any", "auto",
                         doc="auto (a column with no numbers is categorical) or a list of CSV columns to one-hot "
                             "encode even if they hold numbers; categories come from the training split, "
                             "plus one 'unknown' slot"),
    "max_categories": Param("int", 50, gt=0,
                            doc="a categorical column with more distinct values is an error (an ID column: ignore it)"),
    "missing": Param("str", "error", choices=("error", "drop", "impute"),
                     doc="missing CSV cells (empty, NA, NaN): error; drop the rows; impute (training mean, most "
                         "frequent category); rows with a missing target are dropped under drop and impute"),
    "image_size": Param("int_list", None, gt=0, nullable=True,
                        doc="an image folder: resize every image to [H, W] (default: all must share one size)"),
    "color": Param("str", "grayscale", choices=("grayscale", "rgb"),
                   doc="an image folder: 1 channel (grayscale) or 3 (rgb); pixels scaled to [0, 1]"),
    "standardize_target": Param("bool", True,
                                doc="regression: train on (y - mean) / std of the training split; metrics and "
                                    "predictions stay in the target's units"),
    "target_path": Param("str", None, nullable=True,
                         doc="for a .npy dataset: the .npy file holding its targets, (N,) or (N, k)"),
    "options": Param("any", {}, doc="options of a built-in dataset, e.g. {n_samples: 1000, noise: 0.2}"),
    "augment": Param("any", [], doc="training-batch transforms in order, e.g. [{shift: {max: 2}}] (see Augmentations)"),
    "cache": Param("str", "auto", false_means="off",
                   doc="where a CSV's parsed table or an image folder's decoded pixels are kept for later "
                       "runs: auto (NNCTL_CACHE_DIR, else "
                       "XDG_CACHE_HOME/nnctl or ~/.cache/nnctl), a folder, or off (false too)"),
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

    train/val/test: Splits (val/test None when not held out); their x are raw features
    (CSV: already encoded, numbers and one-hot categories; not standardized); a regression
    target is already scaled when target_scale is set.
    input_shape: per-sample shape after data.shape, e.g. (64,) or (1, 8, 8).
    n_outputs: number of classes K, or of regression targets k.
    table: the CSV encoding fitted on the training split (None for other sources).
    target_mean, target_scale: (k,) of a standardized regression target, else None.
    dropped: rows removed by data.missing ({"target": n, "features": m}).
    unknown: per split, categorical cells mapped to "unknown" (values train never had).
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
    table: TableEncoder | None = None
    target_mean: np.ndarray | None = None
    target_scale: np.ndarray | None = None
    missing: str | None = None
    ignored: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    unknown: dict[str, int] = field(default_factory=dict)
    class_weights: list[float] | None = None   # the loss's weight per class, set once resolved (for describe)
    cache: str | None = None
    parser: str | None = None   # what parsed a CSV here (fast_csv.describe); None when nothing was parsed

    def describe(self) -> list[str]:
        """What was decided about the data, one line per topic (validate, the train header)."""
        if self.task in GENERATIVE_TASKS:
            labels = (f"; target '{self.target_name}' is not a feature and not trained on, it only colours "
                      "plot --latent" if self.target_name else
                      "; its labels are not trained on, they only colour plot --latent" if self.train.y is not None
                      else "")
            lines = [f"{self.task}: reconstructs its {self.n_outputs} input values, scaled to [0, 1] by the "
                     f"training split's min and max{labels}"]
        else:
            if self.task == CLASSIFICATION:
                shown = ", ".join(str(c) for c in (self.classes or [])[:10])
                more = ", ..." if len(self.classes or []) > 10 else ""
                task = f"classification, {self.n_outputs} classes: {shown}{more}"
            else:
                scaled = "standardized for training" if self.target_scale is not None else "not scaled"
                task = f"regression, {self.n_outputs} output{'s' * (self.n_outputs != 1)}, {scaled}"
            lines = [f"target '{self.target_name}' ({task})" if self.target_name else f"target: {task}"]
        if self.class_weights is not None:
            pairs = [f"{c} {w:.4g}" for c, w in zip(self.classes or [], self.class_weights)]
            lines.append("class weights: " + _few(pairs, 10))
        if self.table is not None:
            num = [c["name"] for c in self.table.columns if c["kind"] == "numeric"]
            cat = [f"{c['name']} ({len(c['categories'])})" for c in self.table.columns if c["kind"] != "numeric"]
            parts = [f"{len(num)} numeric" + (f" ({_few(num)})" if num else "")]
            parts.append(f"{len(cat)} categorical" + (f" ({_few(cat)}; one-hot + unknown)" if cat else ""))
            parts.append("ignored: " + (_few(self.ignored) if self.ignored else "none"))
            lines.append("features: " + "; ".join(parts))
            # keys are "target" and "features": a row is dropped for one missing feature
            dropped = ", ".join(f"{n} for a missing {k.removesuffix('s')}" for k, n in self.dropped.items() if n)
            lines.append(f"missing values: {self.missing}" + (f"; rows dropped: {dropped}" if dropped else ""))
            seen = ", ".join(f"{n} in {k}" for k, n in self.unknown.items() if n)
            if seen:
                lines.append(f"categories the training split never had (mapped to unknown): {seen}")
            if self.parser:
                lines.append(f"csv parser: {self.parser}")
            lines.append(f"table cache: {self.cache or 'off'}")
        elif self.cache:
            lines.append(f"image cache: {self.cache}")
        return lines


def _few(names: list[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


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
    for key in ("features", "ignore"):
        names = out[key]
        if names is not None and (not isinstance(names, list) or (key == "features" and not names)
                                  or not all(isinstance(f, str) for f in names)):
            raise ConfigError(f"data.{key}: must be a {'non-empty ' * (key == 'features')}list of column names, "
                              f"got {names!r}")
        if names is not None and len(set(names)) != len(names):
            dup = next(f for f in names if names.count(f) > 1)
            raise ConfigError(f"data.{key}: column '{dup}' is listed twice")
    cat = out["categorical"]
    if cat != "auto" and (not isinstance(cat, list) or not all(isinstance(f, str) for f in cat)):
        raise ConfigError(f"data.categorical: must be auto or a list of column names, got {cat!r}")
    if out["missing"] not in ("error", "drop", "impute"):
        raise ConfigError(f"data.missing: must be error, drop or impute, got {out['missing']!r}")
    mc = out["max_categories"]
    if isinstance(mc, bool) or not isinstance(mc, int) or mc < 1:
        raise ConfigError(f"data.max_categories: must be an integer > 0, got {mc!r}")
    if not isinstance(out["standardize_target"], bool):
        raise ConfigError(f"data.standardize_target: must be true or false, got {out['standardize_target']!r}")
    size = out["image_size"]
    if size is not None and (not isinstance(size, list) or len(size) != 2 or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise ConfigError(f"data.image_size: must be [H, W], two positive integers, got {size!r}")
    if out["color"] not in ("grayscale", "rgb"):
        raise ConfigError(f"data.color: must be grayscale or rgb, got {out['color']!r}")
    if out["task"] not in (None, CLASSIFICATION, REGRESSION):
        raise ConfigError(f"data.task: must be classification or regression, got {out['task']!r}")
    shape = out["shape"]
    if shape is not None and (not isinstance(shape, (list, tuple)) or not shape or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
        raise ConfigError(f"data.shape: must be a list of positive integers, got {shape!r}")
    if out["cache"] is False:
        out["cache"] = PARAMS_DATA["cache"].false_means
    if not isinstance(out["cache"], str) or not out["cache"].strip():
        raise ConfigError(f"data.cache: must be auto, off or a folder, got {out['cache']!r}")
    if out["options"] is None:
        out["options"] = {}
    if not isinstance(out["options"], dict):
        raise ConfigError(f"data.options: must be a mapping, got {out['options']!r}")
    return out


def _resolve(base_dir: Path, value: str, key: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path(base_dir) / path
    # named by where it leads (a link to /dev/zero is "/dev/zero: is a character device")
    check_regular(path, DataError, f"data.{key}: {shown(os.path.realpath(path))}", missing_ok=True)
    if not path.exists():
        where = path.parent.resolve() if path.parent.exists() else path.parent
        raise DataError(f"data.{key}: file not found: {value} (looked in {where}){_close_files(path)}")
    try:
        return path.resolve(strict=True)
    except (RuntimeError, OSError) as err:
        raise DataError(f"data.{key}: cannot open {value}: {getattr(err, 'strerror', None) or err}") from None


def _close_files(path: Path) -> str:
    """'; did you mean ...' with file names in the folder close to the one asked for."""
    try:
        names = [p.name for p in path.parent.iterdir()] if path.parent.is_dir() else []
    except OSError:
        names = []
    close = difflib.get_close_matches(path.name, names, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


CSV_ONLY = ("target", "features", "ignore")


def _table_cache(opts: dict, base_dir: Path) -> TableCache | None:
    root = cache_root(opts["cache"], base_dir)
    return None if root is None else TableCache(root)


def _read_main(opts: dict, seed: int, base_dir: Path, dtype, cache: TableCache | None,
               need_y: bool = True) -> tuple[RawData, str]:
    name = opts["dataset"]
    if name in DATASETS:
        raw = generate(name, opts["options"], stream(seed, _DATA_STREAM))
        for key in ("target", "features", "target_path", "ignore"):
            # the built-in's own target may be named (nnctl config prints it)
            if opts[key] is not None and not (key == "target" and opts[key] == raw.target_name):
                raise ConfigError(f"data.{key}: applies to data files, not the built-in dataset '{name}'")
        return raw, raw.source
    folder = Path(name).expanduser() if Path(name).expanduser().is_absolute() else base_dir / name
    if folder.is_dir():
        return _read_images(opts, folder, name, None if cache is None else cache.root), str(folder)
    # a link's own name decides the format (DVC and git-annex link to extension-less blobs)
    if not Path(name).suffix:
        raise ConfigError(
            f"data.dataset: {unknown_name_message('dataset', name, DATASETS.names())} "
            "(or give a .csv, .npy or .npz file)"
        )
    if opts["options"]:
        raise ConfigError("data.options: only built-in datasets take options")
    shown = Path(name).name
    # a missing file first: 'cust.cvs' is a typo of cust.csv (did you mean), not a file type
    path = _resolve(base_dir, name, "dataset")
    suffix = suffix_of(Path(name), shown)
    if suffix != ".csv":
        for key in CSV_ONLY:
            if opts[key] is not None:
                raise ConfigError(f"data.{key}: names CSV columns; {shown} is a {suffix} file")
        if opts["categorical"] != "auto":
            raise ConfigError(f"data.categorical: names CSV columns; {shown} is a {suffix} file")
    if suffix != ".npy" and opts["target_path"] is not None:
        raise ConfigError(f"data.target_path: only a .npy dataset takes one; {shown} is a {suffix} file")
    if suffix == ".csv":
        raw = read_csv_data(path, opts["target"], opts["features"], shown, ignore=opts["ignore"],
                            categorical=opts["categorical"], max_categories=opts["max_categories"], dtype=dtype,
                            parse=cache.parse if cache is not None else None, need_target=need_y)
    elif suffix == ".npy":
        target = opts["target_path"]
        raw = read_npy_data(path, None if target is None else _resolve(base_dir, target, "target_path"),
                            shown, dtype=dtype, need_y=need_y)
    else:
        raw = read_npz_data(path, shown, need_y=need_y, dtype=dtype)
    return raw, str(path)


def _read_images(opts: dict, folder: Path, name: str, cache_root: Path | None) -> RawData:
    from nnctl.data.images import read_image_folder
    for key in CSV_ONLY + ("target_path",):
        if opts[key] is not None:
            raise ConfigError(f"data.{key}: does not apply to an image folder ({name})")
    if opts["options"]:
        raise ConfigError("data.options: only built-in datasets take options")
    return read_image_folder(folder, opts["image_size"], opts["color"], folder.name, cache_root)


def _read_extra(opts: dict, key: str, main: RawData, base_dir: Path, dtype, cache: TableCache | None) -> RawData:
    """A separate val/test file, read with the training file's columns (and their kinds)."""
    value = opts[key]
    shown = Path(value).name
    path = _resolve(base_dir, value, key)
    suffix = suffix_of(Path(value), shown)
    if suffix == ".csv":
        if main.columns is None:
            raise ConfigError(f"data.{key}: a CSV file needs a CSV dataset (column names) to match")
        cats = [c.name for c in main.columns if c.kind == CATEGORICAL]
        raw = read_csv_data(path, main.target_name, [c.name for c in main.columns], shown,
                            categorical=cats, max_categories=2**62, dtype=dtype,
                            parse=cache.parse if cache is not None else None,
                            need_target=main.target_name is not None)
        _drop_missing(raw, opts["missing"])
        return raw
    if suffix == ".npz":
        raw = read_npz_data(path, shown, need_y=main.y is not None, dtype=dtype)
        if raw.parts:
            raise DataError(f"{shown}: as data.{key} it must hold only 'x' and 'y'")
        return raw
    raise ConfigError(f"data.{key}: use a .csv or .npz file (x and y together), got {shown}")


def _drop_missing(raw: RawData, policy: str) -> dict[str, int]:
    dropped = handle_missing(raw, policy)
    if any(dropped.values()):
        raw.numbers = None   # the columns are now copies without those rows
    return dropped


def _features(table: TableEncoder, raw: RawData) -> tuple[np.ndarray, int]:
    """The encoded features and the count of unknown categories; numbers as parsed when nothing needs encoding."""
    if raw.numbers is not None and table.is_plain:
        return raw.numbers, 0
    return table.transform(raw.columns, raw.source, raw.lines)


def _encode(raw: RawData, task: str, classes: list | None) -> np.ndarray:
    where = dict(lines=raw.lines, column=raw.target_name if raw.lines is not None else None)
    if task == CLASSIFICATION:
        return encode_labels(raw.y, classes, raw.source, **where)
    return regression_targets(raw.y, raw.source, **where)


def _check_classification(raw: RawData) -> None:
    """A float target with values that are not whole numbers is not a set of classes."""
    y = np.asarray(raw.y)
    if y.dtype.kind != "f":
        return
    flat = y.reshape(-1)
    flat = flat[np.isfinite(flat)]
    if len(flat) and np.any(flat != np.round(flat)):
        what = f"target '{raw.target_name}'" if raw.target_name else "the target"
        raise DataError(f"{raw.source}: data.task is classification, but {what} holds {len(np.unique(flat))} "
                        "distinct values that are not all whole numbers; is this a regression target? "
                        "(set data.task: regression)")


def load_dataset(data: dict, seed: int, base_dir: Path, dtype="float32", unlabelled_ok: bool = False) -> Dataset:
    """Load, label, split and encode the data a spec's `data` section describes.

    data: the `data` section as a plain dict (keys of PARAMS_DATA; missing keys take their
    defaults). Relative paths resolve against base_dir (the spec file's folder).
    dtype: the model's dtype; every value must be finite in it.
    unlabelled_ok: an autoencoder's data: targets are optional (a CSV without data.target has
    every other column as a feature, an .npz may lack y); labels, when there are any, are only
    carried in the splits (for plot --latent), a missing one being the class MISSING_LABEL.

    Notes
    -----
    A pure function of (data, seed, base_dir's files): a built-in generator and the split
    each draw from their own stream of `seed`, so evaluation rebuilds exactly the test
    split training held out. Rows of one file share one x; each split holds sorted row
    indices into it (a memory-mapped .npy is never copied). Separate val/test files (or an
    .npz's x_val/x_test) replace the corresponding fraction, which then applies to nothing;
    the remaining fractions apply to the main file's rows. A CSV's missing values are
    handled first (data.missing), then the splits are drawn, then the table encoding
    (vocabularies, fill values) and the target scale are fitted on the training rows.
    """
    opts = _options(data)
    cache = _table_cache(opts, Path(base_dir))
    raw, source = _read_main(opts, seed, Path(base_dir), dtype, cache, need_y=not unlabelled_ok)
    if raw.y is None and not unlabelled_ok:
        raise DataError(f"{raw.source}: has no targets to train on")
    if raw.y is None and raw.columns is None:   # an autoencoder's target is its input
        return _unlabelled(raw, opts, seed, source)
    if unlabelled_ok and raw.y_missing is not None and raw.y_missing.any():
        _label_missing(raw)
    dropped = _drop_missing(raw, opts["missing"])
    if opts["shape"] is not None and raw.x is not None:   # a CSV's x exists once it is encoded
        raw.x = reshape_rows(raw.x, opts["shape"], raw.source)

    extra: dict[str, RawData] = {}
    for part in ("val", "test"):
        key = f"{part}_path"
        if opts[key] is not None:
            if part in raw.parts:
                raise ConfigError(f"data.{key}: {raw.source} already has 'x_{part}'; use one of the two")
            extra[part] = _read_extra(opts, key, raw, Path(base_dir), dtype, cache)
        elif part in raw.parts:
            extra[part] = raw.parts[part]

    # a table without a target (an autoencoder's) is encoded like any other, without labels
    task = "unlabelled" if raw.y is None else opts["task"] or raw.task or infer_task(raw.y)
    classes = None
    if task == CLASSIFICATION:
        _check_classification(raw)
        lists = [classes_of(r.y, r.source, lines=r.lines,
                            column=r.target_name if r.lines is not None else None)
                 for r in (raw, *extra.values())]
        classes = merge_classes(lists)
    y = None if raw.y is None else _encode(raw, task, classes)
    n_outputs = len(classes) if task == CLASSIFICATION else None if y is None else int(y.shape[1])

    val_fraction, test_fraction = _fractions(opts, extra)
    n = len(raw) if raw.y is not None else len(raw.lines)   # a table's x exists once it is encoded
    rows: dict[str, np.ndarray | None] = {"train": None, "val": None, "test": None}
    if val_fraction > 0 or test_fraction > 0:
        labels = y if task == CLASSIFICATION else None
        try:
            tr, va, te = split_indices(n, labels, val_fraction, test_fraction, stream(seed, _SPLIT_STREAM))
        except DataError as err:
            raise DataError(f"{raw.source}: {err}") from None
        rows = {"train": tr, "val": va if val_fraction > 0 else None, "test": te if test_fraction > 0 else None}
    train_rows = rows["train"] if rows["train"] is not None else np.arange(n, dtype=np.int64)
    if task == CLASSIFICATION and not unlabelled_ok:   # an autoencoder's labels only colour its plots
        present = np.unique(y[train_rows])
        if len(present) < 2:
            what = f"target '{raw.target_name}'" if raw.target_name else "the target"
            only = classes[int(present[0])] if len(present) else None
            raise DataError(f"{raw.source}: the training split has a single class ({only!r}) in {what}; "
                            "classification needs at least two")

    # the CSV table's encoding, fitted on the training rows, applied to every row
    table = None
    unknown: dict[str, int] = {}
    if raw.columns is not None:
        table = TableEncoder.fit(raw.columns, train_rows, opts["missing"], raw.source)
        raw.x, _ = _features(table, raw)
        for part in ("val", "test"):
            if rows[part] is not None:
                unknown[part] = _unknown_count(table, raw, rows[part])
        for part, other in extra.items():
            other.x, unknown[part] = _features(table, other)
    if opts["shape"] is not None:
        raw.x = reshape_rows(raw.x, opts["shape"], raw.source)   # a no-op if done above
    input_shape = tuple(int(s) for s in raw.x.shape[1:])
    if n_outputs is None:   # no target: the rows reconstruct themselves
        n_outputs = int(np.prod(input_shape))
    for part, other in extra.items():
        if opts["shape"] is not None:
            other.x = reshape_rows(other.x, opts["shape"], other.source)
        if tuple(other.x.shape[1:]) != input_shape:
            raise DataError(
                f"{other.source}: {part} samples have shape {list(other.x.shape[1:])}, "
                f"the training samples {list(input_shape)}"
            )

    target_mean = target_scale = None
    if task == REGRESSION and opts["standardize_target"]:
        target_mean, target_scale = fit_target_scale(y[train_rows])
        y = (y - target_mean) / target_scale

    splits: dict[str, Split | None] = {"val": None, "test": None}
    # an image folder's x is uint8 pixels (a memmap of the decode cache): batches divide by 255
    divisor = PIXEL_MAX if raw.x.dtype == np.uint8 and Path(source).is_dir() else None
    train = Split(raw.x, y, rows["train"], divisor)
    for part in ("val", "test"):
        if rows[part] is not None:
            splits[part] = Split(raw.x, y, rows[part], divisor)
    for part, other in extra.items():
        yo = None if y is None else _encode(other, task, classes)
        if task == REGRESSION and yo.shape[1] != n_outputs:
            raise DataError(f"{other.source}: {yo.shape[1]} target columns, the training data has {n_outputs}")
        if target_scale is not None:
            yo = (yo - target_mean) / target_scale
        splits[part] = Split(other.x, yo, None)

    return Dataset(
        train=train,
        val=splits["val"],
        test=splits["test"],
        task=task,
        classes=classes,
        feature_names=table.feature_names if table is not None else raw.feature_names,
        input_shape=input_shape,
        n_outputs=n_outputs,
        target_name=raw.target_name,
        source=source,
        table=table,
        target_mean=target_mean,
        target_scale=target_scale,
        missing=opts["missing"] if table is not None else None,
        ignored=list(raw.ignored),
        dropped=dropped,
        unknown=unknown,
        cache=(cache.describe() if cache is not None and cache.status else
               # an image folder mapped from its decode cache: the file, so a user can find (or delete) it
               raw.x.filename if divisor is not None and isinstance(raw.x, np.memmap) else None),
        parser=(fast_csv.describe(os.path.getsize(source)) if Path(source).suffix.lower() == ".csv"
                and not (cache is not None and cache.status == "hit") else None),
    )


# the class a latent plot gives an autoencoder's rows whose label cell is empty
MISSING_LABEL = "(missing)"


def _label_missing(raw: RawData) -> None:
    """An autoencoder trains on every row whatever its label (labels only colour its plots), so a
    missing label becomes a class of its own instead of dropping or refusing the row. Labels of
    numbers that are not all whole (a measurement, not classes) are left to data.missing."""
    y = raw.y
    if y.dtype.kind == "f":
        present = y[~raw.y_missing]
        if np.any(present != np.round(present)):
            return
        y = np.array([f"{v:.0f}" for v in np.nan_to_num(y)], dtype=str)
    raw.y = np.where(raw.y_missing, MISSING_LABEL, y)
    raw.y_missing = np.zeros(len(y), dtype=bool)


def _fractions(opts: dict, extra: dict) -> tuple[float, float]:
    """(data.val_split, data.test_split), 0 for a part that `extra` holds as its own file; their sum must be < 1."""
    val_fraction = 0.0 if "val" in extra else float(opts["val_split"])
    test_fraction = 0.0 if "test" in extra else float(opts["test_split"])
    if val_fraction + test_fraction >= 1:
        raise ConfigError(f"data.val_split + data.test_split must be < 1, got {val_fraction:g} + {test_fraction:g}")
    return val_fraction, test_fraction


def _unlabelled(raw: RawData, opts: dict, seed: int, source: str) -> Dataset:
    """Rows without targets (a .npy with no target_path, an .npz without y), split at random, for an autoencoder."""
    for key in ("val_path", "test_path"):
        if opts[key] is not None:
            raise ConfigError(f"data.{key}: unlabelled data is split with val_split and test_split only")
    if opts["shape"] is not None:
        raw.x = reshape_rows(raw.x, opts["shape"], raw.source)
    val_fraction, test_fraction = _fractions(opts, {})
    try:
        tr, va, te = split_indices(len(raw), None, val_fraction, test_fraction, stream(seed, _SPLIT_STREAM))
    except DataError as err:
        raise DataError(f"{raw.source}: {err}") from None
    shape = tuple(int(d) for d in raw.x.shape[1:])
    return Dataset(train=Split(raw.x, None, tr), val=Split(raw.x, None, va) if val_fraction > 0 else None,
                   test=Split(raw.x, None, te) if test_fraction > 0 else None, task="unlabelled", classes=None,
                   feature_names=raw.feature_names, input_shape=shape, n_outputs=int(np.prod(shape)),
                   target_name=None, source=source)


def _unknown_count(table: TableEncoder, raw: RawData, rows: np.ndarray) -> int:
    """Categorical cells of `rows` whose value the training rows never had."""
    count = 0
    for spec, col in zip(table.columns, raw.columns):
        if spec["kind"] == CATEGORICAL:
            values = col.values[rows][~col.missing[rows]]
            count += int((~np.isin(values, spec["categories"])).sum())
    return count
