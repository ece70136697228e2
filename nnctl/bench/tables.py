"""`python -m nnctl.bench.tables` (`nnctl bench --tables`): CSV parse time, peak memory and cache-hit time.

Writes CSVs of 10,000 / 200,000 / 1,000,000 rows (--rows) of 50 float features and an
integer label in a temporary folder (or --dir), then, each in a fresh child process:

    parse       read_csv_data with no cache (the block parser: numpy's C reader)
    cache build the first load through the table cache (parse + hash + write .npy)
    cache hit   a later load: the cache's arrays memory-mapped, the RawData built
    pandas      pandas.read_csv(dtype=float32) of the whole file, when pandas is installed

--predict ROWS then trains a small model on 256 float features and times `nnctl predict` on
a CSV of ROWS rows: rows/s by the wall clock and by the child's CPU time (on a shared machine
CPU time is the steadier number), peak memory (that child's ru_maxrss, which Linux starts
from the bench's own few tens of MB) and the output's hash.

Peak memory is the child's own high-water mark of resident memory (VmHWM from
/proc/self/status at its end; ru_maxrss of the child is not used because Linux seeds it at
exec with the parent's), shown with the array it produced: the float32 features (N x 50).
The targets (issue 20): parse within 3x of pandas, peak <= 2x the array + 100 MB, a cache
hit <= 0.2 s at 1M rows.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nnctl.bench import proc_status, say

FEATURES = 50
SIZES = (10_000, 200_000, 1_000_000)
# distinct rows per generated block; larger files repeat it (parse work does not depend on it)
BLOCK_ROWS = 20_000


def make_csv(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((min(rows, BLOCK_ROWS), FEATURES)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    lines = [",".join(f"{v:.7g}" for v in row.tolist()) + f",{t}\n" for row, t in zip(x, y)]
    with open(path, "w") as f:
        f.write(",".join(f"f{i}" for i in range(FEATURES)) + ",label\n")
        left = rows
        while left:
            take = min(left, len(lines))
            f.write("".join(lines[:take]))
            left -= take


def _hwm_mb() -> float:
    kb = proc_status(os.getpid()).get("VmHWM")
    return kb / 1024 if kb is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(mode: str, path: str, cache: str) -> dict:
    """One measurement, in this (fresh) process; returns seconds, peak MB and the array's MB."""
    if mode == "pandas":
        import pandas as pd

        def load() -> np.ndarray:
            return pd.read_csv(path, dtype=np.float32).to_numpy()[:, :FEATURES]
    else:
        from nnctl.data.files import read_csv_data
        from nnctl.data.table_cache import TableCache
        parse = None if mode == "parse" else TableCache(Path(cache)).parse

        def load() -> np.ndarray:
            return read_csv_data(Path(path), "label", None, parse=parse).numbers
    t = time.perf_counter()
    x = load()
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "peak_mb": _hwm_mb(), "array_mb": x.nbytes / 2**20}


