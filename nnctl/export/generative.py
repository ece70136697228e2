"""An autoencoder or VAE exported as two ONNX graphs, encoder.onnx and decoder.onnx.

    encoder.onnx: features (the raw rows, as `nnctl encode` reads them) -> [reshape] -> [0, 1]
                  scaling -> the encoder's layers -> the head -> `latent` (a VAE's posterior
                  mean) and, for a VAE, `log_variance`
    decoder.onnx: latent -> the decoder's layers -> the output layer -> [sigmoid, when the
                  loss applies one] -> the data's units -> [reshape] -> `samples`

Each graph is checked in onnxruntime against `nnctl encode` / `nnctl decode` on the run's rows
(the decoder on their codes) before either file is written.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from nnctl import __version__
from nnctl.export.graph import ExportError, Graph, export_layer, exporter
from nnctl.export.onnx_model import INPUT_NAME, checked_model, input_shape_of, opset_to_use, preprocess

FILES = ("encoder.onnx", "decoder.onnx")


# -- the layers inside one graph (evaluation semantics), as any model's layers are exported ----
@exporter("sampling")
def _sampling(g: Graph, layer: Any, x: str, prefix: str) -> str:
    # in evaluation z is the mean, the first half of (mean, log-variance)
    latent = layer.output_shape[0]
    return g.op("Slice", x, g.ints(f"{prefix}.starts", [0]), g.ints(f"{prefix}.ends", [latent]),
                g.ints(f"{prefix}.axes", [1]), hint=f"{prefix}.mean")


@exporter("autoencoder")
def _autoencoder(g: Graph, layer: Any, x: str, prefix: str) -> str:
    """[reconstruction, mean, log-variance] for a VAE (the reconstruction alone for an autoencoder)."""
    h = x
    for i, child in enumerate(layer.encoder):
        h = export_layer(g, child, h, f"{prefix}.encoder.{i}")
    stats = export_layer(g, layer.head, h, f"{prefix}.head")
    h = stats if layer.sampling is None else export_layer(g, layer.sampling, stats, f"{prefix}.sampling")
    for j, child in enumerate(layer.decoder):
        h = export_layer(g, child, h, f"{prefix}.decoder.{j}")
    recon = export_layer(g, layer.out, h, f"{prefix}.output")
    if layer.sampling is None:
        return recon
    return g.op("Concat", recon, stats, hint=f"{prefix}.concat", axis=1)


def _finish(g: Graph, inputs: list, outputs: list[tuple[str, str, list]], doc: str, props: dict[str, str]):
    """A checked ModelProto from the graph's nodes: named outputs via Identity nodes."""
    from onnx import helper
    for name, node_out, _ in outputs:
        g.nodes.append(helper.make_node("Identity", [node_out], [name], name=g.name(f"{name}.node")))
    graph = helper.make_graph(g.nodes, "nnctl", inputs,
                              [helper.make_tensor_value_info(n, g.elem_type, dims) for n, _, dims in outputs],
                              g.initializers)
    return checked_model(graph, [helper.make_opsetid("", g.opset)], doc, props)


def _graph(dt: np.dtype, opset: int) -> Graph:
    """A graph whose node outputs never take the names of the graphs' inputs and outputs."""
    g = Graph(dt, opset)
    for name in (INPUT_NAME, "latent", "log_variance", "samples"):
        g.name(name)
    return g


