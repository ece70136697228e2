"""method: gp (Optuna's GPSampler, the search-gp extra): seeded, in the space, and it learns."""
from __future__ import annotations

import math
import textwrap

import pytest
from typer.testing import CliRunner

optuna = pytest.importorskip("optuna", reason='the search extra: pip install -e ".[search]"')
pytest.importorskip("scipy", reason='method gp needs scipy: pip install -e ".[search-gp]"')
pytest.importorskip("torch", reason='method gp needs torch: pip install -e ".[search-gp]"')

from nnctl.cli import app  # noqa: E402
from nnctl.sweep import search as sweep_search  # noqa: E402
from nnctl.sweep.spec import Parameter  # noqa: E402

SPACE = [Parameter("lr", ("optimizer", "lr"), "log_uniform", low=1e-4, high=1e-1),
         Parameter("dropout", ("model", "dropout"), "uniform", low=0.0, high=0.5),
         Parameter("units", ("model", "units"), "int_uniform", low=8, high=128)]


def objective(v: dict) -> float:
    """A smooth bowl whose minimum (0) sits at lr 1e-2.5, dropout 0.2, 64 units."""
    return ((math.log10(v["lr"]) + 2.5) ** 2 + ((v["dropout"] - 0.2) / 0.25) ** 2
            + ((v["units"] - 64) / 60) ** 2)


def search(method: str, seed: int, trials: int) -> list[float]:
    study = optuna.create_study(sampler=sweep_search.make_sampler(method, seed))
    space = sweep_search.search_space(SPACE)
    seen = []
    for _ in range(trials):
        trial = study.ask(space)
        values = sweep_search.overrides_of(SPACE, trial.params)
        assert 1e-4 <= values["lr"] <= 1e-1 and 0 <= values["dropout"] <= 0.5 and 8 <= values["units"] <= 128
        seen.append(objective(values))
        study.tell(trial, seen[-1])
    return seen


def test_gp_learns_from_its_first_trials_and_beats_random_search():
    # the sweep's 10 random draws, then 4 the Gaussian process chose (~1 s each on 2 cores)
    start = sweep_search.STARTUP_TRIALS["gp"]
    gp = search("gp", 0, start + 4)
    assert min(gp[start:]) < min(gp[:start]) / 2, gp          # the model-chosen trials improve on its start
    assert min(gp) < min(search("random", 0, start + 4)), gp   # and on random search at the same budget


def test_a_gp_sweep_proposes_its_first_trials(tmp_path):
    path = tmp_path / "gp.yaml"
    path.write_text(textwrap.dedent("""\
        base:
          data: {dataset: sine, options: {n_samples: 120}, val_split: 0.25}
          model: {hidden: [4], activation: tanh}
          optimizer: {name: sgd, lr: 0.01}
          training: {epochs: 2, batch_size: 32}
        method: gp
        trials: 3
        seed: 2
        parameters:
          optimizer.lr: {distribution: log_uniform, min: 1.0e-3, max: 1.0}
        metric: val_loss
        """))
    res = CliRunner().invoke(app, ["sweep", str(path), "--dry-run", "--runs-dir", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    assert "the first 3 of 3 trials the gp sampler (seed 2) proposes" in res.output
    assert not (tmp_path / "runs").exists()
