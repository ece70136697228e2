"""`nnctl sweep`: spec checks, grid/random expansion, a sweep with a failing trial, Ctrl-C and resume."""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from nnctl.cli import app, fail
from nnctl.errors import ConfigError
from nnctl.sweep import executors
from nnctl.sweep.runner import SweepDir, TrialState, leaderboard
from nnctl.sweep.spec import build_trials, expand, load_sweep

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()

if not any(c.name == "sweep" for c in app.registered_commands):
    # Until cli.py registers the command itself (as it does for the other command modules).
    from nnctl.commands import sweep as _sweep_cmd
    _sweep_cmd.register(app, fail)

# A tiny regression base: each trial trains in well under a second.
SINE_BASE = """\
base:
  data: {dataset: sine, options: {n_samples: 200}, val_split: 0.2, test_split: 0.2}
  model: {hidden: [4], activation: tanh}
  optimizer: {name: sgd, lr: 0.01}
  training: {epochs: 3, batch_size: 32}
"""


def write(tmp_path: Path, text: str, name: str = "sweep.yaml", head: str = "") -> Path:
    """Write a spec; `head` (e.g. SINE_BASE) goes first, unindented."""
    path = tmp_path / name
    path.write_text(head + textwrap.dedent(text))
    return path


def sweep_cli(*args: str):
    return runner.invoke(app, ["sweep", *args])


def only_sweep_dir(runs: Path) -> Path:
    dirs = sorted(p for p in runs.iterdir() if p.is_dir())
    assert len(dirs) == 1, dirs
    return dirs[0]


def errors_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_trials(load_sweep(path))
    return str(info.value).splitlines()


# -- expansion ---------------------------------------------------------------------------------

def test_grid_is_the_product_in_declaration_order(tmp_path):
    path = write(tmp_path, """\
        method: grid
        parameters:
          optimizer.lr: [0.1, 0.01, 1e-3]
          model.hidden: [[4], [8, 4]]
        metric: val_r2
        """, head=SINE_BASE)
    sweep = load_sweep(path)
    trials = build_trials(sweep)
    assert sweep.goal == "maximize"
    assert [t.overrides for t in trials] == [
        {"optimizer.lr": lr, "model.hidden": h} for lr in (0.1, 0.01, 0.001) for h in ([4], [8, 4])]
    # each trial's resolved spec carries its values and every default of the base
    assert trials[3].config["optimizer"]["lr"] == 0.01 and trials[3].config["model"]["hidden"] == [8, 4]
    assert trials[3].config["training"]["epochs"] == 3 and trials[3].config["training"]["dtype"] == "float32"
    assert trials[3].config["name"] == "sweep-3"


def random_sweep(tmp_path: Path, seed: int = 0, trials: int = 400):
    path = write(tmp_path, f"""\
        method: random
        trials: {trials}
        seed: {seed}
        parameters:
          optimizer.lr: {{distribution: log_uniform, min: 1.0e-6, max: 1.0e-2}}
          model.dropout: {{distribution: uniform, min: 0.1, max: 0.5}}
          training.batch_size: {{distribution: int_uniform, min: 2, max: 5}}
          model.activation: [relu, tanh, gelu]
        metric: val_loss
        """, name=f"random-{seed}-{trials}.yaml", head=SINE_BASE)
    return load_sweep(path)


def test_random_draws_respect_each_distribution(tmp_path):
    draws = expand(random_sweep(tmp_path))
    assert len(draws) == 400
    lr = np.array([d["optimizer.lr"] for d in draws])
    assert lr.min() >= 1e-6 and lr.max() <= 1e-2
    # log-uniform: equal mass per decade (4 decades, ~100 draws each); U[1e-6, 1e-2] would put
    # 99 % of the draws in the top decade and almost none below 1e-4
    per_decade = np.histogram(np.log10(lr), bins=[-6, -5, -4, -3, -2])[0]
    assert per_decade.min() >= 70 and per_decade.max() <= 130, per_decade
    drop = np.array([d["model.dropout"] for d in draws])
    assert drop.min() >= 0.1 and drop.max() < 0.5
    assert abs(drop.mean() - 0.3) < 0.02 and abs(drop.std() - 0.4 / math.sqrt(12)) < 0.01
    bs = [d["training.batch_size"] for d in draws]
    assert all(type(b) is int for b in bs)
    assert sorted(set(bs)) == [2, 3, 4, 5]          # both ends included
    acts = [d["model.activation"] for d in draws]
    assert {a: acts.count(a) for a in ("relu", "tanh", "gelu")} == pytest.approx(
        {"relu": 133, "tanh": 133, "gelu": 133}, abs=35)