def build_graphs(lm: Any, dtype: Any = "float32", opset: int | None = None):
    """(encoder ModelProto, decoder ModelProto) for a LoadedModel of an autoencoder or VAE."""
    from onnx import helper

    import nnctl.export.layers  # noqa: F401  (registers the exporters)
    opset = opset_to_use(opset)
    dt = np.dtype(dtype)
    model = lm.model if lm.model.dtype == dt else lm.model.astype(dt)
    ae = model.layers[0]
    latent, variational = ae.latent, ae.variational
    props = {"nnctl_version": __version__, "task": lm.task, "latent": str(latent),
             "spec": json.dumps(lm.meta.get("config"), default=str)}

    g = _graph(dt, opset)
    shape = input_shape_of(lm)
    h = preprocess(g, lm, INPUT_NAME)
    for i, layer in enumerate(ae.encoder):
        h = export_layer(g, layer, h, f"layers.0.encoder.{i}")
    h = export_layer(g, ae.head, h, "layers.0.head")
    outputs = [("latent", h, ["batch", latent])]
    if variational:
        axes = g.ints("head.axes", [1])
        mean = g.op("Slice", h, g.ints("mean.starts", [0]), g.ints("mean.ends", [latent]), axes, hint="head.mean")
        logvar = g.op("Slice", h, g.ints("logvar.starts", [latent]), g.ints("logvar.ends", [2 * latent]), axes,
                      hint="head.log_variance")
        outputs = [("latent", mean, ["batch", latent]), ("log_variance", logvar, ["batch", latent])]
    encoder = _finish(g, [helper.make_tensor_value_info(INPUT_NAME, g.elem_type, ["batch", *shape])], outputs,
                      f"nnctl {lm.task} encoder exported from {lm.path.name}", props)

    g = _graph(dt, opset)
    h = "latent"
    for j, layer in enumerate(ae.decoder):
        h = export_layer(g, layer, h, f"layers.0.decoder.{j}")
    h = export_layer(g, ae.out, h, "layers.0.output")
    if getattr(lm.loss, "OUTPUT", "identity") == "sigmoid":   # binary_cross_entropy's sigmoid lives in the loss
        h = g.op("Sigmoid", h, hint="head.sigmoid")
    if lm.standardizer is not None:
        # back to the data's units, x = r * scale + mean, in float64 statistics cast like the engine does
        h = g.op("Mul", h, g.const("unscale.scale", lm.standardizer.scale.reshape(-1)), hint="head.scale")
        h = g.op("Add", h, g.const("unscale.mean", lm.standardizer.mean.reshape(-1)), hint="head.units")
    if len(lm.input_shape) > 1:
        h = g.reshape(h, [0, *lm.input_shape], hint="head.reshape")
    decoder = _finish(g, [helper.make_tensor_value_info("latent", g.elem_type, ["batch", latent])],
                      [("samples", h, ["batch", *lm.input_shape])],
                      f"nnctl {lm.task} decoder exported from {lm.path.name}", props)
    return encoder, decoder


def _run(sess: Any, path: Path, name: str, feed: dict[str, np.ndarray]) -> np.ndarray:
    try:
        return np.asarray(sess.run([name], feed)[0], dtype=np.float64)
    except Exception as err:  # onnxruntime raises its own exception types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"{path}: onnxruntime fails on the check data; nothing written: {first}") from None


def export_autoencoder(lm: Any, target: Path, checkpoint: Path, out: Path | None, dtype: str, opset: int | None,
                       check_data: str | None, tolerance: float, batch_size: int):
    """Write <out>/encoder.onnx and <out>/decoder.onnx (out: a folder; default the run's own)."""
    from nnctl.export.api import ExportResult, check_rows
    from nnctl.export.parity import Parity, compare, session
    from nnctl.runs.generative import decode, encode
    from nnctl.runs.store import atomic_write

    folder = Path(out) if out is not None else (Path(target) if Path(target).is_dir() else checkpoint.parent)
    if not folder.is_dir():
        raise ExportError(f"--out {folder}: an autoencoder exports two files (encoder.onnx, decoder.onnx) into a "
                          "folder, and this is not one")
    protos = build_graphs(lm, dtype, opset)
    blobs = [p.SerializeToString() for p in protos]
    paths = [folder / name for name in FILES]
    x, description = check_rows(lm, check_data)
    if len(x) == 0:
        raise ExportError(f"{description}: no rows to check the export on")
    flat_shape = (-1, *input_shape_of(lm))
    enc, dec = session(blobs[0], paths[0]), session(blobs[1], paths[1])
    dt = np.dtype(dtype)
    codes = encode(lm, x, batch_size).astype(np.float64)
    got_codes = _run(enc, paths[0], "latent", {INPUT_NAME: np.ascontiguousarray(np.reshape(x, flat_shape), dtype=dt)})
    first = compare(codes, None, got_codes, None, tolerance, paths[0])
    samples = decode(lm, codes, batch_size)
    got = _run(dec, paths[1], "samples", {"latent": np.ascontiguousarray(codes, dtype=dt)})
    second = compare(samples.reshape(len(samples), -1), None, got.reshape(len(got), -1), None, tolerance, paths[1])
    worst = max(first.max_abs_diff, second.max_abs_diff) if first.ok and second.ok else \
        (first.max_abs_diff if not first.ok else second.max_abs_diff)
    parity = Parity(rows=len(x), max_abs_diff=worst, label_agreement=None, label_mismatches=0,
                    tolerance=float(tolerance))
    for path, blob in zip(paths, blobs):
        try:
            atomic_write(path, lambda f, b=blob: f.write(b))
        except OSError as err:
            raise ExportError(f"--out {path}: cannot write: {err.strerror or err}") from None
    return ExportResult(path=folder / "{encoder,decoder}.onnx", checkpoint=checkpoint, format="onnx",
                        dtype=str(dt), opset=protos[0].opset_import[0].version, size_bytes=sum(map(len, blobs)),
                        check_data=description, parity=parity)
