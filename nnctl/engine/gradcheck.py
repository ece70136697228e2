"""Central-difference gradient checks of a model, a layer or a loss against backward, in float64.

    errors = gradcheck(model, x, y, loss="cross_entropy")   # {"layers.0.W": 3e-11, ..., "input": 2e-11}

The relative error of an analytic gradient a against a numerical one n (same name, same
elements) is

    max_i |a_i - n_i| / max(1e-8, max_i |a_i| + max_i |n_i|)

i.e. the worst elementwise difference measured against the scale of the whole array. It is
robust at zero: an all-zero gradient checks as 0 when both agree, and a single element
that happens to be near zero (where central differences only resolve ~1e-10 absolutely) does
not blow the ratio up, while any element that is wrong at the array's scale still shows.
A correct float64 backward gives ~1e-9 or less. One caveat: where a pre-activation lies
within h of a kink (relu at 0, huber at delta, ...) the central difference straddles it and
is wrong there, whatever the backward; random inputs almost never do.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from nnctl.engine.base import Layer
from nnctl.engine.losses import Loss, get_loss
from nnctl.engine.model import Sequential

FLOOR = 1e-8


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """max|a - n| / max(1e-8, max|a| + max|n|) (see the module docstring)."""
    a = np.asarray(analytic, dtype=np.float64).reshape(-1)
    n = np.asarray(numeric, dtype=np.float64).reshape(-1)
    if a.size == 0:
        return 0.0
    scale = max(FLOOR, float(np.abs(a).max()) + float(np.abs(n).max()))
    return float(np.abs(a - n).max()) / scale


def _generators(model: Sequential) -> list[np.random.Generator]:
    seen: dict[int, np.random.Generator] = {}
    for g in [model.rng, *(layer.rng for layer in model.iter_layers())]:
        if g is not None:
            seen.setdefault(id(g), g)
    return list(seen.values())


def _central_difference(flat: np.ndarray, indices: np.ndarray, f: Callable[[], float], h: float) -> np.ndarray:
    """(f(v + h) - f(v - h)) / 2h for each perturbed element of `flat` (restored afterwards)."""
    out = np.empty(len(indices))
    for j, i in enumerate(indices):
        v = flat[i]
        flat[i] = v + h
        plus = f()
        flat[i] = v - h
        minus = f()
        flat[i] = v
        out[j] = (plus - minus) / (2.0 * h)
    return out


def gradcheck(target: Sequential | Layer, x: np.ndarray, y: np.ndarray | None = None,
              loss: Loss | str | dict | None = None, *, training: bool = True, h: float = 1e-5,
              max_checks: int | None = None, seed: int = 0, check_input: bool = True) -> dict[str, float]:
    """Relative error of every parameter's gradient (and of the input's) against central differences.

    target: a built Sequential or a built Layer. Anything not float64 is checked on a float64
        copy (same architecture, parameters cast); a float64 target is perturbed in place and
        restored exactly.
    x: inputs (N, *input_shape); y: targets for `loss`.
    loss: a Loss, a loss name or {name, ...}; None uses the fixed random probe
        L = sum(output * R), R ~ N(0, 1) drawn from `seed`, whose gradient is R.
    training: evaluate in training mode (BatchNorm batch statistics, dropout on). Every
        evaluation restores the Generators' states first, so dropout draws the same mask each
        time and the function being differentiated is deterministic; buffers (BatchNorm's
        running statistics) and Generator states are restored when the check ends.
    h: the central-difference step. max_checks: check at most this many elements per array
        (chosen with `seed`), for big models.

    Returns {parameter name: error, ..., "input": error} (see `relative_error`).
    """
    layer_flag = None
    if isinstance(target, Layer):
        if target.rng is None:
            raise ValueError("gradcheck: build the layer before checking it")
        layer_flag = (target, target.input_grad)
        model = Sequential([target])
    elif isinstance(target, Sequential):
        model = target
    else:
        raise TypeError(f"gradcheck: expected a Sequential or a Layer, got {type(target).__name__}")
    try:
        if model.dtype != np.float64:
            model = model.astype(np.float64)
        return _check_model(model, x, y, loss, training, h, max_checks, seed, check_input)
    finally:
        if layer_flag is not None:
            layer_flag[0].input_grad = layer_flag[1]


def _check_model(model: Sequential, x, y, loss, training: bool, h: float, max_checks: int | None,
                 seed: int, check_input: bool) -> dict[str, float]:
    x64 = np.array(x, dtype=np.float64)
    pick = np.random.default_rng(seed)
    if loss is None:
        probe = pick.standard_normal((x64.shape[0],) + tuple(model.output_shape))

        def value(out: np.ndarray) -> float:
            return float(np.sum(out * probe))

        def value_and_grad(out: np.ndarray) -> tuple[float, np.ndarray]:
            return value(out), probe.copy()
    else:
        loss_fn = get_loss(loss)

        def value(out: np.ndarray) -> float:
            return loss_fn.value(out, y)

        def value_and_grad(out: np.ndarray) -> tuple[float, np.ndarray]:
            return loss_fn.loss(out, y)

    gens = _generators(model)
    states = [g.bit_generator.state for g in gens]
    buffers = {k: v.copy() for k, v in model.named_buffers().items()}

    def rewind() -> None:
        for g, s in zip(gens, states):
            g.bit_generator.state = s

    def f() -> float:
        rewind()
        return value(model.forward(x64, training))

    def indices(size: int) -> np.ndarray:
        if max_checks is None or size <= max_checks:
            return np.arange(size)
        return np.sort(pick.choice(size, max_checks, replace=False))

    try:
        rewind()
        _, dz = value_and_grad(model.forward(x64, training))
        dx = model.backward(dz, input_grad=True)
        analytic = {k: g.copy() for k, g in model.named_grads().items()}
        results: dict[str, float] = {}
        for name, p in model.named_parameters().items():
            flat = p.reshape(-1)
            assert np.shares_memory(flat, p), "parameters must be contiguous"
            idx = indices(flat.size)
            numeric = _central_difference(flat, idx, f, h)
            results[name] = relative_error(analytic[name].reshape(-1)[idx], numeric)
        if check_input:
            flat = x64.reshape(-1)
            idx = indices(flat.size)
            numeric = _central_difference(flat, idx, f, h)
            results["input"] = relative_error(dx.reshape(-1)[idx], numeric)
        return results
    finally:
        for k, v in model.named_buffers().items():
            v[...] = buffers[k]
        rewind()


def loss_gradcheck(loss: Loss | str | dict, z: np.ndarray, y: np.ndarray, h: float = 1e-6) -> float:
    """Relative error of `loss.loss(z, y)`'s dz against central differences of `loss.value`, in float64."""
    fn = get_loss(loss)
    z64 = np.array(z, dtype=np.float64)
    _, dz = fn.loss(z64, y)
    flat = z64.reshape(-1)
    numeric = _central_difference(flat, np.arange(flat.size), lambda: fn.value(z64, y), h)
    return relative_error(dz, numeric)
