"""`nnctl bench --defaults`: the panel of small tasks that decides nnctl's defaults.

Most users never set the initializer: the default is the model they get. This panel trains a
dozen small tasks that nnctl ships or generates, each with a few seeds, under each candidate
default, through the real `nnctl train` path (validation, early stopping, best weights, test
split), and reports the test metric's mean and spread per (task, candidate). The README's
"Defaults" table is this panel's output; rerun it before changing a default.

Candidates come in studies, one default each (`--study`). An initializer candidate swaps a
value of the declared table `nnctl.engine.initializers.DEFAULT_INITIALIZERS` for the duration
of its runs and puts it back, so every layer type that follows the table (dense, conv, ...)
is covered without naming the initializer in any spec. A bias candidate likewise swaps the
declared default of `bias_initializer` (`DEFAULT_BIAS_INITIALIZER`, in every layer that
declares one: dense, conv, recurrent). Any other candidate gives spec values
(dotted keys) that stand in for a default: each is set only where the task's spec leaves the
key out, because a task that sets it (binary inputs unstandardized, a GRU with more patience)
does so for its own reason and would not see the default anyway.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import yaml

from nnctl.console import console

# name -> spec (without seed/name). Small and quick on 2 cores; each stops early on val_loss.
# Patience is left to the default so that the patience study measures it.
ES = {"monitor": "val_loss", "restore_best": True}
TASKS: dict[str, dict[str, Any]] = {
    "digits-mlp": {"data": {"dataset": "digits"}, "model": {"hidden": [128, 64]},
                   "training": {"epochs": 40, "early_stopping": ES}},
    "iris": {"data": {"dataset": "iris", "test_split": 0.3}, "model": {"hidden": [32]},
             "training": {"epochs": 60, "batch_size": 16, "early_stopping": ES}},
    "spirals": {"data": {"dataset": "spirals"}, "model": {"hidden": [64, 64]},
                "training": {"epochs": 60, "early_stopping": ES}},
    "moons": {"data": {"dataset": "moons", "options": {"noise": 0.3}}, "model": {"hidden": [32, 32]},
              "training": {"epochs": 40, "early_stopping": ES}},
    "circles": {"data": {"dataset": "circles"}, "model": {"hidden": [32, 32]},
                "training": {"epochs": 40, "early_stopping": ES}},
    # Many noisy features and few rows per class: the overfitting regime where the issue saw
    # the initializer cost 4-5 points.
    "blobs-40d": {"data": {"dataset": "blobs", "options": {"n_samples": 1500, "centers": 10, "n_features": 40,
                                                            "cluster_std": 12.0}},
                  "model": {"hidden": [256, 256]}, "training": {"epochs": 40, "early_stopping": ES}},
    "sine": {"data": {"dataset": "sine"}, "model": {"hidden": [64, 64]},
             "training": {"epochs": 60, "early_stopping": ES}},
    "parity-8": {"data": {"dataset": "parity", "options": {"n_samples": 1500, "length": 8}, "shape": [8],
                          "standardize": False},
                 "model": {"hidden": [64, 64]}, "training": {"epochs": 60, "early_stopping": ES}},
    "cnn-digits": {"data": {"dataset": "digits", "shape": [1, 8, 8], "standardize": "global"},
                   "model": {"layers": [{"conv2d": {"filters": 16, "kernel_size": 3, "padding": "same",
                                                    "activation": "relu"}},
                                        {"maxpool2d": {"size": 2}}, "flatten"]},
                   "training": {"epochs": 25, "early_stopping": ES}},
    "gru-marked-xor": {"data": {"dataset": "marked_xor", "options": {"n_samples": 3000, "length": 12},
                                "standardize": False},
                       "model": {"layers": [{"gru": {"units": 16}}]},
                       "optimizer": {"name": "adam", "lr": 0.003},
                       # marked XOR sits on a plateau before it is solved: more patience
                       "training": {"epochs": 40, "early_stopping": {**ES, "patience": 20}}},
    # CSV tables written by `GENERATED` below: mixed scales and categorical columns, the shape
    # of data users bring; "dataset" is filled in with the generated file.
    "table-categorical": {"data": {"target": "label"}, "model": {"hidden": [64, 64]},
                          "training": {"epochs": 40, "early_stopping": ES}},
    "table-regression": {"data": {"target": "price"}, "model": {"hidden": [64, 64]},
                         "training": {"epochs": 40, "early_stopping": ES}},
}


def _table(rng: np.random.Generator, n: int) -> tuple[dict[str, Any], np.ndarray]:
    """Columns of a customer-like table and a latent score that mixes numbers and categories."""
    region = rng.choice(["north", "south", "east", "west", "centre", "islands"], size=n)
    plan = rng.choice(["basic", "plus", "pro", "team"], size=n)
    age = rng.normal(45.0, 12.0, size=n)
    income = rng.lognormal(10.5, 0.5, size=n)            # tens of thousands: scales far apart
    visits = rng.poisson(6.0, size=n).astype(float)
    tenure = rng.exponential(3.0, size=n)
    r_eff = dict(zip(["north", "south", "east", "west", "centre", "islands"], rng.normal(0, 1.0, 6)))
    p_slope = dict(zip(["basic", "plus", "pro", "team"], [-1.0, 0.0, 1.0, 2.0]))
    z_age, z_inc = (age - 45.0) / 12.0, (np.log(income) - 10.5) / 0.5
    score = (np.array([r_eff[r] for r in region]) + np.array([p_slope[p] for p in plan]) * z_inc
             + 0.8 * np.sin(2.0 * z_age) + 0.3 * (visits - 6.0) / 2.4 + 0.2 * tenure)
    cols = {"region": region, "plan": plan, "age": age, "income": income, "visits": visits, "tenure": tenure}
    return cols, score


def _write_table(path: Path, cols: dict[str, Any], target: str, values: np.ndarray) -> None:
    names = list(cols) + [target]
    rows = zip(*(cols[c] for c in cols), values)
    lines = [",".join(names)] + [",".join(v if isinstance(v, str) else f"{float(v):.6g}" for v in row)
                                 for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _categorical_table(path: Path) -> None:
    rng = np.random.default_rng(1234)
    cols, score = _table(rng, 1500)
    noisy = score + rng.normal(0.0, 0.5, size=len(score))
    cuts = np.quantile(noisy, [1 / 3, 2 / 3])               # three balanced classes
    _write_table(path, cols, "label", np.array(["low", "mid", "high"], dtype=object)[np.digitize(noisy, cuts)])


def _regression_table(path: Path) -> None:
    rng = np.random.default_rng(4321)
    cols, score = _table(rng, 1500)
    # a price in the hundreds with an offset: the regime standardize_target is for
    _write_table(path, cols, "price", 400.0 + 60.0 * (score + rng.normal(0.0, 0.3, size=len(score))))


GENERATED: dict[str, Callable[[Path], None]] = {"table-categorical": _categorical_table,
                                                 "table-regression": _regression_table}

# PyTorch's nn.Linear / nn.Conv bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
TORCH_BIAS = {"name": "variance_scaling", "scale": 1.0 / 3.0, "mode": "fan_in", "distribution": "uniform"}

# A candidate: {"init": values for DEFAULT_INITIALIZERS}, {"bias": a bias_initializer} and/or
# {"spec": {dotted key: value}}.
# "default" is nnctl as shipped; each study compares it with the alternatives to one default.
CANDIDATES: dict[str, dict[str, dict[str, Any]]] = {
    "default": {},
    # the initializer for ReLU-like activations (the family where the choice matters most)
    "he_normal": {"init": {"relu_like": "he_normal"}},
    "he_uniform": {"init": {"relu_like": "he_uniform"}},
    "xavier_uniform": {"init": {"relu_like": "xavier_uniform"}},
    "lecun_uniform": {"init": {"relu_like": "lecun_uniform"}},
    "lecun_normal": {"init": {"relu_like": "lecun_normal"}},
    "bias-0.01": {"bias": {"name": "constant", "value": 0.01}},   # the old "keep ReLUs alive" folklore
    "bias-fan-in-uniform": {"bias": TORCH_BIAS},
    "standardize-off": {"spec": {"data.standardize": False}},
    "target-raw": {"spec": {"data.standardize_target": False}},
    "adam-lr-3e-4": {"spec": {"optimizer": {"name": "adam", "lr": 3e-4}}},
    "adam-lr-3e-3": {"spec": {"optimizer": {"name": "adam", "lr": 3e-3}}},
    "adam-lr-1e-2": {"spec": {"optimizer": {"name": "adam", "lr": 1e-2}}},
    "batch-16": {"spec": {"training.batch_size": 16}},
    "batch-64": {"spec": {"training.batch_size": 64}},
    "batch-128": {"spec": {"training.batch_size": 128}},
    "patience-3": {"spec": {"training.early_stopping.patience": 3}},
    "patience-10": {"spec": {"training.early_stopping.patience": 10}},
    "patience-20": {"spec": {"training.early_stopping.patience": 20}},
}
STUDIES: dict[str, list[str]] = {
    "initializer": ["default", "he_normal", "he_uniform", "lecun_uniform", "lecun_normal"],
    "bias": ["default", "bias-0.01", "bias-fan-in-uniform"],
    "standardize": ["default", "standardize-off", "target-raw"],
    "adam-lr": ["default", "adam-lr-3e-4", "adam-lr-3e-3", "adam-lr-1e-2"],
    "batch-size": ["default", "batch-16", "batch-64", "batch-128"],
    "patience": ["default", "patience-3", "patience-10", "patience-20"],
}


def with_defaults(spec: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of `spec` with each dotted key of `values` set where the spec leaves it out."""
    out = copy.deepcopy(spec)
    for dotted, value in values.items():
        *parents, leaf = dotted.split(".")
        node = out
        for key in parents:
            if key not in node:
                node[key] = {}
            node = node[key]
            if not isinstance(node, dict):   # e.g. `optimizer: sgd` as a name: the spec chose
                break
        else:
            node.setdefault(leaf, copy.deepcopy(value))
    return out


