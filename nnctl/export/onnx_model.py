"""A loaded nnctl model -> one ONNX model: preprocessing, the layers, the output head, metadata.

The graph takes the raw features exactly as `nnctl predict` reads them and does everything
nnctl does to them on the way to a prediction:

    features (the graph's float type) -> Reshape (data.shape, when the spec has one)
             -> standardization ((x - mean) * (1 / scale), the checkpoint's statistics)
             -> the layers (evaluation semantics) -> the output head

A CSV model whose columns need encoding (text columns, fill values) takes the raw columns
instead and encodes them first (nnctl.export.tabular).

The head gives `probabilities` (softmax or sigmoid of the logits; one logit of a binary
model becomes the two columns [1 - p, p]), `label_index` (int64, nnctl's own rule: argmax,
or logit > 0 for one logit) and `label` (the class label as text) for classification, and
`values` for regression.
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from nnctl import __version__
from nnctl.export import tabular
from nnctl.export.graph import MIN_OPSET, ExportError, Graph, export_layer

CLASSIFICATION = "classification"
INPUT_NAME = "features"
# the graph's outputs (a column may not take one of these names as its input's name)
OUTPUT_NAMES = (PROBABILITIES, LABEL_INDEX, LABEL, VALUES) = ("probabilities", "label_index", "label", "values")


def input_shape_of(lm: Any) -> tuple[int, ...]:
    """The per-sample shape the graph takes: the flat feature row when the spec reshapes
    samples (data.shape), else the model's own input shape."""
    return (math.prod(lm.input_shape),) if _data_shape(lm) is not None else tuple(lm.input_shape)


def _data_shape(lm: Any) -> list[int] | None:
    data = lm.meta.get("config", {}).get("data")
    shape = data.get("shape") if isinstance(data, dict) else None
    return list(shape) if isinstance(shape, list) else None


def preprocess(g: Graph, lm: Any, x: str) -> str:
    """Raw features -> the model's input, as `nnctl predict` prepares a batch.

    x: the feature row, already encoded from raw columns when the model has a table encoding.
    """
    h = x
    if _data_shape(lm) is not None:
        h = g.reshape(h, [0, *lm.input_shape], hint="pre.reshape")
    if lm.standardizer is not None:
        # the engine casts mean and 1/scale (float64) to the batch dtype, then subtracts and multiplies
        mean = lm.standardizer.mean.astype(g.dtype)
        inv_scale = (1.0 / lm.standardizer.scale).astype(g.dtype)
        h = g.op("Sub", h, g.const("standardize.mean", mean), hint="pre.center")
        h = g.op("Mul", h, g.const("standardize.inv_scale", inv_scale), hint="pre.standardize")
    return h


def output_head(g: Graph, lm: Any, z: str) -> list[tuple[str, str, int, list]]:
    """Raw outputs -> the graph's outputs, as (graph output name, node output, element type, shape).

    Regression targets are predicted as the model outputs them; inverse target scaling,
    when checkpoints carry it, belongs here after the Flatten.
    """
    tp = g.TensorProto
    z2 = g.op("Flatten", z, hint="head.flatten", axis=1)              # (N, outputs)
    if lm.task != CLASSIFICATION:
        pre = getattr(lm, "preprocessor", None)
        if pre is not None and pre.target_scale is not None:
            # data layer: a standardized target back in its own units, z * scale + mean
            z2 = g.op("Mul", z2, g.const("head.target_scale", pre.target_scale), hint="head.unscale")
            z2 = g.op("Add", z2, g.const("head.target_mean", pre.target_mean), hint="head.target_units")
        return [(VALUES, z2, g.elem_type, ["batch", lm.n_outputs])]
    k = len(lm.classes)
    width = math.prod(lm.model.output_shape)
    output = getattr(lm.loss, "OUTPUT", "softmax")
    if output == "sigmoid":
        p = g.op("Sigmoid", z2, hint="head.sigmoid")
    else:
        p = g.op("Softmax", z2, hint="head.softmax", axis=-1)
    if width == 1:
        # binary with one logit: [1 - p, p]; the class is logit > 0 (not p > 0.5, which rounds)
        p = g.op("Concat", g.op("Sub", g.const("head.one", 1.0), p, hint="head.p0"), p, hint="head.p", axis=1)
        positive = g.op("Greater", g.squeeze(z2, [1], hint="head.logit"), g.const("head.zero", 0.0),
                        hint="head.positive")
        index = g.op("Cast", positive, hint="head.index", to=tp.INT64)
    else:
        index = g.op("ArgMax", z2, hint="head.index", axis=1, keepdims=0)
    labels = g.const("head.labels", np.array([str(c) for c in lm.classes], dtype=object), object)
    label = g.op("Gather", labels, index, hint="head.label", axis=0)
    return [(PROBABILITIES, p, g.elem_type, ["batch", k]),
            (LABEL_INDEX, index, tp.INT64, ["batch"]),
            (LABEL, label, tp.STRING, ["batch"])]


