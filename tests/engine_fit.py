"""A bare training loop for the engine-only tests: mini-batch Adam on one loss, no trainer."""
from __future__ import annotations

import math

import numpy as np

from nnctl.engine.losses import get_loss
from nnctl.engine.optimizers import Adam


def fit(model, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, seed: int = 0, batch: int = 32,
        loss: str = "cross_entropy", cosine: bool = False):
    """Train `model` in place and return it; `cosine` decays lr per epoch to 0 (half a cosine)."""
    loss_fn, opt = get_loss(loss), Adam(lr=lr)
    params, grads = model.named_parameters(), model.named_grads()
    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        if cosine:
            opt.lr = lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            _, dz = loss_fn(model.forward(x[idx], training=True), y[idx])
            model.backward(dz)
            opt.step(params, grads)
    return model


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(model.predict(x).argmax(axis=1) == y))
