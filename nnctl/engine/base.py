"""The layer contract every engine layer follows.

A layer is built once for an input shape (without the batch axis), then called as
`forward(x, training)` / `backward(dy)`. It owns `params` (trainable arrays), `grads`
(same keys, shapes and dtype, filled by `backward`) and `buffers` (non-trainable state
such as BatchNorm's running statistics, saved in checkpoints). Layers never own an
optimizer and never print.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator

import numpy as np

from nnctl.hparams import Param, Registry, check_value, defaults

LAYERS = Registry("layer")

# Local parameter names the optimizers leave out of weight decay when asked to:
# biases and the shift/scale of normalization layers (the PyTorch/Keras convention).
NO_DECAY_NAMES = frozenset({"b", "beta", "gamma"})


# Set while a model is built only to learn its shapes and sizes (engine/memory.py): parameter
# arrays are then zero-stride views and gradients are not allocated, so sizing a model that
# would need terabytes costs nothing.
_SHAPES_ONLY: ContextVar[bool] = ContextVar("nnctl_shapes_only", default=False)


@contextmanager
def shapes_only() -> Iterator[None]:
    """Within this block, `build` creates no parameter memory (see engine/memory.py)."""
    token = _SHAPES_ONLY.set(True)
    try:
        yield
    finally:
        _SHAPES_ONLY.reset(token)


def building_shapes_only() -> bool:
    return _SHAPES_ONLY.get()


class Layer:
    """Base class. Subclasses declare PARAMS and implement build/forward/backward.

    Attributes after build():
        input_shape, output_shape: tuples without the batch axis.
        params, grads: dict[str, ndarray] with identical keys/shapes/dtype.
        buffers: dict[str, ndarray] of non-trainable state (may be empty).
        dtype: the model's one dtype (np.float32 or np.float64).
        rng: the model's np.random.Generator (used by e.g. Dropout at training time).
    """

    NAME = "layer"
    PARAMS: dict[str, Param] = {}

    def __init__(self, **hparams: Any):
        unknown = set(hparams) - set(self.PARAMS)
        if unknown:
            from nnctl.errors import ConfigError
            raise ConfigError(f"{self.NAME}: unknown option(s) {', '.join(sorted(unknown))}")
        self.hparams = {**defaults(self.PARAMS), **hparams}
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.input_shape: tuple[int, ...] = ()
        self.output_shape: tuple[int, ...] = ()
        self.dtype = np.dtype(np.float32)
        self.rng: np.random.Generator | None = None
        # The model sets this False on its first layer: nobody reads that layer's dx, so its
        # backward may skip computing it and return None. Layers that ignore it stay correct.
        self.input_grad = True

    # -- lifecycle ---------------------------------------------------------------------
    def build(self, input_shape: tuple[int, ...], rng: np.random.Generator, dtype) -> tuple[int, ...]:
        """Create params for `input_shape`; return the output shape. Override `_build`."""
        self.input_shape = tuple(int(d) for d in input_shape)
        self.rng = rng
        self.dtype = np.dtype(dtype)
        self.output_shape = tuple(self._build(self.input_shape, rng))
        if not _SHAPES_ONLY.get():
            self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        return self.output_shape

    def _build(self, input_shape: tuple[int, ...], rng: np.random.Generator) -> tuple[int, ...]:
        return input_shape

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dy: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # -- introspection -------------------------------------------------------------------
    def children(self) -> list[tuple[str, "Layer"]]:
        """Sub-layers as (local name, layer); containers (Residual, blocks) override this."""
        return []

    def get_config(self) -> dict[str, Any]:
        """Exactly the constructor's arguments, so `type(l)(**l.get_config())` rebuilds it."""
        return dict(self.hparams)

    def num_parameters(self) -> int:
        n = sum(int(v.size) for v in self.params.values())
        return n + sum(c.num_parameters() for _, c in self.children())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


# Bytes of the intermediates a layer works through a block of samples at a time so that they
# stay in the L2 cache (2 MB per core on the development machine): a convolution's im2col
# blocks, the transformer block's evaluation groups. The measurements are where it is used.
CACHE_BLOCK_BYTES = 2 << 20


class Workspace:
    """Scratch arrays a layer reuses across calls instead of allocating per batch.

    `get(name, shape, dtype)` returns an uninitialised array of that shape (`zeros`: zeroed
    when allocated). One array is kept per (name, trailing shape, dtype) and reallocated
    only when a batch larger than any before arrives; a smaller batch gets a view of its first rows, which is still
    C-contiguous, so BLAS and `out=` work on it. The number of arrays held is therefore
    fixed by the names and shapes in use, however many steps run.

    What a layer returns from such a buffer is overwritten by its next call: callers that
    keep a result across calls must copy it.
    """

    def __init__(self) -> None:
        self.arrays: dict[tuple, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype, new=np.empty) -> np.ndarray:
        shape = tuple(shape)
        key = (name, shape[1:], np.dtype(dtype))
        a = self.arrays.get(key)
        if a is None or (shape and a.shape[0] < shape[0]):
            a = self.arrays[key] = new(shape, dtype=dtype)
            return a
        return a if not shape or a.shape[0] == shape[0] else a[:shape[0]]

    def zeros(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        """As `get`, but zeroed when allocated: a caller that writes the same part of it on
        every call finds the rest still zero (a padded buffer whose padding is never refilled)."""
        return self.get(name, shape, dtype, np.zeros)

    def ones(self, n: int, dtype) -> np.ndarray:
        """A vector of n ones, filled once per allocation (a smaller n gets a prefix view).

        Sums along a long axis run as products with it (1^T dZ for a bias gradient, a
        softmax's column sums): BLAS does them ~3x faster than np.sum down that axis.
        """
        key = ("ones", np.dtype(dtype))
        a = self.arrays.get(key)
        if a is None or len(a) < n:
            a = self.arrays[key] = np.ones(n, dtype=dtype)
        return a[:n]

    def __len__(self) -> int:
        return len(self.arrays)


def check_hparams(owner: str, params: dict[str, Param], values: dict[str, Any]) -> None:
    """Raise ConfigError for a missing required option, a wrong type, a bound or choice broken.

    The config layer checks YAML against the same PARAMS with line numbers; this is the
    engine's own guard for layers built in code, so a bad value fails at construction
    instead of deep inside numpy. Each value is checked by nnctl.hparams.check_value, as
    every other component's options are; `values` is left as given.
    """
    from nnctl.errors import ConfigError
    for key, p in params.items():
        if key in values:
            check_value(f"{owner}.{key}", values[key], p)
        elif p.required:
            raise ConfigError(f"{owner}: missing required option '{key}'")


def check_state_keys(where: str, d: Any, expected: tuple[str, ...]) -> None:
    """A saved state mapping must hold exactly `expected`: an unknown key means another
    version or another component wrote it, a missing one that it is damaged."""
    from nnctl.errors import CheckpointError
    if not isinstance(d, dict):
        raise CheckpointError(f"{where}: expected a mapping, got {type(d).__name__}")
    for key in sorted(d):
        if key not in expected:
            raise CheckpointError(f"{where}: unknown key '{key}'")
    for key in expected:
        if key not in d:
            raise CheckpointError(f"{where}: missing key '{key}'")
