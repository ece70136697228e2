"""Optimizers: update named parameters in place from their gradients (SGD, RMSprop, Adagrad, Adam, AdamW).

The base class owns everything the update rules share: gradient clipping, weight decay, the
loop over named parameters, the step counter, lazily allocated per-parameter state and its
strict save/load. A subclass declares its options (PARAMS), the state slots it keeps, and
writes one in-place update for one parameter.

All arithmetic stays in the parameter's dtype: state is allocated like the parameter, scalars
are Python floats (NumPy treats them as "weak", so float32 stays float32), and every
intermediate goes into one scratch buffer per parameter, allocated on its first step, so a
step allocates no arrays after the first.

Fused updates: when the parameters (and, separately, the gradients) are consecutive views of
one flat array, as `Sequential` lays them out, the step runs every operation once over the
whole flat array instead of once per parameter, and the state slots become flat arrays too,
with `state[name][slot]` views into them. Every update rule is elementwise, so the result is
the same, bit for bit, as the per-parameter loop (only the global clip norm is summed in a
different order); for the MLP of `nnctl bench` this turns ~120 NumPy calls per step into ~12
a block, run block by block (CHUNK_BYTES) so that the passes of one block stay in cache.
Parameters that are not laid out this way take the per-parameter loop.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from nnctl.engine.base import NO_DECAY_NAMES, check_state_keys
from nnctl.hparams import Configurable, Param, Registry
from nnctl.errors import CheckpointError, ConfigError

OPTIMIZERS = Registry("optimizer")


# -- declared options -----------------------------------------------------------------------
COMMON_PARAMS: dict[str, Param] = {
    "lr": Param("float", 0.01, gt=0, doc="learning rate (a schedule, if any, scales it over time)"),
    "weight_decay": Param("float", 0.0, ge=0, doc="weight decay: L2 term added to the gradient (decoupled for adamw)"),
    "clip_norm": Param("float", None, gt=0, nullable=True,
                       doc="rescale all gradients so their global L2 norm is at most this"),
    "clip_value": Param("float", None, gt=0, nullable=True, doc="clip every gradient element to [-v, v]"),
    "exclude_from_decay": Param("bool", None, nullable=True,
                                doc="no weight decay on biases and norm scale/shift (b, beta, gamma); null: true for adamw only"),
}


def _params(lr: float, **own: Param) -> dict[str, Param]:
    table = dict(COMMON_PARAMS)
    table["lr"] = Param("float", lr, gt=0, doc=COMMON_PARAMS["lr"].doc)
    table.update(own)
    return table


# -- the shared loop --------------------------------------------------------------------------
class Optimizer(Configurable):
    """Base class: clipping, weight decay, the loop over named parameters, state and its save/load.

    Attributes:
        lr: the current learning rate, a plain float the trainer's schedule sets before each step.
        iterations: number of completed steps (Adam's bias correction uses it as t).
        state: {parameter name: {slot: ndarray}}, each array shaped and typed like its parameter.

    Notes
    -----
    One `step(params, grads)`:
      1. clip by value: g <- clip(g, -clip_value, clip_value)                         (if set)
      2. clip by global norm over all parameters: N = sqrt(sum_i ||g_i||^2),
         g_i <- g_i * clip_norm / max(N, clip_norm)                                    (if set)
      3. weight decay wd, for parameters it applies to (see `exclude_from_decay`):
         L2 (every optimizer but adamw): g <- g + wd * p
         decoupled (adamw):              p <- p - lr * wd * p
      4. the subclass's update of p from g.
    Value clipping runs before norm clipping so that the global norm really is at most
    clip_norm afterwards when both are set. Steps 1-3 write into `grads` in place: the
    gradients are consumed by the step (the model's backward pass overwrites them anyway).
    A non-finite global norm skips norm clipping, so the NaN/inf stays visible to the
    trainer's non-finite-loss check instead of being silently scaled away.
    """

    NAME = "optimizer"
    PARAMS: dict[str, Param] = COMMON_PARAMS
    DECOUPLED_DECAY = False      # adamw: decay applied to p directly, not through the gradient
    EXCLUDE_DEFAULT = False      # what exclude_from_decay=None means for this optimizer

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        h = self.hparams
        self.lr = h["lr"]
        self.weight_decay = h["weight_decay"]
        self.clip_norm = h["clip_norm"]
        self.clip_value = h["clip_value"]
        excl = h["exclude_from_decay"]
        self.exclude_from_decay = self.EXCLUDE_DEFAULT if excl is None else excl
        self.iterations = 0
        self.state: dict[str, dict[str, np.ndarray]] = {}
        self._scratch: dict[str, np.ndarray] = {}
        self._decays: dict[str, bool] = {}
        self._unverified = False  # loaded state not yet compared with the live parameters
        self._flat: _FlatLayout | None = None

    # -- what a subclass provides -----------------------------------------------------
    def slots(self) -> tuple[str, ...]:
        """Names of the per-parameter state arrays this configuration keeps."""
        return ()

    def _init_slot(self, slot: str, p: np.ndarray) -> np.ndarray:
        return np.zeros_like(p)

    def _update(self, p: np.ndarray, g: np.ndarray, s: dict[str, np.ndarray], tmp: np.ndarray,
                lr: float) -> None:
        """Update `p` in place from the (clipped, decayed) gradient `g`; `tmp` is free scratch."""
        raise NotImplementedError

    # -- the loop -----------------------------------------------------------------------
    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        """Update every array in `params` in place; `grads` has the same keys and is modified in place."""
        if self._unverified:
            self._verify(params)
        lr = float(self.lr)  # a NumPy float64 lr would upcast float32 arithmetic
        flat = self._flat_layout(params, grads)
        self.iterations += 1
        if flat is not None:
            self._fused_step(flat, lr)
            return
        self._clip(params, grads)
        wd = float(self.weight_decay)
        for name, p in params.items():
            g = grads[name]
            tmp = self._scratch.get(name)
            if tmp is None:
                tmp = self._scratch[name] = np.empty_like(p)
            s = self.state.get(name)
            if s is None:
                s = self.state[name] = {slot: self._init_slot(slot, p) for slot in self.slots()}
            if wd and self._decayed(name):
                if self.DECOUPLED_DECAY:
                    p *= 1.0 - lr * wd
                else:
                    np.multiply(p, wd, out=tmp)
                    g += tmp
            self._update(p, g, s, tmp, lr)

    def _flat_layout(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> "_FlatLayout | None":
        """The flat layout of these parameters, built on first sight, or None to loop per parameter."""
        flat = self._flat
        if flat is not None and flat.matches(params, grads):
            return flat
        self._flat = None
        if not params or set(grads) != set(params):
            return None
        names = list(params)
        P = _flat_base([params[n] for n in names])
        G = _flat_base([grads[n] for n in names])
        if P is None or G is None or P.dtype != G.dtype or P.size != G.size:
            return None
        self._flat = flat = _FlatLayout(names, params, grads, P, G)
        # Runs of consecutive parameters that decay: one call per run, not per parameter.
        runs: list[list[int]] = []
        for name, (a, b) in zip(names, flat.bounds):
            if not self._decayed(name):
                continue
            if runs and runs[-1][1] == a:
                runs[-1][1] = b
            else:
                runs.append([a, b])
        # Every block works in the front of the one block-sized scratch array, which so stays
        # in cache from block to block instead of streaming a (P.size,) scratch through it.
        chunk, tmp = flat.chunk, flat.tmp
        flat.decay_runs = [(P[a + i:a + j], G[a + i:a + j], tmp[:j - i])
                           for a, b in runs for i, j in _chunk_bounds(b - a, chunk)]
        # State moves into flat arrays; what exists (loaded or from the loop) is copied in.
        for slot in self.slots():
            S = flat.state[slot] = self._init_slot(slot, P)
            for name, (a, b) in zip(names, flat.bounds):
                old = self.state.get(name, {}).get(slot)
                view = S[a:b].reshape(params[name].shape)
                if old is not None:
                    view[...] = old
                self.state.setdefault(name, {})[slot] = view
        flat.chunks = [(P[a:b], G[a:b], {slot: S[a:b] for slot, S in flat.state.items()}, tmp[:b - a])
                       for a, b in _chunk_bounds(P.size, chunk)]
        self._scratch = {}
        return flat

    def _fused_step(self, flat: "_FlatLayout", lr: float) -> None:
        """`step` over the flat arrays: the same operations as the loop, one call each."""
        P, G = flat.P, flat.G
        if self.clip_value is not None:
            c = float(self.clip_value)
            np.clip(G, -c, c, out=G)
        if self.clip_norm is not None:
            norm = math.sqrt(float(np.dot(G, G)))
            if math.isfinite(norm) and norm > self.clip_norm:
                G *= float(self.clip_norm) / norm
        wd = float(self.weight_decay)
        if wd:
            for p, g, tmp in flat.decay_runs:
                if self.DECOUPLED_DECAY:
                    p *= 1.0 - lr * wd
                else:
                    np.multiply(p, wd, out=tmp)
                    g += tmp
        for p, g, s, tmp in flat.chunks:
            self._update(p, g, s, tmp, lr)

    def _decayed(self, name: str) -> bool:
        decays = self._decays.get(name)
        if decays is None:
            local = name.rsplit(".", 1)[-1]
            decays = self._decays[name] = not (self.exclude_from_decay and local in NO_DECAY_NAMES)
        return decays

    def _clip(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        if self.clip_value is not None:
            c = float(self.clip_value)
            for name in params:
                np.clip(grads[name], -c, c, out=grads[name])
        if self.clip_norm is not None:
            total = 0.0
            for name in params:
                flat = grads[name].reshape(-1)  # a view for contiguous gradients: nothing copied
                total += float(np.dot(flat, flat))
            norm = math.sqrt(total)
            if math.isfinite(norm) and norm > self.clip_norm:
                scale = float(self.clip_norm) / norm
                for name in params:
                    grads[name] *= scale

    # -- save / load ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """{"scalars": JSON-able counters, "arrays": {"<slot>/<parameter name>": copy of the array}}."""
        scalars = {"name": self.NAME, "iterations": int(self.iterations), "lr": float(self.lr)}
        arrays = {f"{slot}/{name}": arr.copy() for name, s in self.state.items() for slot, arr in s.items()}
        return {"scalars": scalars, "arrays": arrays}

    def load_state_dict(self, sd: dict[str, Any], params: dict[str, np.ndarray] | None = None) -> None:
        """Restore a `state_dict()` strictly: any unknown, missing or mis-shaped entry is a CheckpointError.

        Without `params`, the comparison with the live parameters (every parameter has state,
        no state without a parameter, shapes equal) happens at the next `step`; pass the
        model's `named_parameters()` to check now. State arrays are copied, and cast to the
        parameter's dtype when it differs.
        """
        if not isinstance(sd, dict) or set(sd) != {"scalars", "arrays"}:
            got = sorted(sd) if isinstance(sd, dict) else type(sd).__name__
            raise CheckpointError(f"optimizer state: expected keys 'arrays' and 'scalars', got {got}")
        scalars, arrays = sd["scalars"], sd["arrays"]
        check_state_keys("optimizer state", scalars, ("iterations", "lr", "name"))
        if scalars["name"] != self.NAME:
            raise CheckpointError(f"optimizer state: saved by optimizer '{scalars['name']}', "
                                  f"cannot load it into '{self.NAME}'")
        iterations = scalars["iterations"]
        if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 0:
            raise CheckpointError(f"optimizer state: 'iterations' must be a non-negative integer, got {iterations!r}")
        slots = self.slots()
        state: dict[str, dict[str, np.ndarray]] = {}
        for key in sorted(arrays):
            slot, sep, name = key.partition("/")
            if not sep or not name or slot not in slots:
                have = f"slots: {', '.join(slots)}" if slots else "it keeps no per-parameter state"
                raise CheckpointError(f"optimizer state: unknown key '{key}' for {self.NAME} ({have})")
            state.setdefault(name, {})[slot] = np.array(arrays[key], copy=True)
        for name, s in state.items():
            for slot in slots:
                if slot not in s:
                    raise CheckpointError(f"optimizer state: missing key '{slot}/{name}'")
        self.state = state
        self.iterations = int(iterations)
        self.lr = float(scalars["lr"])
        self._scratch = {}
        self._flat = None  # rebuilt on the next step, with the loaded state copied in
        self._unverified = True
        if params is not None:
            self._verify(params)

    def _verify(self, params: dict[str, np.ndarray]) -> None:
        """Loaded state against the live parameters: same names, same shapes; dtype follows the model."""
        slots = self.slots()
        extra = sorted(set(self.state) - set(params))
        if extra:
            slot = next(iter(self.state[extra[0]]), "state")
            raise CheckpointError(f"optimizer state: key '{slot}/{extra[0]}' matches no model parameter")
        for name, p in params.items():
            s = self.state.get(name)
            if s is None:
                if self.iterations > 0 and slots:
                    raise CheckpointError(f"optimizer state: missing key '{slots[0]}/{name}'")
                continue
            for slot, arr in s.items():
                if arr.shape != p.shape:
                    raise CheckpointError(f"optimizer state: '{slot}/{name}' has shape {arr.shape}, "
                                          f"the parameter has {p.shape}")
                if arr.dtype != p.dtype:
                    s[slot] = arr.astype(p.dtype)
        self._unverified = False

# -- the flat layout ---------------------------------------------------------------------------
# Bytes of each flat array (parameters, gradients, every state slot, scratch) one call of the
# fused update works on. An update rule is ~12 elementwise passes; over the whole 2 MB arrays
# of the `nnctl bench` MLP (535k float32) each pass went to memory, 1.44 ms a step. In blocks
# of 256 KiB, the five arrays a block touches (1.25 MB) stay in the 2 MB L2 across the passes:
# 0.83-0.88 ms (blocks of 128 KiB to 768 KiB all measured alike; 16 KiB: 1.38 ms, the calls
# then cost more than the traffic they save).
CHUNK_BYTES = 1 << 18


def _chunk_bounds(size: int, chunk: int) -> list[tuple[int, int]]:
    """[start, stop) of consecutive blocks of at most `chunk` elements covering range(size)."""
    return [(a, min(a + chunk, size)) for a in range(0, size, chunk)]


def _flat_base(arrays: list[np.ndarray]) -> np.ndarray | None:
    """The 1-D array `arrays` are consecutive, gap-free, C-contiguous views of, in order; else None."""
    base = arrays[0].base
    if not isinstance(base, np.ndarray) or base.ndim != 1 or not base.flags.c_contiguous:
        return None
    start, item, pos = base.ctypes.data, base.itemsize, 0
    for a in arrays:
        if a.base is not base or a.dtype != base.dtype or not a.flags.c_contiguous:
            return None
        if a.ctypes.data - start != pos * item:
            return None
        pos += a.size
    return base if pos == base.size else None


class _FlatLayout:
    """Where each named parameter sits in the flat parameter array P and gradient array G.

    Holds the flat state slots and the one scratch array the fused step works in, all
    allocated once, so a fused step allocates nothing.
    """

    def __init__(self, names: list[str], params: dict[str, np.ndarray], grads: dict[str, np.ndarray],
                 P: np.ndarray, G: np.ndarray):
        self.names = names
        self.P, self.G = P, G
        self.param_arrays = [params[n] for n in names]
        self.grad_arrays = [grads[n] for n in names]
        self.bounds: list[tuple[int, int]] = []
        pos = 0
        for a in self.param_arrays:
            self.bounds.append((pos, pos + a.size))
            pos += a.size
        # one block's scratch (see Optimizer._flat_layout). Adam over the bench MLP's 535k
        # float32 parameters, stepped alone: 0.95 -> 0.88 ms against a (P.size,) scratch;
        # its `nnctl train` epoch, A/B against main x6: 2-7% shorter
        self.chunk = max(1, CHUNK_BYTES // P.itemsize)
        self.tmp = np.empty(min(P.size, self.chunk), P.dtype)
        self.state: dict[str, np.ndarray] = {}
        self.decay_runs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        # (P, G, {slot: S}, tmp) blocks of CHUNK_BYTES that the update rule runs over in turn
        self.chunks: list[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray]] = []

    def matches(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> bool:
        """Whether `params`/`grads` are still exactly the arrays this layout was built from."""
        if len(params) != len(self.names) or len(grads) != len(self.names):
            return False
        for name, p, g in zip(self.names, self.param_arrays, self.grad_arrays):
            if params.get(name) is not p or grads.get(name) is not g:
                return False
        return True


# -- the update rules -----------------------------------------------------------------------
@OPTIMIZERS.register("sgd")
class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum, in PyTorch's formulation.

    Notes
    -----
    With g the gradient after clipping and L2 decay, mu = momentum, v the velocity (zeros at
    first, so the first step sets v = g as in torch.optim.SGD):
        mu = 0:    p <- p - lr * g
        mu > 0:    v <- mu * v + g
                   p <- p - lr * v                 (classical momentum)
                   p <- p - lr * (g + mu * v)      (nesterov)
    """

    PARAMS = _params(
        0.01,
        momentum=Param("float", 0.0, ge=0, lt=1, doc="momentum coefficient mu (0: plain SGD)"),
        nesterov=Param("bool", False, doc="Nesterov momentum (needs momentum > 0)"),
    )

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        self.momentum = self.hparams["momentum"]
        self.nesterov = self.hparams["nesterov"]
        if self.nesterov and self.momentum == 0:
            raise ConfigError(f"{self.NAME}.nesterov: needs momentum > 0, got momentum 0")

    def slots(self) -> tuple[str, ...]:
        return ("velocity",) if self.momentum > 0 else ()

    def _update(self, p, g, s, tmp, lr):
        mu = float(self.momentum)
        if mu > 0:
            v = s["velocity"]
            v *= mu
            v += g
            if self.nesterov:
                np.multiply(v, mu, out=tmp)
                tmp += g
                tmp *= lr
            else:
                np.multiply(v, lr, out=tmp)
        else:
            np.multiply(g, lr, out=tmp)
        p -= tmp


@OPTIMIZERS.register("momentum")
class Momentum(SGD):
    """SGD with classical momentum 0.9 by default; the same rule as `sgd` (see SGD's Notes)."""

    PARAMS = {**SGD.PARAMS, "momentum": Param("float", 0.9, ge=0, lt=1, doc="momentum coefficient mu")}


@OPTIMIZERS.register("nesterov")
class Nesterov(SGD):
    """SGD with Nesterov momentum 0.9 by default; the same rule as `sgd` (see SGD's Notes)."""

    PARAMS = {**SGD.PARAMS,
              "momentum": Param("float", 0.9, ge=0, lt=1, doc="momentum coefficient mu"),
              "nesterov": Param("bool", True, doc="Nesterov momentum (needs momentum > 0)")}


@OPTIMIZERS.register("rmsprop")
class RMSprop(Optimizer):
    """RMSprop (Hinton's lecture 6e), in PyTorch's formulation (eps outside the square root).

    eps defaults to 1e-8, PyTorch's value for this same formulation. Keras' 1e-7 belongs to a
    variant that adds eps inside the square root, where it acts on the squared scale.

    Notes
    -----
    With g the gradient after clipping and L2 decay, s the running mean of g^2, a the running
    mean of g (centered only), u the velocity (momentum only), all zeros at first:
        s <- rho * s + (1 - rho) * g^2
        a <- rho * a + (1 - rho) * g                     (centered)
        d  = sqrt(s) + eps, or sqrt(max(s - a^2, 0)) + eps  (centered)
        momentum = 0:  p <- p - lr * g / d
        momentum > 0:  u <- momentum * u + g / d
                       p <- p - lr * u
    The max(., 0) guards s - a^2 >= 0 (true in exact arithmetic) against rounding.
    """

    PARAMS = _params(
        0.001,
        rho=Param("float", 0.9, ge=0, lt=1, doc="decay of the running mean of squared gradients"),
        eps=Param("float", 1e-8, gt=0, doc="added to the root mean square (outside the sqrt)"),
        momentum=Param("float", 0.0, ge=0, lt=1, doc="momentum on the scaled gradient (0: none)"),
        centered=Param("bool", False, doc="divide by the gradient's estimated standard deviation instead of its RMS"),
    )

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        h = self.hparams
        self.rho, self.eps, self.momentum, self.centered = h["rho"], h["eps"], h["momentum"], h["centered"]

    def slots(self) -> tuple[str, ...]:
        return (("square_avg",) + (("grad_avg",) if self.centered else ())
                + (("velocity",) if self.momentum > 0 else ()))

    def _update(self, p, g, s, tmp, lr):
        rho = float(self.rho)
        sq = s["square_avg"]
        np.multiply(g, g, out=tmp)
        tmp *= 1.0 - rho
        sq *= rho
        sq += tmp
        if self.centered:
            ga = s["grad_avg"]
            np.multiply(g, 1.0 - rho, out=tmp)
            ga *= rho
            ga += tmp
            np.multiply(ga, ga, out=tmp)
            np.subtract(sq, tmp, out=tmp)
            np.maximum(tmp, 0.0, out=tmp)
            np.sqrt(tmp, out=tmp)
        else:
            np.sqrt(sq, out=tmp)
        tmp += float(self.eps)
        np.divide(g, tmp, out=tmp)
        if self.momentum > 0:
            u = s["velocity"]
            u *= float(self.momentum)
            u += tmp
            np.multiply(u, lr, out=tmp)
        else:
            tmp *= lr
        p -= tmp


@OPTIMIZERS.register("adagrad")
class Adagrad(Optimizer):
    """Adagrad (Duchi, Hazan & Singer 2011), in PyTorch's formulation.

    Notes
    -----
    With g the gradient after clipping and L2 decay, and the accumulator S starting at
    `initial_accumulator` everywhere:
        S <- S + g^2
        p <- p - lr * g / (sqrt(S) + eps)
    """

    PARAMS = _params(
        0.01,
        eps=Param("float", 1e-10, gt=0, doc="added to sqrt of the accumulator"),
        initial_accumulator=Param("float", 0.0, ge=0, doc="starting value of the sum of squared gradients"),
    )

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        self.eps, self.initial_accumulator = self.hparams["eps"], self.hparams["initial_accumulator"]

    def slots(self) -> tuple[str, ...]:
        return ("sum",)

    def _init_slot(self, slot, p):
        return np.full_like(p, float(self.initial_accumulator))

    def _update(self, p, g, s, tmp, lr):
        acc = s["sum"]
        np.multiply(g, g, out=tmp)
        acc += tmp
        np.sqrt(acc, out=tmp)
        tmp += float(self.eps)
        np.divide(g, tmp, out=tmp)
        tmp *= lr
        p -= tmp


@OPTIMIZERS.register("adam")
class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction, optionally AMSGrad (Reddi et al. 2018).

    Weight decay here is the L2 term added to the gradient (as torch.optim.Adam); use `adamw`
    for decoupled decay.

    Notes
    -----
    With g the gradient after clipping and decay, t = `iterations` counted from 1, and m, v
    (and v_max for amsgrad) starting at zero:
        m <- beta1 * m + (1 - beta1) * g
        v <- beta2 * v + (1 - beta2) * g^2
        v_max <- max(v_max, v)                        (amsgrad; then v_max replaces v below)
        p <- p - lr * (m / (1 - beta1^t)) / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    i.e. eps is added to sqrt(v_hat), as in the paper and PyTorch.
    """

    PARAMS = _params(
        0.001,
        beta1=Param("float", 0.9, ge=0, lt=1, doc="decay of the first-moment (mean) estimate"),
        beta2=Param("float", 0.999, ge=0, lt=1, doc="decay of the second-moment estimate"),
        eps=Param("float", 1e-8, gt=0, doc="added to sqrt of the bias-corrected second moment"),
        amsgrad=Param("bool", False, doc="use the running maximum of the second moment (AMSGrad)"),
    )

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        h = self.hparams
        self.beta1, self.beta2, self.eps, self.amsgrad = h["beta1"], h["beta2"], h["eps"], h["amsgrad"]

    def slots(self) -> tuple[str, ...]:
        return ("m", "v", "vmax") if self.amsgrad else ("m", "v")

    def _update(self, p, g, s, tmp, lr):
        b1, b2, t = float(self.beta1), float(self.beta2), self.iterations
        m, v = s["m"], s["v"]
        np.multiply(g, 1.0 - b1, out=tmp)
        m *= b1
        m += tmp
        np.multiply(g, g, out=tmp)
        tmp *= 1.0 - b2
        v *= b2
        v += tmp
        if self.amsgrad:
            vmax = s["vmax"]
            np.maximum(vmax, v, out=vmax)
            v = vmax
        # The bias correction of v moves into eps and the step size (Kingma & Ba, end of
        # section 2): lr/c1 * m / (sqrt(v)/sqrt(c2) + eps) = (lr sqrt(c2)/c1) * m / (sqrt(v) + eps sqrt(c2)),
        # the same update with one pass over the parameter fewer.
        root_c2 = math.sqrt(1.0 - b2 ** t)
        np.sqrt(v, out=tmp)
        tmp += float(self.eps) * root_c2
        np.divide(m, tmp, out=tmp)
        tmp *= lr * root_c2 / (1.0 - b1 ** t)
        p -= tmp


@OPTIMIZERS.register("adamw")
class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), as torch.optim.AdamW.

    Biases and normalization scale/shift are excluded from decay unless exclude_from_decay
    is false.

    Notes
    -----
    For parameters that decay, first p <- p - lr * weight_decay * p, then the Adam update
    of Adam's Notes with the undecayed gradient g (after clipping).
    """

    PARAMS = {**Adam.PARAMS,
              "weight_decay": Param("float", 0.01, ge=0, doc="decoupled weight decay: p <- p - lr * wd * p"),
              "exclude_from_decay": Param("bool", True, nullable=True,
                                          doc="no weight decay on biases and norm scale/shift (b, beta, gamma)")}
    DECOUPLED_DECAY = True
    EXCLUDE_DEFAULT = True
