"""Defaults: what a spec that does not choose gets, that a run records it, and that `config` shows it."""
from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from nnctl.bench.defaults import candidate
from nnctl.cli import app
from nnctl.config.annotate import annotated_yaml
from nnctl.config.spec import spec_from_dict
from nnctl.engine.initializers import DEFAULT_INITIALIZERS, default_initializer
from nnctl.runs.checkpoint import load_checkpoint
from conftest import as_interrupted

runner = CliRunner()

# The documented defaults (README "Defaults"): one row per activation family.
DOCUMENTED = {"relu": DEFAULT_INITIALIZERS["relu_like"], "gelu": DEFAULT_INITIALIZERS["relu_like"],
              "leaky_relu": DEFAULT_INITIALIZERS["relu_like"], "elu": DEFAULT_INITIALIZERS["relu_like"],
              "swish": DEFAULT_INITIALIZERS["relu_like"], "softplus": DEFAULT_INITIALIZERS["relu_like"],
              "tanh": "xavier_uniform", "sigmoid": "xavier_uniform", "identity": "xavier_uniform"}


def test_the_documented_table_is_what_the_readme_states():
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert f"| ReLU-like (relu, leaky_relu, elu, gelu, swish, softplus) | `{DEFAULT_INITIALIZERS['relu_like']}`" \
        in readme
    assert f"| others (tanh, sigmoid, identity, softmax) | `{DEFAULT_INITIALIZERS['other']}`" in readme


@pytest.mark.parametrize("activation", sorted(DOCUMENTED))
def test_a_spec_without_initializer_resolves_to_the_documented_default(activation):
    short = spec_from_dict({"data": {"dataset": "xor"}, "model": {"hidden": [4, 4], "activation": activation}})
    assert short.model["initializer"] == DOCUMENTED[activation]
    assert [layer["initializer"] for layer in short.layers if layer["type"] == "dense"] == [DOCUMENTED[activation]] * 2
    assert ("model", "initializer") in short.defaulted
    long = spec_from_dict({"data": {"dataset": "xor"},
                           "model": {"layers": [{"dense": {"units": 4, "activation": activation}},
                                                {"residual": {"layers": [{"dense": {"units": 4,
                                                                                    "activation": activation}}]}}]}})
    assert long.layers[0]["initializer"] == DOCUMENTED[activation]
    assert long.layers[1]["layers"][0]["initializer"] == DOCUMENTED[activation]
    assert ("model", "layers", 0, "initializer") in long.defaulted


def test_an_initializer_the_spec_names_is_kept_and_not_marked_default():
    spec = spec_from_dict({"data": {"dataset": "xor"}, "model": {"hidden": [4], "initializer": "orthogonal"}})
    assert spec.model["initializer"] == "orthogonal" and spec.layers[0]["initializer"] == "orthogonal"
    assert ("model", "initializer") not in spec.defaulted


