"""The Dask executor: a real LocalCluster on loopback ranks trials as the local executor does."""
from __future__ import annotations

import builtins
import csv
import textwrap
from pathlib import Path

from typer.testing import CliRunner

from nnctl.cli import app, fail

runner = CliRunner()

if not any(c.name == "sweep" for c in app.registered_commands):
    from nnctl.commands import sweep as _sweep_cmd
    _sweep_cmd.register(app, fail)

SPEC = """\
name: dask-vs-local
base:
  data: {dataset: sine, options: {n_samples: 200}, val_split: 0.2, test_split: 0.2}
  model: {hidden: [4], activation: tanh}
  optimizer: {name: sgd, lr: 0.01}
  training: {epochs: 3, batch_size: 32}
parameters:
  optimizer.lr: [0.01, 1.0e12, 0.05]     # 1e12 overflows the MSE: that trial fails
metric: val_r2
"""


def results(runs: Path) -> list[dict[str, str]]:
    (sweep_dir,) = [p for p in runs.iterdir() if p.is_dir()]
    with open(sweep_dir / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def leaderboard(rows: list[dict[str, str]]) -> list[tuple]:
    return [(r["rank"], r["index"], r["optimizer.lr"], r["status"], r["val_r2"], r["error"]) for r in rows]


def test_dask_cluster_gives_the_local_leaderboard(tmp_path):
    import distributed   # in the dev extra: a missing install fails here rather than skipping
    spec = tmp_path / "sweep.yaml"
    spec.write_text(textwrap.dedent(SPEC))
    local = runner.invoke(app, ["sweep", str(spec), "--workers", "2", "--runs-dir", str(tmp_path / "local")])
    assert local.exit_code == 1, local.output   # trial 1 diverges

    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp", host="127.0.0.1",
                                  dashboard_address=":0") as cluster:
        res = runner.invoke(app, ["sweep", str(spec), "--executor", "dask", "--address", cluster.scheduler_address,
                                  "--runs-dir", str(tmp_path / "dask")])
    assert res.exit_code == 1, res.output
    assert f"2 Dask tasks at once on {cluster.scheduler_address}" in res.output

    rows = results(tmp_path / "dask")
    assert leaderboard(rows) == leaderboard(results(tmp_path / "local"))
    assert [r["status"] for r in rows] == ["completed", "completed", "failed"]
    assert [r["index"] for r in rows] == ["2", "0", "1"]    # lr 0.05 learns more than 0.01 in 3 epochs
    assert rows[2]["index"] == "1" and rows[2]["error"].startswith("loss is ")
    assert float(rows[0]["val_r2"]) > float(rows[1]["val_r2"])
    # the task wrote its run where the manifest says: under the sweep directory
    assert Path(rows[0]["run_dir"]).parent.parent.parent.parent == tmp_path / "dask"


def test_missing_dask_extra_is_one_clear_line(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_distributed(name, *args, **kwargs):
        if name == "distributed" or name.startswith("distributed."):
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_distributed)
    spec = tmp_path / "sweep.yaml"
    spec.write_text(textwrap.dedent(SPEC))
    res = runner.invoke(app, ["sweep", str(spec), "--executor", "dask", "--runs-dir", str(tmp_path / "runs")])
    assert res.exit_code == 1
    assert res.output == 'error: the dask executor needs dask.distributed: pip install -e ".[dask]"\n'
    assert not (tmp_path / "runs").exists()
