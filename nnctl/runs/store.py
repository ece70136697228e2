"""Run directories: atomic writes of config, history, status, metrics and checkpoints.

Layout of one run (`runs/<name>-<YYYYmmdd-HHMMSS>/`):
    config.yaml            the resolved spec (valid input for `nnctl train`)
    status.json            {"status": one of nnctl.status.STATUSES, ...}
    history.json           a list of per-epoch records, rewritten atomically after every epoch
    metrics.json           final test metrics and the best epoch
    checkpoints/last.npz   the state after the last completed epoch (what --resume loads)
    checkpoints/best.npz   the weights of the best epoch so far
Every file is written to a temporary file in the same folder, flushed, fsynced and renamed
over the old one, so a crash leaves either the old or the new file, never a torn one.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import yaml

from nnctl.errors import NnctlError
from nnctl.fileio import RUN_JSON_MAX_BYTES, SPEC_MAX_BYTES, read_text, regular_file_problem, shown
from nnctl.status import STATUSES

RUN_FILES = ("config.yaml", "status.json", "history.json", "metrics.json")


def atomic_write(path: Path, write: Callable[[Any], None], binary: bool = True) -> None:
    """Write via `write(fileobj)` into a temp file beside `path`, fsync, then rename over it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the directory entry is on disk too.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, allow_nan=True, default=json_default) + "\n"
    atomic_write(path, lambda f: f.write(text), binary=False)


def json_default(obj: Any) -> Any:
    """JSON for the NumPy scalars/arrays and paths that metadata and metrics may hold."""
    import numpy as np
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def read_json(path: Path, default: Any = None) -> Any:
    """The JSON in `path`, or `default` when it is missing, not a regular file, too large,
    not UTF-8 or not JSON (a FIFO dropped into a run folder must not hang a reader)."""
    try:
        return json.loads(read_text(path, RUN_JSON_MAX_BYTES))
    except (NnctlError, ValueError, RecursionError):
        return default


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, allow_unicode=True)


def unique_dir(parent: Path, name: str, now: datetime | None = None, what: str = "run") -> Path:
    """A new folder `<parent>/<name>-<YYYYmmdd-HHMMSS>`; `-2`, `-3`, ... when that name is taken.

    os.mkdir either creates the folder or fails, so two runs (or sweeps) started in the same
    second, even in two processes, can never share a folder.
    """
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NnctlError(f"{parent}: cannot create the runs directory: {err.strerror}") from None
    base = f"{name}-{(now or datetime.now()).strftime('%Y%m%d-%H%M%S')}"
    for n in range(1, 10_000):
        path = parent / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as err:
            raise NnctlError(f"{path}: cannot create the {what} directory: {err.strerror}") from None
        return path
    raise NnctlError(f"{parent}: too many {what}s named {base}")


