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


def wait_for(predicate, timeout: float, what: str, poll: float = 0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
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


PRUNED_SWEEP = """\
name: {name}
base:
  data: {{dataset: moons, options: {{n_samples: 300, noise: 0.2}}, val_split: 0.3, test_split: 0.0}}
  model: {{hidden: [8], activation: tanh}}
  optimizer: {{name: sgd, lr: 0.001}}
  training: {{epochs: 20, batch_size: 32}}
method: tpe
trials: {trials}
seed: 0
pruner: {{name: median, warmup_epochs: 2, startup_trials: 2}}
parameters:
  optimizer.lr: {{distribution: log_uniform, min: 1.0e-6, max: 1.0}}
metric: val_loss
"""


def check_study_matches_manifest(sweep_dir: Path, trials: list[dict]) -> None:
    """Every trial told once, as what it ended as; every epoch a trial trained reported once."""
    S = optuna.trial.TrialState
    study = study_of(sweep_dir)
    want = {"completed": S.COMPLETE, "pruned": S.PRUNED}
    assert [ft.number for ft in study.trials] == [t["index"] for t in trials]
    for ft, t in zip(study.trials, trials):
        assert ft.state == want[t["status"]], (ft.number, ft.state, t["status"])
        assert sorted(ft.intermediate_values) == list(range(1, t["epochs"] + 1))
        history = read_json(Path(t["run_dir"]) / "history.json")
        assert [r["val_loss"] for r in history] == [ft.intermediate_values[e] for e in range(1, t["epochs"] + 1)]
        assert (read_json(Path(t["run_dir"]) / "status.json") or {}).get("status") == t["status"]
        if t["status"] == "completed":
            assert ft.value == t["metric"]


def base_val_loss(tmp_path: Path) -> float:
    """The base spec trained as it is (in-process): what the search must beat."""
    import yaml

    from nnctl.commands.train import run_training
    base = yaml.safe_load(PRUNED_SWEEP.format(name="x", trials=1))["base"]
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump({"name": "base", **base}))
    assert run_training(path, [], None, tmp_path / "base-runs", True) == 0
    (run,) = (tmp_path / "base-runs").iterdir()
    return read_json(run / "metrics.json")["best"]["val_loss"]


def test_tpe_with_median_pruning_survives_sigkill_and_saves_epochs(tmp_path):
    """One worker, so which trial is pruned does not depend on which finished first."""
    spec = tmp_path / "sweep.yaml"
    spec.write_text(PRUNED_SWEEP.format(name="killme", trials=8))
    runs = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "nnctl", "sweep", str(spec), "--runs-dir", str(runs)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        sweep_dir = wait_for(lambda: next(iter(runs.glob("killme-*/sweep.json")), None), 60, "the sweep").parent

        def trial_1_training():
            histories = list((sweep_dir / "trials" / "1").glob("*/history.json"))
            # trial 1 cannot be pruned (startup_trials: 2) and trains 20 epochs of ~15 ms on a quiet
            # machine: a fine poll catches it early enough that the trial's watchdog stops it mid-run
            return histories and 1 <= len(read_json(histories[0]) or []) <= 5
        wait_for(trial_1_training, 90, "trial 1 training", poll=0.005)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # The orphaned trial notices and interrupts itself (no training outlives the sweep).
    wait_for(lambda: "running" not in run_statuses(sweep_dir), 60, "the orphaned trial to stop")
    before = read_json(sweep_dir / "sweep.json")["trials"]
    assert [t["status"] for t in before] == ["completed", "running"]
    (interrupted,) = [p for p in (sweep_dir / "trials" / "1").iterdir() if p.is_dir()]
    assert read_json(interrupted / "status.json")["status"] == "interrupted"
    S = optuna.trial.TrialState
    assert [ft.state for ft in study_of(sweep_dir).trials] == [S.COMPLETE, S.RUNNING]

    # The sweep file edited since launch: refused with the diff, nothing run.
    original = spec.read_text()
    spec.write_text(original.replace("trials: 8", "trials: 9"))
    res = sweep_cli("--resume", str(sweep_dir))
    assert res.exit_code == 1
    lines = res.output.splitlines()
    assert lines[0] == (f"error: {spec}: edited since this sweep was launched; --resume continues the launched "
                        f"study and refuses a changed spec (restore it, or launch a new sweep):")
    assert "error: -trials: 8" in lines and "error: +trials: 9" in lines
    assert read_json(sweep_dir / "sweep.json")["trials"] == before
    spec.write_text(original)

    res = sweep_cli("--resume", str(sweep_dir))
    assert res.exit_code == 0, res.output
    after = read_json(sweep_dir / "sweep.json")["trials"]
    assert [t["index"] for t in after] == list(range(8))
    assert {t["status"] for t in after} <= {"completed", "pruned"}
    assert after[0] == {**before[0], "status": "completed"}              # kept as it was
    assert after[1]["attempts"] == 2 and after[1]["run_dir"] == str(interrupted.resolve())   # continued
    assert len({json.dumps(t["overrides"]) for t in after}) == 8          # the resumed sampler did not replay
    check_study_matches_manifest(sweep_dir, after)

    pruned = [t for t in after if t["status"] == "pruned"]
    assert len(pruned) >= 2 and all(t["epochs"] < 20 for t in pruned)
    trained = sum(t["epochs"] for t in after)
    assert trained <= 0.7 * 8 * 20, trained                              # pruning saved >= 30% of the epochs
    best = min(t["metric"] for t in after if t["status"] == "completed")
    assert best < base_val_loss(tmp_path)
    for t in pruned:
        assert f"trial {t['index']}  pruned at epoch {t['epochs']} (val_loss " in res.output


def test_the_pruned_tpe_sweep_on_a_dask_local_cluster(tmp_path):
    """Trials run as Dask tasks still report every epoch to the journal in the sweep directory."""
    pytest.importorskip("distributed", reason='the dask extra: pip install -e ".[dask]"')
    spec = tmp_path / "sweep.yaml"
    spec.write_text(PRUNED_SWEEP.format(name="dask", trials=3))
    res = sweep_cli(str(spec), "--executor", "dask", "--workers", "2", "--runs-dir", str(tmp_path / "runs"))
    assert res.exit_code == 0, res.output
    assert "2 Dask tasks at once on a local Dask cluster" in res.output
    (sweep_dir,) = (tmp_path / "runs").iterdir()
    trials = read_json(sweep_dir / "sweep.json")["trials"]
    assert [t["index"] for t in trials] == [0, 1, 2]
    assert {t["status"] for t in trials} <= {"completed", "pruned"}
    check_study_matches_manifest(sweep_dir, trials)
