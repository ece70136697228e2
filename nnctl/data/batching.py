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
    change xb in place, and may return soft targets (float (b, K)) in place of yb. In-memory
    splits are then prepared a group of batches ahead (`augment_group`), each still
    augmented by augment(step, ...) alone, in step order.

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
    group = augment_group(size, int(np.prod(sample_shape)) * dtype.itemsize) if augment is not None and not mapped else 1
    xbuf = np.empty((group * size,) + sample_shape, dtype=dtype)
    # np.take cannot write an int/bool source into a float buffer; gather into a buffer of
    # the source dtype, then cast-copy (both allocated once).
    raw = None if x.dtype == dtype else np.empty((size,) + sample_shape, dtype=x.dtype)
    ybuf = yraw = None
    if y is not None:
        ydtype = np.int64 if y.dtype.kind in "iub" and y.ndim == 1 else dtype
        ybuf = np.empty((group * size,) + y.shape[1:], dtype=ydtype)
        if y.dtype != ydtype:
            yraw = np.empty((size,) + y.shape[1:], dtype=y.dtype)

    stop = n - n % batch_size if drop_last else n
    reader = MappedRows.open(x) if mapped else None
    try:
        yield from _batches(x, y, rows, stop, batch_size, reader, xbuf, raw, ybuf, yraw, standardizer, augment,
                            split.divisor, group)
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


# Bytes of batches that augmented training prepares ahead (`augment_group`).
AHEAD_BYTES = 1 << 18


def augment_group(batch_size: int, sample_bytes: int) -> int:
    """How many batches augmented training prepares (gathers and augments) before yielding
    them: up to 32, within AHEAD_BYTES.

    Notes
    -----
    Run between two training steps, a table batch's augmentation (~15 NumPy calls) measured
    ~26 us against ~16 us run back to back: the step before has pushed its code and data out
    of the caches. Preparing a few batches in a row keeps them warm; each batch is still
    augmented by augment(step, ...) on its own rows, so the values are the same.
    """
    return max(1, min(32, AHEAD_BYTES // max(1, batch_size * sample_bytes)))


def _batches(x, y, rows, stop, batch_size, reader, xbuf, raw, ybuf, yraw, standardizer, augment, divisor, group=1):
    ready: list[tuple[int, np.ndarray, np.ndarray | None]] = []
    held: list[np.ndarray | None] = [None, None]      # slots for an augment that returns new arrays
    starts = range(0, stop, batch_size)
    for step, start in enumerate(starts):
        take = rows[start:start + batch_size]
        b = len(take)
        slot = (step % group) * batch_size
        xb = xbuf[slot:slot + b]
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
            yb = ybuf[slot:slot + b]
            _gather(y, take, yb, yraw)
        ready.append((step, xb, yb))
        if len(ready) < group and step + 1 < len(starts):
            continue
        if augment is not None:
            # the group's augmentations back to back (see augment_group)
            for i, (s, xb, yb) in enumerate(ready):
                xa, ya = augment(s, xb, yb)
                if group > 1:
                    # a returned array may be the augment's own buffer, rewritten by the next
                    # batch: keep a copy in this batch's slot
                    slot = (s % group) * batch_size
                    xa = _hold(held, 0, xa, xb, slot, group * batch_size)
                    ya = _hold(held, 1, ya, yb, slot, group * batch_size)
                ready[i] = (s, xa, ya)
        for _, xb, yb in ready:
            yield xb, yb
        ready.clear()


def _hold(held: list, i: int, a: np.ndarray | None, ours: np.ndarray | None, slot: int, rows: int):
    """a itself if it is our slot's view (or None), else a copied into slot rows of held[i]
    (allocated once, `rows` rows)."""
    if a is None or a is ours:
        return a
    buf = held[i]
    if buf is None or buf.shape[1:] != a.shape[1:] or buf.dtype != a.dtype:
        buf = held[i] = np.empty((rows,) + a.shape[1:], a.dtype)
    out = buf[slot:slot + len(a)]
    np.copyto(out, a)
    return out
