"""Model-based search on Optuna: the search space, seeded samplers, pruners and the study's journal file.

Optuna is an optional extra (`pip install -e ".[search]"`), imported only inside these
functions, so grid and random sweeps (and every other command) work without it.

The study lives in the sweep directory as `study.journal` (Optuna's JournalStorage on a
file: an append-only log with a file lock, no database server). The sweep process asks and
tells; each trial process opens the same journal to report its per-epoch metric for pruning,
so with Dask the sweep directory must be on a filesystem every worker sees at the same path
(the same requirement the trial specs and run directories already have).

Notes
-----
Space translation (sweep parameter -> Optuna distribution):
  uniform       FloatDistribution(min, max)
  log_uniform   FloatDistribution(min, max, log=True)
  int_uniform   IntDistribution(min, max)              (both ends included, as in random)
  choice        CategoricalDistribution over the *labels* of the values: a value that is
                null, a bool, an int, a float or a string is its own label; a list or a
                mapping (e.g. model.hidden [[64], [128, 64]]) is labelled by its compact JSON,
                since Optuna keeps only plain scalars as categories.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnctl.errors import NnctlError

PRUNERS = ("none", "median", "asha", "hyperband")
STUDY_NAME = "nnctl"
SEARCH_MISSING = 'optuna is not installed: pip install -e ".[search]"'
# How many trials the model-based samplers draw at random before they model the results.
STARTUP_TRIALS = {"tpe": 10, "gp": 10, "cmaes": 1, "nsga2": None}


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise NnctlError(SEARCH_MISSING) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


# -- search space ---------------------------------------------------------------------------

def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def choice_labels(values: list[Any]) -> list[Any]:
    """The Optuna categories of a value list (see the module notes)."""
    return [v if _scalar(v) else json.dumps(v, separators=(",", ":"), sort_keys=True) for v in values]


def to_distribution(p):
    """The Optuna distribution of one sweep parameter (nnctl.sweep.spec.Parameter)."""
    optuna = import_optuna()
    d = optuna.distributions
    if p.distribution == "uniform":
        return d.FloatDistribution(p.low, p.high)
    if p.distribution == "log_uniform":
        return d.FloatDistribution(p.low, p.high, log=True)
    if p.distribution == "int_uniform":
        return d.IntDistribution(int(p.low), int(p.high))
    return d.CategoricalDistribution(choice_labels(p.values))


def search_space(parameters) -> dict[str, Any]:
    return {p.name: to_distribution(p) for p in parameters}


def from_optuna(p, value: Any) -> Any:
    """The sweep value for an Optuna parameter value (a choice label back to its value)."""
    if p.distribution == "uniform" or p.distribution == "log_uniform":
        return float(value)
    if p.distribution == "int_uniform":
        return int(value)
    labels = choice_labels(p.values)
    for label, v in zip(labels, p.values):
        if label == value and type(label) is type(value):
            return v
    for label, v in zip(labels, p.values):   # an int label read back as a float, and the like
        if label == value:
            return v
    raise NnctlError(f"parameters.{p.name}: the study holds {value!r}, which is not one of the sweep's values "
                     f"(was the sweep spec edited?)")


def overrides_of(parameters, params: dict[str, Any]) -> dict[str, Any]:
    """An Optuna trial's params as the sweep's overrides, in declaration order."""
    return {p.name: from_optuna(p, params[p.name]) for p in parameters}


def describe_space(parameters) -> list[str]:
    lines = []
    for p in parameters:
        if p.distribution == "choice":
            lines.append(f"{p.name}: choice of {len(p.values)}: {json.dumps(p.values)}")
        else:
            lines.append(f"{p.name}: {p.distribution} [{p.low}, {p.high}]")
    return lines


# -- samplers and pruners -------------------------------------------------------------------

def sampler_seed(seed: int, asked_before: int) -> int:
    """The sampler's seed in a process that starts after `asked_before` trials were asked.

    A resumed sweep must not replay the random draws of the first process (its startup trials
    would repeat exactly), so the seed depends on how far the study got; a fresh sweep with
    the same seed still proposes the same trials.
    """
    if asked_before == 0:
        return seed
    return int(np.random.SeedSequence([seed, asked_before]).generate_state(1)[0])


def make_sampler(method: str, seed: int):
    optuna = import_optuna()
    import warnings
    with warnings.catch_warnings():
        # multivariate TPE is marked experimental; the sweep chose it, the user need not hear it
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _sampler(optuna, method, seed)


def _sampler(optuna, method: str, seed: int):
    s = optuna.samplers
    if method == "tpe":
        # constant_liar: trials still running count as (pessimistic) results, so N workers
        # asking at once do not all get the same proposal; multivariate: the parameters are
        # modelled jointly (lr and batch size interact).
        return s.TPESampler(seed=seed, n_startup_trials=STARTUP_TRIALS["tpe"], constant_liar=True,
                            multivariate=True)
    if method == "gp":
        try:
            import scipy  # noqa: F401
            import torch  # noqa: F401
        except ImportError:
            raise NnctlError("method gp needs torch and scipy (Optuna's GPSampler): pip install -e \".[search-gp]\"") from None
        return s.GPSampler(seed=seed, n_startup_trials=STARTUP_TRIALS["gp"])
    if method == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise NnctlError('method cmaes needs the cmaes package: pip install -e ".[search]"') from None
        return s.CmaEsSampler(seed=seed, n_startup_trials=STARTUP_TRIALS["cmaes"])
    if method == "nsga2":
        return s.NSGAIISampler(seed=seed)
    if method == "random":
        return s.RandomSampler(seed=seed)
    raise NnctlError(f"method {method}: not an Optuna method")


@dataclass
class PrunerSpec:
    """The sweep's `pruner:` section, checked; plain data (it travels to trial processes)."""

    name: str = "none"
    warmup_epochs: int = 0          # median: epochs never pruned at the start
    startup_trials: int = 5         # median: trials that finish before any pruning
    min_epochs: int = 1             # asha / hyperband: the smallest budget a trial gets
    reduction_factor: int = 3       # asha / hyperband: keep the best 1/reduction_factor per rung
    max_epochs: int | None = None   # hyperband: the full budget (default: training.epochs)

    def to_dict(self) -> dict[str, Any]:
        """The name and the options this pruner reads (so sweep.yaml reloads as it was launched)."""
        out: dict[str, Any] = {"name": self.name}
        for key in PRUNER_OPTIONS[self.name]:
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


