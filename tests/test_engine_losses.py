"""Losses: hand-computed values, gradients against central differences, stability, dtype, errors."""
from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

from nnctl.engine.gradcheck import gradcheck, loss_gradcheck
from nnctl.engine.losses import LOSSES, default_loss, get_loss
from nnctl.engine.model import Sequential
from nnctl.errors import ConfigError, DataError

TOL = 1e-6
ELBO_LATENT = 2

def _targets(name: str, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    if name == "cross_entropy":
        return rng.integers(0, shape[-1], shape[:-1])
    if name == "binary_cross_entropy":
        return rng.integers(0, 2, shape).astype(np.float64)
    if name == "reconstruction":  # inputs in [0, 1], so binary_cross_entropy fits as well
        return rng.uniform(size=shape)
    if name == "elbo":  # z is [reconstruction, mean, log-variance]: the inputs are z's first columns
        return rng.uniform(size=(shape[0], shape[1] - 2 * ELBO_LATENT))
    return rng.standard_normal(shape)


# (name, options, shape of z, scale of z)
LOSS_CASES = [
    ("cross_entropy", {}, (5, 4), 1.0),
    ("cross_entropy", {"label_smoothing": 0.1}, (6, 3), 2.0),
    ("cross_entropy", {"class_weights": [0.5, 2.0, 1.0]}, (7, 3), 1.0),
    ("cross_entropy", {"label_smoothing": 0.2, "class_weights": [1.0, 0.0, 3.0, 0.5]}, (6, 4), 1.0),
    ("cross_entropy", {}, (2, 3, 5), 1.0),
    ("binary_cross_entropy", {}, (6, 1), 2.0),
    ("binary_cross_entropy", {}, (6,), 2.0),
    ("binary_cross_entropy", {}, (4, 3), 1.0),
    ("mse", {}, (5, 3), 1.0),
    ("mae", {}, (5, 2), 1.0),
    ("huber", {}, (6, 2), 0.3),            # mostly inside delta
    ("huber", {"delta": 0.5}, (6, 2), 3.0),  # mostly outside
    ("huber", {"delta": 2.0}, (8, 3), 2.0),  # both regimes
    ("reconstruction", {}, (5, 4), 1.0),
    ("reconstruction", {"reconstruction": "binary_cross_entropy"}, (5, 4), 2.0),
    ("elbo", {}, (5, 3 + 2 * ELBO_LATENT), 1.0),
    ("elbo", {"reconstruction": "binary_cross_entropy", "beta": 0.3}, (6, 4 + 2 * ELBO_LATENT), 1.0),
]


def test_every_loss_has_a_case():
    assert {name for name, *_ in LOSS_CASES} == set(LOSSES.entries)


@pytest.mark.parametrize("name,opts,shape,scale", LOSS_CASES,
                         ids=[f"{c[0]}{c[1]}{c[2]}" for c in LOSS_CASES])
def test_loss_gradient_matches_central_differences(name, opts, shape, scale):
    rng = np.random.default_rng(zlib.crc32(f"{name}{opts}{shape}".encode()))
    loss = LOSSES.get(name)(**opts)
    z = rng.standard_normal(shape) * scale
    y = _targets(name, rng, shape)
    if name in ("mae", "huber"):  # keep residuals away from the kinks of |r| and of huber at delta
        r = z - y
        z = np.where(np.abs(r) < 0.05, z + 0.1, z)
        d = opts.get("delta", 1.0)
        r = z - y
        z = np.where(np.abs(np.abs(r) - d) < 0.05, z + 0.1 * np.sign(r), z)
    assert loss_gradcheck(loss, z, y) < TOL


@pytest.mark.parametrize("name,opts,shape,scale", [c for c in LOSS_CASES if len(c[2]) == 2],
                         ids=[f"{c[0]}{c[1]}{c[2]}" for c in LOSS_CASES if len(c[2]) == 2])
def test_loss_through_a_model_gradcheck(name, opts, shape, scale):
    rng = np.random.default_rng(5)
    n, k = shape
    model = Sequential.from_config([{"type": "dense", "units": 6, "activation": "tanh"},
                                    {"type": "dense", "units": k}], (3,), np.random.default_rng(1), "float64")
    x = rng.standard_normal((n, 3))
    y = _targets(name, rng, shape)
    errors = gradcheck(model, x, y, {"name": name, **opts})
    assert max(errors.values()) < TOL, errors


# -- hand-computed values --------------------------------------------------------------------
def _lse(row):
    return math.log(sum(math.exp(v) for v in row))


def test_cross_entropy_values_by_hand():
    z = np.array([[1.0, 2.0, 3.0], [1.0, 0.0, -1.0]])
    y = np.array([2, 0])
    l0, l1 = _lse(z[0]) - 3.0, _lse(z[1]) - 1.0
    ce = get_loss("cross_entropy")
    value, dz = ce(z, y)
    assert value == pytest.approx((l0 + l1) / 2, rel=1e-14)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(dz, (p - np.eye(3)[y]) / 2, rtol=1e-13)
    # label smoothing 0.3: q = 0.7 onehot + 0.1
    s0 = _lse(z[0]) - 0.7 * 3.0 - 0.1 * (1 + 2 + 3)
    s1 = _lse(z[1]) - 0.7 * 1.0 - 0.1 * (1 + 0 - 1)
    ls = get_loss({"name": "cross_entropy", "label_smoothing": 0.3})
    value, dz = ls(z, y)
    assert value == pytest.approx((s0 + s1) / 2, rel=1e-14)
    np.testing.assert_allclose(dz, (p - (0.7 * np.eye(3)[y] + 0.1)) / 2, rtol=1e-13, atol=1e-16)
    # class weights [1, 2, 3]: samples weigh w[2] = 3 and w[0] = 1
    cw = get_loss({"name": "cross_entropy", "class_weights": [1.0, 2.0, 3.0]})
    value, dz = cw(z, y)
    assert value == pytest.approx((3 * l0 + 1 * l1) / 4, rel=1e-14)
    np.testing.assert_allclose(dz, (p - np.eye(3)[y]) * np.array([[3.0], [1.0]]) / 4, rtol=1e-13)
    both = get_loss({"name": "cross_entropy", "class_weights": [1.0, 2.0, 3.0], "label_smoothing": 0.3})
    assert both.value(z, y) == pytest.approx((3 * s0 + 1 * s1) / 4, rel=1e-14)
    assert get_loss({"name": "cross_entropy", "class_weights": [1.0, 0.0, 0.0]})(z, np.array([1, 2]))[0] == 0.0


def test_cross_entropy_is_stable_for_huge_logits():
    z = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 5000.0]])
    value, dz = get_loss("cross_entropy")(z, np.array([0, 0]))
    assert value == pytest.approx((0.0 + 5000.0) / 2)
    assert np.all(np.isfinite(dz))


