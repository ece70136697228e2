"""Activation functions as forward/backward pairs that can run in place, and their registry.

Each activation is a small class with declared PARAMS. `forward(x, out)` returns f(x),
writing into `out` when given (which may be `x` itself); `backward(x, y, dy, out)` returns
dL/dx = f'(x) * dy (for softmax, the Jacobian-vector product over the last axis), where
y = f(x) is the forward output. `out` may be `dy` itself.

`USES_X` says whether backward reads the input x. When it is False, backward only needs y,
so a layer may compute the activation in place over its pre-activation buffer and pass
`x=None` to backward (relu, leaky_relu, elu, sigmoid, tanh, softplus, softmax, identity).

Every activation is also a layer of the same name (see layers.py), and Dense fuses one.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from nnctl.engine.base import Workspace, check_hparams
from nnctl.engine.hparams import Param, Registry, defaults

ACTIVATIONS = Registry("activation")

_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715


# -- stable elementwise helpers shared with the losses ----------------------------------
def sigmoid(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """1 / (1 + exp(-x)) for any x, without overflow; `out` may be `x`.

    Notes
    -----
    With e = exp(-|x|) in (0, 1]: sigma(x) = 1/(1+e) for x >= 0 and e/(1+e) for x < 0. Both
    branches only ever exponentiate a non-positive number, so sigma(+-1000) is exactly 1 / 0
    and small outputs keep their relative precision (sigma(-40) ~ 4.2e-18, not 0).
    """
    out = np.empty_like(x) if out is None else out
    pos = x >= 0  # taken before `out`, which may alias x, is overwritten
    np.abs(x, out=out)
    np.negative(out, out=out)
    np.exp(out, out=out)
    r = out + 1.0
    np.reciprocal(r, out=r)
    np.multiply(out, r, out=out)
    np.copyto(out, r, where=pos)
    return out


def softmax(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """exp(x) / sum(exp(x)) over the last axis, shifted by the row max so nothing overflows."""
    out = np.empty_like(x) if out is None else out
    m = x.max(axis=-1, keepdims=True)
    np.subtract(x, m, out=out)
    np.exp(out, out=out)
    s = out.sum(axis=-1, keepdims=True)
    np.divide(out, s, out=out)
    return out


# erf without scipy: piecewise Chebyshev interpolants on |x| in [0, 6], fitted once at import
# from math.erf at Chebyshev nodes. Each piece is 0.5 wide and of degree 15, which puts the
# interpolation error below float64 rounding, so the interpolant's derivative also matches
# the exact Gaussian density used by GELU's backward. On the first piece the interpolant is
# of erf(x)/x (even and smooth), times x, so erf keeps its relative precision near 0. Past 6,
# erf(x) rounds to 1 in float64 (1 - erf(6) ~ 2e-17), so |x| is clamped there.
_ERF_WIDTH = 0.5
_ERF_PIECES = 12
_ERF_DEGREE = 15


def _fit_erf_table() -> np.ndarray:
    """(pieces, degree+1) Chebyshev coefficients in s = (|x| - center) / half, in [-1, 1].

    Notes
    -----
    The coefficients solve V c = f(nodes) with V[k, j] = T_j(s_k) built by the recurrence
    T_{j+1} = 2 s T_j - T_{j-1} at the float nodes themselves: the interpolant then passes
    through the rounded nodes exactly (the closed cosine-sum formula assumes exact nodes and
    leaves ~1e-15 of noise in the high coefficients).
    """
    n = _ERF_DEGREE + 1
    nodes = np.cos(np.pi * (np.arange(n) + 0.5) / n)
    vander = np.empty((n, n))
    vander[:, 0] = 1.0
    vander[:, 1] = nodes
    for j in range(2, n):
        vander[:, j] = 2.0 * nodes * vander[:, j - 1] - vander[:, j - 2]
    half = _ERF_WIDTH / 2
    table = np.empty((_ERF_PIECES, n))
    for piece in range(_ERF_PIECES):
        xs = (piece + 0.5) * _ERF_WIDTH + half * nodes
        values = np.array([math.erf(v) for v in xs])
        if piece == 0:
            values = values / xs
        table[piece] = np.linalg.solve(vander, values)
    return table


_ERF_TABLE = {np.dtype(np.float64): _fit_erf_table()}
_ERF_TABLE[np.dtype(np.float32)] = _ERF_TABLE[np.dtype(np.float64)].astype(np.float32)
_ERF_CENTERS = {dt: ((np.arange(_ERF_PIECES) + 0.5) * _ERF_WIDTH).astype(dt) for dt in _ERF_TABLE}


def erf(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The error function, elementwise, in x's float dtype (float64: within a few ulp of math.erf).

    Integer or other inputs are computed in float64. `out` may be `x`.

    Notes
    -----
    Clenshaw's recurrence b_j = 2 s b_{j+1} - b_{j+2} + c_j evaluates sum_j c_j T_j(s) as
    c_0 + s b_1 - b_2, with each element's coefficients taken from its own piece.
    """
    x = np.asarray(x)
    dt = x.dtype if x.dtype in _ERF_TABLE else np.dtype(np.float64)
    xv = x.astype(dt, copy=False)
    table, centers = _ERF_TABLE[dt], _ERF_CENTERS[dt]
    t = np.abs(xv)
    np.minimum(t, _ERF_PIECES * _ERF_WIDTH, out=t)
    k = (t * (1.0 / _ERF_WIDTH)).astype(np.intp)
    np.minimum(k, _ERF_PIECES - 1, out=k)
    s = np.subtract(t, centers[k])
    s *= 2.0 / _ERF_WIDTH
    two_s = s * 2.0
    coef = table[k]
    b1 = np.zeros_like(s)
    b2 = np.zeros_like(s)
    for j in range(_ERF_DEGREE, 0, -1):
        b0 = two_s * b1
        b0 -= b2
        b0 += coef[..., j]
        b1, b2 = b0, b1
    acc = s * b1
    acc += coef[..., 0]
    acc -= b2
    # first piece: the interpolant is erf(x)/x
    np.multiply(acc, np.where(k == 0, t, 1.0).astype(dt, copy=False), out=acc)
    np.copysign(acc, xv, out=acc)
    if out is None:
        return acc
    np.copyto(out, acc, casting="same_kind")
    return out


