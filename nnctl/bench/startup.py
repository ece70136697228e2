"""Startup benchmark: what `import nnctl.cli` imports (python -X importtime) and how long `nnctl --help` takes.

    python -m nnctl.bench.startup [--runs 7] [--top 12]     (or: python nnctl/bench/startup.py)

Prints the modules with the largest cumulative import time, whether any heavy module
(NumPy, the optional extras) is among them, and the best and median wall time of
`python -m nnctl --help` over --runs runs (best-of is the figure to compare: a busy
machine only ever adds time).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

# Imported only by the commands that use them; `--help` must import none of them.
HEAVY = ("numpy", "yaml", "optuna", "onnx", "onnxruntime", "mlflow", "tensorboardX", "PIL", "dask", "matplotlib")


def import_times(module: str = "nnctl.cli") -> list[tuple[str, int, int]]:
    """(module, self µs, cumulative µs) of every module `import module` loads, in load order."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                         capture_output=True, text=True, check=True)
    rows = []
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, cumulative, name = (part.strip() for part in line[len("import time:"):].split("|"))
        rows.append((name, int(own), int(cumulative)))
    return rows


def help_seconds(runs: int) -> list[float]:
    """Wall time of `python -m nnctl --help`, once per run (output discarded)."""
    env = {**os.environ, "COLUMNS": "100"}
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "nnctl", "--help"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env=env, check=True)
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    from nnctl.console import console

    parser = argparse.ArgumentParser(prog="python -m nnctl.bench.startup", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs of nnctl --help (best and median shown)")
    parser.add_argument("--top", type=int, default=12, help="modules shown, by cumulative import time")
    args = parser.parse_args(argv)

    rows = import_times()
    total = next(cum for name, _, cum in rows if name == "nnctl.cli")
    console.print(f"import nnctl.cli: {total / 1000:.1f} ms, {len(rows)} modules", highlight=False)
    for name, own, cum in sorted(rows, key=lambda r: -r[2])[:args.top]:
        console.print(f"  {cum / 1000:8.1f} ms cumulative  {own / 1000:7.1f} ms self  {name}",
                      markup=False, highlight=False)
    loaded = {name.strip() for name, _, _ in rows}
    heavy = [m for m in HEAVY if m in loaded]
    console.print(f"heavy modules imported: {', '.join(heavy) if heavy else 'none'}", highlight=False)

    times = help_seconds(args.runs)
    console.print(f"nnctl --help: best {min(times):.3f} s, median {statistics.median(times):.3f} s "
                  f"over {len(times)} runs (python -m nnctl; includes the interpreter's own start)",
                  highlight=False)
    return 1 if heavy else 0


if __name__ == "__main__":
    sys.exit(main())
