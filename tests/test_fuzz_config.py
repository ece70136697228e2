"""Fuzzing the spec boundary: any document or --set either validates or is a ConfigError naming a YAML path.

Thousands of generated documents go through `parse_yaml` + `check_spec` (no data is
loaded): random YAML values, spec-shaped documents with random values, token soup that
hits the parser's error paths, and the example specs with one key removed, renamed,
retyped or set out of range. Every outcome must be a valid `Spec` or a ConfigError whose
every line has the house form; any other exception fails the test.
"""
from __future__ import annotations

import copy
import math
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from nnctl.cli import app
from nnctl.config.source import MAX_DEPTH, MAX_NODES, apply_overrides, parse_yaml
from nnctl.config.spec import (EARLY_STOPPING_PARAMS, MODEL_PARAMS, SCHEDULE_COMMON, TOP_PARAMS,
                               TRAINING_PARAMS, Spec, check_spec)
from nnctl.data import DATASETS, PARAMS_DATA
from nnctl.engine.activations import ACTIVATIONS
from nnctl.engine.base import LAYERS
from nnctl.engine.losses import LOSSES
from nnctl.engine.optimizers import OPTIMIZERS
from nnctl.engine.schedules import SCHEDULES
from nnctl.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
FILE = "spec.yaml"

# Fixed seed, no deadline (a shared 2-core box), bounded example counts: fast and the same in CI.
FUZZ = dict(derandomize=True, deadline=None, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                   HealthCheck.data_too_large])

# One line of a ConfigError: "model.layers[2].units: must be > 0, got 0 (spec.yaml line 14)",
# the same ending "(--set path)" for an override, or a parse error "spec.yaml line 3 column 5: ...".
PATH_LINE = re.compile(r"^(?P<path>\S.*?): (?P<msg>.+) \((?:spec\.yaml line (?P<line>\d+)|spec\.yaml|--set (?P<set>.+))\)$")
FILE_LINE = re.compile(r"^spec\.yaml(?: line (?P<line>\d+) column \d+)?: .+")
SET_LINE = re.compile(r"^--set .*: .+")
DUPLICATE_LINE = re.compile(r"^\S.*: duplicate key \(lines (?P<line>\d+) and \d+\)$")


def check_error(err: ConfigError, text: str) -> None:
    """Every line of `err` names a YAML path (or the file/--set item) and a line that exists."""
    lines = str(err).splitlines()
    assert lines, "empty ConfigError"
    n_lines = text.count("\n") + 1
    for line in lines:
        m = PATH_LINE.match(line) or FILE_LINE.match(line) or SET_LINE.match(line) or DUPLICATE_LINE.match(line)
        assert m, f"not a 'path: message (file line N)' line: {line!r}"
        number = m.groupdict().get("line")
        if number is not None:
            assert 1 <= int(number) <= n_lines + 1, (line, n_lines)


def outcome(text: str, overrides: list[str] | None = None, parsed=None) -> str:
    """'valid' or 'ConfigError' for one document; anything else propagates and fails the test.

    parsed: `parse_yaml(text)` done once by the caller (copied here, as overrides change it).
    """
    try:
        source = copy.deepcopy(parsed) if parsed is not None else parse_yaml(text, FILE)
        if overrides:
            apply_overrides(source, overrides)
        spec = check_spec(source, ROOT, "spec")
    except ConfigError as err:
        check_error(err, text)
        return "ConfigError"
    assert isinstance(spec, Spec)
    spec.to_dict()  # the resolved spec must be plain data
    return "valid"


# ---------------------------------------------------------------------------- strategies

KNOWN_KEYS = sorted({*TOP_PARAMS, *PARAMS_DATA, *MODEL_PARAMS, *TRAINING_PARAMS, *EARLY_STOPPING_PARAMS,
                     *SCHEDULE_COMMON, "name", "type", "units", "rate", "lr", "layers", "monitor", "step_size"})
NAMES = sorted({*DATASETS.names(), *LAYERS.names(), *ACTIVATIONS.names(), *LOSSES.names(),
                *OPTIMIZERS.names(), *SCHEDULES.names(), "val_loss", "accuracy", "float64",
                "classification", "regression", "x.csv", "../../etc/passwd"})

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-3, max_value=300), st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(NAMES), st.sampled_from(["1e-3", "1e400", "-0", ".5e2", ""]),
)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(min_size=1, max_size=8),
                 st.integers(-2, 5), st.booleans(), st.none())
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=25,
)
# spec-shaped documents hold many values; smaller ones keep generation cheap
small = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(keys, inner, max_size=3)), max_leaves=5)


