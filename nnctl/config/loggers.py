"""The spec's `loggers:` list: which experiment loggers a run writes to, and their options.

    loggers: [tensorboard, csv, {mlflow: {tracking_uri: ./mlruns, experiment: NAME}}]

Declared here (the config layer) so the spec is validated, with file and line, before any
logger package is imported; the loggers themselves live in nnctl/loggers/.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from nnctl.config.check import Checker, describe
from nnctl.hparams import Param, unknown_name_message

LOGGER_PARAMS: dict[str, dict[str, Param]] = {
    "tensorboard": {},
    "csv": {},
    "mlflow": {
        "tracking_uri": Param("str", "./mlruns", doc="MLflow tracking URI; a plain path is a local file store, "
                                                    "relative to the spec file"),
        "experiment": Param("str", None, nullable=True, doc="MLflow experiment name (default: the spec's name)"),
    },
}


def check_loggers(chk: Checker, raw: Any, base_dir: Path) -> list[dict[str, Any]]:
    """`[name | {name: {options}}]` -> `[{name: {options, defaults filled}}]`, each name once."""
    path: tuple = ("loggers",)
    if raw is None:
        return []
    if not isinstance(raw, list):
        chk.error(path, f"must be a list of logger names or {{name: options}} mappings, got {describe(raw)}")
        return []
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        if isinstance(item, str):
            name, options, name_path = item, {}, path + (i,)
        elif isinstance(item, dict) and len(item) == 1:
            name, options = next(iter(item.items()))
            name_path = path + (i,)
            options = {} if options is None else options
        else:
            chk.error(path + (i,), f"must be a logger name or a one-key mapping {{name: options}}, got {describe(item)}")
            continue
        if not isinstance(name, str) or name not in LOGGER_PARAMS:
            chk.error(name_path, unknown_name_message("logger", name, list(LOGGER_PARAMS)))
            continue
        if name in seen:
            chk.error(name_path, f"logger {name} is listed twice")
            continue
        seen.add(name)
        checked = chk.section(path + (i, name), options, LOGGER_PARAMS[name], {})
        if name == "mlflow" and isinstance(checked.get("tracking_uri"), str) and ":" not in checked["tracking_uri"]:
            # a stored config must log to the same place from anywhere, as data paths do
            checked["tracking_uri"] = str((base_dir / checked["tracking_uri"]).resolve())
        out.append({name: checked})
    return out
