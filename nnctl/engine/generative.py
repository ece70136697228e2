"""Generative models: the reparameterized `sampling` layer and the `autoencoder` container (AE or VAE).

An autoencoder is one layer holding an encoder stack, a latent head, and a decoder stack that
ends in a dense layer back to the flattened input size:

    x (N, *shape) -> encoder -> head -> [sampling] -> decoder -> dense(D) -> x_hat (N, D)

A plain autoencoder's head is dense(latent) and its output is x_hat (N, D). A VAE's head is
dense(2 * latent) giving the mean and log-variance, the sampling layer draws z from them, and
the output is the concatenation [x_hat (D), mean (latent), log-variance (latent)], so that the
ELBO loss (engine/losses.py) sees everything it needs in the model's output alone and the
trainer treats a VAE like any other model.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from nnctl.engine.base import LAYERS, Layer
from nnctl.engine.layers import CheckedLayer, _shape_text
from nnctl.errors import ConfigError
from nnctl.hparams import REQUIRED, Param


@LAYERS.register("sampling")
class Sampling(CheckedLayer):
    """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I) from the model's Generator; z = mu in evaluation.

    Shapes: x (N, 2L) = [mu (N, L), logvar (N, L)] -> z (N, L).

    Notes
    -----
    The reparameterization of Kingma & Welling (2014): with s = exp(logvar / 2),
    dz/dmu = 1 and dz/dlogvar = eps * s / 2, so dx = [dz, dz * eps * s / 2]. In evaluation
    there is no noise and the gradient of logvar is 0. eps is drawn from the model's Generator,
    whose state the checkpoint holds, so a resumed run draws what the uninterrupted run drew.
    """

    def _build(self, input_shape, rng):
        if len(input_shape) != 1 or input_shape[0] % 2:
            raise ConfigError(f"sampling: needs (mean, log-variance) pairs of shape (2 * latent,), "
                              f"got {_shape_text(input_shape)}")
        self._eps = self._s = None
        return (input_shape[0] // 2,)

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        latent = self.output_shape[0]
        mu, logvar = x[:, :latent], x[:, latent:]
        z = self._buf("z", mu.shape)
        if not training:
            self._eps = None
            z[...] = mu
            return z
        eps = self.rng.standard_normal(dtype=self.dtype, out=self._buf("eps", mu.shape))
        s = self._buf("s", mu.shape)
        np.multiply(logvar, 0.5, out=s)
        np.exp(s, out=s)
        np.multiply(s, eps, out=z)
        z += mu
        self._eps, self._s = eps, s
        return z

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        if not self.input_grad:
            return None
        latent = self.output_shape[0]
        dx = self._buf("dx", (dy.shape[0], 2 * latent))
        dx[:, :latent] = dy
        if self._eps is None:
            dx[:, latent:] = 0.0
        else:
            np.multiply(dy, self._eps, out=dx[:, latent:])
            dx[:, latent:] *= self._s
            dx[:, latent:] *= 0.5
        return dx


@LAYERS.register("autoencoder")
class Autoencoder(CheckedLayer):
    """Encoder, latent head, optional sampling, decoder and the output layer, as one layer.

    Shapes: x (N, *shape) -> (N, D) for an autoencoder, (N, D + 2 * latent) for a VAE
    (D = prod(shape)): the reconstruction, then the posterior mean and log-variance.
    Sub-layers are named encoder.<i>, head, sampling, decoder.<j>, output.
    """

    PARAMS = {
        "encoder": Param("layers", REQUIRED, doc="the encoder's layers; it must end in a flat (N, h) output"),
        "latent": Param("int", REQUIRED, gt=0, doc="size of the code z"),
        "decoder": Param("layers", REQUIRED, doc="the decoder's layers, from z; the output dense layer is added"),
        "variational": Param("bool", False, doc="a VAE: mean and log-variance heads and a sampling layer"),
        "output": Param("str", "identity", choices=("identity", "sigmoid"),
                        doc="activation of the output layer (binary_cross_entropy applies its sigmoid itself)"),
    }

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        from nnctl.engine.model import build_layer   # model.py imports this module through the registry
        self.encoder: list[Layer] = [build_layer(s) for s in self.hparams["encoder"] or []]
        self.decoder: list[Layer] = [build_layer(s) for s in self.hparams["decoder"] or []]
        latent, variational = self.hparams["latent"], self.hparams["variational"]
        self.head = build_layer({"type": "dense", "units": 2 * latent if variational else latent,
                                 "activation": "identity", "initializer": "xavier_uniform"})
        self.sampling = Sampling() if variational else None
        self.out: Layer | None = None   # needs D, known at build

    @property
    def variational(self) -> bool:
        return bool(self.hparams["variational"])

    @property
    def latent(self) -> int:
        return int(self.hparams["latent"])

    def children(self) -> list[tuple[str, Layer]]:
        kids = [(f"encoder.{i}", layer) for i, layer in enumerate(self.encoder)] + [("head", self.head)]
        if self.sampling is not None:
            kids.append(("sampling", self.sampling))
        kids += [(f"decoder.{j}", layer) for j, layer in enumerate(self.decoder)]
        if self.out is not None:
            kids.append(("output", self.out))
        return kids

    def get_config(self) -> dict[str, Any]:
        from nnctl.engine.model import layer_spec
        return {"encoder": [layer_spec(layer) for layer in self.encoder], "latent": self.latent,
                "decoder": [layer_spec(layer) for layer in self.decoder], "variational": self.variational,
                "output": self.hparams["output"]}

    def _build(self, input_shape, rng):
        from nnctl.engine.model import build_layer
        shape = input_shape
        for i, layer in enumerate(self.encoder):
            shape = tuple(layer.build(shape, rng, self.dtype))
        if len(shape) != 1:
            raise ConfigError(f"encoder: ends with samples of shape {_shape_text(shape)}; the latent head "
                              "needs them flat: end it with {type: flatten}")
        shape = tuple(self.head.build(shape, rng, self.dtype))
        if self.sampling is not None:
            shape = tuple(self.sampling.build(shape, rng, self.dtype))
        for layer in self.decoder:
            shape = tuple(layer.build(shape, rng, self.dtype))
        if len(shape) != 1:
            raise ConfigError(f"decoder: ends with samples of shape {_shape_text(shape)}; the output layer "
                              "needs them flat: end it with {type: flatten}")
        self.size = math.prod(input_shape)
        self.out = build_layer({"type": "dense", "units": self.size, "activation": self.hparams["output"],
                                "initializer": "xavier_uniform"})
        self.out.build(shape, rng, self.dtype)
        return (self.size + 2 * self.latent,) if self.variational else (self.size,)

    # -- the two halves, for encode / decode / sample -------------------------------------
    def encode(self, x: np.ndarray) -> np.ndarray:
        """Evaluation-mode codes (N, latent): the posterior mean for a VAE."""
        h = x
        for layer in self.encoder:
            h = layer.forward(h, False)
        return np.array(self.head.forward(h, False)[:, :self.latent])

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Raw reconstructions (N, D) from codes z (N, latent), in evaluation mode."""
        h = np.asarray(z, dtype=self.dtype)
        for layer in self.decoder:
            h = layer.forward(h, False)
        return np.array(self.out.forward(h, False))

    # -- training ------------------------------------------------------------------------
    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        h = x
        for layer in self.encoder:
            h = layer.forward(h, training)
        stats = self.head.forward(h, training)
        h = stats if self.sampling is None else self.sampling.forward(stats, training)
        for layer in self.decoder:
            h = layer.forward(h, training)
        recon = self.out.forward(h, training)
        if self.sampling is None:
            return recon
        y = self._buf("y", (x.shape[0],) + self.output_shape)
        y[:, :self.size] = recon
        y[:, self.size:] = stats
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        g = self.out.backward(dy[:, :self.size] if self.variational else dy)
        for layer in reversed(self.decoder):
            g = layer.backward(g)
        if self.sampling is not None:
            # the loss's own gradient of (mean, log-variance), the KL term, joins the sampled path's
            dstats = self._buf("dstats", (dy.shape[0], 2 * self.latent))
            np.add(self.sampling.backward(g), dy[:, self.size:], out=dstats)
            g = dstats
        g = self.head.backward(g)
        if self.encoder:
            self.encoder[0].input_grad = self.input_grad
            for layer in reversed(self.encoder):
                g = layer.backward(g)
        elif not self.input_grad:
            return None
        return g