@contextmanager
def candidate(values: dict[str, str], bias: Any = None) -> Iterator[None]:
    """Swap initializer defaults in for the duration of the block (all restored after): `values`
    into DEFAULT_INITIALIZERS and, unless None, `bias` as every layer's default bias_initializer."""
    from nnctl.engine import initializers
    from nnctl.engine.base import LAYERS
    saved = dict(initializers.DEFAULT_INITIALIZERS)
    # The layers read DEFAULT_BIAS_INITIALIZER once, into their declared Param; the declarations
    # are what the config layer fills specs from, so those are what is swapped. Recurrent layers
    # share one PARAMS table: each table is swapped (and restored) once.
    tables = {id(t): t for t in (getattr(cls, "PARAMS", {}) for cls in LAYERS.entries.values())
              if "bias_initializer" in t}
    declared = {k: t["bias_initializer"] for k, t in tables.items()}
    initializers.DEFAULT_INITIALIZERS.update(values)
    if bias is not None:
        for k, t in tables.items():
            t["bias_initializer"] = dataclasses.replace(declared[k], default=copy.deepcopy(bias))
    try:
        yield
    finally:
        initializers.DEFAULT_INITIALIZERS.clear()
        initializers.DEFAULT_INITIALIZERS.update(saved)
        for k, t in tables.items():
            t["bias_initializer"] = declared[k]


