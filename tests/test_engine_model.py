"""Sequential: names, state dicts and strict loading, dtype discipline, summary, seeding, config round trip."""
from __future__ import annotations

import json

import numpy as np
import pytest

from nnctl.engine.activations import ACTIVATIONS
from nnctl.engine.gradcheck import gradcheck
from nnctl.engine.losses import get_loss
from nnctl.engine.model import Sequential, build_layer
from nnctl.errors import CheckpointError, ConfigError, DataError

SPECS = [
    {"type": "dense", "units": 8, "activation": "relu"},
    {"type": "batch_norm"},
    {"type": "dropout", "rate": 0.2},
    {"type": "residual", "layers": [{"type": "dense", "units": 8, "activation": "gelu"},
                                    {"type": "layer_norm"}]},
    {"type": "dense", "units": 3},
]


def make(seed=0, dtype="float32", specs=SPECS, shape=(5,)):
    return Sequential.from_config(specs, shape, np.random.default_rng(seed), dtype)


def test_named_parameters_grads_and_buffers():
    model = make()
    assert list(model.named_parameters()) == [
        "layers.0.W", "layers.0.b", "layers.1.gamma", "layers.1.beta",
        "layers.3.layers.0.W", "layers.3.layers.0.b", "layers.3.layers.1.gamma", "layers.3.layers.1.beta",
        "layers.4.W", "layers.4.b"]
    assert list(model.named_grads()) == list(model.named_parameters())
    assert list(model.named_buffers()) == ["layers.1.running_mean", "layers.1.running_var"]
    assert model.named_parameters()["layers.3.layers.0.W"] is model.layers[3].sub[0].params["W"]
    assert model.num_parameters() == (5 * 8 + 8) + 16 + (8 * 8 + 8) + 16 + (8 * 3 + 3)


def test_state_dict_round_trip_loads_in_place():
    a, b = make(seed=1), make(seed=2)
    x = np.random.default_rng(3).standard_normal((4, 5)).astype(np.float32)
    a.forward(x, training=True)  # moves a's running statistics
    live = b.named_parameters()
    b.load_state_dict(a.state_dict())
    for name, arr in b.named_parameters().items():
        assert arr is live[name]  # same arrays: optimizer references stay valid
    np.testing.assert_array_equal(a.forward(x, training=False), b.forward(x, training=False))
    sd = a.state_dict()
    sd["layers.0.W"][...] = 0.0  # copies, not views
    assert np.any(a.named_parameters()["layers.0.W"] != 0)


def test_strict_loading_names_the_key():
    model = make()
    good = model.state_dict()

    missing = dict(good)
    del missing["layers.4.b"]
    with pytest.raises(CheckpointError) as err:
        model.load_state_dict(missing)
    assert str(err.value) == "state dict is missing key 'layers.4.b' (model shape (3,))"

    extra = {**good, "layers.5.W": np.zeros((3, 2), np.float32)}
    with pytest.raises(CheckpointError) as err:
        model.load_state_dict(extra)
    assert str(err.value) == "state dict has unexpected key 'layers.5.W' (shape (3, 2))"

    shaped = {**good, "layers.0.W": np.zeros((4, 8), np.float32)}
    with pytest.raises(CheckpointError) as err:
        model.load_state_dict(shaped)
    assert str(err.value) == "state dict 'layers.0.W' has shape (4, 8), the model expects (5, 8)"

    typed = {**good, "layers.1.running_var": np.ones(8, np.float64)}
    with pytest.raises(CheckpointError) as err:
        model.load_state_dict(typed)
    assert str(err.value) == "state dict 'layers.1.running_var' has dtype float64, the model expects float32"

    # nothing was written by the failed loads; non-strict ignores missing and extra keys only
    before = model.state_dict()
    model.load_state_dict({"layers.4.b": np.ones(3, np.float32), "other": np.zeros(1)}, strict=False)
    assert np.all(model.named_parameters()["layers.4.b"] == 1)
    np.testing.assert_array_equal(model.named_parameters()["layers.0.W"], before["layers.0.W"])
    with pytest.raises(CheckpointError, match="has shape"):
        model.load_state_dict({"layers.4.b": np.ones(4, np.float32)}, strict=False)