def section(params) -> st.SearchStrategy:
    """A mapping with some of a section's real keys (random small) and sometimes a stray key."""
    return st.dictionaries(st.one_of(st.sampled_from(sorted(params)), st.text(max_size=6)), small, max_size=5)


def component(registry) -> st.SearchStrategy:
    return st.one_of(
        st.sampled_from(registry.names()),
        st.fixed_dictionaries({"name": st.one_of(st.sampled_from(registry.names()), scalars)},
                              optional={"lr": small, "monitor": small, "step_size": small,
                                        "interval": small, "warmup_epochs": small, "class_weights": small,
                                        "alpha": small, "gamma": small}),
        small,
    )


layer_item = st.one_of(
    st.sampled_from(LAYERS.names()),
    st.dictionaries(st.sampled_from(LAYERS.names()), st.one_of(small, section({"units": 1, "rate": 1,
                    "activation": 1, "initializer": 1, "layers": 1})), min_size=1, max_size=1),
    st.fixed_dictionaries({"type": st.one_of(st.sampled_from(LAYERS.names()), scalars)},
                          optional={"units": small, "rate": small, "layers": small}),
    small,
)

spec_shaped = st.fixed_dictionaries({}, optional={
    "name": small, "seed": small, "description": small,
    "data": st.one_of(st.fixed_dictionaries({"dataset": st.one_of(st.sampled_from(NAMES), scalars)},
                                            optional={k: small for k in PARAMS_DATA if k != "dataset"}),
                      small),
    "model": st.one_of(
        st.fixed_dictionaries({}, optional={"hidden": small, "activation": component(ACTIVATIONS),
                                            "dropout": small, "batch_norm": small, "initializer": small}),
        st.fixed_dictionaries({"layers": st.lists(layer_item, max_size=4)}),
        small),
    "loss": component(LOSSES),
    "optimizer": component(OPTIMIZERS),
    "schedule": component(SCHEDULES),
    "training": st.one_of(
        st.fixed_dictionaries({}, optional={**{k: small for k in TRAINING_PARAMS},
                                            "early_stopping": st.one_of(section(EARLY_STOPPING_PARAMS), small)}),
        small),
})

TOKENS = ["a", "data", "model", "layers", "dense", ":", ": ", "- ", "\n", "  ", "{", "}", "[", "]", ",", "'", '"',
          "&x ", "*x", "&y ", "*y", "!!python/object:os.system", "!!python/object/apply:os.system ", "!!binary ",
          "!!int ", "!!str ", "!!set ", "!!timestamp ", "!!float ", "!custom ", "? ", "<<: ", "#", "|", ">", "---",
          "...", "%YAML 1.2\n", "%TAG ! tag:x,2000:\n", "1e400", ".nan", "-.inf", "0x1F", "0o17", "~", "null",
          "yes", "\t", "\x00", "\ufeff", "\\", "é", "0", "-1", "1.5", "2001-12-14", "=", "%"]
token_soup = st.lists(st.sampled_from(TOKENS), max_size=40).map("".join)


def dump(data) -> str:
    return yaml.dump(data, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False,
                     allow_unicode=True, default_flow_style=None)


# ---------------------------------------------------------------------------- valid specs, mutated

def _base_specs() -> list[dict]:
    specs = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "configs").glob("*.yaml"))]
    specs.append({
        "name": "long", "seed": 3,
        "data": {"dataset": "blobs", "options": {"n_samples": 300}, "val_split": 0.2, "test_split": 0.1,
                 "shape": None, "task": "classification"},
        "model": {"layers": [{"dense": {"units": 16, "activation": {"name": "leaky_relu", "alpha": 0.1}}},
                             {"residual": {"layers": [{"dense": 16}, "layer_norm", {"dropout": 0.1}]}},
                             {"type": "dense", "units": 8, "initializer": "he_uniform"}, "tanh"],
                  "output_initializer": "xavier_normal"},
        "loss": {"name": "cross_entropy", "label_smoothing": 0.1},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        "schedule": {"name": "plateau", "monitor": "val_loss", "interval": "epoch"},
        "training": {"epochs": 3, "batch_size": 16, "dtype": "float64", "shuffle": False,
                     "early_stopping": {"monitor": "val_accuracy", "mode": "max", "patience": 2}},
    })
    return specs