def test_config_marks_every_default_and_stays_valid_yaml(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent("""\
        data: {dataset: xor}
        model: {hidden: [8]}
        optimizer: {name: adam, lr: 0.01}
        training: {epochs: 3}
        """))
    res = runner.invoke(app, ["config", str(path)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert "  lr: 0.01" in lines                      # chosen: no mark
    assert "  beta1: 0.9  # default" in lines         # not chosen: marked
    assert "  epochs: 3" in lines
    assert "  batch_size: 32  # default" in lines
    assert f"  initializer: {DEFAULT_INITIALIZERS['relu_like']}  # default" in lines
    assert "loss:  # default" in lines
    parsed = yaml.safe_load(res.output)
    assert parsed["optimizer"]["lr"] == 0.01 and parsed["training"]["batch_size"] == 32


def test_annotated_yaml_round_trips_nested_lists():
    data = {"a": 1, "b": {"c": [1, 2], "d": [{"type": "x", "n": 2}, {"type": "y", "k": {"z": None}}]}, "e": "s: t"}
    text = annotated_yaml(data, {("b", "d", 1, "type"), ("e",)})
    assert yaml.safe_load(text) == data
    assert "  - type: y  # default" in text.replace("    - type: y", "  - type: y")
    assert text.splitlines()[-1] == "e: 's: t'  # default"


def _history(run):
    return json.loads((run / "history.json").read_text())


def test_resuming_a_run_recorded_under_another_default_keeps_it(tmp_path):
    """A run trained when the ReLU default was xavier_uniform resumes (and retrains) with
    xavier_uniform after the default changed: the run's config records the value it used."""
    spec = tmp_path / "s.yaml"
    spec.write_text("name: d\ndata: {dataset: moons}\nmodel: {hidden: [16, 16]}\ntraining: {epochs: 4}\n")
    old = "xavier_uniform" if DEFAULT_INITIALIZERS["relu_like"] != "xavier_uniform" else "he_normal"
    full, part = tmp_path / "full", tmp_path / "part"
    with candidate({"relu_like": old}):
        assert runner.invoke(app, ["train", str(spec), "--runs-dir", str(full), "--quiet"]).exit_code == 0
        assert runner.invoke(app, ["train", str(spec), "--runs-dir", str(part), "--quiet",
                                   "--set", "training.epochs=2"]).exit_code == 0
    (full_run,), (run,) = list(full.iterdir()), list(part.iterdir())
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert recorded["model"]["initializer"] == old
    # make the 2-epoch run the interrupted first half of a 4-epoch run, then resume under today's default
    as_interrupted(run, 4)
    assert DEFAULT_INITIALIZERS["relu_like"] != old
    res = runner.invoke(app, ["train", "--resume", str(run), "--quiet"])
    assert res.exit_code == 0, res.output
    assert load_checkpoint(run / "checkpoints" / "last.npz").meta["config"]["model"]["initializer"] == old
    a = [[r[k] for k in ("loss", "val_loss", "accuracy")] for r in _history(full_run)]
    b = [[r[k] for k in ("loss", "val_loss", "accuracy")] for r in _history(run)]
    np.testing.assert_allclose(b, a, rtol=1e-12)
    # retraining from the run's own config.yaml draws the same initial weights as the old default did
    again = tmp_path / "again"
    assert runner.invoke(app, ["train", str(full_run / "config.yaml"), "--runs-dir", str(again),
                               "--quiet"]).exit_code == 0
    (again_run,) = list(again.iterdir())
    np.testing.assert_allclose([[r[k] for k in ("loss", "val_loss", "accuracy")] for r in _history(again_run)],
                               a, rtol=1e-12)


def test_default_initializer_follows_the_table():
    with candidate({"relu_like": "lecun_uniform", "other": "orthogonal"}):
        assert default_initializer("relu") == "lecun_uniform"
        assert default_initializer("tanh") == "orthogonal"
    assert default_initializer("relu") == DEFAULT_INITIALIZERS["relu_like"]


def test_a_panel_candidate_stands_in_for_a_default_only_where_the_task_leaves_it_out():
    from nnctl.bench.defaults import with_defaults
    task = {"data": {"dataset": "parity", "standardize": False}, "optimizer": "sgd",
            "training": {"early_stopping": {"monitor": "val_loss", "patience": 20}}}
    out = with_defaults(task, {"data.standardize": True, "data.standardize_target": False,
                               "optimizer": {"name": "adam", "lr": 3e-3}, "training.batch_size": 16,
                               "training.early_stopping.patience": 3, "schedule.name": "cosine"})
    assert out == {"data": {"dataset": "parity", "standardize": False, "standardize_target": False},
                   "optimizer": "sgd",
                   "training": {"early_stopping": {"monitor": "val_loss", "patience": 20}, "batch_size": 16},
                   "schedule": {"name": "cosine"}}
    assert task["data"] == {"dataset": "parity", "standardize": False}   # the task itself is untouched
    assert with_defaults({"optimizer": "sgd"}, {"optimizer.lr": 0.1}) == {"optimizer": "sgd"}   # a name: chosen


def test_the_panel_tables_have_categorical_columns_and_the_targets_they_claim(tmp_path):
    from nnctl.bench.defaults import GENERATED
    from nnctl.data.dataset import load_dataset
    GENERATED["table-categorical"](tmp_path / "c.csv")
    GENERATED["table-regression"](tmp_path / "r.csv")
    cls = load_dataset({"dataset": str(tmp_path / "c.csv"), "target": "label"}, 0, tmp_path)
    assert cls.task == "classification" and cls.n_outputs == 3
    kinds = {c["name"]: c["kind"] for c in cls.table.columns}
    assert kinds == {"region": "categorical", "plan": "categorical", "age": "numeric", "income": "numeric",
                     "visits": "numeric", "tenure": "numeric"}
    assert sorted(cls.classes) == ["high", "low", "mid"]
    reg = load_dataset({"dataset": str(tmp_path / "r.csv"), "target": "price"}, 0, tmp_path)
    assert reg.task == "regression" and 300 < float(reg.target_mean[0]) < 500   # an offset target: scaled


def test_bench_defaults_refuses_an_unknown_study_in_one_line():
    res = runner.invoke(app, ["bench", "--defaults", "--study", "patiense"])
    assert res.exit_code == 1
    assert res.output == ("error: --study: unknown study 'patiense'; did you mean 'patience'? valid: initializer, "
                          "bias, standardize, adam-lr, batch-size, patience, all\n")


def _built(spec_dict):
    from nnctl.training.experiment import build_model, output_layer
    spec = spec_from_dict(spec_dict)
    return build_model(spec, [*spec.layers, output_layer(spec, 2)], (8,), np.float64)


def test_a_bias_candidate_changes_every_layers_initial_bias_and_the_default_comes_back():
    from nnctl.bench.defaults import CANDIDATES
    from nnctl.engine.base import LAYERS
    from nnctl.engine.initializers import DEFAULT_BIAS_INITIALIZER
    tables = [LAYERS.get(n).PARAMS for n in ("dense", "conv1d", "conv2d", "simple_rnn", "gru", "lstm")]
    assert DEFAULT_BIAS_INITIALIZER == "zeros" and all(t["bias_initializer"].default == "zeros" for t in tables)
    # short form (hidden) and long form (conv, recurrent): every bias is 0.01 under the candidate
    mlp = {"data": {"dataset": "xor"}, "model": {"hidden": [5, 3]}}
    seq = {"data": {"dataset": "xor"}, "model": {"layers": [{"conv1d": {"filters": 4, "kernel_size": 2}},
                                                            {"gru": {"units": 3}}]}}
    with candidate({}, CANDIDATES["bias-0.01"]["bias"]):
        biases = {k: v for k, v in _built(mlp).state_dict().items() if k.endswith(".b")}
        spec = spec_from_dict(seq)
    assert sorted(biases) == ["layers.0.b", "layers.1.b", "layers.2.b"]
    assert [v.tolist() for v in biases.values()] == [[0.01] * 5, [0.01] * 3, [0.01] * 2]
    assert [layer["bias_initializer"] for layer in spec.layers] == [{"name": "constant", "value": 0.01}] * 2
    # restored: the declarations are the very objects from before, and a new model starts at zero
    assert all(t["bias_initializer"].default == "zeros" for t in tables)
    assert [v.tolist() for k, v in _built(mlp).state_dict().items() if k.endswith(".b")] == [[0.0] * 5, [0.0] * 3,
                                                                                             [0.0] * 2]
    assert [layer["bias_initializer"] for layer in spec_from_dict(seq).layers] == ["zeros", "zeros"]


def test_the_fan_in_uniform_bias_candidate_is_pytorchs_linear_bias_rule():
    from nnctl.bench.defaults import TORCH_BIAS
    from nnctl.engine.initializers import get_initializer
    init = get_initializer(TORCH_BIAS)
    b = init((20000,), 25, 7, np.random.default_rng(0), np.float64)
    # U(-1/sqrt(25), 1/sqrt(25)) = U(-0.2, 0.2): bounded by 0.2, variance 0.2**2 / 3
    assert 0.199 < np.abs(b).max() <= 0.2
    assert abs(b.var() - 0.04 / 3) < 0.0004
    # the same draw as rng.uniform with that bound: nothing else is consumed or scaled
    np.testing.assert_array_equal(init((4,), 25, 7, np.random.default_rng(3), np.float64),
                                  np.random.default_rng(3).uniform(-0.2, 0.2, 4))


@pytest.mark.parametrize("scale,mode,distribution,std", [
    (2.0, "fan_in", "normal", (2.0 / 16) ** 0.5),          # he_normal
    (1.0, "fan_avg", "uniform", (1.0 / 40) ** 0.5),        # xavier_uniform's variance 2 / (16 + 64)
    (1.0, "fan_out", "normal", (1.0 / 64) ** 0.5),
])
def test_variance_scaling_draws_the_variance_its_mode_names(scale, mode, distribution, std):
    from nnctl.engine.initializers import get_initializer
    init = get_initializer({"name": "variance_scaling", "scale": scale, "mode": mode, "distribution": distribution})
    w = init((16, 64), 16, 64, np.random.default_rng(1), np.float64)
    assert abs(w.std() / std - 1.0) < 0.03
    if distribution == "uniform":
        assert np.abs(w).max() <= std * 3 ** 0.5
