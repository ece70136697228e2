"""One ONNX exporter per engine layer type, in evaluation semantics, and one per activation.

Each exporter mirrors its layer's `forward(x, training=False)` op for op, in the same
order where rounding could differ (BatchNorm subtracts the running mean and then scales,
as the engine does, rather than folding both into one affine map), so a float32 graph
agrees with nnctl to float32 rounding. Shapes are the engine's: batch first, conv and
pooling channels first (N, C, *S), recurrent and attention layers (N, T, F).

Parameters become initializers named by their model names (`layers.0.W`), so a graph
viewer shows the same names as `nnctl show` and the checkpoint.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from nnctl.export.graph import ExportError, Graph, export_layer, exporter

# -- activations ----------------------------------------------------------------------------
ActivationExporter = Callable[[Graph, Any, str, str], str]
ACTIVATION_EXPORTERS: dict[str, ActivationExporter] = {}


def _activation(*names: str):
    def deco(fn: ActivationExporter) -> ActivationExporter:
        for name in names:
            ACTIVATION_EXPORTERS[name] = fn
        return fn
    return deco


def export_activation(g: Graph, act: Any, x: str, hint: str) -> str:
    fn = ACTIVATION_EXPORTERS.get(act.NAME)
    if fn is None:
        raise ExportError(f"{hint}: activation {act.NAME} cannot be exported to ONNX yet")
    return fn(g, act, x, hint)


@_activation("identity")
def _identity(g, act, x, hint):
    return x


@_activation("relu")
def _relu(g, act, x, hint):
    return g.op("Relu", x, hint=f"{hint}.relu")


@_activation("leaky_relu")
def _leaky_relu(g, act, x, hint):
    return g.op("LeakyRelu", x, hint=f"{hint}.leaky_relu", alpha=float(act.hparams["alpha"]))


@_activation("elu")
def _elu(g, act, x, hint):
    return g.op("Elu", x, hint=f"{hint}.elu", alpha=float(act.hparams["alpha"]))


@_activation("sigmoid")
def _sigmoid(g, act, x, hint):
    return g.op("Sigmoid", x, hint=f"{hint}.sigmoid")


@_activation("tanh")
def _tanh(g, act, x, hint):
    return g.op("Tanh", x, hint=f"{hint}.tanh")


@_activation("swish")
def _swish(g, act, x, hint):
    return g.op("Mul", x, g.op("Sigmoid", x, hint=f"{hint}.sigmoid"), hint=f"{hint}.swish")


@_activation("gelu")
def _gelu(g, act, x, hint):
    # Built from Erf/Tanh rather than the Gelu op, which only exists from opset 20.
    if act.hparams["approximate"] == "tanh":
        cube = g.op("Mul", x, g.op("Mul", x, x, hint=f"{hint}.x2"), hint=f"{hint}.x3")
        inner = g.op("Add", x, g.op("Mul", cube, g.const(f"{hint}.c", 0.044715), hint=f"{hint}.cx3"),
                     hint=f"{hint}.inner")
        u = g.op("Mul", inner, g.const(f"{hint}.sqrt_2_over_pi", math.sqrt(2.0 / math.pi)), hint=f"{hint}.u")
        t = g.op("Tanh", u, hint=f"{hint}.tanh")
    else:
        t = g.op("Erf", g.op("Mul", x, g.const(f"{hint}.sqrt1_2", 1.0 / math.sqrt(2.0)), hint=f"{hint}.u"),
                 hint=f"{hint}.erf")
    half = g.op("Mul", g.op("Add", t, g.const(f"{hint}.one", 1.0), hint=f"{hint}.1p"),
                g.const(f"{hint}.half", 0.5), hint=f"{hint}.cdf")
    return g.op("Mul", x, half, hint=f"{hint}.gelu")


@_activation("softplus")
def _softplus(g, act, x, hint):
    # max(x, 0) + log(1 + exp(-|x|)), the engine's overflow-free form (softplus(1000) = 1000)
    tail = g.op("Exp", g.op("Neg", g.op("Abs", x, hint=f"{hint}.abs"), hint=f"{hint}.neg"), hint=f"{hint}.exp")
    tail = g.op("Log", g.op("Add", tail, g.const(f"{hint}.one", 1.0), hint=f"{hint}.1p"), hint=f"{hint}.log")
    return g.op("Add", g.op("Relu", x, hint=f"{hint}.relu"), tail, hint=f"{hint}.softplus")


@_activation("softmax")
def _softmax(g, act, x, hint):
    return g.op("Softmax", x, hint=f"{hint}.softmax", axis=-1)


def _register_activation_layers() -> None:
    # Every activation is also a layer of the same name (engine/layers.py does the same).
    from nnctl.engine.activations import ACTIVATIONS
    for name in ACTIVATIONS.entries:
        if name in ACTIVATION_EXPORTERS:
            exporter(name)(lambda g, layer, x, prefix: export_activation(g, layer.act, x, prefix))


_register_activation_layers()


# -- core layers ----------------------------------------------------------------------------
@exporter("dense")
def _dense(g: Graph, layer, x: str, prefix: str) -> str:
    # MatMul broadcasts over leading axes, as the engine's reshape to (-1, in) does.
    y = g.op("MatMul", x, g.const(f"{prefix}.W", layer.params["W"]), hint=f"{prefix}.matmul")
    if "b" in layer.params:
        y = g.op("Add", y, g.const(f"{prefix}.b", layer.params["b"]), hint=f"{prefix}.add_b")
    return export_activation(g, layer.act, y, prefix)


@exporter("batch_norm")
def _batch_norm(g, layer, x, prefix):
    # Running statistics, computed like the engine's evaluation branch:
    # (x - running_mean) * (1 / sqrt(running_var + eps)) * gamma + beta.
    shape = layer._bshape[1:]
    mean = layer.buffers["running_mean"].reshape(shape)
    inv = (1.0 / np.sqrt(layer.buffers["running_var"].reshape(shape) + layer.hparams["eps"])).astype(layer.dtype)
    y = g.op("Sub", x, g.const(f"{prefix}.running_mean", mean), hint=f"{prefix}.center")
    y = g.op("Mul", y, g.const(f"{prefix}.inv_std", inv), hint=f"{prefix}.normalize")
    y = g.op("Mul", y, g.const(f"{prefix}.gamma", layer.params["gamma"].reshape(shape)), hint=f"{prefix}.scale")
    return g.op("Add", y, g.const(f"{prefix}.beta", layer.params["beta"].reshape(shape)), hint=f"{prefix}.shift")


@exporter("layer_norm")
def _layer_norm(g, layer, x, prefix):
    # Primitives rather than LayerNormalization (opset 17+), in the engine's order.
    mu = g.reduce_mean(x, [-1], True, hint=f"{prefix}.mean")
    d = g.op("Sub", x, mu, hint=f"{prefix}.center")
    var = g.reduce_mean(g.op("Mul", d, d, hint=f"{prefix}.sq"), [-1], True, hint=f"{prefix}.var")
    std = g.op("Sqrt", g.op("Add", var, g.const(f"{prefix}.eps", layer.hparams["eps"]), hint=f"{prefix}.var_eps"),
               hint=f"{prefix}.std")
    inv = g.op("Reciprocal", std, hint=f"{prefix}.inv_std")
    y = g.op("Mul", d, inv, hint=f"{prefix}.normalize")
    y = g.op("Mul", y, g.const(f"{prefix}.gamma", layer.params["gamma"]), hint=f"{prefix}.scale")
    return g.op("Add", y, g.const(f"{prefix}.beta", layer.params["beta"]), hint=f"{prefix}.shift")


@exporter("dropout")
def _dropout(g, layer, x, prefix):
    return x  # the identity at evaluation time


@exporter("residual")
def _residual(g, layer, x, prefix):
    h = x
    for local, child in layer.children():
        h = export_layer(g, child, h, f"{prefix}.{local}")
    return g.op("Add", x, h, hint=f"{prefix}.add")


# -- convolution, pooling, reshaping ----------------------------------------------------------
def _onnx_pads(pads) -> list[int]:
    """The engine's [(before, after)] per axis -> ONNX's [x1_begin, x2_begin, ..., x1_end, x2_end]."""
    return [int(lo) for lo, _ in pads] + [int(hi) for _, hi in pads]


@exporter("conv1d", "conv2d")
def _conv(g, layer, x, prefix):
    inputs = [x, g.const(f"{prefix}.W", layer.params["W"])]
    if "b" in layer.params:
        inputs.append(g.const(f"{prefix}.b", layer.params["b"]))
    y = g.op("Conv", *inputs, hint=f"{prefix}.conv", kernel_shape=list(layer.kernel), strides=list(layer.stride),
             dilations=list(layer.dilation), pads=_onnx_pads(layer.pads))
    return export_activation(g, layer.act, y, prefix)


@exporter("maxpool1d", "maxpool2d")
def _max_pool(g, layer, x, prefix):
    # ONNX pads a max pool with -inf, as the engine does: a pad never wins.
    return g.op("MaxPool", x, hint=f"{prefix}.maxpool", kernel_shape=list(layer.size), strides=list(layer.stride),
                pads=_onnx_pads(layer.pads))


@exporter("avgpool1d", "avgpool2d")
def _avg_pool(g, layer, x, prefix):
    # count_include_pad=0: border windows average only their real inputs, as in the engine (Keras).
    return g.op("AveragePool", x, hint=f"{prefix}.avgpool", kernel_shape=list(layer.size),
                strides=list(layer.stride), pads=_onnx_pads(layer.pads), count_include_pad=0)


@exporter("global_avg_pool")
def _global_avg_pool(g, layer, x, prefix):
    return g.reduce_mean(x, list(layer.axes), False, hint=f"{prefix}.global_avg_pool")


@exporter("flatten")
def _flatten(g, layer, x, prefix):
    return g.op("Flatten", x, hint=f"{prefix}.flatten", axis=1)


@exporter("reshape")
def _reshape(g, layer, x, prefix):
    return g.reshape(x, [0, *layer.output_shape], hint=f"{prefix}.reshape")


# -- recurrent --------------------------------------------------------------------------------
# The activations ONNX's RNN/GRU/LSTM ops take by name that ONNX Runtime implements and that
# match the engine's; any other activation is refused rather than approximated.
_RNN_ACTIVATIONS = {"tanh": "Tanh", "sigmoid": "Sigmoid", "relu": "Relu"}


def _rnn_activation(layer, act, what: str, prefix: str) -> str:
    name = _RNN_ACTIVATIONS.get(act.NAME)
    if name is None:
        raise ExportError(f"{prefix} {layer.NAME}: {what} {act.NAME} has no ONNX {layer.NAME} equivalent "
                          f"(exportable: {', '.join(_RNN_ACTIVATIONS)})")
    return name


def _gates(m: np.ndarray, order: list[int], gates: int) -> np.ndarray:
    """(rows, G*u) engine weight -> (G*u, rows) ONNX weight with its gate blocks in `order`."""
    u = m.shape[-1] // gates
    blocks = [m[..., k * u:(k + 1) * u] for k in order]
    return np.concatenate(blocks, axis=-1).T


@exporter("simple_rnn", "gru", "lstm")
def _recurrent(g, layer, x, prefix):
    """ONNX's RNN/GRU/LSTM ops, one direction, zero initial state, on (T, N, F).

    Gate layouts: the engine keeps Keras' blocks, GRU [z, r, n] and LSTM [i, f, g, o]; ONNX
    wants GRU [z, r, h] (the same) and LSTM [i, o, f, c]. The engine's GRU resets after the
    recurrent product, which is ONNX's linear_before_reset=1; its b[0] and b[1] are ONNX's
    Wb and Rb. The other layers have one bias, given as Wb with Rb = 0.
    """
    u = layer.hparams["units"]
    kind = layer.NAME
    W, U, b = layer.params["W"], layer.params["U"], layer.params["b"]
    if kind == "simple_rnn":
        op, gates, order = "RNN", 1, [0]
        acts = [_rnn_activation(layer, layer.act, "activation", prefix)]
        bias = np.concatenate([b, np.zeros_like(b)])
        attrs: dict[str, Any] = {}
    elif kind == "gru":
        op, gates, order = "GRU", 3, [0, 1, 2]
        acts = [_rnn_activation(layer, layer.ract, "recurrent_activation", prefix),
                _rnn_activation(layer, layer.act, "activation", prefix)]
        bias = np.concatenate([b[0], b[1]])
        attrs = {"linear_before_reset": 1}
    else:
        op, gates, order = "LSTM", 4, [0, 3, 1, 2]
        g_act = _rnn_activation(layer, layer.act, "activation", prefix)
        acts = [_rnn_activation(layer, layer.ract, "recurrent_activation", prefix), g_act, g_act]
        bias = np.concatenate([_gates(b[None, :], order, 4)[:, 0], np.zeros_like(b)])
        attrs = {}
    w = g.const(f"{prefix}.W", _gates(W, order, gates)[None])
    r = g.const(f"{prefix}.U", _gates(U, order, gates)[None])
    bb = g.const(f"{prefix}.b", bias[None])
    xs = g.op("Transpose", x, hint=f"{prefix}.time_major", perm=[1, 0, 2])
    outs = g.op(op, xs, w, r, bb, hint=f"{prefix}.{kind}", outputs=2, hidden_size=u, activations=acts, **attrs)
    if layer.hparams["return_sequences"]:
        y = g.squeeze(outs[0], [1], hint=f"{prefix}.seq")                     # (T, N, u)
        return g.op("Transpose", y, hint=f"{prefix}.batch_major", perm=[1, 0, 2])
    return g.squeeze(outs[1], [0], hint=f"{prefix}.last")                      # (N, u)


# -- embeddings, attention, transformers --------------------------------------------------------
@exporter("embedding")
def _embedding(g, layer, x, prefix):
    # The ids arrive as floats holding integers, as in the engine; Cast truncates them. The
    # engine rejects non-integer and out-of-range ids; ONNX Runtime's Gather rejects
    # out-of-range ones.
    ids = g.op("Cast", g.reshape(x, [0, -1], hint=f"{prefix}.ids2d"), hint=f"{prefix}.ids", to=g.TensorProto.INT64)
    return g.op("Gather", g.const(f"{prefix}.W", layer.params["W"]), ids, hint=f"{prefix}.gather", axis=0)


@exporter("sinusoidal_encoding")
def _sinusoidal(g, layer, x, prefix):
    return g.op("Add", x, g.const(f"{prefix}.pe", layer.pe), hint=f"{prefix}.add_pe")


@exporter("positional_embedding")
def _positional(g, layer, x, prefix):
    t = layer.input_shape[0]
    return g.op("Add", x, g.const(f"{prefix}.P", layer.params["P"][:t]), hint=f"{prefix}.add_p")


@exporter("multi_head_attention")
def _attention(g, layer, x, prefix):
    """Scaled dot-product self-attention per head, with the causal mask as a Where on the scores."""
    h, dk = layer.hparams["heads"], layer.dk

    def heads(name: str, perm: list[int]) -> str:
        proj = export_layer(g, getattr(layer, name), x, f"{prefix}.{name}")
        split = g.reshape(proj, [0, 0, h, dk], hint=f"{prefix}.{name}.split")
        return g.op("Transpose", split, hint=f"{prefix}.{name}.heads", perm=perm)

    q = heads("query", [0, 2, 1, 3])       # (N, H, T, dk)
    kt = heads("key", [0, 2, 3, 1])        # (N, H, dk, T)
    v = heads("value", [0, 2, 1, 3])
    s = g.op("MatMul", q, kt, hint=f"{prefix}.scores")
    s = g.op("Mul", s, g.const(f"{prefix}.inv_sqrt_dk", 1.0 / math.sqrt(dk)), hint=f"{prefix}.scaled")
    if layer.mask is not None:
        s = g.op("Where", g.const(f"{prefix}.causal_mask", layer.mask, np.bool_),
                 g.const(f"{prefix}.neg_inf", -np.inf), s, hint=f"{prefix}.masked")
    a = g.op("Softmax", s, hint=f"{prefix}.weights", axis=-1)
    o = g.op("MatMul", a, v, hint=f"{prefix}.attend")
    o = g.op("Transpose", o, hint=f"{prefix}.merge", perm=[0, 2, 1, 3])
    o = g.reshape(o, [0, 0, h * dk], hint=f"{prefix}.concat")
    return export_layer(g, layer.output, o, f"{prefix}.output")


@exporter("transformer_block")
def _transformer_block(g, layer, x, prefix):
    # h = x + drop1(attn(ln1(x))), y = h + drop2(mlp2(mlp1(ln2(h)))), as the engine's forward
    sub = dict(layer.children())

    def run(names: list[str], h: str) -> str:
        for name in names:
            h = export_layer(g, sub[name], h, f"{prefix}.{name}")
        return h

    hid = g.op("Add", x, run(["ln1", "attn", "drop1"], x), hint=f"{prefix}.residual1")
    return g.op("Add", hid, run(["ln2", "mlp1", "mlp2", "drop2"], hid), hint=f"{prefix}.residual2")


@exporter("transformer_encoder")
def _transformer_encoder(g, layer, x, prefix):
    h = x
    for local, child in layer.children():
        h = export_layer(g, child, h, f"{prefix}.{local}")
    return h


# the autoencoder and sampling layers' exporters live beside the two-graph export
from nnctl.export import generative as _generative  # noqa: E402,F401
