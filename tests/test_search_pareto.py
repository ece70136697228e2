"""nsga2 (several metrics): the Pareto front is marked in the leaderboard, results.csv and --plot."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from rich.console import Console

optuna = pytest.importorskip("optuna", reason='the search extra: pip install -e ".[search]"')

from nnctl.report.sweep_table import print_leaderboard  # noqa: E402
from nnctl.sweep.runner import SweepDir, TrialState  # noqa: E402
from nnctl.sweep.search import pareto_front  # noqa: E402

GOALS = ["minimize", "maximize"]          # val_loss down, val_accuracy up
# (index, status, values): the front worked out by hand below
TRIALS = [
    (0, "completed", [0.50, 0.90]),     # front: nothing has both a lower loss and a higher accuracy
    (1, "completed", [0.40, 0.80]),     # front: the lowest loss among the finished
    (2, "completed", [0.60, 0.85]),     # beaten by 0 on both
    (3, "stopped_early", [0.45, 0.95]), # front, and it beats 0 on both: 0 drops out
    (4, "completed", [0.40, 0.80]),     # equal to 1: equal points are all kept
    (5, "pruned", [0.10, 0.99]),        # pruned trials trained less: never on the front
    (6, "failed", None),
    (7, "completed", [0.70, 0.95]),     # equal accuracy to 3 with a higher loss: beaten by 3
]
FRONT = {1, 3, 4}


def test_the_front_of_a_hand_made_set():
    done = [(i, v) for i, status, v in TRIALS if status in ("completed", "stopped_early")]
    assert set(pareto_front(done, GOALS)) == FRONT
    # both goals flipped: the lowest accuracy (1, 4), the highest loss (7), and 2, which only 7 has a
    # higher loss than, at a higher accuracy
    assert set(pareto_front(done, ["maximize", "minimize"])) == {1, 2, 4, 7}
    assert pareto_front([(9, [1.0, 1.0])], GOALS) == [9]


def sweep_dir(tmp_path: Path) -> SweepDir:
    meta = {"name": "multi", "method": "nsga2", "metric": "val_loss", "goal": "minimize",
            "metrics": ["val_loss", "val_accuracy"], "goals": GOALS, "parameters": ["optimizer.lr"]}
    trials = [TrialState(i, {"optimizer.lr": 0.001 * (i + 1)}, "h", status=status,
                         metric=None if v is None else v[0], values=v, seconds=1.0, epochs=3,
                         run_dir=f"runs/multi-{i}", error="boom" if status == "failed" else None)
              for i, status, v in TRIALS]
    return SweepDir(tmp_path, meta, trials)


def test_leaderboard_and_results_mark_the_front(tmp_path):
    sd = sweep_dir(tmp_path)
    assert sd.pareto() == FRONT
    out = io.StringIO()
    print_leaderboard(Console(file=out, width=200, force_terminal=False), sd)
    lines = out.getvalue().splitlines()
    assert lines[0] == ("leaderboard: multi, by val_loss; objectives val_loss (minimize), val_accuracy (maximize); "
                        "* = on the Pareto front")
    marked = {int(line.split("trial ")[1].split()[0]) for line in lines[1:9] if " *  " in line}
    assert marked == FRONT
    assert lines[1] == "  1. trial 1  val_loss 0.4000, val_accuracy 0.8000 *  optimizer.lr=0.002  1.0s"
    assert "pruned at epoch 3 (val_loss 0.1000, val_accuracy 0.9900)" in out.getvalue()
    assert lines[-1] == "pareto front: trials 1, 3, 4 (3 of 6 finished; none is beaten on every objective by another)"

    rows = list(csv.DictReader(io.StringIO(sd.write_results().read_text())))
    assert {int(r["index"]) for r in rows if r["pareto"] == "1"} == FRONT
    assert list(rows[0])[:7] == ["rank", "index", "optimizer.lr", "status", "val_loss", "val_accuracy", "pareto"]


def test_a_single_metric_sweep_has_no_front(tmp_path):
    sd = sweep_dir(tmp_path)
    sd.meta.update(metrics=["val_loss"], goals=["minimize"], method="tpe")
    assert sd.pareto() is None
    header = sd.write_results().read_text().splitlines()[0]
    assert "pareto" not in header


def test_the_plot_draws_the_front(tmp_path):
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    from nnctl.report.search_plots import plot_pareto
    out = plot_pareto(sweep_dir(tmp_path), FRONT, tmp_path / "pareto.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