def test_random_is_reproducible_and_seeds_differ(tmp_path):
    a = expand(random_sweep(tmp_path, seed=7, trials=10))
    b = expand(random_sweep(tmp_path, seed=7, trials=10))
    c = expand(random_sweep(tmp_path, seed=8, trials=10))
    first = expand(random_sweep(tmp_path, seed=7, trials=4))
    assert a == b
    assert [d["optimizer.lr"] for d in a] != [d["optimizer.lr"] for d in c]
    assert first == a[:4]   # more trials only append: trial k does not depend on `trials`


def test_component_switch_keeps_written_options_only(tmp_path):
    path = write(tmp_path, """\
        parameters:
          optimizer.name: [sgd, adam]
          optimizer.momentum: [0.5]
        metric: val_loss
        """, head=SINE_BASE)
    lines = errors_of(path)
    # momentum is valid for sgd, not for adam: the adam trial (1) is the one rejected
    assert lines == ["trial 1 (optimizer.name=adam optimizer.momentum=0.5): optimizer.momentum: unknown key "
                     "'momentum'; valid: amsgrad, beta1, beta2, clip_norm, clip_value, eps, exclude_from_decay, "
                     "lr, weight_decay (sweep.yaml line 8)"]


# -- validation messages ----------------------------------------------------------------------

def test_unknown_paths_bad_metric_and_grid_distribution(tmp_path):
    path = write(tmp_path, """\
        method: grid
        parameters:
          optimizer.lr: [0.1]
          model.widht: [8]
          training.early_stopping.patience: [3]
          model.dropout: {distribution: uniform, min: 0.0, max: 0.5}
        metric: val_los
        """, head=SINE_BASE)
    assert errors_of(path) == [
        "parameters.model.dropout: a uniform distribution needs method: random (or tpe, gp, cmaes, nsga2); a grid takes a list of values "
        "(sweep.yaml line 11)",
        "parameters.model.widht: not in the train spec: model has no key 'widht'; valid: activation, batch_norm, "
        "dropout, hidden, initializer, layers, output_initializer (sweep.yaml line 9)",
        "parameters.training.early_stopping.patience: not in the train spec: training.early_stopping is null in "
        "the base spec; set it there, or sweep training.early_stopping as a whole (sweep.yaml line 10)",
        "metric: unknown metric 'val_los'; did you mean 'val_loss'? valid: loss, mae, r2, val_loss, val_mae, "
        "val_r2, test_loss, test_mae, test_r2; it is never logged (sweep.yaml line 12)",
    ]


def test_distribution_bounds_and_forms(tmp_path):
    path = write(tmp_path, """\
        base: base.yaml
        method: random
        parameters:
          optimizer.lr: {distribution: log_uniform, min: 0, max: 1.0e-2}
          model.dropout: {distribution: uniform, min: 0.5, max: 0.1}
          training.batch_size: {distribution: int_uniform, min: 1.5, max: 8}
          training.epochs: {distribution: normal, min: 1, max: 3}
          model.hidden: {values: []}
          seed: 3
        metric: accuracy
        """)
    write(tmp_path, "data: {dataset: xor, val_split: 0.0, test_split: 0.0}\n", name="base.yaml")
    assert errors_of(path) == [
        "parameters.optimizer.lr.min: must be > 0 for log_uniform, got 0 (sweep.yaml line 4)",
        "parameters.model.dropout: min must be < max, got min 0.5 and max 0.1 (sweep.yaml line 5)",
        "parameters.training.batch_size.min: must be an integer for int_uniform, got 1.5 (sweep.yaml line 6)",
        "parameters.training.epochs.distribution: unknown distribution 'normal'; did you mean 'uniform'? "
        "valid: choice, int_uniform, log_uniform, uniform (sweep.yaml line 7)",
        "parameters.model.hidden.values: must be a non-empty list of values, got an empty list (sweep.yaml line 8)",
        "parameters.seed: must be a list of values, {values: [...]} or {distribution: ..., min: ..., max: ...}, "
        "got 3 (sweep.yaml line 9)",
        "trials: is required for method random (sweep.yaml line 1)",
    ]


