"""Running a sweep: its directory and manifest, scheduling trials on an executor, resume, Ctrl-C.

Layout of one sweep (`runs/<sweep-name>-<YYYYmmdd-HHMMSS>/`):
    sweep.yaml               the sweep as launched, its base train spec inlined and resolved
    sweep.json               the manifest: every trial's index, values, status, metric,
                             run directory, wall time and error; rewritten atomically
                             whenever a trial starts or ends
    results.csv              one row per trial in leaderboard order
    study.journal            model-based methods (tpe, gp, cmaes, nsga2): the Optuna study,
                             an append-only journal the sweep asks/tells and trials report to
    trials/<k>/spec.yaml     trial k's resolved train spec, snapshotted at launch (resume
                             uses it, so later edits of the base file change nothing)
    trials/<k>/train.log     what each attempt of trial k printed
    trials/<k>/<run>/        trial k's run directory(ies), as written by `nnctl train`
A trial is done when a run under trials/<k>/ finished (completed, stopped early or pruned)
with exactly its snapshotted config; `--resume` reruns every other trial (model-based
methods: every trial the study still has running; failed ones were told and stay failed). The manifest never keeps
a `running` trial once the sweep process has stopped on its own terms.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import socket
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from nnctl.errors import NnctlError
from nnctl.runs import sweep_store
from nnctl.runs.store import (dump_yaml, has_last_checkpoint, has_metrics, read_run_config, read_run_metrics,
                              read_run_status)
from nnctl.status import CLEAN_ENDS
from nnctl.sweep.executors import STOP_GRACE, make_job, read_metrics
from nnctl.sweep.spec import SweepSpec, Trial, config_hash

FINISHED = CLEAN_ENDS                          # the run ended cleanly: never rerun by --resume
DONE = tuple(s for s in CLEAN_ENDS if s != "pruned")   # ran to their end: ranked by the metric
TRIAL_STATUSES = ("pending", "running", "completed", "stopped_early", "pruned", "failed", "interrupted")
EXIT_INTERRUPTED = 130


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


@dataclass
class TrialState:
    """One trial's line in the manifest."""

    index: int
    overrides: dict[str, Any]
    config_hash: str
    status: str = "pending"
    metric: float | None = None
    run_dir: str | None = None
    seconds: float | None = None
    error: str | None = None
    attempts: int = 0
    started: str | None = None
    finished: str | None = None
    epochs: int | None = None               # epochs the run trained (a pruned trial: where it stopped)
    values: list[float | None] | None = None  # every objective's value (several metrics: nsga2)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrialState":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def ranked(self) -> bool:
        # A pruned trial trained fewer epochs than the others; its metric is shown, not ranked.
        return self.status in DONE and self.metric is not None and math.isfinite(self.metric)


def leaderboard(trials: list[TrialState], goal: str) -> list[TrialState]:
    """Trials with a metric, best first (ties by index), then every other trial by index."""
    sign = -1.0 if goal == "maximize" else 1.0
    ranked = sorted((t for t in trials if t.ranked), key=lambda t: (sign * t.metric, t.index))
    rest = sorted((t for t in trials if not t.ranked), key=lambda t: t.index)
    return ranked + rest


def csv_value(value: Any) -> str:
    """Full precision in results.csv (the table rounds, the file must not)."""
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


