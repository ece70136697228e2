"""`nnctl export`: every layer type in onnxruntime equals nnctl, end to end in a process without nnctl, the parity check can fail."""
from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

onnx = pytest.importorskip("onnx", reason="the export extra is not installed: pip install -e '.[export]'")
ort = pytest.importorskip("onnxruntime", reason="the export extra is not installed: pip install -e '.[export]'")

from nnctl.cli import app  # noqa: E402
from nnctl.runs.model import LoadedModel  # noqa: E402
from nnctl.data import Preprocessor, Standardizer, TableEncoder  # noqa: E402
from nnctl.engine.base import LAYERS  # noqa: E402
from nnctl.engine.losses import LOSSES  # noqa: E402
from nnctl.engine.model import Sequential  # noqa: E402
from nnctl.export import layers as export_layers  # noqa: E402  (fills EXPORTERS)
from nnctl.export.graph import EXPORTERS, ExportError  # noqa: E402
from nnctl.export.onnx_model import build_onnx  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
IRIS_CSV = ROOT / "datasets" / "iris.csv"
runner = CliRunner()


# -- every layer type: onnxruntime == nnctl's forward ------------------------------------------
def _floats(shape):
    return lambda rng, n: rng.normal(0.0, 1.5, (n, *shape))


def _ids(shape, vocab):
    return lambda rng, n: rng.integers(0, vocab, (n, *shape)).astype(np.float64)


# (case id, per-sample input shape, layer specs, input generator). Shapes are odd where that
# makes 'same' padding uneven (the odd pad element at the end) and pooling windows overhang.
CASES = [
    ("dense", (5,), [{"type": "dense", "units": 4, "activation": "tanh"}], _floats((5,))),
    ("dense-seq-nobias", (3, 5), [{"type": "dense", "units": 4, "bias": False, "activation": "relu"}],
     _floats((3, 5))),
    ("identity", (6,), [{"type": "identity"}], _floats((6,))),
    ("relu", (6,), [{"type": "relu"}], _floats((6,))),
    ("leaky_relu", (6,), [{"type": "leaky_relu", "alpha": 0.2}], _floats((6,))),
    ("elu", (6,), [{"type": "elu", "alpha": 0.7}], _floats((6,))),
    ("sigmoid", (6,), [{"type": "sigmoid"}], _floats((6,))),
    ("tanh", (6,), [{"type": "tanh"}], _floats((6,))),
    ("swish", (6,), [{"type": "swish"}], _floats((6,))),
    ("gelu", (6,), [{"type": "gelu"}], _floats((6,))),
    ("gelu-tanh", (6,), [{"type": "gelu", "approximate": "tanh"}], _floats((6,))),
    ("softplus", (6,), [{"type": "softplus"}], lambda rng, n: rng.normal(0, 30.0, (n, 6))),
    ("softmax", (6,), [{"type": "softmax"}], _floats((6,))),
    ("batch_norm", (6,), [{"type": "batch_norm"}], _floats((6,))),
    ("batch_norm-channels-first", (3, 4, 5), [{"type": "batch_norm", "axis": 1, "eps": 1e-3}], _floats((3, 4, 5))),
    ("layer_norm", (4, 6), [{"type": "layer_norm"}], _floats((4, 6))),
    ("dropout", (6,), [{"type": "dropout", "rate": 0.5}], _floats((6,))),
    ("residual", (6,), [{"type": "residual", "layers": [{"type": "dense", "units": 6, "activation": "relu"},
                                                        {"type": "dense", "units": 6}]}], _floats((6,))),
    ("conv1d-same-stride2", (2, 9), [{"type": "conv1d", "filters": 3, "kernel_size": 4, "stride": 2,
                                      "padding": "same", "activation": "relu"}], _floats((2, 9))),
    ("conv1d-dilated", (2, 11), [{"type": "conv1d", "filters": 3, "kernel_size": 3, "dilation": 2,
                                  "padding": 1, "bias": False}], _floats((2, 11))),
    ("conv2d-same-stride2", (2, 7, 6), [{"type": "conv2d", "filters": 3, "kernel_size": [3, 2], "stride": 2,
                                         "padding": "same", "activation": "elu"}], _floats((2, 7, 6))),
    ("conv2d-dilated", (1, 9, 9), [{"type": "conv2d", "filters": 2, "kernel_size": 3, "dilation": [2, 1],
                                    "padding": "same"}], _floats((1, 9, 9))),
    ("maxpool1d", (2, 9), [{"type": "maxpool1d", "size": 3, "stride": 2, "padding": "same"}], _floats((2, 9))),
    ("maxpool2d", (2, 7, 7), [{"type": "maxpool2d", "size": 2, "padding": "same"}],
     lambda rng, n: -np.abs(rng.normal(0, 1, (n, 2, 7, 7)))),   # all negative: a zero pad would win
    ("avgpool1d", (2, 9), [{"type": "avgpool1d", "size": 2, "padding": "same"}], _floats((2, 9))),
    ("avgpool2d", (2, 7, 5), [{"type": "avgpool2d", "size": 3, "stride": 2, "padding": "same"}],
     _floats((2, 7, 5))),
    ("global_avg_pool", (3, 4, 5), [{"type": "global_avg_pool"}], _floats((3, 4, 5))),
    ("global_avg_pool-channels-last", (5, 3), [{"type": "global_avg_pool", "data_format": "channels_last"}],
     _floats((5, 3))),
    ("flatten", (2, 3, 4), [{"type": "flatten"}], _floats((2, 3, 4))),
    ("reshape", (12,), [{"type": "reshape", "shape": [3, -1]}], _floats((12,))),
    ("embedding", (7,), [{"type": "embedding", "vocab_size": 11, "dim": 4}], _ids((7,), 11)),
    ("embedding-3d-ids", (7, 1), [{"type": "embedding", "vocab_size": 5, "dim": 3}], _ids((7, 1), 5)),
    ("sinusoidal_encoding", (5, 6), [{"type": "sinusoidal_encoding"}], _floats((5, 6))),
    ("positional_embedding", (5, 6), [{"type": "positional_embedding", "max_len": 9}], _floats((5, 6))),
    ("simple_rnn", (6, 3), [{"type": "simple_rnn", "units": 4}], _floats((6, 3))),
    ("simple_rnn-relu-seq", (6, 3), [{"type": "simple_rnn", "units": 4, "activation": "relu",
                                      "return_sequences": True}], _floats((6, 3))),
    ("gru", (6, 3), [{"type": "gru", "units": 4}], _floats((6, 3))),
    ("gru-seq", (7, 2), [{"type": "gru", "units": 5, "return_sequences": True}], _floats((7, 2))),
    ("lstm", (6, 3), [{"type": "lstm", "units": 4}], _floats((6, 3))),
    ("lstm-seq", (7, 2), [{"type": "lstm", "units": 5, "return_sequences": True}], _floats((7, 2))),
    ("multi_head_attention", (5, 8), [{"type": "multi_head_attention", "heads": 2}], _floats((5, 8))),
    ("multi_head_attention-causal", (6, 8), [{"type": "multi_head_attention", "heads": 4, "key_dim": 3,
                                              "causal": True, "bias": False}], _floats((6, 8))),
    ("transformer_block", (5, 8), [{"type": "transformer_block", "heads": 2, "mlp_units": 12, "causal": True,
                                    "dropout": 0.1}], _floats((5, 8))),
    ("transformer_encoder", (5,), [{"type": "embedding", "vocab_size": 9, "dim": 8},
                                     {"type": "sinusoidal_encoding"},
                                     {"type": "transformer_encoder", "num_layers": 2, "heads": 2, "mlp_units": 16,
                                      "activation": "relu"},
                                     {"type": "global_avg_pool", "data_format": "channels_last"}], _ids((5,), 9)),
]


