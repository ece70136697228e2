"""Autoencoders and VAEs: gradient checks, the KL term, training on digits, sample/encode/decode, eval."""
from __future__ import annotations

import numpy as np
import pytest

from nnctl.engine.gradcheck import gradcheck, loss_gradcheck
from nnctl.engine.losses import LOSSES, kl_divergence
from nnctl.engine.model import Sequential

TOL = 1e-6
H = 1e-5   # the central-difference step of every check here


def _ae(variational: bool, output: str = "identity") -> list[dict]:
    return [{"type": "autoencoder", "encoder": [{"type": "dense", "units": 5, "activation": "tanh"}], "latent": 2,
             "decoder": [{"type": "dense", "units": 4, "activation": "tanh"}], "variational": variational,
             "output": output}]


@pytest.mark.parametrize("training", [True, False])
def test_sampling_layer_gradcheck(training):
    rng = np.random.default_rng(3)
    model = Sequential.from_config([{"type": "sampling"}], (6,), 1, "float64")
    errors = gradcheck(model, rng.normal(size=(5, 6)), training=training, h=H)
    assert errors["input"] < TOL


def test_sampling_draws_from_the_model_generator_and_uses_the_mean_in_eval():
    model = Sequential.from_config([{"type": "sampling"}], (4,), 7, "float64")
    x = np.array([[1.0, -2.0, np.log(4.0), 0.0]])
    assert model.forward(x, training=False).tolist() == [[1.0, -2.0]]
    state = model.rng.bit_generator.state
    z = model.forward(x, training=True)
    model.rng.bit_generator.state = state
    eps = model.rng.standard_normal((1, 2))
    # sigma = exp(logvar / 2) = [2, 1]
    np.testing.assert_allclose(z, [[1.0 + 2.0 * eps[0, 0], -2.0 + eps[0, 1]]], rtol=0, atol=1e-12)


@pytest.mark.parametrize("variational,output,loss", [
    (True, "identity", {"name": "elbo", "beta": 0.7}),
    (True, "identity", {"name": "elbo", "reconstruction": "binary_cross_entropy"}),
    (False, "sigmoid", {"name": "reconstruction"}),
    (False, "identity", {"name": "reconstruction", "reconstruction": "binary_cross_entropy"}),
])
def test_autoencoder_gradcheck_through_the_loss(variational, output, loss):
    rng = np.random.default_rng(5)
    model = Sequential.from_config(_ae(variational, output), (6,), 1, "float64")
    errors = gradcheck(model, rng.normal(size=(5, 6)), rng.uniform(size=(5, 6)), loss=loss, h=H)
    assert max(errors.values()) < TOL, errors
    assert model.output_shape == ((6 + 2 * 2,) if variational else (6,))


def test_kl_term_matches_its_closed_form_and_its_gradient():
    rng = np.random.default_rng(11)
    mu, logvar = rng.normal(size=(4, 3)), rng.normal(size=(4, 3)) * 0.5
    # KL(N(m, s^2) || N(0, 1)) = log(1/s) + (s^2 + m^2) / 2 - 1/2, per dimension
    s = np.exp(0.5 * logvar)
    by_hand = (np.log(1.0 / s) + (s ** 2 + mu ** 2) / 2 - 0.5).sum(axis=1)
    np.testing.assert_allclose(kl_divergence(mu, logvar), by_hand, rtol=1e-12)
    # with beta = 2 and an exact reconstruction (mse 0), the loss is 2 * mean KL
    y = rng.uniform(size=(4, 5))
    z = np.concatenate([y, mu, logvar], axis=1)
    elbo = LOSSES.create({"name": "elbo", "beta": 2.0})
    value, dz = elbo(z, y)
    assert value == pytest.approx(2.0 * by_hand.mean(), rel=1e-12)
    np.testing.assert_allclose(dz[:, 5:8], 2.0 * mu / 4, rtol=1e-12)
    assert elbo.parts(z, y) == {"reconstruction": 0.0, "kl": pytest.approx(by_hand.mean(), rel=1e-12)}
    assert loss_gradcheck(elbo, z + 0.1, y, h=H) < TOL