class SweepDir:
    """A sweep's folder: manifest, trial specs, results."""

    def __init__(self, path: Path, meta: dict[str, Any], trials: list[TrialState]):
        self.path = Path(path)
        self.meta = meta
        self.trials = trials

    # -- paths ---------------------------------------------------------------------------
    @property
    def manifest(self) -> Path:
        return self.path / sweep_store.MANIFEST

    @property
    def results(self) -> Path:
        return self.path / sweep_store.RESULTS

    def trial_dir(self, index: int) -> Path:
        return sweep_store.trial_dir(self.path, index)

    def spec_path(self, index: int) -> Path:
        return self.trial_dir(index) / sweep_store.TRIAL_SPEC

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def metric(self) -> str:
        return self.meta["metric"]

    @property
    def goal(self) -> str:
        return self.meta["goal"]

    @property
    def parameters(self) -> list[str]:
        return list(self.meta["parameters"])

    def trial(self, index: int) -> TrialState:
        return self.trials[index]

    # -- create / open -------------------------------------------------------------------
    @classmethod
    def create(cls, runs_dir: Path, sweep: SweepSpec, trials: list[Trial], now: datetime | None = None) -> "SweepDir":
        """A new `<name>-<timestamp>` folder holding the launched sweep and every trial's spec."""
        from nnctl.config.spec import safe_run_name
        path = sweep_store.create_sweep_dir(Path(runs_dir), safe_run_name(sweep.name), now)
        launched = dump_yaml(launched_spec(sweep))
        header = (f"# launched {_now()} from {sweep.path.resolve() if sweep.path else sweep.source.filename}; "
                  f"base: {sweep.base_label}, resolved and inlined\n")
        text = header + launched
        sweep_store.write_launched(path, text)
        for t in trials:
            sweep_store.write_trial_spec(path, t.index, dump_yaml(t.config))
        meta = {
            "name": sweep.name,
            "description": sweep.description,
            "method": sweep.method,
            "seed": sweep.seed,
            "metric": sweep.metric,
            "goal": sweep.goal,
            "metrics": sweep.metrics,
            "goals": sweep.goals,
            "trials_declared": len(trials) if sweep.trials is None or not sweep.model_based else sweep.trials,
            "pruner": sweep.pruner.to_dict() if sweep.pruner is not None else None,
            # resume refuses a sweep.yaml edited since launch (its new trials come from it)
            "launched_sha256": hashlib.sha256(launched.encode()).hexdigest(),
            "parameters": [p.name for p in sweep.parameters],
            "sweep_file": str(sweep.path.resolve()) if sweep.path else None,
            "base": sweep.base_label,
            "created": _now(),
            "state": "created",
        }
        states = [TrialState(t.index, t.overrides, t.config_hash) for t in trials]
        sd = cls(path, meta, states)
        sd.save()
        return sd

    @classmethod
    def open(cls, path: Path) -> "SweepDir":
        """Read a sweep directory for --resume; anything missing is one NnctlError line."""
        path = Path(path)
        if not path.is_dir():
            raise NnctlError(f"{path}: no such sweep directory")
        data = sweep_store.read_manifest(path)
        if not isinstance(data, dict) or not isinstance(data.get("trials"), list):
            raise NnctlError(f"{path}: not a sweep directory (sweep.json is missing or unreadable)")
        try:
            meta = {k: v for k, v in data.items() if k != "trials"}
            for key in ("name", "metric", "goal", "parameters"):
                if key not in meta:
                    raise KeyError(key)
            trials = [TrialState.from_json(t) for t in data["trials"]]
        except (KeyError, TypeError) as err:
            raise NnctlError(f"{path / 'sweep.json'}: not a sweep manifest (missing {err})") from None
        sd = cls(path, meta, trials)
        for i, t in enumerate(trials):
            if t.index != i:
                raise NnctlError(f"{sd.manifest}: trial {i} is listed as index {t.index}")
            if not sd.spec_path(i).is_file():
                raise NnctlError(f"{sd.spec_path(i)}: missing; this trial's snapshotted spec is needed to resume")
        return sd

    # -- writes --------------------------------------------------------------------------
    def save(self) -> None:
        self.meta["updated"] = _now()
        sweep_store.write_manifest(self.path, {**self.meta, "trials": [asdict(t) for t in self.trials]})

    def ranking(self) -> list[TrialState]:
        return leaderboard(self.trials, self.goal)

    @property
    def metrics(self) -> list[str]:
        return list(self.meta.get("metrics") or [self.metric])

    @property
    def goals(self) -> list[str]:
        return list(self.meta.get("goals") or [self.goal])

    def pareto(self) -> set[int] | None:
        """With several metrics (nsga2): the finished trials on the Pareto front; else None."""
        if len(self.metrics) < 2:
            return None
        from nnctl.sweep.search import pareto_front
        points = [(t.index, list(t.values)) for t in self.trials
                  if t.status in DONE and t.values and len(t.values) == len(self.metrics)
                  and all(v is not None and math.isfinite(v) for v in t.values)]
        return set(pareto_front(points, self.goals)) if points else set()

    @property
    def declared(self) -> int:
        """How many trials the sweep is to have in the end."""
        return int(self.meta.get("trials_declared") or len(self.trials))

    def write_results(self) -> Path:
        """results.csv in leaderboard order: rank, index, each parameter, status, the metric(s), with
        several metrics `pareto` (1 on the front), epochs, run_dir, seconds, error."""
        params = self.parameters
        extra = self.metrics[1:]
        front = self.pareto()
        rows = []
        for rank, t in enumerate(self.ranking(), start=1):
            more = list(t.values[1:]) if t.values and len(t.values) == len(self.metrics) else [None] * len(extra)
            mark = [] if front is None else ["1" if t.index in front else ""]
            rows.append([rank if t.ranked else "", t.index, *(csv_value(t.overrides.get(p)) for p in params),
                         t.status, csv_value(t.metric), *(csv_value(v) for v in more), *mark,
                         "" if t.epochs is None else t.epochs, t.run_dir or "",
                         "" if t.seconds is None else f"{t.seconds:.2f}", t.error or ""])
        header = ["rank", "index", *params, "status", self.metric, *extra, *([] if front is None else ["pareto"]),
                  "epochs", "run_dir", "seconds", "error"]
        return sweep_store.write_results(self.path, header, rows)

    # -- resume --------------------------------------------------------------------------
    def completed_run(self, index: int) -> Path | None:
        """The newest run of trial `index` that finished with exactly its snapshotted config."""
        want = self.trials[index].config_hash
        for run in reversed(sweep_store.trial_runs(self.trial_dir(index))):
            status = read_run_status(run)
            if status is None or status.get("status") not in FINISHED:
                continue
            if not has_metrics(run):
                continue
            config = read_run_config(run)
            if config is not None and config_hash(config) == want:
                return run
        return None

    def resumable_run(self, index: int) -> Path | None:
        """The newest run of trial `index` that was interrupted with a checkpoint of exactly its config.

        Rerunning the trial continues that run from its last.npz (`nnctl train --resume`):
        resume is exact, so the result is the one an uninterrupted trial would have had.
        """
        for run in reversed(sweep_store.trial_runs(self.trial_dir(index))):
            status = read_run_status(run)
            if status is None:
                continue
            if status.get("status") != "interrupted" or not has_last_checkpoint(run):
                return None     # only the newest run may be continued
            config = read_run_config(run)
            return run if config is not None and config_hash(config) == self.trials[index].config_hash else None
        return None

    def locked(self):
        """A context holding the sweep's lock (see runs.sweep_store.sweep_lock): a second process is refused."""
        return sweep_store.sweep_lock(self.path, self.meta.get("pid"))

    def plan_resume(self) -> list[int]:
        """Mark what is already done (adopting finished runs the manifest missed); return the rest."""
        todo = []
        for t in self.trials:
            run = self.completed_run(t.index)
            if run is None:
                todo.append(t.index)
                continue
            if t.status in FINISHED and t.run_dir == str(run):
                continue
            # The run finished but the manifest never heard (the sweep died in between).
            status = (read_run_status(run) or {}).get("status", "completed")
            values, error = read_metrics(run, self.metrics)
            t.status, t.metric, t.error, t.run_dir = status, values[0], error, str(run)
            t.values = values if len(values) > 1 else None
            metrics = read_run_metrics(run) or {}
            t.seconds = metrics.get("seconds", t.seconds)
            t.epochs = metrics.get("epochs", t.epochs)
        return todo