BASES = _base_specs()


def _paths(node, prefix=()) -> list[tuple]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append(prefix + (k,))
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append(prefix + (i,))
            out += _paths(v, prefix + (i,))
    return out


BASE_PATHS = [(b, p) for b in range(len(BASES)) for p in _paths(BASES[b])]


def _parent(data, path):
    for part in path[:-1]:
        data = data[part]
    return data


OUT_OF_RANGE = [-1, 0, -0.5, 1.0, 1.5, 2**70, -(2**70), float("inf"), float("-inf"), float("nan"), 1e400,
                "", "not-a-name", "relu", "-1", True, False, 10**12]


@st.composite
def mutated(draw):
    """(op, path, text): one example spec with one key removed, renamed, retyped or set out of range."""
    b, path = draw(st.sampled_from(BASE_PATHS))
    data = copy.deepcopy(BASES[b])
    parent, last = _parent(data, path), path[-1]
    op = draw(st.sampled_from(["remove", "rename", "retype", "out_of_range"]))
    if op == "remove":
        del parent[last]
    elif op == "rename":
        if isinstance(parent, dict):
            new = draw(st.one_of(st.sampled_from([f"{last}s", str(last).upper(), str(last)[:-1] or "x", f"_{last}"]),
                                 st.sampled_from(KNOWN_KEYS), st.text(min_size=1, max_size=6)))
            value = parent.pop(last)
            parent[new] = value
        else:  # a list item has no key; renaming a layer's type is the same kind of slip
            parent[last] = {"dens": {"units": 4}} if isinstance(parent[last], dict) else f"{parent[last]}x"
    elif op == "retype":
        old = parent[last]
        parent[last] = draw(values.filter(lambda v: type(v) is not type(old)))
    else:
        parent[last] = draw(st.sampled_from(OUT_OF_RANGE))
    return op, path, dump(data)


# ---------------------------------------------------------------------------- tests

def test_example_specs_are_valid_before_mutation():
    # the mutation test is only meaningful if its starting points validate
    for base in BASES:
        assert outcome(dump(base)) == "valid", base.get("name")


def test_random_yaml_values(record_counts):
    counts = Counter()

    @settings(max_examples=300, **FUZZ)
    @given(values)
    def run(data):
        counts[outcome(dump(data))] += 1

    run()
    record_counts("config: random YAML values", counts)
    assert sum(counts.values()) >= 250


def test_spec_shaped_documents(record_counts):
    counts = Counter()

    @settings(max_examples=250, **FUZZ)
    @given(spec_shaped)
    def run(data):
        counts[outcome(dump(data))] += 1

    run()
    record_counts("config: spec-shaped documents", counts)
    assert sum(counts.values()) >= 200
    assert counts["valid"] > 0 and counts["ConfigError"] > 0


def test_token_soup_and_raw_text(record_counts):
    counts = Counter()

    @settings(max_examples=800, **FUZZ)
    @given(st.one_of(token_soup, st.text(max_size=60)))
    def run(text):
        counts[outcome(text)] += 1

    run()
    record_counts("config: token soup / raw text", counts)
    assert sum(counts.values()) >= 700


def test_valid_specs_with_one_key_broken(record_counts):
    counts = Counter()

    @settings(max_examples=700, **FUZZ)
    @given(mutated())
    def run(case):
        op, path, text = case
        counts[f"{op} {outcome(text)}"] += 1

    run()
    record_counts("config: mutated example specs", counts)
    assert sum(counts.values()) >= 600
    for op in ("remove", "rename", "retype", "out_of_range"):
        assert counts[f"{op} ConfigError"] > 0, counts


SET_KEYS = sorted({".".join(str(p) for p in path) for _, path in BASE_PATHS} | {"a..b", "", ".", "x.", "\x00",
                                                                               "data.dataset.x", "model.hidden.0"})


