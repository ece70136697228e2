"""Engine-only training: XOR and two interleaved spirals are learned; many steps hold no more memory."""
from __future__ import annotations

import tracemalloc

import numpy as np

from nnctl.engine.losses import get_loss
from nnctl.engine.model import Sequential
from nnctl.engine.optimizers import Adam
from engine_fit import accuracy, fit






def mlp(hidden: list[int], n_in: int, n_out: int, seed: int, activation: str = "relu") -> Sequential:
    specs = [{"type": "dense", "units": h, "activation": activation} for h in hidden]
    specs.append({"type": "dense", "units": n_out})
    return Sequential.from_config(specs, (n_in,), np.random.default_rng(seed), "float32")


def two_spirals(n: int, rng: np.random.Generator, turns: float = 2.0, noise: float = 0.02):
    """Two interleaved spirals of `turns` turns, n points each; the radius grows with the angle."""
    angle = np.sqrt(rng.uniform(0, 1, n)) * turns * 2 * np.pi  # uniform density along the arm
    xs, ys = [], []
    for k in range(2):
        r = angle / (turns * 2 * np.pi)
        arm = np.stack([r * np.cos(angle + k * np.pi), r * np.sin(angle + k * np.pi)], axis=1)
        xs.append(arm + noise * rng.standard_normal(arm.shape))
        ys.append(np.full(n, k))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


def test_xor_is_learned_exactly():
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    y = np.array([0, 1, 1, 0])
    model = mlp([16], 2, 2, seed=0, activation="tanh")
    assert accuracy(model, x, y) < 1.0  # not solved by chance at initialization
    fit(model, x, y, epochs=300, batch=4, lr=0.05)
    assert accuracy(model, x, y) == 1.0
    _, dz = get_loss("cross_entropy")(model.forward(x, training=False), y)
    assert np.abs(dz).max() < 0.05  # confident, not just on the right side


def test_two_spirals_reach_97_percent():
    x, y = two_spirals(300, np.random.default_rng(0))
    linear = mlp([], 2, 2, seed=0)
    fit(linear, x, y, epochs=20, batch=32, lr=0.01)
    assert accuracy(linear, x, y) < 0.75  # the task needs the hidden layers
    model = mlp([64, 64], 2, 2, seed=0)
    fit(model, x, y, epochs=60, batch=32, lr=0.01)
    assert accuracy(model, x, y) >= 0.97


def _held_arrays(model: Sequential, opt: Adam) -> int:
    n = 0
    for layer in model.iter_layers():
        n += len(layer.ws.arrays) if hasattr(layer, "ws") else 0
        act = getattr(layer, "act", None)
        if act is not None:
            n += len(act.ws.arrays)
    return n + sum(len(s) for s in opt.state.values()) + len(opt._scratch)


def test_training_holds_a_constant_number_of_arrays():
    specs = [{"type": "dense", "units": 32, "activation": "relu"}, {"type": "batch_norm"},
             {"type": "dropout", "rate": 0.2},
             {"type": "residual", "layers": [{"type": "dense", "units": 32, "activation": "gelu"},
                                             {"type": "layer_norm"}]},
             {"type": "dense", "units": 3, "activation": "identity"}]
    model = Sequential.from_config(specs, (10,), np.random.default_rng(0), "float32")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((100, 10)).astype(np.float32)
    y = rng.integers(0, 3, 100)
    loss = get_loss({"name": "cross_entropy", "label_smoothing": 0.1})
    opt = Adam(lr=1e-3)
    params, grads = model.named_parameters(), model.named_grads()

    def epoch() -> None:  # batches of 32, 32, 32 and a last one of 4
        for start in range(0, 100, 32):
            z = model.forward(x[start:start + 32], training=True)
            _, dz = loss(z, y[start:start + 32])
            model.backward(dz)
            opt.step(params, grads)
        model.forward(x, training=False)  # an evaluation pass with a larger batch

    epoch()
    epoch()
    count = _held_arrays(model, opt)
    buffers = {id(a) for layer in model.iter_layers() for a in layer.ws.arrays.values()}
    tracemalloc.start()
    try:
        epoch()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20):
            epoch()
        growth = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert _held_arrays(model, opt) == count
    assert {id(a) for layer in model.iter_layers() for a in layer.ws.arrays.values()} == buffers
    assert growth < 16_384, f"memory grew by {growth} bytes over 20 epochs"
