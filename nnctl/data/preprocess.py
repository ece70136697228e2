"""Everything fitted on the training split that turns raw data into model inputs and targets.

One `Preprocessor` holds, from the training rows only:
- the table encoding of a CSV (`TableEncoder`): which columns are numeric or categorical,
  each categorical column's vocabulary (one-hot with an extra "unknown" slot), and the
  fill values of `data.missing: impute` (numbers: the mean; categories: the most frequent);
- the feature standardization (`Standardizer`; one-hot columns are left as 0/1);
- the regression target's mean and scale (`data.standardize_target`).
Training, eval and predict all go through it, and it round-trips through a checkpoint as
plain arrays plus JSON metadata (`to_arrays`/`to_meta`, `from_checkpoint`), never pickled.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnctl.data.files import (CATEGORICAL, NUMERIC, Column, RawData, check_features, open_csv, parse_csv,
                              parsed_columns, read_csv, read_csv_columns, read_npz_data, suffix_of, _npy,
                              _target_column)
from nnctl.data.standardize import Standardizer
from nnctl.errors import DataError

UNKNOWN = "<unknown>"
UNSEEN = "<unseen>"
MISSING_POLICIES = ("error", "drop", "impute")


def unseen(categories: list[str]) -> str:
    """A text value not in `categories`: one that encodes to the unknown slot."""
    value = UNSEEN
    while value in categories:
        value += "_"
    return value


class TableEncoder:
    """CSV columns -> float64 features (N, F): numbers as they are, categories one-hot.

    columns: one dict per raw column, in feature order:
        {"name": str, "kind": "numeric", "fill": float | None}
        {"name": str, "kind": "categorical", "categories": [str, ...], "fill": str | None}
    A categorical column takes len(categories) + 1 features: one per category, then one
    "unknown" slot for a value the training split never had. `fill` replaces a missing
    cell (None: a missing cell is an error).
    """

    def __init__(self, columns: list[dict[str, Any]], missing: str = "error"):
        self.columns = columns
        self.missing = missing

    @classmethod
    def fit(cls, columns: list[Column], rows: np.ndarray, missing: str, source: str) -> "TableEncoder":
        """Vocabularies and fill values from the training rows `rows` of `columns`."""
        out = []
        for col in columns:
            if col.kind == NUMERIC:
                fill = None
                if missing == "impute":   # only then are the training values needed
                    values = col.values[rows][~col.missing[rows]]
                    if len(values) == 0:
                        raise DataError(f"{source}: column '{col.name}' has no value in the training split "
                                        "to impute from")
                    # in float64 whatever the parsed dtype: the mean of many float32 values drifts
                    fill = float(values.mean(dtype=np.float64))
                out.append({"name": col.name, "kind": NUMERIC, "fill": fill})
            else:
                values = col.values[rows][~col.missing[rows]]
                cats, counts = np.unique(values, return_counts=True)
                if len(cats) == 0:
                    raise DataError(f"{source}: column '{col.name}' has no value in the training split")
                fill = str(cats[int(np.argmax(counts))]) if missing == "impute" else None
                out.append({"name": col.name, "kind": CATEGORICAL, "categories": [str(c) for c in cats],
                            "fill": fill})
        return cls(out, missing)

    @classmethod
    def numeric(cls, names: list[str]) -> "TableEncoder":
        """All-numeric columns without fills: what a checkpoint from before categorical support means."""
        return cls([{"name": n, "kind": NUMERIC, "fill": None} for n in names], "error")

    @property
    def kinds(self) -> list[tuple[str, str]]:
        return [(c["name"], c["kind"]) for c in self.columns]

    @property
    def feature_names(self) -> list[str]:
        """Encoded feature names: a numeric column's name; `col=value` per category, then `col=<unknown>`."""
        names = []
        for c in self.columns:
            if c["kind"] == NUMERIC:
                names.append(c["name"])
            else:
                names += [f"{c['name']}={v}" for v in c["categories"]] + [f"{c['name']}={UNKNOWN}"]
        return names

    def onehot_mask(self) -> np.ndarray:
        """bool (F,): True for the one-hot features (left unstandardized)."""
        mask = []
        for c in self.columns:
            mask += [False] if c["kind"] == NUMERIC else [True] * (len(c["categories"]) + 1)
        return np.asarray(mask, dtype=bool)

    @property
    def is_plain(self) -> bool:
        return all(c["kind"] == NUMERIC and c["fill"] is None for c in self.columns)

    def inverse(self, x: np.ndarray, unknown: bool = False) -> list[np.ndarray]:
        """Encoded rows x (N, F) back to one array per column: numbers as they are (views of x),
        a category (str) as the most likely of its one-hot slots.

        unknown=False (an autoencoder's decoded rows, in the file's terms): the unknown slot is
        never chosen, it stands for no value a row could be written with. unknown=True (the
        export's parity rows): it competes too and decodes as `unseen(categories)`, so that
        `transform` of the result gives a one-hot x back exactly.
        """
        out, k = [], 0
        for c in self.columns:
            if c["kind"] == NUMERIC:
                out.append(x[:, k])
                k += 1
            else:
                cats = c["categories"]
                values = cats + [unseen(cats)] if unknown else cats
                out.append(np.asarray(values, dtype=str)[np.argmax(x[:, k:k + len(values)], axis=1)])
                k += len(cats) + 1
        return out

    def transform(self, columns: list[Column], source: str, lines) -> tuple[np.ndarray, int]:
        """(x float64 (N, F), number of categorical cells mapped to "unknown").

        columns: Columns with the encoder's names and kinds, in its order.
        """
        n = len(columns[0].values) if columns else 0
        width = len(self.feature_names)
        x = np.zeros((n, width), dtype=np.float64)
        unknown = 0
        k = 0
        for spec, col in zip(self.columns, columns):
            miss = col.missing
            if miss.any() and spec["fill"] is None:
                i = int(np.argmax(miss))
                where = f"{source} row {int(lines[i])}" if lines is not None else f"{source}: sample {i}"
                raise DataError(f"{where}, column '{spec['name']}': missing value ({int(miss.sum())} in this "
                                f"column); the model was trained with data.missing: {self.missing}, so it has "
                                "no fill value (use data.missing: impute)")
            if spec["kind"] == NUMERIC:
                x[:, k] = np.where(miss, spec["fill"] if spec["fill"] is not None else 0.0, col.values)
                k += 1
                continue
            cats = spec["categories"]
            values = np.where(miss, spec["fill"] if spec["fill"] is not None else "", col.values)
            # sorted vocabulary: searchsorted finds each value's slot; a miss is "unknown"
            table = np.asarray(cats, dtype=str)
            pos = np.clip(np.searchsorted(table, values), 0, len(cats) - 1)
            found = table[pos] == values
            slot = np.where(found, pos, len(cats))
            unknown += int((~found).sum())
            x[np.arange(n), k + slot] = 1.0
            k += len(cats) + 1
        return x, unknown

    def to_meta(self) -> dict[str, Any]:
        return {"columns": self.columns, "missing": self.missing}

    @classmethod
    def from_meta(cls, meta: Any, where: str) -> "TableEncoder":
        """Checked: any malformed entry is a DataError naming `where`."""
        def bad(why: str) -> DataError:
            return DataError(f"{where}: metadata field preprocess.table {why}")
        if not isinstance(meta, dict) or not isinstance(meta.get("columns"), list):
            raise bad("must be a mapping with a list of columns")
        missing = meta.get("missing", "error")
        if missing not in MISSING_POLICIES:
            raise bad(f"has an unknown missing policy {missing!r}")
        columns = []
        for c in meta["columns"]:
            if not isinstance(c, dict) or not isinstance(c.get("name"), str) or c.get("kind") not in (NUMERIC, CATEGORICAL):
                raise bad("has a column that is not {name, kind}")
            fill = c.get("fill")
            if c["kind"] == NUMERIC:
                if fill is not None and (isinstance(fill, bool) or not isinstance(fill, (int, float))
                                         or not math.isfinite(fill)):
                    raise bad(f"column '{c['name']}' has a fill that is not a finite number")
                columns.append({"name": c["name"], "kind": NUMERIC, "fill": None if fill is None else float(fill)})
            else:
                cats = c.get("categories")
                if not isinstance(cats, list) or not cats or not all(isinstance(v, str) for v in cats) \
                        or cats != sorted(set(cats)):
                    raise bad(f"column '{c['name']}' needs a sorted list of distinct category names")
                if fill is not None and not isinstance(fill, str):
                    raise bad(f"column '{c['name']}' has a fill that is not text")
                columns.append({"name": c["name"], "kind": CATEGORICAL, "categories": cats, "fill": fill})
        return cls(columns, missing)