def measure(mode: str, path: Path, cache: Path) -> dict | None:
    proc = subprocess.run([sys.executable, "-m", "nnctl.bench.tables", "--child", mode, str(path), str(cache)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        say(f"  {mode}: failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def pandas_installed() -> bool:
    try:
        import pandas  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=list(SIZES), help="row counts to generate and parse")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the CSVs (default: a temp folder)")
    ap.add_argument("--predict", type=int, default=0, metavar="ROWS",
                    help="also time predict on ROWS rows of 256 float features")
    ap.add_argument("--child", nargs=3, metavar=("MODE", "PATH", "CACHE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        say(f"CSV tables: {FEATURES} float features + an integer label; load {os.getloadavg()[0]:.2f} "
            f"on {os.cpu_count()} CPUs; peak = the child's VmHWM (python + numpy alone: ~30 MB)")
        has_pandas = pandas_installed()
        if not has_pandas:
            say("pandas is not installed: no pandas column (pip install pandas to compare)")
        say(f"{'rows':>9} {'file MB':>8} {'array MB':>8} | {'parse s':>7} {'peak MB':>7} | {'build s':>7} "
            f"{'hit s':>6} {'hit MB':>6} | {'pandas s':>8} {'peak MB':>7}")
        for rows in args.rows:
            path = tmp / f"t{rows}.csv"
            make_csv(path, rows)
            cache = tmp / f"cache{rows}"
            parse = measure("parse", path, cache)
            build = measure("build", path, cache)
            hit = measure("hit", path, cache)
            pd = measure("pandas", path, cache) if has_pandas else None
            if not (parse and build and hit):
                continue
            size = path.stat().st_size / 2**20
            pandas_cols = f"{pd['seconds']:8.2f} {pd['peak_mb']:7.0f}" if pd else f"{'-':>8} {'-':>7}"
            say(f"{rows:>9,} {size:8.0f} {parse['array_mb']:8.0f} | {parse['seconds']:7.2f} {parse['peak_mb']:7.0f} | "
                f"{build['seconds']:7.2f} {hit['seconds']:6.3f} {hit['peak_mb']:6.0f} | {pandas_cols}")
            path.unlink()
        if args.predict:
            bench_predict(tmp, args.predict)
    return 0


PREDICT_FEATURES = 256


def bench_predict(tmp: Path, rows: int) -> None:
    """Train a small model on 256 float features, then time predict on `rows` rows."""
    rng = np.random.default_rng(0)
    names = [f"f{j}" for j in range(PREDICT_FEATURES)]
    x = rng.standard_normal((2000, PREDICT_FEATURES)).astype(np.float32)
    with open(tmp / "train.csv", "w") as f:
        f.write(",".join(names) + ",label\n")
        np.savetxt(f, np.column_stack([x, x[:, 0] > 0]), fmt=",".join(["%.4g"] * PREDICT_FEATURES + ["%d"]))
    with open(tmp / "predict.csv", "w") as f:
        f.write(",".join(names) + "\n")
        for s in range(0, rows, 20_000):
            np.savetxt(f, rng.standard_normal((min(20_000, rows - s), PREDICT_FEATURES), dtype=np.float32),
                       fmt=",".join(["%.4g"] * PREDICT_FEATURES))
    (tmp / "spec.yaml").write_text("name: bench\nseed: 0\ndata: {dataset: train.csv, target: label, cache: off}\n"
                                   "model: {hidden: [64]}\ntraining: {epochs: 1, batch_size: 256}\n")
    train = subprocess.run([sys.executable, "-m", "nnctl", "train", "spec.yaml", "--runs-dir", "runs", "--quiet"],
                           cwd=tmp, capture_output=True, text=True)
    run = next((tmp / "runs").iterdir(), None) if (tmp / "runs").is_dir() else None
    if train.returncode != 0 or run is None:
        say(f"predict: training the model failed: {(train.stderr or train.stdout).strip()[-300:]}")
        return
    size = (tmp / "predict.csv").stat().st_size / 2**20
    say(f"\npredict: {rows:,} rows x {PREDICT_FEATURES} float features ({size:.0f} MB CSV), model 256-64-2; "
        f"load {os.getloadavg()[0]:.2f}")
    say(f"{'wall s':>7} {'rows/s':>8} | {'CPU s':>7} {'rows/s':>8} | {'peak MB':>7} | output sha256")
    out = tmp / "predictions.csv"
    # the command itself, as a user runs it (its thread default applies before NumPy loads);
    # wait4 gives this child's own CPU time and peak
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "nnctl", "predict", str(run), "predict.csv", "--out", str(out)],
                            cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t
    if status != 0 or not out.exists():
        say(f"predict failed: {proc.stderr.read().decode(errors='replace').strip()[-300:]}")
        return
    cpu = usage.ru_utime + usage.ru_stime
    digest = hashlib.sha256(out.read_bytes()).hexdigest()[:16]
    say(f"{seconds:7.2f} {rows / seconds:8,.0f} | {cpu:7.2f} {rows / cpu:8,.0f} | {usage.ru_maxrss / 1024:7.0f} | {digest}")


if __name__ == "__main__":
    raise SystemExit(main())