# Which pruner reads which option (the rest are refused, so a typo is never silently ignored).
PRUNER_OPTIONS = {
    "none": (),
    "median": ("warmup_epochs", "startup_trials"),
    "asha": ("min_epochs", "reduction_factor"),
    "hyperband": ("min_epochs", "reduction_factor", "max_epochs"),
}


def make_pruner(spec: PrunerSpec | dict[str, Any] | None):
    optuna = import_optuna()
    if isinstance(spec, dict):
        spec = PrunerSpec(**spec)
    p = optuna.pruners
    if spec is None or spec.name == "none":
        return p.NopPruner()
    if spec.name == "median":
        # Steps are epochs counted from 1, and Optuna prunes from step n_warmup_steps on:
        # + 1 keeps epochs 1..warmup_epochs safe.
        return p.MedianPruner(n_startup_trials=spec.startup_trials, n_warmup_steps=spec.warmup_epochs + 1)
    if spec.name == "asha":
        return p.SuccessiveHalvingPruner(min_resource=spec.min_epochs, reduction_factor=spec.reduction_factor)
    if spec.name == "hyperband":
        return p.HyperbandPruner(min_resource=spec.min_epochs, max_resource=spec.max_epochs or "auto",
                                 reduction_factor=spec.reduction_factor)
    raise NnctlError(f"pruner {spec.name}: unknown")


# -- the study ------------------------------------------------------------------------------

def journal_storage(path: Path):
    import_optuna()
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
    # The open-lock (O_EXCL on a lock file) works on NFS too, unlike symlinks on some mounts.
    path = str(Path(path).resolve())
    return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))


def open_study(journal: Path, goals: list[str], sampler=None, pruner=None, create: bool = False):
    """The sweep's study in `journal`; created by the sweep, loaded by everyone else."""
    optuna = import_optuna()
    storage = journal_storage(journal)
    if create:
        return optuna.create_study(study_name=STUDY_NAME, storage=storage, directions=list(goals),
                                   sampler=sampler, pruner=pruner, load_if_exists=True)
    try:
        return optuna.load_study(study_name=STUDY_NAME, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        raise NnctlError(f"{journal}: holds no study '{STUDY_NAME}'") from None


def tell(study, number: int, status: str, values: list[float] | None) -> None:
    """Tell the study how trial `number` ended (idempotent: a trial already told is left as it is)."""
    optuna = import_optuna()
    state = optuna.trial.TrialState
    if status in ("completed", "stopped_early") and values is not None and all(np.isfinite(values)):
        study.tell(number, values if len(values) > 1 else values[0], skip_if_finished=True)
    elif status == "pruned":
        study.tell(number, state=state.PRUNED, skip_if_finished=True)
    else:
        # Failed, or completed without a usable value: the sampler must not learn from it.
        study.tell(number, state=state.FAIL, skip_if_finished=True)



# -- several objectives (nsga2) ------------------------------------------------------------------

def pareto_front(points: list[tuple[int, list[float]]], goals: list[str]) -> list[int]:
    """The trial numbers on the Pareto front of `points` ((number, one value per goal), finished
    trials only): Optuna's `best_trials`, i.e. those no other point dominates (at least as good on
    every objective and better on one). Equal points are all kept."""
    optuna = import_optuna()
    study = optuna.create_study(directions=list(goals))
    numbers = []
    for number, values in points:
        study.add_trial(optuna.trial.create_trial(values=[float(v) for v in values]))
        numbers.append(number)
    return sorted(numbers[t.number] for t in study.best_trials)
