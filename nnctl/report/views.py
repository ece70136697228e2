"""Renderers of eval, show and diff: what a person reads; the commands only call them."""
from __future__ import annotations

from typing import Any

from nnctl.console import console
from nnctl.errors import NnctlError


def print_fitted(renderable) -> None:
    """On a terminal Rich fits `renderable` to the window; into a pipe or a file it keeps its
    natural width (a runs listing piped to grep must not be cut to 80 columns)."""
    if console.is_terminal:
        console.print(renderable)
        return
    from rich.console import Console
    natural = console.measure(renderable, options=console.options.update_width(10_000)).maximum
    if natural <= console.width:
        console.print(renderable)
    else:
        # Console.print clamps width= to the console's own width, so widen a one-off console
        Console(file=console.file, width=natural, highlight=False, no_color=console.no_color).print(renderable)


def render_eval(result: dict[str, Any]) -> None:
    from rich.markup import escape

    from nnctl.report.tables import class_report_table, confusion_table, key_value_table, per_output_table, titled
    console.print(f"[bold]{escape(result['checkpoint'])}[/] (epoch {result['epoch']}) on "
                  f"{escape(result['data'])}: {result['n']:,} rows", soft_wrap=True)
    if "reconstruction" in result:   # an autoencoder or a VAE
        rows = [(f"loss ({result['loss_name']})", result["loss"]), ("reconstruction", result["reconstruction"])]
        rows += [(k, result[k]) for k in ("kl", "elbo") if k in result]
        rows.append(("mse (data units)", result["mse"]))
        console.print(key_value_table(rows))
        return
    if result["task"] == "classification":
        name = result.get("loss_name")
        rows = [(f"loss ({name})" if name else "loss", result["loss"]), ("accuracy", result["accuracy"])]
        rows += [(k.replace("_accuracy", " accuracy").replace("_", "-"), v)
                 for k, v in result.items() if k.startswith("top_")]
        rows += [("macro F1", result["macro_avg"]["f1"]), ("weighted F1", result["weighted_avg"]["f1"])]
        console.print(key_value_table(rows))
        labels = result["classes"]
        report = {
            "per_class": {k: [c[k] for c in result["per_class"]] for k in ("precision", "recall", "f1", "support")},
            "macro_avg": result["macro_avg"], "weighted_avg": result["weighted_avg"],
        }
        console.print(titled(class_report_table(report, labels)))
        console.print(titled(confusion_table(result["confusion_matrix"], labels)))
    else:
        # The training loss is computed as training does (in the model's dtype); mse, rmse, mae
        # and r2 in float64. When the loss is the MSE they are one quantity that may differ in
        # the last digits, so only the float64 one is shown; any other loss is named.
        # A standardized target (data layer) makes the loss a different number: it is named so.
        name = result.get("loss_name")
        scaled = result.get("loss_units") == "standardized target"
        label = f"loss ({name}, standardized target)" if scaled else (f"loss ({name})" if name else "loss")
        rows = [] if name == "mse" and not scaled else [(label, result["loss"])]
        rows += [(k, result[k]) for k in ("mse", "rmse", "mae", "r2")]
        console.print(key_value_table(rows))
        if "per_output" in result:
            console.print(titled(per_output_table(result["per_output"], result["outputs"])))