def launched_spec(sweep: SweepSpec) -> dict[str, Any]:
    """The sweep as launched, self-contained: what sweep.yaml holds (after its comment line)."""
    metric: Any = sweep.metrics if len(sweep.metrics) > 1 else sweep.metric
    goal: Any = sweep.goals if len(sweep.goals) > 1 else sweep.goal
    return {
        "name": sweep.name,
        "description": sweep.description,
        "base": sweep.base,
        "method": sweep.method,
        **({"trials": sweep.trials} if sweep.method != "grid" else {}),
        "seed": sweep.seed,
        **({"pruner": sweep.pruner.to_dict()} if sweep.pruner is not None else {}),
        "parameters": sweep.source.data.get("parameters"),
        "metric": metric,
        "goal": goal,
    }


# -- running ----------------------------------------------------------------------------------

class SweepListener:
    """Progress events of a sweep; every method is optional to override."""

    def on_start(self, sweep: SweepDir, indices: list[int], executor: Any, total: int | None = None) -> None: ...
    def on_trial_start(self, trial: TrialState) -> None: ...
    def on_trial_end(self, trial: TrialState) -> None: ...
    def on_stop(self, reason: str) -> None: ...
    def on_tick(self) -> None: ...
    def on_end(self, sweep: SweepDir, outcome: "Outcome") -> None: ...


