"""Sweep specs: parse and check a sweep YAML, expand it into trials (grid or random), validate each.

A sweep spec names a base train spec (a file, or inline under `base:`), the hyperparameters
to vary as dotted paths into that train spec, how to pick values (`method: grid | random`)
and the metric that ranks the trials:

    name: digits-lr-width
    base: ../digits.yaml
    method: grid
    parameters:
      optimizer.lr: [0.0003, 0.001]
      model.hidden: {values: [[64], [128, 64]]}
    metric: val_accuracy
    goal: maximize

Every problem is a ConfigError line naming the YAML path and line, like train specs. Each
trial's train spec is the resolved base spec (every default filled in) with the trial's
values set, validated exactly as `nnctl train` would before any trial starts.

Notes
-----
Grid: the Cartesian product of the value lists in declaration order (the last parameter
varies fastest), so a grid with value counts n_1..n_p has prod(n_i) trials.
Random: one Generator from `seed`; trial k draws its values after trials 0..k-1, each
parameter in declaration order, so the first k trials do not depend on `trials`.
  uniform      x ~ U[min, max)
  log_uniform  x = exp(u), u ~ U[log min, log max)   (min > 0; equal mass per decade)
  int_uniform  x ~ uniform over the integers min..max, both included
  choice       one of `values`, each with probability 1/len(values)
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnctl.config.check import Checker, describe
from nnctl.config.source import KeyPath, Source, format_path, read_spec
from nnctl.hparams import Param, unknown_name_message
from nnctl.errors import ConfigError, NnctlError

METHODS = ("grid", "random", "tpe", "gp", "cmaes", "nsga2")
# Methods whose next trial depends on the results so far: they run on Optuna (the search extra).
MODEL_BASED = ("tpe", "gp", "cmaes", "nsga2")
# Each trial is a training run and a folder: more than this is a typo (or an attack), and
# a grid is counted before it is expanded, so a huge one is refused at once.
MAX_TRIALS = 10_000
GOALS = ("maximize", "minimize")
DISTRIBUTIONS = ("choice", "int_uniform", "log_uniform", "uniform")
CONTINUOUS = ("uniform", "log_uniform", "int_uniform")

SWEEP_PARAMS: dict[str, Param] = {
    "name": Param("str", None, nullable=True, doc="sweep name; runs/<name>-<timestamp>/ (default: the file's stem)"),
    "description": Param("str", None, nullable=True, doc="free text kept with the sweep"),
    "base": Param("any", nullable=True, doc="the train spec to vary: a path relative to this file, or the spec inline"),
    "method": Param("str", "grid", choices=METHODS,
                    doc="grid: every combination; random: `trials` samples; tpe | gp | cmaes | nsga2: Optuna's "
                        "samplers, which learn from the finished trials"),
    "trials": Param("int", None, ge=1, le=MAX_TRIALS, nullable=True,
                    doc=f"number of trials (every method but grid; at most {MAX_TRIALS:,})"),
    "seed": Param("int", 0, ge=0, doc="seeds the sampling of trial values (not the trainings)"),
    "pruner": Param("any", None, nullable=True,
                    doc="stop hopeless trials early: {name: none | median | asha | hyperband, ...} (Optuna methods)"),
    "parameters": Param("mapping", doc="dotted train-spec path -> list of values or {distribution, min, max}"),
    "metric": Param("any", doc="the logged metric that ranks trials, e.g. val_accuracy or test_loss "
                               "(nsga2: a list of metrics)"),
    "goal": Param("any", None, nullable=True,
                  doc="maximize or minimize the metric (default: maximize accuracy/r2, minimize the rest); "
                      "a list for several metrics"),
}

_PARAMETER_KEYS = {
    None: ("values",),
    "choice": ("distribution", "values"),
    "uniform": ("distribution", "min", "max"),
    "log_uniform": ("distribution", "min", "max"),
    "int_uniform": ("distribution", "min", "max"),
}

# PyYAML reads `1e-3` (no dot) as a string; users mean the number, as in train specs.
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")

# Keys that switch a component: its other options then come from the base file as written,
# not from the old component's resolved defaults (which the new one may not accept).
_SWITCHES = {("optimizer", "name"): ("optimizer",), ("schedule", "name"): ("schedule",),
             ("loss", "name"): ("loss",), ("data", "dataset"): ("data", "options")}


@dataclass
class Parameter:
    """One swept hyperparameter: a dotted path and either a value list or a distribution."""

    name: str                       # as written, e.g. "optimizer.lr"
    path: KeyPath                   # ("optimizer", "lr"); list indices as ints
    distribution: str               # "choice" (a value list) | "uniform" | "log_uniform" | "int_uniform"
    values: list[Any] = field(default_factory=list)
    low: float | int | None = None
    high: float | int | None = None

    def sample(self, rng: np.random.Generator) -> Any:
        if self.distribution == "uniform":
            return float(rng.uniform(self.low, self.high))
        if self.distribution == "log_uniform":
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        if self.distribution == "int_uniform":
            return int(rng.integers(self.low, self.high, endpoint=True))
        return copy.deepcopy(self.values[int(rng.integers(len(self.values)))])


@dataclass
class SweepSpec:
    """A checked sweep spec; `base` is the resolved base train spec (plain data, every default)."""

    name: str
    description: str | None
    method: str
    trials: int | None
    seed: int
    parameters: list[Parameter]
    metric: str                     # the first (ranking) metric
    goal: str
    base: dict[str, Any]            # Spec.to_dict() of the base train spec
    base_raw: dict[str, Any]        # the base as written (component options for switches)
    base_dir: Path                  # relative paths in trial specs resolve against this
    base_label: str                 # "digits.yaml" or "inline base"
    source: Source
    path: Path | None = None        # the sweep file
    metrics: list[str] = field(default_factory=list)   # every objective (nsga2: several), metric first
    goals: list[str] = field(default_factory=list)
    pruner: Any = None              # nnctl.sweep.search.PrunerSpec, or None (no pruning)
    data_shape: Any = None          # nnctl.sweep.memory.DataShape of the base's data (for sizing trials)

    @property
    def model_based(self) -> bool:
        return self.method in MODEL_BASED

    def where(self, path: KeyPath) -> str:
        return self.source.where(path)


@dataclass
class Trial:
    """One point of the sweep: its values and its validated, resolved train spec."""

    index: int
    overrides: dict[str, Any]       # parameter name -> value, in declaration order
    config: dict[str, Any]          # Spec.to_dict(): what trials/<index>/spec.yaml holds
    spec: Any = field(default=None, repr=False, compare=False)   # the checked Spec (sizing reads it)

    @property
    def config_hash(self) -> str:
        return config_hash(self.config)


# -- reading ------------------------------------------------------------------------------

def load_sweep(path: str | Path) -> SweepSpec:
    """Read and check a sweep file (and its base train spec); raise one ConfigError listing every problem."""
    path = Path(path)
    source = read_spec(path)
    return check_sweep(source, path.resolve().parent, path.stem, path)


def sweep_from_dict(data: dict[str, Any], base_dir: Path | str = ".", filename: str = "<sweep>") -> SweepSpec:
    """Check a sweep given as plain data (tests, the benchmark)."""
    source = Source(data=copy.deepcopy(data), filename=filename)
    return check_sweep(source, Path(base_dir), str(data.get("name") or "sweep"))


def check_sweep(source: Source, folder: Path, default_name: str, path: Path | None = None) -> SweepSpec:
    chk = Checker(source)
    raw = source.data
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source.filename}: a sweep spec must be a mapping, got {describe(raw)}")
    top = chk.section((), raw, SWEEP_PARAMS, {})
    chk.raise_if_any()

    base, base_raw, base_dir, base_label, exp_info, data_shape = _load_base(chk, top["base"], folder, source)
    params = _parse_parameters(chk, top["parameters"], top["method"])

    method = top["method"]
    missing = _missing_packages(method)
    if missing:
        chk.error(("method",), missing)
    if method != "grid" and top["trials"] is None:
        chk.error(("trials",), f"is required for method {method}")
    if method == "grid" and top["trials"] is not None:
        chk.error(("trials",), "not used by method grid (a grid runs every combination)")
    if method == "grid" and params:
        count = grid_size(params)
        if count > MAX_TRIALS:
            chk.error(("parameters",), f"the grid has {count:,} combinations, more than the {MAX_TRIALS:,} "
                                       f"trials a sweep may have")
    for p in params:
        _check_path(chk, p, base, params)
    task, has_val, has_test = exp_info
    valid = metrics_for(task, has_val, has_test)
    metrics = _parse_metrics(chk, top["metric"], method)
    for at, metric in metrics:
        if metric not in valid:
            why = ""
            if metric.startswith("val_") and not has_val:
                why = " (there is no validation split: set data.val_split in the base spec)"
            elif metric.startswith("test_") and not has_test:
                why = " (there is no test split: set data.test_split in the base spec)"
            chk.error(at, unknown_name_message("metric", metric, valid) + f"; it is never logged{why}")
    names = [m for _, m in metrics]
    goals = _parse_goals(chk, top["goal"], names)
    pruner = _parse_pruner(chk, top["pruner"], method, names)
    chk.raise_if_any()

    return SweepSpec(name=top["name"] or default_name, description=top["description"], method=method,
                     trials=top["trials"], seed=top["seed"], parameters=params, metric=names[0], goal=goals[0],
                     base=base, base_raw=base_raw, base_dir=base_dir, base_label=base_label,
                     source=source, path=path, metrics=names, goals=goals, pruner=pruner, data_shape=data_shape)


def _missing_packages(method: str) -> str | None:
    """Why `method` cannot run here (an extra not installed), or None; checked before anything is written."""
    from importlib.util import find_spec
    if method not in MODEL_BASED:
        return None
    if find_spec("optuna") is None:
        return f'method {method} runs on Optuna, which is not installed: pip install -e ".[search]"'
    if method == "gp" and (find_spec("torch") is None or find_spec("scipy") is None):
        return "method gp needs torch and scipy (Optuna's GPSampler): pip install -e \".[search-gp]\""
    if method == "cmaes" and find_spec("cmaes") is None:
        return 'method cmaes needs the cmaes package: pip install -e ".[search]"'
    return None


def _parse_metrics(chk: Checker, raw: Any, method: str) -> list[tuple[KeyPath, str]]:
    if isinstance(raw, str):
        return [(("metric",), raw)]
    if isinstance(raw, list) and raw and all(isinstance(m, str) for m in raw):
        if len(raw) > 1 and method != "nsga2":
            chk.error(("metric",), f"several metrics need method nsga2 (a multi-objective search); "
                                   f"method {method} ranks by one metric")
            return [(("metric",), raw[0])]
        if len(set(raw)) != len(raw):
            chk.error(("metric",), "lists a metric twice")
        return [(("metric", i), m) for i, m in enumerate(raw)]
    chk.error(("metric",), f"must be a metric name (or, for nsga2, a list of names), got {describe(raw)}")
    return [(("metric",), "loss")]


def _parse_goals(chk: Checker, raw: Any, metrics: list[str]) -> list[str]:
    if raw is None:
        return [default_goal(m) for m in metrics]
    goals = raw if isinstance(raw, list) else [raw]
    if len(goals) != len(metrics):
        chk.error(("goal",), f"gives {len(goals)} goal(s) for {len(metrics)} metric(s); one per metric, in order")
        return [default_goal(m) for m in metrics]
    for i, g in enumerate(goals):
        if g not in GOALS:
            at = ("goal", i) if isinstance(raw, list) else ("goal",)
            chk.error(at, unknown_name_message("goal", str(g), list(GOALS)))
    return [g if g in GOALS else default_goal(m) for g, m in zip(goals, metrics)]


def _parse_pruner(chk: Checker, raw: Any, method: str, metrics: list[str]):
    """`pruner:` as a PrunerSpec (None when absent or `none`); options checked per pruner."""
    from nnctl.sweep.search import PRUNER_OPTIONS, PRUNERS, PrunerSpec
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        chk.error(("pruner",), f"must be a mapping like {{name: median, warmup_epochs: 5}}, got {describe(raw)}")
        return None
    name = raw.get("name")
    if name not in PRUNERS:
        chk.error(("pruner", "name") if "name" in raw else ("pruner",),
                  unknown_name_message("pruner", str(name), list(PRUNERS)) if name is not None
                  else f"needs a name: {', '.join(PRUNERS)}")
        return None
    bad = False
    values = {}
    for key, value in raw.items():
        if key == "name":
            continue
        if key not in PRUNER_OPTIONS[name]:
            valid = ", ".join(PRUNER_OPTIONS[name]) or "none"
            chk.error(("pruner", key), f"not an option of the {name} pruner; valid: {valid}")
            bad = True
            continue
        low = 2 if key == "reduction_factor" else (1 if key in ("min_epochs", "max_epochs") else 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            chk.error(("pruner", key), f"must be an integer >= {low}, got {describe(value)}")
            bad = True
            continue
        values[key] = value
    if name == "none" or bad:
        return None
    if method not in MODEL_BASED:
        chk.error(("pruner",), f"pruning needs an Optuna method ({', '.join(MODEL_BASED)}); method {method} "
                               f"runs every trial to its end")
    elif len(metrics) > 1:
        chk.error(("pruner",), "Optuna cannot prune a search over several metrics; drop the pruner or keep one metric")
    elif metrics[0].startswith("test_"):
        chk.error(("pruner",), f"pruning compares the metric after every epoch, and {metrics[0]} is computed "
                               f"once, after training; rank by a per-epoch metric (e.g. "
                               f"{metrics[0].replace('test_', 'val_', 1)})")
    return PrunerSpec(name=name, **values)


def grid_size(params: list[Parameter]) -> int:
    """How many trials the grid over `params` has (counted, not expanded)."""
    return math.prod(len(p.values) for p in params)


def metrics_for(task: str, has_val: bool, has_test: bool) -> list[str]:
    """Metrics a run of this task logs: per-epoch ones (the history) and, with a test split, test_*."""
    from nnctl.engine.metrics import metric_names
    names = metric_names(task, has_val)
    if has_test:
        names += [f"test_{m}" for m in metric_names(task, False)]
    return names


def default_goal(metric: str) -> str:
    from nnctl.engine.metrics import auto_mode
    return "maximize" if auto_mode(metric) == "max" else "minimize"


def _load_base(chk: Checker, base: Any, folder: Path, source: Source):
    """The base train spec: validated, resolved, and its data loaded once for task and splits."""
    from nnctl.config.spec import check_spec
    from nnctl.sweep.memory import DataShape
    from nnctl.training.experiment import prepare
    if isinstance(base, str) and (not base.strip() or not base.isprintable() or len(base) > 1024):
        # a multi-line text or a whole file pasted under base: is not a path; quote only its start
        chk.error(("base",), f"must be a train spec file (a path) or an inline train spec, got {describe(base)}")
        chk.raise_if_any()
    if isinstance(base, str):
        base_path = folder / base
        try:
            base_source = read_spec(base_path)
        except ConfigError as err:
            chk.error(("base",), "; ".join(err.problems))
            chk.raise_if_any()
        base_dir = base_path.resolve().parent
        label = base_path.name
        default_name = base_path.stem
    elif isinstance(base, dict):
        # Inline base: keep the sweep file's lines so errors point into it.
        lines = {k[1:]: v for k, v in source.lines.items() if k[:1] == ("base",)}
        base_source = Source(data=copy.deepcopy(base), filename=source.filename, lines=lines)
        base_dir, label, default_name = folder, "inline base", "run"
    else:
        chk.error(("base",), f"must be a train spec file (a path) or an inline train spec, got {describe(base)}")
        chk.raise_if_any()
    spec = check_spec(base_source, base_dir, default_name)
    # Loading the data once tells the task and which splits exist, so a metric that would
    # never be logged is caught here, and a bad data file fails once rather than per trial.
    exp = prepare(spec)
    d = exp.dataset
    info = (d.task, d.val is not None and len(d.val) > 0, d.test is not None and len(d.test) > 0)
    raw = base_source.data if isinstance(base_source.data, dict) else {}
    return spec.to_dict(), raw, base_dir, label, info, DataShape.of(d)


def _number(value: Any) -> Any:
    if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        return float(value)
    return value


def _parse_path(name: str) -> KeyPath | None:
    parts = name.split(".")
    if not all(parts):
        return None
    return tuple(int(p) if p.isdigit() else p for p in parts)


def _parse_parameters(chk: Checker, raw: dict[str, Any], method: str) -> list[Parameter]:
    if not raw:
        chk.error(("parameters",), "must list at least one parameter (a dotted train-spec path)")
        return []
    out: list[Parameter] = []
    for name, spec in raw.items():
        at = ("parameters", name)
        path = _parse_path(str(name))
        if path is None:
            chk.error(at, f"'{name}' is not a dotted path like optimizer.lr (empty part)")
            continue
        p = _parse_one(chk, at, str(name), path, spec, method)
        if p is not None:
            out.append(p)
    # Overlapping paths would make the result depend on the order they are applied in.
    for a, b in itertools.combinations(out, 2):
        short, long_ = (a, b) if len(a.path) <= len(b.path) else (b, a)
        if long_.path[:len(short.path)] == short.path:
            chk.error(("parameters", long_.name),
                      f"overlaps parameters.{short.name}{chk.source.where(('parameters', short.name))}; "
                      f"sweep one or the other")
    return out


def _parse_one(chk: Checker, at: KeyPath, name: str, path: KeyPath, spec: Any, method: str) -> Parameter | None:
    if isinstance(spec, list):
        spec = {"values": spec}
    elif not isinstance(spec, dict):
        chk.error(at, f"must be a list of values, {{values: [...]}} or {{distribution: ..., min: ..., max: ...}}, "
                      f"got {describe(spec)}")
        return None
    dist = spec.get("distribution")
    if dist is not None and dist not in DISTRIBUTIONS:
        chk.error(at + ("distribution",), unknown_name_message("distribution", dist, list(DISTRIBUTIONS)))
        return None
    if dist is None and "values" not in spec:
        chk.error(at, "needs values: [...] or a distribution (uniform, log_uniform, int_uniform, choice)")
        return None
    allowed = _PARAMETER_KEYS[dist]
    bad = False
    for key in spec:
        if key not in allowed:
            what = f"a {dist} distribution" if dist else "a value list"
            chk.error(at + (key,), f"not used by {what}; valid: {', '.join(allowed)}")
            bad = True
    if bad:
        return None
    if dist in (None, "choice"):
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            got = "an empty list" if values == [] else describe(values)
            chk.error(at + ("values",), f"must be a non-empty list of values, got {got}")
            return None
        return Parameter(name, path, "choice", values=[_number(v) for v in values])

    if method == "grid":
        chk.error(at, f"a {dist} distribution needs method: random (or tpe, gp, cmaes, nsga2); "
                      f"a grid takes a list of values")
        return None
    bounds = {}
    for key in ("min", "max"):
        if key not in spec:
            chk.error(at + (key,), f"is required for a {dist} distribution")
            continue
        value = _number(spec[key])
        want_int = dist == "int_uniform"
        ok = (isinstance(value, int) if want_int else isinstance(value, (int, float))) and not isinstance(value, bool)
        if not ok:
            chk.error(at + (key,), f"must be {'an integer' if want_int else 'a number'} for {dist}, "
                                   f"got {describe(value)}")
            continue
        if isinstance(value, float) and not math.isfinite(value):
            chk.error(at + (key,), f"must be finite, got {value}")
            continue
        if dist == "log_uniform" and value <= 0:
            chk.error(at + (key,), f"must be > 0 for log_uniform, got {value}")
            continue
        bounds[key] = value if want_int else float(value)
    if len(bounds) < 2:
        return None
    if not bounds["min"] < bounds["max"]:
        chk.error(at, f"min must be < max, got min {bounds['min']} and max {bounds['max']}")
        return None
    return Parameter(name, path, dist, low=bounds["min"], high=bounds["max"])


def _check_path(chk: Checker, p: Parameter, base: dict[str, Any], params: list[Parameter]) -> None:
    """The path must exist in the resolved base spec, which lists every key the schema knows."""
    if p.path[0] in ("name", "description"):
        chk.error(("parameters", p.name), f"the sweep sets each trial's {p.path[0]} itself; "
                                          f"vary the train spec, not its {p.path[0]}")
        return
    # A key under a component whose name is swept too is checked per trial instead:
    # with optimizer.name [sgd, adam], optimizer.momentum is valid for sgd only.
    for switch, target in _SWITCHES.items():
        if p.path[:len(target)] == target and p.path != switch and any(q.path == switch for q in params):
            return
    node: Any = base
    for depth, key in enumerate(p.path):
        prefix = p.path[:depth]
        here = format_path(prefix) if prefix else "the train spec"
        if isinstance(node, dict):
            if key not in node:
                keys = sorted(str(k) for k in node)
                import difflib
                close = difflib.get_close_matches(str(key), keys, n=1, cutoff=0.5)
                hint = f"did you mean '{close[0]}'? " if close else ""
                comp = f" ({node['name']})" if isinstance(node.get("name"), str) and prefix else ""
                chk.error(("parameters", p.name),
                          f"not in the train spec: {here}{comp} has no key '{key}'; {hint}valid: {', '.join(keys)}")
                return
            node = node[key]
        elif isinstance(node, list):
            if not isinstance(key, int) or key >= len(node):
                chk.error(("parameters", p.name), f"not in the train spec: {here} is a list of {len(node)} items "
                                                  f"(index 0..{len(node) - 1})")
                return
            node = node[key]
        elif node is None:
            chk.error(("parameters", p.name), f"not in the train spec: {here} is null in the base spec; "
                                              f"set it there, or sweep {here} as a whole")
            return
        else:
            chk.error(("parameters", p.name), f"not in the train spec: {here} is {describe(node)}, not a mapping")
            return


# -- expansion ----------------------------------------------------------------------------

def expand(sweep: SweepSpec) -> list[dict[str, Any]]:
    """The value assignment of every trial, in trial order: [{parameter name: value}, ...]."""
    params = sweep.parameters
    count = grid_size(params) if sweep.method == "grid" else (sweep.trials or 0)
    if count > MAX_TRIALS:
        raise ConfigError(f"{sweep.source.filename}: {count:,} trials, more than the {MAX_TRIALS:,} a sweep may have")
    if sweep.model_based:
        return []   # asked from the sampler one at a time, as workers free up (nnctl.sweep.study)
    if sweep.method == "grid":
        return [dict(zip((p.name for p in params), copy.deepcopy(combo)))
                for combo in itertools.product(*(p.values for p in params))]
    rng = np.random.default_rng(sweep.seed)
    return [{p.name: p.sample(rng) for p in params} for _ in range(sweep.trials or 0)]


def apply_values(sweep: SweepSpec, overrides: dict[str, Any]) -> dict[str, Any]:
    """The resolved base with one trial's values set (component switches keep written options)."""
    data = copy.deepcopy(sweep.base)
    by_name = {p.name: p for p in sweep.parameters}
    for name, value in overrides.items():
        path = by_name[name].path
        if path in _SWITCHES:
            target = _SWITCHES[path]
            current = _get(data, path)
            if value != current:
                written = _get(sweep.base_raw, target)
                if target == ("data", "options"):
                    data["data"]["options"] = copy.deepcopy(written) if isinstance(written, dict) else {}
                else:
                    options = written if isinstance(written, dict) else {}
                    data[target[0]] = {k: copy.deepcopy(v) for k, v in options.items() if k != "name"}
    for name, value in overrides.items():
        _set(data, by_name[name].path, copy.deepcopy(value))
    return data


