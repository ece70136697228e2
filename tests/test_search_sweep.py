"""Model-based sweeps end to end: SIGKILL and resume, a spec edited since launch, Dask, pruning."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

optuna = pytest.importorskip("optuna", reason='the search extra: pip install -e ".[search]"')

from nnctl.cli import app  # noqa: E402
from nnctl.sweep import search  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def sweep_cli(*args: str):
    return runner.invoke(app, ["sweep", *args])


def wait_for(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def study_of(sweep_dir: Path, goal: str = "minimize"):
    return search.open_study(sweep_dir / "study.journal", [goal])


def run_statuses(sweep_dir: Path) -> list[str]:
    return [(read_json(p) or {}).get("status") for p in sweep_dir.glob("trials/*/*/status.json")]


def test_sigkill_then_resume_finishes_the_study_without_duplicates(tmp_path):
    spec = tmp_path / "sweep.yaml"
    spec.write_text(textwrap.dedent("""\
        name: killme
        base:
          data: {dataset: blobs, options: {n_samples: 240}, val_split: 0.25, test_split: 0.0}
          model: {hidden: [8]}
          training: {epochs: 20, batch_size: 16}
        method: tpe
        trials: 4
        seed: 3
        parameters:
          optimizer.lr: {distribution: log_uniform, min: 1.0e-3, max: 0.3}
          model.hidden: [[4], [8]]
        metric: val_loss
        """))
    runs = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "nnctl", "sweep", str(spec), "--workers", "2",
                             "--runs-dir", str(runs)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        sweep_dir = wait_for(lambda: next(iter(runs.glob("killme-*/sweep.json")), None), 60, "the sweep").parent

        def early_epochs(index: int) -> bool:
            histories = list((sweep_dir / "trials" / str(index)).glob("*/history.json"))
            return bool(histories) and 1 <= len(read_json(histories[0]) or []) <= 5

        def one_done_one_training():
            trials = (read_json(sweep_dir / "sweep.json") or {}).get("trials", [])
            done = [t for t in trials if t["status"] == "completed"]
            training = [t for t in trials if t["status"] == "running" and early_epochs(t["index"])]
            return done and training
        wait_for(one_done_one_training, 90, "a trial done and another one training")
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # The orphaned trials notice and interrupt themselves (no training outlives the sweep).
    wait_for(lambda: "running" not in run_statuses(sweep_dir), 60, "the orphaned trials to stop")
    before = read_json(sweep_dir / "sweep.json")["trials"]
    kept = {t["index"]: t for t in before if t["status"] == "completed"}
    running = [t["index"] for t in before if t["status"] == "running"]
    interrupted = {i: run for i in running for run in (sweep_dir / "trials" / str(i)).iterdir()
                   if (read_json(run / "status.json") or {}).get("status") == "interrupted"}
    assert kept and interrupted
    S = optuna.trial.TrialState
    assert {ft.number for ft in study_of(sweep_dir).trials if ft.state == S.RUNNING} == set(running)

    # The sweep file edited since launch: refused with the diff, nothing run.
    original = spec.read_text()
    spec.write_text(original.replace("trials: 4", "trials: 7"))
    res = sweep_cli("--resume", str(sweep_dir))
    assert res.exit_code == 1
    lines = res.output.splitlines()
    assert lines[0] == (f"error: {spec}: edited since this sweep was launched; --resume continues the launched "
                        f"study and refuses a changed spec (restore it, or launch a new sweep):")
    assert "error: -trials: 4" in lines and "error: +trials: 7" in lines
    assert read_json(sweep_dir / "sweep.json")["trials"] == before
    spec.write_text(original)

    res = sweep_cli("--resume", str(sweep_dir), "--workers", "2")
    assert res.exit_code == 0, res.output
    after = read_json(sweep_dir / "sweep.json")["trials"]
    assert [t["index"] for t in after] == [0, 1, 2, 3]
    assert [t["status"] for t in after] == ["completed"] * 4
    for i, t in kept.items():   # kept as they were
        assert after[i]["run_dir"] == t["run_dir"] and after[i]["attempts"] == 1 and after[i]["metric"] == t["metric"]
    for i, run in interrupted.items():   # the same trial, continued from its last.npz
        assert after[i]["overrides"] == before[i]["overrides"] and after[i]["attempts"] == 2
        assert after[i]["run_dir"] == str(run.resolve())
        assert [r["epoch"] for r in read_json(run / "history.json")] == list(range(1, 21))
    values = [json.dumps(t["overrides"], sort_keys=True) for t in after]
    assert len(set(values)) == 4    # the resumed sampler did not replay the first proposals
    study = study_of(sweep_dir)
    assert [ft.state for ft in study.trials] == [S.COMPLETE] * 4
    assert [ft.value for ft in study.trials] == [t["metric"] for t in after]
    assert [ft.params["optimizer.lr"] for ft in study.trials] == [t["overrides"]["optimizer.lr"] for t in after]
