"""The Sequential model: layers built from canonical specs, named parameters, state dicts, summary.

Parameters, grads and buffers are named `layers.<i>.<local>` (nested containers add
`layers.<j>.` per level, e.g. `layers.2.layers.0.W`); the same names key optimizer state,
checkpoints and gradient checks.
"""
from __future__ import annotations

from typing import Any, Iterator, NamedTuple

import numpy as np

from nnctl.engine.base import LAYERS, Layer
from nnctl.engine.conv import link_convs_and_pools
from nnctl.errors import CheckpointError, ConfigError, DataError

DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def build_layer(spec: dict[str, Any]) -> Layer:
    """An unbuilt Layer from `{"type": name, **options}`; an unknown type is a ConfigError."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"a layer spec must be a mapping with 'type', got {spec!r}")
    options = {k: v for k, v in spec.items() if k != "type"}
    return LAYERS.get(spec["type"])(**options)


def layer_spec(layer: Layer) -> dict[str, Any]:
    """The canonical spec that rebuilds `layer`: `{"type": canonical name, **get_config()}`."""
    return {"type": layer.NAME, **layer.get_config()}


def as_dtype(dtype: Any) -> np.dtype:
    """float32 or float64 as an np.dtype; anything else is a ConfigError."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in DTYPES:
        raise ConfigError(f"dtype must be float32 or float64, got {dtype!r}")
    return dt