def run_one(task: str, seed: int, workdir: Path, spec_defaults: dict[str, Any] | None = None) -> float:
    """Train `task` with `seed` through `nnctl train`; its test accuracy (or R² for regression)."""
    from nnctl.commands.train import run_training
    spec = with_defaults({"name": f"{task}-s{seed}", "seed": seed, **TASKS[task]}, spec_defaults or {})
    if task in GENERATED:
        csv = workdir / f"{task}.csv"
        if not csv.exists():
            GENERATED[task](csv)
        spec["data"]["dataset"] = str(csv)
    path = workdir / f"{task}-s{seed}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    runs = workdir / "runs"
    before = set(runs.iterdir()) if runs.exists() else set()
    with console.capture():
        code = run_training(path, [], None, runs, True)
    if code != 0:
        raise RuntimeError(f"{task} seed {seed}: training exited {code}")
    (run,) = set(runs.iterdir()) - before
    from nnctl.runs.store import read_run_metrics
    test = (read_run_metrics(run) or {})["test"]
    return float(test.get("test_accuracy", test.get("test_r2", float("nan"))))


def run_panel(tasks: list[str], candidates: list[str], seeds: list[int]) -> dict[str, dict[str, list[float]]]:
    """{task: {candidate: [metric per seed]}}."""
    results: dict[str, dict[str, list[float]]] = {t: {} for t in tasks}
    with tempfile.TemporaryDirectory(prefix="nnctl-defaults-") as tmp:
        for name in candidates:
            cand = CANDIDATES[name]
            with candidate(cand.get("init", {}), cand.get("bias")):
                for task in tasks:
                    results[task][name] = [run_one(task, s, Path(tmp), cand.get("spec")) for s in seeds]
    return results


def render(results: dict[str, dict[str, list[float]]]) -> None:
    from rich.table import Table
    names = list(next(iter(results.values())).keys())
    table = Table(title="test accuracy (R² for sine, table-regression): mean ± std over seeds; best mean in bold",
                  title_justify="left")
    table.add_column("task")
    for n in names:
        table.add_column(n, justify="right")
    for task, by in results.items():
        means = {n: statistics.fmean(v) for n, v in by.items()}
        top = max(means.values())
        cells = []
        for n in names:
            v = by[n]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            text = f"{means[n]:.3f} ± {sd:.3f}"
            cells.append(f"[bold]{text}[/]" if means[n] == top else text)
        table.add_row(task, *cells)
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nnctl bench --defaults", description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task names")
    p.add_argument("--study", choices=[*STUDIES, "all"], default="initializer",
                   help="which default to put through the panel (its candidates beside 'default')")
    p.add_argument("--candidates", default=None, help="comma-separated candidate names (instead of --study)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per (task, candidate)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = p.parse_args(argv)
    if a.candidates is not None:
        cands = a.candidates.split(",")
    elif a.study == "all":
        cands = list(dict.fromkeys(c for study in STUDIES.values() for c in study))
    else:
        cands = STUDIES[a.study]
    tasks = a.tasks.split(",")
    for t in tasks:
        if t not in TASKS:
            p.error(f"unknown task {t!r}; tasks: {', '.join(TASKS)}")
    for c in cands:
        if c not in CANDIDATES:
            p.error(f"unknown candidate {c!r}; candidates: {', '.join(CANDIDATES)}")
    t0 = time.perf_counter()
    results = run_panel(tasks, cands, list(range(a.seeds)))
    render(results)
    console.print(f"{len(tasks)} tasks × {len(cands)} candidates × {a.seeds} seeds in "
                  f"{time.perf_counter() - t0:.0f} s", highlight=False)
    if a.json is not None:
        a.json.write_text(json.dumps({"seeds": a.seeds, "candidates": {c: CANDIDATES[c] for c in cands},
                                             "results": results}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
