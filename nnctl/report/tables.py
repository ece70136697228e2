"""Rich tables and sparklines for eval, runs, show and diff; builders only, the CLI prints them."""
from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Sequence

from rich import box
from rich.table import Table
from rich.text import Text

from nnctl.engine.metrics import auto_mode
from nnctl.report.progress import fmt

BLOCKS = "▁▂▃▄▅▆▇█"

# The one colour of each run or trial status (runs, show, diff and the sweep tables).
STATUS_STYLE = {
    "pending": "dim", "completed": "green", "stopped_early": "green", "running": "cyan",
    "interrupted": "yellow", "crashed?": "yellow", "failed": "red", "broken": "red", "pruned": "cyan",
}


def cell(value: Any) -> str:
    """A table cell: floats via progress.fmt, None as '-', the rest as text."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return fmt(value)
    return str(value)


def sparkline(values: Sequence[Any], lo: float | None = None, hi: float | None = None,
              width: int | None = None) -> str:
    """One block character per value, ▁ for `lo` up to █ for `hi`.

    values: numbers; None or non-finite ones become a space. lo/hi default to the finite
    minimum/maximum, so two series drawn with the same lo/hi share one scale. With `width`,
    a longer series is shrunk to `width` characters by averaging equal runs of values.

    Notes
    -----
    Level of v: floor((v - lo) / (hi - lo) * 7 + 0.5), clipped to 0..7; a flat series
    (hi == lo) is drawn at the lowest level.
    """
    vals = [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan for v in values]
    if width is not None and width > 0 and len(vals) > width:
        shrunk = []
        for i in range(width):
            chunk = [v for v in vals[i * len(vals) // width:(i + 1) * len(vals) // width] if math.isfinite(v)]
            shrunk.append(sum(chunk) / len(chunk) if chunk else math.nan)
        vals = shrunk
    finite = [v for v in vals if math.isfinite(v)]
    if not finite:
        return " " * len(vals)
    lo = min(finite) if lo is None else lo
    hi = max(finite) if hi is None else hi
    out = []
    for v in vals:
        if not math.isfinite(v):
            out.append(" ")
            continue
        level = 0 if hi <= lo else math.floor((v - lo) / (hi - lo) * (len(BLOCKS) - 1) + 0.5)
        out.append(BLOCKS[min(max(level, 0), len(BLOCKS) - 1)])
    return "".join(out)


def titled(table: Table):
    """The table with its title on a line of its own, as wide as the window.

    Rich wraps a title to the table's width, so a long title over a narrow table breaks
    mid-phrase (`diabetes: …/regression.csv,` / `regression`).
    """
    if not table.title:
        return table
    from rich.console import Group
    title = Text(str(table.title), style="table.title", justify="left")
    table.title = None
    return Group(title, table)


def key_value_table(rows: Sequence[tuple[str, Any]], title: str | None = None) -> Table:
    table = Table(title=title, show_header=False, title_justify="left", box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(Text(key), Text(cell(value)))
    return table


# ---------------------------------------------------------------------------- eval

def confusion_table(cm: Sequence[Sequence[int]], labels: Sequence[Any]) -> Table:
    """Rows: true class; columns: predicted class; the diagonal (correct) in green."""
    table = Table(title="confusion matrix (rows: true, columns: predicted)", title_justify="left")
    table.add_column("true \\ pred", style="bold")
    for label in labels:
        table.add_column(Text(str(label)), justify="right")
    for i, (label, row) in enumerate(zip(labels, cm)):
        cells = []
        for j, count in enumerate(row):
            style = "bold green" if i == j and count else ("red" if count else "dim")
            cells.append(Text(str(count), style=style))
        table.add_row(Text(str(label)), *cells)
    return table


def class_report_table(report: dict[str, Any], labels: Sequence[Any]) -> Table:
    """Per-class precision, recall, F1 and support, then the macro and weighted averages."""
    table = Table(title="per class", title_justify="left")
    table.add_column("class", style="bold")
    for name in ("precision", "recall", "f1", "support"):
        table.add_column(name, justify="right")
    per = report["per_class"]
    for c, label in enumerate(labels):
        table.add_row(Text(str(label)), f"{per['precision'][c]:.4f}", f"{per['recall'][c]:.4f}",
                      f"{per['f1'][c]:.4f}", str(per["support"][c]))
    table.add_section()
    for name, key in (("macro avg", "macro_avg"), ("weighted avg", "weighted_avg")):
        avg = report[key]
        table.add_row(name, f"{avg['precision']:.4f}", f"{avg['recall']:.4f}", f"{avg['f1']:.4f}",
                      str(avg["support"]), style="italic")
    return table


def per_output_table(per_output: dict[str, list[float]], names: Sequence[str]) -> Table:
    table = Table(title="per output", title_justify="left")
    table.add_column("output", style="bold")
    for key in ("mse", "rmse", "mae", "r2"):
        table.add_column(key, justify="right")
    for j, name in enumerate(names):
        table.add_row(Text(name), *(fmt(float(per_output[key][j])) for key in ("mse", "rmse", "mae", "r2")))
    return table


# ---------------------------------------------------------------------------- runs / show

def duration(seconds: float | None) -> str:
    """12.3s, 4m05s, 2h03m."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def status_text(status: str, problem: str | None = None) -> Text:
    text = Text(status, style=STATUS_STYLE.get(status, ""))
    if problem and status in ("broken", "crashed?", "failed"):
        text.append(f" ({problem})", style="dim")
    return text


