"""Tests of the convolution, pooling and reshaping layers (nnctl/engine/conv.py)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from nnctl.engine import conv, shapes  # noqa: F401  (registers the layers)
from nnctl.engine.base import LAYERS
from nnctl.engine.conv import (AvgPool1D, AvgPool2D, Conv1D, Conv2D, Flatten, GlobalAvgPool, MaxPool1D,
                               MaxPool2D, Reshape)
from nnctl.engine.gradcheck import gradcheck

from nnctl.engine.model import Sequential, build_layer

from nnctl.errors import ConfigError
from engine_fit import fit

DIGITS = Path(__file__).resolve().parents[1] / "datasets" / "digits.csv"


def built(layer, shape, dtype=np.float64, seed=0):
    layer.build(tuple(shape), np.random.default_rng(seed), dtype)
    return layer


def out_len(L, k, s, p, d):
    """The conv output length for symmetric padding p: floor((L + 2p - d(k-1) - 1) / s) + 1."""
    return (L + 2 * p - d * (k - 1) - 1) // s + 1


def assert_gradcheck(layer, x, **kw):
    errors = gradcheck(layer, x, **kw)
    bad = {k: v for k, v in errors.items() if not v < 1e-6}
    assert not bad, f"gradient check failed: {bad}"
    return errors


# -- output shapes -------------------------------------------------------------------------

@pytest.mark.parametrize("L,k,s,p,d,expected", [
    (10, 3, 2, 1, 2, 4),    # (10 + 2 - 4 - 1) // 2 + 1 = 3 + 1
    (7, 3, 1, 0, 1, 5),     # (7 - 2 - 1) // 1 + 1
    (9, 4, 3, 2, 1, 4),     # (9 + 4 - 3 - 1) // 3 + 1 = 3 + 1
    (5, 5, 1, 0, 1, 1),     # kernel as wide as the input
    (8, 2, 2, 0, 3, 3),     # (8 - 3 - 1) // 2 + 1 = 2 + 1
    (11, 3, 4, 1, 1, 3),    # (11 + 2 - 2 - 1) // 4 + 1 = 2 + 1
])
def test_conv1d_output_length_matches_formula(L, k, s, p, d, expected):
    assert out_len(L, k, s, p, d) == expected
    layer = built(Conv1D(filters=2, kernel_size=k, stride=s, padding=p, dilation=d), (3, L))
    assert layer.output_shape == (2, expected)
    y = layer.forward(np.random.default_rng(1).standard_normal((2, 3, L)), True)
    assert y.shape == (2, 2, expected)


def test_conv2d_output_shape_with_tuples():
    # H: (9 + 2 - 2 - 1) // 2 + 1 = 5;  W: (7 + 0 - 2*(2-1) - 1) // 1 + 1 = 5
    layer = built(Conv2D(filters=4, kernel_size=[3, 2], stride=[2, 1], padding=[1, 0], dilation=[1, 2]), (2, 9, 7))
    assert layer.output_shape == (4, out_len(9, 3, 2, 1, 1), out_len(7, 2, 1, 0, 2)) == (4, 5, 5)


@pytest.mark.parametrize("L,k,s,d", [(7, 3, 1, 1), (8, 4, 1, 1), (9, 3, 1, 3), (8, 3, 2, 1), (7, 3, 2, 1),
                                     (10, 5, 3, 2)])
def test_same_padding_gives_ceil_length(L, k, s, d):
    layer = built(Conv1D(filters=1, kernel_size=k, stride=s, padding="same", dilation=d), (1, L))
    assert layer.output_shape == (1, -(-L // s))


def test_same_padding_split_follows_keras():
    # total = max((out - 1) * s + d (k - 1) + 1 - L, 0), the odd element at the end
    assert shapes.resolve_padding("c", "same", [8], [3], [2], [1]) == [(0, 1)]   # out 4: 6 + 3 - 8 = 1
    assert shapes.resolve_padding("c", "same", [7], [4], [1], [1]) == [(1, 2)]   # 6 + 4 - 7 = 3
    assert shapes.resolve_padding("c", "same", [9], [3], [1], [3]) == [(3, 3)]   # 8 + 7 - 9 = 6
    assert shapes.resolve_padding("c", "same", [6], [1], [2], [1]) == [(0, 0)]   # no padding needed


@pytest.mark.parametrize("cls,kw,shape,expected", [
    (MaxPool2D, {"size": 2}, (3, 5, 7), (3, 2, 3)),
    (AvgPool2D, {"size": 3, "stride": 2}, (1, 7, 7), (1, 3, 3)),          # (7 - 3) // 2 + 1
    (MaxPool2D, {"size": [2, 3], "stride": 1}, (2, 4, 5), (2, 3, 3)),
    (MaxPool2D, {"size": 2, "padding": "same"}, (1, 7, 5), (1, 4, 3)),   # ceil(7 / 2), ceil(5 / 2)
    (MaxPool1D, {"size": 3}, (2, 10), (2, 3)),
    (AvgPool1D, {"size": 4, "stride": 3, "padding": "same"}, (2, 10), (2, 4)),
])
def test_pool_output_shapes(cls, kw, shape, expected):
    assert built(cls(**kw), shape).output_shape == expected


# -- values ------------------------------------------------------------------------------

def naive_conv(x, W, b, stride, pads, dilation):
    """Direct loops over every output position: the definition of (cross-)correlation."""
    nd = W.ndim - 2
    xp = np.pad(x, [(0, 0), (0, 0)] + list(pads))
    spans = [dilation[i] * (W.shape[2 + i] - 1) + 1 for i in range(nd)]
    outs = [(xp.shape[2 + i] - spans[i]) // stride[i] + 1 for i in range(nd)]
    y = np.zeros((x.shape[0], W.shape[0], *outs))
    for n in range(x.shape[0]):
        for f in range(W.shape[0]):
            for o in np.ndindex(*outs):
                acc = b[f]
                for c in range(x.shape[1]):
                    for k in np.ndindex(*W.shape[2:]):
                        pos = tuple(o[i] * stride[i] + k[i] * dilation[i] for i in range(nd))
                        acc += W[(f, c) + k] * xp[(n, c) + pos]
                y[(n, f) + o] = acc
    return y


@pytest.mark.parametrize("kw", [
    {"kernel_size": 3},
    {"kernel_size": [3, 2], "stride": [2, 1], "padding": [1, 2], "dilation": [1, 2]},
    {"kernel_size": 3, "stride": 2, "padding": "same"},
    {"kernel_size": 2, "padding": "same", "dilation": 2},
])
def test_conv2d_forward_matches_direct_loops(kw):
    rng = np.random.default_rng(3)
    layer = built(Conv2D(filters=3, **kw), (2, 6, 5))
    layer.params["b"][...] = rng.standard_normal(3)
    x = rng.standard_normal((2, 2, 6, 5))
    k = shapes.as_tuple(kw["kernel_size"], 2, "", "")
    s = shapes.as_tuple(kw.get("stride", 1), 2, "", "")
    d = shapes.as_tuple(kw.get("dilation", 1), 2, "", "")
    pads = shapes.resolve_padding("conv2d", kw.get("padding", "valid"), (6, 5), k, s, d)
    want = naive_conv(x, layer.params["W"], layer.params["b"], s, pads, d)
    np.testing.assert_allclose(layer.forward(x, False), want, rtol=1e-12, atol=1e-12)


def test_conv1d_forward_matches_direct_loops():
    rng = np.random.default_rng(4)
    layer = built(Conv1D(filters=4, kernel_size=3, stride=2, padding=1, dilation=2), (3, 10))
    layer.params["b"][...] = rng.standard_normal(4)
    x = rng.standard_normal((2, 3, 10))
    want = naive_conv(x, layer.params["W"], layer.params["b"], (2,), [(1, 1)], (2,))
    assert want.shape == (2, 4, 4)
    np.testing.assert_allclose(layer.forward(x, False), want, rtol=1e-12, atol=1e-12)


def test_fused_activation_is_applied():
    rng = np.random.default_rng(5)
    lin = built(Conv2D(filters=3, kernel_size=3, padding="same"), (2, 5, 5))
    act = built(Conv2D(filters=3, kernel_size=3, padding="same", activation="relu"), (2, 5, 5))
    act.params["W"][...] = lin.params["W"]
    x = rng.standard_normal((2, 2, 5, 5))
    np.testing.assert_allclose(act.forward(x, False), np.maximum(lin.forward(x, False), 0.0))


def test_maxpool_and_avgpool_values_by_hand():
    x = np.array([[1, 2, 5, 0],
                  [3, 4, 1, 1],
                  [0, 0, 2, 2],
                  [1, -1, 3, 9]], dtype=np.float64).reshape(1, 1, 4, 4)
    mp = built(MaxPool2D(size=2), (1, 4, 4))
    ap = built(AvgPool2D(size=2), (1, 4, 4))
    np.testing.assert_array_equal(mp.forward(x, True)[0, 0], [[4, 5], [1, 9]])
    np.testing.assert_array_equal(ap.forward(x, True)[0, 0], [[2.5, 1.75], [0.0, 4.0]])
    # max routes each output's gradient to its window's winner
    dx = mp.backward(np.array([[10.0, 20.0], [30.0, 40.0]]).reshape(1, 1, 2, 2))
    np.testing.assert_array_equal(dx[0, 0], [[0, 0, 20, 0],
                                             [0, 10, 0, 0],
                                             [0, 0, 0, 0],
                                             [30, 0, 0, 40]])
    dx = ap.backward(np.array([[4.0, 8.0], [12.0, 16.0]]).reshape(1, 1, 2, 2))
    np.testing.assert_array_equal(dx[0, 0], [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])


def test_maxpool_ties_route_to_one_element():
    x = np.full((1, 1, 2, 2), 7.0)
    mp = built(MaxPool2D(size=2), (1, 2, 2))
    assert mp.forward(x, True)[0, 0, 0, 0] == 7.0
    dx = mp.backward(np.full((1, 1, 1, 1), 3.0))
    assert dx.sum() == 3.0 and np.count_nonzero(dx) == 1


def _first_max_routing(x, layer, dy):
    """Max pooling's dx by brute force: each window's gradient to its first maximum in C order."""
    xp, _ = shapes.padded(x, layer.pads, None, fill=-np.inf)
    win = shapes.windows(xp, layer.size, layer.stride, (1,) * layer.ND, layer.out_sizes)
    dxp = np.zeros_like(xp)
    for idx in np.ndindex(*dy.shape):
        n, c, o = idx[0], idx[1], idx[2:]
        k = np.unravel_index(np.argmax(win[idx]), layer.size)   # argmax: the first of ties
        dxp[(n, c) + tuple(oi * s + ki for oi, s, ki in zip(o, layer.stride, k))] += dy[idx]
    return shapes.strip_padding(dxp, layer.pads)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("layer,shape", [
    (MaxPool2D(size=2), (3, 6, 8)),                       # two-element passes that tile their axis
    (MaxPool2D(size=[2, 3], stride=1), (2, 5, 6)),        # overlapping windows, a two-element pass
    (MaxPool2D(size=2, padding="same"), (2, 5, 7)),       # -inf padding
    (MaxPool2D(size=3, stride=2), (2, 7, 7)),             # three-element passes
    (MaxPool1D(size=2), (2, 9)),                          # the last element is left out
    (MaxPool1D(size=2, stride=1), (2, 9)),
])
def test_maxpool_routes_to_the_first_maximum_of_ties(layer, shape, training, dtype):
    rng = np.random.default_rng(4)
    layer = built(type(layer)(**layer.get_config()), shape, dtype)
    # three values (a third of them relu's zeros), so most windows hold ties
    x = rng.integers(0, 3, (2,) + shape).astype(dtype)
    y = layer.forward(x, training).copy()
    dy = rng.permutation(y.size).reshape(y.shape).astype(dtype) + 1   # distinct, so a misroute shows
    np.testing.assert_array_equal(layer.backward(dy), _first_max_routing(x, layer, dy))
    xp, _ = shapes.padded(x, layer.pads, None, fill=-np.inf)
    win = shapes.windows(xp, layer.size, layer.stride, (1,) * layer.ND, layer.out_sizes)
    np.testing.assert_array_equal(y, win.max(axis=tuple(range(-layer.ND, 0))))


def test_same_pooling_ignores_the_padding():
    # [1, 2, 3], size 2 stride 2 'same': windows [1, 2] and [3, pad]
    x = np.array([[[1.0, 2.0, 3.0]]])
    np.testing.assert_array_equal(built(AvgPool1D(size=2, padding="same"), (1, 3)).forward(x, True), [[[1.5, 3.0]]])
    x = np.array([[[-1.0, -2.0, -3.0]]])
    np.testing.assert_array_equal(built(MaxPool1D(size=2, padding="same"), (1, 3)).forward(x, True), [[[-1.0, -3.0]]])


def test_global_avg_pool_flatten_reshape_values():
    x = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    gap = built(GlobalAvgPool(), (3, 4))
    np.testing.assert_allclose(gap.forward(x, True), x.mean(axis=2))
    gap_last = built(GlobalAvgPool(data_format="channels_last"), (3, 4))
    np.testing.assert_allclose(gap_last.forward(x, True), x.mean(axis=1))
    assert gap_last.output_shape == (4,)
    fl = built(Flatten(), (3, 4))
    assert fl.forward(x, True).shape == (2, 12) and fl.output_shape == (12,)
    rs = built(Reshape(shape=[2, -1, 3]), (3, 4))
    assert rs.output_shape == (2, 2, 3)
    np.testing.assert_array_equal(rs.forward(x, True), x.reshape(2, 2, 2, 3))
    np.testing.assert_array_equal(rs.backward(np.ones((2, 2, 2, 3))), np.ones((2, 3, 4)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_global_avg_pool_means_and_spread_gradient_in_both_layouts(dtype):
    # distinct values everywhere, a smaller second batch (workspace views) and two spatial axes
    rng = np.random.default_rng(4)
    for fmt, axes, shape in (("channels_first", (2, 3), (3, 4, 5)), ("channels_last", (1, 2), (4, 5, 3))):
        gap = built(GlobalAvgPool(data_format=fmt), shape, dtype)
        for n in (4, 2):
            x = rng.standard_normal((n,) + shape).astype(dtype)
            dy = rng.standard_normal((n, 3)).astype(dtype)
            tol = 1e-6 if dtype == np.float32 else 1e-14    # float32 means can cancel: absolute
            np.testing.assert_allclose(gap.forward(x, True), x.mean(axis=axes), rtol=tol, atol=tol)
            want = np.broadcast_to(np.expand_dims(dy, axes), x.shape) / 20.0
            np.testing.assert_allclose(gap.backward(dy), want, rtol=tol)
            assert gap.backward(dy).dtype == dtype


# -- gradients -----------------------------------------------------------------------------

CONV2D_CASES = [
    {"kernel_size": 3},
    {"kernel_size": 3, "padding": "same"},
    {"kernel_size": 3, "stride": 2, "padding": "same"},
    {"kernel_size": [2, 3], "stride": [2, 1], "padding": [1, 0], "dilation": [2, 1]},
    {"kernel_size": 2, "padding": 1, "dilation": 2, "activation": "tanh"},
    {"kernel_size": 1, "stride": 2},
    {"kernel_size": 3, "padding": "same", "activation": "gelu", "bias": False},
]


@pytest.mark.parametrize("kw", CONV2D_CASES)
def test_conv2d_gradcheck(kw):
    layer = built(Conv2D(filters=3, **kw), (2, 7, 6))
    layer.params.get("b", np.zeros(1))[...] = 0.1
    assert_gradcheck(layer, np.random.default_rng(7).standard_normal((2, 2, 7, 6)))


@pytest.mark.parametrize("kw", [
    {"kernel_size": 3, "stride": 2, "padding": 1, "dilation": 2},
    {"kernel_size": 4, "padding": "same", "dilation": 3, "activation": "relu"},
    {"kernel_size": 5, "stride": 3, "padding": "same"},
    {"kernel_size": 2},
])
def test_conv1d_gradcheck(kw):
    layer = built(Conv1D(filters=3, **kw), (2, 11))
    assert_gradcheck(layer, np.random.default_rng(8).standard_normal((3, 2, 11)))


@pytest.mark.parametrize("cls,kw,shape", [
    (MaxPool2D, {"size": 2}, (2, 5, 6)),
    (MaxPool2D, {"size": 3, "stride": 2, "padding": "same"}, (2, 7, 5)),
    (MaxPool2D, {"size": [2, 3], "stride": 1}, (1, 5, 6)),
    (AvgPool2D, {"size": 2}, (2, 5, 6)),
    (AvgPool2D, {"size": 3, "stride": 2, "padding": "same"}, (2, 7, 5)),
    (MaxPool1D, {"size": 3, "stride": 2}, (2, 9)),
    (AvgPool1D, {"size": 2, "padding": "same"}, (2, 9)),
    (GlobalAvgPool, {}, (3, 4, 5)),
    (GlobalAvgPool, {"data_format": "channels_last"}, (4, 3)),
    (Flatten, {}, (2, 3, 2)),
    (Reshape, {"shape": [-1, 4]}, (2, 3, 2)),
])
def test_shape_layers_gradcheck(cls, kw, shape):
    layer = built(cls(**kw), shape)
    # distinct values, so no max-pool window has a tie that a perturbation could flip
    x = np.random.default_rng(9).permutation(2 * int(np.prod(shape))).reshape((2,) + shape) * 0.1
    assert_gradcheck(layer, x)


def test_residual_around_same_conv_stack():
    specs = [{"type": "residual", "layers": [
        {"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": "same", "activation": "relu"},
        {"type": "conv2d", "filters": 3, "kernel_size": 3, "padding": "same"},
    ]}, {"type": "global_avg_pool"}, {"type": "dense", "units": 2}]
    model = Sequential.from_config(specs, (3, 6, 5), 0, "float64")
    assert "layers.0.layers.1.W" in model.named_parameters()
    assert model.named_parameters()["layers.0.layers.0.W"].shape == (4, 3, 3, 3)
    errors = gradcheck(model, np.random.default_rng(1).standard_normal((2, 3, 6, 5)))
    assert max(errors.values()) < 1e-6, errors


def test_a_smaller_batch_reuses_buffers_correctly():
    rng = np.random.default_rng(2)
    layer = built(Conv2D(filters=3, kernel_size=3, padding="same"), (2, 5, 5))
    big = rng.standard_normal((4, 2, 5, 5))
    layer.forward(big, True)
    layer.backward(rng.standard_normal((4, 3, 5, 5)))
    small, dy = big[:2] * 2.0, rng.standard_normal((2, 3, 5, 5))
    y = layer.forward(small, True).copy()
    dx = layer.backward(dy).copy()
    g = layer.grads["W"].copy()
    fresh = built(Conv2D(filters=3, kernel_size=3, padding="same"), (2, 5, 5))
    np.testing.assert_allclose(fresh.forward(small, True), y)
    np.testing.assert_allclose(fresh.backward(dy), dx)
    np.testing.assert_allclose(fresh.grads["W"], g)


def test_first_layer_skips_input_gradient():
    layer = built(Conv2D(filters=2, kernel_size=3), (1, 5, 5))
    layer.input_grad = False
    x = np.random.default_rng(0).standard_normal((2, 1, 5, 5))
    layer.forward(x, True)
    assert layer.backward(np.ones((2, 2, 3, 3))) is None
    assert np.abs(layer.grads["W"]).sum() > 0


# -- dtype ---------------------------------------------------------------------------------

@pytest.mark.parametrize("layer,shape", [
    (Conv2D(filters=3, kernel_size=3, padding="same", activation="relu"), (2, 6, 6)),
    (Conv2D(filters=2, kernel_size=2, stride=2, activation="gelu"), (2, 6, 6)),
    (Conv1D(filters=3, kernel_size=3, dilation=2, padding="same", activation="tanh"), (2, 9)),
    (MaxPool2D(size=2, padding="same"), (2, 5, 5)),
    (AvgPool2D(size=2, padding="same"), (2, 5, 5)),
    (MaxPool1D(size=2), (2, 6)),
    (AvgPool1D(size=3, stride=1), (2, 6)),
    (GlobalAvgPool(), (2, 3, 3)),
    (Flatten(), (2, 3, 3)),
    (Reshape(shape=[-1]), (2, 3, 3)),
])
def test_float32_stays_float32(layer, shape):
    built(layer, shape, np.float32)
    rng = np.random.default_rng(0)
    y = layer.forward(rng.standard_normal((3,) + shape).astype(np.float32), True)
    assert y.dtype == np.float32 and y.shape == (3,) + layer.output_shape
    dx = layer.backward(rng.standard_normal(y.shape).astype(np.float32))
    assert dx.dtype == np.float32 and dx.shape == (3,) + shape
    for name, g in layer.grads.items():
        assert g.dtype == np.float32 and layer.params[name].dtype == np.float32


# -- registry and config -------------------------------------------------------------------

def test_registered_names_and_config_round_trip():
    for name in ("conv1d", "conv2d", "maxpool1d", "maxpool2d", "avgpool1d", "avgpool2d",
                 "global_avg_pool", "flatten", "reshape"):
        assert name in LAYERS
    spec = {"type": "conv2d", "filters": 4, "kernel_size": [3, 3], "stride": 1, "padding": [1, 1],
            "activation": "relu"}
    layer = build_layer(spec)
    again = type(layer)(**layer.get_config())
    assert again.get_config() == layer.get_config()
    assert layer.get_config()["padding"] == [1, 1] and layer.get_config()["dilation"] == 1
    for name, p in Conv2D.PARAMS.items():
        assert p.doc, name


# -- build-time shape errors ---------------------------------------------------------------

@pytest.mark.parametrize("layer,shape,message", [
    (Conv2D(filters=2, kernel_size=5), (3, 3, 8),
     "conv2d: kernel size 5 is larger than its padded input of size 3 (input 3, padding 0+0)"),
    (Conv1D(filters=2, kernel_size=3, dilation=3), (1, 6),
     "conv1d: kernel size 3 (dilation 3 spans 7) is larger than its padded input of size 6 (input 6, padding 0+0)"),
    (Conv2D(filters=2, kernel_size=3), (3, 8),
     "conv2d: expects input of shape (N, C, H, W), got (N, 3, 8)"),
    (Conv1D(filters=2, kernel_size=3), (3, 8, 8),
     "conv1d: expects input of shape (N, C, L), got (N, 3, 8, 8)"),
    (MaxPool2D(size=4), (1, 3, 8),
     "maxpool2d: kernel size 4 is larger than its padded input of size 3 (input 3, padding 0+0)"),
    (Reshape(shape=[5, -1]), (3, 4),
     "reshape: cannot reshape input [3, 4] (12 values) to [5, -1]: 12 is not divisible by 5"),
    (Reshape(shape=[5, 3]), (3, 4),
     "reshape: cannot reshape input [3, 4] (12 values) to [5, 3] (15 values)"),
    (Reshape(shape=[-1, -1]), (3, 4),
     "reshape: shape must be positive ints with at most one -1, got [-1, -1]"),
    (GlobalAvgPool(), (5,),
     "global_avg_pool: needs a channel axis and at least one spatial axis, got input (N, 5)"),
])
def test_shape_errors_at_build_time(layer, shape, message):
    with pytest.raises(ConfigError) as err:
        built(layer, shape)
    assert str(err.value) == message


@pytest.mark.parametrize("kw,message", [
    ({"filters": 2, "kernel_size": 3, "padding": "full"},
     "conv2d: padding must be 'valid', 'same' or ints, got 'full'"),
    ({"filters": 2, "kernel_size": 3, "stride": 0}, "conv2d: stride must be >= 1, got 0"),
    ({"filters": 2, "kernel_size": [3, 3, 3]}, "conv2d: kernel_size must be an int or a list of 2 ints, got [3, 3, 3]"),
    ({"filters": 0, "kernel_size": 3}, "conv2d.filters: must be >= 1, got 0"),
    ({"filters": 2, "kernel_size": 3, "padding": -1}, "conv2d: padding must be >= 0, got -1"),
])
def test_bad_options_at_construction(kw, message):
    with pytest.raises(ConfigError) as err:
        Conv2D(**kw)
    assert str(err.value) == message


# -- end to end ----------------------------------------------------------------------------


def test_small_cnn_learns_digits():
    data = np.loadtxt(DIGITS, delimiter=",", skiprows=1)
    x = (data[:, :64] / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
    y = data[:, 64].astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    test, train = order[:360], order[360:]
    specs = [
        {"type": "conv2d", "filters": 32, "kernel_size": 3, "padding": "same", "activation": "relu"},
        {"type": "maxpool2d", "size": 2},
        {"type": "conv2d", "filters": 64, "kernel_size": 3, "padding": "same", "activation": "relu"},
        {"type": "maxpool2d", "size": 2},
        {"type": "flatten"},
        {"type": "dropout", "rate": 0.3},
        {"type": "dense", "units": 10},
    ]
    t0 = time.perf_counter()
    model = fit(Sequential.from_config(specs, (1, 8, 8), 0, "float32"), x[train], y[train],
                epochs=15, lr=3e-3, seed=0, cosine=True)
    out = model.predict(x[test])
    assert out.dtype == np.float32
    acc = float((out.argmax(axis=1) == y[test]).mean())
    assert acc >= 0.98, f"test accuracy {acc:.3f} after {time.perf_counter() - t0:.1f} s"


# -- pooling against a per-window reference ----------------------------------------------------

def _pool_reference(mode, x, dy, size, stride, pads):
    """Pooling window by window: the forward values and dx, the first of tied maxima in C order
    over the window winning its gradient (np.argmax's rule, and PyTorch's)."""
    fill = -np.inf if mode == "max" else 0.0
    xp = np.pad(x, [(0, 0), (0, 0)] + list(pads), constant_values=fill)
    real = np.pad(np.ones(x.shape[2:]), list(pads))
    out_sizes = dy.shape[2:]
    y = np.zeros(dy.shape, dtype=x.dtype)
    dxp = np.zeros(xp.shape, dtype=x.dtype)
    for o in np.ndindex(*out_sizes):
        box = tuple(slice(i * s, i * s + k) for i, s, k in zip(o, stride, size))
        win = xp[(Ellipsis,) + box].reshape(x.shape[:2] + (-1,))
        if mode == "max":
            arg = win.argmax(axis=-1)
            y[(Ellipsis,) + o] = np.take_along_axis(win, arg[..., None], -1)[..., 0]
            hot = np.zeros(win.shape, dtype=x.dtype)
            np.put_along_axis(hot, arg[..., None], 1.0, -1)
            dxp[(Ellipsis,) + box] += (hot * dy[(Ellipsis,) + o][..., None]).reshape(dxp[(Ellipsis,) + box].shape)
        else:
            inv = (1.0 / real[box].sum()).astype(x.dtype) if x.dtype == np.float32 else 1.0 / real[box].sum()
            y[(Ellipsis,) + o] = win.sum(axis=-1) * inv
            dxp[(Ellipsis,) + box] += (dy[(Ellipsis,) + o] * inv)[(Ellipsis,) + (None,) * len(o)]
    inner = (Ellipsis,) + tuple(slice(lo, lo + L) for L, (lo, _) in zip(x.shape[2:], pads))
    return y, dxp[inner]


@pytest.mark.parametrize("cls,kw,shape", [
    (MaxPool2D, {"size": 2}, (3, 6, 8)),                                  # windows tile the input
    (MaxPool2D, {"size": 2}, (2, 7, 5)),                                  # a remainder row and column
    (MaxPool2D, {"size": [3, 2], "stride": [1, 2]}, (2, 6, 6)),           # overlapping along H
    (MaxPool2D, {"size": 2, "stride": 3}, (2, 8, 8)),                     # gaps between windows
    (MaxPool2D, {"size": 3, "stride": 2, "padding": "same"}, (2, 7, 6)),  # -inf pads, overlap
    (MaxPool1D, {"size": 4, "stride": 1}, (3, 9)),
    (MaxPool2D, {"size": [1, 3], "stride": [2, 1]}, (2, 5, 7)),           # one-row windows, skipped rows
    (AvgPool2D, {"size": 2}, (3, 6, 8)),
    (AvgPool2D, {"size": 3, "stride": 2, "padding": "same"}, (2, 7, 6)),
    (AvgPool1D, {"size": 3, "stride": 2}, (2, 10)),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_separable_pooling_equals_the_window_by_window_reference(cls, kw, shape, dtype):
    rng = np.random.default_rng(11)
    # small integers: many tied maxima, and window sums that are exact in any order
    x = rng.integers(-3, 4, (4,) + shape).astype(dtype)
    layer = built(cls(**kw), shape, dtype)
    for training in (True, False):  # evaluation records no winners; backward then replays them
        y = layer.forward(x, training).copy()
        dy = rng.integers(-5, 6, y.shape).astype(dtype)
        dx = layer.backward(dy).copy()
        want_y, want_dx = _pool_reference(layer.MODE, x, dy, layer.size, layer.stride, layer.pads)
        assert y.dtype == dx.dtype == dtype
        np.testing.assert_array_equal(y, want_y)
        if layer.MODE == "max":
            np.testing.assert_array_equal(dx, want_dx)
        else:  # overlapping windows add their dy / count terms to one input in another order
            tol = 1e-6 if dtype == np.float32 else 1e-14  # values are O(1)
            np.testing.assert_allclose(dx, want_dx, rtol=tol, atol=tol)


def test_maxpool_routes_an_infinite_gradient_without_nan():
    layer = built(MaxPool2D(size=2), (1, 2, 4))
    x = np.array([[[[1.0, 5.0, 2.0, 2.0], [3.0, 4.0, 0.0, 1.0]]]])
    layer.forward(x, True)
    dx = layer.backward(np.array([[[[np.inf, -np.inf]]]]))
    np.testing.assert_array_equal(dx, [[[[0, np.inf, -np.inf, 0], [0, 0, 0, 0]]]])


# -- the im2col layouts ------------------------------------------------------------------

@pytest.mark.parametrize("cls,kw,shape", [
    (Conv2D, {"kernel_size": 3, "padding": "same", "activation": "relu"}, (1, 6, 5)),
    (Conv2D, {"kernel_size": [2, 3], "stride": [2, 1], "padding": 1, "dilation": [1, 2]}, (3, 7, 8)),
    (Conv2D, {"kernel_size": 3, "stride": 2, "padding": "same"}, (20, 5, 5)),
    # the rows layout's dx GEMM summing the last axis's offsets (stride and dilation 1 there):
    # uneven "same" pads (1, 2); a last-axis offset that lands only on padding; stride 2 above it
    (Conv2D, {"kernel_size": [3, 4], "padding": "same", "activation": "tanh"}, (2, 5, 6)),
    (Conv2D, {"kernel_size": [3, 4], "padding": [1, 2]}, (2, 4, 1)),
    (Conv2D, {"kernel_size": [2, 3], "stride": [2, 1]}, (3, 7, 8)),
    (Conv1D, {"kernel_size": 5, "padding": "same", "activation": "tanh"}, (1, 12)),
    (Conv1D, {"kernel_size": 3, "stride": 3, "dilation": 2}, (7, 20)),
    (Conv1D, {"kernel_size": 5, "padding": "same", "activation": "relu"}, (25, 9)),
    (Conv1D, {"kernel_size": 3, "padding": 3, "dilation": 2, "bias": False, "activation": "softmax"}, (4, 8)),
])
def test_all_im2col_layouts_give_the_same_values_and_exact_gradients(cls, kw, shape):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3,) + shape)
    # (channels, shifted): the shifted layout exists for stride-1 conv1d only
    layouts = [(True, False), (False, False)]
    if cls is Conv1D and kw.get("stride", 1) == 1:
        layouts.append((False, True))
    layers = {}
    for channels, shifted in layouts:
        layer = built(cls(filters=4, **kw), shape, seed=1)
        assert layer.shifted_layout == (cls is Conv1D and kw.get("stride", 1) == 1)   # the default
        layer.channels_layout, layer.shifted_layout = channels, shifted
        layers[channels, shifted] = layer
    y = {c: layer.forward(x, True).copy() for c, layer in layers.items()}
    dy = rng.standard_normal(y[True, False].shape)
    dx = {c: layer.backward(dy).copy() for c, layer in layers.items()}
    for c in layouts[1:]:
        np.testing.assert_allclose(y[c], y[True, False], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dx[c], dx[True, False], rtol=1e-12, atol=1e-12)
        for name in layers[c].grads:
            np.testing.assert_allclose(layers[c].grads[name], layers[True, False].grads[name],
                                       rtol=1e-12, atol=1e-12)
    for layer in layers.values():
        assert_gradcheck(layer, x, max_checks=40)


@pytest.mark.parametrize("kw,shape", [
    ({"kernel_size": 3, "padding": "same", "activation": "relu"}, (6, 6, 5)),
    ({"kernel_size": [2, 3], "stride": [2, 1], "padding": 1, "dilation": [1, 2]}, (6, 7, 8)),
])
def test_rows_layout_in_sample_blocks_matches_one_block(kw, shape):
    # 5 samples in blocks of 2, 2 and 1 against the whole batch in one block, float64
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5,) + shape)
    whole, blocks = (built(Conv2D(filters=4, **kw), shape, seed=2) for _ in range(2))
    assert not whole.channels_layout and whole.block >= 5
    blocks.block = 2
    y = whole.forward(x, True).copy()
    dy = rng.standard_normal(y.shape)
    dx = whole.backward(dy).copy()
    # training: the forward in one block (backward needs the batch's cols), the dx path in blocks;
    # evaluation: the forward in blocks, and a backward after it rebuilds the batch's cols
    for training in (True, False):
        np.testing.assert_allclose(blocks.forward(x, training), y, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(blocks.backward(dy), dx, rtol=1e-12, atol=1e-12)
        for name in whole.grads:
            np.testing.assert_allclose(blocks.grads[name], whole.grads[name], rtol=1e-12, atol=1e-12)


def test_the_layout_follows_the_im2col_rows():
    assert built(Conv2D(filters=8, kernel_size=3), (1, 6, 6)).channels_layout        # 9 rows
    assert built(Conv2D(filters=8, kernel_size=3), (3, 6, 6)).channels_layout        # 27 rows
    assert not built(Conv2D(filters=8, kernel_size=3), (4, 6, 6)).channels_layout    # 36 rows
    assert not built(Conv1D(filters=8, kernel_size=5), (7, 9)).channels_layout       # 35 rows


# -- neighbouring convolutions and pools share work (conv.link_convs_and_pools) ---------------

@pytest.mark.parametrize("specs,shape,relu_deferred,channels_last,pooled", [
    # channels layout (18 rows) -> pool -> rows layout (36) -> pool: the pools give the second
    # conv x and take z channels-last; each pool applies the relu before it and, in training,
    # runs the convolution before it block by block
    ([{"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": "same", "activation": "relu"},
      {"type": "maxpool2d", "size": 2},
      {"type": "conv2d", "filters": 40, "kernel_size": 3, "padding": "same", "activation": "relu"},
      {"type": "maxpool2d", "size": 2}, {"type": "flatten"}, {"type": "dense", "units": 3}],
     (2, 12, 12), [True, True], [(False, False), (True, True)], [True, True]),
    # rows layout before a padded pool with overlapping windows: relu deferred, channels-first
    ([{"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": "same", "activation": "relu"},
      {"type": "maxpool2d", "size": 3, "stride": 2, "padding": "same"}, {"type": "flatten"},
      {"type": "dense", "units": 2}], (5, 7, 6), [True], [(False, False)], [False]),
    # rows layout, 3x2 windows that leave a column out (the backward zero-fills), then an
    # average pool between two tanh rows convolutions: channels-last all the way through it
    ([{"type": "conv2d", "filters": 5, "kernel_size": 3, "activation": "relu"},
      {"type": "maxpool2d", "size": [3, 2]},
      {"type": "conv2d", "filters": 6, "kernel_size": 3, "padding": "same", "activation": "tanh"},
      {"type": "avgpool2d", "size": 2},
      {"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": "same", "activation": "tanh"},
      {"type": "flatten"}, {"type": "dense", "units": 2}],
     (6, 14, 11), [True, False, False], [(False, True), (True, True), (True, False)], [True, False, False]),
    ([{"type": "conv1d", "filters": 4, "kernel_size": 3, "padding": "same", "activation": "relu"},
      {"type": "maxpool1d", "size": 3}, {"type": "flatten"}, {"type": "dense", "units": 2}],
     (2, 9), [True], [(False, False)], [False]),
    # strided conv1d (channels layout, not shifted) and a max pool with 3-element windows: run as one
    ([{"type": "conv1d", "filters": 3, "kernel_size": 3, "stride": 2, "padding": "same", "activation": "relu"},
      {"type": "maxpool1d", "size": 3}, {"type": "flatten"}, {"type": "dense", "units": 2}],
     (2, 19), [True], [(False, False)], [True]),
])
@pytest.mark.parametrize("training", [True, False])
def test_linked_convolutions_and_pools_give_bitwise_the_same_values_and_gradients(specs, shape, relu_deferred,
                                                                                  channels_last, pooled, training):
    # The reference runs every layer on its own: an identity reshape after each convolution
    # and pool stops the links. Small integers everywhere, so the pre-activations hold many
    # ties, zeros and windows whose maximum is < 0 or exactly 0: the cases where routing before
    # or after the relu could differ.
    rng = np.random.default_rng(3)
    linked = Sequential.from_config(specs, shape, 0, "float64")
    apart = []
    for spec, layer in zip(specs, linked.layers):
        apart.append(spec)
        if "pool" in spec["type"] or "conv" in spec["type"]:
            apart.append({"type": "reshape", "shape": list(layer.output_shape)})
    plain = Sequential.from_config(apart, shape, 0, "float64")
    convs = [layer for layer in linked.layers if isinstance(layer, (Conv1D, Conv2D))]
    assert [c.act_deferred for c in convs] == relu_deferred
    assert [(c.channels_last_in, c.channels_last_out) for c in convs] == channels_last
    assert [c.pooled for c in convs] == pooled
    for conv in convs:
        conv.pool_block = 3   # the batch of 4 in two uneven blocks
    assert not any(getattr(c, "act_deferred", False) or getattr(c, "channels_last_in", False)
                   or getattr(c, "channels_last_out", False) for c in plain.layers)
    grads = [list(m.named_grads().values()) for m in (linked, plain)]
    for a, b in zip(*[list(m.named_parameters().values()) for m in (linked, plain)]):
        a[...] = b[...] = rng.integers(-2, 3, a.shape) - 2 * (a.ndim == 1)  # biases mostly < 0
    x = rng.integers(-1, 2, (4,) + shape).astype(np.float64)
    dy = rng.integers(-3, 4, (4,) + linked.output_shape).astype(np.float64)
    bits = _bits_of_both((linked, plain), grads, x, dy, training)
    assert all(np.array_equal(a, b) for a, b in zip(*bits))
    assert np.count_nonzero(bits[0][0]) > 0 and np.count_nonzero(bits[0][1]) > 0


def _bits_of_both(models, grads, x, dy, training):
    """Each model's output, input gradient and parameter gradients as int64 bit patterns,
    after one forward and backward on the same x and dy; the first model's, then the second's."""
    bits = []
    for model, g in zip(models, grads):
        y = model.forward(x, training)
        dx = model.backward(dy, input_grad=True)
        bits.append([a.view(np.int64) for a in [y, dx, *g]])
    return bits


_C1 = {"type": "conv1d", "filters": 5, "kernel_size": 5, "padding": "same", "activation": "relu"}


@pytest.mark.parametrize("specs,shape,linked_after", [
    # the issue-15 stack: one input channel, then relu convolutions handing over padded inputs
    ([_C1, {**_C1, "filters": 6}, {**_C1, "filters": 3}, {"type": "flatten"}, {"type": "dense", "units": 2}],
     (1, 11), [True, True, False]),
    # identity and relu links with a left padding of 1 (valid -> 1, "same" k=4 -> "same" k=2
    # dilated 3), no bias; not linked: padded sizes 10 -> 11, a gelu (not only y), the flatten
    ([{"type": "conv1d", "filters": 4, "kernel_size": 3},
      {"type": "conv1d", "filters": 3, "kernel_size": 3, "padding": 1, "bias": False, "activation": "relu"},
      {"type": "conv1d", "filters": 5, "kernel_size": 4, "padding": "same", "activation": "relu"},
      {"type": "conv1d", "filters": 3, "kernel_size": 2, "dilation": 3, "padding": "same", "activation": "gelu"},
      {"type": "conv1d", "filters": 3, "kernel_size": 1, "activation": "tanh"}, {"type": "flatten"}],
     (2, 10), [True, False, True, False, False]),
])
def test_linked_shifted_convolutions_give_bitwise_the_same_values_and_gradients(specs, shape, linked_after):
    # Reference: an identity reshape after every convolution stops the links. Batches of 4, 4
    # (the padded buffers reused: their padding must still be zero), 3 and 4 again, training
    # and evaluation; small integers, so many pre-activations are exactly 0 or negative. The
    # linked model's evaluation forwards run in blocks of 2 samples (then 1), and the backward
    # after them rebuilds the batch's cols.
    rng = np.random.default_rng(8)
    linked = Sequential.from_config(specs, shape, 0, "float64")
    apart = []
    for spec, layer in zip(specs, linked.layers):
        apart += [spec] + [{"type": "reshape", "shape": list(layer.output_shape)}] * ("conv" in spec["type"])
    plain = Sequential.from_config(apart, shape, 0, "float64")
    convs = [layer for layer in linked.layers if isinstance(layer, Conv1D)]
    assert [c.shifted_next is not None for c in convs] == linked_after
    assert [c.shifted_in for c in convs] == [False] + linked_after[:-1]
    assert not any(getattr(c, "shifted_next", None) or getattr(c, "shifted_in", False) for c in plain.layers)
    for c in convs:
        c.block = 2
    grads = [list(m.named_grads().values()) for m in (linked, plain)]
    for a, b in zip(*[list(m.named_parameters().values()) for m in (linked, plain)]):
        a[...] = b[...] = rng.integers(-2, 3, a.shape)
    for n, training in [(4, True), (4, True), (3, False), (4, False), (3, True)]:
        x = rng.integers(-2, 3, (n,) + shape).astype(np.float64)
        dy = rng.integers(-3, 4, (n,) + linked.output_shape).astype(np.float64)
        bits = _bits_of_both((linked, plain), grads, x, dy, training)
        assert all(np.array_equal(a, b) for a, b in zip(*bits))
        assert all(np.count_nonzero(a) > 0 for a in bits[0])
