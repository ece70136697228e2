"""`nnctl sweep`: grid, random or model-based (Optuna) hyperparameter search over a train spec, locally or on Dask.

`register(app, fail)` adds the command to the Typer app (cli.py calls it, as for the other
optional command modules); `run_sweep_command` does the work and returns the exit code:
0 when every trial finished, 1 when a trial failed (or a spec is wrong), 130 on Ctrl-C/SIGTERM.
"""
from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Optional

import typer

from nnctl.console import console, err_console
from nnctl.errors import NnctlError

EXIT_INTERRUPTED = 130


def register(app: typer.Typer, fail: Callable[[BaseException], None]) -> None:
    @app.command("sweep")
    def sweep(
        config: Optional[Path] = typer.Argument(None, help="The sweep spec (YAML): base train spec, parameters, metric."),
        workers: Optional[int] = typer.Option(None, "--workers", "-w", min=1,
                                              help="Trials run at once (default 1; with --address: the cluster's threads)."),
        resume: Optional[Path] = typer.Option(None, "--resume", help="Finish the sweep in this directory: rerun every trial not done."),
        fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop everything at the first failed trial."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Check the spec, print the trials, run nothing."),
        runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where the sweep directory is created."),
        executor: str = typer.Option("local", "--executor", help="local (worker processes here) or dask."),
        address: Optional[str] = typer.Option(None, "--address", help="Dask scheduler, e.g. tcp://host:8786 "
                                                                      "(default: a local Dask cluster)."),
        plot: Optional[Path] = typer.Option(None, "--plot", help="Draw this sweep directory's optimization history "
                                                                 "and parameter importances as PNG (plot extra)."),
    ) -> None:
        """Run a grid, random or model-based search (tpe, gp, cmaes, nsga2): one training run per trial."""
        try:
            if plot is not None:
                if config is not None or resume is not None:
                    raise NnctlError("--plot draws an existing sweep directory; don't pass a sweep spec or --resume")
                from nnctl.report.search_plots import plot_sweep
                for path in plot_sweep(plot):
                    console.print(f"wrote {path}", markup=False, highlight=False, soft_wrap=True)
                raise typer.Exit(0)
            code = run_sweep_command(config, workers, resume, fail_fast, dry_run, runs_dir, executor, address)
        except NnctlError as err:
            fail(err)
        except KeyboardInterrupt:
            err_console.print("interrupted before the sweep started", highlight=False)
            raise typer.Exit(EXIT_INTERRUPTED)
        raise typer.Exit(code)


