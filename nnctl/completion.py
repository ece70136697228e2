"""Shell completion of nnctl's arguments: spec files, run folders and `--set` keys.

Typer calls these with the word being completed while the shell asks (bash, zsh, fish);
they only list files and read the spec's declarations, so completing stays quick and never
fails: a folder that cannot be read completes to nothing.
"""
from __future__ import annotations

import os
from pathlib import Path

SPEC_SUFFIXES = (".yaml", ".yml")
# Files a run folder holds; a folder with any of them is offered as a run.
_RUN_MARKERS = ("status.json", "config.yaml", "checkpoints")


def _entries(incomplete: str) -> tuple[Path, str, list[os.DirEntry]]:
    """(folder, name prefix, entries of the folder) for a partly typed path."""
    head, _, prefix = incomplete.rpartition("/")
    folder = Path(head + "/" if head or incomplete.startswith("/") else ".")
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        entries = []
    return folder, prefix, entries


def _shown(folder: Path, name: str) -> str:
    return name if str(folder) == "." else f"{folder.as_posix().rstrip('/')}/{name}"


def complete_spec(incomplete: str) -> list[str]:
    """YAML files, and folders (to descend into), whose name starts with what is typed."""
    folder, prefix, entries = _entries(incomplete)
    out = []
    for e in entries:
        if not e.name.startswith(prefix) or (e.name.startswith(".") and not prefix.startswith(".")):
            continue
        if e.is_dir():
            out.append(_shown(folder, e.name) + "/")
        elif e.name.endswith(SPEC_SUFFIXES):
            out.append(_shown(folder, e.name))
    return out


def complete_run(incomplete: str) -> list[str]:
    """Run folders; with nothing typed yet, the ones under ./runs (newest last, as `nnctl runs`)."""
    if not incomplete and Path("runs").is_dir():
        incomplete = "runs/"
    folder, prefix, entries = _entries(incomplete)
    out = []
    for e in entries:
        if not e.name.startswith(prefix) or e.name.startswith(".") or not e.is_dir():
            continue
        path = Path(e.path)
        is_run = any((path / m).exists() for m in _RUN_MARKERS)
        # a folder that is not a run (runs/, a sweep) is offered to descend into
        out.append(_shown(folder, e.name) + ("" if is_run else "/"))
    return out


def spec_keys() -> list[str]:
    """Every dotted key `--set` takes, from the spec's own declarations."""
    from nnctl.config.spec import EARLY_STOPPING_PARAMS, MODEL_PARAMS, TOP_PARAMS, TRAINING_PARAMS
    from nnctl.data import PARAMS_DATA
    sections = {"data": PARAMS_DATA, "model": MODEL_PARAMS, "training": TRAINING_PARAMS,
                "training.early_stopping": EARLY_STOPPING_PARAMS}
    keys = [k for k in TOP_PARAMS if k not in sections]
    keys += ["optimizer.name", "optimizer.lr", "schedule.name", "loss.name"]
    for section, params in sections.items():
        keys += [f"{section}.{k}" for k in params if k not in ("early_stopping",)]
    return keys


def complete_set(incomplete: str) -> list[str]:
    """`--set` keys (with the `=` to type the value after) that start with what is typed."""
    if "=" in incomplete:
        return []
    return [f"{k}=" for k in spec_keys() if k.startswith(incomplete)]


COMPLETE_VAR = "_NNCTL_COMPLETE"


def accept_click_instruction() -> None:
    """Let Click's spelling `_NNCTL_COMPLETE=bash_source` print the script as Typer's `source_bash` does.

    Click documents "{shell}_source"; Typer reads "{instruction}_{shell}" and would answer
    "Shell source not supported". Only the source step is renamed: the script it prints calls
    nnctl back with Typer's own instructions.
    """
    shell, _, step = os.environ.get(COMPLETE_VAR, "").partition("_")
    if step == "source" and shell in ("bash", "zsh", "fish"):
        os.environ[COMPLETE_VAR] = f"source_{shell}"
