"""`python -m nnctl.bench.search`: TPE against random search at the same budget, and the epochs pruning saves.

On one task (the spirals, a small MLP whose lr, width and batch size matter), for each of
several sampler seeds, three sweeps of `--trials` trials run through the real runner and
local executor: random search, TPE, and TPE with the median pruner. It prints the best
validation loss of each (and their means over the seeds; the loss rather than the accuracy,
which ties at 1.0 on an easy split) and, for the pruned sweeps,
the epochs trained against the unpruned budget (trials x epochs). Needs the search extra.
The load average is printed too: it slows the trials, not the comparison.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path
from statistics import mean

from nnctl.bench import say
from nnctl.sweep.executors import LocalExecutor
from nnctl.sweep.runner import SweepDir, run_sweep
from nnctl.sweep.spec import build_trials, sweep_from_dict


def bench_spec(method: str, trials: int, epochs: int, seed: int, pruner: dict | None) -> dict:
    return {
        "name": f"bench-{method}{'-pruned' if pruner else ''}-{seed}",
        "base": {
            "data": {"dataset": "spirals", "options": {"n_samples": 600, "classes": 3, "noise": 0.3},
                     "val_split": 0.25, "test_split": 0.0},
            "model": {"hidden": [32], "activation": "relu"},
            "optimizer": {"name": "adam", "lr": 0.001},
            "training": {"epochs": epochs, "batch_size": 32},
        },
        "method": method,
        "trials": trials,
        "seed": seed,
        **({"pruner": pruner} if pruner else {}),
        "parameters": {
            "optimizer.lr": {"distribution": "log_uniform", "min": 1e-4, "max": 0.3},
            "model.hidden": [[8], [32], [64, 64]],
            "training.batch_size": {"distribution": "int_uniform", "min": 16, "max": 128},
        },
        "metric": "val_loss",
    }


def run_one(spec: dict, folder: Path, workers: int) -> SweepDir:
    sweep = sweep_from_dict(spec, folder)
    sd = SweepDir.create(folder, sweep, build_trials(sweep))
    source = None
    if sweep.model_based:
        from nnctl.sweep.study import StudyTrials
        source = StudyTrials(sd, sweep)
    ex = LocalExecutor(workers)
    try:
        run_sweep(sd, ex, None, source=source)
    finally:
        ex.close()
    return sd


def best(sd: SweepDir) -> float:
    values = [t.metric for t in sd.trials if t.ranked]
    return min(values) if values else float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nnctl.bench.search", description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5, help="median pruner: epochs never pruned")
    args = parser.parse_args(argv)
    from nnctl.sweep.search import import_optuna
    import_optuna()
    pruner = {"name": "median", "warmup_epochs": args.warmup, "startup_trials": 3}
    tmp = Path(tempfile.mkdtemp(prefix="nnctl-bench-search-"))
    rows = []
    try:
        for seed in range(args.seeds):
            random = run_one(bench_spec("random", args.trials, args.epochs, seed, None), tmp, args.workers)
            tpe = run_one(bench_spec("tpe", args.trials, args.epochs, seed, None), tmp, args.workers)
            pruned = run_one(bench_spec("tpe", args.trials, args.epochs, seed, pruner), tmp, args.workers)
            epochs = sum(t.epochs or 0 for t in pruned.trials)
            n_pruned = sum(t.status == "pruned" for t in pruned.trials)
            rows.append((seed, best(random), best(tpe), best(pruned), n_pruned, epochs))
            say(f"seed {seed}: best val_loss random {rows[-1][1]:.4f}, tpe {rows[-1][2]:.4f}, "
                  f"tpe+median {rows[-1][3]:.4f} ({n_pruned} of {args.trials} pruned, {epochs} of "
                  f"{args.trials * args.epochs} epochs)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    budget = args.trials * args.epochs
    saved = 1 - mean(r[5] for r in rows) / budget
    say(f"mean over {args.seeds} seeds, {args.trials} trials of {args.epochs} epochs each: "
          f"random {mean(r[1] for r in rows):.4f}, tpe {mean(r[2] for r in rows):.4f}, "
          f"tpe+median {mean(r[3] for r in rows):.4f} (best val_loss, lower is better); tpe beat random on "
          f"{sum(r[2] < r[1] for r in rows)}/{len(rows)} seeds")
    say(f"pruning saved {saved:.0%} of the epochs ({mean(r[4] for r in rows):.1f} trials pruned per sweep); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
