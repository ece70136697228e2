"""`nnctl bench --defaults`: the panel of small tasks that decides nnctl's defaults.

Most users never set the initializer: the default is the model they get. This panel trains a
dozen small tasks that nnctl ships or generates, each with a few seeds, under each candidate
default, through the real `nnctl train` path (validation, early stopping, best weights, test
split), and reports the test metric's mean and spread per (task, candidate). The README's
"Defaults" table is this panel's output; rerun it before changing a default.

A candidate is a value of one declared default table (today the initializer per activation
family, `nnctl.engine.initializers.DEFAULT_INITIALIZERS`); the panel swaps the table's value
for the duration of the candidate's runs and puts it back, so every layer type that follows
the table (dense, conv, ...) is covered without naming the initializer in any spec.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from nnctl.console import console

# name -> spec (without seed/name). Small and quick on 2 cores; each stops early on val_loss.
ES = {"monitor": "val_loss", "patience": 8, "restore_best": True}
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
}

# Candidate initializers for ReLU-like activations (the family where the choice matters most).
CANDIDATES: dict[str, dict[str, str]] = {
    "he_normal": {"relu_like": "he_normal"},
    "he_uniform": {"relu_like": "he_uniform"},
    "xavier_uniform": {"relu_like": "xavier_uniform"},
    "lecun_uniform": {"relu_like": "lecun_uniform"},
    "lecun_normal": {"relu_like": "lecun_normal"},
}


@contextmanager
def candidate(values: dict[str, str]) -> Iterator[None]:
    from nnctl.engine import initializers
    saved = dict(initializers.DEFAULT_INITIALIZERS)
    initializers.DEFAULT_INITIALIZERS.update(values)
    try:
        yield
    finally:
        initializers.DEFAULT_INITIALIZERS.clear()
        initializers.DEFAULT_INITIALIZERS.update(saved)


def run_one(task: str, seed: int, workdir: Path) -> float:
    """Train `task` with `seed` through `nnctl train`; its test accuracy (or R² for regression)."""
    from nnctl.commands.train import run_training
    spec = {"name": f"{task}-s{seed}", "seed": seed, **TASKS[task]}
    path = workdir / f"{task}-s{seed}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    runs = workdir / "runs"
    before = set(runs.iterdir()) if runs.exists() else set()
    with console.capture():
        code = run_training(path, [], None, runs, True)
    if code != 0:
        raise RuntimeError(f"{task} seed {seed}: training exited {code}")
    (run,) = set(runs.iterdir()) - before
    test = json.loads((run / "metrics.json").read_text())["test"]
    return float(test.get("test_accuracy", test.get("test_r2", float("nan"))))


def run_panel(tasks: list[str], candidates: list[str], seeds: list[int]) -> dict[str, dict[str, list[float]]]:
    """{task: {candidate: [metric per seed]}}."""
    results: dict[str, dict[str, list[float]]] = {t: {} for t in tasks}
    with tempfile.TemporaryDirectory(prefix="nnctl-defaults-") as tmp:
        for name in candidates:
            with candidate(CANDIDATES[name]):
                for task in tasks:
                    results[task][name] = [run_one(task, s, Path(tmp)) for s in seeds]
    return results


def render(results: dict[str, dict[str, list[float]]]) -> None:
    from rich.table import Table
    names = list(next(iter(results.values())).keys())
    table = Table(title="test accuracy (R² for sine): mean ± std over seeds; best mean in bold",
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
    p.add_argument("--candidates", default=",".join(CANDIDATES), help="comma-separated candidate names")
    p.add_argument("--seeds", type=int, default=3, help="seeds per (task, candidate)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = p.parse_args(argv)
    tasks, cands = a.tasks.split(","), a.candidates.split(",")
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
        a.json.write_text(json.dumps({"seeds": a.seeds, "results": results}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