def render_show(info, max_rows: int) -> NnctlError | None:
    """Print everything readable about a run; return the checkpoint problem, if any, to fail with."""
    from rich.markup import escape
    from rich.syntax import Syntax

    from nnctl.data.augment import describe_entries
    from nnctl.runs.model import load_model
    from nnctl.report.tables import history_table, key_value_table, model_table, sparkline_rows, status_text
    from nnctl.runs.store import dump_yaml, read_run_config_text

    title = status_text(info.status, info.problem)
    console.print(f"[bold]{escape(info.name)}[/]  ", title, f"  {escape(str(info.path))}", soft_wrap=True)
    config_text = read_run_config_text(info.path)
    if config_text is None:
        config_text = dump_yaml(info.config) if info.config else None
    if config_text:
        console.rule("config", align="left", style="dim")
        print_fitted(Syntax(config_text.rstrip("\n"), "yaml", theme="ansi_dark", background_color="default",
                      word_wrap=True))

    console.rule("model", align="left", style="dim")
    problem: NnctlError | None = None
    try:
        lm = load_model(info.path)
    except NnctlError as err:
        problem = err
        console.print("(the model cannot be rebuilt; see the error below)", style="red")
    else:
        console.print(model_table(lm.model.summary()))
        console.print(f"{lm.model.num_parameters():,} parameters; input {list(lm.input_shape)}, {lm.dtype}, "
                      f"{lm.task}; weights of epoch {lm.epoch} ({lm.path.name})", markup=False, soft_wrap=True)
    data = info.config.get("data") if isinstance(info.config, dict) else None
    augment = describe_entries(data.get("augment")) if isinstance(data, dict) else ""
    if augment:  # augment hook: the transforms training batches went through
        console.print(f"augment (training batches only): {augment}", markup=False, soft_wrap=True)

    console.rule("history", align="left", style="dim")
    if info.history:
        best_epoch, _ = info.best
        print_fitted(history_table(info.history, best_epoch, max_rows, title=None))
        main = info.main_metric
        groups = [["loss", "val_loss"]] + ([[main, f"val_{main}"]] if main != "loss" else [])
        pad = max(len(k) for group in groups for k in group)
        for group in groups:
            for line in sparkline_rows(info.history, group, pad=pad):
                console.print(line, markup=False, highlight=False, soft_wrap=True)
    else:
        console.print("(no finished epoch)", style="dim")
    summary = []
    epoch, value = info.best
    if value is not None:
        summary.append((f"best {info.monitor}", f"{value:.4g} (epoch {epoch})"))
    summary += [(k, v) for k, v in info.test.items()]
    if info.seconds is not None:
        from nnctl.report.tables import duration
        summary.append(("time", duration(info.seconds)))
    if summary:
        console.rule("result", align="left", style="dim")
        console.print(key_value_table(summary))
    return problem


def render_diff(a, b, config_rows, metrics) -> None:
    from nnctl.runs.catalog import MISSING, better_direction
    from nnctl.report.tables import config_diff_table, metric_diff_table, titled

    console.print(f"A  {a.path}  ({a.status})", markup=False, soft_wrap=True)
    console.print(f"B  {b.path}  ({b.status})", markup=False, soft_wrap=True)
    for label, run in (("A", a), ("B", b)):
        if run.config is None:
            console.print(f"{label} has no readable config.yaml", style="yellow")
    if config_rows:
        console.print(titled(config_diff_table(config_rows, "A", "B", missing=MISSING)))
    else:
        console.print("configs: identical (besides the name)")
    console.print(titled(metric_diff_table(metrics, "A", "B", direction=better_direction)))


def render_starter(profile, path) -> None:
    """What `nnctl init` found and chose, and what to run next."""
    from nnctl.report.tables import key_value_table
    p = profile
    classes = ""
    if p.classes is not None:
        classes = ": " + ", ".join(str(c) for c in p.classes[:10]) + (", ..." if len(p.classes) > 10 else "")
    from nnctl.config.starter import amount
    rows = [("data", f"{p.path.name}: {amount(p)}"),
            ("target", f"{p.target} ({p.target_why})"),
            ("task", f"{p.task} ({p.task_why}{classes})")]
    for c in p.categorical:
        rows.append(("categorical", f"{c.name}: {c.why}"))
    for c in p.codes:
        rows.append(("maybe categorical", f"{c.name}: {c.why}"))
    for c in p.left_out:
        rows.append(("left out", f"{c.name}: {c.kind}, {c.why}"))
    if p.missing or p.target_missing:
        from nnctl.config.starter import missing_summary
        rows.append(("missing", f"impute: {missing_summary(p)}"))
    if p.image_size is not None:
        rows.append(("images", f"{p.image_size[0]}x{p.image_size[1]} {p.color} ({p.image_why})"))
    model = f"CNN, conv filters {p.filters}" if p.image_size is not None else f"hidden {p.hidden}"
    rows.append(("model", f"{model}, batch {p.batch_size}, up to {p.epochs} epochs, "
                          f"early stopping on val_loss (patience {p.patience})"))
    console.print(key_value_table(rows))
    console.print(f"wrote {path}; next: nnctl validate {path} && nnctl train {path}",
                  markup=False, highlight=False, soft_wrap=True)