# `nnctl runs` columns in the order they are given up to fit the width (the rest always stay).
DROP_ORDER = ("params", "dataset", "time", "started")
NAME_WIDTH = 24  # a longer run name is shortened in the middle in the compact listing


def middle_ellipsis(text: str, width: int) -> str:
    """`text` cut to `width` characters by replacing its middle with '…' (the start and the end tell runs apart)."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2 + (width - 1) % 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def runs_table(runs: Sequence[Any], width: int | None = None, title: str | None = None) -> Table:
    """One row per RunInfo: name, dataset, status, epochs, best validation metric, test metric, ...

    width None: every column, full run names (--wide). With a width: the compact listing, run
    names without their timestamp (the started column has it) and at most NAME_WIDTH long,
    and columns dropped in DROP_ORDER until the table fits; the caption says which.
    When every run shares the monitor (or the main test metric), its name moves to the
    column header, so the cells hold only numbers.
    """
    if width is None:
        return _runs_table(runs, (), wide=True, title=title)
    from rich.console import Console
    measure = Console(width=10_000, file=None, force_terminal=False)
    dropped: tuple[str, ...] = ()
    for n in range(len(DROP_ORDER) + 1):
        dropped = DROP_ORDER[:n]
        table = _runs_table(runs, dropped, wide=False, title=title)
        if measure.measure(table).maximum <= width:
            break
    return table


def _runs_table(runs: Sequence[Any], dropped: Sequence[str], wide: bool, title: str | None) -> Table:
    monitors = {r.monitor for r in runs if r.best[1] is not None}
    mains = {r.main_metric for r in runs if r.test.get(f"test_{r.main_metric}") is not None}
    one_monitor = next(iter(monitors)) if len(monitors) == 1 else None
    one_main = next(iter(mains)) if len(mains) == 1 else None
    caption = None
    if dropped:
        caption = f"not shown: {', '.join(dropped)} (nnctl runs --wide shows every column)"
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  padding=(0, 1) if wide else (0, 1, 0, 0), caption=caption, caption_justify="left",
                  caption_style="dim")
    columns = [("run", dict(style="bold", no_wrap=True)), ("dataset", dict(no_wrap=True)),
               ("status", dict(no_wrap=True)), ("epochs", dict(justify="right", no_wrap=True)),
               ("best", dict(justify="right" if one_monitor else "left", no_wrap=True)),
               ("test", dict(justify="right" if one_main else "left", no_wrap=True)),
               ("params", dict(justify="right", no_wrap=True)), ("time", dict(justify="right", no_wrap=True)),
               ("started", dict(no_wrap=True))]
    headers = {"best": f"best {one_monitor} (epoch)" if one_monitor else "best (epoch)",
               "test": f"test {one_main}" if one_main else "test"}
    shown = [c for c, _ in columns if c not in dropped]
    for name, opts in columns:
        if name in shown:
            table.add_column(headers.get(name, name), **opts)
    # runs of one spec started in the same minute would read alike without their stamp: they keep it
    seen: dict[tuple, int] = {}
    for run in runs:
        key = (run.short_name, run.started.strftime("%m-%d %H:%M") if run.started else None)
        seen[key] = seen.get(key, 0) + 1
    for run in runs:
        epochs = run.epochs
        if epochs is not None and run.max_epochs is not None and run.status != "completed":
            epochs_text = f"{epochs}/{run.max_epochs}"
        else:
            epochs_text = cell(epochs)
        epoch, value = run.best
        best = "-"
        if value is not None and run.monitor:
            best = f"{fmt(value)} ({epoch})" if one_monitor else f"{run.monitor} {fmt(value)} ({epoch})"
        test_value = run.test.get(f"test_{run.main_metric}")
        test = "-"
        if test_value is not None:
            test = fmt(float(test_value)) if one_main else f"{run.main_metric} {fmt(float(test_value))}"
        started: datetime | None = run.started
        alike = seen[(run.short_name, started.strftime("%m-%d %H:%M") if started else None)] > 1
        name = run.name if wide else middle_ellipsis(run.name if alike else run.short_name, NAME_WIDTH)
        cells = {
            "run": Text(name), "dataset": Text(cell(run.dataset)), "status": status_text(run.status),
            "epochs": epochs_text, "best": best, "test": test,
            "params": f"{run.parameters:,}" if run.parameters is not None else "-",
            "time": duration(run.seconds),
            "started": (started.strftime("%Y-%m-%d %H:%M" if wide else "%m-%d %H:%M") if started else "-"),
        }
        table.add_row(*(cells[c] for c in shown))
    return table


def run_problems(runs: Sequence[Any], width: int | None = None) -> list[str]:
    """Footnotes for a runs table: why each failed, broken or crashed run is so, one line each
    (cut to `width` characters with '…'; `nnctl show` and `runs --json` give the whole reason)."""
    lines = []
    for run in runs:
        if not run.problem:
            continue
        first = run.problem.splitlines()[0] if run.problem.strip() else run.problem
        # the name as the table shows it, so the note is found beside its row
        line = f"{run.name if width is None else middle_ellipsis(run.short_name, NAME_WIDTH)}: {first}"
        if width is not None and len(line) > width:
            line = line[:width - 1] + "…"
        lines.append(line)
    return lines


def model_table(rows: Sequence[tuple[Any, Any, int]], title: str | None = None) -> Table:
    """The model summary: one row per layer (name, output shape, parameter count)."""
    table = Table(title=title, title_justify="left")
    table.add_column("layer")
    table.add_column("output shape")
    table.add_column("parameters", justify="right")
    for name, shape, count in rows:
        table.add_row(str(name), str(tuple(shape)), f"{count:,}")
    return table


def thin_rows(n: int, max_rows: int, keep: Sequence[int] = ()) -> list[int]:
    """Sorted indices into 0..n-1, at most ~max_rows of them: evenly spread, always the first,
    the last and `keep` (the best epoch)."""
    if n <= max_rows:
        return list(range(n))
    step = (n - 1) / max(1, max_rows - 1)
    chosen = {round(i * step) for i in range(max_rows)} | {0, n - 1} | {k for k in keep if 0 <= k < n}
    return sorted(chosen)


def history_table(history: Sequence[dict[str, Any]], best_epoch: int | None = None,
                  max_rows: int = 15, title: str | None = "history") -> Table:
    """Epoch records as a compact table: a spread of epochs (always the first, best and last)."""
    keys: list[str] = []
    for record in history:
        for k in record:
            if k not in keys and k not in ("epoch", "lr", "seconds"):
                keys.append(k)
    columns = ["epoch", *keys, "lr", "seconds"]
    best_index = next((i for i, r in enumerate(history) if r.get("epoch") == best_epoch), None)
    shown = thin_rows(len(history), max_rows, [best_index] if best_index is not None else [])
    # the best row is marked in the text, not only in colour: plain output (a pipe, NO_COLOR) shows it too
    caption = "* best epoch" if best_index is not None else None
    if len(shown) < len(history):
        caption = f"{len(shown)} of {len(history)} epochs" + (f"; {caption}" if caption else "")
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for c in columns:
        table.add_column(c, justify="right")
    for i in shown:
        record = history[i]
        style = "bold green" if i == best_index else None
        cells = []
        for c in columns:
            v = record.get(c)
            text = f"{v:.3f}" if c == "seconds" and isinstance(v, float) else cell(v)
            cells.append(f"{text}*" if c == "epoch" and i == best_index else text)
        table.add_row(*cells, style=style)
    return table


def sparkline_rows(history: Sequence[dict[str, Any]], keys: Sequence[str], width: int = 60,
                   pad: int = 0) -> list[str]:
    """One line per logged key: name (padded to `pad`), sparkline (the keys share one scale),
    first -> last value and the best."""
    series = {k: [r.get(k) for r in history] for k in keys if any(k in r for r in history)}
    finite = [float(v) for vs in series.values() for v in vs
              if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if not finite:
        return []
    lo, hi = min(finite), max(finite)
    pad = max([pad, *(len(k) for k in series)])
    lines = []
    for k, vs in series.items():
        nums = [float(v) for v in vs if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
        if not nums:
            continue
        best = max(nums) if auto_mode(k) == "max" else min(nums)
        lines.append(f"{k:<{pad}}  {sparkline(vs, lo, hi, width)}  {fmt(nums[0])} → {fmt(nums[-1])} "
                     f"(best {fmt(best)})")
    return lines


# ---------------------------------------------------------------------------- diff

def config_diff_table(rows: Sequence[tuple[str, Any, Any]], name_a: str, name_b: str,
                      missing: Any = None) -> Table:
    table = Table(title="config", title_justify="left")
    table.add_column("key", style="bold")
    table.add_column(name_a, overflow="fold")
    table.add_column(name_b, overflow="fold")
    for key, a, b in rows:
        table.add_row(Text(key), _config_value(a, missing), _config_value(b, missing))
    return table


def _config_value(value: Any, missing: Any) -> Text:
    if value is missing:
        return Text("(not set)", style="dim")
    if value is None:
        return Text("null")
    if isinstance(value, bool):
        return Text("true" if value else "false")
    if isinstance(value, float):
        return Text(repr(value))
    if isinstance(value, (dict, list)):
        import yaml
        return Text(yaml.safe_dump(value, default_flow_style=True, width=float("inf"), sort_keys=False).strip())
    return Text(str(value))


def metric_diff_table(rows: Sequence[tuple[str, Any, Any, float | None]], name_a: str, name_b: str,
                      direction=None) -> Table:
    """metric, A, B, B - A; the difference green when B is better, red when worse (if known)."""
    table = Table(title="metrics", title_justify="left")
    table.add_column("metric", style="bold")
    table.add_column(name_a, justify="right", overflow="fold")
    table.add_column(name_b, justify="right", overflow="fold")
    table.add_column("B − A", justify="right")
    for metric, a, b, delta in rows:
        if delta is None:
            delta_text = Text("-", style="dim")
        else:
            if isinstance(a, int) and isinstance(b, int) and not isinstance(a, bool):
                shown = f"{int(delta):+,}"
            else:
                shown = f"{delta:+.4g}"
            way = direction(metric) if direction else None
            style = ""
            if way and delta != 0:
                style = "green" if (delta < 0) == (way == "min") else "red"
            delta_text = Text(shown, style=style)
        table.add_row(Text(metric), _metric_value(a), _metric_value(b), delta_text)
    return table


def _metric_value(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return cell(value)