def test_float32_model_stays_float32_everywhere():
    specs = [{"type": "dense", "units": 6, "activation": "relu"}, {"type": "batch_norm"},
             {"type": "layer_norm"}, {"type": "dropout", "rate": 0.3},
             *({"type": name} for name in ACTIVATIONS.entries),
             {"type": "residual", "layers": [{"type": "dense", "units": 6, "activation": "swish"}]},
             {"type": "dense", "units": 3, "activation": "softmax"},
             {"type": "dense", "units": 3}]
    model = make(specs=specs)
    x = np.random.default_rng(0).standard_normal((7, 5))  # float64 input is cast, not upcasting
    for loss_name, y in [("cross_entropy", np.array([0, 1, 2, 0, 1, 2, 0])),
                         ("mse", np.random.default_rng(1).standard_normal((7, 3)))]:
        z = model.forward(x, training=True)
        assert z.dtype == np.float32
        value, dz = get_loss(loss_name)(z, y)
        assert dz.dtype == np.float32
        model.backward(dz)
        assert model.backward(dz, input_grad=True).dtype == np.float32
    for name, arr in {**model.named_parameters(), **model.named_grads(), **model.named_buffers()}.items():
        assert arr.dtype == np.float32, name
    for layer in model.iter_layers():
        held = [a for a in layer.ws.arrays.values() if a.dtype != np.bool_]
        act = getattr(layer, "act", None)
        if act is not None:
            held += [a for a in act.ws.arrays.values() if a.dtype != np.bool_]
        assert all(a.dtype == np.float32 for a in held), layer
    assert model.forward(x, training=False).dtype == np.float32
    assert model.predict(x, batch_size=3).dtype == np.float32


def test_summary_rows_and_text():
    model = make()
    rows = model.summary()
    assert [tuple(r) for r in rows] == [
        ("layers.0 dense", (8,), 48), ("layers.1 batch_norm", (8,), 16), ("layers.2 dropout", (8,), 0),
        ("layers.3 residual", (8,), 88), ("layers.4 dense", (3,), 27)]
    for name, shape, count in rows:  # the CLI unpacks rows like this
        assert isinstance(name, str) and isinstance(count, int)
    text = model.summary_text().splitlines()
    assert len(text) == len(rows) + 1
    assert text[0].split() == ["layers.0", "dense", "(8,)", "48"]
    assert text[-1] == "input (5,), float32, 179 parameters"
    assert model.input_shape == (5,) and model.output_shape == (3,) and model.dtype == np.float32


def test_same_seed_same_init_and_dropout_masks():
    x = np.ones((6, 5), np.float32)
    a, b, c = make(seed=4), make(seed=4), make(seed=5)
    for name, arr in a.named_parameters().items():
        np.testing.assert_array_equal(arr, b.named_parameters()[name])
    assert not np.array_equal(a.named_parameters()["layers.0.W"], c.named_parameters()["layers.0.W"])
    for _ in range(3):  # the masks keep agreeing step after step
        np.testing.assert_array_equal(a.forward(x, training=True), b.forward(x, training=True))
    assert a.rng is a.layers[2].rng


def test_config_round_trip_is_json_and_rebuilds_the_same_model():
    model = make(seed=3)
    cfg = model.get_config()
    assert json.loads(json.dumps(cfg)) == cfg
    assert cfg[3] == {"type": "residual", "layers": [
        {"type": "dense", "units": 8, "activation": "gelu", "initializer": None, "bias": True,
         "bias_initializer": "zeros"},
        {"type": "layer_norm", "eps": 1e-5}]}
    again = make(seed=3, specs=cfg)
    for name, arr in model.named_parameters().items():
        np.testing.assert_array_equal(arr, again.named_parameters()[name])
    aliased = make(specs=[{"type": "silu"}, {"type": "batchnorm"}, {"type": "dense", "units": 2}])
    assert [s["type"] for s in aliased.get_config()] == ["swish", "batch_norm", "dense"]


