"""How much memory training a model takes, worked out from shapes before anything is allocated.

`estimate_memory` builds the layers inside `shapes_only()`, where parameters are zero-stride
views and no gradients exist, so sizing a model of a billion parameters costs nothing; the
real model is built only once the estimate fits.

Notes
-----
With P parameters, itemsize s, a batch of B rows and top-level layers with input/output
sizes in_l, out_l (elements per row):
  parameters       P * s
  gradients        P * s                     (one array per parameter)
  optimizer state  P * s * (slots + 1)       (its declared slots, e.g. Adam's m and v, plus
                                              the one scratch array per parameter it keeps)
  activations      B * s * sum_l (2 * out_l + in_l)
                                             (each layer keeps its output and one scratch
                                              buffer of that size, and its input gradient)
B is the larger of the training batch and the evaluation batch actually used. Layers with
internal state of their own (attention scores, recurrent steps) need more than this: the
estimate is a floor, so a refusal is never a false alarm.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nnctl.engine.base import shapes_only
from nnctl.errors import NnctlError


@dataclass
class LayerSize:
    name: str                      # "layers.0 dense"
    output_shape: tuple[int, ...]  # without the batch axis
    parameters: int


@dataclass
class MemoryEstimate:
    """Bytes needed to train; `complete` is False when sizing stopped at a layer (see `stopped`)."""

    layers: list[LayerSize]
    input_shape: tuple[int, ...]
    itemsize: int
    batch_rows: int
    optimizer_arrays: int          # arrays the optimizer keeps per parameter (slots + scratch)
    complete: bool = True
    stopped: str | None = None     # why sizing stopped early, e.g. "layers.1 dense is too large to size"
    activation_elements: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        shape_in = self.input_shape
        total = 0
        for layer in self.layers:
            total += 2 * math.prod(layer.output_shape) + math.prod(shape_in)
            shape_in = layer.output_shape
        self.activation_elements = total

    @property
    def parameters(self) -> int:
        return sum(layer.parameters for layer in self.layers)

    @property
    def parameter_bytes(self) -> int:
        return self.parameters * self.itemsize

    @property
    def gradient_bytes(self) -> int:
        return self.parameter_bytes

    @property
    def optimizer_bytes(self) -> int:
        return self.parameter_bytes * self.optimizer_arrays

    @property
    def activation_bytes(self) -> int:
        return self.batch_rows * self.activation_elements * self.itemsize

    @property
    def total_bytes(self) -> int:
        return self.parameter_bytes + self.gradient_bytes + self.optimizer_bytes + self.activation_bytes

    def breakdown(self) -> str:
        """"parameters 3.7 GiB, gradients 3.7 GiB, optimizer state 11.2 GiB, activations 1.2 MiB at 32 rows"."""
        return (f"parameters {format_bytes(self.parameter_bytes)}, gradients {format_bytes(self.gradient_bytes)}, "
                f"optimizer state {format_bytes(self.optimizer_bytes)}, activations "
                f"{format_bytes(self.activation_bytes)} at {self.batch_rows} rows")


def format_bytes(n: int | float) -> str:
    """1536 -> '1.5 KiB'; binary units up to EiB, then EiB with a large number."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    value = float(n)
    for unit in units:
        if value < 1024 or unit == units[-1]:
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def optimizer_arrays(optimizer: Any) -> int:
    """Arrays an optimizer keeps per parameter: its declared state slots plus one scratch."""
    return len(optimizer.slots()) + 1


def estimate_memory(layer_specs: list[dict[str, Any]], input_shape: tuple[int, ...], dtype: Any,
                    batch_rows: int, optimizer_arrays: int) -> MemoryEstimate:
    """Size every layer of `layer_specs` on `input_shape` without allocating its parameters.

    A layer whose spec or shape is wrong (a ConfigError) ends the sizing there, with
    `complete` False: the real build reports that error with its YAML line. A layer too
    large for NumPy even to describe (more elements than an index can count) also ends it,
    and then the estimate is infinite.
    """
    from nnctl.engine.model import build_layer
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(0)  # never drawn from: initializers return views in shapes_only
    shape = tuple(int(d) for d in input_shape)
    sizes: list[LayerSize] = []
    complete, stopped = True, None
    with shapes_only():
        for i, spec in enumerate(layer_specs):
            name = f"layers.{i} {spec.get('type', '?') if isinstance(spec, dict) else '?'}"
            try:
                layer = build_layer(spec)
                out = tuple(int(d) for d in layer.build(shape, rng, dtype))
                count = layer.num_parameters()
            except NnctlError:
                complete, stopped = False, None
                break
            except (MemoryError, ValueError, OverflowError) as err:
                # numpy's "array is too big" (more elements than an index can count), or a
                # buffer of the layer's own that cannot be allocated; any other ValueError
                # is the layer's to report when it is really built
                text = str(err).lower()
                if isinstance(err, ValueError) and not any(w in text for w in ("too big", "too large", "maximum")):
                    complete, stopped = False, None
                else:
                    complete, stopped = False, f"{name} is too large to size"
                break
            sizes.append(LayerSize(name, out, count))
            shape = out
    return MemoryEstimate(layers=sizes, input_shape=tuple(int(d) for d in input_shape), itemsize=dtype.itemsize,
                          batch_rows=int(batch_rows), optimizer_arrays=int(optimizer_arrays),
                          complete=complete, stopped=stopped)
