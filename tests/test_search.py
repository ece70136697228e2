"""Model-based sweeps on Optuna: search-space translation, sampler seeding, ask/tell bookkeeping, spec checks."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

optuna = pytest.importorskip("optuna", reason='the search extra: pip install -e ".[search]"')

from nnctl.errors import ConfigError, NnctlError  # noqa: E402
from nnctl.sweep import search  # noqa: E402
from nnctl.sweep.runner import SweepDir, TrialState  # noqa: E402
from nnctl.sweep.spec import Parameter, build_trials, load_sweep  # noqa: E402
from nnctl.sweep.study import StudyTrials, first_proposals, reconcile  # noqa: E402

BASE = """\
base:
  data: {dataset: sine, options: {n_samples: 120}, val_split: 0.25, test_split: 0.0}
  model: {hidden: [4], activation: tanh}
  optimizer: {name: sgd, lr: 0.01}
  training: {epochs: 2, batch_size: 32}
"""


def write(tmp_path: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(BASE + textwrap.dedent(text))
    return path


# -- search space ---------------------------------------------------------------------------------

SPACE = [
    Parameter("a", ("a",), "uniform", low=0.1, high=0.5),
    Parameter("b", ("b",), "log_uniform", low=1e-4, high=1e-1),
    Parameter("c", ("c",), "int_uniform", low=2, high=9),
    Parameter("d", ("d",), "choice", values=[0.5, 3, "relu", True, None]),
    Parameter("e", ("e",), "choice", values=[[64], [128, 64], {"name": "adam", "lr": 0.001}]),
]


def test_every_distribution_translates_to_its_optuna_distribution():
    d = optuna.distributions
    got = search.search_space(SPACE)
    assert got["a"] == d.FloatDistribution(0.1, 0.5)
    assert got["b"] == d.FloatDistribution(1e-4, 1e-1, log=True)
    assert got["c"] == d.IntDistribution(2, 9)
    assert got["d"] == d.CategoricalDistribution([0.5, 3, "relu", True, None])
    # lists and mappings are not valid Optuna categories: their compact JSON stands for them
    assert got["e"] == d.CategoricalDistribution(['[64]', '[128,64]', '{"lr":0.001,"name":"adam"}'])


def test_every_choice_comes_back_as_the_sweep_value():
    for p in SPACE[3:]:
        labels = search.choice_labels(p.values)
        assert [search.from_optuna(p, label) for label in labels] == p.values
    # 3 and True compare equal in Python; the label's type decides
    assert search.from_optuna(SPACE[3], True) is True
    assert search.from_optuna(SPACE[3], 3) == 3 and search.from_optuna(SPACE[3], 3) is not True
    assert search.from_optuna(SPACE[2], 7.0) == 7 and isinstance(search.from_optuna(SPACE[2], 7.0), int)
    with pytest.raises(NnctlError) as info:
        search.from_optuna(SPACE[4], "[32]")
    assert str(info.value) == ("parameters.e: the study holds '[32]', which is not one of the sweep's values "
                               "(was the sweep spec edited?)")


@pytest.mark.parametrize("method", ["tpe", "cmaes", "nsga2", "random"])
def test_seeded_samplers_propose_the_same_trials_and_stay_in_the_space(method):
    if method == "cmaes":
        pytest.importorskip("cmaes", reason='method cmaes needs the cmaes package: pip install -e ".[search]"')

    def proposals(seed: int) -> list[dict]:
        study = optuna.create_study(sampler=search.make_sampler(method, seed))
        out = []
        for i in range(6):
            trial = study.ask(search.search_space(SPACE))
            values = search.overrides_of(SPACE, trial.params)
            study.tell(trial, float(i % 3))   # results, so model-based samplers start modelling
            out.append(values)
        return out

    first, again, other = proposals(3), proposals(3), proposals(4)
    assert first == again
    assert first != other
    for v in first:
        assert 0.1 <= v["a"] <= 0.5 and 1e-4 <= v["b"] <= 1e-1 and 2 <= v["c"] <= 9 and isinstance(v["c"], int)
        assert v["d"] in SPACE[3].values and v["e"] in SPACE[4].values


def test_a_resumed_sampler_does_not_replay_the_first_draws():
    assert search.sampler_seed(5, 0) == 5
    assert search.sampler_seed(5, 4) != 5 and search.sampler_seed(5, 4) == search.sampler_seed(5, 4)
    space = search.search_space(SPACE[:3])
    first = optuna.create_study(sampler=search.make_sampler("tpe", search.sampler_seed(5, 0)))
    later = optuna.create_study(sampler=search.make_sampler("tpe", search.sampler_seed(5, 4)))
    assert first.ask(space).params != later.ask(space).params


# -- spec checks ----------------------------------------------------------------------------------

def errors_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_trials(load_sweep(path))
    return str(info.value).splitlines()


def test_model_based_spec_errors_name_their_line(tmp_path):
    path = write(tmp_path, """\
        method: tpe
        pruner: {name: median, warmup: 3, reduction_factor: 2}
        parameters:
          optimizer.lr: {distribution: log_uniform, min: 1.0e-3, max: 1.0}
        metric: [val_loss, val_r2]
        """)
    assert errors_of(path) == [
        "trials: is required for method tpe (sweep.yaml line 1)",
        "metric: several metrics need method nsga2 (a multi-objective search); method tpe ranks by one metric "
        "(sweep.yaml line 10)",
        "pruner.warmup: not an option of the median pruner; valid: warmup_epochs, startup_trials (sweep.yaml line 7)",
        "pruner.reduction_factor: not an option of the median pruner; valid: warmup_epochs, startup_trials "
        "(sweep.yaml line 7)",
    ]


def test_pruner_needs_an_optuna_method_and_a_per_epoch_metric(tmp_path):
    path = write(tmp_path, """\
        method: random
        trials: 3
        pruner: {name: asha, min_epochs: 0}
        parameters:
          optimizer.lr: {distribution: log_uniform, min: 1.0e-3, max: 1.0}
        metric: val_loss
        """)
    assert errors_of(path) == ["pruner.min_epochs: must be an integer >= 1, got 0 (sweep.yaml line 8)"]
    path.write_text(path.read_text().replace("min_epochs: 0", "min_epochs: 1"))
    assert errors_of(path) == ["pruner: pruning needs an Optuna method (tpe, gp, cmaes, nsga2); method random "
                               "runs every trial to its end (sweep.yaml line 8)"]
    path = write(tmp_path, """\
        method: nsga2
        trials: 4
        pruner: hyperband
        parameters:
          optimizer.lr: {distribution: log_uniform, min: 1.0e-3, max: 1.0}
        metric: [val_loss, val_r2]
        goal: [minimize]
        """, name="multi.yaml")
    assert errors_of(path) == [
        "goal: gives 1 goal(s) for 2 metric(s); one per metric, in order (multi.yaml line 12)",
        "pruner: Optuna cannot prune a search over several metrics; drop the pruner or keep one metric "
        "(multi.yaml line 8)",
    ]


def test_dry_run_proposals_are_the_trials_the_sweep_runs(tmp_path):
    path = write(tmp_path, """\
        method: tpe
        trials: 4
        seed: 11
        parameters:
          optimizer.lr: {distribution: log_uniform, min: 1.0e-3, max: 1.0}
          model.hidden: [[4], [8, 8]]
        metric: val_loss
        """)
    sweep = load_sweep(path)
    planned = first_proposals(sweep)
    sd = SweepDir.create(tmp_path / "runs", sweep, build_trials(sweep))
    source = StudyTrials(sd, sweep)
    assert [source.next() for _ in range(4)] == [0, 1, 2, 3]
    assert source.next() is None and not source.has_more()
    assert [t.overrides for t in sd.trials] == planned
    assert len({json.dumps(t.overrides) for t in sd.trials}) == 4


# -- ask and tell ---------------------------------------------------------------------------------

def test_ask_tell_bookkeeping_and_reconcile_after_a_crash(tmp_path):
    path = write(tmp_path, """\
        method: tpe
        trials: 5
        pruner: {name: median, warmup_epochs: 1}
        parameters:
          optimizer.lr: {distribution: log_uniform, min: 1.0e-3, max: 1.0}
        metric: val_loss
        """)
    sweep = load_sweep(path)
    sd = SweepDir.create(tmp_path / "runs", sweep, [])
    source = StudyTrials(sd, sweep)
    assert source.planned == 5
    for i in range(3):
        assert source.next() == i
        assert sd.spec_path(i).is_file()
    job = source.job_extra(1)
    assert job == {"metrics": ["val_loss"],
                   "pruning": {"journal": str((sd.path / "study.journal").resolve()), "trial": 1,
                               "metric": "val_loss", "pruner": {"name": "median", "warmup_epochs": 1,
                                                                "startup_trials": 5}}}
    ends = [("completed", 0.25), ("failed", None), ("pruned", 0.5)]
    for t, (status, metric) in zip(sd.trials, ends):
        t.status, t.metric = status, metric
        source.ended(t)
    sd.save()

    # a fresh process reading the journal sees exactly what was told
    study = search.open_study(sd.path / "study.journal", ["minimize"])
    S = optuna.trial.TrialState
    assert [t.state for t in study.trials] == [S.COMPLETE, S.FAIL, S.PRUNED]
    assert study.trials[0].value == 0.25
    assert [t.params["optimizer.lr"] for t in study.trials] == [t.overrides["optimizer.lr"] for t in sd.trials]

    # The sweep dies: trial 3 was asked but never written down, trial 4 was running.
    assert source.next() == 3
    sd.trials[3].status = "running"
    sd.save()
    ghost = study.ask(search.search_space(sweep.parameters))
    assert ghost.number == 4
    reopened = SweepDir.open(sd.path)
    assert len(reopened.trials) == 4
    reruns = reconcile(reopened, sweep)
    assert reruns == [3, 4]
    assert len(reopened.trials) == 5
    assert reopened.trials[4].overrides == search.overrides_of(sweep.parameters, ghost.params)
    assert [t.status for t in reopened.trials] == ["completed", "failed", "pruned", "running", "pending"]
    resumed = StudyTrials(reopened, sweep, reruns)
    assert resumed.planned == 2
    assert [resumed.next(), resumed.next(), resumed.next()] == [3, 4, None]


def test_a_failed_proposal_is_recorded_and_told(tmp_path):
    # weight_decay must be >= 0: the sampler may propose values the train spec refuses
    path = write(tmp_path, """\
        method: tpe
        trials: 1
        parameters:
          optimizer.weight_decay: {distribution: uniform, min: -1.0, max: -0.5}
        metric: val_loss
        """)
    sweep = load_sweep(path)
    sd = SweepDir.create(tmp_path / "runs", sweep, [])
    source = StudyTrials(sd, sweep)
    assert source.next() == 0
    t = sd.trials[0]
    assert t.status == "failed" and t.error.startswith("invalid trial spec: optimizer.weight_decay: must be >= 0")
    source.ended(t)
    study = search.open_study(sd.path / "study.journal", ["minimize"])
    assert study.trials[0].state == optuna.trial.TrialState.FAIL


def test_trialstate_reads_old_manifests():
    t = TrialState.from_json({"index": 0, "overrides": {}, "config_hash": "x", "status": "completed"})
    assert t.epochs is None and t.values is None


# -- the pruning callback -------------------------------------------------------------------------

class FakeState:
    """The part of the trainer's TrainState the pruning callback uses."""

    def __init__(self):
        self.epoch = 0
        self.stops: list[tuple[str, str]] = []

    def request_stop(self, status: str, message: str = "") -> None:
        self.stops.append((status, message))


