"""How a sweep looks: a live table of trials and a final leaderboard on a terminal, plain lines elsewhere."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from nnctl.report.tables import STATUS_STYLE
from nnctl.sweep.runner import FINISHED, Outcome, SweepDir, SweepListener, TrialState
from nnctl.sweep.spec import describe_values, format_value


def status_text(t: TrialState) -> str:
    """The status, and for a pruned trial the epoch it stopped at: "pruned@4"."""
    if t.status == "pruned" and t.epochs is not None:
        return f"pruned@{t.epochs}"
    return t.status


def fmt_epochs(t: TrialState) -> str:
    return "-" if t.epochs is None else str(t.epochs)


def fmt_metric(value: float | None) -> str:
    if value is None:
        return "-"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.3e}"
    return f"{value:.4f}"


def fmt_seconds(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}s"


def _line(console: Console, text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


# -- before running: the trial plan (--dry-run) ----------------------------------------------

def print_plan(console: Console, parameters: list[str], rows: list[tuple[int, dict[str, Any], str | None]],
               title: str) -> None:
    """One row per trial: index, its values, and (when resuming) its status."""
    with_status = any(status is not None for _, _, status in rows)
    if not console.is_terminal:
        _line(console, title)
        for index, values, status in rows:
            _line(console, f"trial {index}: {describe_values(values)}" + (f"  [{status}]" if status else ""))
        return
    table = Table(title=title, title_justify="left")
    table.add_column("trial", justify="right")
    for p in parameters:
        table.add_column(p)
    if with_status:
        table.add_column("status")
    for index, values, status in rows:
        cells = [str(index), *(format_value(values.get(p)) for p in parameters)]
        if with_status:
            cells.append(Text(status or "", style=STATUS_STYLE.get(status or "", "")))
        table.add_row(*cells)
    console.print(table)


def print_space(console: Console, sweep) -> None:
    """The search space of a model-based sweep (--dry-run)."""
    from nnctl.sweep.search import describe_space
    pruner = sweep.pruner.to_dict() if sweep.pruner is not None else {"name": "none"}
    _line(console, f"{sweep.name}: method {sweep.method}, seed {sweep.seed}, {sweep.trials} trials, "
                   f"pruner {describe_values(pruner)}; "
                   f"{', '.join(f'{m} ({g})' for m, g in zip(sweep.metrics, sweep.goals))} over {sweep.base_label}")
    _line(console, "search space:")
    for line in describe_space(sweep.parameters):
        _line(console, f"  {line}")


# -- while running -----------------------------------------------------------------------------

class PlainSweepReporter(SweepListener):
    """One line per trial start and end, no control characters: for pipes, log files and CI."""

    def __init__(self, console: Console):
        self.console = console
        self.sweep: SweepDir | None = None
        self.total = 0
        self.done = 0

    def on_start(self, sweep: SweepDir, indices: list[int], executor: Any, total: int | None = None) -> None:
        self.sweep = sweep
        self.total = len(indices) if total is None else total
        skipped = len(sweep.trials) - len(indices)
        extra = f" ({skipped} already done)" if skipped else ""
        how = f" ({sweep.meta['method']})" if sweep.meta.get("method") not in (None, "grid", "random") else ""
        _line(self.console, f"sweep {sweep.name}{how}: {self.total} trial{'s' if self.total != 1 else ''} to run{extra}, "
                            f"{executor.describe()} -> {sweep.path}")

    def on_trial_start(self, trial: TrialState) -> None:
        _line(self.console, f"trial {trial.index} started: {describe_values(trial.overrides)}")

    def on_trial_end(self, trial: TrialState) -> None:
        self.done += 1
        _line(self.console, self.end_line(trial))

    def end_line(self, trial: TrialState) -> str:
        assert self.sweep is not None
        head = f"[{self.done}/{self.total}] trial {trial.index} {status_text(trial)}"
        if trial.status in FINISHED:
            return f"{head}: {self.sweep.metric} {fmt_metric(trial.metric)} ({fmt_seconds(trial.seconds)})" + (
                f"; {trial.error}" if trial.error else "")
        if trial.status == "failed":
            return f"{head} ({fmt_seconds(trial.seconds)}): {trial.error}  [{describe_values(trial.overrides)}]"
        return f"{head} ({fmt_seconds(trial.seconds)})"

    def on_stop(self, reason: str) -> None:
        what = "a trial failed and --fail-fast is on" if reason == "fail-fast" else "interrupted"
        _line(self.console, f"stopping ({what}): running trials are being interrupted, pending ones skipped")

    def close(self) -> None:
        """Release the terminal (also when the sweep ended by an unexpected error)."""


class LiveSweepReporter(PlainSweepReporter):
    """A live table (values, status, metric, time) redrawn in place; failures print above it at once."""

    def __init__(self, console: Console):
        super().__init__(console)
        self.live: Live | None = None
        self.started: dict[int, float] = {}
        self.finished: dict[int, int] = {}     # index -> order of finishing
        self.order: list[int] = []      # indices of this run, in start order

    def on_start(self, sweep: SweepDir, indices: list[int], executor: Any, total: int | None = None) -> None:
        super().on_start(sweep, indices, executor, total)
        self.order = list(indices)
        self.live = Live(console=self.console, get_renderable=self.render, refresh_per_second=4, transient=True)
        self.live.start()

    def on_trial_start(self, trial: TrialState) -> None:
        self.started[trial.index] = time.perf_counter()
        if trial.index not in self.order:   # asked from a sampler just now
            self.order.append(trial.index)

    def on_trial_end(self, trial: TrialState) -> None:
        self.done += 1
        self.finished[trial.index] = self.done
        if trial.status == "failed":
            self.console.print(Text(self.end_line(trial), style="red"), soft_wrap=True)

    def on_stop(self, reason: str) -> None:
        what = "a trial failed and --fail-fast is on" if reason == "fail-fast" else "interrupted"
        self.console.print(f"[bold magenta]stopping[/] ({what}): interrupting running trials, skipping pending ones")

    def on_end(self, sweep: SweepDir, outcome: Outcome) -> None:
        self.close()

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def _visible(self) -> tuple[list[TrialState], int]:
        assert self.sweep is not None
        trials = [self.sweep.trials[i] for i in self.order]
        room = max(5, self.console.height - 8)
        if len(trials) <= room:
            return trials, 0
        # Too many to show: running and failed first, then the latest results, then what is next.
        def priority(t: TrialState) -> tuple[int, int]:
            if t.status == "running":
                return (0, t.index)
            if t.status == "failed":
                return (1, -self.finished.get(t.index, 0))
            if t.status == "pending":
                return (3, t.index)
            return (2, -self.finished.get(t.index, 0))

        pick = sorted(trials, key=priority)
        shown = sorted(pick[:room], key=lambda t: t.index)
        return shown, len(trials) - len(shown)

    def render(self):
        assert self.sweep is not None
        sd = self.sweep
        table = _trial_table(f"sweep {sd.name}  [{self.done}/{self.total} done]", sd)
        shown, hidden = self._visible()
        now = time.perf_counter()
        for t in shown:
            if t.status == "running" and t.index in self.started:
                seconds = now - self.started[t.index]
            else:
                seconds = t.seconds
            table.add_row(str(t.index), *(format_value(t.overrides.get(p)) for p in sd.parameters),
                          Text(status_text(t), style=STATUS_STYLE.get(t.status, "")), fmt_metric(t.metric),
                          fmt_epochs(t), fmt_seconds(seconds))
        if hidden:
            return Group(table, Text(f"... {hidden} more trials not shown", style="dim"))
        return table


def _trial_table(title: str, sd: SweepDir, rank: bool = False, metrics: list[str] | None = None,
                 front: bool = False) -> Table:
    """The columns of a trial row, shared by the live table and the leaderboard (which ranks, and
    with several metrics shows each and marks the Pareto front)."""
    table = Table(title=title, title_justify="left")
    if rank:
        table.add_column("#", justify="right")
    table.add_column("trial", justify="right")
    for p in sd.parameters:
        table.add_column(p)
    table.add_column("status")
    for m in metrics or [sd.metric]:
        table.add_column(m, justify="right")
    if front:
        table.add_column("front", justify="center")
    table.add_column("epochs", justify="right")
    table.add_column("time", justify="right")
    return table


def sweep_reporter(console: Console) -> PlainSweepReporter:
    return LiveSweepReporter(console) if console.is_terminal else PlainSweepReporter(console)


# -- after running: the leaderboard ----------------------------------------------------------

def _values(sd: SweepDir, t: TrialState) -> list[float | None]:
    """Every metric's value of `t` (the first is `t.metric`)."""
    if t.values and len(t.values) == len(sd.metrics):
        return list(t.values)
    return [t.metric] + [None] * (len(sd.metrics) - 1)


