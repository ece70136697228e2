"""The nnctl command line: thin commands that parse, call one function and render.

Every expected failure is an NnctlError, caught once in `main` and shown as its message
(one line per problem) with exit code 1; `--debug` shows the traceback instead.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from nnctl import __version__
from nnctl.completion import accept_click_instruction, complete_run, complete_set, complete_spec
from nnctl.console import console, err_console, print_error
from nnctl.errors import NnctlError, excerpt

def _flags_take_no_value() -> None:
    # Typer 0.29's rich help prints a type for every option, so on/off flags read as if they
    # took a value (`--quiet -q <bool>`); a flag has no value to describe.
    option = getattr(getattr(typer, "core", None), "TyperOption", None)
    shown = getattr(option, "display_type_rich", None)
    if shown is None or getattr(shown, "_nnctl", False):
        return

    def display_type_rich(self, ctx):
        return None if getattr(self, "is_flag", False) else shown(self, ctx)
    display_type_rich._nnctl = True
    option.display_type_rich = display_type_rich


_flags_take_no_value()

class _Commands(typer.core.TyperGroup):
    """Every command, with one net under them for paths the operating system refuses.

    A path given on the command line can fail before nnctl looks inside it: too long for the
    file system, a folder without permission, a file where a folder should be. Path.is_dir()
    and friends raise those instead of answering False, from any of the places a command
    touches a path; the OSError names the path, so it becomes one line like any NnctlError.
    """

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OSError as err:
            if err.filename is None or _state["debug"]:
                raise
            fail(NnctlError(f"{excerpt(os.fsdecode(err.filename))}: {err.strerror or err}"))


# add_completion: --install-completion / --show-completion (bash, zsh, fish), see the README.
app = typer.Typer(cls=_Commands, add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train neural networks from YAML experiment specs (pure NumPy engine).")

_state = {"debug": False}

EXIT_INTERRUPTED = 130


def _version(value: bool) -> None:
    if value:
        console.print(f"nnctl {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _state["debug"] = debug


def fail(err: BaseException) -> None:
    """Show an expected error on stderr, one escaped line per problem, and exit 1."""
    if _state["debug"]:
        raise err
    print_error(err)
    raise typer.Exit(1)


SPEC_ARG = typer.Argument(..., help="The experiment spec (YAML).", autocompletion=complete_spec)
SET_OPTION = typer.Option([], "--set", help="Override a key: --set optimizer.lr=0.01 (value parsed as YAML).",
                          autocompletion=complete_set)


# -- train --------------------------------------------------------------------------------

@app.command()
def train(
    config: Optional[Path] = typer.Argument(None, help="The experiment spec (YAML).", autocompletion=complete_spec),
    set_: List[str] = SET_OPTION,
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory from its last.npz.",
                                          autocompletion=complete_run),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where run directories are created."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the final summary line."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1,
                                          help="BLAS threads (default: training.threads, else the environment, "
                                               "else half the physical cores, 1 to 4); recorded in the run."),
    sweep_pruning: Optional[str] = typer.Option(None, "--sweep-pruning", hidden=True,
                                                help="Set by `nnctl sweep`: report each epoch to the study (JSON)."),
) -> None:
    """Train a model from a spec; everything about the run goes to runs/<name>-<time>/."""
    from nnctl.threads import preset
    preset(threads)  # before NumPy loads: without threadpoolctl the environment is the only lever
    from nnctl.commands.train import run_training
    try:
        callbacks = None
        if sweep_pruning is not None:
            from nnctl.sweep.pruning import pruning_callbacks
            callbacks = pruning_callbacks(sweep_pruning)
        code = run_training(config, set_, resume, runs_dir, quiet, threads, callbacks=callbacks)
    except NnctlError as err:
        fail(err)
    except KeyboardInterrupt:
        err_console.print("interrupted before training started; nothing was written", highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED)
    raise typer.Exit(code)


def _prepared(config: Path, overrides: list[str]):
    """The spec validated and its data loaded and model built, or a one-line failure."""
    from nnctl.config.spec import load_spec
    from nnctl.training.experiment import prepare
    try:
        return prepare(load_spec(config, overrides))
    except NnctlError as err:
        fail(err)


@app.command()
def validate(config: Path = SPEC_ARG, set_: List[str] = SET_OPTION) -> None:
    """Check a spec (and its data) and print the resolved model summary."""
    from nnctl.report.tables import titled
    exp = _prepared(config, set_)
    table = Table(title=f"{exp.spec.name}: {exp.dataset.source}, {exp.dataset.task}", title_justify="left")
    table.add_column("layer")
    table.add_column("output shape")
    table.add_column("parameters", justify="right")
    for name, shape, count in exp.model.summary():
        table.add_row(str(name), str(tuple(shape)), f"{count:,}")
    console.print(titled(table))
    d = exp.dataset
    for line in d.describe():  # data layer: target, task, columns, missing values
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    latent = f", latent {exp.latent}" if exp.latent else ""
    console.print(f"input {tuple(d.input_shape)}, {d.n_outputs} output{'s' * (d.n_outputs != 1)}{latent}, "
                  f"{exp.model.num_parameters():,} parameters; rows: train {len(d.train)}"
                  f", val {len(d.val) if d.val is not None else 0}, test {len(d.test) if d.test is not None else 0}",
                  highlight=False, soft_wrap=True)
    for line in exp.augmenter.describe():
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    console.print(f"{config}: ok", highlight=False)


@app.command("config")
def show_config(config: Path = SPEC_ARG, set_: List[str] = SET_OPTION) -> None:
    """Print the fully resolved spec, every default filled in and marked `# default`."""
    from nnctl.config.annotate import annotated_yaml
    exp = _prepared(config, set_)
    resolved = exp.spec.to_dict()
    defaulted = set(exp.spec.defaulted)
    if exp.spec.loss is None:
        defaulted.add(("loss",))
    if not exp.spec.task:  # an autoencoder's loss and task are written as the spec has them
        resolved["loss"] = exp.loss_spec
        resolved["data"]["task"] = exp.dataset.task
    # the resolved target, never null (a built-in's own target name; dropped when it has none)
    resolved["data"]["target"] = exp.dataset.target_name
    if resolved["data"]["target"] is None:
        del resolved["data"]["target"]
    sys.stdout.write(annotated_yaml(resolved, defaulted))
    if exp.dataset.parser:   # what parsed the CSV and on how many threads (not a setting of the spec)
        sys.stdout.write(f"# csv parser: {exp.dataset.parser}\n")
    if exp.dataset.cache:   # where data.cache put the parsed CSV, as a comment: the spec keeps its own value
        sys.stdout.write(f"# table cache: {exp.dataset.cache}\n")


@app.command("init")
def init_command(
    data: Path = typer.Argument(..., help="A data file: .csv, .npy (with its targets .npy) or .npz, or an "
                                "image folder with one subfolder per class."),
    target: Optional[str] = typer.Option(None, "--target", help="The CSV column to predict, or the .npy file of "
                                         "targets (default: a column named label or target, else the last)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="The spec to write (default: <data name>.yaml).",
                                       autocompletion=complete_spec),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
) -> None:
    """Write a commented starter spec for a data file (target, task and columns shown)."""
    from nnctl.config.starter import write_starter
    from nnctl.report.views import render_starter
    try:
        profile, path = write_starter(data, target, out, force)
    except NnctlError as err:
        fail(err)
        return
    render_starter(profile, path)


GRADCHECK_TOLERANCE = 1e-6


@app.command("gradcheck")
def gradcheck_command(
    config: Path = SPEC_ARG,
    set_: List[str] = SET_OPTION,
    samples: int = typer.Option(8, min=1, help="Training rows to check the gradients on."),
    max_checks: int = typer.Option(50, min=1, help="Elements checked per parameter array (sampled)."),
) -> None:
    """Check the spec's model gradients against central differences, in float64."""
    import numpy as np
    from nnctl.data import iterate_batches
    from nnctl.engine.gradcheck import gradcheck
    exp = _prepared(config, [*set_, "training.dtype=float64"])
    train = exp.dataset.train
    from nnctl.training.metrics import loss_targets
    xb, yb = next(iterate_batches(train, min(samples, len(train)), None, np.float64, exp.standardizer))
    yb = loss_targets(exp.dataset.task, xb, yb)   # an autoencoder's target is its input
    from nnctl.report.tables import titled
    errors = gradcheck(exp.model, xb.copy(), yb.copy(), loss=exp.loss, training=True, max_checks=max_checks)
    table = Table(title=f"{exp.spec.name}: gradient check on {len(xb)} rows (float64, central differences)",
                  title_justify="left")
    table.add_column("parameter")
    table.add_column("relative error", justify="right")
    table.add_column("")
    for name, err in errors.items():
        table.add_row(name, f"{err:.2e}", "ok" if err < GRADCHECK_TOLERANCE else "[red]FAIL[/]")
    console.print(titled(table))
    worst = max(errors.values())
    console.print(f"worst relative error {worst:.2e} (tolerance {GRADCHECK_TOLERANCE:g})", highlight=False)
    raise typer.Exit(0 if worst < GRADCHECK_TOLERANCE else 1)


