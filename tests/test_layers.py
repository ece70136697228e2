"""The allowed import directions between nnctl's packages, checked by an AST scan of every module.

Arrows point down: cli -> commands -> (sweep, training, report) -> (config, data, runs) -> engine
-> (errors, hparams). Imports inside functions count too (a lazy import is still a dependency).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nnctl"

# A module may import modules of its own rank or lower. Top-level modules are ranked like packages.
RANK = {
    "cli": 5,
    "commands": 4, "export": 4, "bench": 4, "bench_search": 4, "completion": 4,   # they drive commands' functions
    "sweep": 3, "training": 3, "report": 3, "loggers": 3,
    "config": 2, "data": 2, "runs": 2, "console": 2, "reference": 2,
    "engine": 1,
    # leaves: nnctl/__init__.py (the version) and modules that import only errors
    "errors": 0, "status": 0, "fileio": 0, "threads": 0, "__init__": 0,
    "hparams": 0,  # declarations read by engine, data, augment and sweep alike; imports only errors
}
UI_LIBRARIES = ("yaml", "typer", "rich")


def imports_of(path: Path) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in `path`."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    here = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = list(here[:len(here) - node.level + 1]) if node.level > 1 else list(here)
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((module, node.lineno))
            if module == "nnctl":  # `from nnctl import cli` imports the submodule
                found += [(f"nnctl.{a.name}", node.lineno) for a in node.names]
    return found


def layer_of(module: str) -> str:
    """'nnctl.training.trainer' -> 'training'; 'nnctl' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(rel[:-1] if rel[-1] == "__init__" else rel)
        out.append((name, path))
    return out


def violations() -> list[str]:
    problems = []
    for name, path in modules():
        src = layer_of(name) if name != "nnctl" else "__init__"
        for target, line in imports_of(path):
            where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
            top = target.split(".")[0]
            if top in UI_LIBRARIES and src in ("engine", "training"):
                problems.append(f"{where}: {src} never imports {top} (it prints nothing, reads no YAML)")
            if top != "nnctl":
                continue
            dst = layer_of(target)
            if dst == "cli" and src != "__main__":
                problems.append(f"{where}: only nnctl/__main__.py imports the CLI")
                continue
            if src == "training" and dst in ("runs", "report", "commands", "cli"):
                problems.append(f"{where}: training emits events; runs/ and report/ listen (callbacks)")
                continue
            if src == "export" and dst in ("commands", "bench", "completion"):
                # export is a library the export command calls; it reads runs/, never a sibling command
                problems.append(f"{where}: export is called by commands, never calls them")
                continue
            if src in RANK and dst in RANK and RANK[dst] > RANK[src]:
                problems.append(f"{where}: {src} (rank {RANK[src]}) may not import {dst} (rank {RANK[dst]})")
    return problems


def test_imports_point_down():
    assert violations() == []


def test_the_scan_sees_what_it_must_refuse(tmp_path, monkeypatch):
    """The checker itself: an upward import (also a relative one), a CLI import and a trainer that
    writes runs are all caught, with file and line."""
    pkg = tmp_path / "nnctl"
    for folder, text in {
        "engine": "import yaml\nfrom nnctl.data import x\n",
        "training": "def f():\n    from nnctl.runs.store import RunDir\n",
        "sweep": "from nnctl import cli\n",
        "runs": "from ..commands import train\n",
        "export": "from nnctl.commands.evaluate import run_split\n",
    }.items():
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
        (pkg / folder / "mod.py").write_text(text)
    (pkg / "__init__.py").write_text("")
    monkeypatch.setitem(globals(), "PACKAGE", pkg)
    found = violations()
    assert found == [
        "nnctl/engine/mod.py:1 imports yaml: engine never imports yaml (it prints nothing, reads no YAML)",
        "nnctl/engine/mod.py:2 imports nnctl.data: engine (rank 1) may not import data (rank 2)",
        "nnctl/export/mod.py:1 imports nnctl.commands.evaluate: export is called by commands, never calls them",
        "nnctl/runs/mod.py:1 imports nnctl.commands: runs (rank 2) may not import commands (rank 4)",
        "nnctl/sweep/mod.py:1 imports nnctl.cli: only nnctl/__main__.py imports the CLI",
        "nnctl/training/mod.py:2 imports nnctl.runs.store: training emits events; runs/ and report/ listen "
        "(callbacks)",
    ]


@pytest.mark.parametrize("module", ["nnctl.training.trainer", "nnctl.training.callbacks"])
def test_the_trainer_imports_no_runs_and_no_report(module):
    path = PACKAGE.joinpath(*module.split(".")[1:]).with_suffix(".py")
    assert not [t for t, _ in imports_of(path) if layer_of(t) in ("runs", "report")]
