"""`python -m nnctl.bench.scale --gb 2`: peak memory of training and predicting on data larger than it should hold.

Generates a memory-mappable float32 feature file of the given size (256 features, so
2 GiB is 2,097,152 rows) and its int64 labels in a temporary folder (or --dir), then runs
the real CLI in child processes and reports each one's peak resident memory:

    nnctl train   one epoch on x.npy/y.npy (standardize on, 1% val and test splits)
    nnctl predict on a separate 1,000,000-row input, as .npy and as CSV

The target is a peak under 500 MB whatever the data size. Peak RSS is the child's VmHWM
(the kernel's high-water mark of its resident set, read from /proc every 20 ms; ru_maxrss
from wait4 is not used because Linux seeds it at exec with the parent's own high-water
mark). It counts the pages of a memory-mapped file the process has touched as resident
too, so a loader that reads a mapped file end to end without letting go of its pages
shows the file's size here even though none of it is anonymous memory. The other two
columns split it: peak anonymous (RssAnon, the process's own allocations) and peak
file-backed (RssFile, mapped file pages).

`--phases` also runs the training data path one step at a time in a child process and
prints the resident memory after each step (open + NaN check, labels and split,
standardizer fit, one pass of shuffled batches, one evaluation pass), to show where
memory goes.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from nnctl.bench import proc_status, say
from nnctl.runs.store import read_run_metrics


FEATURES = 256
CLASSES = 4
CHUNK_ROWS = 65536   # generation writes this many rows at a time (64 MiB of float32)


# ---------------------------------------------------------------------------- data

def write_features(path: Path, rows: int, seed: int) -> np.ndarray:
    """x (rows, FEATURES) float32 standard normal written through a memmap, chunk by chunk.

    Returns the labels y (rows,) int64: the quadrant of two fixed random projections, so
    the task is learnable and every class is about a quarter of the rows.
    """
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((FEATURES, 2)).astype(np.float32)
    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, FEATURES))
    y = np.empty(rows, dtype=np.int64)
    for s in range(0, rows, CHUNK_ROWS):
        block = rng.standard_normal((min(CHUNK_ROWS, rows - s), FEATURES), dtype=np.float32)
        x[s:s + len(block)] = block
        proj = block @ w
        y[s:s + len(block)] = (proj[:, 0] > 0) + 2 * (proj[:, 1] > 0)
        x.flush()
    del x
    return y


def write_csv(path: Path, rows: int, seed: int) -> None:
    """The same kind of rows as a CSV with a header f0..f255 (4 significant digits)."""
    rng = np.random.default_rng(seed)
    header = ",".join(f"f{j}" for j in range(FEATURES))
    fmt = ",".join(["%.4g"] * FEATURES)
    with open(path, "w", encoding="utf-8") as f:
        f.write(header + "\n")
        for s in range(0, rows, CHUNK_ROWS // 4):
            block = rng.standard_normal((min(CHUNK_ROWS // 4, rows - s), FEATURES), dtype=np.float32)
            np.savetxt(f, block, fmt=fmt)


# ---------------------------------------------------------------------------- measuring

def run_measured(cmd: list[str], cwd: Path, env: dict, log: Path) -> dict:
    """Run `cmd`; return exit code, seconds and the polled peaks of total (VmHWM), anon and file RSS in MB."""
    peaks = {"RssAnon": 0, "RssFile": 0, "VmHWM": 0}
    with open(log, "w", encoding="utf-8") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def poll() -> None:
            while not done.is_set():
                st = proc_status(proc.pid)
                for k in peaks:
                    peaks[k] = max(peaks[k], st.get(k, 0))
                done.wait(0.02)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        proc.wait()
        done.set()
        poller.join()
        seconds = time.perf_counter() - t0
    return {"exit": proc.returncode, "seconds": round(seconds, 1), "peak_rss_mb": round(peaks["VmHWM"] / 1024, 1),
            "peak_anon_mb": round(peaks["RssAnon"] / 1024, 1), "peak_file_mb": round(peaks["RssFile"] / 1024, 1)}


def _rss() -> tuple[float, float, float]:
    st = proc_status(os.getpid())
    return st.get("VmRSS", 0) / 1024, st.get("RssAnon", 0) / 1024, st.get("RssFile", 0) / 1024


def phases(folder: Path) -> None:
    """The training data path step by step in this process, printing resident MB after each step."""
    from nnctl.data import Standardizer, iterate_batches, load_dataset

    def show(step: str, t0: float) -> None:
        rss, anon, file = _rss()
        say(f"  {step:<34} rss {rss:8.1f}  anon {anon:8.1f}  file {file:8.1f} MB   {time.perf_counter() - t0:6.1f}s")

    t0 = time.perf_counter()
    show("start (imports)", t0)
    from nnctl.data.files import check_features, _npy
    x = check_features(_npy(folder / "x.npy", "x.npy", mmap=True), "x.npy")
    show("open x.npy + NaN/inf check", t0)
    del x
    data = {"dataset": "x.npy", "target_path": "y.npy", "val_split": 0.01, "test_split": 0.01,
            "task": "classification"}
    ds = load_dataset(data, 0, folder)
    show("load_dataset (check, labels, split)", t0)
    std = Standardizer().fit(ds.train)
    show("standardizer fit", t0)
    for _ in iterate_batches(ds.train, 512, np.random.default_rng(0), np.float32, std):
        pass
    show("one epoch of shuffled batches", t0)
    for _ in iterate_batches(ds.val, 4096, None, np.float32, std):
        pass
    show("one evaluation pass (val)", t0)


# ---------------------------------------------------------------------------- main

SPEC = """\
name: bench-scale
seed: 0
data: {{dataset: x.npy, target_path: y.npy, standardize: true, val_split: 0.01, test_split: 0.01,
        task: classification}}