def run_sweep_command(config: Path | None, workers: int | None, resume: Path | None, fail_fast: bool,
                      dry_run: bool, runs_dir: Path, executor: str = "local", address: str | None = None) -> int:
    """Check everything (every trial's spec, the executor) before the sweep directory exists."""
    from nnctl.report.sweep_table import (print_leaderboard, print_plan, print_space, summary_line,
                                          sweep_reporter)
    from nnctl.sweep.executors import make_executor
    from nnctl.sweep.runner import FINISHED, SweepDir, run_sweep
    from nnctl.sweep.spec import MODEL_BASED, build_trials, load_sweep

    if executor not in ("local", "dask"):
        make_executor(executor, workers, address)   # raises the one-line message
    if address and executor != "dask":
        raise NnctlError("--address is for --executor dask")
    with ExitStack() as stack:
        if resume is not None:
            if config is not None:
                raise NnctlError("--resume continues a sweep from its snapshotted trial specs; don't pass a sweep spec")
            sd = SweepDir.open(resume)
            stack.enter_context(sd.locked())
            spec = None
            if sd.meta.get("method") in MODEL_BASED:
                from nnctl.sweep.study import prepare_resume
                spec, todo = prepare_resume(sd)
            else:
                todo = sd.plan_resume()
            _check_snapshots(sd, todo)
            new = sd.declared - len(sd.trials)
            if dry_run:
                rows = [(t.index, t.overrides, t.status if t.index not in todo else f"{t.status} -> rerun")
                        for t in sd.trials]
                more = f" and {new} new" if new > 0 else ""
                print_plan(console, sd.parameters, rows,
                           f"resume {sd.path}: {len(todo)} of {len(sd.trials)} trials to run{more} "
                           f"(--dry-run: nothing was run)")
                return 0
            if not todo and new <= 0:
                sd.save()
                sd.write_results()
                console.print(f"every trial of {sd.path} is done; nothing to resume", highlight=False, soft_wrap=True)
                print_leaderboard(console, sd)
                return 0
            if workers is None and executor == sd.meta.get("executor", "local") and not address:
                workers = sd.meta.get("workers")
            from nnctl.sweep.memory import check_resume_memory
            check_resume_memory(sd, spec, todo, workers or 1, together=executor == "local")
        else:
            if config is None:
                raise NnctlError("give a sweep spec (nnctl sweep SWEEP.yaml) or --resume SWEEP_DIR")
            spec = load_sweep(config)
            trials = build_trials(spec)
            # sized like `train` sizes a run, before the sweep folder exists (nnctl.sweep.memory)
            from nnctl.sweep.memory import check_sweep_memory, sweep_trials_to_size
            check_sweep_memory(spec, sweep_trials_to_size(spec, trials), workers or 1, together=executor == "local")
            if dry_run and spec.model_based:
                from nnctl.sweep.study import first_proposals
                print_space(console, spec)
                proposals = first_proposals(spec)
                print_plan(console, [p.name for p in spec.parameters], [(i, o, None) for i, o in enumerate(proposals)],
                           f"{spec.name}: the first {len(proposals)} of {spec.trials} trials the {spec.method} "
                           f"sampler (seed {spec.seed}) proposes before it has results; --dry-run: nothing was run")
                return 0
            if dry_run:
                how = f"{spec.method}, seed {spec.seed}" if spec.method == "random" else spec.method
                print_plan(console, [p.name for p in spec.parameters], [(t.index, t.overrides, None) for t in trials],
                           f"{spec.name}: {len(trials)} trials ({how}) over {spec.base_label}; "
                           f"ranked by {spec.metric} ({spec.goal}); --dry-run: nothing was run")
                return 0
            todo = None

        ex = make_executor(executor, workers, address)
        reporter = sweep_reporter(console)
        try:
            if resume is None:
                sd = SweepDir.create(runs_dir, spec, trials)
                stack.enter_context(sd.locked())   # released last, after every trial has ended
            source = None
            if spec is not None and spec.model_based:
                from nnctl.sweep.study import StudyTrials
                source = StudyTrials(sd, spec, todo)
            outcome = run_sweep(sd, ex, todo, fail_fast, reporter, source=source)
        finally:
            reporter.close()
            ex.close()

    print_leaderboard(console, sd)
    console.print(summary_line(sd, outcome), markup=False, highlight=False, soft_wrap=True)
    # A model-based sweep told its failed trials to the study; they stay failed (nothing to finish).
    keep = FINISHED + (("failed",) if sd.meta.get("method") in MODEL_BASED else ())
    unfinished = [t for t in sd.trials if t.status not in keep]
    missing = max(0, sd.declared - len(sd.trials))
    if outcome.state in ("interrupted", "failed") and (unfinished or missing):
        cmd = f"nnctl sweep --resume {sd.path}"
        if ex.workers != 1:
            cmd += f" --workers {ex.workers}"
        if executor == "dask":
            cmd += " --executor dask" + (f" --address {address}" if address else "")
        more = f" (and {missing} not started)" if missing else ""
        err_console.print(f"{len(unfinished)} trial(s) not done{more}; finish them with:", highlight=False)
        err_console.print(f"  {cmd}", markup=False, highlight=False, soft_wrap=True)
    return outcome.exit_code


def _check_snapshots(sd, todo: list[int]) -> None:
    """The snapshotted specs of the trials to rerun must still be valid (they were at launch)."""
    from nnctl.config.spec import load_spec
    problems = []
    for i in todo:
        try:
            load_spec(sd.spec_path(i))
        except NnctlError as err:
            problems += [f"trial {i}: {line}" for line in err.problems]
    if problems:
        raise NnctlError(*problems)
