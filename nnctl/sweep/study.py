"""Ask-and-tell between a sweep and its Optuna study: trials proposed as workers free up, results told back.

The sweep's trial numbers are the study's trial numbers (trial k is Optuna trial k), so
the manifest, the trial folders and the journal always name a trial the same way.

Resume (`nnctl sweep --resume DIR`) reconciles the three records a SIGKILL may leave
apart, then continues toward the declared number of trials:
  - a trial the study asked for but the manifest never recorded (killed in between):
    rebuilt from its parameters in the journal and run;
  - a trial whose run finished after the manifest's last write: adopted (its run is kept)
    and told to the study if the study did not hear of it;
  - a trial the study still has running (it was interrupted): run again, same number,
    same parameters, a new run directory; its pruning reports of epochs it had reached
    before are ignored by Optuna (the retrained epochs give the same values);
  - completed, pruned and failed trials are kept as they are.
"""
from __future__ import annotations

from collections import deque
from typing import Any

from nnctl.errors import NnctlError
from nnctl.runs import sweep_store
from nnctl.runs.store import dump_yaml
from nnctl.sweep import search
from nnctl.sweep.runner import FINISHED, SweepDir, TrialState
from nnctl.sweep.spec import SweepSpec, apply_values, build_trial


class StudyTrials:
    """The trial source of a model-based sweep (see nnctl.sweep.runner.run_sweep)."""

    def __init__(self, sd: SweepDir, sweep: SweepSpec, reruns: list[int] | None = None):
        self.sd = sd
        self.sweep = sweep
        self.journal = sd.path / sweep_store.JOURNAL
        sampler = search.make_sampler(sweep.method, search.sampler_seed(sweep.seed, len(sd.trials)))
        self.pruner_spec = sweep.pruner
        self.study = search.open_study(self.journal, sweep.goals, sampler, search.make_pruner(sweep.pruner),
                                       create=True)
        self.space = search.search_space(sweep.parameters)
        self.queue: deque[int] = deque(reruns or [])
        self.planned = len(self.queue) + max(0, self.sweep.trials - len(sd.trials))
        self.cancelled = False

    def has_more(self) -> bool:
        if self.cancelled:
            return False
        return bool(self.queue) or len(self.sd.trials) < self.sweep.trials

    def next(self) -> int | None:
        if self.queue:
            return self.queue.popleft()
        if self.cancelled or len(self.sd.trials) >= self.sweep.trials:
            return None
        trial = self.study.ask(self.space)
        if trial.number != len(self.sd.trials):
            raise NnctlError(f"{self.journal}: the study's trial {trial.number} does not follow the sweep's "
                             f"{len(self.sd.trials)} trials; the journal and sweep.json disagree")
        overrides = search.overrides_of(self.sweep.parameters, trial.params)
        return add_trial(self.sd, self.sweep, trial.number, overrides)

    def job_extra(self, index: int) -> dict[str, Any]:
        extra: dict[str, Any] = {"metrics": list(self.sweep.metrics)}
        if self.pruner_spec is not None:
            extra["pruning"] = {"journal": str(self.journal.resolve()), "trial": index, "metric": self.sweep.metric,
                                "pruner": self.pruner_spec.to_dict()}
        return extra

    def ended(self, t: TrialState) -> None:
        if t.status == "interrupted":
            return   # still running for the study: resume runs it again under the same number
        search.tell(self.study, t.index, t.status, t.values if t.values else [t.metric])

    def cancel(self) -> list[int]:
        self.cancelled = True   # ask nothing more: the sweep is stopping
        rest = list(self.queue)
        self.queue.clear()
        return rest