model: {{hidden: [64]}}
optimizer: {{name: adam, lr: 0.001}}
training: {{epochs: 1, batch_size: {batch}, eval_batch_size: 4096}}
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nnctl.bench.scale", description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=2.0, help="size of the training feature file in GiB (default 2)")
    ap.add_argument("--predict-rows", type=int, default=1_000_000, help="rows of the predict inputs (default 1M)")
    ap.add_argument("--batch", type=int, default=512, help="training batch size (default 512)")
    ap.add_argument("--dir", type=Path, default=None, help="where the data goes (default: a new temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--phases", action="store_true", help="also profile the training data path step by step")
    ap.add_argument("--no-csv", action="store_true", help="skip the CSV predict (the slowest part)")
    ap.add_argument("--_phases-only", dest="phases_only", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.phases_only is not None:
        phases(args.phases_only)
        return 0

    rows = int(args.gb * 2**30) // (4 * FEATURES)
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="nnctl-bench-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    need = rows * FEATURES * 4 + args.predict_rows * FEATURES * (4 + (0 if args.no_csv else 9))
    free = shutil.disk_usage(folder).free
    if free < need * 1.1:
        say(f"not enough disk in {folder}: need ~{need / 2**30:.1f} GiB, free {free / 2**30:.1f} GiB")
        return 1
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent) + os.pathsep
           + os.environ.get("PYTHONPATH", "")}
    nnctl = [sys.executable, "-m", "nnctl"]
    results: dict[str, dict] = {}
    try:
        t = time.perf_counter()
        y = write_features(folder / "x.npy", rows, seed=0)
        np.save(folder / "y.npy", y)
        del y
        write_features(folder / "x_pred.npy", args.predict_rows, seed=1)
        if not args.no_csv:
            write_csv(folder / "x_pred.csv", args.predict_rows, seed=1)
        say(f"data in {folder}: x.npy {rows:,} x {FEATURES} float32 "
              f"({(folder / 'x.npy').stat().st_size / 2**30:.2f} GiB), predict inputs {args.predict_rows:,} rows; "
              f"generated in {time.perf_counter() - t:.0f}s")
        (folder / "spec.yaml").write_text(SPEC.format(batch=args.batch))

        if args.phases:
            say("training data path, step by step (resident MB after each step):")
            subprocess.run([sys.executable, "-m", "nnctl.bench.scale", "--_phases-only", str(folder)],
                           env=env, check=True)

        results["train (1 epoch)"] = run_measured(
            [*nnctl, "train", "spec.yaml", "--runs-dir", "runs", "--quiet"], folder, env, folder / "train.log")
        run = next((folder / "runs").iterdir(), None)
        if results["train (1 epoch)"]["exit"] != 0 or run is None:
            say((folder / "train.log").read_text()[-2000:])
            return 1
        inputs = ["x_pred.npy"] + ([] if args.no_csv else ["x_pred.csv"])
        for name in inputs:
            results[f"predict {name}"] = run_measured(
                [*nnctl, "predict", str(run), name, "--out", f"pred-{Path(name).stem}.csv"], folder, env,
                folder / f"predict-{name}.log")
        metrics = read_run_metrics(run) or {}
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)

    say(f"\n{'':<22}{'exit':>5}{'seconds':>9}{'peak RSS MB':>13}{'peak anon MB':>14}{'peak file MB':>14}")
    for name, r in results.items():
        say(f"{name:<22}{r['exit']:>5}{r['seconds']:>9}{r['peak_rss_mb']:>13}{r['peak_anon_mb']:>14}"
              f"{r['peak_file_mb']:>14}")
    say(f"test accuracy after one epoch: {metrics['test'].get('test_accuracy', float('nan')):.4f}")
    worst = max(r["peak_rss_mb"] for r in results.values())
    say(f"largest peak RSS {worst:.0f} MB: {'under' if worst < 500 else 'OVER'} the 500 MB target")
    return 0 if all(r["exit"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
