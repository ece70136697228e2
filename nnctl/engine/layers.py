"""The core layers: dense (with a fused activation), batch_norm, layer_norm, dropout, residual,
and one layer per registered activation (`{"type": "relu"}`, `{"type": "leaky_relu", "alpha": 0.2}`).

Buffers: every layer writes its output and its input gradient into arrays from its own
`Workspace`, allocated once and reused for every batch of the same (or smaller) size. So the
array a layer's forward/backward returns is overwritten by its next call; `Sequential`
copies what it hands back to its callers, code that calls layers directly must copy what it
keeps. A layer also keeps a reference to its input until its backward, so the caller must
not overwrite that input in between.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from nnctl.engine.activations import ACTIVATIONS, Activation, Identity, get_activation
from nnctl.engine.base import LAYERS, Layer, Workspace, check_hparams
from nnctl.hparams import REQUIRED, Param
from nnctl.engine.initializers import DEFAULT_BIAS_INITIALIZER, compute_fans, default_initializer, get_initializer
from nnctl.errors import ConfigError


class CheckedLayer(Layer):
    """Checks the declared options at construction (the engine's own guard for specs built in
    code) and owns a Workspace. The base of the core, conv, attention and generative layers."""

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        check_hparams(self.NAME, self.PARAMS, self.hparams)
        self.ws = Workspace()

    def _buf(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        return self.ws.get(name, shape, self.dtype)


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


# -- dense ----------------------------------------------------------------------------------
# The bias goes inside the GEMM only for outputs this large: the copies it needs cost a few
# NumPy calls, more than the add they save on small batches (a 20 -> 64 layer at batch 32:
# forward 5.5 -> 7.5 us).
_BIAS_IN_GEMM_MIN = 1 << 16

@LAYERS.register("dense")
class Dense(CheckedLayer):
    """y = f(x @ W + b), over the last axis of x.

    Shapes: x (N, ..., in) -> y (N, ..., units); W (in, units); b (units,).
    The activation f is fused: one layer, one parameter set. Its default initializer
    follows f (`default_initializer`, the table `DEFAULT_INITIALIZERS`).

    Notes
    -----
    Backward with dz = f'(z) * dy (z the pre-activation):
    dW = x^T dz, db = sum_n dz (as 1^T dz), dx = dz W^T (skipped when `input_grad` is False).
    When f's backward needs only its output (relu, tanh, sigmoid, ...), f runs in place
    over the pre-activation buffer. When f gets f'(z) cheaply in its forward (gelu,
    `SLOPE_IN_FORWARD`), training keeps f'(z) and the backward's dz is dy * f'(z).
    """

    PARAMS = {
        "units": Param("int", REQUIRED, gt=0, doc="output features"),
        "activation": Param("activation", "identity", doc="fused activation (name or {name, options})"),
        "initializer": Param("initializer", None, nullable=True,
                             doc="weight initializer; null: the default for the activation (see Defaults), recorded in the run"),
        "bias": Param("bool", True, doc="add a learned bias b"),
        "bias_initializer": Param("initializer", DEFAULT_BIAS_INITIALIZER, doc="initializer of b"),
    }

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        self.act = get_activation(self.hparams["activation"])
        init = self.hparams["initializer"]
        self.init = get_initializer(init if init is not None else default_initializer(self.act))
        self.bias_init = get_initializer(self.hparams["bias_initializer"])
        self._identity = isinstance(self.act, Identity)
        self._x = self._z = self._y = self._slope = None
        self._slope_spent = False
        self._x_shape: tuple[int, ...] = ()

    def _build(self, input_shape, rng):
        if not input_shape:
            raise ConfigError("dense: needs inputs with at least one axis (N, features), got (N,)")
        fin, units = input_shape[-1], self.hparams["units"]
        fan_in, fan_out = compute_fans((fin, units))
        self.params["W"] = self.init((fin, units), fan_in, fan_out, rng, self.dtype)
        if self.hparams["bias"]:
            self.params["b"] = self.bias_init((units,), fan_in, fan_out, rng, self.dtype)
        # A layer at least twice as wide as its input adds its bias inside the GEMM, as a row
        # of W against a column of ones after x: copying x costs fin / units of the add over z
        # (a GEMM with K = 65 takes no longer than with 64), and backward gets db with dW
        # from one product. Transformer MLP (2048, 64) -> 256 float32: the add alone was 0.1 ms.
        # (Only for outputs of _BIAS_IN_GEMM_MIN values or more, see there.)
        self._fold_bias = self.hparams["bias"] and units >= 2 * fin
        self._folded = False
        return input_shape[:-1] + (units,)

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        W = self.params["W"]
        fin, units = W.shape
        x2 = x.reshape(-1, fin)
        z = self._buf("z", (x2.shape[0], units))
        self._folded = self._fold_bias and z.size >= _BIAS_IN_GEMM_MIN
        if self._folded:
            xb = self._buf("x_ones", (x2.shape[0], fin + 1))         # [x 1]
            np.copyto(xb[:, :fin], x2)
            xb[:, fin] = 1.0
            wb = self._buf("W_b", (fin + 1, units))                  # [W; b]
            np.copyto(wb[:fin], W)
            np.copyto(wb[fin], self.params["b"])
            np.matmul(xb, wb, out=z)
            x2 = xb
        else:
            np.matmul(x2, W, out=z)
            if "b" in self.params:
                np.add(z, self.params["b"], out=z)
        slope = None
        if self._identity:
            y = z
        elif training and self.act.SLOPE_IN_FORWARD:
            slope = self._buf("slope", z.shape)
            # in place: the backward needs only the slope (writing over z, which is in cache,
            # saves GELU (2048, 256) float32 0.15 ms of 3.7 with the GEMM, cold caches)
            y = self.act.forward_slope(z, z, slope)
        elif self.act.USES_X:
            y = self.act.forward(z, out=self._buf("y", z.shape))
        else:
            y = self.act.forward(z, out=z)  # the pre-activation is not needed again
        self._x, self._z, self._y, self._slope, self._x_shape = x2, z, y, slope, x.shape
        self._slope_spent = False
        return y.reshape(x.shape[:-1] + (units,))

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        W = self.params["W"]
        fin, units = W.shape
        dy2 = dy.reshape(-1, units)
        if self._identity:
            dz = dy2
        elif self._slope is not None:
            # in place: f'(z) is read once, and one (rows, units) buffer less streams through
            # the cache ((2048, 256) float32, caches cold: 0.24 -> 0.15 ms); a second backward
            # of the same forward would find dz there instead, so it is refused
            dz = np.multiply(dy2, self._slope, out=self._slope)
            self._slope, self._slope_spent = None, True
        elif self._slope_spent:
            raise RuntimeError("dense: backward called twice after one training forward "
                               "(the f'(z) it keeps is used up by the first)")
        else:
            dz = self.act.backward(self._z if self.act.USES_X else None, self._y, dy2,
                                   out=self._buf("dz", dy2.shape))
        if self._folded:
            # [x 1]^T dz = [dW; db]
            gb = np.matmul(self._x.T, dz, out=self._buf("dW_db", (fin + 1, units)))
            np.copyto(self.grads["W"], gb[:fin])
            np.copyto(self.grads["b"], gb[fin])
        else:
            np.matmul(self._x.T, dz, out=self.grads["W"])
            if "b" in self.grads:
                # db as a product with ones (as conv does): 7 us against 20 us for np.sum down
                # the batch axis of the bench MLP's three layers, batch 128
                np.matmul(self.ws.ones(dz.shape[0], self.dtype), dz, out=self.grads["b"])
        if not self.input_grad:
            return None
        dx = self._buf("dx", (dz.shape[0], fin))
        np.matmul(dz, W.T, out=dx)
        return dx.reshape(self._x_shape)


# -- normalization --------------------------------------------------------------------------
@LAYERS.register("batch_norm", "batchnorm")
class BatchNorm(CheckedLayer):
    """Batch normalization over every axis but the feature axis.

    Shapes: x (N, F) or (N, ..., F) with axis=-1; x (N, C, ...) with axis=1 (channels first).
    gamma, beta, running_mean, running_var: (F,).

    Training normalizes with the batch's mean and (biased) variance and updates the running
    statistics Keras-style: running = momentum * running + (1 - momentum) * batch. Evaluation
    normalizes with the running statistics (buffers "running_mean", "running_var").

    Notes
    -----
    With xhat = (x - mu) / sqrt(var + eps), y = gamma * xhat + beta and m values per feature:
    dgamma = sum(dy * xhat), dbeta = sum(dy), and in training mode (mu, var depend on x)
    dx = gamma / sqrt(var + eps) * (dy - dbeta / m - xhat * dgamma / m);
    in evaluation mode dx = gamma / sqrt(running_var + eps) * dy.
    """

    PARAMS = {
        "momentum": Param("float", 0.9, ge=0.0, lt=1.0,
                          doc="running = momentum * running + (1 - momentum) * batch"),
        "eps": Param("float", 1e-5, gt=0.0, doc="added to the variance before the square root"),
        "axis": Param("int", -1, ge=-1, doc="feature axis of (N, ...): -1 = last, 1 = channels first"),
    }

    def _build(self, input_shape, rng):
        rank = len(input_shape) + 1
        axis = self.hparams["axis"]
        a = axis if axis >= 0 else rank + axis
        if not input_shape or not 1 <= a < rank:
            raise ConfigError(f"batch_norm: axis {axis} is not a feature axis of input "
                              f"(N, {', '.join(str(d) for d in input_shape)})")
        f = input_shape[a - 1]
        self._reduce = tuple(i for i in range(rank) if i != a)
        self._bshape = tuple(f if i == a else 1 for i in range(rank))
        self.params["gamma"] = np.ones(f, dtype=self.dtype)
        self.params["beta"] = np.zeros(f, dtype=self.dtype)
        self.buffers["running_mean"] = np.zeros(f, dtype=self.dtype)
        self.buffers["running_var"] = np.ones(f, dtype=self.dtype)
        self._xhat = self._inv = None
        self._trained = False
        return input_shape

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        eps, bshape = self.hparams["eps"], self._bshape
        xhat = self._buf("xhat", x.shape)
        if training:
            mom = self.hparams["momentum"]
            mu = x.mean(axis=self._reduce, keepdims=True)
            np.subtract(x, mu, out=xhat)
            sq = self._buf("tmp", x.shape)
            np.multiply(xhat, xhat, out=sq)
            var = sq.mean(axis=self._reduce, keepdims=True)
            inv = 1.0 / np.sqrt(var + eps)
            xhat *= inv
            rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
            rm *= mom
            rm += (1.0 - mom) * mu.reshape(rm.shape)
            rv *= mom
            rv += (1.0 - mom) * var.reshape(rv.shape)
        else:
            inv = 1.0 / np.sqrt(self.buffers["running_var"].reshape(bshape) + eps)
            np.subtract(x, self.buffers["running_mean"].reshape(bshape), out=xhat)
            xhat *= inv
        self._xhat, self._inv, self._trained = xhat, inv, training
        y = self._buf("y", x.shape)
        np.multiply(xhat, self.params["gamma"].reshape(bshape), out=y)
        y += self.params["beta"].reshape(bshape)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        bshape, xhat = self._bshape, self._xhat
        tmp = self._buf("tmp", dy.shape)
        np.multiply(dy, xhat, out=tmp)
        dgamma = np.sum(tmp, axis=self._reduce, out=self.grads["gamma"])
        dbeta = np.sum(dy, axis=self._reduce, out=self.grads["beta"])
        if not self.input_grad:
            return None
        scale = self.params["gamma"].reshape(bshape) * self._inv
        dx = self._buf("dx", dy.shape)
        if self._trained:
            m = dy.size // dgamma.size
            np.multiply(xhat, (dgamma / m).reshape(bshape), out=dx)
            np.subtract(dy, dx, out=dx)
            dx -= (dbeta / m).reshape(bshape)
            dx *= scale
        else:
            np.multiply(dy, scale, out=dx)
        return dx


@LAYERS.register("layer_norm", "layernorm")
class LayerNorm(CheckedLayer):
    """Layer normalization over the last axis, per sample (same in training and evaluation).

    Shapes: x (N, ..., F) -> y (N, ..., F); gamma, beta (F,).

    Notes
    -----
    With xhat = (x - mean(x)) / sqrt(var(x) + eps) over the last axis, y = gamma * xhat + beta,
    g = gamma * dy: dx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps).
    """

    PARAMS = {"eps": Param("float", 1e-5, gt=0.0, doc="added to the variance before the square root")}

    def _build(self, input_shape, rng):
        if not input_shape:
            raise ConfigError("layer_norm: needs inputs with a feature axis (N, ..., F), got (N,)")
        f = input_shape[-1]
        self.params["gamma"] = np.ones(f, dtype=self.dtype)
        self.params["beta"] = np.zeros(f, dtype=self.dtype)
        self._xhat = self._inv = None
        return input_shape

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        # Row means as matrix-vector products with 1/F: BLAS reads a row once, where NumPy's
        # reduction over a short last axis costs four times as long ((2048, 64) float32).
        f = x.shape[-1]
        x2 = x.reshape(-1, f)
        rows = x2.shape[0]
        w = self._buf("w", (f,))
        w.fill(1.0 / f)
        xhat = self._buf("xhat", x2.shape)
        mu = np.matmul(x2, w, out=self._buf("mu", (rows,)))
        np.subtract(x2, mu[:, None], out=xhat)
        sq = self._buf("tmp", x2.shape)
        np.multiply(xhat, xhat, out=sq)
        inv = np.matmul(sq, w, out=self._buf("inv", (rows,)))
        inv += self.hparams["eps"]
        np.sqrt(inv, out=inv)
        np.divide(1.0, inv, out=inv)
        inv = inv[:, None]
        xhat *= inv
        self._xhat, self._inv = xhat, inv
        y = self._buf("y", x2.shape)
        np.multiply(xhat, self.params["gamma"], out=y)
        y += self.params["beta"]
        return y.reshape(x.shape)

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        xhat, gamma = self._xhat, self.params["gamma"]
        dy2 = dy.reshape(xhat.shape)
        rows, f = xhat.shape
        tmp = self._buf("tmp", xhat.shape)
        np.multiply(dy2, xhat, out=tmp)
        # Sums over rows and means over features as matrix-vector products (see forward)
        ones = self._buf("ones", (rows,))
        ones.fill(1.0)
        np.matmul(ones, tmp, out=self.grads["gamma"])
        np.matmul(ones, dy2, out=self.grads["beta"])
        if not self.input_grad:
            return None
        gw = np.multiply(gamma, 1.0 / f, out=self._buf("gw", (f,)))
        g_mean = np.matmul(dy2, gw, out=self._buf("g_mean", (rows,)))      # mean(g), g = gamma dy
        gx_mean = np.matmul(tmp, gw, out=self._buf("gx_mean", (rows,)))    # mean(g xhat)
        np.multiply(xhat, gx_mean[:, None], out=tmp)
        dx = self._buf("dx", xhat.shape)
        np.multiply(dy2, gamma, out=dx)
        dx -= tmp
        dx -= g_mean[:, None]
        dx *= self._inv
        return dx.reshape(dy.shape)


# -- dropout --------------------------------------------------------------------------------
@LAYERS.register("dropout")
class Dropout(CheckedLayer):
    """Inverted dropout: at training time y = x * keep / (1 - rate), keep ~ Bernoulli(1 - rate);
    the identity at evaluation time.

    Shapes: x (N, ...) -> y, same shape. The mask is drawn from the model's Generator
    (`self.rng`) on every training forward. `fix_mask(keep)` pins it (gradient checks,
    tests) until `fix_mask(None)`.
    """

    PARAMS = {"rate": Param("float", 0.5, ge=0.0, lt=1.0, doc="probability of zeroing a unit")}
    SHORTHAND = "rate"

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        self.fixed_mask: np.ndarray | None = None
        self._keep: np.ndarray | None = None

    def fix_mask(self, keep: np.ndarray | None) -> None:
        """Use `keep` (bool, the input's full shape with the batch axis) as the mask until None."""
        self.fixed_mask = None if keep is None else np.asarray(keep, dtype=np.bool_)

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        rate = self.hparams["rate"]
        if not training or rate == 0.0:
            self._keep = None
            return x
        if self.fixed_mask is not None:
            if self.fixed_mask.shape != x.shape:
                raise ValueError(f"dropout: fixed mask has shape {self.fixed_mask.shape}, input {x.shape}")
            keep = self.fixed_mask
        else:
            u = self._buf("u", x.shape)
            self.rng.random(out=u, dtype=u.dtype)
            keep = self.ws.get("keep", x.shape, np.bool_)
            np.greater_equal(u, rate, out=keep)
        self._keep = keep
        y = self._buf("y", x.shape)
        np.multiply(x, keep, out=y)
        y *= 1.0 / (1.0 - rate)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        if not self.input_grad:
            return None
        if self._keep is None:
            return dy
        dx = self._buf("dx", dy.shape)
        np.multiply(dy, self._keep, out=dx)
        dx *= 1.0 / (1.0 - self.hparams["rate"])
        return dx


# -- residual -------------------------------------------------------------------------------
@LAYERS.register("residual")
class Residual(CheckedLayer):
    """y = x + f(x), f a sub-stack of layers that must keep the input's shape.

    Shapes: x (N, ...) -> y, same shape. Sub-layer parameters are named
    `layers.<j>.<local>` inside the residual (so `layers.2.layers.0.W` in a model).
    """

    PARAMS = {"layers": Param("layers", REQUIRED, doc="the sub-stack f, a list of layer specs")}

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        specs = self.hparams["layers"]
        if not isinstance(specs, (list, tuple)) or not specs:
            raise ConfigError("residual: layers must be a non-empty list of layer specs")
        # model.py imports this module (through the registry), so import build_layer lazily
        from nnctl.engine.model import build_layer
        self.sub: list[Layer] = [build_layer(s) for s in specs]

    def children(self) -> list[tuple[str, Layer]]:
        return [(f"layers.{j}", layer) for j, layer in enumerate(self.sub)]

    def get_config(self) -> dict[str, Any]:
        from nnctl.engine.model import layer_spec
        return {"layers": [layer_spec(layer) for layer in self.sub]}

    def _build(self, input_shape, rng):
        shape = input_shape
        for layer in self.sub:
            shape = tuple(layer.build(shape, rng, self.dtype))
        if shape != input_shape:
            raise ConfigError(f"residual: sub-stack output {_shape_text(shape)} does not match "
                              f"input {_shape_text(input_shape)}")
        return input_shape

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        h = x
        for layer in self.sub:
            h = layer.forward(h, training)
        y = self._buf("y", x.shape)
        np.add(x, h, out=y)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        self.sub[0].input_grad = self.input_grad
        g = dy
        for layer in reversed(self.sub):
            g = layer.backward(g)
        if not self.input_grad:
            return None
        dx = self._buf("dx", dy.shape)
        np.add(dy, g, out=dx)
        return dx


# -- one layer per activation ---------------------------------------------------------------
class ActivationLayer(CheckedLayer):
    """An activation on its own, y = f(x), elementwise (softmax: over the last axis)."""

    ACTIVATION: type[Activation] = Identity

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        self.act = self.ACTIVATION(**self.hparams)
        self._x = self._y = self._slope = None

    def _build(self, input_shape, rng):
        if self.ACTIVATION.NAME == "softmax" and not input_shape:
            raise ConfigError("softmax: needs inputs with a feature axis (N, ..., F), got (N,)")
        return input_shape

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        if isinstance(self.act, Identity):
            return x
        self._slope = None
        if training and self.act.SLOPE_IN_FORWARD:  # as Dense: keep f'(x)
            self._slope = self._buf("slope", x.shape)
            y = self.act.forward_slope(x, self._buf("y", x.shape), self._slope)
        else:
            y = self.act.forward(x, out=self._buf("y", x.shape))
        self._x, self._y = (x if self.act.USES_X else None), y
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        if not self.input_grad:
            return None
        if isinstance(self.act, Identity):
            return dy
        if self._slope is not None:
            return np.multiply(dy, self._slope, out=self._buf("dx", dy.shape))
        return self.act.backward(self._x, self._y, dy, out=self._buf("dx", dy.shape))


def _register_activation_layers() -> None:
    aliases: dict[str, list[str]] = {}
    for alias, canon in ACTIVATIONS.aliases.items():
        aliases.setdefault(canon, []).append(alias)
    for name, act_cls in ACTIVATIONS.entries.items():
        if name in LAYERS:
            continue
        cls = type(f"{act_cls.__name__}Layer", (ActivationLayer,), {
            "ACTIVATION": act_cls,
            "PARAMS": dict(act_cls.PARAMS),
            "__doc__": f"The {name} activation as a layer. {act_cls.__doc__ or ''}".strip(),
            "__module__": __name__,
        })
        if len(cls.PARAMS) == 1:
            cls.SHORTHAND = next(iter(cls.PARAMS))  # {leaky_relu: 0.2} -> alpha
        LAYERS.register(name, *aliases.get(name, []))(cls)


_register_activation_layers()