def test_pruning_callback_reports_each_epoch_and_stops_when_told(tmp_path):
    from nnctl.sweep.pruning import PruningCallback, callbacks_for
    journal = tmp_path / "study.journal"
    pruner = {"name": "median", "startup_trials": 1, "warmup_epochs": 1}
    study = search.open_study(journal, ["minimize"], search.make_sampler("tpe", 0), search.make_pruner(pruner),
                              create=True)
    space = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    done = study.ask(space)
    for epoch in (1, 2, 3):
        done.report(0.5, epoch)
    study.tell(done, 0.5)
    good, bad = study.ask(space), study.ask(space)

    state = FakeState()
    cb = callbacks_for({"pruning": {"journal": str(journal), "trial": good.number, "metric": "val_loss",
                                    "pruner": pruner}})[0]
    assert isinstance(cb, PruningCallback)
    cb.on_train_begin(state)
    for epoch, value in ((1, 0.45), (2, 0.4)):
        state.epoch = epoch
        cb.on_epoch_end(state, {"epoch": epoch, "loss": 0.3, "val_loss": value}, True)
    assert state.stops == []

    state = FakeState()
    cb = PruningCallback(str(journal), bad.number, "val_loss", pruner)
    state.epoch = 1
    cb.on_epoch_end(state, {"epoch": 1, "val_loss": 0.9}, False)
    assert state.stops == []                 # warmup_epochs: 1 protects epoch 1
    state.epoch = 2
    cb.on_epoch_end(state, {"epoch": 2, "val_loss": 0.8}, False)
    assert state.stops == [("pruned", "pruned by the median pruner at epoch 2 (val_loss 0.8)")]

    again = search.open_study(journal, ["minimize"])
    assert again.trials[good.number].intermediate_values == {1: 0.45, 2: 0.4}
    assert again.trials[bad.number].intermediate_values == {1: 0.9, 2: 0.8}
    with pytest.raises(NnctlError) as info:
        cb.on_epoch_end(state, {"epoch": 3, "loss": 0.1}, False)
    assert str(info.value) == "pruning: val_loss is not in the epoch's record (it has epoch, loss)"
    assert callbacks_for({"index": 0}) == []


