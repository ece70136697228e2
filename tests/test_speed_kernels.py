"""Kernels reworked for speed: the blocked erfc, GELU's backward from its output, float32 GELU's own fit
and the slope a training Dense keeps keep their values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nnctl.engine.activations import _ERFC_BLOCK_BYTES, GELU, _erfc_nonneg
from nnctl.engine.model import build_layer


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


def test_float32_gelu_and_its_slope_match_float64_within_the_documented_bounds():
    # across block edges, the negative tail down to where Phi leaves float32's normal range,
    # zeros of either sign, tiny and huge |x|
    grid = np.linspace(-13.0, 13.0, 3 * _block(np.float32) + 7)
    special = [0.0, -0.0, 1e-30, -1e-30, 1e-7, -1e-7, 30.0, -30.0, 1e4, -1e4, 3e38, -3e38]
    x = np.concatenate([grid, special]).astype(np.float32)
    xs = x.astype(np.float64)  # the reference at the float32 inputs themselves
    phi = np.array([0.5 * math.erfc(-v / math.sqrt(2.0)) for v in xs])
    want_y = xs * phi
    want_slope = phi + xs * np.exp(-xs * xs / 2.0) / math.sqrt(2.0 * math.pi)
    gelu = GELU()
    y2, slope = np.empty_like(x), np.empty_like(x)
    with np.errstate(over="ignore"):  # x^2 overflows to inf for |x| = 3e38, exp(-inf) = 0
        y = gelu.forward(x, out=np.empty_like(x))
        assert gelu.forward_slope(x, y2, slope) is y2
    np.testing.assert_array_equal(y2, y)  # one kernel: the same y with or without the slope
    # Phi's relative error is y's: 3e-6 at most (the rounding of x^2 in exp(-x^2 / 2) for
    # |x| ~ 10), 1e-6 where |x| < 3 (a fit of degree 7 has 2e-6 there)
    normal = np.abs(want_y) > 1e-37
    rel = np.abs(y[normal] - want_y[normal]) / np.abs(want_y[normal])
    assert rel.max() < 5e-6
    assert rel[np.abs(xs[normal]) < 3.0].max() < 1e-6
    np.testing.assert_allclose(y[~normal], want_y[~normal], rtol=0, atol=1e-38)  # denormal or 0
    np.testing.assert_allclose(slope, want_slope, rtol=0, atol=3e-7)
    assert np.abs(slope - want_slope)[xs < -6.0].max() < 1e-8  # no 1 - 1 in the negative tail
    assert y[-4] == 1e4 and y[-2] == 3e38 and slope[-2] == 1.0 and y[-1] == 0.0 == slope[-1]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("spec,shape", [
    ({"type": "dense", "units": 32, "activation": "gelu"}, (40,)),
    ({"type": "gelu"}, (40,)),
    ({"type": "conv1d", "filters": 4, "kernel_size": 3, "padding": "same", "activation": "gelu"}, (2, 10)),
], ids=["dense", "gelu-layer", "conv1d"])
def test_backward_from_the_kept_slope_equals_gelus_backward(dtype, spec, shape):
    x = np.random.default_rng(5).standard_normal((6,) + shape).astype(dtype) * 3
    got = {}
    for training in (True, False):  # False: no slope kept, GELU's backward from (z, y)
        layer = build_layer(spec)
        layer.build(shape, np.random.default_rng(0), dtype)
        y = layer.forward(x, training).copy()
        assert (layer._slope is not None) == training
        dy = np.random.default_rng(4).standard_normal(y.shape).astype(dtype)
        got[training] = [y, layer.backward(dy).copy()] + [g.copy() for g in layer.grads.values()]
    assert len(got[True]) == (2 if spec["type"] == "gelu" else 4)
    for kept, fresh in zip(got[True], got[False]):
        if dtype == np.float64:  # the same numbers, bit for bit
            np.testing.assert_array_equal(kept, fresh)
        else:
            np.testing.assert_allclose(kept, fresh, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("opts", [{}, {"approximate": "tanh"}])
def test_gelu_forward_slope_in_place_reads_x_first(opts):
    x = np.random.default_rng(6).standard_normal(300) * 4  # float64: the backward's own numbers
    gelu = GELU(**opts)
    z = x.copy()
    slope = np.empty_like(z)
    assert gelu.forward_slope(z, z, slope) is z
    np.testing.assert_array_equal(z, gelu.forward(x))
    np.testing.assert_array_equal(slope, gelu.backward(x, z, np.ones_like(x)))