@dataclass
class Outcome:
    state: str                       # completed | interrupted | failed (fail-fast stopped it)
    exit_code: int
    counts: dict[str, int] = field(default_factory=dict)
    ran: list[int] = field(default_factory=list)
    seconds: float = 0.0


@contextmanager
def _stop_signals(on_signal) -> Iterator[None]:
    """SIGINT/SIGTERM call `on_signal(name)` instead of raising, while the sweep runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {}

    def handler(signum, frame) -> None:
        on_signal(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        old[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


class FixedTrials:
    """The trials of a grid or random sweep: all known at launch, run in index order."""

    def __init__(self, indices: list[int]):
        self.queue = deque(indices)
        self.planned = len(indices)

    def has_more(self) -> bool:
        return bool(self.queue)

    def next(self) -> int | None:
        return self.queue.popleft() if self.queue else None

    def job_extra(self, index: int) -> dict[str, Any]:
        return {}

    def ended(self, trial: TrialState) -> None:
        pass

    def cancel(self) -> list[int]:
        """Forget the trials not started yet; return the known ones (to mark interrupted)."""
        rest = list(self.queue)
        self.queue.clear()
        return rest


def run_sweep(sd: SweepDir, executor: Any, indices: list[int] | None = None, fail_fast: bool = False,
              listener: SweepListener | None = None, poll: float = 0.1, source: Any = None) -> Outcome:
    """Run the given trials (default: all) with at most `executor.slots` at a time.

    `source` hands out the next trial when a slot is free and hears when each ends: the fixed
    list of a grid/random sweep (default), or nnctl.sweep.study.StudyTrials, which asks an
    Optuna sampler and tells it the results. A failed trial is recorded and the rest go on,
    unless `fail_fast`. SIGINT/SIGTERM stop the running trials (their runs are marked
    interrupted by `nnctl train`), mark every unfinished trial interrupted and return exit
    code 130; a second signal kills at once.
    """
    listener = listener or SweepListener()
    if source is None:
        indices = list(range(len(sd.trials))) if indices is None else list(indices)
        source = FixedTrials(indices)
    else:
        indices = list(source.queue)
    for i in indices:
        t = sd.trials[i]
        t.status, t.metric, t.error, t.run_dir, t.seconds, t.started, t.finished = (
            "pending", None, None, None, None, None, None)
    sd.meta.update(state="running", pid=os.getpid(), host=socket.gethostname(),
                   executor=executor.name, workers=executor.workers)
    sd.save()
    t_start = time.perf_counter()
    stop = {"reason": None, "signals": 0}

    def on_signal(name: str) -> None:
        stop["signals"] += 1
        if stop["reason"] in (None, "fail-fast"):
            stop["reason"] = "interrupted"
            stop["signal"] = name

    running: dict[Any, tuple[int, float]] = {}
    ran: list[int] = []
    stop_sent = False
    killed = False
    deadline = math.inf
    listener.on_start(sd, indices, executor, source.planned)

    def ended(t: TrialState) -> None:
        source.ended(t)     # the study first: a crash after this leaves a run that resume adopts
        sd.save()
        listener.on_trial_end(t)
        if t.status == "failed" and fail_fast and stop["reason"] is None:
            stop["reason"] = "fail-fast"

    try:
        with _stop_signals(on_signal):
            while source.has_more() or running:
                try:
                    if stop["reason"] is None:
                        while len(running) < executor.slots:
                            i = source.next()
                            if i is None:
                                break
                            ran.append(i)
                            t = sd.trials[i]
                            if t.status == "failed":   # a proposal whose train spec is not valid
                                listener.on_trial_start(t)
                                ended(t)
                                continue
                            job = make_job(i, sd.spec_path(i), sd.trial_dir(i), sd.metric, executor.threads)
                            job.update(source.job_extra(i))
                            if t.attempts:
                                run = sd.resumable_run(i)
                                if run is not None:
                                    job["resume"] = str(run.resolve())
                            running[executor.submit(job)] = (i, time.perf_counter())
                            t.status, t.started, t.attempts = "running", _now(), t.attempts + 1
                            sd.save()
                            listener.on_trial_start(t)
                    for fut in [f for f in running if f.done()]:
                        i, t0 = running.pop(fut)
                        t = sd.trials[i]
                        _record(t, _result_of(fut, t0), stopping=stop["reason"] is not None)
                        ended(t)
                    if stop["reason"] is not None and not stop_sent:
                        stop_sent = True
                        executor.stop()
                        for i in source.cancel():
                            sd.trials[i].status = "interrupted"
                        sd.save()
                        listener.on_stop(stop["reason"])
                        deadline = time.monotonic() + STOP_GRACE + 20.0
                    if stop_sent and not killed and (stop["signals"] >= 2 or time.monotonic() > deadline - 10.0):
                        killed = True
                        executor.kill()
                    if stop_sent and time.monotonic() > deadline:
                        break
                    listener.on_tick()
                    time.sleep(poll)
                except KeyboardInterrupt:
                    # Only when the handler could not be installed (not the main thread).
                    on_signal("SIGINT")
    finally:
        for fut, (i, _) in running.items():
            t = sd.trials[i]
            t.status, t.finished = "interrupted", _now()
            try:
                fut.cancel()
            except Exception:
                pass
        if running or (stop["reason"] is not None and not stop_sent):
            executor.stop()   # e.g. an unexpected error: no trial may outlive the sweep
        for i in source.cancel():
            sd.trials[i].status = "interrupted"
        if stop["reason"] == "interrupted":
            state = "interrupted"
        elif stop["reason"] == "fail-fast":
            state = "failed"
        else:
            state = "completed"
        counts = {s: sum(t.status == s for t in sd.trials) for s in TRIAL_STATUSES}
        if any(t.status in ("pending", "running") for t in sd.trials) and state == "completed":
            state = "interrupted"   # an unexpected error left the loop early
        sd.meta.update(state=state, finished=_now())
        sd.save()
        sd.write_results()
    if state == "interrupted":
        code = EXIT_INTERRUPTED
    elif counts.get("failed", 0) or state == "failed":
        code = 1
    else:
        code = 0
    outcome = Outcome(state=state, exit_code=code, counts=counts, ran=ran,
                      seconds=time.perf_counter() - t_start)
    listener.on_end(sd, outcome)
    return outcome


def _result_of(fut: Any, t0: float) -> dict[str, Any]:
    try:
        return fut.result()
    except BaseException as err:  # a crash of the task itself (Dask: a lost worker, ...)
        return {"status": "failed", "metric": None, "run_dir": None,
                "error": f"{type(err).__name__}: {err}", "seconds": round(time.perf_counter() - t0, 3)}


def _record(t: TrialState, res: dict[str, Any], stopping: bool) -> None:
    status = res.get("status", "failed")
    if stopping and status not in FINISHED:
        status = "interrupted"      # stopped by us: whatever it died of is not its own failure
    t.status = status
    t.metric = res.get("metric")
    t.values = res.get("values")
    t.epochs = res.get("epochs")
    t.run_dir = res.get("run_dir")
    t.seconds = res.get("seconds")
    t.error = res.get("error") if status != "interrupted" else None
    t.finished = _now()
