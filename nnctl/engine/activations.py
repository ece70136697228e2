"""Activation functions as forward/backward pairs that can run in place, and their registry.

Each activation is a small class with declared PARAMS. `forward(x, out)` returns f(x),
writing into `out` when given (which may be `x` itself); `backward(x, y, dy, out)` returns
dL/dx = f'(x) * dy (for softmax, the Jacobian-vector product over the last axis), where
y = f(x) is the forward output. `out` may be `dy` itself.

`USES_X` says whether backward reads the input x. When it is False, backward only needs y,
so a layer may compute the activation in place over its pre-activation buffer and pass
`x=None` to backward (relu, leaky_relu, elu, sigmoid, tanh, softplus, softmax, identity).

`SLOPE_IN_FORWARD` says that `forward_slope(x, out, slope)` also writes f'(x) for less than
a backward costs (gelu): a layer that trains keeps the slope, and its backward is dy * slope.

Every activation is also a layer of the same name (see layers.py), and Dense fuses one.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from nnctl.engine.base import Workspace
from nnctl.hparams import Configurable, Param, Registry

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
    np.multiply(out, r, out=out)  # e / (1 + e)
    # + [x >= 0] (1/(1+e) - e/(1+e)): a multiply by the mask, far cheaper than a masked copy
    r -= out
    r *= pos
    out += r
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


# erf/erfc without scipy, from one smooth fit made at import. For z >= 0 write
#     erfc(z) = t exp(-z^2 + g(t)),   t = 2 / (2 + z) in (0, 1],
# where g is analytic on [0, 1] (it tends to log(1 / (2 sqrt(pi))) as z -> inf), so a
# Chebyshev interpolant of g in t converges fast: degree 27 reaches float64 rounding. The
# interpolant is fitted to math.erfc (an asymptotic series where math.erfc underflows), then
# rewritten as a power series in s = 2t - 1 and evaluated by Horner's rule with scalar
# coefficients, elementwise and without branches, which keeps GELU cheap. The power
# coefficients stay small (sum |a_k| ~ 1.46 for either degree, no cancellation), so Horner is
# as accurate as a Clenshaw sum of the Chebyshev series (max error in g over s in [-1, 1]:
# float32 1.4e-7 against 1.9e-7, float64 4.4e-16 both) for two passes a coefficient instead
# of three. float32 inputs use only the coefficients that matter at float32 precision.
_ERFC_DEGREE = 27
_SQRT_PI = math.sqrt(math.pi)


def _erfcx_reference(z: float) -> float:
    """exp(z^2) erfc(z) for z >= 0 in float64 (for the fit only)."""
    if z < 10.0:
        # exp(z^2) with z^2 split as zh^2 + zl (2 zh + zl): zh^2 is exact, so no rounding of z^2 is amplified
        zh = float(np.float32(z))
        zl = z - zh
        return math.erfc(z) * math.exp(zh * zh) * math.exp(zl * (2.0 * zh + zl))
    # erfcx(z) ~ (1 / (z sqrt(pi))) sum_n (-1)^n (2n-1)!! / (2 z^2)^n; for z >= 10 the terms
    # fall below 1e-18 long before they start to grow
    term = total = 1.0
    n = 0
    while abs(term) > 1e-18:
        n += 1
        term *= -(2 * n - 1) / (2.0 * z * z)
        total += term
    return total / (z * _SQRT_PI)


def _fit_erfc() -> np.ndarray:
    """Chebyshev coefficients c_j of g(t) = log(erfcx(z) (2 + z) / 2) in s = 2t - 1.

    Notes
    -----
    The coefficients solve V c = g(nodes), V[k, j] = T_j(s_k) built by the recurrence
    T_{j+1} = 2 s T_j - T_{j-1} at the float Chebyshev nodes s_k = cos(pi (k + 1/2) / n), so
    the interpolant passes through the rounded nodes exactly.
    """
    n = _ERFC_DEGREE + 1
    nodes = np.cos(np.pi * (np.arange(n) + 0.5) / n)
    vander = np.empty((n, n))
    vander[:, 0] = 1.0
    vander[:, 1] = nodes
    for j in range(2, n):
        vander[:, j] = 2.0 * nodes * vander[:, j - 1] - vander[:, j - 2]
    t = (nodes + 1.0) / 2.0
    z = 2.0 / t - 2.0
    g = np.array([math.log(_erfcx_reference(float(zk)) * (2.0 + zk) / 2.0) for zk in z])
    return np.linalg.solve(vander, g)


def _coefficients(c: np.ndarray, dtype, tol: float) -> tuple[float, ...]:
    """Power-series coefficients a_k (in s, a_0 first) of the Chebyshev series `c` truncated
    where every later Chebyshev coefficient is below `tol` (the truncation is decided in the
    Chebyshev basis, whose coefficients bound the error)."""
    keep = len(c)
    while keep > 2 and abs(c[keep - 1]) < tol:  # _erfc_block needs a_0 and a_1
        keep -= 1
    return tuple(float(v) for v in np.polynomial.chebyshev.cheb2poly(c[:keep]).astype(dtype))


_ERFC_FIT = _fit_erfc()
# float32 keeps c_0..c_11: the tail (~1e-8 in g) is far below float32 erfc's own error, which
# the rounding of z^2 in exp(-z^2) sets (max relative 7.6e-6 on [0, 9], 1.1e-6 for z < 3,
# mean 8.25e-7, the same to three digits with two coefficients more).
_ERFC_COEF = {np.dtype(np.float64): _coefficients(_ERFC_FIT, np.float64, 0.0),
              np.dtype(np.float32): _coefficients(_ERFC_FIT, np.float32, 2e-8)}


# float32 GELU gets Phi(-a), a = |x|, from its own fit, with fewer passes than erfc's and the
# exp that phi(x) = exp(-x^2 / 2) / sqrt(2 pi) needs as well:
#     Phi(-a) = erfc(z) / 2 = exp(-a^2 / 2) t R(t),   z = a / sqrt 2, t = 2 / (2 + z),
# with R(t) = exp(g(t)) / 2 = erfcx(z) / (2 t) analytic on [0, 1] (erfc's t and g above), so
# no log is fitted and exp(-x^2 / 2) comes from x itself, without rounding z^2. R is the
# Chebyshev interpolant of degree 8 (within 1.1e-6 relative; degree 7: 4e-6, 9: 2.7e-7),
# rewritten in u = 1 / (2 sqrt 2 + a) (t = 2 sqrt 2 u), so t R(t) = u sum_k b_k u^k is one
# division and a Horner sum of 9 terms: GELU's y takes 27 passes over a block against 36
# through erfc, and Phi (y / x) is within 6e-7 relative for |x| < 3 and 2.7e-6 on [-10, 10]
# (through erfc: 1.2e-6 and 8.4e-6). sum_k |b_k| u^k stays within 2x of the sum itself, so
# float32 Horner adds only a few ulp.
_GELU32_DEGREE = 8
_GELU32_SHIFT = 2.0 * math.sqrt(2.0)


def _fit_gelu32() -> tuple[float, ...]:
    """b_k (b_0 first, float32 values) with t R(t) = u sum_k b_k u^k, u = 1 / (2 sqrt 2 + a)."""
    n = _GELU32_DEGREE + 1
    nodes = np.cos(np.pi * (np.arange(n) + 0.5) / n)
    t = (nodes + 1.0) / 2.0
    z = 2.0 / t - 2.0
    r = np.array([_erfcx_reference(float(zk)) for zk in z]) / (2.0 * t)
    in_s = np.polynomial.Chebyshev.fit(nodes, r, _GELU32_DEGREE, domain=[-1.0, 1.0]).convert(
        kind=np.polynomial.Polynomial)
    # s = 2t - 1 = 2 _GELU32_SHIFT u - 1, and t R(t) = _GELU32_SHIFT u R
    in_u = in_s(np.polynomial.Polynomial([-1.0, 2.0 * _GELU32_SHIFT])) * _GELU32_SHIFT
    return tuple(float(v) for v in in_u.coef.astype(np.float32))


_GELU32_COEF = _fit_gelu32()

# erf(x) = (2 / sqrt(pi)) sum_n (-1)^n x^(2n+1) / (n! (2n+1)): for |x| < 0.5, 12 terms are exact
# to rounding and keep erf's relative precision near 0, which 1 - erfc cannot.
_ERF_SERIES = tuple(2.0 / _SQRT_PI * (-1) ** n / (math.factorial(n) * (2 * n + 1)) for n in range(12))


def _float_view(x: Any) -> np.ndarray:
    x = np.asarray(x)
    return x if x.dtype in _ERFC_COEF else x.astype(np.float64)


# Bytes per scratch row of a block: the rows of a block (128 kB each) stay in the L2 cache
# across the ~30 passes of the Horner sum, where passes over whole activation arrays would
# stream every one of them from memory (measured on a GELU over (2048, 256) float32: 4x
# faster). Blocks as large as L2 allows matter too, as every pass is one NumPy call per
# block: 32,768 float32 elements took a GELU forward from 4.8 to 3.1 ms against 8,192
# (2 MiB L2 for 2 cores, quiet machine).
_ERFC_BLOCK_BYTES = 128 * 1024
_SCRATCH_ROWS = 5  # the most a blocked kernel uses: either GELU forward (float64: erfc's 3, |x|/sqrt 2, Phi)
_block_scratch: dict[np.dtype, np.ndarray] = {}  # one (_SCRATCH_ROWS, block) array per dtype, reused


def _blocks(arrays: tuple[np.ndarray, ...], rows: int):
    """Yields (slices of `arrays`, `rows` scratch arrays of the slices' size), block by block.

    The arrays share one shape and dtype. Contiguous arrays are cut into flat blocks of
    _ERFC_BLOCK_BYTES, so an elementwise kernel's every pass runs in cache; anything else
    is one block with fresh scratch. An elementwise kernel gives the same numbers either way.
    """
    first = arrays[0]
    if not all(a.flags.c_contiguous for a in arrays):
        yield arrays, [np.empty_like(first) for _ in range(rows)]
        return
    block = _ERFC_BLOCK_BYTES // first.itemsize
    scratch = _block_scratch.get(first.dtype)
    if scratch is None:
        scratch = _block_scratch[first.dtype] = np.empty((_SCRATCH_ROWS, block), dtype=first.dtype)
    flat = [a.reshape(-1) for a in arrays]
    for start in range(0, first.size, block):
        stop = min(start + block, first.size)
        yield [f[start:stop] for f in flat], [row[:stop - start] for row in scratch[:rows]]


def _erfc_nonneg(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """erfc(z) for z >= 0 (elementwise, z's dtype); `out` may not be z.

    Computed block by block (see _blocks); each element's arithmetic is the same as in one
    pass over the whole array, so the result does not depend on the blocking.
    """
    out = np.empty_like(z) if out is None else out
    for (zb, ob), scratch in _blocks((z, out), 3):
        _erfc_block(zb, ob, scratch)
    return out


def _erfc_block(z: np.ndarray, out: np.ndarray, scratch: list[np.ndarray]) -> None:
    """erfc(z) into `out` for z >= 0, using three scratch arrays shaped like z."""
    coef = _ERFC_COEF[z.dtype]
    t, sv, g = scratch
    np.add(z, 2.0, out=t)
    np.divide(2.0, t, out=t)
    np.multiply(t, 2.0, out=sv)
    sv -= 1.0  # s = 2t - 1
    # Horner: g = (...(a_n s + a_{n-1}) s + ...) s + a_0
    np.multiply(sv, coef[-1], out=g)
    g += coef[-2]
    for ak in coef[-3::-1]:
        g *= sv
        g += ak
    np.multiply(z, z, out=sv)
    g -= sv
    np.exp(g, out=out)
    out *= t


def erfc(x: Any, out: np.ndarray | None = None) -> np.ndarray:
    """The complementary error function 1 - erf(x), elementwise, in x's float dtype.

    Relative precision holds into the tail: float64 within ~1e-14 relative of math.erfc for
    x <= 6 and ~1e-13 up to x = 26 (erfc(26) ~ 5.7e-296; rounding of x^2 in exp(-x^2) is what
    grows). Non-float inputs are computed in float64.
    """
    x = _float_view(x)
    e = _erfc_nonneg(np.abs(x))
    neg = x < 0
    np.subtract(2.0, e, out=e, where=neg)  # erfc(-z) = 2 - erfc(z)
    if out is None:
        return e
    np.copyto(out, e, casting="same_kind")
    return out


def erf(x: Any, out: np.ndarray | None = None) -> np.ndarray:
    """The error function, elementwise, in x's float dtype (float64: within ~1e-15 of math.erf,
    and within a few ulp relatively for |x| < 0.5). Non-float inputs are computed in float64."""
    x = _float_view(x)
    a = np.abs(x)
    r = _erfc_nonneg(a)
    np.subtract(1.0, r, out=r)
    small = a < 0.5
    if small.any():
        xs = a[small]
        x2 = xs * xs
        acc = np.full_like(xs, _ERF_SERIES[-1])
        for cn in _ERF_SERIES[-2::-1]:
            acc *= x2
            acc += cn
        acc *= xs
        r[small] = acc
    np.copysign(r, x, out=r)
    if out is None:
        return r
    np.copyto(out, r, casting="same_kind")
    return out


# -- the activation classes ---------------------------------------------------------------
class Activation(Configurable):
    """Base class: declared PARAMS, constructor keywords, scratch buffers reused per shape."""

    NAME = "activation"
    PARAMS: dict[str, Param] = {}
    USES_X = True
    # forward_slope gets f'(x) from the forward's own intermediates, for far less than a backward
    SLOPE_IN_FORWARD = False

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        self.ws = Workspace()

    def forward(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """y = f(x), same shape and dtype as x."""
        raise NotImplementedError

    def backward(self, x: np.ndarray | None, y: np.ndarray, dy: np.ndarray,
                 out: np.ndarray | None = None) -> np.ndarray:
        """dx = f'(x) * dy; x may be None when USES_X is False."""
        raise NotImplementedError

    def forward_slope(self, x: np.ndarray, out: np.ndarray, slope: np.ndarray) -> np.ndarray:
        """y = f(x) into `out` (which may be x) and f'(x) into `slope` (shaped like x, not x);
        the backward is then dy * slope, with backward's numbers. Only when SLOPE_IN_FORWARD."""
        raise NotImplementedError

    def spec(self) -> str | dict[str, Any]:
        """Canonical reference: the bare name, or {name, **options} when it has options."""
        return {"name": self.NAME, **self.hparams} if self.hparams else self.NAME

    def _scratch(self, name: str, like: np.ndarray, dtype=None) -> np.ndarray:
        return self.ws.get(name, like.shape, like.dtype if dtype is None else dtype)


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
        # slope = y + alpha where y <= 0, 1 where y > 0: min(y, 0) + alpha + [y > 0] (1 - alpha)
        mask = self._scratch("mask", y, np.bool_)
        np.greater(y, 0.0, out=mask)
        step = self._scratch("step", y)
        np.multiply(mask, 1.0 - alpha, out=step)
        slope = self._scratch("slope", y)
        np.minimum(y, 0.0, out=slope)
        slope += alpha
        slope += step
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
    "none" (exact): Phi(x) = erfc(-x / sqrt 2) / 2, f'(x) = Phi(x) + x phi(x) with
    phi(x) = exp(-x^2 / 2) / sqrt(2 pi). float64 uses this module's erfc (float64-accurate);
    float32 its own fit (_GELU32_COEF: Phi within 2.7e-6 relative on [-10, 10], and the
    f'(x) of forward_slope within 2e-7 absolute).
    "tanh": f(x) = x (1 + tanh u) / 2 with u = sqrt(2/pi) (x + 0.044715 x^3), and
    f'(x) = (1 + tanh u) / 2 + x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2) / 2.
    """

    PARAMS = {"approximate": Param("str", "none", choices=("none", "tanh"),
                                   doc="none: exact (erf); tanh: the tanh approximation")}
    SLOPE_IN_FORWARD = True

    def _tanh_u(self, x: np.ndarray) -> np.ndarray:
        t = self._scratch("c", x)
        np.multiply(x, x, out=t)
        t *= _GELU_CUBIC
        t += 1.0
        t *= x
        t *= _SQRT_2_OVER_PI
        return np.tanh(t, out=t)

    def forward(self, x, out=None):
        if self.hparams["approximate"] == "tanh":
            c = self._tanh_u(x)
            c += 1.0
            c *= 0.5
            return np.multiply(x, c, out=_out(out, x))
        out = _out(out, x)
        if x.dtype == np.float32:
            for (xb, ob), scratch in _blocks((x, out), 5):
                _gelu32_block(xb, ob, None, scratch)
            return out
        # Phi(x) = erfc(-x / sqrt 2) / 2. With E = erfc(|x| / sqrt 2): Phi = E/2 for x < 0 and
        # 1 - E/2 for x >= 0, i.e. E/2 + [x >= 0] (1 - E); that keeps Phi's relative precision
        # for x << 0, and a multiply by the mask is far cheaper than a masked assignment.
        # Block by block with the erfc, so no pass goes over the whole array in memory.
        for (xb, ob), (a, c, *scratch) in _blocks((x, out), 5):
            np.abs(xb, out=a)
            a *= _SQRT1_2
            _erfc_block(a, c, scratch)
            np.subtract(1.0, c, out=a)
            c *= 0.5
            # a bool mask: a third of the time of a float one to write, the same product
            upper = np.greater_equal(xb, 0.0, out=self._scratch("mask", xb, np.bool_))
            a *= upper
            c += a
            np.multiply(xb, c, out=ob)
        return out

    def forward_slope(self, x, out, slope):
        if self.hparams["approximate"] == "none" and x.dtype == np.float32:
            for (xb, ob, sb), scratch in _blocks((x, out, slope), 5):
                _gelu32_block(xb, ob, sb, scratch)
            return out
        # the backward's own numbers, so dy * slope is what backward would return; x is read
        # before `out`, which may be x, is written
        if self.hparams["approximate"] == "tanh":
            self._tanh_slope(x, slope)
            return self.forward(x, out)
        y = self.forward(x, self._scratch("y", x))
        for (xb, yb, sb), (c,) in _blocks((x, y, slope), 1):
            self._exact_slope(xb, yb, c, sb)
        np.copyto(out, y)
        return out

    def _tanh_slope(self, x: np.ndarray, slope: np.ndarray) -> np.ndarray:
        t = self._tanh_u(x)
        du = self._scratch("du", x)
        np.multiply(x, x, out=du)
        du *= 3.0 * _GELU_CUBIC
        du += 1.0
        du *= _SQRT_2_OVER_PI
        np.multiply(t, t, out=slope)
        np.subtract(1.0, slope, out=slope)
        slope *= du
        slope *= x
        slope += t
        slope += 1.0
        slope *= 0.5
        return slope

    def _exact_slope(self, x: np.ndarray, y: np.ndarray, c: np.ndarray, slope: np.ndarray) -> None:
        """f'(x) into `slope` from x and y = f(x), using the scratch `c`; slope may not be x or y."""
        # Phi(x) = y / x: the forward's output already holds it, to the same relative
        # precision, for the price of one division instead of a second erfc (x = 0,
        # where the division is 0/0, has Phi(0) = 1/2).
        with np.errstate(divide="ignore", invalid="ignore"):
            np.divide(y, x, out=c)
        zero = np.equal(x, 0.0, out=self._scratch("mask", x, np.bool_))
        if zero.any():
            c[x == 0.0] = 0.5
        np.multiply(x, x, out=slope)
        slope *= -0.5
        np.exp(slope, out=slope)
        slope *= _INV_SQRT_2PI
        slope *= x
        slope += c

    def backward(self, x, y, dy, out=None):
        if self.hparams["approximate"] == "tanh":
            slope = self._tanh_slope(x, self._scratch("slope", x))
            return np.multiply(dy, slope, out=_out(out, dy))
        out = _out(out, dy)
        # Block by block, as the forward.
        for (xb, yb, dyb, ob), (c, slope) in _blocks((x, y, dy, out), 2):
            self._exact_slope(xb, yb, c, slope)
            np.multiply(dyb, slope, out=ob)
        return out


def _gelu32_block(x: np.ndarray, y: np.ndarray, slope: np.ndarray | None, scratch: list[np.ndarray]) -> None:
    """Exact GELU of float32 `x` into `y` (which may be x) and, unless `slope` is None, f'(x)
    into `slope`, using five scratch arrays shaped like x (see _GELU32_COEF)."""
    a, u, p, q, r = scratch
    np.abs(x, out=a)
    np.add(a, _GELU32_SHIFT, out=u)
    np.divide(1.0, u, out=u)
    coef = _GELU32_COEF
    np.multiply(u, coef[-1], out=p)
    for bk in coef[-2::-1]:
        p += bk
        p *= u
    np.square(x, out=q)
    q *= -0.5
    np.exp(q, out=q)
    p *= q  # H = Phi(-a)
    np.maximum(x, 0.0, out=r)
    if slope is not None:
        # f'(x) is V = f'(-a) = H - a phi(a) for x < 0 and 1 - V for x >= 0, that is
        # V + 2 min(1/2 - V, max(x, 0)) as 0 <= 1/2 - V = (Phi(a) - 1/2) + a phi(a) <= 0.8 a:
        # no mask or copysign (each 3-5 passes' time)
        np.multiply(a, q, out=u)
        u *= _INV_SQRT_2PI
        np.subtract(p, u, out=u)
        np.subtract(0.5, u, out=q)
        np.minimum(q, r, out=q)
        q *= 2.0
        np.add(u, q, out=slope)
    # y = x Phi(x) = max(x, 0) - a H, as Phi(x) is 1 - H for x >= 0 and H for x < 0: the
    # subtraction only happens for x >= 0, so y keeps H's relative precision for x << 0
    p *= a
    np.subtract(r, p, out=y)


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
    return ACTIVATIONS.create(spec)


def activation_name(spec: Any) -> str:
    """The canonical name of an activation reference (str, mapping or instance)."""
    if isinstance(spec, Activation):
        return spec.NAME
    if spec is None:
        return "identity"
    name = spec.get("name") if isinstance(spec, dict) else spec
    return ACTIVATIONS.get(name).NAME