def _get(data: Any, path: KeyPath) -> Any:
    for key in path:
        if isinstance(data, dict):
            data = data.get(key)
        elif isinstance(data, list) and isinstance(key, int) and key < len(data):
            data = data[key]
        else:
            return None
    return data


def _set(data: Any, path: KeyPath, value: Any) -> None:
    for key in path[:-1]:
        nxt = data[key] if isinstance(data, list) else data.get(key)
        if nxt is None:
            nxt = data[key] = {}
        data = nxt
    data[path[-1]] = value


def describe_values(overrides: dict[str, Any]) -> str:
    """"optimizer.lr=0.001 model.hidden=[128, 64]" (compact, for messages and the run's description)."""
    return " ".join(f"{k}={format_value(v)}" for k, v in overrides.items())


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(", ", ": "))
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def build_trial(sweep: SweepSpec, index: int, overrides: dict[str, Any]) -> Trial:
    """One trial's validated train spec; a ConfigError (one line per problem) when it is not valid."""
    from nnctl.config.spec import check_spec
    lines = {p.path: sweep.source.lines[("parameters", p.name)]
             for p in sweep.parameters if ("parameters", p.name) in sweep.source.lines}
    data = apply_values(sweep, overrides)
    data["name"] = f"{sweep.name}-{index}"
    data["description"] = f"sweep {sweep.name} trial {index}: {describe_values(overrides)}"
    # Errors at a swept path point at that parameter's line in the sweep file.
    source = Source(data=data, filename=sweep.source.filename, lines=lines)
    spec = check_spec(source, sweep.base_dir, data["name"])
    return Trial(index, overrides, spec.to_dict(), spec)