def as_generator(rng: Any) -> np.random.Generator:
    """A Generator, or an int seed turned into one."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise ConfigError(f"rng must be a numpy Generator or an int seed, got {type(rng).__name__}")


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


class SummaryRow(NamedTuple):
    """One top-level layer: name ("layers.0 dense"), output shape without the batch axis, parameter count."""

    name: str
    output_shape: tuple[int, ...]
    params: int


class Sequential:
    """A stack of layers applied in order.

    Build it from specs with `Sequential.from_config(specs, input_shape, rng, dtype)`, or
    from Layer objects with `Sequential(layers)` (already built, or then `.build(...)`).

    `forward` and `backward` return arrays the caller owns (copies of the last layer's
    buffer); the layers themselves reuse their buffers across batches.
    """

    def __init__(self, layers: list[Layer]):
        self.layers: list[Layer] = list(layers)
        if not self.layers:
            raise ConfigError("a model needs at least one layer")
        self.input_shape: tuple[int, ...] | None = None
        self.output_shape: tuple[int, ...] | None = None
        self.dtype: np.dtype | None = None
        self.rng: np.random.Generator | None = None
        self.flat_params: np.ndarray | None = None  # set by build(): see _flatten
        self.flat_grads: np.ndarray | None = None
        if all(layer.rng is not None for layer in self.layers):
            self._adopt_built()

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_config(cls, specs: list[dict[str, Any]], input_shape: tuple[int, ...], rng: Any,
                    dtype: Any = "float32") -> "Sequential":
        """Build every layer of `specs` (canonical layer specs) for samples of `input_shape`."""
        model = cls([build_layer(s) for s in specs])
        return model.build(input_shape, rng, dtype)

    def build(self, input_shape: tuple[int, ...], rng: Any, dtype: Any = "float32") -> "Sequential":
        """Build the layers in order (initializing their parameters from `rng`); returns self."""
        self.dtype = as_dtype(dtype)
        self.rng = as_generator(rng)
        self.input_shape = tuple(int(d) for d in input_shape)
        shape = self.input_shape
        for layer in self.layers:
            shape = tuple(layer.build(shape, self.rng, self.dtype))
        self.output_shape = shape
        self._set_input_grads()
        return self.flatten()

    def flatten(self) -> "Sequential":
        """Move every parameter into one flat array and every gradient into another; returns self.

        The layers' `params`/`grads` dicts keep their keys and shapes but now hold views
        (`layers.0.W` is `flat_params[0:in*units].reshape(in, units)`, and so on, in
        `named_parameters()` order), so nothing that reads them by name sees a difference.
        Optimizers detect the layout and update all parameters with one call per operation
        instead of one per parameter. `build` does this; layers built elsewhere and adopted
        are left as they are (their owner may hold their arrays, which must stay the live
        ones) unless that owner calls `flatten()`, as the trainer's model builder does.
        """
        named = list(self.named_layers())
        total = sum(int(a.size) for _, layer in named for a in layer.params.values())
        flat_p = np.empty(total, dtype=self.dtype)
        flat_g = np.zeros(total, dtype=self.dtype)
        pos = 0
        for _, layer in named:
            for local, arr in list(layer.params.items()):
                end = pos + arr.size
                view = flat_p[pos:end].reshape(arr.shape)
                view[...] = arr
                layer.params[local] = view
                layer.grads[local] = flat_g[pos:end].reshape(arr.shape)
                pos = end
        self.flat_params, self.flat_grads = flat_p, flat_g
        return self

    def _adopt_built(self) -> None:
        first = self.layers[0]
        self.input_shape, self.dtype, self.rng = first.input_shape, first.dtype, first.rng
        shape = self.input_shape
        for i, layer in enumerate(self.layers):
            if layer.input_shape != shape:
                raise ConfigError(f"layers.{i} {layer.NAME}: built for input {_shape_text(layer.input_shape)} "
                                  f"but receives {_shape_text(shape)}")
            if layer.dtype != self.dtype:
                raise ConfigError(f"layers.{i} {layer.NAME}: dtype {layer.dtype} differs from the model's {self.dtype}")
            shape = layer.output_shape
        self.output_shape = shape
        self._set_input_grads()

    def _set_input_grads(self) -> None:
        # nobody reads the gradient of the model's input during training
        for i, layer in enumerate(self.layers):
            layer.input_grad = i > 0
        # the one place where neighbouring layers share work (only forward/backward see it)
        link_convs_and_pools(self.layers)

    @property
    def built(self) -> bool:
        return self.dtype is not None

    def get_config(self) -> list[dict[str, Any]]:
        """Canonical layer specs (JSON-able) that rebuild the same architecture."""
        return [layer_spec(layer) for layer in self.layers]

    def astype(self, dtype: Any) -> "Sequential":
        """A new model of the same architecture in `dtype`, parameters and buffers cast, with its
        own Generator starting from a copy of this model's Generator state."""
        dt = as_dtype(dtype)
        rng = np.random.Generator(type(self.rng.bit_generator)())
        rng.bit_generator.state = self.rng.bit_generator.state
        other = Sequential.from_config(self.get_config(), self.input_shape, np.random.default_rng(0), dt)
        other.rng = rng
        for layer in other.iter_layers():
            layer.rng = rng
        src = {**self.named_parameters(), **self.named_buffers()}
        for name, arr in {**other.named_parameters(), **other.named_buffers()}.items():
            arr[...] = src[name].astype(dt)
        return other

    # -- computation -----------------------------------------------------------------------
    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        """Outputs (N, *output_shape) for inputs x (N, *input_shape), cast to the model's dtype.

        training=True uses batch statistics and draws dropout masks; False is evaluation.
        """
        x = np.asarray(x)
        if x.shape[1:] != self.input_shape:
            raise DataError(f"model expects samples of shape {_shape_text(self.input_shape)}, "
                            f"got a batch of shape {_shape_text(x.shape)}")
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)
        h = x
        for layer in self.layers:
            h = layer.forward(h, training)
        return h.copy()

    def backward(self, dy: np.ndarray, input_grad: bool = False) -> np.ndarray | None:
        """Fill every layer's grads from dL/doutput `dy` (N, *output_shape); grads are
        overwritten, not accumulated. Returns dL/dx only when `input_grad` is True."""
        dy = np.asarray(dy)
        if dy.dtype != self.dtype:
            dy = dy.astype(self.dtype)
        first = self.layers[0]
        first.input_grad = input_grad
        try:
            g = dy
            for layer in reversed(self.layers):
                g = layer.backward(g)
        finally:
            first.input_grad = False
        return g.copy() if input_grad else None

    def predict(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Raw outputs (N, *output_shape) in evaluation mode, computed `batch_size` rows at a time."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        x = np.asarray(x)
        out = np.empty((x.shape[0],) + tuple(self.output_shape), dtype=self.dtype)
        for start in range(0, x.shape[0], batch_size):
            out[start:start + batch_size] = self.forward(x[start:start + batch_size], training=False)
        return out

    # -- names -------------------------------------------------------------------------------
    def named_layers(self) -> Iterator[tuple[str, Layer]]:
        """(prefix, layer) for every layer, depth first: ("layers.0", dense), ("layers.2.layers.0", ...)."""
        def walk(prefix: str, layer: Layer):
            yield prefix, layer
            for child_name, child in layer.children():
                yield from walk(f"{prefix}.{child_name}", child)
        for i, layer in enumerate(self.layers):
            yield from walk(f"layers.{i}", layer)

    def iter_layers(self) -> Iterator[Layer]:
        for _, layer in self.named_layers():
            yield layer

    def _named(self, attr: str) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for prefix, layer in self.named_layers():
            for local, arr in getattr(layer, attr).items():
                out[f"{prefix}.{local}"] = arr
        return out

    def named_parameters(self) -> dict[str, np.ndarray]:
        """name -> the live parameter array (optimizers update these in place)."""
        return self._named("params")

    def named_grads(self) -> dict[str, np.ndarray]:
        """name -> the live gradient array, same keys as named_parameters()."""
        return self._named("grads")

    def named_buffers(self) -> dict[str, np.ndarray]:
        """name -> live non-trainable state (e.g. BatchNorm running statistics)."""
        return self._named("buffers")

    def num_parameters(self) -> int:
        return sum(layer.num_parameters() for layer in self.layers)

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and buffer, by name."""
        return {k: v.copy() for k, v in {**self.named_parameters(), **self.named_buffers()}.items()}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Copy `state` into the model's arrays in place (optimizer references stay valid).

        Every key is checked before anything is written. A mis-shaped or wrongly typed
        array is always a CheckpointError; with strict=True, so is a missing or extra key.
        """
        own = {**self.named_parameters(), **self.named_buffers()}
        missing = [k for k in own if k not in state]
        extra = [k for k in state if k not in own]
        if strict and missing:
            listed = ", ".join(f"'{k}' (model shape {_shape_text(own[k].shape)})" for k in missing)
            raise CheckpointError(f"state dict is missing {'key' if len(missing) == 1 else 'keys'} {listed}")
        if strict and extra:
            listed = ", ".join(f"'{k}' (shape {_shape_text(np.shape(state[k]))})" for k in extra)
            raise CheckpointError(f"state dict has unexpected {'key' if len(extra) == 1 else 'keys'} {listed}")
        for k, arr in own.items():
            if k not in state:
                continue
            value = np.asarray(state[k])
            if value.shape != arr.shape:
                raise CheckpointError(f"state dict '{k}' has shape {_shape_text(value.shape)}, "
                                      f"the model expects {_shape_text(arr.shape)}")
            if value.dtype != arr.dtype:
                raise CheckpointError(f"state dict '{k}' has dtype {value.dtype}, the model expects {arr.dtype}")
        for k, arr in own.items():
            if k in state:
                arr[...] = state[k]

    # -- description -------------------------------------------------------------------------
    def summary(self) -> list[SummaryRow]:
        """One row per top-level layer: ("layers.0 dense", (64,), 50240)."""
        return [SummaryRow(f"layers.{i} {layer.NAME}", tuple(layer.output_shape), layer.num_parameters())
                for i, layer in enumerate(self.layers)]

    def summary_text(self) -> str:
        """The summary as text, one line per layer, then the input and the total."""
        rows = self.summary()
        width = max(len(r.name) for r in rows)
        lines = [f"{r.name:<{width}}  {_shape_text(r.output_shape):<16} {r.params:>12,}" for r in rows]
        lines.append(f"input {_shape_text(self.input_shape)}, {self.dtype}, "
                     f"{self.num_parameters():,} parameters")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Sequential({len(self.layers)} layers, {self.num_parameters():,} parameters)"
