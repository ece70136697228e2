"""Samples as arrays, CSV or a PNG grid of images: what `nnctl sample` and `nnctl decode` write."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from nnctl.errors import NnctlError
from nnctl.runs.store import atomic_write

OUT_SUFFIXES = (".npy", ".csv", ".png")


# a grid beyond this many tiles is no longer a picture anyone reads (and 10^6 tiles would need gigabytes)
GRID_MAX = 4096


def check_out(out: Path | None, n: int | None = None) -> None:
    """Refuse an --out we cannot write (its suffix; a grid of more than GRID_MAX samples) before any work."""
    if out is not None and out.suffix.lower() not in OUT_SUFFIXES:
        raise NnctlError(f"--out: must end in {', '.join(OUT_SUFFIXES)}, got {out.name!r}")
    if out is not None and out.suffix.lower() == ".png" and n is not None and n > GRID_MAX:
        raise NnctlError(f"--out {out.name}: a grid holds at most {GRID_MAX:,} samples, got {n:,}; write .npy or .csv")


def image_shape(sample_shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """(H, W, C) of samples that are images, else None.

    (H, W), (C, H, W) with C in {1, 3}, (H, W, C) with C in {1, 3}, or a flat vector whose
    length is a square (the 8x8 digits are stored as 64 values): one gray channel.
    """
    if len(sample_shape) == 1:
        side = math.isqrt(sample_shape[0])
        return (side, side, 1) if side > 1 and side * side == sample_shape[0] else None
    if len(sample_shape) == 2:
        return (*sample_shape, 1)
    if len(sample_shape) == 3:
        if sample_shape[0] in (1, 3):
            return (sample_shape[1], sample_shape[2], sample_shape[0])
        if sample_shape[2] in (1, 3):
            return sample_shape
    return None


def to_hwc(samples: np.ndarray) -> np.ndarray:
    """Image samples (N, *shape) as (N, H, W, C), per `image_shape`."""
    shape = tuple(samples.shape[1:])
    h, w, c = image_shape(shape)
    if len(shape) == 3 and shape[0] in (1, 3):
        return samples.transpose(0, 2, 3, 1)
    return samples.reshape((len(samples), h, w, c))


def grid(samples: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """One (rows*(H+1)-1, cols*(W+1)-1, 3) float image in [0, 1]: the samples in a near-square
    grid, one pixel of background between them, values mapped from [lo, hi]."""
    x = np.clip((to_hwc(samples) - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    n, h, w, _ = x.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.zeros((rows * (h + 1) - 1, cols * (w + 1) - 1, 3))
    for i in range(n):
        r, q = divmod(i, cols)
        out[r * (h + 1):r * (h + 1) + h, q * (w + 1):q * (w + 1) + w] = x[i]   # 1 channel broadcasts to gray
    return out


def write_csv(values: np.ndarray, stream, prefix: str = "x", table=None) -> None:
    """One flattened row per sample, under a header x0, x1, ... (z0, z1, ... for codes); with the
    TableEncoder of a model trained on a CSV file, in that file's columns (write_table)."""
    flat = values.reshape(len(values), -1)
    if table is not None:
        write_table([c["name"] for c in table.columns], table.inverse(flat), stream)
        return
    stream.write(",".join(f"{prefix}{j}" for j in range(flat.shape[1])) + "\n")
    np.savetxt(stream, flat, delimiter=",", fmt="%.6g")


def write_table(names: list[str], columns: list[np.ndarray], stream) -> None:
    """Rows in a CSV file's own columns (numbers, category labels) under its header names."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(names)
    cells = [[f"{v:.6g}" for v in col] if col.dtype.kind == "f" else col.tolist() for col in columns]
    writer.writerows(zip(*cells))


def write_samples(samples: np.ndarray, out: Path, lo: float, hi: float, prefix: str = "x", table=None) -> None:
    """samples (N, *shape) to .npy (as they are), .csv (one flattened row each, or a table's
    columns: write_csv), or .png (a grid)."""
    suffix = out.suffix.lower()
    check_out(out, len(samples))
    if suffix == ".npy":
        atomic_write(out, lambda f: np.save(f, samples, allow_pickle=False))
    elif suffix == ".csv":
        text = io.StringIO()
        write_csv(samples, text, prefix, table)
        atomic_write(out, lambda f: f.write(text.getvalue()), binary=False)
    else:
        if image_shape(tuple(samples.shape[1:])) is None:
            raise NnctlError(f"--out {out.name}: samples of shape {list(samples.shape[1:])} are not images; "
                             "write .npy or .csv")
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.image as mpimg
        except ImportError:
            raise NnctlError('a .png grid needs matplotlib: pip install -e ".[plot]"') from None
        picture = grid(samples, lo, hi)
        # nearest-neighbour upscaling: an 8x8 digit is unreadable at one screen pixel per value
        scale = max(1, 256 // max(picture.shape[:2]))
        picture = picture.repeat(scale, axis=0).repeat(scale, axis=1)
        buf = io.BytesIO()
        mpimg.imsave(buf, picture, format="png")
        atomic_write(out, lambda f: f.write(buf.getvalue()))