def test_binary_cross_entropy_at_extreme_logits():
    bce = get_loss("binary_cross_entropy")
    z = np.array([[1000.0], [-1000.0], [1000.0], [-1000.0]])
    y = np.array([1, 0, 0, 1])
    value, dz = bce(z, y)
    assert value == 500.0  # (0 + 0 + 1000 + 1000) / 4, exactly
    np.testing.assert_array_equal(dz, np.array([[0.0], [0.0], [0.25], [-0.25]]))
    value, dz = bce(np.array([0.0, 2.0]), np.array([1.0, 0.0]))
    assert value == pytest.approx((math.log(2) + 2 + math.log1p(math.exp(-2))) / 2, rel=1e-15)
    np.testing.assert_allclose(dz, [(0.5 - 1) / 2, (1 / (1 + math.exp(-2))) / 2], rtol=1e-15)


def test_regression_losses_by_hand():
    z = np.array([[0.5], [4.0], [-1.0]])
    y = np.array([0.0, 1.0, -1.0])  # (N,) targets for (N, 1) outputs
    value, dz = get_loss("mse")(z, y)
    assert value == pytest.approx((0.25 + 9.0 + 0.0) / 3, rel=1e-15)
    np.testing.assert_allclose(dz, [[1.0 / 3], [6.0 / 3], [0.0]], rtol=1e-15)
    value, dz = get_loss("l1")(z, y)
    assert value == pytest.approx((0.5 + 3.0) / 3, rel=1e-15)
    np.testing.assert_allclose(dz, [[1 / 3], [1 / 3], [0.0]], rtol=1e-15)
    # huber, delta 1: r = 0.5 inside (0.125), r = 3 outside (1 * (3 - 0.5) = 2.5)
    value, dz = get_loss("huber")(z, y)
    assert value == pytest.approx((0.125 + 2.5 + 0.0) / 3, rel=1e-15)
    np.testing.assert_allclose(dz, [[0.5 / 3], [1.0 / 3], [0.0]], rtol=1e-15)
    value, dz = get_loss({"name": "huber", "delta": 2.0})(np.array([[-3.0, 1.5]]), np.array([[0.0, 0.0]]))
    assert value == pytest.approx((2.0 * (3.0 - 1.0) + 0.5 * 1.5 ** 2) / 2, rel=1e-15)
    np.testing.assert_allclose(dz, [[-2.0 / 2, 1.5 / 2]], rtol=1e-15)