def metadata(lm: Any, inputs: list, dtype: np.dtype) -> dict[str, str]:
    """metadata_props: strings only (ONNX's rule), JSON for the structured ones."""
    from onnx import TensorProto
    shown = [{"name": i.name, "dtype": str(dtype) if i.type.tensor_type.elem_type != TensorProto.STRING
              else "string", "shape": [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]}
             for i in inputs]
    described = {"inputs": shown, "feature_names": lm.feature_names,
                 "reshaped_to": list(lm.input_shape) if _data_shape(lm) is not None else None,
                 "standardized_in_graph": lm.standardizer is not None}
    if len(inputs) == 1:
        described.update(shown[0])        # the single input's name, dtype and shape at the top, as before
    table = tabular.encoded_table(lm)
    if table is not None:
        described["table"] = tabular.input_metadata(lm)
    meta = {
        "nnctl_version": __version__,
        "task": lm.task,
        "input": json.dumps(described),
        "spec": json.dumps(lm.meta.get("config"), default=str),
        "checkpoint_epoch": str(lm.epoch),
    }
    if lm.feature_names is not None:
        meta["feature_names"] = json.dumps(lm.feature_names)
    if table is not None:
        meta["columns"] = json.dumps([c["name"] for c in table.columns])
    if lm.classes is not None:
        meta["classes"] = json.dumps(lm.classes)
    if lm.target_name:
        meta["target_name"] = lm.target_name
    return meta


def opset_to_use(opset: int | None) -> int:
    """--opset (default DEFAULT_OPSET), refused outside MIN_OPSET to the installed onnx's newest."""
    import onnx

    from nnctl.export.graph import DEFAULT_OPSET

    opset = DEFAULT_OPSET if opset is None else int(opset)
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ExportError(f"--opset must be between {MIN_OPSET} and {newest} (the installed onnx's newest), "
                          f"got {opset}")
    return opset


def build_onnx(lm: Any, dtype: Any = "float32", opset: int | None = None):
    """The ModelProto for `lm` (a LoadedModel) in `dtype`, checked by onnx.checker."""
    from onnx import helper

    import nnctl.export.layers  # noqa: F401  (registers the exporters)

    opset = opset_to_use(opset)
    dt = np.dtype(dtype)
    model = lm.model if lm.model.dtype == dt else lm.model.astype(dt)
    g = Graph(dt, opset)
    if tabular.encoded_table(lm) is not None:
        inputs, row = tabular.table_inputs(g, lm, OUTPUT_NAMES)
    else:
        inputs = [helper.make_tensor_value_info(INPUT_NAME, g.elem_type, ["batch", *input_shape_of(lm)])]
        g.reserve(INPUT_NAME)
        row = INPUT_NAME
    h = preprocess(g, lm, row)
    for i, layer in enumerate(model.layers):
        h = export_layer(g, layer, h, f"layers.{i}")
    outputs = output_head(g, lm, h)
    # graph outputs need their own names: an Identity per output keeps the node names free
    for name, node_out, _, _ in outputs:
        g.nodes.append(helper.make_node("Identity", [node_out], [name], name=g.name(f"{name}.node")))
    graph = helper.make_graph(
        g.nodes, "nnctl", inputs,
        [helper.make_tensor_value_info(name, et, dims) for name, _, et, dims in outputs],
        g.initializers)
    ops = [helper.make_opsetid("", opset)]
    if any(node.domain == tabular.ML_DOMAIN for node in g.nodes):
        ops.append(helper.make_opsetid(tabular.ML_DOMAIN, tabular.ML_OPSET))
    return checked_model(graph, ops, f"nnctl {lm.task} model exported from {lm.path.name}",
                         metadata(lm, inputs, dt))


def checked_model(graph: Any, ops: list[Any], doc: str, props: dict[str, str]) -> Any:
    """The ModelProto of `graph` with nnctl as producer, the lowest IR version its opsets allow
    and `props` as metadata, refused unless onnx.checker's full check passes."""
    import onnx
    from onnx import helper
    proto = helper.make_model(graph, opset_imports=ops, producer_name="nnctl", producer_version=__version__,
                              doc_string=doc)
    proto.ir_version = helper.find_min_ir_version_for(ops)
    helper.set_model_props(proto, props)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"the exported graph fails onnx.checker: {first}") from None
    return proto
