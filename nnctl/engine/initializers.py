"""Weight initializers, their registry, and the default choice that follows the activation.

An initializer is called as `init(shape, fan_in, fan_out, rng, dtype) -> ndarray`. The
layer computes the fans (`compute_fans` covers dense and conv kernel layouts), so one
initializer serves every layer. Draws are made in float64 from the given Generator and
then cast, so a float32 and a float64 model built from the same seed hold the same weights
up to rounding.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from nnctl.engine.base import building_shapes_only
from nnctl.hparams import Configurable, Param, Registry

INITIALIZERS = Registry("initializer")

# Activations whose units are zero (or near it) for half the inputs: He scaling (2 / fan_in)
# keeps the forward variance constant through them. Everything else gets Glorot.
_HE_ACTIVATIONS = frozenset({"relu", "leaky_relu", "elu", "gelu", "swish", "softplus"})

# The weight initializer a layer gets when its spec names none, by activation family. One
# table, so the defaults panel (`nnctl bench --defaults`) can try candidates and the README can
# cite the evidence for what is here. Until 0.1.0 ReLU-like units defaulted to he_normal; the
# panel found it 3 points behind Glorot-uniform on a wide, overfitting table (blobs-40d) and
# no better anywhere else, and Glorot-uniform is what Keras users expect. Runs record the
# initializer they used, so older runs keep theirs.
DEFAULT_INITIALIZERS = {"relu_like": "xavier_uniform", "other": "xavier_uniform"}

# The bias initializer of every layer that declares `bias_initializer` (dense, conv, recurrent):
# one value, so the defaults panel's bias study swaps it everywhere at once. Zeros is what Keras
# does; the panel (README "Defaults") found neither a 0.01 constant nor PyTorch's fan-in uniform
# bias better beyond the seed spread.
DEFAULT_BIAS_INITIALIZER = "zeros"


def compute_fans(shape: tuple[int, ...], channels_last: bool = False) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of `shape`.

    ()              -> (1, 1)
    (n,)            -> (n, n)
    (in, out)       -> (in, out)                    dense, W used as x @ W
    (out, in, *k)   -> (in * prod(k), out * prod(k)) conv kernel, channels first (default)
    (*k, in, out)   -> (in * prod(k), out * prod(k)) conv kernel, with channels_last=True
    """
    shape = tuple(int(d) for d in shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    if channels_last:
        receptive = math.prod(shape[:-2])
        return shape[-2] * receptive, shape[-1] * receptive
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


class Initializer(Configurable):
    """Base class: declared PARAMS, keyword constructor, `__call__` draws the array."""

    NAME = "initializer"
    PARAMS: dict[str, Param] = {}

    def __call__(self, shape: tuple[int, ...], fan_in: int, fan_out: int,
                 rng: np.random.Generator, dtype) -> np.ndarray:
        if building_shapes_only():
            # sizing only: a read-only zero-stride view has the shape and holds no memory
            return np.broadcast_to(np.zeros((), dtype=dtype), tuple(int(d) for d in shape))
        return self.draw(tuple(int(d) for d in shape), max(int(fan_in), 1), max(int(fan_out), 1),
                         rng).astype(dtype, copy=False)

    def draw(self, shape: tuple[int, ...], fan_in: int, fan_out: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError


def _normal(rng: np.random.Generator, shape, std: float) -> np.ndarray:
    return rng.standard_normal(shape) * std


def _uniform(rng: np.random.Generator, shape, limit: float) -> np.ndarray:
    return rng.uniform(-limit, limit, shape)


@INITIALIZERS.register("he_normal", "kaiming_normal")
class HeNormal(Initializer):
    """N(0, 2 / fan_in) (He et al. 2015), for ReLU-like activations."""

    def draw(self, shape, fan_in, fan_out, rng):
        return _normal(rng, shape, math.sqrt(2.0 / fan_in))


@INITIALIZERS.register("he_uniform", "kaiming_uniform")
class HeUniform(Initializer):
    """U(-l, l) with l = sqrt(6 / fan_in): the same variance as he_normal."""

    def draw(self, shape, fan_in, fan_out, rng):
        return _uniform(rng, shape, math.sqrt(6.0 / fan_in))


@INITIALIZERS.register("xavier_normal", "glorot_normal")
class XavierNormal(Initializer):
    """N(0, 2 / (fan_in + fan_out)) (Glorot & Bengio 2010)."""

    def draw(self, shape, fan_in, fan_out, rng):
        return _normal(rng, shape, math.sqrt(2.0 / (fan_in + fan_out)))


@INITIALIZERS.register("xavier_uniform", "glorot_uniform")
class XavierUniform(Initializer):
    """U(-l, l) with l = sqrt(6 / (fan_in + fan_out)): variance 2 / (fan_in + fan_out)."""

    def draw(self, shape, fan_in, fan_out, rng):
        return _uniform(rng, shape, math.sqrt(6.0 / (fan_in + fan_out)))


@INITIALIZERS.register("lecun_normal")
class LecunNormal(Initializer):
    """N(0, 1 / fan_in) (LeCun 1998; the SELU paper's choice)."""

    def draw(self, shape, fan_in, fan_out, rng):
        return _normal(rng, shape, math.sqrt(1.0 / fan_in))


@INITIALIZERS.register("lecun_uniform")
class LecunUniform(Initializer):
    """U(-l, l) with l = sqrt(3 / fan_in): variance 1 / fan_in."""

    def draw(self, shape, fan_in, fan_out, rng):
        return _uniform(rng, shape, math.sqrt(3.0 / fan_in))


@INITIALIZERS.register("variance_scaling")
class VarianceScaling(Initializer):
    """Zero-mean draws with variance scale / n, n the fan that `mode` names (Keras' general form).

    Notes
    -----
    n = fan_in, fan_out or (fan_in + fan_out) / 2. "normal" draws N(0, scale / n); "uniform"
    draws U(-l, l) with l = sqrt(3 * scale / n), the same variance. he_normal is
    (2, fan_in, normal), xavier_uniform (1, fan_avg, uniform), lecun_normal (1, fan_in, normal).
    scale = 1/3 with fan_in and uniform is U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default
    for nn.Linear and nn.Conv weights and biases.
    """

    PARAMS = {
        "scale": Param("float", 1.0, gt=0.0, doc="variance times the fan"),
        "mode": Param("str", "fan_in", choices=("fan_in", "fan_out", "fan_avg"), doc="which fan divides scale"),
        "distribution": Param("str", "normal", choices=("normal", "uniform"), doc="shape of the draw"),
    }

    def draw(self, shape, fan_in, fan_out, rng):
        h = self.hparams
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[h["mode"]]
        if h["distribution"] == "uniform":
            return _uniform(rng, shape, math.sqrt(3.0 * h["scale"] / n))
        return _normal(rng, shape, math.sqrt(h["scale"] / n))


@INITIALIZERS.register("orthogonal")
class Orthogonal(Initializer):
    """gain * Q, Q with orthonormal columns (or rows, when there are fewer rows than columns).

    Notes
    -----
    The weight is viewed as a matrix (prod(shape[:-1]), shape[-1]). Q comes from the QR
    decomposition of a standard normal matrix, with each column's sign set by the sign of
    R's diagonal so that Q is uniformly (Haar) distributed (Saxe et al. 2014; Mezzadri 2007).
    """

    PARAMS = {"gain": Param("float", 1.0, gt=0.0, doc="scale applied to the orthogonal matrix")}

    def draw(self, shape, fan_in, fan_out, rng):
        if len(shape) < 2:
            rows, cols = 1, (shape[0] if shape else 1)
        else:
            rows, cols = math.prod(shape[:-1]), shape[-1]
        a = rng.standard_normal((max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        q *= np.where(np.diag(r) < 0, -1.0, 1.0)
        if rows < cols:
            q = q.T
        return (self.hparams["gain"] * q).reshape(shape)


@INITIALIZERS.register("zeros")
class Zeros(Initializer):
    """All zeros (the default for biases)."""

    def draw(self, shape, fan_in, fan_out, rng):
        return np.zeros(shape)


@INITIALIZERS.register("ones")
class Ones(Initializer):
    """All ones (the default for normalization scales)."""

    def draw(self, shape, fan_in, fan_out, rng):
        return np.ones(shape)


@INITIALIZERS.register("constant")
class Constant(Initializer):
    """Every entry equal to `value`."""

    PARAMS = {"value": Param("float", 0.0, doc="the constant")}

    def draw(self, shape, fan_in, fan_out, rng):
        return np.full(shape, float(self.hparams["value"]))


@INITIALIZERS.register("normal")
class Normal(Initializer):
    """N(mean, std^2), independent of the fans."""

    PARAMS = {
        "mean": Param("float", 0.0, doc="mean of the normal"),
        "std": Param("float", 0.05, gt=0.0, doc="standard deviation"),
    }

    def draw(self, shape, fan_in, fan_out, rng):
        return self.hparams["mean"] + _normal(rng, shape, self.hparams["std"])


@INITIALIZERS.register("uniform")
class Uniform(Initializer):
    """U(-limit, limit), independent of the fans."""

    PARAMS = {"limit": Param("float", 0.05, gt=0.0, doc="half-width of the interval")}

    def draw(self, shape, fan_in, fan_out, rng):
        return _uniform(rng, shape, self.hparams["limit"])


def get_initializer(spec: Any) -> Initializer:
    """An Initializer from a name, a mapping {"name": ..., **options}, or an instance."""
    if isinstance(spec, Initializer):
        return spec
    return INITIALIZERS.create(spec)


def default_initializer(activation: Any) -> str:
    """The initializer of `DEFAULT_INITIALIZERS` for the activation's family: ReLU-like (relu,
    leaky_relu, elu, gelu, swish/silu, softplus) or the others (tanh, sigmoid, identity, softmax).

    `activation` is a name, a mapping {"name": ...} or an Activation; an unknown name is a
    ConfigError.
    """
    from nnctl.engine.activations import activation_name
    family = "relu_like" if activation_name(activation) in _HE_ACTIVATIONS else "other"
    return DEFAULT_INITIALIZERS[family]
