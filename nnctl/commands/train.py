"""`nnctl train`: a new run from a spec, or `--resume` of an existing one."""
from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path

from nnctl.config.spec import load_spec, safe_run_name, spec_from_dict
from nnctl.console import console, err_console
from nnctl.errors import CheckpointError, NnctlError
from nnctl.report.progress import PlainReporter, RichReporter, summary_line, summary_table
from nnctl.runs.checkpoint import load_checkpoint
from nnctl.runs.store import RunDir
from nnctl.threads import header as threads_header, limited as blas_limited, resolve as resolve_threads
from nnctl.training.experiment import prepare
from nnctl.training.trainer import Trainer

EXIT_CODES = {"completed": 0, "stopped_early": 0, "failed": 1, "interrupted": 130}


def _reporter(quiet: bool):
    if quiet:
        return PlainReporter(console, quiet=True)
    return RichReporter(console) if console.is_terminal else PlainReporter(console)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _sigterm_as_interrupt():
    """SIGTERM (a scheduler or `kill`) stops training like Ctrl-C: checkpoint kept, resumable."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_interrupt)


def _restore_sigterm(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def run_training(config: Path | None, overrides: list[str], resume: Path | None,
                 runs_dir: Path, quiet: bool, threads: int | None = None) -> int:
    """Validate, load data and build everything first; only then create the run directory."""
    held: list[RunDir] = []
    try:
        # speed (threads): the BLAS limit applied inside is undone when the run returns
        with contextlib.ExitStack() as blas:
            return _run_training(config, overrides, resume, runs_dir, quiet, held, threads, blas)
    finally:
        for run in held:  # in-process callers (tests, sweeps) may open the run again
            run.unlock()


def _run_training(config, overrides, resume, runs_dir, quiet, held: list, threads: int | None,
                  blas: contextlib.ExitStack) -> int:
    if resume is not None:
        if config is not None or overrides:
            raise NnctlError("--resume continues a run with its stored config; don't pass a spec or --set")
        run = RunDir.open(resume)
        run.lock()  # before touching its files: another process may be writing them
        held.append(run)
        if not run.last.exists() and run.checkpoints.is_dir():
            raise CheckpointError(f"{run.last}: no such checkpoint; the run stopped before its first checkpoint "
                                  f"was written, so there is nothing to resume (train the spec again)")
        run.remove_temp_files()  # left by a process killed mid-write
        last = load_checkpoint(run.last)
        best = load_checkpoint(run.best) if run.best.exists() else None
        spec = spec_from_dict(last.meta["config"], filename=f"{run.last} config")
        choice = resolve_threads(threads, spec, resumed=True)  # speed (threads) hook
        blas.enter_context(blas_limited(choice.threads, choice.source))
        exp = prepare(spec)
        trainer = Trainer(exp, run, _reporter(quiet))
        trainer.restore(last, best)
        if trainer.epoch >= spec.training.epochs or trainer.stopper.stopped_epoch is not None:
            status = (run.read_status() or {}).get("status", "completed")
            if status not in ("interrupted", "failed", "running"):
                raise CheckpointError(f"{resume}: the run already finished ({status}); nothing to resume")
    else:
        if config is None:
            raise NnctlError("give a spec to train (nnctl train CONFIG.yaml) or --resume RUN_DIR")
        spec = load_spec(config, overrides)
        # speed (threads) hook: recorded in the config; applied before the run folder exists
        choice = resolve_threads(threads, spec, resumed=False)
        blas.enter_context(blas_limited(choice.threads, choice.source))
        exp = prepare(spec)
        run = RunDir.create(runs_dir, safe_run_name(spec.name))
        try:
            run.lock()
            held.append(run)
            run.write_config(spec.to_dict())
        except NnctlError:  # the lock could not be taken (a read-only folder)
            run.remove_if_empty()
            raise
        except OSError as err:
            run.remove_if_empty()  # nothing of the run was written: leave no broken folder behind
            raise NnctlError(f"{run.path}: cannot write: {err.strerror or err}") from None
        trainer = Trainer(exp, run, _reporter(quiet))
    if not quiet:  # speed (threads) hook: the train header's threads line

        console.print(threads_header(choice), markup=False, highlight=False, soft_wrap=True)
    previous = _sigterm_as_interrupt()
    try:
        result = trainer.fit()
    except KeyboardInterrupt:
        # Ctrl-C/SIGTERM outside the epoch loop (while marking the run running, or while
        # finishing it): still an interrupt, not a failure; last.npz is complete either way.
        try:
            run.set_status("interrupted", epochs_done=trainer.epoch)
        except (OSError, KeyboardInterrupt):
            pass
        err_console.print(f"interrupted after {trainer.epoch} epochs; resume with:", markup=False)
        err_console.print(f"  nnctl train --resume {run.path}", markup=False, soft_wrap=True)
        return EXIT_CODES["interrupted"]
    except BaseException as err:
        # An unexpected failure (a bug, a full disk): the run must not look like it's still running.
        try:
            run.set_status("failed", error=f"{type(err).__name__}: {err}")
        except OSError:
            pass
        if isinstance(err, OSError):
            kept = (f"the last complete checkpoint is {run.last}" if run.last.exists()
                    else "no checkpoint was written")
            raise NnctlError(f"{run.path}: cannot write: {err.strerror or err}; {kept}") from None
        raise
    finally:
        _restore_sigterm(previous)
    path = str(run.path)
    if result.status == "failed":
        err_console.print(f"error: {result.message}", markup=False, soft_wrap=True)
        err_console.print(f"the run is marked failed; the last good checkpoint is {run.last}", markup=False,
                          soft_wrap=True)
    elif result.status == "interrupted":
        err_console.print(f"interrupted after {result.epochs_run} epochs; resume with:", markup=False)
        err_console.print(f"  nnctl train --resume {path}", markup=False, soft_wrap=True)
    if quiet or not console.is_terminal:
        console.print(summary_line(result, path), markup=False, soft_wrap=True)
    else:
        console.print(summary_table(result, path))
    return EXIT_CODES[result.status]