class RunDir:
    """One run's folder and the writes into it."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.npz"

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.npz"

    @classmethod
    def create(cls, runs_dir: Path, name: str, now: datetime | None = None) -> "RunDir":
        """A new folder `<name>-<timestamp>` (see `unique_dir`) with its checkpoints/ folder."""
        path = unique_dir(Path(runs_dir), name, now, what="run")
        (path / "checkpoints").mkdir()
        return cls(path)

    @classmethod
    def open(cls, path: Path) -> "RunDir":
        path = Path(path)
        if not path.is_dir():
            raise NnctlError(f"{path}: no such run directory")
        return cls(path)

    def check_replaceable(self) -> None:
        """Before a resume writes: each run file it rewrites is a regular file or absent.

        Every write renames a temp file over the old one, which fails on a folder and would
        throw away whatever a FIFO or device there was for; found only at the first write,
        that leaves a run marked failed with a message that names no file.
        """
        for path in (*(self.path / name for name in RUN_FILES), self.last, self.best):
            problem = regular_file_problem(path)
            if problem is not None and problem != "no such file":
                raise NnctlError(f"{shown(path)}: {problem}; resuming would replace it, so nothing was changed")

    def remove_temp_files(self) -> int:
        """Delete the temp files `atomic_write` leaves when its process is killed mid-write.

        Only for a run no process is writing (resume). Returns how many were removed.
        """
        removed = 0
        names = (*RUN_FILES, "last.npz", "best.npz")
        for folder in (self.path, self.checkpoints):
            try:
                entries = list(folder.iterdir())
            except OSError:
                continue
            for p in entries:
                if p.name.endswith(".tmp") and any(p.name.startswith(f".{n}.") for n in names):
                    try:
                        p.unlink()
                        removed += 1
                    except OSError:
                        pass
        return removed

    def lock(self) -> None:
        """Hold an exclusive lock on the run for as long as this process lives.

        Two trainers writing one run (a double --resume) would interleave checkpoints and
        delete each other's temp files; flock is released by the kernel even on SIGKILL.
        """
        import fcntl
        try:
            fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:  # a read-only mount, a folder we may not write
            raise NnctlError(f"{self.path}: cannot write to the run folder ({err.strerror or err}); "
                             f"nothing was changed") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise NnctlError(f"{self.path}: another nnctl process is training this run; "
                             f"wait for it to finish or stop it first") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        fd = getattr(self, "_lock_fd", None)
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def remove_if_empty(self) -> None:
        """Remove a freshly created run folder that holds nothing yet (best effort)."""
        try:
            (self.path / ".lock").unlink()
        except OSError:
            pass
        for folder in (self.checkpoints, self.path):
            try:
                folder.rmdir()
            except OSError:
                return

    # -- files -------------------------------------------------------------------------
    def write_config(self, config: dict[str, Any]) -> None:
        write_run_file(self.path, self.config_file.name, dump_yaml(config))

    def write_history(self, history: list[dict[str, Any]]) -> None:
        write_json(self.path / "history.json", history)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json(self.path / "metrics.json", metrics)

    def set_status(self, status: str, **extra: Any) -> None:
        assert status in STATUSES, status
        current = self.read_status() or {}
        record = {**current, "status": status, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "pid": os.getpid(), **extra}
        if status != "failed":
            record.pop("error", None)
        write_json(self.path / "status.json", record)

    def read_status(self) -> dict[str, Any] | None:
        return read_json(self.path / "status.json")


# -- reading a run's files by its path (sweeps, benches) ---------------------------------------

def read_run_status(run: Path) -> dict[str, Any] | None:
    """status.json's record, or None when it is missing, unreadable or not an object."""
    record = read_json(Path(run) / "status.json")
    return record if isinstance(record, dict) else None


def read_run_metrics(run: Path) -> dict[str, Any] | None:
    """metrics.json's record, or None when it is missing, unreadable or not an object."""
    record = read_json(Path(run) / "metrics.json")
    return record if isinstance(record, dict) else None


def read_run_history(run: Path) -> list[dict[str, Any]]:
    """history.json's per-epoch records ([] when missing or unreadable)."""
    history = read_json(Path(run) / "history.json", [])
    return history if isinstance(history, list) else []


def read_run_config_text(run: Path) -> str | None:
    """config.yaml's text as the run wrote it (comments and order kept), or None when unreadable."""
    try:
        return read_text(Path(run) / "config.yaml", SPEC_MAX_BYTES)
    except NnctlError:
        return None


def read_run_config(run: Path) -> dict[str, Any] | None:
    """config.yaml as written by the run, or None when it is missing, unreadable or not a mapping."""
    try:
        config = yaml.safe_load(read_text(Path(run) / "config.yaml", SPEC_MAX_BYTES))
    except (NnctlError, yaml.YAMLError, RecursionError):
        return None
    return config if isinstance(config, dict) else None


def has_metrics(run: Path) -> bool:
    """The run wrote its final metrics (it ran to an end)."""
    return (Path(run) / "metrics.json").is_file()


def has_last_checkpoint(run: Path) -> bool:
    """The run holds a checkpoint `--resume` can continue from."""
    return RunDir(run).last.is_file()


def write_lr_find(folder: Path, config: dict[str, Any], result: dict[str, Any]) -> None:
    """An lr-find folder: the resolved spec (config.yaml) and the curve with its suggestions (lr_find.json)."""
    RunDir(folder).write_config(config)
    write_json(Path(folder) / "lr_find.json", result)


def write_run_file(run: Path, name: str, text: str) -> None:
    """A text file in a run (or sweep) folder, replaced atomically: config.yaml, a logger's
    history.csv or mlflow_run_id, a sweep's sweep.yaml and trial specs."""
    atomic_write(Path(run) / name, lambda f: f.write(text), binary=False)


def read_run_file(run: Path, name: str) -> str | None:
    """The text of such a file, or None when the run has none."""
    path = Path(run) / name
    return path.read_text(encoding="utf-8") if path.exists() else None