def test_every_trial_spec_is_validated_before_anything_runs(tmp_path):
    path = write(tmp_path, """\
        parameters:
          optimizer.lr: [0.1, -1, 0.01]
          model.hidden: [[4], 4]
        metric: test_loss
        """, head=SINE_BASE)
    res = sweep_cli(str(path), "--runs-dir", str(tmp_path / "runs"))
    assert res.exit_code == 1
    assert res.output.splitlines() == [
        "error: trials 1, 3, 5: model.hidden: must be a list of integers, got 4 (sweep.yaml line 8)",
        "error: trials 2, 3: optimizer.lr: must be > 0, got -1 (sweep.yaml line 7)",
    ]
    assert not (tmp_path / "runs").exists()


def test_dry_run_prints_the_trials_and_runs_nothing(tmp_path):
    path = write(tmp_path, """\
        parameters:
          optimizer.lr: [0.1, 0.01]
          model.hidden: [[4], [8, 4]]
        metric: val_loss
        """, head=SINE_BASE)
    res = sweep_cli(str(path), "--dry-run", "--runs-dir", str(tmp_path / "runs"))
    assert res.exit_code == 0, res.output
    assert res.output.splitlines() == [
        "sweep: 4 trials (grid) over inline base; ranked by val_loss (minimize); --dry-run: nothing was run",
        "trial 0: optimizer.lr=0.1 model.hidden=[4]",
        "trial 1: optimizer.lr=0.1 model.hidden=[8, 4]",
        "trial 2: optimizer.lr=0.01 model.hidden=[4]",
        "trial 3: optimizer.lr=0.01 model.hidden=[8, 4]",
    ]
    assert not (tmp_path / "runs").exists()


def test_example_sweeps_are_valid():
    for name, count in (("digits-sweep.yaml", 4), ("spirals-random.yaml", 6)):
        assert len(build_trials(load_sweep(ROOT / "configs" / "sweeps" / name))) == count


# -- ranking and workers ------------------------------------------------------------------------

def test_leaderboard_orders_by_goal_then_index_unranked_last():
    def t(i, status, metric):
        return TrialState(i, {}, "", status=status, metric=metric)
    trials = [t(0, "completed", 0.5), t(1, "failed", None), t(2, "stopped_early", 0.9),
              t(3, "completed", 0.5), t(4, "completed", float("nan")), t(5, "interrupted", None)]
    assert [x.index for x in leaderboard(trials, "maximize")] == [2, 0, 3, 1, 4, 5]
    assert [x.index for x in leaderboard(trials, "minimize")] == [0, 3, 2, 1, 4, 5]


