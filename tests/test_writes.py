"""Who writes files: runs/ owns the run and sweep folders, fileio.py opens the user's files, and every
other module that writes is named below with its reason. An AST scan of every module keeps it so.

A write is a call that creates, changes or removes a file or folder: open() for writing, os.open with a
write flag, Path.write_text/write_bytes/mkdir/touch/unlink/rmdir/rename, os/shutil/tempfile file
calls, numpy's save*, savefig, and the generic writers atomic_write/write_json used outside runs/.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "nnctl"

OWNERS = ("nnctl/runs/", "nnctl/fileio.py")

# Writers outside runs/: each writes where the user asked, or to a cache or scratch folder, never a
# run's own files (which go through nnctl.runs). Keep the reason honest: a new entry is a place where
# run-folder writing could creep back in.
ALLOWED = {
    "nnctl/bench/own_data.py": "benchmark: scratch tables and specs in a temp folder",
    "nnctl/bench/scale.py": "benchmark: scratch workload, spec and logs in a temp folder",
    "nnctl/bench/search.py": "benchmark: its temp folder",
    "nnctl/bench/suite.py": "benchmark: scratch workload and spec in a temp folder",
    "nnctl/bench/sweep.py": "benchmark: its temp folder",
    "nnctl/bench/tables.py": "benchmark: scratch tables it generates and removes",
    "nnctl/bench/defaults.py": "benchmark: the results table and JSON the user names with --out/--json",
    "nnctl/config/starter.py": "`nnctl init` writes the starter spec where the user asked",
    "nnctl/commands/predict.py": "`predict --out` writes the predictions file the user named",
    "nnctl/data/image_cache.py": "the decoded-image cache beside the user's data (not a run folder)",
    "nnctl/data/table_cache.py": "the parsed-table cache beside the user's data (not a run folder)",
    "nnctl/export/api.py": ("`nnctl export` writes the model file at --out, by default <run>/model.onnx "
                            "beside the checkpoint it exports (a file the run never reads back)"),
    "nnctl/export/generative.py": "`nnctl export` of an autoencoder: its encoder/decoder files, as above",
    "nnctl/report/augment_plot.py": "a PNG where the user asked",
    "nnctl/report/image_grid.py": "an image grid (PNG/NPY/text) where the user asked",
    "nnctl/report/latent_plot.py": "a PNG where the user asked",
    "nnctl/report/plots.py": "a PNG where the user asked",
    "nnctl/report/search_plots.py": "a PNG where the user asked (lr-find, sweep plots)",
}

PATH_METHODS = {"write_text", "write_bytes", "mkdir", "touch", "unlink", "rmdir", "rename", "symlink_to",
                "hardlink_to", "tofile", "savefig"}
MODULE_CALLS = {
    "os": {"replace", "rename", "remove", "unlink", "makedirs", "mkdir", "rmdir", "symlink", "link", "truncate"},
    "shutil": {"copy", "copy2", "copyfile", "copytree", "move", "rmtree"},
    "tempfile": {"mkstemp", "mkdtemp", "NamedTemporaryFile", "TemporaryDirectory"},
    "numpy": {"save", "savez", "savez_compressed", "savetxt"},
}
GENERIC_WRITERS = {"atomic_write", "write_json"}
WRITE_FLAGS = {"O_CREAT", "O_WRONLY", "O_RDWR", "O_APPEND", "O_TRUNC"}


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted origin for `import numpy as np` and `from shutil import rmtree`."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _dotted(func: ast.expr, aliases: dict[str, str]) -> str | None:
    """'os.replace' for `os.replace`, `from os import replace; replace`; None for other callees."""
    if isinstance(func, ast.Name):
        return aliases.get(func.id, func.id)
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return f"{aliases.get(func.value.id, func.value.id)}.{func.attr}"
    return None


def _write_kind(call: ast.Call, aliases: dict[str, str]) -> str | None:
    name = _dotted(call.func, aliases)
    if name == "open":   # the builtin: a write unless its mode is a literal without w, a, x or +
        mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
        if mode is None or (isinstance(mode, ast.Constant) and isinstance(mode.value, str)
                            and not set(mode.value) & set("wax+")):
            return None
        return "open"
    if name == "os.open":
        if call.args and _dotted(call.args[0], aliases) == "os.devnull":
            return None     # silencing a stream writes no file
        flags = {n.attr for arg in call.args for n in ast.walk(arg) if isinstance(n, ast.Attribute)}
        return "os.open" if flags & WRITE_FLAGS else None
    if name is not None:
        module, _, attr = name.rpartition(".")
        if attr in MODULE_CALLS.get(module, ()):
            return name
        if name.rpartition(".")[2] in GENERIC_WRITERS and (not module or module.startswith("nnctl.runs")):
            return name.rpartition(".")[2]
    if isinstance(call.func, ast.Attribute) and call.func.attr in PATH_METHODS:
        return f".{call.func.attr}"
    return None


def writes_in(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    aliases = _aliases(tree)
    found = [(node.lineno, _write_kind(node, aliases)) for node in ast.walk(tree) if isinstance(node, ast.Call)]
    return sorted((line, kind) for line, kind in found if kind)


def writers() -> dict[str, list[tuple[int, str]]]:
    """Every module outside the owners that writes, with (line, call) of each write."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).as_posix()
        if rel.startswith(OWNERS):
            continue
        found = writes_in(path)
        if found:
            out[rel] = found
    return out