def loaded(specs, input_shape, dtype="float32", seed=0, task="regression", loss="mse", classes=None,
           standardizer=None, config=None) -> LoadedModel:
    """A LoadedModel with random weights (biases and norm statistics included), no checkpoint needed."""
    rng = np.random.default_rng(seed)
    model = Sequential.from_config(specs, input_shape, rng, dtype)
    for name, arr in {**model.named_parameters(), **model.named_buffers()}.items():
        if name.endswith("running_var"):
            arr[...] = rng.uniform(0.3, 2.0, arr.shape)
        else:
            arr[...] += rng.normal(0.0, 0.3, arr.shape)
    n_out = math.prod(model.output_shape)
    return LoadedModel(path=Path("test.npz"), meta={"config": config or {}, "epoch": 0}, model=model,
                       loss=LOSSES.get(loss)(), standardizer=standardizer, dtype=np.dtype(dtype), task=task,
                       classes=classes, feature_names=None, target_name=None,
                       n_outputs=len(classes) if classes else n_out, input_shape=tuple(input_shape))


def run_onnx(proto, feeds):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def test_every_registered_layer_type_has_a_case():
    covered = {LAYERS.canonical(s["type"]) for _, _, specs, _ in CASES for s in specs}
    assert covered == set(LAYERS.entries), sorted(set(LAYERS.entries) - covered)
    assert set(LAYERS.entries) <= set(EXPORTERS)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_layer_matches_nnctl_forward(case):
    _, shape, specs, make = case
    lm = loaded(specs, shape)
    x = make(np.random.default_rng(1), 9)
    want = lm.model.predict(x.astype(np.float32)).reshape(9, -1)
    (got,) = run_onnx(build_onnx(lm), {"features": x.astype(np.float32)})
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * max(1.0, float(np.abs(want).max())))


