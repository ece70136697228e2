"""A sweep's folder on disk: the only code that reads or writes its files (layout in nnctl/sweep/runner.py).

A sweep folder is a run folder too: the same atomic writes (nnctl.runs.store), and each trial's
runs are read through the same functions as any run's.
"""
from __future__ import annotations

import csv
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Iterator

from nnctl.errors import NnctlError
from nnctl.fileio import RUN_JSON_MAX_BYTES, read_text
from nnctl.runs.store import atomic_write, read_json, unique_dir, write_json, write_run_file

MANIFEST = "sweep.json"
LAUNCHED = "sweep.yaml"
RESULTS = "results.csv"
TRIAL_SPEC = "spec.yaml"
TRIAL_LOG = "train.log"
# the Optuna study of a model-based sweep: Optuna's journal storage writes it, nnctl.sweep.search opens it
JOURNAL = "study.journal"


def create_sweep_dir(runs_dir: Path, name: str, now: datetime | None = None) -> Path:
    return unique_dir(Path(runs_dir), name, now, what="sweep")


def trial_dir(sweep: Path, index: int) -> Path:
    return Path(sweep) / "trials" / str(index)


def write_launched(sweep: Path, text: str) -> None:
    write_run_file(sweep, LAUNCHED, text)


def read_launched(sweep: Path) -> str:
    """sweep.yaml's text: regular, bounded, UTF-8, else an NnctlError naming it."""
    return read_text(Path(sweep) / LAUNCHED, RUN_JSON_MAX_BYTES, what="launched sweep spec")


def write_trial_spec(sweep: Path, index: int, text: str, new: bool = True) -> None:
    """trials/<index>/spec.yaml; `new` refuses a trial folder that already exists (a fresh sweep has none)."""
    folder = trial_dir(sweep, index)
    folder.mkdir(parents=True, exist_ok=not new)
    write_run_file(folder, TRIAL_SPEC, text)


def read_manifest(sweep: Path) -> Any:
    """sweep.json's content, or None when it is missing or unreadable."""
    return read_json(Path(sweep) / MANIFEST)


def write_manifest(sweep: Path, data: dict[str, Any]) -> None:
    write_json(Path(sweep) / MANIFEST, data)


def write_results(sweep: Path, header: list[str], rows: list[list[Any]]) -> Path:
    path = Path(sweep) / RESULTS

    def write(f) -> None:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)

    atomic_write(path, write, binary=False)
    return path


@contextmanager
def sweep_lock(sweep: Path, pid: Any = None) -> Iterator[None]:
    """Hold `.lock` while this process works on the sweep; a second process is refused.

    An flock is released by the kernel when its holder dies, even by SIGKILL, so a
    crashed sweep never blocks its own resume, and a reused pid cannot fool it.
    """
    import fcntl
    try:
        f = open(Path(sweep) / ".lock", "a+")
    except OSError as err:  # a read-only mount, a folder we may not write
        raise NnctlError(f"{sweep}: cannot write to the sweep folder ({err.strerror or err}); "
                         f"nothing was changed") from None
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        who = f" (pid {pid})" if pid else ""
        raise NnctlError(f"{sweep}: this sweep is running in another process{who}; "
                         f"stop it before resuming") from None
    try:
        yield
    finally:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        finally:
            f.close()


# -- one trial's folder: its runs and its log ------------------------------------------------

def trial_runs(folder: Path) -> list[Path]:
    """The run folders under a trial's folder, oldest first (their names end in a timestamp)."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def open_trial_log(folder: Path) -> IO[bytes]:
    """trials/<k>/train.log for appending (created with its folder): every attempt adds to it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return open(folder / TRIAL_LOG, "ab")


def read_trial_log(folder: Path, offset: int) -> str:
    """What the trial's log holds from `offset` on ("" when it cannot be read)."""
    try:
        with open(Path(folder) / TRIAL_LOG, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""