def unexpected_writes() -> list[str]:
    return [f"{rel}:{line} {kind}: only nnctl/runs/ writes run and sweep folders (or list the module in "
            f"ALLOWED with its reason)"
            for rel, found in writers().items() if rel not in ALLOWED for line, kind in found]


def test_only_runs_writes_files():
    assert unexpected_writes() == []


def test_every_allowed_writer_still_writes():
    """An entry whose module no longer writes (moved into runs/, or gone) is removed, not kept as a loophole."""
    assert sorted(set(ALLOWED) - set(writers())) == []


def test_the_scan_sees_what_it_must_refuse(tmp_path, monkeypatch):
    """The checker itself: each kind of write is caught with file and line; reads, a runs/ writer and
    fileio.py are not; an allowed module is let through."""
    pkg = tmp_path / "nnctl"
    files = {
        "sweep/w.py": ("import os, shutil\nimport numpy as np\nfrom pathlib import Path\n"
                       "from tempfile import mkdtemp as scratch\nfrom nnctl.runs.store import atomic_write\n"
                       "def f(p, m):\n"
                       "    open(p, 'r').read(); open(p).read(); Path(p).read_text(); p.replace('a', 'b')\n"
                       "    os.open(os.devnull, os.O_WRONLY)\n"
                       "    open(p, 'ab'); open(p, mode=m)\n"
                       "    Path(p).write_text('x'); p.mkdir(); p.unlink()\n"
                       "    os.replace(p, p); shutil.rmtree(p); np.savez(p); scratch()\n"
                       "    atomic_write(p, None); os.open(p, os.O_RDONLY); os.open(p, os.O_RDWR | os.O_CREAT)\n"),
        "runs/store.py": "def f(p):\n    open(p, 'w')\n",
        "fileio.py": "def f(p):\n    open(p, 'w')\n",
        "report/plots.py": "def f(p):\n    open(p, 'w')\n",
    }
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    monkeypatch.setitem(globals(), "PACKAGE", pkg)
    monkeypatch.setitem(globals(), "ALLOWED", {"nnctl/report/plots.py": "a PNG where the user asked"})
    assert [line.split(": only")[0] for line in unexpected_writes()] == [
        "nnctl/sweep/w.py:9 open", "nnctl/sweep/w.py:9 open",
        "nnctl/sweep/w.py:10 .mkdir", "nnctl/sweep/w.py:10 .unlink", "nnctl/sweep/w.py:10 .write_text",
        "nnctl/sweep/w.py:11 numpy.savez", "nnctl/sweep/w.py:11 os.replace", "nnctl/sweep/w.py:11 shutil.rmtree",
        "nnctl/sweep/w.py:11 tempfile.mkdtemp",
        "nnctl/sweep/w.py:12 atomic_write", "nnctl/sweep/w.py:12 os.open",
    ]
    assert test_every_allowed_writer_still_writes() is None