@dataclass
class Preprocessor:
    """What the training split fitted (see the module docstring); any part may be absent.

    target_mean, target_scale: float64 (k,) of a standardized regression target.
    """

    table: TableEncoder | None = None
    standardizer: Standardizer | None = None
    target_mean: np.ndarray | None = None
    target_scale: np.ndarray | None = None

    def scale_targets(self, y: np.ndarray) -> np.ndarray:
        """Original-unit regression targets (N, k) -> the scaled units the loss sees."""
        if self.target_scale is None:
            return y
        return (np.asarray(y, dtype=np.float64) - self.target_mean) / self.target_scale

    def unscale(self, z: np.ndarray) -> np.ndarray:
        """Model outputs (N, k) in scaled units -> float64 in the target's original units."""
        z = np.asarray(z, dtype=np.float64).reshape(len(z), -1)
        if self.target_scale is None:
            return z
        return z * self.target_scale + self.target_mean

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Checkpoint arrays: standardize/mean|scale, target/mean|scale (each when present)."""
        arrays: dict[str, np.ndarray] = {}
        if self.standardizer is not None:
            arrays["standardize/mean"] = self.standardizer.mean
            arrays["standardize/scale"] = self.standardizer.scale
        if self.target_scale is not None:
            arrays["target/mean"] = self.target_mean
            arrays["target/scale"] = self.target_scale
        return arrays

    def to_meta(self) -> dict[str, Any]:
        """Checkpoint metadata `preprocess`: the table encoding (JSON: names, vocabularies, fills)."""
        return {"table": None if self.table is None else self.table.to_meta()}

    @classmethod
    def from_checkpoint(cls, meta: dict[str, Any], target: dict[str, np.ndarray], where: str,
                        n_outputs: int, standardizer: Standardizer | None) -> "Preprocessor":
        """The stored preprocessing; a checkpoint without `preprocess`/`target/` (older ones) has none."""
        pre = meta.get("preprocess")
        table = None
        if pre is not None:
            if not isinstance(pre, dict):
                raise DataError(f"{where}: metadata field preprocess must be a mapping")
            if pre.get("table") is not None:
                table = TableEncoder.from_meta(pre["table"], where)
        mean = scale = None
        if target:
            if set(target) != {"mean", "scale"}:
                raise DataError(f"{where}: target/ must hold exactly mean and scale")
            mean = np.asarray(target["mean"], dtype=np.float64).reshape(-1)
            scale = np.asarray(target["scale"], dtype=np.float64).reshape(-1)
            if mean.shape != (n_outputs,) or scale.shape != (n_outputs,):
                raise DataError(f"{where}: target/mean and target/scale must have {n_outputs} values")
            if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(scale)) and np.all(scale > 0)):
                raise DataError(f"{where}: target/scale must be finite and > 0, target/mean finite")
        return cls(table=table, standardizer=standardizer, target_mean=mean, target_scale=scale)


def fit_target_scale(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std per target column of training targets (N, k); a constant column gets scale 1."""
    y = np.asarray(y, dtype=np.float64)
    mean = y.mean(axis=0)
    scale = y.std(axis=0)
    scale[(scale == 0) | (scale <= 10 * np.finfo(np.float64).eps * np.abs(mean))] = 1.0
    return mean, scale


