"""The benchmark package: `python -m nnctl.bench` and the suite's plumbing on tiny workloads (no timing asserted)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from nnctl.bench import suite
from nnctl.cli import app

ROOT = Path(__file__).resolve().parent.parent

TINY = suite.Workload("tiny mlp 6-8-3", (6,), 3, 200, 50, [{"dense": {"units": 8, "activation": "relu"}}],
                      suite._torch_mlp([6, 8, 3]), floor_sizes=[6, 8, 3])


def test_python_m_nnctl_bench_prints_rates_ratio_blas_and_threads():
    out = subprocess.run([sys.executable, "-m", "nnctl.bench", "--n", "512", "--d", "8", "--hidden", "16",
                          "--classes", "3", "--batch", "64", "--chunk", "0", "--threads", "1"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("mlp [8, 16, 3] batch 64 float32: 512 samples, one epoch (last batch loss ")
    assert lines[0].endswith("threads 1 (--threads)")
    assert re.fullmatch(r"nnctl\s+\d+ samples/s\s+[\d.]+ GFLOP/s", lines[1])
    assert re.fullmatch(r"ratio\s+[\d.]+% of the GEMM floor", lines[3])


def test_suite_data_is_seeded_and_has_every_class(tmp_path):
    a = suite._data(TINY, tmp_path)
    with np.load(a) as z:
        x, y = z["x"], z["y"]
    assert x.shape == (200, 6) and x.dtype == np.float32 and set(y.tolist()) == {0, 1, 2}
    b = suite._data(TINY, tmp_path / "..")
    with np.load(b) as z:
        np.testing.assert_array_equal(z["x"], x)


def test_nnctl_epochs_are_the_run_history_seconds(tmp_path):
    data = suite._data(TINY, tmp_path)
    seconds = suite.nnctl_epochs(TINY, data, 3, 1, tmp_path)
    (runs,) = [p for p in tmp_path.iterdir() if p.name.startswith("runs-")]
    (run,) = list(runs.iterdir())
    history = json.loads((run / "history.json").read_text())
    assert seconds == [r["seconds"] for r in history] and len(seconds) == 3
    assert "threads: 1" in (run / "config.yaml").read_text()


def test_suite_without_torch_says_so_and_prints_a_row(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    monkeypatch.setattr(suite, "WORKLOADS", [TINY])
    runner = CliRunner()
    res = runner.invoke(app, ["bench", "--suite", "--epochs", "2", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "PyTorch not installed: no comparison" in res.output
    assert "threads 1 (--threads)" in res.output
    row = next(line for line in res.output.splitlines() if line.startswith("tiny mlp 6-8-3"))
    # per-epoch time, samples/s, % of the floor, and dashes where PyTorch would be
    assert re.fullmatch(r"tiny mlp 6-8-3\s+[\d.]+ m?s\s+[\d,]+\s+[\d.]+%\s+-\s+-", row.strip()), row


def test_median_skips_the_warm_up_epoch():
    assert suite._median([10.0, 1.0, 3.0, 2.0]) == 2.0
    assert suite._median([5.0]) == 5.0


def test_predict_floor_times_every_row_in_batches(monkeypatch):
    calls = []
    real = np.matmul

    def counting(a, b, out=None):
        calls.append(a.shape[0])
        return real(a, b, out=out)

    monkeypatch.setattr(suite.np, "matmul", counting)
    assert suite.predict_floor_seconds([6, 8, 3], 2500, batch=1024, reps=1) > 0
    monkeypatch.undo()
    # warm-up + 1 rep, each: batches of 1024, 1024 and 452 rows through both layers
    assert calls == [1024, 1024, 1024, 1024, 452, 452] * 2


def test_ratio_text_is_the_median_of_the_rounds():
    assert suite._ratio_text([]).strip() == "-"
    assert suite._ratio_text([1.5]).strip() == "1.50x"
    assert suite._ratio_text([0.5, 2.0, 1.25]).strip() == "1.25x  (0.50 2.00 1.25)"