@app.command()
def bench(
    n: int = typer.Option(60000, help="Samples in the synthetic epoch."),
    hidden: str = typer.Option("512,256", help="Hidden sizes, comma separated."),
    batch: int = typer.Option(128, help="Batch size."),
    dtype: str = typer.Option("float32", help="float32 or float64."),
    suite: bool = typer.Option(False, "--suite", help="The issue-15 workloads through `nnctl train`, "
                                                      "PyTorch beside them when it is installed."),
    busy: bool = typer.Option(False, "--busy", help="The MLP epoch alone and beside a CPU-bound process."),
    epochs: int = typer.Option(3, "--epochs", min=2, help="Epochs per workload for --suite/--busy "
                                                           "(the first is a warm-up)."),
    only: Optional[str] = typer.Option(None, "--only", help="--suite: only workloads whose name contains this."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="BLAS threads (default as for train)."),
    defaults: bool = typer.Option(False, "--defaults", help="The defaults panel: candidate defaults on "
                                                            "small tasks, test metric mean ± std over seeds."),
    seeds: int = typer.Option(3, "--seeds", min=1, help="--defaults: seeds per task and candidate."),
    tables: bool = typer.Option(False, "--tables", help="CSV parse time, peak memory and cache-hit time at "
                                                        "10k/200k/1M rows, pandas beside them if installed."),
    study: str = typer.Option("initializer", "--study", help="--defaults: which default to test: initializer, "
                                                             "bias, standardize, adam-lr, batch-size, patience or all."),
) -> None:
    """Time one epoch of an MLP against the GEMM floor (the bare matrix products); --suite, --busy, --defaults, --tables."""
    from nnctl.threads import preset
    preset(threads)  # before NumPy loads, as for train
    if tables:
        from nnctl.bench import tables as tables_mod
        tables_mod.main([])
        return
    if defaults:
        from nnctl.bench import defaults as defaults_mod
        from nnctl.errors import NnctlError
        from nnctl.hparams import unknown_name_message
        if study not in (*defaults_mod.STUDIES, "all"):
            fail(NnctlError("--study: " + unknown_name_message("study", study, [*defaults_mod.STUDIES, "all"])))
        defaults_mod.main(["--seeds", str(seeds), "--study", study])
        return
    if suite or busy:
        from nnctl.bench import suite as suite_mod
        if suite:
            suite_mod.run_suite(epochs, threads, only)
        if busy:
            suite_mod.run_busy(epochs, threads)
        return
    from nnctl.bench import mlp
    args = ["--n", str(n), "--hidden", hidden, "--batch", str(batch), "--dtype", dtype]
    mlp.main(args + (["--threads", str(threads)] if threads is not None else []))


def _register_extras() -> None:
    # eval/predict/runs/show/diff/plot and sweep live in their own modules; they add their commands here.
    from nnctl.commands import augment as _augment
    from nnctl.commands import cache as _cache
    from nnctl.commands import export as _export
    from nnctl.commands import generate as _generate
    from nnctl.commands import inspect as _inspect
    from nnctl.commands import lr_find as _lr_find
    from nnctl.commands import sweep as _sweep
    _inspect.register(app, fail)
    _sweep.register(app, fail)
    _export.register(app, fail)
    _lr_find.register(app, fail)
    _augment.register(app, fail)
    _cache.register(app, fail)
    _generate.register(app, fail)


_register_extras()


def main() -> None:
    accept_click_instruction()
    app(prog_name="nnctl")
