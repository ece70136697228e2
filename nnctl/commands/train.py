"""`nnctl train`: a new run from a spec, or `--resume` of an existing one."""
from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path

from nnctl.config.spec import load_spec, safe_run_name, spec_from_dict
from nnctl.console import console, err_console
from nnctl.errors import CheckpointError, NnctlError
from nnctl.loggers import build_loggers, check_installed
from nnctl.report.progress import PlainReporter, RichReporter, summary_line, summary_table
from nnctl.runs.catalog import check_config_unedited
from nnctl.runs.checkpoint import load_checkpoint
from nnctl.runs.recorder import RunRecorder
from nnctl.runs.store import RunDir
from nnctl.status import CLEAN_ENDS, EXIT_CODES
from nnctl.threads import header as threads_header, limited as blas_limited, resolve as resolve_threads
from nnctl.training.callbacks import Callback, TrainState
from nnctl.training.experiment import prepare
from nnctl.training.trainer import Trainer



def _reporter(quiet: bool, run_path: Path) -> Callback:
    if quiet:
        return PlainReporter(console, run_path, quiet=True)
    return RichReporter(console, run_path) if console.is_terminal else PlainReporter(console, run_path)


def _warn(message: str) -> None:
    err_console.print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True)


def _callbacks(run: RunDir, spec, quiet: bool, stop: "StopOnSignal", extra: list[Callback]) -> list[Callback]:
    """In order: the run folder first (loggers and reporters then see what is on disk), the
    reporter, the signal flag, the spec's loggers, then the caller's own callbacks."""
    return [RunRecorder(run), _reporter(quiet, run.path), stop, *build_loggers(spec, run.path, _warn), *extra]


class StopOnSignal(Callback):
    """SIGINT/SIGTERM (Ctrl-C, a scheduler, `kill`) only set a flag; the Trainer stops at the next
    batch boundary or after the write in progress, so no write is ever cut off by an exception.

    Installed for the whole command (main thread only). While the spec and data are read
    (nothing written yet) a signal interrupts at once, as Ctrl-C always does; once `arm()`ed,
    just before the run folder is touched, it is only remembered and honoured as soon as
    training starts.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self.state: TrainState | None = None
        self.previous: dict[int, object] = {}
        self.armed = False

    def install(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def _handle(self, signum, frame) -> None:
        if not self.armed:
            raise KeyboardInterrupt  # reading the spec and data: nothing to save, stop now
        self.signum = signum
        if self.state is not None:
            self.state.request_stop("interrupted", f"interrupted by {signal.Signals(signum).name}")

    def on_train_begin(self, state: TrainState) -> None:
        self.state = state
        if self.signum is not None:
            self._handle(self.signum, None)

    def arm(self) -> None:
        """From here on the run folder is being written: signals only set the flag."""
        self.armed = True


def run_training(config: Path | None, overrides: list[str], resume: Path | None,
                 runs_dir: Path, quiet: bool, threads: int | None = None,
                 callbacks: list[Callback] | None = None) -> int:
    """Validate, load data and build everything first; only then create the run directory.

    `callbacks` are called after the run recorder, the progress reporter and the spec's
    loggers (a sweep adds its pruning callback here).
    """
    held: list[RunDir] = []
    stop = StopOnSignal().install()
    try:
        # speed (threads): the BLAS limit applied inside is undone when the run returns
        with contextlib.ExitStack() as blas:
            return _run_training(config, overrides, resume, runs_dir, quiet, held, threads, blas, stop,
                                 list(callbacks or []))
    finally:
        stop.restore()
        for run in held:  # in-process callers (tests, sweeps) may open the run again
            run.unlock()


def _run_training(config, overrides, resume, runs_dir, quiet, held: list, threads: int | None,
                  blas: contextlib.ExitStack, stop: StopOnSignal, extra: list[Callback]) -> int:
    if resume is not None:
        if config is not None or overrides:
            raise NnctlError("--resume continues a run with its stored config; don't pass a spec or --set")
        run = RunDir.open(resume)
        run.lock()  # before touching its files: another process may be writing them
        held.append(run)
        if not run.last.exists() and run.checkpoints.is_dir():
            raise CheckpointError(f"{run.last}: no such checkpoint; the run stopped before its first checkpoint "
                                  f"was written, so there is nothing to resume (train the spec again)")
        # Everything a resume loads is read and checked before anything in the run is written.
        last = load_checkpoint(run.last)
        best = load_checkpoint(run.best) if run.best.exists() else None
        spec = spec_from_dict(last.meta["config"], filename=f"{run.last} config")
        choice = resolve_threads(threads, spec, resumed=True)  # speed (threads) hook
        blas.enter_context(blas_limited(choice.threads, choice.source))
        exp = prepare(spec)
        check_installed(spec)
        trainer = Trainer(exp, _callbacks(run, spec, quiet, stop, extra))
        trainer.restore(last, best)
        status = (run.read_status() or {}).get("status")
        if status is None and (trainer.epoch >= spec.training.epochs or trainer.stopper.stopped_epoch is not None):
            status = "completed"   # status.json lost, but the checkpoint says the run is done
        if status in CLEAN_ENDS:
            raise CheckpointError(f"{resume}: the run already finished ({status}); nothing to resume")
        check_config_unedited(run.config_file, spec.to_dict(), run.last)
        run.check_replaceable()
        stop.arm()
        run.remove_temp_files()  # left by a process killed mid-write
    else:
        if config is None:
            raise NnctlError("give a spec to train (nnctl train CONFIG.yaml) or --resume RUN_DIR")
        spec = load_spec(config, overrides)
        # speed (threads) hook: recorded in the config; applied before the run folder exists
        choice = resolve_threads(threads, spec, resumed=False)
        blas.enter_context(blas_limited(choice.threads, choice.source))
        exp = prepare(spec)
        check_installed(spec)
        stop.arm()
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
        trainer = Trainer(exp, _callbacks(run, spec, quiet, stop, extra))
    if not quiet:  # speed (threads) hook: the train header's threads line
        console.print(threads_header(choice), markup=False, highlight=False, soft_wrap=True)
    if not quiet:  # augment hook: the active augmentations and the axes they move
        for line in exp.augmenter.describe():
            console.print(line, markup=False, highlight=False, soft_wrap=True)
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
