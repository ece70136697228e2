"""An ONNX graph under construction, and the table of per-layer exporters that fill it.

`Graph` holds nodes and initializers with unique names and knows the target opset, so
exporters write `g.op("MatMul", x, w)` without caring about naming or opset differences
(ReduceMean takes its axes as an attribute before opset 18 and as an input from 18 on).
`EXPORTERS` maps an engine layer's canonical type name to the function that adds that
layer's evaluation-mode computation to a graph; a layer without an entry cannot be
exported, and `export_layer` says so by name instead of emitting anything.

The `onnx` package is imported inside `Graph.__init__`: this module is imported by
nnctl.export, which the CLI loads only when `nnctl export` runs.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from nnctl.errors import NnctlError

# The lowest opset the exporters' ops are written for (Softmax over one axis, Squeeze/Unsqueeze
# with axes as an input, ReduceMean either way); DEFAULT_OPSET is what ONNX Runtime of the last
# years and most other runtimes load.
MIN_OPSET = 13
DEFAULT_OPSET = 17


class ExportError(NnctlError):
    """A model, option or data that cannot be exported, or an export that failed its parity check."""


class Graph:
    """Nodes, initializers and fresh names for one ONNX graph in one float dtype.

    `dtype` is the graph's float type (np.float32 or np.float64): every constant made with
    `const` is cast to it, so nothing in the graph silently mixes precisions.
    """

    def __init__(self, dtype: Any, opset: int):
        from onnx import TensorProto, helper, numpy_helper
        self.helper, self.numpy_helper, self.TensorProto = helper, numpy_helper, TensorProto
        self.dtype = np.dtype(dtype)
        self.elem_type = TensorProto.FLOAT if self.dtype == np.float32 else TensorProto.DOUBLE
        self.opset = int(opset)
        self.nodes: list = []
        self.initializers: list = []
        self._names: set[str] = set()

    def name(self, hint: str) -> str:
        """A name not used before in this graph, readable in Netron: the hint, or hint_2, hint_3..."""
        base = hint.replace("/", ".")
        name, k = base, 1
        while name in self._names:
            k += 1
            name = f"{base}_{k}"
        self._names.add(name)
        return name

    def reserve(self, name: str) -> None:
        """Claim `name` (a graph input) so that no node output or initializer is given it."""
        self._names.add(name)

    def const(self, hint: str, value: Any, dtype: Any = None) -> str:
        """An initializer holding `value` (in the graph's float dtype unless `dtype` says otherwise)."""
        arr = np.asarray(value, dtype=self.dtype if dtype is None else dtype)
        name = self.name(hint)
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def ints(self, hint: str, values: Any) -> str:
        """An int64 initializer, for shapes and axes."""
        return self.const(hint, np.asarray(values, dtype=np.int64), np.int64)

    def op(self, op_type: str, *inputs: str, hint: str | None = None, outputs: int = 1, **attrs: Any):
        """Add one node; returns its output name (or a list of `outputs` names)."""
        base = hint or op_type.lower()
        outs = [self.name(base if outputs == 1 else f"{base}.out{j}") for j in range(outputs)]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), outs, name=self.name(f"{base}.node"), **attrs))
        return outs[0] if outputs == 1 else outs

    # -- ops whose form depends on the opset ------------------------------------------------
    def reduce_mean(self, x: str, axes: list[int], keepdims: bool, hint: str | None = None) -> str:
        if self.opset >= 18:
            return self.op("ReduceMean", x, self.ints(f"{hint or 'mean'}.axes", axes), hint=hint,
                           keepdims=int(keepdims))
        return self.op("ReduceMean", x, hint=hint, axes=list(axes), keepdims=int(keepdims))

    def squeeze(self, x: str, axes: list[int], hint: str | None = None) -> str:
        return self.op("Squeeze", x, self.ints(f"{hint or 'squeeze'}.axes", axes), hint=hint)

    def reshape(self, x: str, shape: list[int], hint: str | None = None) -> str:
        """Reshape with ONNX's conventions: 0 copies that input dimension (the batch), -1 is inferred."""
        return self.op("Reshape", x, self.ints(f"{hint or 'reshape'}.shape", shape), hint=hint)


# A layer exporter: (graph, layer, input name, parameter prefix such as "layers.2") -> output name.
Exporter = Callable[[Graph, Any, str, str], str]
EXPORTERS: dict[str, Exporter] = {}


def exporter(*names: str) -> Callable[[Exporter], Exporter]:
    """Register a function as the exporter of the engine layers with these canonical type names."""
    def deco(fn: Exporter) -> Exporter:
        for name in names:
            EXPORTERS[name] = fn
        return fn
    return deco


def export_layer(g: Graph, layer: Any, x: str, prefix: str) -> str:
    """Add `layer` (evaluation semantics) to the graph after `x`; an unknown layer type is an ExportError."""
    fn = EXPORTERS.get(layer.NAME)
    if fn is None:
        raise ExportError(f"{prefix} {layer.NAME}: this layer type cannot be exported to ONNX yet "
                          f"(exportable: {', '.join(sorted(EXPORTERS))})")
    return fn(g, layer, x, prefix)
