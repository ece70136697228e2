"""The spec boundary: every error names its YAML path and line; defaults and overrides resolve."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from nnctl.config.source import apply_overrides, parse_yaml
from nnctl.config.spec import check_spec, load_spec, safe_run_name
from nnctl.errors import ConfigError


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def errors_of(tmp_path: Path, text: str, overrides=()) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_spec(write(tmp_path, text), list(overrides))
    return str(info.value).splitlines()


def test_negative_lr_names_path_and_line(tmp_path):
    errs = errors_of(tmp_path, """\
        data: {dataset: digits}
        optimizer:
          name: adam
          lr: -0.1
        """)
    assert errs == ["optimizer.lr: must be > 0, got -0.1 (spec.yaml line 4)"]


def test_all_errors_reported_at_once(tmp_path):
    errs = errors_of(tmp_path, """\
        data: {dataset: digits, val_split: 1.5}
        model:
          hidden: [64, 0]
          activaton: relu
        optimizer: {name: adamm}
        training:
          epochs: ten
          batch_size: 0
        """)
    assert errs == [
        "data.val_split: must be < 1, got 1.5 (spec.yaml line 1)",
        "model.activaton: unknown key 'activaton'; did you mean 'activation'? valid: activation, "
        "batch_norm, dropout, hidden, initializer, layers, output_initializer (spec.yaml line 4)",
        "model.hidden[1]: must be > 0, got 0 (spec.yaml line 3)",
        "optimizer.name: unknown optimizer 'adamm'; did you mean 'adam'? valid: "
        + ", ".join(__import__("nnctl.engine.optimizers", fromlist=["OPTIMIZERS"]).OPTIMIZERS.names())
        + " (spec.yaml line 5)",
        "training.epochs: must be an integer, got 'ten' (spec.yaml line 7)",
        "training.batch_size: must be >= 1, got 0 (spec.yaml line 8)",
    ]


def test_ints_accepted_where_floats_expected_and_exponent_strings(tmp_path):
    spec = load_spec(write(tmp_path, """\
        data: {dataset: digits}
        optimizer: {name: sgd, lr: 1, weight_decay: 1e-4}
        """))
    assert spec.optimizer["lr"] == 1.0 and isinstance(spec.optimizer["lr"], float)
    assert spec.optimizer["weight_decay"] == pytest.approx(1e-4)


def test_unknown_layer_suggests_closest(tmp_path):
    errs = errors_of(tmp_path, """\
        data: {dataset: digits}
        model:
          layers:
            - dense: {units: 8}
            - dropuot: 0.2
        """)
    assert len(errs) == 1
    assert errs[0].startswith("model.layers[1]: unknown layer 'dropuot'; did you mean 'dropout'?")
    assert errs[0].endswith("(spec.yaml line 5)")


def test_layer_option_range(tmp_path):
    errs = errors_of(tmp_path, """\
        data: {dataset: digits}
        model:
          layers:
            - dense: {units: -3}
        """)
    assert errs == ["model.layers[0].dense.units: must be > 0, got -3 (spec.yaml line 4)"]


def test_scalar_shorthand_and_defaults(tmp_path):
    spec = load_spec(write(tmp_path, """\
        data: {dataset: digits}
        model:
          layers:
            - dense: 32
            - dropout: 0.25
            - relu
        """))
    assert spec.layers[0]["type"] == "dense" and spec.layers[0]["units"] == 32
    assert spec.layers[1] == {"type": "dropout", "rate": 0.25}
    assert spec.layers[2]["type"] == "relu"
    assert spec.training.epochs == 20 and spec.training.dtype == "float32"


def test_short_form_expansion_with_batch_norm_and_dropout(tmp_path):
    spec = load_spec(write(tmp_path, """\
        data: {dataset: digits}
        model: {hidden: [16, 8], activation: tanh, batch_norm: true, dropout: 0.5}
        """))
    types = [layer["type"] for layer in spec.layers]
    assert types == ["dense", "batch_norm", "tanh", "dropout"] * 2
    assert spec.layers[0]["activation"] == "identity"
    assert spec.layers[0]["initializer"] == "xavier_uniform"  # follows tanh, not the identity


def test_monitor_never_logged(tmp_path):
    errs = errors_of(tmp_path, """\
        data: {dataset: digits, val_split: 0}
        training:
          early_stopping: {monitor: val_accuracy}
        """)
    assert len(errs) == 1
    assert errs[0].startswith("training.early_stopping.monitor: unknown metric 'val_accuracy'")
    assert "it is never logged (there is no validation split: set data.val_split)" in errs[0]
    assert errs[0].endswith("(spec.yaml line 3)")


def test_loss_task_mismatch(tmp_path):
    errs = errors_of(tmp_path, """\
        data: {dataset: sine, task: regression}
        loss: cross_entropy
        """)
    assert errs == ["loss: cross_entropy needs a classification task, but data.task is regression (spec.yaml line 2)"]


def test_overrides_parsed_as_yaml_and_validated(tmp_path):
    path = write(tmp_path, "data: {dataset: digits}\noptimizer: adam\n")
    spec = load_spec(path, ["optimizer.lr=0.01", "model.hidden=[256,128]"])
    assert spec.optimizer == {**spec.optimizer, "name": "adam", "lr": 0.01}
    assert [layer["units"] for layer in spec.layers] == [256, 128]
    with pytest.raises(ConfigError) as info:
        load_spec(path, ["optimizer.lr=-1"])
    assert str(info.value) == "optimizer.lr: must be > 0, got -1 (--set optimizer.lr)"


def test_bad_override_syntax(tmp_path):
    path = write(tmp_path, "data: {dataset: digits}\n")
    with pytest.raises(ConfigError, match=r"^--set optimizer.lr: expected KEY=VALUE"):
        load_spec(path, ["optimizer.lr"])


def test_malformed_yaml_has_line_and_column(tmp_path):
    errs = errors_of(tmp_path, "data: {dataset: digits\nmodel: [\n")
    assert len(errs) == 1 and errs[0].startswith("spec.yaml line ")
    assert "column" in errs[0]


def test_python_tags_refused():
    with pytest.raises(ConfigError) as info:
        parse_yaml("x: !!python/object/apply:os.system ['echo hi']\n", "evil.yaml")
    assert str(info.value).startswith("evil.yaml line 1 column 4: tag not allowed")


def test_duplicate_keys_refused():
    with pytest.raises(ConfigError) as info:
        parse_yaml("seed: 1\nseed: 2\n", "dup.yaml")
    assert str(info.value) == "seed: duplicate key (lines 1 and 2)"


def test_missing_file():
    with pytest.raises(ConfigError) as info:
        load_spec("/nonexistent/spec.yaml")
    assert str(info.value) == "/nonexistent/spec.yaml: no such file"


def test_relative_data_paths_resolve_against_spec_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    spec = load_spec(write(tmp_path, "data: {dataset: ../d.csv}\n", "sub/s.yaml"))
    assert spec.data["dataset"] == str((tmp_path / "d.csv").resolve())


@pytest.mark.parametrize("config", sorted(p.name for p in (Path(__file__).parent.parent / "configs").glob("*.yaml")))
def test_resolved_spec_round_trips(tmp_path, config):
    spec = load_spec(Path(__file__).parent.parent / "configs" / config)
    source = parse_yaml(__import__("yaml").safe_dump(spec.to_dict()), "resolved.yaml")
    again = check_spec(source, tmp_path, "x")
    assert again.to_dict() == spec.to_dict()


@pytest.mark.parametrize("name, expected", [("../../x", "x"), ("/etc/passwd", "etc-passwd"),
                                             ("a\x00b", "a-b"), ("ok_name-1.2", "ok_name-1.2"), ("..", "run")])
def test_run_names_cannot_escape(name, expected):
    assert safe_run_name(name) == expected


def test_an_optimizer_override_on_a_spec_without_optimizer_tunes_the_default(tmp_path):
    """`--set optimizer.lr=...` on a spec that leaves the optimizer out is not 'optimizer.name: is required'."""
    path = write(tmp_path, "data: {dataset: digits}\n")
    spec = load_spec(path, ["optimizer.lr=0.01"])
    assert (spec.optimizer["name"], spec.optimizer["lr"]) == ("adam", 0.01)
    with pytest.raises(ConfigError) as info:
        load_spec(path, ["optimizer.lr=-1"])
    assert str(info.value) == "optimizer.lr: must be > 0, got -1 (--set optimizer.lr)"
    # a mapping written in the file still needs its name
    with pytest.raises(ConfigError, match=r"^optimizer.name: is required"):
        load_spec(write(tmp_path, "data: {dataset: digits}\noptimizer: {lr: 0.1}\n"), ["optimizer.lr=0.01"])


def test_override_into_string_component():
    source = parse_yaml("optimizer: sgd\n", "s.yaml")
    apply_overrides(source, ["optimizer.momentum=0.9"])
    assert source.data["optimizer"] == {"name": "sgd", "momentum": 0.9}