def add_trial(sd: SweepDir, sweep: SweepSpec, index: int, overrides: dict[str, Any]) -> int:
    """Snapshot trial `index`'s spec and add it to the manifest; a proposal whose spec is not valid
    (e.g. a swept optimizer without an option another swept value needs) is recorded failed."""
    from nnctl.sweep.spec import config_hash
    try:
        trial = build_trial(sweep, index, overrides)
        config, error = trial.config, None
    except NnctlError as err:
        config, error = apply_values(sweep, overrides), "; ".join(str(err).splitlines())
    # a trial resumed from the journal may already have its folder (and its log)
    sweep_store.write_trial_spec(sd.path, index, dump_yaml(config), new=False)
    state = TrialState(index, overrides, config_hash(config))
    if error is not None:
        state.status, state.error = "failed", f"invalid trial spec: {error}"
    sd.trials.append(state)
    sd.save()
    return index


def reconcile(sd: SweepDir, sweep: SweepSpec) -> list[int]:
    """Bring manifest and journal together after a crash; return the trials to run again (see module notes)."""
    optuna = search.import_optuna()
    journal = sd.path / sweep_store.JOURNAL
    if not journal.is_file():
        if sd.trials:
            raise NnctlError(f"{journal}: missing; the study of this sweep is needed to resume it")
        frozen = []
    else:
        frozen = search.open_study(journal, sweep.goals).trials
    for ft in frozen[len(sd.trials):]:
        # Asked, but the sweep died before it wrote the trial down.
        add_trial(sd, sweep, ft.number, search.overrides_of(sweep.parameters, ft.params))
    todo = sd.plan_resume()   # adopts runs that finished after the manifest's last write
    state = {ft.number: ft.state for ft in frozen}
    live = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    study = None
    reruns = []
    for t in sd.trials:
        st = state.get(t.index)
        if t.status in FINISHED:
            if st in live:   # finished, told nobody
                study = study or search.open_study(journal, sweep.goals)
                search.tell(study, t.index, t.status, t.values if t.values else [t.metric])
            continue
        if st is None or st in live:
            if t.index in todo:
                reruns.append(t.index)
        elif t.status != "failed":
            # The study has it finished (told failed) but the manifest does not: keep the study's word.
            t.status = "failed"
            t.error = t.error or "told to the study as failed"
    sd.save()
    return reruns


def prepare_resume(sd: SweepDir) -> tuple[SweepSpec, list[int]]:
    """The launched sweep (refused if edited since launch, with a diff) and the trials to run again."""
    import difflib
    import hashlib
    from pathlib import Path

    from nnctl.sweep.runner import launched_spec
    from nnctl.sweep.spec import load_sweep
    path = sd.path / sweep_store.LAUNCHED
    text = sweep_store.read_launched(sd.path)
    body = text.split("\n", 1)[1] if text.startswith("#") else text
    if hashlib.sha256(body.encode()).hexdigest() != sd.meta.get("launched_sha256"):
        raise NnctlError(f"{path}: edited since the sweep was launched; the study continues only the sweep it "
                         f"started (restore the file, or launch a new sweep)")
    original = sd.meta.get("sweep_file")
    if original and Path(original).is_file():
        try:
            now = dump_yaml(launched_spec(load_sweep(original)))
        except NnctlError as err:
            now = f"# not a valid sweep now: {err}\n"
        if now != body:
            diff = "".join(difflib.unified_diff(body.splitlines(keepends=True), now.splitlines(keepends=True),
                                                fromfile=f"launched ({path})", tofile=f"now ({original})"))
            # one problem per diff line: each is printed as its own line
            raise NnctlError(f"{original}: edited since this sweep was launched; --resume continues the launched "
                             f"study and refuses a changed spec (restore it, or launch a new sweep):",
                             *diff.rstrip().splitlines())
    sweep = load_sweep(path)
    return sweep, reconcile(sd, sweep)


def first_proposals(sweep: SweepSpec, count: int = 10) -> list[dict[str, Any]]:
    """What the seeded sampler proposes for the first trials, before any result comes back (--dry-run)."""
    optuna = search.import_optuna()
    sampler = search.make_sampler(sweep.method, search.sampler_seed(sweep.seed, 0))
    study = optuna.create_study(directions=sweep.goals, sampler=sampler)
    space = search.search_space(sweep.parameters)
    return [search.overrides_of(sweep.parameters, study.ask(space).params) for _ in range(min(count, sweep.trials))]
