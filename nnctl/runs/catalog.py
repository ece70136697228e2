"""The run catalog: reading run directories (and sweep trials) for `runs`, `show`, `diff` and `plot`.

Everything here only reads JSON/YAML files; a run whose files are missing or damaged is
described (status "broken", with the reason), never an exception, so one bad folder
cannot break a listing of a hundred good ones.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from nnctl.errors import ConfigError, NnctlError, excerpt, quoted
from nnctl.fileio import RUN_JSON_MAX_BYTES, SPEC_MAX_BYTES, read_text
from nnctl.runs.store import RUN_FILES, read_json
from nnctl.engine.metrics import MAIN_METRIC, auto_mode, direction

# RunDir.create names folders <name>-<YYYYmmdd-HHMMSS>[-<n>].
_STAMP_RE = re.compile(r"-(\d{8}-\d{6})(?:-\d+)?$")

# Keys `--sort` takes besides metric names (which are looked up per run).
SORT_COLUMNS = ("name", "started", "status", "dataset", "epochs", "parameters", "time", "best")
_SORT_ALIASES = {"params": "parameters", "seconds": "time", "wall": "time", "date": "started"}

FINISHED = ("completed", "stopped_early")


@dataclass
class RunInfo:
    """What the files of one run directory say; every field may be missing (None)."""

    path: Path
    name: str
    status: str                         # a STATUSES value, or "crashed?" / "broken"
    problem: str | None = None          # why the run is broken or crashed, one line
    config: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] | None = None
    status_record: dict[str, Any] | None = None
    started: datetime | None = None
    checkpoints: list[str] = field(default_factory=list)

    # -- derived -----------------------------------------------------------------------
    @property
    def short_name(self) -> str:
        """The name without its -YYYYmmdd-HHMMSS stamp (a -2 suffix stays): the started column shows it."""
        match = _STAMP_RE.search(self.name)
        if not match:
            return self.name
        suffix = self.name[match.end(1):]
        return self.name[:match.start()] + suffix

    @property
    def dataset(self) -> str | None:
        data = (self.config or {}).get("data")
        name = data.get("dataset") if isinstance(data, dict) else None
        if not isinstance(name, str):
            return None
        # stored configs hold absolute paths; the file name is what tells runs apart
        return Path(name).name if ("/" in name or "\\" in name) else name

    @property
    def task(self) -> str | None:
        data = (self.config or {}).get("data")
        if isinstance(data, dict) and data.get("task") in ("classification", "regression"):
            return data["task"]
        keys = set().union(*(r.keys() for r in self.history)) if self.history else set()
        keys |= set((self.metrics or {}).get("test") or {})
        if keys & {"accuracy", "val_accuracy", "test_accuracy"}:
            return "classification"
        if keys & {"r2", "val_r2", "test_r2", "mae"}:
            return "regression"
        return None

    @property
    def main_metric(self) -> str:
        """accuracy for classification, r2 for regression, else loss."""
        return MAIN_METRIC.get(self.task or "", "loss")

    @property
    def epochs(self) -> int | None:
        if self.metrics and isinstance(self.metrics.get("epochs"), int):
            return self.metrics["epochs"]
        if self.history or self.metrics is not None:
            return len(self.history)
        done = (self.status_record or {}).get("epochs_done")  # a run that failed before its first epoch
        return done if isinstance(done, int) and not isinstance(done, bool) else None

    @property
    def max_epochs(self) -> int | None:
        training = (self.config or {}).get("training")
        value = training.get("epochs") if isinstance(training, dict) else None
        return value if isinstance(value, int) else None

    @property
    def monitor(self) -> str | None:
        if self.metrics and isinstance(self.metrics.get("monitor"), str):
            return self.metrics["monitor"]
        training = (self.config or {}).get("training")
        es = training.get("early_stopping") if isinstance(training, dict) else None
        if isinstance(es, dict) and isinstance(es.get("monitor"), str):
            return es["monitor"]
        if self.history:
            return "val_loss" if "val_loss" in self.history[-1] else "loss"
        return None

    @property
    def best(self) -> tuple[int | None, float | None]:
        """(best epoch, best value of the monitor): from metrics.json, else from the history so far."""
        if self.metrics and self.metrics.get("best_epoch") is not None:
            return self.metrics.get("best_epoch"), _number(self.metrics.get("best_value"))
        record = self.best_record
        if record is None or self.monitor is None:
            return None, None
        return record.get("epoch"), _number(record.get(self.monitor))

    @property
    def best_record(self) -> dict[str, Any] | None:
        """The history record of the best epoch (metrics.json's, else the best so far)."""
        if self.metrics and isinstance(self.metrics.get("best"), dict) and self.metrics["best"]:
            return self.metrics["best"]
        monitor = self.monitor
        if monitor is None:
            return None
        scored = [r for r in self.history if _number(r.get(monitor)) is not None]
        if not scored:
            return None
        pick = max if auto_mode(monitor) == "max" else min
        return pick(scored, key=lambda r: r[monitor])

    @property
    def test(self) -> dict[str, float]:
        test = (self.metrics or {}).get("test")
        return {k: v for k, v in test.items() if _number(v) is not None} if isinstance(test, dict) else {}

    @property
    def parameters(self) -> int | None:
        value = (self.metrics or {}).get("parameters")
        return value if isinstance(value, int) else None

    @property
    def seconds(self) -> float | None:
        value = _number((self.metrics or {}).get("seconds"))
        if value is not None:
            return value
        spent = [_number(r.get("seconds")) for r in self.history]
        spent = [s for s in spent if s is not None]
        return float(sum(spent)) if spent else None

    def metric(self, key: str) -> float | None:
        """A metric for sorting and comparing: test_* from metrics.json, others at the best epoch."""
        if key.startswith("test_"):
            return _number(self.test.get(key))
        record = self.best_record or (self.history[-1] if self.history else None)
        return _number(record.get(key)) if record else None

    def to_dict(self) -> dict[str, Any]:
        epoch, value = self.best
        return {
            "name": self.name, "path": str(self.path), "dataset": self.dataset, "task": self.task,
            "status": self.status, "problem": self.problem, "epochs": self.epochs,
            "max_epochs": self.max_epochs,
            "best": {"monitor": self.monitor, "value": value, "epoch": epoch},
            "test": self.test, "parameters": self.parameters, "seconds": self.seconds,
            "started": self.started.isoformat(timespec="seconds") if self.started else None,
        }


def _number(value: Any) -> float | None:
    """A finite-or-not float from JSON, or None for anything that is not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _read_json(path: Path) -> tuple[Any, str | None]:
    """(data, problem): problem says 'missing' or why the file cannot be used."""
    if not os.path.lexists(path):
        return None, "missing"
    try:
        text = read_text(path, RUN_JSON_MAX_BYTES)
    except NnctlError as err:  # not a regular file, too large, not UTF-8, unreadable
        return None, f"unreadable ({str(err).split(': ', 1)[-1]})"
    try:
        return json.loads(text), None
    except (ValueError, RecursionError):
        return None, "corrupt JSON"


def pid_alive(pid: Any) -> bool:
    """Whether a process with this id exists (on this machine)."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return False
    return True


def _started(path: Path) -> datetime | None:
    match = _STAMP_RE.search(path.name)
    if match:
        try:
            return datetime.strptime(match.group(1), "%Y%m%d-%H%M%S")
        except ValueError:
            pass
    for candidate in (path / "config.yaml", path):
        try:
            return datetime.fromtimestamp(candidate.stat().st_mtime)
        except OSError:
            continue
    return None


def read_run(path: Path) -> RunInfo:
    """Everything the files of run directory `path` say, with a status that is never a lie.

    status: the one in status.json, except "running" whose process is gone ("crashed?"),
    and "broken" when the run cannot be used (no checkpoints, damaged files).
    """
    path = Path(path)
    info = RunInfo(path=path, name=path.name, status="broken", started=_started(path))
    problems: list[str] = []

    try:
        config_text = read_text(path / "config.yaml", SPEC_MAX_BYTES)
        config = yaml.safe_load(config_text)
        if isinstance(config, dict):
            info.config = config
        else:
            problems.append("config.yaml is not a mapping")
    except NnctlError:  # missing, not a regular file, too large, not UTF-8
        problems.append("config.yaml is unreadable" if os.path.lexists(path / "config.yaml") else "no config.yaml")
    except (yaml.YAMLError, RecursionError):
        problems.append("config.yaml is unreadable")

    history, why = _read_json(path / "history.json")
    if isinstance(history, list):
        info.history = [r for r in history if isinstance(r, dict)]
    elif why not in (None, "missing"):
        problems.append(f"history.json is {why}")
    elif why is None:
        problems.append("history.json is not a list")

    metrics, why = _read_json(path / "metrics.json")
    if isinstance(metrics, dict):
        info.metrics = metrics
    elif why not in (None, "missing"):
        problems.append(f"metrics.json is {why}")

    status, why = _read_json(path / "status.json")
    if isinstance(status, dict) and isinstance(status.get("status"), str):
        info.status_record = status
        info.status = status["status"]
    elif why == "missing":
        if info.metrics and isinstance(info.metrics.get("status"), str):
            info.status = info.metrics["status"]
        else:
            problems.insert(0, "no status.json")
    else:
        problems.insert(0, f"status.json is {why or 'not a status record'}")

    ckpt_dir = path / "checkpoints"
    try:
        info.checkpoints = sorted(p.name for p in ckpt_dir.iterdir() if p.suffix == ".npz")
    except OSError:
        info.checkpoints = []

    if info.status == "failed":
        # the trainer's error message is the reason; show and runs --json give it whole
        error = (info.status_record or {}).get("error")
        info.problem = error if isinstance(error, str) and error else "failed (no error recorded in status.json)"
    if info.status == "running":
        pid = (info.status_record or {}).get("pid")
        if not pid_alive(pid):
            info.status = "crashed?"
            info.problem = f"status is running but process {pid} is gone"
    if not info.checkpoints and info.status != "running":
        problems.insert(0, "no checkpoints")
    if problems and info.status != "running":
        if info.status in FINISHED or info.status == "broken" or not info.checkpoints:
            info.status = "broken"
        info.problem = "; ".join(problems) if info.problem is None else f"{info.problem}; {'; '.join(problems)}"
    return info


def is_run_dir(path: Path) -> bool:
    """A folder that holds any file a run writes (or a checkpoints/ folder)."""
    return path.is_dir() and (any((path / f).exists() for f in RUN_FILES) or (path / "checkpoints").is_dir())


def scan_runs(runs_dir: Path) -> list[RunInfo]:
    """Every run directory directly under `runs_dir`, and the trial runs of sweeps there
    (hidden folders skipped), unsorted."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        what = "is not a directory" if runs_dir.exists() else "no such runs directory"
        raise NnctlError(f"{runs_dir}: {what}")
    try:
        entries = sorted(runs_dir.iterdir())
    except OSError as err:
        raise NnctlError(f"{runs_dir}: cannot list: {err.strerror or err}") from None
    runs = []
    for p in entries:
        if p.name.startswith("."):
            continue
        if is_run_dir(p):
            runs.append(_read_safely(p))
        elif (p / "sweep.json").is_file():
            # a sweep keeps its trials' runs at <sweep>/trials/<k>/<run>/: list them too
            for trial in sorted((p / "trials").glob("*/*")):
                if trial.is_dir() and is_run_dir(trial):
                    runs.append(_read_safely(trial))
    return runs


def _read_safely(path: Path) -> RunInfo:
    # read_run handles every damage we know of; anything else still must not sink the listing
    try:
        return read_run(path)
    except Exception as err:  # noqa: BLE001
        return RunInfo(path=path, name=path.name, status="broken",
                       problem=f"unreadable ({type(err).__name__}: {err})", started=_started(path))


def open_run(path: Path) -> RunInfo:
    """One run directory for show/diff/plot; a path that is not a run is an error."""
    path = Path(path)
    if not path.is_dir():
        raise NnctlError(f"{path}: no such run directory")
    if not is_run_dir(path):
        raise NnctlError(f"{path}: not a run directory (no config.yaml, status.json, history.json or checkpoints/)")
    return read_run(path)


def kept_metric(run: Path, metric: str) -> tuple[float | None, str | None]:
    """(value, problem): the metric of the weights the run kept, as a sweep ranks its trials.

    test_* from metrics.json, else that epoch's record: with restore_best (the default) the
    kept weights are the best epoch's, so the value is the metric in the best epoch's
    record; otherwise the last epoch's.
    """
    metrics = read_json(run / "metrics.json")
    if not isinstance(metrics, dict):
        return None, f"{run}: no metrics.json"
    if metric.startswith("test_"):
        value = (metrics.get("test") or {}).get(metric)
    else:
        record = metrics.get("best") if metrics.get("weights", "best") == "best" else None
        if not record:
            history = read_json(run / "history.json", [])
            record = history[-1] if isinstance(history, list) and history else {}
        value = record.get(metric)
    if value is None:
        return None, f"{metric} was not logged by this run"
    try:
        return float(value), None
    except (TypeError, ValueError):
        return None, f"{metric} is not a number: {quoted(value)}"


# ---------------------------------------------------------------------------- sorting

def sort_runs(runs: list[RunInfo], key: str | None) -> list[RunInfo]:
    """Runs ordered by `key`: a column (name, started, ...) or a metric, best first.

    Metrics that grow when better (accuracy, r2) sort descending, the rest ascending;
    runs without the value go last. No key: by start time, oldest first.
    """
    if key is None:
        return sorted(runs, key=lambda r: (r.started is None, r.started or datetime.min, r.name))
    key = _SORT_ALIASES.get(key, key)
    if key in ("name", "status", "dataset"):
        return sorted(runs, key=lambda r: (getattr(r, key) is None, str(getattr(r, key) or "")))
    if key == "started":
        return sort_runs(runs, None)
    if key in ("epochs", "parameters", "time"):
        attr = "seconds" if key == "time" else key
        return _by_value(runs, lambda r: getattr(r, attr), descending=False)
    if key == "best":
        return _by_value(runs, lambda r: r.best[1],
                         descending=lambda r: auto_mode(r.monitor or "loss") == "max")
    if not any(r.metric(key) is not None for r in runs):
        logged = sorted({k for r in runs for k in [*(r.best_record or {}), *r.test]
                         if k not in ("epoch", "seconds")})
        raise NnctlError(f"--sort: no run has a metric '{key}'; use a column ({', '.join(SORT_COLUMNS)})"
                         + (f" or a metric ({', '.join(logged)})" if logged else ""))
    return _by_value(runs, lambda r: r.metric(key), descending=auto_mode(key) == "max")


def _by_value(runs, value, descending) -> list[RunInfo]:
    def sort_key(r):
        v = value(r)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return (1, 0.0, r.name)
        down = descending(r) if callable(descending) else descending
        return (0, -v if down else v, r.name)
    return sorted(runs, key=sort_key)


# ---------------------------------------------------------------------------- diff

MISSING = object()


def config_diff(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, value in a, value in b) for every setting that differs; MISSING marks absence.

    Mappings are compared key by key and lists of mappings of equal length (layer lists)
    index by index (model.layers.0.units); anything else is compared whole, so a short
    form (hidden: [64]) against a long form (layers: [...]) is one row, not fifty. The run
    name is left out: the folder names show it already.
    """
    if isinstance(a, dict) and isinstance(b, dict):
        rows = []
        for k in list(a) + [k for k in b if k not in a]:
            key = f"{prefix}.{k}" if prefix else str(k)
            if key == "name":
                continue
            rows += config_diff(a.get(k, MISSING), b.get(k, MISSING), key)
        return rows
    if (isinstance(a, list) and isinstance(b, list) and len(a) == len(b)
            and any(isinstance(v, (dict, list)) for v in a + b)):
        rows = []
        for i, (va, vb) in enumerate(zip(a, b)):
            rows += config_diff(va, vb, f"{prefix}.{i}" if prefix else str(i))
        return rows
    if a is MISSING or b is MISSING or not _same(a, b):
        return [(prefix, a, b)]
    return []


def _same(a: Any, b: Any) -> bool:
    # 1 and 1.0 are the same setting; True and 1 are not (nor inside lists and mappings)
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (list, dict)) or isinstance(b, (list, dict)):
        return type(a) is type(b) and json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    return a == b


