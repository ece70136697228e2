"""Targets: inferring the task, turning raw labels into class indices, checking regression values.

Raw targets arrive as whatever the file held: a numeric array (integers or floats, from
CSV cells that all parsed as numbers, or from .npy/.npz), a string array, or a bool array.
Everything a model sees is either int64 class indices of shape (N,) or float (N, k).
"""
from __future__ import annotations

import numpy as np

from nnctl.errors import DataError, quoted

CLASSIFICATION = "classification"
REGRESSION = "regression"
TASKS = (CLASSIFICATION, REGRESSION)

# Inferring "classification" from integer targets: at most this many distinct values.
MAX_INFERRED_CLASSES = 50


def _prefix(source: str | None) -> str:
    return f"{source}: " if source else ""


def _at(source: str | None, i: int, lines=None, column: str | None = None) -> str:
    """Where sample i came from: "data.csv row 5, column 'y'" for CSV, "y.npy: sample 5" else."""
    if lines is not None:
        col = f", column '{column}'" if column else ""
        return f"{source or '<data>'} row {int(lines[i])}{col}"
    return f"{_prefix(source)}sample {i}"


def _is_text(y: np.ndarray) -> bool:
    return y.dtype.kind in "USO"


def _integer_valued(y: np.ndarray) -> bool:
    if y.dtype.kind in "iub":
        return True
    return bool(np.all(np.isfinite(y)) and np.all(y == np.round(y)))


def infer_task(raw_y: np.ndarray) -> str:
    """The task a target implies when the spec does not say.

    raw_y: (N,) or (N, k) raw target values.

    Notes
    -----
    - strings or bools -> classification;
    - more than one target column -> regression;
    - floats with any non-integer value -> regression;
    - integer values (ints, or floats like 2.0) -> classification if there are at most
      50 distinct values and at least one value repeats (some class has two samples);
      otherwise regression (e.g. a count or a price that happens to be whole).
    An explicit `task` in the spec always wins over this guess.
    """
    y = np.asarray(raw_y)
    if _is_text(y) or y.dtype.kind == "b":
        return CLASSIFICATION
    if y.ndim > 1 and int(np.prod(y.shape[1:])) > 1:
        return REGRESSION
    y = y.reshape(-1)
    if y.dtype.kind == "f" and not _integer_valued(y):
        return REGRESSION
    n_unique = len(np.unique(y))
    if n_unique <= MAX_INFERRED_CLASSES and n_unique < len(y):
        return CLASSIFICATION
    return REGRESSION


def _python_value(v):
    """A numpy scalar as the JSON-able Python value a class label is stored as."""
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer, int)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return int(f) if f.is_integer() else f
    return str(v)