def test_outputs_and_declared_pairing():
    assert LOSSES.get("cross_entropy").OUTPUT == "softmax"
    assert LOSSES.get("binary_cross_entropy").OUTPUT == "sigmoid"
    for name in ("mse", "mae", "huber"):
        assert LOSSES.get(name).OUTPUT == "identity"
    p = get_loss("cross_entropy").output(np.array([[0.0, math.log(3.0)]]))
    np.testing.assert_allclose(p, [[0.25, 0.75]], rtol=1e-15)
    np.testing.assert_allclose(get_loss("bce").output(np.array([[0.0], [1000.0]])), [[0.5], [1.0]])
    z = np.array([[1.5]])
    assert get_loss("mse").output(z) is z


def test_float32_stays_float32():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((4, 3)).astype(np.float32)
    cases = [("cross_entropy", {"label_smoothing": 0.1, "class_weights": [1.0, 2.0, 3.0]}, np.array([0, 1, 2, 0])),
             ("binary_cross_entropy", {}, rng.integers(0, 2, (4, 3))),
             ("mse", {}, rng.standard_normal((4, 3))), ("mae", {}, rng.standard_normal((4, 3))),
             ("huber", {}, rng.standard_normal((4, 3)))]
    for name, opts, y in cases:
        loss = get_loss({"name": name, **opts})
        value, dz = loss(z, y)
        assert isinstance(value, float) and dz.dtype == np.float32 and dz.shape == z.shape, name
        assert loss.output(z).dtype == np.float32, name


def test_default_loss():
    assert default_loss("classification", 10) == "cross_entropy"
    assert default_loss("classification", 2) == "cross_entropy"
    assert default_loss("regression", 1) == "mse"
    with pytest.raises(ConfigError, match="unknown task 'clustering'"):
        default_loss("clustering", 3)


def test_loss_errors_are_one_line_and_name_the_problem():
    ce = get_loss("cross_entropy")
    z = np.zeros((2, 3))
    with pytest.raises(DataError) as err:
        ce(z, np.array([0, 3]))
    assert str(err.value) == "cross_entropy: target class 3 is out of range for 3 classes (0..2)"
    with pytest.raises(DataError, match="cross_entropy: targets must be integer class indices, got float64"):
        ce(z, np.array([0.0, 1.0]))
    with pytest.raises(DataError, match="cross_entropy: 3 targets for 2 rows"):
        ce(z, np.array([0, 1, 2]))
    with pytest.raises(ConfigError) as err:
        get_loss({"name": "cross_entropy", "class_weights": [1.0, 2.0]})(z, np.array([0, 1]))
    assert str(err.value) == "cross_entropy: class_weights has 2 entries but the model outputs 3 classes"
    with pytest.raises(ConfigError, match=r"cross_entropy.label_smoothing: must be < 1, got 1"):
        get_loss({"name": "cross_entropy", "label_smoothing": 1.0})
    with pytest.raises(DataError, match=r"binary_cross_entropy: targets must be in \[0, 1\], got 2"):
        get_loss("binary_cross_entropy")(np.zeros((2, 1)), np.array([0, 2]))
    with pytest.raises(DataError, match=r"mse: targets of shape \(3,\) do not match outputs of shape \(2, 1\)"):
        get_loss("mse")(np.zeros((2, 1)), np.zeros(3))
    with pytest.raises(ConfigError, match="huber.delta: must be > 0"):
        get_loss({"name": "huber", "delta": 0})
    with pytest.raises(ConfigError, match="unknown loss 'mse2'"):
        get_loss("mse2")