def test_blas_threads_split_the_cores():
    assert [executors.blas_threads(w, cores=8) for w in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    env = executors.trial_env(3, base={"PATH": "/bin", "OMP_NUM_THREADS": "64"})
    assert all(env[v] == "3" for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"))
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)


def test_a_crashed_trial_process_is_a_failure_with_its_cause(tmp_path):
    job = executors.make_job(4, tmp_path / "spec.yaml", tmp_path, "val_loss", 1)
    killed = executors.collect(job, tmp_path, set(), -9, "$ nnctl train ...\n", 2.5, stopped=False)
    assert killed == {"index": 4, "status": "failed", "metric": None, "run_dir": None,
                      "error": "the trial process was killed by SIGKILL", "seconds": 2.5}
    traceback = "$ nnctl train ...\nTraceback (most recent call last):\n  ...\nMemoryError: out of memory\n"
    assert executors.collect(job, tmp_path, set(), 1, traceback, 1.0, False)["error"] == "MemoryError: out of memory"
    stopped = executors.collect(job, tmp_path, set(), -9, "", 1.0, stopped=True)
    assert stopped["status"] == "interrupted" and stopped["error"] is None


# -- end to end ------------------------------------------------------------------------------

def test_a_failing_trial_is_recorded_and_the_others_complete(tmp_path):
    path = write(tmp_path, """\
        parameters:
          optimizer.lr: [0.05, 1.0e12, 0.01]
        metric: val_loss
        """, head="name: lr\n" + SINE_BASE)
    res = sweep_cli(str(path), "--workers", "2", "--runs-dir", str(tmp_path / "runs"))
    assert res.exit_code == 1, res.output
    sweep_dir = only_sweep_dir(tmp_path / "runs")
    assert "trial 1 failed" in res.output and "loss is" in res.output

    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    trials = manifest["trials"]
    assert [t["status"] for t in trials] == ["completed", "failed", "completed"]
    assert trials[1]["error"].startswith("loss is ") and "try a lower optimizer.lr" in trials[1]["error"]
    assert trials[1]["metric"] is None
    # the failed trial's run is a normal run marked failed by `nnctl train`
    assert json.loads((Path(trials[1]["run_dir"]) / "status.json").read_text())["status"] == "failed"

    # metrics come from each run's own files: the best epoch's record (restore_best keeps it)
    for t in (trials[0], trials[2]):
        metrics = json.loads((Path(t["run_dir"]) / "metrics.json").read_text())
        assert t["metric"] == metrics["best"]["val_loss"]
        assert Path(t["run_dir"]).parent == sweep_dir / "trials" / str(t["index"])
        assert t["seconds"] > 0
    expected = sorted((trials[0], trials[2]), key=lambda t: t["metric"])
    with open(sweep_dir / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["index"] for r in rows] == [str(expected[0]["index"]), str(expected[1]["index"]), "1"]
    assert [r["rank"] for r in rows] == ["1", "2", ""]
    assert float(rows[0]["val_loss"]) == expected[0]["metric"]
    assert rows[2]["status"] == "failed" and rows[2]["optimizer.lr"] == "1000000000000.0"
    assert list(rows[0]) == ["rank", "index", "optimizer.lr", "status", "val_loss", "epochs", "run_dir", "seconds", "error"]
    best = expected[0]
    assert f"best: trial {best['index']} (optimizer.lr={best['overrides']['optimizer.lr']:.4g})" in res.output
    assert f"  run {best['run_dir']}" in res.output
    # the command that repeats the best trial exactly: its config records the BLAS threads it had
    assert f"  repeat: nnctl train {Path(best['run_dir']) / 'config.yaml'}" in res.output
    recorded = yaml.safe_load((Path(best["run_dir"]) / "config.yaml").read_text())["training"]["threads"]
    assert recorded == executors.blas_threads(2)

    # the snapshots: sweep.yaml is the launched sweep, self-contained; each trial has its spec
    relaunch = load_sweep(sweep_dir / "sweep.yaml")
    assert [t.config for t in build_trials(relaunch)] == [
        yaml.safe_load((sweep_dir / "trials" / str(i) / "spec.yaml").read_text()) for i in range(3)]
    log = (sweep_dir / "trials" / "0" / "train.log").read_text()
    assert f"{executors.blas_threads(2)} BLAS threads" in log.splitlines()[0]


def test_fail_fast_interrupts_the_rest(tmp_path):
    path = write(tmp_path, """\
        parameters:
          optimizer.lr: [1.0e12, 0.05, 0.01]
        metric: val_loss
        """, head="name: ff\n" + SINE_BASE)
    res = sweep_cli(str(path), "--fail-fast", "--runs-dir", str(tmp_path / "runs"))
    assert res.exit_code == 1, res.output
    sweep_dir = only_sweep_dir(tmp_path / "runs")
    trials = json.loads((sweep_dir / "sweep.json").read_text())["trials"]
    assert [t["status"] for t in trials] == ["failed", "interrupted", "interrupted"]
    assert [t["attempts"] for t in trials] == [1, 0, 0]
    assert f"nnctl sweep --resume {sweep_dir}" in res.output

    # while another process works on the sweep, --resume is refused (and runs nothing)
    with SweepDir.open(sweep_dir).locked():
        res = sweep_cli("--resume", str(sweep_dir))
    pid = json.loads((sweep_dir / "sweep.json").read_text())["pid"]
    assert res.exit_code == 1
    assert res.output == (f"error: {sweep_dir}: this sweep is running in another process (pid {pid}); "
                          f"stop it before resuming\n")
    assert [len(run_dirs(sweep_dir, i)) for i in range(3)] == [1, 0, 0]


def wait_for(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def run_dirs(sweep_dir: Path, index: int) -> list[Path]:
    return sorted(p for p in (sweep_dir / "trials" / str(index)).iterdir() if p.is_dir())


def test_ctrl_c_then_resume_runs_exactly_the_missing_trials(tmp_path):
    base = write(tmp_path, """\
        data: {dataset: blobs, options: {n_samples: 1200}, val_split: 0.2, test_split: 0.0}
        model: {hidden: [8]}
        training: {epochs: 40, batch_size: 16}
        """, name="base.yaml")
    path = write(tmp_path, """\
        name: ctrlc
        base: base.yaml
        parameters:
          optimizer.lr: [0.01, 0.02, 0.03]
        metric: val_loss
        """)
    runs = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = ("from nnctl.cli import app, fail; from nnctl.commands import sweep; "
            "sweep.register(app, fail) if not any(c.name == 'sweep' for c in app.registered_commands) else None; "
            "app(prog_name='nnctl')")
    proc = subprocess.Popen([sys.executable, "-c", code, "sweep", str(path), "--runs-dir", str(runs)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        sweep_dir = wait_for(lambda: next(iter(runs.glob("ctrlc-*/sweep.json")), None), 30, "the sweep").parent

        def second_running():
            trials = json.loads((sweep_dir / "sweep.json").read_text())["trials"]
            runs1 = list((sweep_dir / "trials" / "1").glob("*/history.json"))
            return trials[0]["status"] == "completed" and runs1
        wait_for(second_running, 60, "trial 0 done and trial 1 training")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    assert f"nnctl sweep --resume {sweep_dir}" in out
    first = json.loads((sweep_dir / "sweep.json").read_text())
    assert first["state"] == "interrupted"
    assert [t["status"] for t in first["trials"]] == ["completed", "interrupted", "interrupted"]
    interrupted_run = run_dirs(sweep_dir, 1)[0]
    assert json.loads((interrupted_run / "status.json").read_text())["status"] == "interrupted"

    # Later edits of the base change nothing: resume trains the snapshotted specs.
    base.write_text(base.read_text().replace("hidden: [8]", "hidden: [32, 32]"))
    # And a trial whose run finished after the manifest's last write is adopted, not rerun.
    edited = json.loads((sweep_dir / "sweep.json").read_text())
    edited["trials"][0].update(status="running", metric=None)
    (sweep_dir / "sweep.json").write_text(json.dumps(edited))

    res = sweep_cli("--resume", str(sweep_dir), "--workers", "2")
    assert res.exit_code == 0, res.output
    after = json.loads((sweep_dir / "sweep.json").read_text())["trials"]
    assert [t["status"] for t in after] == ["completed"] * 3
    # trial 1 continued its interrupted run from last.npz: the same folder, every epoch once
    assert [len(run_dirs(sweep_dir, i)) for i in range(3)] == [1, 1, 1]
    assert after[1]["run_dir"] == str(interrupted_run.resolve())
    history = json.loads((interrupted_run / "history.json").read_text())
    assert [r["epoch"] for r in history] == list(range(1, 41))
    assert "train --resume" in (sweep_dir / "trials" / "1" / "train.log").read_text()
    assert after[0]["run_dir"] == first["trials"][0]["run_dir"] and after[0]["attempts"] == 1
    assert after[0]["metric"] == first["trials"][0]["metric"]
    assert [t["attempts"] for t in after] == [1, 2, 1]
    for i in (1, 2):
        config = yaml.safe_load((Path(after[i]["run_dir"]) / "config.yaml").read_text())
        assert config["model"]["hidden"] == [8]
    assert "3 trials to run" not in res.output and "2 trials to run (1 already done)" in res.output


def test_a_killed_sweep_leaves_no_training_behind(tmp_path):
    """SIGKILL gives the sweep no chance to clean up: each trial notices and interrupts itself."""
    spec = write(tmp_path, """\
        data: {dataset: blobs, options: {n_samples: 1500}, val_split: 0.2, test_split: 0.0}
        model: {hidden: [8]}
        training: {epochs: 500, batch_size: 8}
        """, name="long.yaml")
    job = executors.make_job(0, spec, tmp_path / "trial", "val_loss", 1)
    code = ("import sys, json; from nnctl.sweep.executors import run_trial; "
            "run_trial(json.loads(sys.argv[1]))")
    parent = subprocess.Popen([sys.executable, "-c", code, json.dumps(job)],
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    status = None
    try:
        history = wait_for(lambda: next(iter((tmp_path / "trial").glob("*/history.json")), None), 30, "training")
        parent.kill()
        parent.wait()
        status = history.parent / "status.json"
        wait_for(lambda: json.loads(status.read_text())["status"] == "interrupted", 15, "the orphan to stop")
    finally:
        if parent.poll() is None:
            parent.kill()
        record = json.loads(status.read_text()) if status is not None else {}
        if record.get("status") == "running":   # never leave the trial running when the test fails
            pid = record.get("pid")
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, TypeError):
                pass
