"""Mini-batches gathered into buffers allocated once per epoch, cast and standardized in place."""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from nnctl.data.files import MappedRows
from nnctl.data.splits import Split
from nnctl.data.standardize import Standardizer


def iterate_batches(split: Split, batch_size: int, rng: np.random.Generator | None, dtype,
                    standardizer: Standardizer | None = None, drop_last: bool = False,
                    augment: Callable | None = None,
                    ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """One pass over a split in mini-batches.

    Yields (xb, yb): xb (b, *sample_shape) in `dtype`, standardized if a standardizer is
    given; yb int64 (b,) for classification, (b, k) in `dtype` for regression, or None for
    an unlabelled split. b = batch_size except the last batch, which is smaller unless
    drop_last.

    rng=None keeps the split's row order (evaluation); with an rng, each call draws a fresh
    permutation of the split's rows (one epoch).

    augment: for training batches only, `augment(step, xb, yb) -> (xb, yb)` with step the
    batch's index in this pass (Augmenter.for_epoch); it runs after standardization, may
    change xb in place, and may return soft targets (float (b, K)) in place of yb.

    The batches are views of buffers allocated once per call, so a caller must be done
    with a batch before asking for the next one (copy it to keep it). The last partial
    batch is a view of the first rows of the same buffers.

    Notes
    -----
    For a memory-mapped x the rows of each batch are read in increasing file order (the
    batch's *membership* is still random): reads stay sequential on disk, and since a
    batch's loss and gradient are means over its samples, their order inside the batch
    does not change training. In-memory arrays keep the shuffled order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dtype = np.dtype(dtype)
    rows = split.rows()
    if rng is not None:
        rows = rows[rng.permutation(len(rows))]
    n = len(rows)
    if n == 0:
        return
    size = min(batch_size, n)
    if drop_last and n < batch_size:
        return
    x, y = split.x, split.y
    mapped = isinstance(x, np.memmap)
    sample_shape = x.shape[1:]
    xbuf = np.empty((size,) + sample_shape, dtype=dtype)
    # np.take cannot write an int/bool source into a float buffer; gather into a buffer of
    # the source dtype, then cast-copy (both allocated once).
    raw = None if x.dtype == dtype else np.empty((size,) + sample_shape, dtype=x.dtype)
    ybuf = yraw = None
    if y is not None:
        ydtype = np.int64 if y.dtype.kind in "iub" and y.ndim == 1 else dtype
        ybuf = np.empty((size,) + y.shape[1:], dtype=ydtype)
        if y.dtype != ydtype:
            yraw = np.empty((size,) + y.shape[1:], dtype=y.dtype)

    stop = n - n % batch_size if drop_last else n
    reader = MappedRows.open(x) if mapped else None
    try:
        yield from _batches(x, y, rows, stop, batch_size, reader, xbuf, raw, ybuf, yraw, standardizer, augment,
                            split.divisor)
    finally:
        if reader is not None:
            reader.close()


def _gather(src: np.ndarray, take: np.ndarray, out: np.ndarray, raw: np.ndarray | None) -> None:
    """out[:] = src[take], through `raw` (a buffer in src's dtype) when out has another dtype.

    mode="clip": the rows are valid by construction, and mode="raise" would gather through a
    temporary copy instead of writing straight into the buffer. The ndarray method, not
    np.take: its Python wrapper costs ~0.5 us a call, a share of a small MLP's ~100 us step.
    """
    if raw is None:
        src.take(take, 0, out, "clip")
    else:
        raw = raw[:len(take)]
        src.take(take, 0, raw, "clip")
        np.copyto(out, raw, casting="unsafe")


def _batches(x, y, rows, stop, batch_size, reader, xbuf, raw, ybuf, yraw, standardizer, augment, divisor):
    for step, start in enumerate(range(0, stop, batch_size)):
        take = rows[start:start + batch_size]
        b = len(take)
        xb = xbuf[:b]
        if reader is not None:
            # a memmap: the rows in file order (see iterate_batches; y below follows the same
            # order), read straight from the file (see MappedRows)
            take = np.sort(take)
            reader.read(take, xb if raw is None else raw[:b])
            if raw is not None:
                np.copyto(xb, raw[:b], casting="unsafe")
        else:
            _gather(x, take, xb, raw)
        if divisor is not None:
            np.divide(xb, divisor, out=xb)   # uint8 pixels -> [0, 1] in the batch's dtype
        if standardizer is not None:
            standardizer.transform(xb, out=xb)
        yb = None
        if ybuf is not None:
            yb = ybuf[:b]
            _gather(y, take, yb, yraw)
        if augment is not None:
            xb, yb = augment(step, xb, yb)
        yield xb, yb