def print_leaderboard(console: Console, sd: SweepDir) -> None:
    """Trials sorted by the metric (goal), the best one's values and run directory highlighted;
    with several metrics (nsga2) each is shown and the Pareto front is marked."""
    ranking = sd.ranking()
    best = ranking[0] if ranking and ranking[0].ranked else None
    front = sd.pareto()
    metrics = sd.metrics if front is not None else [sd.metric]
    title = f"leaderboard: {sd.name}, {sd.metric} ({sd.goal})"
    if front is not None:
        title = (f"leaderboard: {sd.name}, by {sd.metric}; objectives "
                 f"{', '.join(f'{m} ({g})' for m, g in zip(sd.metrics, sd.goals))}; * = on the Pareto front")
    if not console.is_terminal:
        _line(console, title)
        for rank, t in enumerate(ranking, start=1):
            place = f"{rank:>3}." if t.ranked else "   -"
            shown = ", ".join(f"{m} {fmt_metric(v)}" for m, v in zip(metrics, _values(sd, t)))
            if t.ranked:
                tail = shown + (" *" if front is not None and t.index in front else "")
            elif t.status == "pruned":
                tail = f"pruned at epoch {fmt_epochs(t)} ({shown})"
            else:
                tail = t.status
            err = f": {t.error}" if t.status == "failed" and t.error else ""
            _line(console, f"{place} trial {t.index}  {tail}{err}  {describe_values(t.overrides)}  "
                           f"{fmt_seconds(t.seconds)}")
    else:
        table = _trial_table(title, sd, rank=True, metrics=metrics, front=front is not None)
        for rank, t in enumerate(ranking, start=1):
            style = "bold green" if t is best else ("red" if t.status == "failed" else "")
            mark = [] if front is None else ["*" if t.index in front else ""]
            table.add_row(str(rank) if t.ranked else "-", str(t.index),
                          *(format_value(t.overrides.get(p)) for p in sd.parameters),
                          Text(status_text(t), style=STATUS_STYLE.get(t.status, "")),
                          *(fmt_metric(v) for v in _values(sd, t)[:len(metrics)]), *mark,
                          fmt_epochs(t), fmt_seconds(t.seconds), style=style)
        console.print(table)
    if best is not None:
        text = (f"best: trial {best.index} ({describe_values(best.overrides)}) "
                f"{sd.metric} {fmt_metric(best.metric)}")
        # the run's config.yaml records its BLAS thread count (training.threads), so this
        # command repeats the trial's numbers exactly, wherever the sweep's workers were
        again = f"  repeat: nnctl train {Path(best.run_dir) / 'config.yaml'}" if best.run_dir else None
        if console.is_terminal:
            console.print(Text(text, style="bold green"), soft_wrap=True)
            console.print(Text(f"  run {best.run_dir}", style="green"), soft_wrap=True)
        else:
            _line(console, text)
            _line(console, f"  run {best.run_dir}")
        if again:
            _line(console, again)
    else:
        _line(console, f"no trial has a {sd.metric} value yet")
    if front:
        finished = sum(1 for t in sd.trials if t.ranked)
        _line(console, f"pareto front: trial{'s' if len(front) > 1 else ''} "
                       f"{', '.join(str(i) for i in sorted(front))} ({len(front)} of {finished} finished; "
                       f"none is beaten on every objective by another)")
    failed = [t for t in ranking if t.status == "failed"]
    if failed and console.is_terminal:
        for t in failed:
            console.print(Text(f"trial {t.index} failed: {t.error}", style="red"), soft_wrap=True)


def summary_line(sd: SweepDir, outcome: Outcome) -> str:
    counts = {k: v for k, v in outcome.counts.items() if v}
    parts = ", ".join(f"{v} {k}" for k, v in counts.items())
    return f"sweep {outcome.state}: {parts} ({outcome.seconds:.1f}s); results {sd.results}"
