"""Feature standardization: per-feature mean and scale from the training rows only."""
from __future__ import annotations

import math

import numpy as np

from nnctl.data.files import CHUNK_BYTES, release_pages
from nnctl.data.splits import Split
from nnctl.errors import DataError


class Standardizer:
    """z = (x - mean) / scale, one mean and scale per feature (per element of the sample shape).

    mean, scale: float64 arrays of the sample shape, e.g. (64,) or (1, 8, 8).

    Notes
    -----
    Statistics are float64 and computed over the training rows in chunks of CHUNK_BYTES,
    so a memory-mapped dataset is never read whole. Chunks are merged with the pairwise
    update of Chan et al.: for running (n_a, mean_a, M2_a) and a chunk (n_b, mean_b, M2_b),
    d = mean_b - mean_a, mean = mean_a + d n_b / n, M2 = M2_a + M2_b + d^2 n_a n_b / n,
    with M2 the sum of squared deviations; scale = sqrt(M2 / n) (population std).
    A constant feature (scale 0, or below float64 rounding of its mean) gets scale 1, so it
    maps to 0 rather than to inf. `transform` works in the batch's dtype: a float32 batch
    stays float32.
    """

    def __init__(self, mean: np.ndarray | None = None, scale: np.ndarray | None = None):
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float64)
        self.scale = None if scale is None else np.asarray(scale, dtype=np.float64)
        self._cast: dict[np.dtype, tuple[np.ndarray, np.ndarray]] = {}

    def fit(self, split: Split, per_feature: bool = True) -> "Standardizer":
        """Statistics over split's rows (x[idx]); returns self.

        per_feature=False pools every value of a sample into one mean and scale (stored
        broadcast to the sample shape, so checkpoints look the same): what images want,
        where a nearly constant border pixel must not be blown up to unit variance.
        """
        x, rows = split.x, split.rows()
        if len(rows) == 0:
            raise DataError("cannot standardize: the training split is empty")
        shape = x.shape[1:]
        step = max(1, CHUNK_BYTES // (8 * max(1, math.prod(shape))))
        n = 0
        mean = np.zeros(shape, dtype=np.float64)
        m2 = np.zeros(shape, dtype=np.float64)
        for s in range(0, len(rows), step):
            # np.take returns a fresh array, so the deviations can overwrite it.
            block = np.take(x, rows[s:s + step], axis=0).astype(np.float64, copy=False)
            if split.divisor is not None:
                block /= split.divisor
            release_pages(x)
            nb = len(block)
            mean_b = block.mean(axis=0)
            block -= mean_b
            np.square(block, out=block)
            m2_b = block.sum(axis=0)
            total = n + nb
            delta = mean_b - mean
            mean = mean + delta * (nb / total)
            m2 = m2 + m2_b + delta ** 2 * (n * nb / total)
            n = total
        if not per_feature:
            # pooled over features: total variance = mean within-feature variance
            # + variance of the feature means (all features have n values)
            pooled_mean = mean.mean()
            pooled_var = (m2 / n).mean() + ((mean - pooled_mean) ** 2).mean()
            mean = np.full(shape, pooled_mean)
            m2 = np.full(shape, pooled_var * n)
        scale = np.sqrt(m2 / n)
        constant = (scale == 0) | (scale <= 10 * np.finfo(np.float64).eps * np.abs(mean))
        scale[constant] = 1.0
        self.mean, self.scale = mean, scale
        self._cast = {}
        return self

    def _for(self, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        if self.mean is None:
            raise RuntimeError("Standardizer used before fit()/from_arrays()")
        dtype = np.dtype(dtype)
        if dtype not in self._cast:
            self._cast[dtype] = (self.mean.astype(dtype), (1.0 / self.scale).astype(dtype))
        return self._cast[dtype]

    def transform(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(x - mean) / scale for a batch x (B, *sample_shape); `out` may be x itself (in place).

        The result has out's dtype, else x's (float64 for integer x).
        """
        if out is None:
            out = np.empty(x.shape, dtype=x.dtype if x.dtype.kind == "f" else np.float64)
        mean, inv_scale = self._for(out.dtype)
        if tuple(x.shape[1:]) != mean.shape:
            raise DataError(
                f"standardizer expects samples of shape {list(mean.shape)}, got {list(x.shape[1:])}"
            )
        np.subtract(x, mean, out=out, casting="unsafe")
        np.multiply(out, inv_scale, out=out)
        return out

    def to_arrays(self) -> dict[str, np.ndarray]:
        """{"mean": ..., "scale": ...} float64, for a checkpoint's arrays."""
        return {"mean": self.mean.copy(), "scale": self.scale.copy()}

    to_dict = to_arrays

    @classmethod
    def from_arrays(cls, mean: np.ndarray, scale: np.ndarray) -> "Standardizer":
        mean = np.asarray(mean, dtype=np.float64)
        scale = np.asarray(scale, dtype=np.float64)
        if mean.shape != scale.shape:
            raise DataError(f"standardizer mean {list(mean.shape)} and scale {list(scale.shape)} differ in shape")
        if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
            raise DataError("standardizer scale must be finite and > 0")
        return cls(mean, scale)
