"""`python -m nnctl.bench.sweep`: wall time of a small sweep with N workers against 1 worker.

Runs the same grid of small trials (spirals, a 2x32 MLP) twice through the real runner and
local executor, first with one worker, then with `--workers` (default 2), and prints both
times and their ratio; on 2 idle cores the target is a ratio <= 0.6. The load average is
printed too: other processes on the machine distort the ratio.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from nnctl.sweep.executors import LocalExecutor
from nnctl.threads import logical_cpus
from nnctl.sweep.runner import SweepDir, run_sweep
from nnctl.sweep.spec import build_trials, sweep_from_dict
from nnctl.bench import say



def bench_spec(trials: int, epochs: int) -> dict:
    return {
        "name": "bench-sweep",
        "base": {
            "data": {"dataset": "spirals", "options": {"n_samples": 1000}, "val_split": 0.2, "test_split": 0.0},
            "model": {"hidden": [32, 32]},
            "optimizer": {"name": "adam", "lr": 0.01},
            "training": {"epochs": epochs, "batch_size": 32},
        },
        "method": "grid",
        "parameters": {"seed": list(range(trials))},
        "metric": "val_accuracy",
    }


def time_sweep(spec: dict, folder: Path, workers: int) -> float:
    sweep = sweep_from_dict(spec, folder)
    trials = build_trials(sweep)
    sd = SweepDir.create(folder / f"workers-{workers}", sweep, trials)
    executor = LocalExecutor(workers)
    try:
        t0 = time.perf_counter()
        outcome = run_sweep(sd, executor)
        seconds = time.perf_counter() - t0
    finally:
        executor.close()
    if outcome.counts.get("completed", 0) + outcome.counts.get("stopped_early", 0) != len(trials):
        raise SystemExit(f"not every trial completed: {outcome.counts} (see {sd.path})")
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nnctl.bench.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8, help="trials in the sweep")
    parser.add_argument("--workers", type=int, default=2, help="workers of the parallel run")
    parser.add_argument("--epochs", type=int, default=40, help="epochs per trial")
    parser.add_argument("--keep", action="store_true", help="keep the sweep directories")
    args = parser.parse_args(argv)

    spec = bench_spec(args.trials, args.epochs)
    folder = Path(tempfile.mkdtemp(prefix="nnctl-bench-sweep-"))
    load = os.getloadavg()
    say(f"{args.trials} trials (spirals, 2x32 MLP, {args.epochs} epochs), {logical_cpus()} cores, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    try:
        one = time_sweep(spec, folder, 1)
        say(f"workers 1: {one:6.2f} s")
        many = time_sweep(spec, folder, args.workers)
        say(f"workers {args.workers}: {many:6.2f} s")
    finally:
        if args.keep:
            say(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    ratio = many / one
    load = os.getloadavg()
    say(f"ratio (workers {args.workers} / workers 1): {ratio:.2f}  (target <= 0.6 for 2 workers on 2 idle cores); "
          f"load average after {load[0]:.2f}")


if __name__ == "__main__":
    main()