def is_missing(value: Any) -> bool:
    return value is MISSING


def check_config_unedited(config_file: Path, trained: dict[str, Any], checkpoint: Path) -> None:
    """Refuse a resume whose run folder's config.yaml no longer says what the run trained with.

    `trained` is the resolved spec stored in `checkpoint` (Spec.to_dict()), which --resume
    continues with; an edit to config.yaml (more epochs, another lr) would otherwise be
    silently ignored, and the folder would describe a run that never happened. Both sides are compared resolved, so comments, layout and
    spelled-out defaults are not edits; the run name is not compared (config_diff skips it).
    A missing config.yaml is no edit: the checkpoint alone is enough to resume.
    """
    from nnctl.config.spec import load_spec

    if not os.path.lexists(config_file):
        return
    written = load_spec(config_file).to_dict()
    rows = config_diff(trained, written)
    if not rows:
        return
    key, was, now = rows[0]

    def shown(v: Any) -> str:
        return "absent" if v is MISSING else excerpt(json.dumps(v, default=str))
    raise ConfigError(f"{config_file}: {key} is {shown(now)}, the run was trained with {shown(was)} (the config "
                      f"stored in {checkpoint.name}, which --resume continues with); undo the edit, or start "
                      f"a new run with it: nnctl train {config_file}")


