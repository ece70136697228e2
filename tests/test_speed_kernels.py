"""Kernels reworked for speed: the blocked erfc and GELU's backward from its output keep their values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nnctl.engine.activations import _ERFC_BLOCK_BYTES, GELU, _erfc_nonneg


def _block(dtype) -> int:
    """Elements per erfc block for this dtype."""
    return _ERFC_BLOCK_BYTES // np.dtype(dtype).itemsize


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-13), (np.float32, 2e-5)])  # float32: rounding of z^2 in exp(-z^2)
def test_blocked_erfc_matches_math_erfc_across_block_edges(dtype, rtol):
    z = np.linspace(0.0, 9.0, 5 * (_block(dtype) // 2 + 3)).astype(dtype).reshape(-1, 5)
    got = _erfc_nonneg(z)
    assert got.dtype == dtype and got.shape == z.shape
    want = np.array([math.erfc(float(v)) for v in z.reshape(-1)]).reshape(z.shape)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=0)
    # one block at a time or the whole array: the same numbers, bit for bit
    small = np.concatenate([_erfc_nonneg(part) for part in np.array_split(z.reshape(-1), 7)])
    np.testing.assert_array_equal(got.reshape(-1), small)
    # a non-contiguous input takes the unblocked path, with the same numbers
    np.testing.assert_array_equal(_erfc_nonneg(z[:, ::2]), got[:, ::2])


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-14), (np.float32, 3e-7)])
def test_gelu_backward_from_its_output_equals_the_formula(dtype, tol):
    x = np.concatenate([np.linspace(-12.0, 12.0, 2 * _block(dtype)), [0.0, -0.0, 1e-30, -1e-30]]).astype(dtype)
    gelu = GELU()
    y = gelu.forward(x, out=np.empty_like(x))
    dy = np.full_like(x, 1.0)
    dx = gelu.backward(x, y, dy, out=np.empty_like(x))
    xs = x.astype(np.float64)
    phi = np.array([0.5 * math.erfc(-v / math.sqrt(2.0)) for v in xs])
    want = phi + xs * np.exp(-xs * xs / 2.0) / math.sqrt(2.0 * math.pi)
    np.testing.assert_allclose(dx, want, rtol=0, atol=tol * 4)
    assert dx[-4] == dx[-3] == 0.5  # x = 0 exactly: Phi(0) = 1/2, not 0/0
    assert np.isfinite(dx).all()