# -- the activation classes ---------------------------------------------------------------
class Activation:
    """Base class: declared PARAMS, constructor keywords, scratch buffers reused per shape."""

    NAME = "activation"
    PARAMS: dict[str, Param] = {}
    USES_X = True

    def __init__(self, **hparams: Any):
        unknown = set(hparams) - set(self.PARAMS)
        if unknown:
            from nnctl.errors import ConfigError
            raise ConfigError(f"{self.NAME}: unknown option(s) {', '.join(sorted(unknown))}")
        self.hparams = {**defaults(self.PARAMS), **hparams}
        check_hparams(self.NAME, self.PARAMS, self.hparams)
        self.ws = Workspace()

    def forward(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """y = f(x), same shape and dtype as x."""
        raise NotImplementedError

    def backward(self, x: np.ndarray | None, y: np.ndarray, dy: np.ndarray,
                 out: np.ndarray | None = None) -> np.ndarray:
        """dx = f'(x) * dy; x may be None when USES_X is False."""
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return dict(self.hparams)

    def spec(self) -> str | dict[str, Any]:
        """Canonical reference: the bare name, or {name, **options} when it has options."""
        return {"name": self.NAME, **self.hparams} if self.hparams else self.NAME

    def _scratch(self, name: str, like: np.ndarray, dtype=None) -> np.ndarray:
        return self.ws.get(name, like.shape, like.dtype if dtype is None else dtype)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
        return f"{type(self).__name__}({args})"


def _out(out: np.ndarray | None, like: np.ndarray) -> np.ndarray:
    return np.empty_like(like) if out is None else out


@ACTIVATIONS.register("identity", "linear")
class Identity(Activation):
    """f(x) = x. Returns its input itself unless `out` is given."""

    USES_X = False

    def forward(self, x, out=None):
        if out is None or out is x:
            return x
        np.copyto(out, x)
        return out

    def backward(self, x, y, dy, out=None):
        if out is None or out is dy:
            return dy
        np.copyto(out, dy)
        return out


@ACTIVATIONS.register("relu")
class ReLU(Activation):
    """f(x) = max(x, 0); f'(x) = [x > 0] = [y > 0] (0 at x = 0)."""

    USES_X = False

    def forward(self, x, out=None):
        return np.maximum(x, 0.0, out=_out(out, x))

    def backward(self, x, y, dy, out=None):
        mask = self._scratch("mask", y, np.bool_)
        np.greater(y, 0.0, out=mask)
        return np.multiply(dy, mask, out=_out(out, dy))


@ACTIVATIONS.register("leaky_relu")
class LeakyReLU(Activation):
    """f(x) = x for x > 0, alpha * x otherwise; f' is 1 or alpha ([x > 0] = [y > 0] as alpha >= 0)."""

    PARAMS = {"alpha": Param("float", 0.01, ge=0.0, le=1.0, doc="slope for x <= 0")}
    USES_X = False

    def forward(self, x, out=None):
        # max(x, alpha x) is the function for 0 <= alpha <= 1, and needs no mask.
        scaled = self._scratch("scaled", x)
        np.multiply(x, self.hparams["alpha"], out=scaled)
        return np.maximum(x, scaled, out=_out(out, x))

    def backward(self, x, y, dy, out=None):
        alpha = self.hparams["alpha"]
        mask = self._scratch("mask", y, np.bool_)
        np.greater(y, 0.0, out=mask)
        slope = self._scratch("slope", y)
        np.multiply(mask, 1.0 - alpha, out=slope)
        slope += alpha
        return np.multiply(dy, slope, out=_out(out, dy))


@ACTIVATIONS.register("elu")
class ELU(Activation):
    """f(x) = x for x > 0, alpha * (exp(x) - 1) otherwise.

    Notes
    -----
    For x <= 0, f'(x) = alpha * exp(x) = y + alpha, and y > 0 exactly when x > 0, so the
    backward pass needs only y.
    """

    PARAMS = {"alpha": Param("float", 1.0, gt=0.0, doc="scale of the negative part")}
    USES_X = False

    def forward(self, x, out=None):
        neg = self._scratch("neg", x)
        np.minimum(x, 0.0, out=neg)
        np.expm1(neg, out=neg)
        neg *= self.hparams["alpha"]
        out = np.maximum(x, 0.0, out=_out(out, x))
        out += neg
        return out

    def backward(self, x, y, dy, out=None):
        alpha = self.hparams["alpha"]
        slope = self._scratch("slope", y)
        np.add(y, alpha, out=slope)
        np.copyto(slope, 1.0, where=y > 0)
        return np.multiply(dy, slope, out=_out(out, dy))


@ACTIVATIONS.register("sigmoid")
class Sigmoid(Activation):
    """f(x) = 1 / (1 + exp(-x)) (stable for any x); f'(x) = y (1 - y)."""

    USES_X = False

    def forward(self, x, out=None):
        return sigmoid(x, _out(out, x))

    def backward(self, x, y, dy, out=None):
        slope = self._scratch("slope", y)
        np.subtract(1.0, y, out=slope)
        slope *= y
        return np.multiply(dy, slope, out=_out(out, dy))


@ACTIVATIONS.register("tanh")
class Tanh(Activation):
    """f(x) = tanh(x); f'(x) = 1 - y^2."""

    USES_X = False

    def forward(self, x, out=None):
        return np.tanh(x, out=_out(out, x))

    def backward(self, x, y, dy, out=None):
        slope = self._scratch("slope", y)
        np.multiply(y, y, out=slope)
        np.subtract(1.0, slope, out=slope)
        return np.multiply(dy, slope, out=_out(out, dy))


@ACTIVATIONS.register("swish", "silu")
class Swish(Activation):
    """f(x) = x * sigmoid(x); f'(x) = s (1 + x (1 - s)) with s = sigmoid(x)."""

    def forward(self, x, out=None):
        s = sigmoid(x, self._scratch("s", x))
        return np.multiply(x, s, out=_out(out, x))

    def backward(self, x, y, dy, out=None):
        s = sigmoid(x, self._scratch("s", x))
        slope = self._scratch("slope", x)
        np.subtract(1.0, s, out=slope)
        slope *= x
        slope += 1.0
        slope *= s
        return np.multiply(dy, slope, out=_out(out, dy))


@ACTIVATIONS.register("gelu")
class GELU(Activation):
    """f(x) = x * Phi(x), Phi the standard normal CDF; or its tanh approximation.

    Notes
    -----
    "none" (exact): Phi(x) = (1 + erf(x / sqrt 2)) / 2, f'(x) = Phi(x) + x phi(x) with
    phi(x) = exp(-x^2 / 2) / sqrt(2 pi). `erf` is this module's own (float64-accurate).
    "tanh": f(x) = x (1 + tanh u) / 2 with u = sqrt(2/pi) (x + 0.044715 x^3), and
    f'(x) = (1 + tanh u) / 2 + x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2) / 2.
    """

    PARAMS = {"approximate": Param("str", "none", choices=("none", "tanh"),
                                   doc="none: exact (erf); tanh: the tanh approximation")}

    def _cdf(self, x: np.ndarray) -> np.ndarray:
        c = self._scratch("c", x)
        if self.hparams["approximate"] == "tanh":
            np.multiply(x, x, out=c)
            c *= _GELU_CUBIC
            c += 1.0
            c *= x
            c *= _SQRT_2_OVER_PI
            np.tanh(c, out=c)  # c = tanh(u) for now
        else:
            np.multiply(x, _SQRT1_2, out=c)
            erf(c, out=c)
        return c

    def forward(self, x, out=None):
        c = self._cdf(x)
        c += 1.0
        c *= 0.5
        return np.multiply(x, c, out=_out(out, x))

    def backward(self, x, y, dy, out=None):
        c = self._cdf(x)  # tanh(u) or erf(x / sqrt 2)
        slope = self._scratch("slope", x)
        if self.hparams["approximate"] == "tanh":
            du = self._scratch("du", x)
            np.multiply(x, x, out=du)
            du *= 3.0 * _GELU_CUBIC
            du += 1.0
            du *= _SQRT_2_OVER_PI
            np.multiply(c, c, out=slope)
            np.subtract(1.0, slope, out=slope)
            slope *= du
            slope *= x
            slope += c
            slope += 1.0
            slope *= 0.5
        else:
            np.multiply(x, x, out=slope)
            slope *= -0.5
            np.exp(slope, out=slope)
            slope *= _INV_SQRT_2PI
            slope *= x
            c += 1.0
            c *= 0.5
            slope += c
        return np.multiply(dy, slope, out=_out(out, dy))


@ACTIVATIONS.register("softplus")
class Softplus(Activation):
    """f(x) = log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)) (stable: softplus(1000) = 1000).

    Notes
    -----
    f'(x) = sigmoid(x) = 1 - exp(-y), computed as -expm1(-y), so backward needs only y.
    """

    USES_X = False

    def forward(self, x, out=None):
        tail = self._scratch("tail", x)
        np.abs(x, out=tail)
        np.negative(tail, out=tail)
        np.exp(tail, out=tail)
        np.log1p(tail, out=tail)
        out = np.maximum(x, 0.0, out=_out(out, x))
        out += tail
        return out

    def backward(self, x, y, dy, out=None):
        slope = self._scratch("slope", y)
        np.negative(y, out=slope)
        np.expm1(slope, out=slope)
        np.negative(slope, out=slope)
        return np.multiply(dy, slope, out=_out(out, dy))


@ACTIVATIONS.register("softmax")
class Softmax(Activation):
    """Softmax over the last axis.

    Notes
    -----
    The Jacobian is diag(y) - y y^T per row, so dx = y * (dy - sum(dy * y, axis=-1)).
    Pair a classification model's logits with the cross_entropy loss instead of ending
    the model in softmax: the fused gradient there is exact and cheaper.
    """

    USES_X = False

    def forward(self, x, out=None):
        return softmax(x, _out(out, x))

    def backward(self, x, y, dy, out=None):
        prod = self._scratch("prod", y)
        np.multiply(dy, y, out=prod)
        s = prod.sum(axis=-1, keepdims=True)
        out = np.subtract(dy, s, out=_out(out, dy))
        out *= y
        return out


def get_activation(spec: Any) -> Activation:
    """An Activation from a name ("relu"), a mapping ({"name": "leaky_relu", "alpha": 0.2}),
    an instance (returned as is) or None (identity). Unknown names raise ConfigError."""
    if isinstance(spec, Activation):
        return spec
    if spec is None:
        return Identity()
    if isinstance(spec, str):
        return ACTIVATIONS.get(spec)()
    if isinstance(spec, dict) and isinstance(spec.get("name"), str):
        return ACTIVATIONS.get(spec["name"])(**{k: v for k, v in spec.items() if k != "name"})
    from nnctl.errors import ConfigError
    raise ConfigError(f"activation must be a name or a mapping with 'name', got {spec!r}")


def activation_name(spec: Any) -> str:
    """The canonical name of an activation reference (str, mapping or instance)."""
    if isinstance(spec, Activation):
        return spec.NAME
    if spec is None:
        return "identity"
    name = spec.get("name") if isinstance(spec, dict) else spec
    return ACTIVATIONS.get(name).NAME