@st.composite
def override(draw):
    key = draw(st.one_of(st.sampled_from(SET_KEYS), st.text(max_size=8)))
    value = draw(st.one_of(values.map(lambda v: dump(v).strip()), token_soup, st.text(max_size=10)))
    return draw(st.sampled_from([f"{key}={value}", key, f"{key}=", f"={value}"]))


def test_set_overrides(record_counts):
    counts = Counter()
    text = (ROOT / "configs" / "digits.yaml").read_text()
    parsed = parse_yaml(text, FILE)

    @settings(max_examples=500, **FUZZ)
    @given(st.lists(override(), min_size=1, max_size=3))
    # valid overrides are rare among random ones, and which are drawn shifts whenever a key or
    # a name is added to the vocabularies: one known-valid case keeps both outcomes exercised
    @example(["optimizer.lr=0.01", "model.hidden=[32]"])
    def run(items):
        counts[outcome(text, items, parsed)] += 1

    run()
    record_counts("config: --set overrides", counts)
    assert sum(counts.values()) >= 450
    assert counts["valid"] > 0 and counts["ConfigError"] > 0


# ---------------------------------------------------------------------------- exact messages

def _error(text: str, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        source = parse_yaml(text, FILE)
        apply_overrides(source, list(overrides))
        check_spec(source, ROOT, "spec")
    return str(info.value)


def test_self_referencing_alias_is_refused():
    assert _error("data: {dataset: xor}\nmodel: &m {layers: [{residual: {layers: *m}}]}\n") == (
        "model.layers[0].residual.layers: an alias refers to the node that contains it (spec.yaml line 2)")


def test_alias_bomb_is_refused_quickly():
    # nine aliases of nine aliases ... : 9**7 values from eight short lines
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 8):
        ref = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([ref] * 9)}]")
    message = _error("\n".join(lines) + "\n")
    # a5 stands for 9**6 values, the first over the limit
    assert message == f"a5: expands to more than {MAX_NODES:,} values (aliases repeated inside aliases?) (spec.yaml line 6)"


def test_deep_nesting_is_refused():
    assert _error("[" * 3000 + "]" * 3000) == f"spec.yaml: nested more than {MAX_DEPTH} levels deep"
    deep = "data: {dataset: xor}\nmodel: {layers: " + "[{residual: {layers: " * 30 + "[]" + "}}]" * 30 + "}\n"
    message = _error(deep)
    assert message.startswith("model.layers[0].residual.layers[0].residual.layers") and message.endswith(
        f"nested more than {MAX_DEPTH} levels deep (spec.yaml line 2)")


def test_recursive_set_value_is_refused():
    assert _error("data: {dataset: xor}\n", ["model.layers=&a [{residual: {layers: *a}}]"]) == (
        "--set model.layers=&a [{residual: {layers: *a}}]: [0].residual.layers: an alias refers to the node "
        "that contains it (value line 1)")


@pytest.mark.parametrize("text, message", [
    ("seed: .nan\ndata: {dataset: xor}\n", "seed: must be an integer, got nan (spec.yaml line 1)"),
    ("data: {dataset: xor}\noptimizer: {name: adam, lr: 1e400}\n",
     "optimizer.lr: must be a finite number, got inf (spec.yaml line 2)"),
    ("data: {dataset: xor}\nmodel: {hidden: [4, -1]}\n", "model.hidden[1]: must be > 0, got -1 (spec.yaml line 2)"),
    ("data:\n  datset: xor\n", "data.datset: unknown key 'datset'; did you mean 'dataset'? valid: "
     + ", ".join(sorted(PARAMS_DATA)) + " (spec.yaml line 2)\ndata.dataset: is required (spec.yaml line 1)"),
])
def test_exact_messages_for_typical_breakage(text, message):
    assert _error(text) == message


def test_bad_set_through_the_cli_is_one_line_exit_1(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("data: {dataset: xor}\n")
    runner = CliRunner()
    for item, expected in [
        ("training.epochs=0", "error: training.epochs: must be >= 1, got 0 (--set training.epochs)"),
        ("x=&a [*a]", "error: --set x=&a [*a]: [0]: an alias refers to the node that contains it (value line 1)"),
        ("optimizer", "error: --set optimizer: expected KEY=VALUE, e.g. optimizer.lr=0.01"),
    ]:
        res = runner.invoke(app, ["config", str(spec), "--set", item])
        assert res.exit_code == 1, res.output
        assert res.output.strip() == expected