# ---------------------------------------------------------------------------- missing values

def _cells(raw: RawData, mask_rows: list[tuple[int, str]], limit: int = 2) -> str:
    return "; ".join(f"{raw.source} row {int(raw.lines[i])}, column '{c}'" for i, c in mask_rows[:limit])


def handle_missing(raw: RawData, policy: str) -> dict[str, int]:
    """Apply `data.missing` to a CSV's rows in place (before any split); returns the rows dropped.

    error: any missing cell is an error naming the count and the first cells;
    drop: rows with a missing feature or target are removed;
    impute: rows with a missing target are removed (a target is never imputed); missing
    features are filled later from the training split (TableEncoder.fit).
    """
    if raw.columns is None:
        return {}
    n = len(raw.lines)   # raw.y is None for an autoencoder's table without a target
    target_missing = raw.y_missing if raw.y_missing is not None else np.zeros(n, dtype=bool)
    feature_missing = np.zeros(n, dtype=bool)
    for c in raw.columns:
        feature_missing |= c.missing
    if policy == "error":
        if not (target_missing.any() or feature_missing.any()):
            return {}
        cells = []
        for i in np.flatnonzero(target_missing | feature_missing)[:2]:
            for name in [raw.target_name] * bool(target_missing[i]) + [c.name for c in raw.columns if c.missing[i]]:
                cells.append((int(i), name))
        total = int(target_missing.sum()) + sum(int(c.missing.sum()) for c in raw.columns)
        raise DataError(f"{raw.source}: {total} missing value{'s' * (total != 1)} (empty, NA or NaN), first at "
                        f"{_cells(raw, cells)}; set data.missing: drop (remove those rows) or impute "
                        "(fill from the training split)")
    drop = target_missing | (feature_missing if policy == "drop" else np.zeros(n, dtype=bool))
    dropped = {"target": int(target_missing.sum())}
    if policy == "drop":
        dropped["features"] = int((feature_missing & ~target_missing).sum())
    if drop.any():
        keep = np.flatnonzero(~drop)
        if len(keep) == 0:
            raise DataError(f"{raw.source}: every row has a missing value; nothing is left to train on")
        raw.columns = [c.take(keep) for c in raw.columns]
        if raw.y is not None:
            raw.y, raw.y_missing = raw.y[keep], raw.y_missing[keep]
        raw.lines = raw.lines[keep]
    return dropped