def build_trials(sweep: SweepSpec) -> list[Trial]:
    """Expand and validate every trial's train spec; raise one ConfigError for all bad trials."""
    trials: list[Trial] = []
    problems: dict[str, list[int]] = {}
    assignments = expand(sweep)
    for index, overrides in enumerate(assignments):
        try:
            trials.append(build_trial(sweep, index, overrides))
        except NnctlError as err:
            for line in err.problems:
                problems.setdefault(line, []).append(index)
            continue
    if problems:
        out = []
        for line, indices in problems.items():
            shown = ", ".join(str(i) for i in indices[:8]) + (", ..." if len(indices) > 8 else "")
            if len(indices) == 1:
                out.append(f"trial {shown} ({describe_values(assignments[indices[0]])}): {line}")
            else:
                out.append(f"trials {shown}: {line}")
        raise ConfigError(*out)
    return trials


# -- identity of a trial's config ---------------------------------------------------------

def config_hash(config: dict[str, Any]) -> str:
    """A fingerprint of a resolved train spec, ignoring its name and description.

    Resume compares a trial's snapshotted spec with the config.yaml its run wrote, so a run
    counts as done only when it trained exactly that configuration. `training.threads` is left
    out: a trial's snapshot leaves it open (null) and its run records the count it chose.
    """
    body = {k: v for k, v in config.items() if k not in ("name", "description")}
    if isinstance(body.get("training"), dict):
        body["training"] = {k: v for k, v in body["training"].items() if k != "threads"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