def test_forward_returns_arrays_the_caller_owns():
    model = make()
    x1 = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    out1 = model.forward(x1, training=False)
    keep = out1.copy()
    model.forward(x1 * 2, training=False)
    np.testing.assert_array_equal(out1, keep)
    np.testing.assert_allclose(model.predict(x1, batch_size=3), keep, rtol=1e-6)


def test_backward_skips_the_input_gradient_unless_asked():
    model = make(dtype="float64", specs=[{"type": "dense", "units": 4, "activation": "tanh"},
                                         {"type": "dense", "units": 2}])
    x = np.random.default_rng(0).standard_normal((3, 5))
    dz = np.ones((3, 2))
    model.forward(x, training=True)
    assert model.backward(dz) is None
    assert "dx" not in {k[0] for k in model.layers[0].ws.arrays}  # never computed
    dx = model.backward(dz, input_grad=True)
    assert dx.shape == (3, 5)
    assert model.layers[0].input_grad is False  # restored for training
    assert gradcheck(model, x)["input"] < 1e-6


def test_model_errors():
    with pytest.raises(ConfigError, match="unknown layer 'dens'; did you mean 'dense'"):
        make(specs=[{"type": "dens", "units": 3}])
    with pytest.raises(ConfigError, match="a layer spec must be a mapping with 'type'"):
        build_layer({"units": 3})
    with pytest.raises(ConfigError, match="dtype must be float32 or float64, got 'float16'"):
        make(dtype="float16")
    with pytest.raises(ConfigError, match="a model needs at least one layer"):
        Sequential([])
    model = make()
    with pytest.raises(DataError) as err:
        model.forward(np.zeros((2, 4)), training=False)
    assert str(err.value) == "model expects samples of shape (5,), got a batch of shape (2, 4)"


def test_astype_copies_into_another_dtype():
    model = make(seed=0)
    x = np.random.default_rng(0).standard_normal((4, 5))
    model.forward(x, training=True)
    wide = model.astype("float64")
    assert wide.dtype == np.float64
    for name, arr in wide.state_dict().items():
        assert arr.dtype == np.float64
        np.testing.assert_array_equal(arr, model.state_dict()[name].astype(np.float64))
    np.testing.assert_allclose(wide.forward(x, training=False), model.forward(x, training=False), rtol=1e-4, atol=1e-5)


def test_prebuilt_layers_form_a_model():
    rng = np.random.default_rng(0)
    a = build_layer({"type": "dense", "units": 4})
    a.build((3,), rng, np.float64)
    b = build_layer({"type": "relu"})
    b.build((4,), rng, np.float64)
    model = Sequential([a, b])
    assert model.built and model.input_shape == (3,) and model.output_shape == (4,)
    c = build_layer({"type": "dense", "units": 2})
    c.build((5,), rng, np.float64)
    with pytest.raises(ConfigError, match=r"layers.1 dense: built for input \(5,\) but receives \(4,\)"):
        Sequential([a, c])


def test_workspace_ones_is_filled_once_and_shared_by_prefix():
    from nnctl.engine.base import Workspace
    ws = Workspace()
    a = ws.ones(5, np.float32)
    assert a.dtype == np.float32 and a.tolist() == [1.0] * 5
    b = ws.ones(3, np.float32)
    assert np.shares_memory(a, b) and b.tolist() == [1.0] * 3   # a prefix of the same vector
    c = ws.ones(8, np.float32)                                   # larger: a new, whole vector
    assert c.tolist() == [1.0] * 8 and not np.shares_memory(a, c)
    assert ws.ones(4, np.float64).dtype == np.float64 and len(ws) == 2