# ---------------------------------------------------------------------------- new files (eval, predict)

def _csv_features(path: Path, table: TableEncoder, target_name: str | None, dtype,
                  notes: list[str] | None) -> tuple[np.ndarray, np.ndarray | None]:
    """A CSV's features encoded by `table` and its target column (None if it has none), by the block parser."""
    name = path.name

    def check(names: list[str]) -> None:
        for n, _ in table.kinds:
            if n not in names:
                raise DataError(f"{name}: missing feature column '{n}'")

    blocks, first_header, _ = open_csv(path, name)   # the header decides whether there is a target
    blocks.close()
    target = target_name if target_name in first_header else None
    cats = [n for n, kind in table.kinds if kind == CATEGORICAL]
    parsed = parse_csv(path, name, features=[n for n, _ in table.kinds], target=target, categorical=cats,
                       dtype=dtype, check=check)
    columns = parsed_columns(table.kinds, parsed.numbers, parsed.numeric, parsed.text)
    x, unknown = table.transform(columns, name, parsed.lines)
    if unknown and notes is not None:
        notes.append(f"{name}: {unknown} categorical value{'s' * (unknown != 1)} the training split never "
                     "had, encoded as 'unknown'")
    y = None
    if target is not None:
        y, missing = parsed.target_column(target)
        if missing.any():
            i = int(np.argmax(missing))
            raise DataError(f"{name} row {parsed.lines[i]}, column '{target_name}': missing target value")
    return x, y


def load_features(path: Path, feature_names: list[str] | None, input_shape, target_name: str | None,
                  table: TableEncoder | None = None, dtype=np.float32, notes: list[str] | None = None
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Features of a new file for predict/eval, shaped like the training samples.

    Returns x (N, *input_shape) and the raw target column (N,)/(N, k) if the file has one
    (a CSV column named `target_name`, or "y" in an .npz), else None. A .npy file carries
    features only (memory-mapped); give an .npz or a CSV to evaluate with targets.
    CSV columns are matched by name and encoded by `table` (default: numeric columns
    `feature_names`); other columns are ignored. Values must be finite in `dtype`.
    notes: receives a line for categorical values the training split never had.
    """
    path = Path(path)
    name = path.name
    suffix = suffix_of(path, name)
    y = None
    if suffix == ".csv" and (table is not None or feature_names is not None):
        x, y = _csv_features(path, table or TableEncoder.numeric(feature_names), target_name, dtype, notes)
    elif suffix == ".csv":
        # a model from before feature names were kept: the numeric columns, read as text first
        csv = read_csv(path)
        if table is None:
            if feature_names is None:
                t = csv.header.index(target_name) if target_name in csv.header else None
                from nnctl.data.files import _is_text_column
                feature_names = [h for j, h in enumerate(csv.header) if j != t and not _is_text_column(csv, j)]
                if not feature_names:
                    raise DataError(f"{name}: no numeric feature columns")
            table = TableEncoder.numeric(feature_names)
        columns = read_csv_columns(csv, table.kinds, dtype)
        x, unknown = table.transform(columns, name, csv.lines)
        if unknown and notes is not None:
            notes.append(f"{name}: {unknown} categorical value{'s' * (unknown != 1)} the training split never "
                         "had, encoded as 'unknown'")
        if target_name in csv.header:
            y, missing = _target_column(csv, csv.header.index(target_name), dtype)
            if missing.any():
                i = int(np.argmax(missing))
                raise DataError(f"{name} row {csv.lines[i]}, column '{target_name}': missing target value")
    elif suffix == ".npy":
        x = check_features(_npy(path, name, mmap=True), name, dtype)
    else:
        raw = read_npz_data(path, need_y=False, dtype=dtype)
        x, y = raw.x, raw.y
    if input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
        if tuple(x.shape[1:]) != shape:
            have, want = math.prod(x.shape[1:]), math.prod(shape)
            if have != want:
                raise DataError(
                    f"{name}: each sample has {have} values (shape {list(x.shape[1:])}), "
                    f"the model expects {want} (input shape {list(shape)})"
                )
            x = x.reshape((len(x),) + shape)
    return x, y

