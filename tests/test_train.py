"""`nnctl train` end to end: accuracy, run directories, resume, reproducibility, failures."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nnctl.cli import app
from nnctl.runs.checkpoint import load_checkpoint
from nnctl.runs.store import RunDir
from conftest import as_interrupted

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def spec_file(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def train(tmp_path: Path, *args: str):
    return runner.invoke(app, ["train", *args, "--runs-dir", str(tmp_path / "runs")])


def only_run(tmp_path: Path) -> Path:
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def test_spirals_reach_95_percent_validation_accuracy(tmp_path):
    res = train(tmp_path, str(ROOT / "configs" / "spirals.yaml"), "--quiet")
    assert res.exit_code == 0, res.output
    run = only_run(tmp_path)
    history = json.loads((run / "history.json").read_text())
    assert max(r["val_accuracy"] for r in history) >= 0.95


def test_digits_quickstart_reaches_96_percent_test_accuracy(tmp_path):
    res = train(tmp_path, str(ROOT / "configs" / "digits.yaml"), "--quiet")
    assert res.exit_code == 0, res.output
    run = only_run(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["test_accuracy"] >= 0.96
    assert json.loads((run / "status.json").read_text())["status"] in ("completed", "stopped_early")
    assert "test_accuracy" in res.output and str(run) in res.output


def test_sine_regression_r2(tmp_path):
    res = train(tmp_path, str(ROOT / "configs" / "sine.yaml"), "--quiet")
    assert res.exit_code == 0, res.output
    metrics = json.loads((only_run(tmp_path) / "metrics.json").read_text())
    assert metrics["test"]["test_r2"] >= 0.95


def test_run_directory_contents(tmp_path):
    spec = spec_file(tmp_path, """\
        name: tiny
        data: {dataset: blobs, options: {n_samples: 200}}
        model: {hidden: [8]}
        training: {epochs: 3, batch_size: 16}
        """)
    res = train(tmp_path, str(spec))
    assert res.exit_code == 0, res.output
    run = only_run(tmp_path)
    assert run.name.startswith("tiny-")
    assert sorted(p.name for p in run.iterdir()) == [".lock", "checkpoints", "config.yaml", "history.json",
                                                     "metrics.json", "status.json"]
    history = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert set(history[0]) == {"epoch", "lr", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"}
    ckpt = load_checkpoint(run / "checkpoints" / "last.npz")
    assert ckpt.meta["epoch"] == 3 and ckpt.meta["classes"] == [0, 1, 2]
    assert "model/layers.0.W" in ckpt.arrays and "standardize/mean" in ckpt.arrays
    with np.load(run / "checkpoints" / "best.npz", allow_pickle=False) as npz:
        assert "__meta__" in npz.files
    # plain output off a terminal: one line per epoch, no escape codes
    assert "\x1b[" not in res.output
    assert sum(line.startswith("epoch ") for line in res.output.splitlines()) == 3


def test_two_runs_same_second_get_different_dirs(tmp_path):
    from datetime import datetime
    from nnctl.runs.store import RunDir
    now = datetime(2026, 1, 2, 3, 4, 5)
    a = RunDir.create(tmp_path, "x", now)
    b = RunDir.create(tmp_path, "x", now)
    assert a.path.name == "x-20260102-030405" and b.path.name == "x-20260102-030405-2"


RESUME_SPEC = """\
    name: resume
    seed: 3
    data: {dataset: moons, options: {n_samples: 300}}
    model: {hidden: [16, 16], dropout: 0.2, batch_norm: true}
    optimizer: {name: adam, lr: 0.01}
    schedule: {name: reduce_on_plateau, factor: 0.5, patience: 1}
    training: {epochs: 6, batch_size: 32, dtype: float64,
               early_stopping: {monitor: val_loss, patience: 100}}
    """


def _numbers(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def test_resume_equals_uninterrupted(tmp_path):
    spec = spec_file(tmp_path, RESUME_SPEC)
    full_dir, part_dir = tmp_path / "full", tmp_path / "part"
    full_dir.mkdir(), part_dir.mkdir()
    assert train(full_dir, str(spec)).exit_code == 0
    # interrupted after epoch 2: stop a run there, then resume it to the end
    assert train(part_dir, str(spec), "--set", "training.epochs=2").exit_code == 0
    run = only_run(part_dir)
    # the stored config says 2 epochs; make it the 6-epoch run that was interrupted
    as_interrupted(run, 6)
    res = runner.invoke(app, ["train", "--resume", str(run)])
    assert res.exit_code == 0, res.output
    full = json.loads((only_run(full_dir) / "history.json").read_text())
    resumed = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(
        [list(r.values()) for r in _numbers(resumed)], [list(r.values()) for r in _numbers(full)],
        rtol=1e-12, atol=1e-14)


def test_same_seed_same_history(tmp_path):
    spec = spec_file(tmp_path, RESUME_SPEC)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    assert train(a, str(spec), "--set", "training.epochs=3").exit_code == 0
    assert train(b, str(spec), "--set", "training.epochs=3").exit_code == 0
    ha = json.loads((only_run(a) / "history.json").read_text())
    hb = json.loads((only_run(b) / "history.json").read_text())
    assert _numbers(ha) == _numbers(hb)


def test_nan_loss_fails_cleanly_and_keeps_checkpoint(tmp_path):
    spec = spec_file(tmp_path, """\
        name: boom
        data: {dataset: sine}
        model: {hidden: [32]}
        optimizer: {name: sgd, lr: 1.0e+12}
        training: {epochs: 5, batch_size: 16}
        """)
    res = train(tmp_path, str(spec))
    assert res.exit_code == 1
    assert "error: loss is " in res.output and "at epoch 1, step" in res.output
    run = only_run(tmp_path)
    assert json.loads((run / "status.json").read_text())["status"] == "failed"
    ckpt = load_checkpoint(run / "checkpoints" / "last.npz")  # the initial state, still loadable
    assert ckpt.meta["epoch"] == 0


def test_atomic_write_leaves_old_checkpoint_on_crash(tmp_path, monkeypatch):
    from nnctl.runs import store
    from nnctl.runs.checkpoint import save_checkpoint
    path = tmp_path / "c.npz"
    meta = {"epoch": 1, "config": {}, "model": {}, "task": "classification"}
    save_checkpoint(path, meta, {"model/a": np.arange(3.0)})
    before = path.read_bytes()

    def torn_fsync(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(store.os, "fsync", torn_fsync)
    with pytest.raises(OSError):
        save_checkpoint(path, {**meta, "epoch": 2}, {"model/a": np.arange(4.0)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # no temp file left behind
    assert load_checkpoint(path).meta["epoch"] == 1


@pytest.mark.parametrize("text, message", [
    ("data: {dataset: digits}\ntraining: {batch_size: 5000}\n",
     "error: training.batch_size: 5000 is larger than the training split (1259 rows) (spec.yaml line 2)"),
    ("data: {dataset: nosuch.csv}\n", "error: "),
    ("data: {dataset: digits}\noptimizer: {lr: 0.1}\n",
     "error: optimizer.name: is required"),
])
def test_bad_input_exit_1_no_run_dir(tmp_path, text, message):
    spec = spec_file(tmp_path, text)
    res = train(tmp_path, str(spec))
    assert res.exit_code == 1
    assert res.output.startswith(message), res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_csv_missing_target_column(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,c\n1,2,0\n3,4,1\n")
    spec = spec_file(tmp_path, "data: {dataset: d.csv, target: label}\n")
    res = train(tmp_path, str(spec))
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[0].startswith("error: ")
    assert "'label'" in res.output and "d.csv" in res.output


def test_validate_and_config_commands(tmp_path):
    res = runner.invoke(app, ["validate", str(ROOT / "configs" / "digits.yaml")])
    assert res.exit_code == 0, res.output
    assert "layers.0" in res.output and "(128,)" in res.output
    assert "digits.yaml: ok" in res.output
    res = runner.invoke(app, ["config", str(ROOT / "configs" / "digits.yaml")])
    assert res.exit_code == 0, res.output
    import yaml
    resolved = yaml.safe_load(res.output)
    assert resolved["optimizer"]["beta1"] == 0.9 and resolved["loss"]["name"] == "cross_entropy"
    assert resolved["training"]["early_stopping"]["restore_best"] is True


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_example_config_validates_and_trains_one_epoch(tmp_path, config):
    res = train(tmp_path, str(ROOT / "configs" / config), "--set", "training.epochs=1", "--quiet")
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines()[-1].startswith("completed: 1 epochs")


def test_real_subprocess_exit_codes(tmp_path):
    bad = spec_file(tmp_path, "data: {dataset: digits}\noptimizer: {name: adam, lr: -0.1}\n", "bad.yaml")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "nnctl", "train", str(bad), "--runs-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: optimizer.lr: must be > 0, got -0.1 (bad.yaml line 2)"
    assert proc.stdout == ""
    ok = spec_file(tmp_path, "data: {dataset: xor}\nmodel: {hidden: [8]}\ntraining: {epochs: 2}\n", "ok.yaml")
    proc = subprocess.run([sys.executable, "-m", "nnctl", "train", str(ok), "--runs-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "epoch 2/2" in proc.stdout and "completed: 2 epochs" in proc.stdout


def test_ctrl_c_marks_interrupted_and_resume_finishes(tmp_path):
    import signal
    import time
    spec = spec_file(tmp_path, """\
        name: sigint
        data: {dataset: spirals, options: {n_samples: 3000}}
        model: {hidden: [256, 256]}
        training: {epochs: 400, batch_size: 8}
        """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "nnctl", "train", str(spec), "--runs-dir", str(runs)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        hist = list(runs.glob("*/history.json"))
        if hist and json.loads(hist[0].read_text() or "[]"):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    run = only_run(tmp_path)
    assert json.loads((run / "status.json").read_text())["status"] == "interrupted"
    assert f"nnctl train --resume {run}" in err
    done = load_checkpoint(run / "checkpoints" / "last.npz").meta["epoch"]
    assert done >= 1
    # finish quickly: the resumed run keeps the stored spec, so shorten it in the checkpoint
    ckpt = load_checkpoint(run / "checkpoints" / "last.npz")
    ckpt.meta["config"]["training"]["epochs"] = done + 1
    from nnctl.runs.checkpoint import save_checkpoint
    save_checkpoint(run / "checkpoints" / "last.npz",
                    {k: v for k, v in ckpt.meta.items() if k not in ("format", "format_version", "nnctl_version")},
                    ckpt.arrays)
    RunDir(run).write_config(ckpt.meta["config"])  # config.yaml says so too, or resume refuses the edit
    res = runner.invoke(app, ["train", "--resume", str(run), "--quiet"])
    assert res.exit_code == 0, res.output
    history = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in history] == list(range(1, done + 2))


def test_rich_reporter_on_a_terminal():
    """Batches labelled, samples/s and the run's ETA from a controlled clock; header names apart."""
    import io
    import re
    from rich.console import Console
    from nnctl.report.progress import RichReporter, throughput
    buf = io.StringIO()
    ticks = iter([100.0, 100.0, 102.0, 103.0])   # train begin, epoch begin, batch 1, batch 2
    rep = RichReporter(Console(file=buf, force_terminal=True, width=150), "runs/t-1", clock_fn=lambda: next(ticks))

    class FakeState:  # the reporter reads only these attributes of the TrainState
        epoch, epochs, steps_per_epoch = 0, 2, 3
        class spec:
            name = "t"
            class training:
                batch_size = 50
        class dataset:
            source = "xor (built-in)"
            train = range(120)   # 120 rows: batches of 50, 50, 20
            @staticmethod
            def describe():
                return ["target 'label' (classification, 2 classes: 0, 1)"]
        class model:
            @staticmethod
            def num_parameters():
                return 42
    rep.on_train_begin(FakeState)
    rep.on_epoch_begin(FakeState)
    rep.on_batch_end(FakeState, 1, 0.5)
    # 50 samples in 2 s = 25/s; left: 240 - 50 = 190 samples = 7.6 s
    assert rep.progress.tasks[0].fields == {"epoch": "1/2", "loss": "0.5000", "batch": "1/3", "speed": "25",
                                            "eta": "0:00:08"}
    rep.on_batch_end(FakeState, 2, 0.25)
    # 100 samples in 3 s; 140 left = 4.2 s
    assert rep.progress.tasks[0].fields["eta"] == "0:00:04" and rep.progress.tasks[0].fields["speed"] == "33"
    rep.progress.refresh()
    rep.on_epoch_end(FakeState, {"epoch": 1, "lr": 0.01, "loss": 0.5, "accuracy": 0.75, "val_loss": 0.6,
                                 "val_accuracy": 0.5, "seconds": 0.1}, True)
    rep.on_train_end(FakeState, None)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())
    assert "42 parameters" in text and "0.7500" in text
    assert "batch 2/3" in text and "33 samples/s" in text and "ETA 0:00:04" in text
    header = next(line for line in text.splitlines() if "val_accuracy" in line)
    assert header.split() == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]
    assert throughput(0, 1.0, 10) == (None, None) and throughput(10, 2.0, 30) == (5.0, 6.0)


def test_a_run_being_trained_cannot_be_resumed_twice(tmp_path):
    import fcntl
    spec = spec_file(tmp_path, "data: {dataset: xor}\nmodel: {hidden: [4]}\ntraining: {epochs: 1}\n")
    assert train(tmp_path, str(spec), "--quiet").exit_code == 0
    run = only_run(tmp_path)
    with open(run / ".lock", "w") as held:  # another trainer holds the run
        fcntl.flock(held, fcntl.LOCK_EX)
        res = runner.invoke(app, ["train", "--resume", str(run)])
    assert res.exit_code == 1
    assert res.output == f"error: {run}: another nnctl process is training this run; wait for it to finish or stop it first\n"