def test_float64_graph_matches_float64_model():
    # ONNX Runtime's CPU provider has float64 kernels for these (not for Conv, Erf or GRU, say)
    specs = [{"type": "dense", "units": 4, "activation": "tanh"}, {"type": "layer_norm"}, {"type": "flatten"},
             {"type": "dense", "units": 3, "activation": {"name": "gelu", "approximate": "tanh"}}]
    lm = loaded(specs, (5, 3), dtype="float64")
    x = np.random.default_rng(2).normal(size=(6, 5, 3))
    proto = build_onnx(lm, "float64")
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    (got,) = run_onnx(proto, {"features": x})
    np.testing.assert_allclose(got, lm.model.predict(x), rtol=0, atol=1e-12)


def test_graph_shape_metadata_and_batch_dimension():
    lm = loaded([{"type": "dense", "units": 3}], (4,), task="classification", loss="cross_entropy",
                classes=["a", "b", "c"])
    lm.feature_names = ["w", "x", "y", "z"]
    proto = build_onnx(lm, opset=18)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 4
    assert [o.name for o in proto.graph.output] == ["probabilities", "label_index", "label"]
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["classes"]) == ["a", "b", "c"]
    assert json.loads(props["feature_names"]) == ["w", "x", "y", "z"]
    assert props["task"] == "classification" and "nnctl_version" in props
    assert proto.opset_import[0].version == 18
    x = np.random.default_rng(3).normal(size=(1, 4)).astype(np.float32)   # a batch of 1 works too
    p, idx, label = run_onnx(proto, {"features": x})
    z = lm.model.predict(x)
    np.testing.assert_allclose(p, np.exp(z) / np.exp(z).sum(1, keepdims=True), atol=1e-6)
    assert idx.tolist() == [int(z.argmax())] and label.tolist() == [["a", "b", "c"][int(z.argmax())]]


def test_binary_single_logit_head_uses_nnctls_rule():
    lm = loaded([{"type": "dense", "units": 1}], (3,), task="classification", loss="binary_cross_entropy",
                classes=["no", "yes"])
    x = np.random.default_rng(4).normal(size=(40, 3)).astype(np.float32)
    p, idx, label = run_onnx(build_onnx(lm), {"features": x})
    z = lm.model.predict(x)[:, 0]
    sig = 1 / (1 + np.exp(-z.astype(np.float64)))
    np.testing.assert_allclose(p, np.stack([1 - sig, sig], 1), atol=1e-6)
    assert idx.tolist() == (z > 0).astype(int).tolist()
    assert label.tolist() == [["no", "yes"][i] for i in (z > 0).astype(int)]


def test_preprocessing_reshape_and_standardization_are_in_the_graph():
    mean = np.arange(8, dtype=np.float64).reshape(2, 4)
    scale = np.linspace(0.5, 2.0, 8).reshape(2, 4)
    lm = loaded([{"type": "conv1d", "filters": 2, "kernel_size": 2}, {"type": "flatten"}], (2, 4),
                standardizer=Standardizer.from_arrays(mean, scale), config={"data": {"shape": [2, 4]}})
    raw = np.random.default_rng(5).normal(3.0, 2.0, (7, 8)).astype(np.float32)     # flat rows, as in a CSV
    proto = build_onnx(lm)
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim][1:] == [8]
    (got,) = run_onnx(proto, {"features": raw})
    xb = raw.reshape(7, 2, 4)
    want = lm.model.predict((xb - mean.astype(np.float32)) * (1 / scale).astype(np.float32))
    np.testing.assert_allclose(got, want, atol=1e-5)


# -- refusals: never a different graph ----------------------------------------------------------
def test_a_layer_without_exporter_is_an_error_naming_it(monkeypatch):
    monkeypatch.delitem(EXPORTERS, "layer_norm")
    lm = loaded([{"type": "dense", "units": 4}, {"type": "residual", "layers": [{"type": "layer_norm"}]}], (3,))
    with pytest.raises(ExportError) as err:
        build_onnx(lm)
    assert str(err.value).startswith("layers.1.layers.0 layer_norm: this layer type cannot be exported to ONNX")


def test_recurrent_activation_without_onnx_equivalent_is_refused():
    lm = loaded([{"type": "lstm", "units": 3, "activation": "gelu"}], (4, 2))
    with pytest.raises(ExportError, match=r"^layers\.0 lstm: activation gelu has no ONNX lstm equivalent"):
        build_onnx(lm)


def test_opset_out_of_range_is_refused():
    lm = loaded([{"type": "dense", "units": 2}], (3,))
    with pytest.raises(ExportError, match=r"^--opset must be between 13 and \d+ .*got 11$"):
        build_onnx(lm, opset=11)


