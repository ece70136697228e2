"""Benchmarks (developer tools, not timed tests): they report ratios measured in one process.

    python -m nnctl.bench          one epoch of an MLP against the GEMM floor (mlp.py; `nnctl bench`)
    nnctl bench --suite            the issue-15 workloads through the real train path, PyTorch beside them
    nnctl bench --busy             the MLP epoch alone and beside a CPU-bound competitor
    python -m nnctl.bench.layers   conv2d and GRU layers against their matrix products
    python -m nnctl.bench.scale    peak memory of train/predict on a large memory-mapped dataset
    python -m nnctl.bench.sweep    sweep wall time with N workers against 1
    python -m nnctl.bench.search   TPE against random search at one budget, and the epochs pruning saves
    python -m nnctl.bench.augment  epoch time of a 1-D CNN and an MLP with and without data.augment
    python -m nnctl.bench.defaults the defaults panel: candidate defaults on a dozen small tasks
    python -m nnctl.bench.startup  what `import nnctl.cli` imports and how long `nnctl --help` takes
    python -m nnctl.bench.own_data a table with categories and missing values: nnctl against scikit-learn
    python -m nnctl.bench.tables   CSV parse time, peak memory and cache hits at 10k/200k/1M rows (`nnctl bench --tables`)

Output goes through the console (`say`), never through the engine.
"""
from __future__ import annotations


def say(text: str) -> None:
    """One line of benchmark output on the console (no markup: numbers and brackets print as they are)."""
    from nnctl.console import console
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of a live process, in kB (empty once it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    out[key] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return out