def _label_column(raw_y: np.ndarray, source: str | None, lines=None, column=None) -> np.ndarray:
    y = np.asarray(raw_y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(
            f"{_prefix(source)}a classification target must be one label per sample, "
            f"got shape {tuple(y.shape)}"
        )
    if y.dtype.kind == "c":
        raise DataError(f"{_prefix(source)}complex-valued targets are not supported")
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(
                f"{_at(source, i, lines, column)}: {quoted(_python_value(y[i]))} is not a class label; "
                "classification needs strings or whole numbers "
                "(set data.task: regression for a numeric target)"
            )
    return y


def classes_of(raw_y: np.ndarray, source: str | None = None, *, lines=None,
               column: str | None = None) -> list:
    """Sorted distinct labels of a classification target, as JSON-able Python values.

    raw_y: (N,) labels (strings, bools, ints or whole-number floats). `lines`/`column`
    (CSV line numbers per sample, target column name) make errors point at the cell.
    """
    y = _label_column(raw_y, source, lines, column)
    return [_python_value(v) for v in np.unique(y)]


def label_key(v) -> str:
    """A label's text, so "3" from one file matches 3 or 3.0 from another."""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return str(int(f)) if f.is_integer() else repr(f)
    return str(v).strip()


def encode_labels(raw_y, classes: list, source: str | None = None, *, lines=None,
                  column: str | None = None) -> np.ndarray:
    """Raw labels -> int64 class indices (N,), the index into `classes`.

    An unseen label is a DataError naming it, where it is, and the known classes;
    `source` (a file name) and, for CSV, `lines`/`column` locate it.
    """
    y = _label_column(np.asarray(raw_y), source, lines, column)
    numeric_classes = all(
        isinstance(c, (int, float)) and not isinstance(c, bool) for c in classes
    )
    if numeric_classes and y.dtype.kind in "iuf":
        table = np.asarray(classes, dtype=np.float64)
        order = np.argsort(table, kind="stable")
        sorted_table = table[order]
        values = y.astype(np.float64)
        pos = np.clip(np.searchsorted(sorted_table, values), 0, len(sorted_table) - 1)
        found = sorted_table[pos] == values
        if not found.all():
            i = int(np.argmin(found))
            _unseen(y[i], classes, _at(source, i, lines, column))
        return order[pos].astype(np.int64)
    lookup = {label_key(c): i for i, c in enumerate(classes)}
    out = np.empty(len(y), dtype=np.int64)
    for i, v in enumerate(y.tolist()):
        k = lookup.get(label_key(v))
        if k is None:
            _unseen(v, classes, _at(source, i, lines, column))
        out[i] = k
    return out


def _class_list(classes: list) -> str:
    """The first 20 classes, for a message naming what a label could have been."""
    return ", ".join(str(c) for c in classes[:20]) + (", ..." if len(classes) > 20 else "")


def _unseen(value, classes: list, where: str):
    raise DataError(
        f"{where}: label {quoted(_python_value(value))} is not one of the "
        f"{len(classes)} training classes: {_class_list(classes)}"
    )


def regression_targets(raw_y: np.ndarray, source: str | None = None, *, lines=None,
                       column: str | None = None) -> np.ndarray:
    """Raw numeric targets -> float64 (N, k); text or non-finite values are a DataError."""
    y = np.asarray(raw_y)
    if _is_text(y):
        flat = y.reshape(len(y), -1)
        i = next(r for r in range(len(flat)) if not all(_parses(v) for v in flat[r].tolist()))
        bad = next(v for v in flat[i].tolist() if not _parses(v))
        raise DataError(
            f"{_at(source, i, lines, column)}: not a number: {quoted(str(bad))} "
            "(a regression target must be numeric; set data.task: classification for labels)"
        )
    if y.dtype.kind not in "iufb":
        raise DataError(f"{_prefix(source)}a regression target must be numeric, got dtype {y.dtype}")
    y = y.reshape(-1, 1) if y.ndim == 1 else y.reshape(len(y), -1)
    y = y.astype(np.float64, copy=False)
    bad = ~np.isfinite(y)
    if bad.any():
        i, j = np.unravel_index(int(np.argmax(bad)), bad.shape)
        raise DataError(f"{_at(source, int(i), lines, column)}: target is {y[i, j]}; targets must be finite")
    return y


def _parses(v) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def encode_targets(raw_y, task: str, classes: list | None, source: str | None = None, *,
                   lines=None, column: str | None = None) -> np.ndarray:
    """Raw targets -> what a loss takes: int64 (N,) indices, or float64 (N, k) values."""
    if task == CLASSIFICATION:
        return encode_labels(raw_y, classes or [], source, lines=lines, column=column)
    return regression_targets(np.asarray(raw_y), source, lines=lines, column=column)


def merge_classes(lists: list[list]) -> list:
    """Sorted union of several files' class lists.

    Numbers (or bools) stay as they are; if any file has text labels, all become text
    (so "3" in one file and 3 in another are one class).
    """
    values = [v for lst in lists for v in lst]
    if all(isinstance(v, bool) for v in values) or all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return sorted(set(values))
    return sorted({label_key(v) for v in values})


# YAML 1.1 reads the keys yes/no, on/off, true/false as booleans: a weight keyed `yes:` is
# meant for the class spelled yes (or true, on, y) when the labels are text.
_BOOL_WORDS = {True: ("true", "yes", "on", "y"), False: ("false", "no", "off", "n")}


def weights_by_label(weights: dict, classes: list) -> list[float]:
    """A mapping label -> weight as one weight per class (in `classes` order); classes not named weigh 1.

    Keys match labels by their text (3, 3.0 and "3" are one label); a boolean key also matches
    a text class spelled like it (yes/no, true/false, on/off, y/n, any case). A key that names
    no class is a DataError naming it and the known classes.
    """
    lookup = {label_key(c): i for i, c in enumerate(classes)}
    out = [1.0] * len(classes)
    for key, w in weights.items():
        i = lookup.get(label_key(key))
        if i is None and isinstance(key, bool):
            words = [j for j, c in enumerate(classes) if str(c).strip().lower() in _BOOL_WORDS[key]]
            i = words[0] if len(words) == 1 else None
        if i is None:
            note = " (YAML reads unquoted yes/no/on/off as true/false)" if isinstance(key, bool) else ""
            raise DataError(f"no class {quoted(_python_value(key))}{note}; the {len(classes)} classes are: "
                            f"{_class_list(classes)}")
        out[i] = float(w)
    return out