# -- end to end through the CLI ---------------------------------------------------------------
def _train(tmp: Path, text: str) -> Path:
    spec = tmp / "spec.yaml"
    spec.write_text(textwrap.dedent(text))
    res = runner.invoke(app, ["train", str(spec), "--runs-dir", str(tmp / "runs"), "--quiet"])
    assert res.exit_code == 0, res.output
    (run,) = (tmp / "runs").iterdir()
    return run


# A process that has only onnxruntime and numpy: it must reproduce `nnctl predict`'s labels.
STANDALONE = """
import sys, numpy as np, onnxruntime as ort
model, data, cols = sys.argv[1], sys.argv[2], sys.argv[3]
if data.endswith(".npy"):
    x = np.load(data).astype(np.float32)
else:
    x = np.loadtxt(data, delimiter=",", skiprows=1, usecols=[int(c) for c in cols.split(",")], dtype=np.float32)
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
labels = sess.run(["label"], {"features": x})[0]
assert not [m for m in sys.modules if m.startswith("nnctl")]
print("\\n".join(labels))
"""


def _standalone_labels(model: Path, data: Path, cols: str = "") -> list[str]:
    out = subprocess.run([sys.executable, "-c", STANDALONE, str(model), str(data), cols or "0"],
                         capture_output=True, text=True, cwd="/", timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def _predict_labels(run: Path, data: Path) -> list[str]:
    res = runner.invoke(app, ["predict", str(run), str(data)])
    assert res.exit_code == 0, res.output
    return [line.split(",")[0] for line in res.stdout.splitlines()[1:]]


@pytest.fixture(scope="module")
def iris_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("iris")
    return _train(tmp, f"""\
        name: iris-export
        seed: 3
        data: {{dataset: {IRIS_CSV}, target: species, val_split: 0.2, test_split: 0.2}}
        model:
          layers:
            - dense: {{units: 12, activation: identity}}
            - batch_norm: {{}}
            - relu
            - dropout: 0.1
        optimizer: {{name: adam, lr: 0.03}}
        training: {{epochs: 8, batch_size: 16}}
        """)


def test_iris_csv_export_matches_predict_in_a_process_without_nnctl(iris_run, tmp_path):
    out = tmp_path / "iris.onnx"
    res = runner.invoke(app, ["export", str(iris_run), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert f"parity on 30 rows of the test split of {IRIS_CSV}: max abs diff " in res.stdout
    assert "labels agree 100.00% (0 differ)" in res.stdout
    labels = _standalone_labels(out, IRIS_CSV, "0,1,2,3")
    assert labels == _predict_labels(iris_run, IRIS_CSV)
    assert set(labels) <= {"setosa", "versicolor", "virginica"} and len(labels) == 150
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["feature_names"]) == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    assert json.loads(props["spec"])["name"] == "iris-export"


def test_npy_images_export_matches_predict(tmp_path):
    run = _train(tmp_path, """\
        name: cnn-export
        seed: 0
        data: {dataset: digits, shape: [1, 8, 8], standardize: global, val_split: 0.1, test_split: 0.2}
        model:
          layers:
            - conv2d: {filters: 4, kernel_size: 3, padding: same, activation: relu}
            - maxpool2d: {size: 2}
            - flatten
        optimizer: {name: adam, lr: 0.01}
        training: {epochs: 1, batch_size: 64}
        """)
    res = runner.invoke(app, ["export", str(run)])
    assert res.exit_code == 0, res.output
    model = run / "model.onnx"
    rows = np.loadtxt(ROOT / "datasets" / "digits.csv", delimiter=",", skiprows=1, max_rows=120)[:, :64]
    npy = tmp_path / "digits.npy"
    np.save(npy, rows)
    labels = _standalone_labels(model, npy)
    assert labels == _predict_labels(run, npy) and len(labels) == 120
    res = runner.invoke(app, ["export", str(run), "--check-data", str(npy), "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 0, res.output
    assert f"parity on 120 rows of {npy}: max abs diff " in res.stdout and "labels agree 100.00%" in res.stdout
    # onnxruntime has no float64 Conv: refused before anything is written
    res = runner.invoke(app, ["export", str(run), "--dtype", "float64", "--out", str(tmp_path / "m64.onnx")])
    assert res.exit_code == 1
    assert "onnxruntime cannot load the exported graph, so it cannot be checked; nothing written" in res.output
    assert not (tmp_path / "m64.onnx").exists()


def test_corrupted_weight_fails_the_parity_check_and_keeps_the_file(iris_run, tmp_path, monkeypatch):
    from nnctl.export import layers as export_layers

    def corrupt(g, layer, x, prefix):
        layer.params["W"][0, 0] += 0.5          # a wrong weight in the graph only
        try:
            return export_layers._dense(g, layer, x, prefix)
        finally:
            layer.params["W"][0, 0] -= 0.5

    monkeypatch.setitem(EXPORTERS, "dense", corrupt)
    out = tmp_path / "bad.onnx"
    res = runner.invoke(app, ["export", str(iris_run), "--out", str(out)])
    assert res.exit_code == 1
    err_lines = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(err_lines) == 1
    assert err_lines[0].startswith(f"error: {out}: onnxruntime differs from nnctl by ")
    assert err_lines[0].endswith("> tolerance 0.0001; the file is kept but is NOT trustworthy")
    assert out.exists() and "Traceback" not in res.output


def test_bad_options_write_nothing(iris_run, tmp_path):
    out = tmp_path / "x.onnx"
    cases = [
        (["--format", "tflite"], "error: --format must be one of onnx, npz-weights, got 'tflite'"),
        (["--format", "npz-weights", "--opset", "17"], "error: --opset is for --format onnx; npz-weights keeps"),
        (["--dtype", "float16"], "error: --dtype must be one of float32, float64, got 'float16'"),
        (["--tolerance", "-1"], "error: --tolerance must be a finite number >= 0, got -1.0"),
        (["--check-data", "no_such_dataset"], "error: --data: unknown dataset 'no_such_dataset'"),
    ]
    for extra, message in cases:
        res = runner.invoke(app, ["export", str(iris_run), "--out", str(out), *extra])
        assert res.exit_code == 1, extra
        assert res.output.strip().splitlines()[0].startswith(message), res.output
        assert not out.exists()
    res = runner.invoke(app, ["export", str(tmp_path / "missing")])
    assert res.exit_code == 1 and "no such checkpoint or run directory" in res.output


def test_missing_extra_names_it(iris_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)      # import onnxruntime now raises ImportError
    res = runner.invoke(app, ["export", str(iris_run), "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 1
    assert res.output.strip() == 'error: onnxruntime is not installed: pip install -e ".[export]"'
    assert not (tmp_path / "m.onnx").exists()


def test_export_is_reproducible(iris_run, tmp_path):
    paths = [tmp_path / "a.onnx", tmp_path / "b.onnx"]
    for p in paths:
        assert runner.invoke(app, ["export", str(iris_run), "--out", str(p)]).exit_code == 0
    assert hashlib.sha256(paths[0].read_bytes()).digest() == hashlib.sha256(paths[1].read_bytes()).digest()


def test_npz_weights_read_with_numpy_alone(iris_run, tmp_path):
    res = runner.invoke(app, ["export", str(iris_run), "--format", "npz-weights"])
    assert res.exit_code == 0, res.output
    assert "max abs diff 0, labels agree 100.00%" in res.stdout
    path = iris_run / "model.weights.npz"
    with np.load(path, allow_pickle=False) as npz:
        arch = json.loads(npz["architecture.json"].decode("utf-8"))
        arrays = {k: npz[k] for k in npz.files if k != "architecture.json"}
    assert arch["format"] == "nnctl-npz-weights" and arch["classes"] == ["setosa", "versicolor", "virginica"]
    assert [layer["type"] for layer in arch["layers"]] == ["dense", "batch_norm", "relu", "dropout", "dense"]
    assert arch["output_activation"] == "softmax"
    assert {k: list(v.shape) for k, v in arrays.items()} == {k: v["shape"] for k, v in arch["arrays"].items()}
    # the forward pass by hand, from the file: standardize, dense, batch norm (running stats), relu, dense
    x = np.loadtxt(IRIS_CSV, delimiter=",", skiprows=1, usecols=[0, 1, 2, 3])
    a = {k: v.astype(np.float64) for k, v in arrays.items()}
    h = (x - a["standardize.mean"]) / a["standardize.scale"]
    h = h @ a["layers.0.W"] + a["layers.0.b"]
    h = (h - a["layers.1.running_mean"]) / np.sqrt(a["layers.1.running_var"] + 1e-5) * a["layers.1.gamma"] \
        + a["layers.1.beta"]
    z = np.maximum(h, 0) @ a["layers.4.W"] + a["layers.4.b"]
    labels = [arch["classes"][i] for i in z.argmax(1)]
    assert labels == _predict_labels(iris_run, IRIS_CSV)


# -- a table with text columns and missing cells ----------------------------------------------
COLORS = ["red", "green", "blue", "teal"]


def _table_csv(path: Path, n: int, seed: int, task: str, extra_colors: tuple[str, ...] = ()) -> Path:
    """A CSV with numbers (some missing), text categories (some missing as '', NA or NaN) and a
    target that depends on both: string labels for classification, values near 150 for regression."""
    rng = np.random.default_rng(seed)
    colors = COLORS + list(extra_colors)
    rows = ["size,color,weight,shape,target"]
    for i in range(n):
        size, weight = rng.normal(0, 1), rng.normal(5, 2)
        color = colors[i % len(colors)] if i % 11 else ["", "NA", "NaN"][i % 3]
        shape = ["round", "square"][int(rng.integers(0, 2))]
        bonus = {"red": 1.5, "green": -1.0}.get(color, 0.0)
        if task == "classification":
            target = "big" if size + bonus + (shape == "round") > 0.5 else "small"
        else:
            target = f"{150 + 3 * size - 0.5 * weight + 2 * bonus:.4f}"
        rows.append(f"{'' if i % 7 == 3 else f'{size:.4f}'},{color},{'NA' if i % 13 == 5 else f'{weight:.3f}'},"
                    f"{shape},{target}")
    path.write_text("\n".join(rows) + "\n")
    return path


TABLE_SPEC = """\
    name: {name}
    seed: 1
    data: {{dataset: {csv}, target: target, missing: impute, val_split: 0.2, test_split: 0.2}}
    model:
      layers:
        - dense: {{units: 8, activation: tanh}}
    {loss}
    optimizer: {{name: adam, lr: 0.03}}
    training: {{epochs: 6, batch_size: 16}}
    """


def _table_model(columns, seed=0, **kw) -> LoadedModel:
    """A random-weight model behind a hand-made table encoding (standardized, one-hot columns left 0/1)."""
    table = TableEncoder(columns, "impute")
    width = len(table.feature_names)
    rng = np.random.default_rng(seed)
    mean = np.where(table.onehot_mask(), 0.0, rng.normal(0, 2, width))
    scale = np.where(table.onehot_mask(), 1.0, rng.uniform(0.5, 2, width))
    lm = loaded([{"type": "dense", "units": 6, "activation": "tanh"}, {"type": "dense", "units": 3}], (width,),
                seed=seed, standardizer=Standardizer.from_arrays(mean, scale), **kw)
    lm.preprocessor = Preprocessor(table=table, standardizer=lm.standardizer)
    lm.feature_names = table.feature_names
    return lm


# raw CSV cells: fills where the column has one; missing markers in several spellings; values
# training never had ("w", "r", "Y": categories are case-sensitive)
RAW = {
    "num_a": ["1.5", "", "-2", "NaN", "3.25", "NA", "0", "7"],
    "cat_b": ["x", "NA", "w", "", "z", "nan", "N/A", "Y"],
    "cat_c": ["q", "p", "q", "p", "r", "p", "q", "p"],
    "num_d": ["0.5", "1", "-1", "2", "0.25", "-3", "4", "1e3"],
}
TABLE_COLUMNS = [{"name": "num_a", "kind": "numeric", "fill": 0.5},
                 {"name": "cat_b", "kind": "categorical", "categories": ["x", "y", "z"], "fill": "y"},
                 {"name": "cat_c", "kind": "categorical", "categories": ["p", "q"], "fill": None},
                 {"name": "num_d", "kind": "numeric", "fill": None}]


def _nnctl_side(lm, names):
    """What `nnctl predict` computes from the RAW cells: the data layer reads and encodes them."""
    from nnctl.data.files import categorical_column, numeric_column
    from nnctl.export.parity import nnctl_outputs
    cols = [categorical_column(n, RAW[n]) if n.startswith("cat") else
            numeric_column("raw", n, RAW[n], range(2, 10)) for n in names]
    x, unknown = lm.preprocessor.table.transform(cols, "raw", None)
    return nnctl_outputs(lm, x, 64)[0], unknown


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_table_graph_takes_raw_columns_and_encodes_them_like_nnctl(dtype):
    lm = _table_model(TABLE_COLUMNS, task="classification", loss="cross_entropy", classes=["a", "b", "c"])
    proto = build_onnx(lm, dtype)
    real = onnx.TensorProto.FLOAT if dtype == "float32" else onnx.TensorProto.DOUBLE
    types = {i.name: i.type.tensor_type.elem_type for i in proto.graph.input}
    assert types == {"num_a": real, "cat_b": onnx.TensorProto.STRING, "cat_c": onnx.TensorProto.STRING,
                     "num_d": real}
    assert [d.dim_param or d.dim_value for d in proto.graph.input[1].type.tensor_type.shape.dim] == ["batch", 1]
    assert {(o.domain, o.version) for o in proto.opset_import} == {("", 17), ("ai.onnx.ml", 2)}
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["columns"]) == ["num_a", "cat_b", "cat_c", "num_d"]
    assert json.loads(props["input"])["table"]["columns"][1] == {
        "name": "cat_b", "kind": "categorical", "fill": "y", "categories": ["x", "y", "z"]}
    feeds = {n: (np.array([float(v) if v not in ("", "NA") else np.nan for v in RAW[n]], dtype=dtype)
                 if n.startswith("num") else np.array(RAW[n], dtype=object)).reshape(-1, 1) for n in RAW}
    p, _, _ = run_onnx(proto, feeds)
    want, unknown = _nnctl_side(lm, list(RAW))
    assert unknown == 3                                  # w, Y and r took an unknown slot
    np.testing.assert_allclose(p, want, rtol=0, atol=1e-6)


def test_numbers_only_table_with_fills_takes_the_features_matrix_with_nan():
    lm = _table_model([TABLE_COLUMNS[0], TABLE_COLUMNS[3]])
    proto = build_onnx(lm)
    assert [(i.name, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim])
            for i in proto.graph.input] == [("features", ["batch", 2])]
    x = np.array([[float(a) if a not in ("", "NA") else np.nan, float(d)]
                  for a, d in zip(RAW["num_a"], RAW["num_d"])], dtype=np.float32)
    (values,) = run_onnx(proto, {"features": x})
    np.testing.assert_allclose(values, _nnctl_side(lm, ["num_a", "num_d"])[0], rtol=0, atol=1e-6)


def test_a_column_named_like_a_graph_output_is_refused():
    lm = _table_model([{"name": "label", "kind": "categorical", "categories": ["u", "v"], "fill": None}],
                      task="classification", loss="cross_entropy", classes=["a", "b", "c"])
    with pytest.raises(ExportError, match=r"^column 'label' has the name of a graph output \(probabilities, "):
        build_onnx(lm)


# A process with only onnxruntime and numpy, fed the CSV's columns as sklearn-onnx users do.
STANDALONE_TABLE = """
import csv, sys, numpy as np, onnxruntime as ort
model, data = sys.argv[1], sys.argv[2]
rows = list(csv.DictReader(open(data)))
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
def number(cell):
    try:
        return float(cell)
    except ValueError:        # "" or NA: missing
        return float("nan")
feeds = {}
for i in sess.get_inputs():
    cells = [r[i.name].strip() for r in rows]
    if i.type == "tensor(string)":
        feeds[i.name] = np.array(cells, dtype=object).reshape(-1, 1)
    else:
        feeds[i.name] = np.array([number(c) for c in cells], dtype=np.float32).reshape(-1, 1)
labels = sess.run(["label"], feeds)[0]
assert not [m for m in sys.modules if m.startswith("nnctl")]
print("\\n".join(labels))
"""


@pytest.fixture(scope="module")
def table_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("table")
    csv_path = _table_csv(tmp / "table.csv", 150, 2, "classification")
    return _train(tmp, TABLE_SPEC.format(name="table-export", csv=csv_path, loss=""))


def test_categorical_csv_export_matches_predict_in_a_process_without_nnctl(table_run, tmp_path):
    out = tmp_path / "table.onnx"
    res = runner.invoke(app, ["export", str(table_run), "--out", str(out)])
    assert res.exit_code == 0, res.output
    # 30 test rows + 6 base rows x (size, weight: missing; color, shape: missing and unseen)
    csv_path = table_run.parent.parent / "table.csv"
    assert (f"parity on 66 rows of the test split of {csv_path}, 36 of them probes (a column missing or unseen "
            "in turn): max abs diff ") in res.stdout
    assert "labels agree 100.00% (0 differ)" in res.stdout
    # new rows: a colour training never had, missing numbers and text in several spellings
    new = _table_csv(tmp_path / "new.csv", 40, 5, "classification", extra_colors=("purple",))
    text = new.read_text()
    assert ",purple," in text and ",NA," in text and ",NaN," in text and "\n," in text
    res = runner.invoke(app, ["export", str(table_run), "--out", str(tmp_path / "m2.onnx"), "--check-data", str(new)])
    assert res.exit_code == 0, res.output
    assert f"parity on 76 rows of {new}, 36 of them probes" in res.stdout and "labels agree 100.00%" in res.stdout
    # on the whole training table (its missing cells, plus the probes' unseen values) within 1e-5
    res = runner.invoke(app, ["export", str(table_run), "--out", str(tmp_path / "m3.onnx"), "--check-data",
                              str(csv_path), "--tolerance", "1e-5"])
    assert res.exit_code == 0, res.output
    assert f"parity on 186 rows of {csv_path}, 36 of them probes" in res.stdout
    out2 = subprocess.run([sys.executable, "-c", STANDALONE_TABLE, str(out), str(new)],
                          capture_output=True, text=True, cwd="/", timeout=120)
    assert out2.returncode == 0, out2.stderr
    labels = out2.stdout.split()
    assert labels == _predict_labels(table_run, new) and len(labels) == 40 and set(labels) == {"big", "small"}


def test_a_wrong_table_encoding_fails_the_parity_check(table_run, tmp_path, monkeypatch):
    from nnctl.export import tabular
    monkeypatch.setattr(tabular, "missing_markers", lambda: [])   # missing text would land in "unknown"
    out = tmp_path / "bad.onnx"
    res = runner.invoke(app, ["export", str(table_run), "--out", str(out)])
    assert res.exit_code == 1
    assert f"error: {out}: onnxruntime differs from nnctl by " in res.output and out.exists()


def test_check_data_with_a_missing_cell_and_no_fill_is_refused_as_predict_refuses_it(tmp_path):
    csv_path = _table_csv(tmp_path / "table.csv", 100, 2, "classification")
    run = _train(tmp_path, TABLE_SPEC.format(name="table-drop", csv=csv_path, loss="").replace("impute", "drop"))
    res = runner.invoke(app, ["export", str(run)])       # no fills: only unseen-value probes
    assert res.exit_code == 0, res.output
    assert ", 12 of them probes (a column missing or unseen in turn)" in res.stdout
    new = tmp_path / "new.csv"
    new.write_text("size,color,weight,shape\n1.0,red,2.5,round\n0.5,blue,NA,square\n")
    message = ("error: new.csv row 3, column 'weight': missing value (1 in this column); the model was trained "
               "with data.missing: drop, so it has no fill value (use data.missing: impute)")
    res = runner.invoke(app, ["export", str(run), "--check-data", str(new), "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 1 and res.output.strip() == message and not (tmp_path / "m.onnx").exists()
    res = runner.invoke(app, ["predict", str(run), str(new)])
    assert res.exit_code == 1 and res.output.strip() == message


def test_npz_weights_regression_in_target_units_from_the_file_alone(tmp_path):
    csv_path = _table_csv(tmp_path / "table.csv", 120, 0, "regression")
    run = _train(tmp_path, TABLE_SPEC.format(name="table-npz", csv=csv_path, loss="loss: mse"))
    res = runner.invoke(app, ["export", str(run), "--format", "npz-weights"])
    assert res.exit_code == 0, res.output
    assert "max abs diff 0 (tolerance" in res.stdout
    with np.load(run / "model.weights.npz", allow_pickle=False) as npz:
        arch = json.loads(npz["architecture.json"].decode("utf-8"))
        a = {k: npz[k].astype(np.float64) for k in npz.files if k != "architecture.json"}
    assert arch["format_version"] == 2 and arch["target"] == {"unscale": "values * target.scale + target.mean"}
    assert a["target.mean"].shape == (1,) and 140 < a["target.mean"][0] < 160
    # the CSV encoded by hand from the JSON: numbers (mean-filled), one-hot text columns + unknown slot
    header, *cells = [line.split(",") for line in csv_path.read_text().splitlines()]
    feats = []
    for col in arch["input"]["table"]["columns"]:
        j = header.index(col["name"])
        raw = [r[j] for r in cells]
        if col["kind"] == "numeric":
            feats.append([[col["fill"] if v in ("", "NA") else float(v)] for v in raw])
        else:
            cats = col["categories"]
            vals = [col["fill"] if v in ("", "NA", "NaN") else v for v in raw]
            feats.append([[float(v == c) for c in cats] + [float(v not in cats)] for v in vals])
    x = np.concatenate([np.array(f) for f in feats], axis=1)
    assert x.shape == (120, 2 + 5 + 3) and arch["feature_names"][1:6] == [
        "color=blue", "color=green", "color=red", "color=teal", "color=<unknown>"]
    h = np.tanh(((x - a["standardize.mean"]) / a["standardize.scale"]) @ a["layers.0.W"] + a["layers.0.b"])
    values = (h @ a["layers.1.W"] + a["layers.1.b"]) * a["target.scale"] + a["target.mean"]
    pred = runner.invoke(app, ["predict", str(run), str(csv_path)])
    assert pred.exit_code == 0, pred.output
    want = np.array([float(line.split(",")[0]) for line in pred.stdout.splitlines()[1:]])
    np.testing.assert_allclose(values[:, 0], want, rtol=1e-6, atol=0)   # float32 predictions near 150


def test_regression_without_test_split_checks_on_the_val_split_and_says_so(tmp_path):
    run = _train(tmp_path, """\
        name: sine-export
        data: {dataset: sine, options: {n_samples: 120}, val_split: 0.25, test_split: 0.0}
        model: {hidden: [8], activation: tanh}
        loss: mse
        training: {epochs: 2, batch_size: 32}
        """)
    res = runner.invoke(app, ["export", str(run)])
    assert res.exit_code == 0, res.output
    assert "parity on 30 rows of the val split of sine (built-in): max abs diff " in res.stdout
    assert "labels agree" not in res.stdout
    sess = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["values"]
    x = np.linspace(-3, 3, 11, dtype=np.float32)[:, None]
    (values,) = sess.run(None, {"features": x})
    csv_in = tmp_path / "x.csv"
    csv_in.write_text("x\n" + "\n".join(str(float(v)) for v in x[:, 0]) + "\n")
    pred = runner.invoke(app, ["predict", str(run), str(csv_in)])
    assert pred.exit_code == 0, pred.output
    want = np.array([float(line) for line in pred.stdout.splitlines()[1:]])
    np.testing.assert_allclose(values[:, 0], want, atol=1e-6)