def metric_rows(run: RunInfo) -> dict[str, Any]:
    """The numbers worth comparing, in display order: summary, final epoch, best epoch, test."""
    rows: dict[str, Any] = {"epochs": run.epochs}
    epoch, value = run.best
    rows["best_epoch"] = epoch
    if run.monitor:
        rows[f"best {run.monitor}"] = value
    rows["parameters"] = run.parameters
    rows["seconds"] = run.seconds
    if run.history:
        for k, v in run.history[-1].items():
            if k not in ("epoch", "seconds"):
                rows[f"final {k}"] = _number(v)
    best = run.best_record or {}
    for k, v in best.items():
        if k not in ("epoch", "seconds", "lr"):
            rows[f"best-epoch {k}"] = _number(v)
    for k, v in run.test.items():
        rows[k] = v
    return rows


def metric_diff(a: RunInfo, b: RunInfo) -> list[tuple[str, Any, Any, float | None]]:
    """(metric, value in a, value in b, b - a) over the union of both runs' metrics."""
    ra, rb = metric_rows(a), metric_rows(b)
    keys = list(ra) + [k for k in rb if k not in ra]
    out = []
    for k in keys:
        va, vb = ra.get(k), rb.get(k)
        na, nb = _number(va), _number(vb)
        delta = nb - na if na is not None and nb is not None else None
        out.append((k, va, vb, delta))
    return out


def better_direction(metric: str) -> str | None:
    """'max'/'min' for a diff row ("best val_loss", "final accuracy", "test_r2"), None when unknown."""
    return direction(metric.split(" ")[-1])