def test_plot_draws_history_and_importances_from_the_manifest(tmp_path):
    pytest.importorskip("matplotlib", reason='--plot needs the plot extra: pip install -e ".[plot]"')
    from typer.testing import CliRunner

    from nnctl.cli import app
    from nnctl.report.search_plots import manifest_study
    path = write(tmp_path, """\
        method: tpe
        trials: 12
        parameters:
          optimizer.lr: {distribution: log_uniform, min: 1.0e-3, max: 1.0}
          model.hidden: [[4], [8]]
        metric: val_loss
        """)
    sweep = load_sweep(path)
    sd = SweepDir.create(tmp_path / "runs", sweep, [])
    source = StudyTrials(sd, sweep)
    for _ in range(12):
        t = sd.trials[source.next()]
        # the loss depends on the lr only: its importance must dwarf the width's
        t.status, t.metric, t.epochs = "completed", abs(np.log10(t.overrides["optimizer.lr"]) + 1.5), 2
        source.ended(t)
    sd.trials[3].status = "pruned"
    sd.save()
    study = manifest_study(sd, sweep)
    assert len(study.trials) == 11 and study.direction == optuna.study.StudyDirection.MINIMIZE
    importances = optuna.importance.get_param_importances(study,
                                                          evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    assert importances["optimizer.lr"] > 3 * importances["model.hidden"]

    res = CliRunner().invoke(app, ["sweep", "--plot", str(sd.path)])
    assert res.exit_code == 0, res.output
    assert res.output == f"wrote {sd.path / 'history.png'}\nwrote {sd.path / 'importances.png'}\n"
    for name in ("history.png", "importances.png"):
        assert (sd.path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = CliRunner().invoke(app, ["sweep", str(path), "--plot", str(sd.path)])
    assert res.exit_code == 1
    assert res.output == "error: --plot draws an existing sweep directory; don't pass a sweep spec or --resume\n"


def test_a_method_whose_packages_are_missing_is_refused_before_anything_runs(tmp_path, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("torch", "optuna") else real(name, *a))
    path = write(tmp_path, """\
        method: gp
        trials: 3
        parameters:
          optimizer.lr: {distribution: log_uniform, min: 1.0e-3, max: 1.0}
        metric: val_loss
        """)
    assert errors_of(path) == ['method: method gp runs on Optuna, which is not installed: pip install -e ".[search]" '
                               "(sweep.yaml line 6)"]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    assert errors_of(path) == ["method: method gp needs torch and scipy (Optuna's GPSampler): "
                               'pip install -e ".[search-gp]" (sweep.yaml line 6)']


def test_cli_dry_run_prints_the_space_and_the_first_proposals(tmp_path):
    from typer.testing import CliRunner

    from nnctl.cli import app
    from nnctl.sweep.spec import describe_values
    path = write(tmp_path, """\
        name: dry
        method: tpe
        trials: 3
        seed: 2
        pruner: {name: asha, min_epochs: 2}
        parameters:
          optimizer.lr: {distribution: log_uniform, min: 1.0e-3, max: 1.0}
          model.hidden: [[4], [8, 8]]
        metric: val_loss
        """)
    res = CliRunner().invoke(app, ["sweep", str(path), "--dry-run", "--runs-dir", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    planned = first_proposals(load_sweep(path))
    assert res.output.splitlines() == [
        "dry: method tpe, seed 2, 3 trials, pruner name=asha min_epochs=2 reduction_factor=3; val_loss (minimize) "
        "over inline base",
        "search space:",
        "  optimizer.lr: log_uniform [0.001, 1.0]",
        "  model.hidden: choice of 2: [[4], [8, 8]]",
        "dry: the first 3 of 3 trials the tpe sampler (seed 2) proposes before it has results; --dry-run: nothing "
        "was run",
        *(f"trial {i}: {describe_values(v)}" for i, v in enumerate(planned)),
    ]
    assert not (tmp_path / "runs").exists()
