"""Seeded train/val/test splits as index arrays, stratified by class for classification."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nnctl.errors import DataError


@dataclass
class Split:
    """One split: some rows of a (possibly memory-mapped) array.

    x: (N_total, *feature_shape) raw features, not standardized; shared between the splits
       cut from one file, so it is never copied.
    y: classification int64 (N_total,); regression float (N_total, k); None when unlabelled.
    idx: int64 (n,) sorted row indices into x/y for this split; None means all rows.
    divisor: x holds integers standing for x / divisor (an image folder's uint8 pixels, 255),
       so a large folder stays a uint8 memmap and only batches become floats; None: x as is.
    """

    x: np.ndarray
    y: np.ndarray | None
    idx: np.ndarray | None = None
    divisor: float | None = None

    def __len__(self) -> int:
        return len(self.x) if self.idx is None else len(self.idx)

    def rows(self) -> np.ndarray:
        """int64 (n,): the split's row indices into x/y."""
        return np.arange(len(self.x), dtype=np.int64) if self.idx is None else self.idx

    def features(self) -> np.ndarray:
        """The split's rows of x, gathered, as values (divided by `divisor` when set)."""
        x = np.take(self.x, self.rows(), axis=0)
        return x if self.divisor is None else x.astype(np.float32) / np.float32(self.divisor)

    def targets(self) -> np.ndarray | None:
        """The split's targets (n,) or (n, k), gathered (targets are small)."""
        if self.y is None:
            return None
        return self.y if self.idx is None else self.y[self.idx]


def split_size(fraction: float, n: int, which: str) -> int:
    """Rows a split of `fraction` gets out of n: floor(fraction * n); empty when > 0 is an error."""
    if fraction <= 0:
        return 0
    # The tiny slack keeps e.g. 0.29 * 100 = 28.999999999999996 from losing a row.
    size = math.floor(fraction * n + 1e-9)
    if size == 0:
        raise DataError(
            f"{which} split is empty: {fraction:g} of {n} rows; use a larger {which}_split"
        )
    return size


def _allocate(total: int, ideal: np.ndarray, cap: np.ndarray,
              already: np.ndarray | None = None) -> np.ndarray:
    """Integer counts per class summing to `total`, each <= cap, as close to `ideal` as possible.

    Largest-remainder rounding: floor first, then one more to the classes with the
    largest fractional parts; ties go to the class with fewer rows `already` held out
    (so val and test do not both round up the same class), then to the lower index.
    """
    counts = np.minimum(np.floor(ideal + 1e-9).astype(np.int64), cap)
    left = total - int(counts.sum())
    if already is None:
        already = np.zeros(len(ideal), dtype=np.int64)
    order = np.lexsort((np.arange(len(ideal)), already, -(ideal - np.floor(ideal + 1e-9))))
    while left > 0:
        progressed = False
        for c in order:
            if left == 0:
                break
            if counts[c] < cap[c]:
                counts[c] += 1
                left -= 1
                progressed = True
        if not progressed:
            break
    return counts


def _ensure_each_class(counts: np.ndarray, spare: np.ndarray) -> None:
    """Give every class at least one row in this split where possible, keeping the total.

    spare[c]: rows class c could still give this split without emptying train. A class
    with none here takes a row from the class that has the most (if it has two or more).
    """
    for c in np.flatnonzero(counts == 0):
        if spare[c] <= 0:
            continue
        donor = int(np.argmax(counts))
        if counts[donor] < 2:
            return
        counts[donor] -= 1
        counts[c] += 1
        spare[c] -= 1
        spare[donor] += 1


def split_indices(n: int, labels: np.ndarray | None, val_fraction: float, test_fraction: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint sorted int64 index arrays (train, val, test) covering range(n).

    labels: int64 (n,) class indices to stratify by, or None (plain random split).
    Sizes: floor(fraction * n) for val and test; train gets the rest.

    Notes
    -----
    Stratified: each class is split in proportion (largest-remainder rounding so the split
    sizes are exact), train keeps at least one row of every class that has one, and every
    class gets at least one val/test row when it has rows to spare. The result depends only
    on (n, labels, fractions, rng's state), so the same seed rebuilds the same splits.
    """
    n_val = split_size(val_fraction, n, "val")
    n_test = split_size(test_fraction, n, "test")
    if n_val + n_test >= n:
        raise DataError(
            f"train split is empty: val {n_val} + test {n_test} rows leave none of {n}; "
            "use smaller val_split/test_split"
        )
    if labels is None:
        perm = rng.permutation(n)
        test, val, train = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
        return tuple(np.sort(a).astype(np.int64) for a in (train, val, test))

    labels = np.asarray(labels)
    k = int(labels.max()) + 1 if len(labels) else 0
    members = [np.flatnonzero(labels == c) for c in range(k)]
    size = np.array([len(m) for m in members], dtype=np.int64)
    # Train keeps one row of every class that has one.
    cap = np.maximum(size - 1, 0)
    test_c = _allocate(n_test, test_fraction * size, cap)
    _ensure_each_class(test_c, cap - test_c - (size > 2))
    cap_val = cap - test_c
    val_c = _allocate(n_val, val_fraction * size, cap_val, already=test_c)
    _ensure_each_class(val_c, cap_val - val_c)
    for which, want, got in (("val", n_val, val_c), ("test", n_test, test_c)):
        if want > 0 and got.sum() == 0:
            raise DataError(
                f"{which} split is empty: no class has a row to spare once train keeps one of each "
                f"({n} rows, {k} classes)"
            )
    parts: list[list[np.ndarray]] = [[], [], []]
    for c in range(k):
        perm = rng.permutation(members[c])
        a, b = test_c[c], test_c[c] + val_c[c]
        parts[2].append(perm[:a])
        parts[1].append(perm[a:b])
        parts[0].append(perm[b:])
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) for p in parts)
