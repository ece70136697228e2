"""Attacks through specs, names, paths, data files and the package's own source.

- YAML tags that would build Python objects are refused with an exact message, and never run.
- Nothing unpickles: data files with object arrays are refused, and the package source is
  scanned so that every np.load passes allow_pickle=False and nothing imports pickle.
- Run and sweep names cannot leave the runs directory (through the real CLI).
- Relative data paths resolve against the spec's own folder, not the working directory.
- No eval/exec of user input anywhere: the source is parsed with `ast` and checked.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nnctl.cli import app

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nnctl"
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
runner = CliRunner()

TINY = "data: {dataset: blobs, options: {n_samples: 60}, val_split: 0.0, test_split: 0.0}\n" \
       "model: {hidden: [4]}\ntraining: {epochs: 1, batch_size: 30}\n"


class Marker:
    """Unpickling this creates `path`."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# ---------------------------------------------------------------------------- YAML tags

TAG_MESSAGE = ("line 1 column {col}: tag not allowed (specs are read with a safe loader): could not determine a "
               "constructor for the tag 'tag:yaml.org,2002:{tag}'")


@pytest.mark.parametrize("text, col, tag", [
    ("name: !!python/object/apply:os.system ['touch {marker}']\n", 7, "python/object/apply:os.system"),
    ("name: !!python/object:pathlib.Path {{}}\n", 7, "python/object:pathlib.Path"),
    ("name: !!python/name:os.system ''\n", 7, "python/name:os.system"),
    ("seed: !!python/object/new:builtins.open ['{marker}', 'w']\n", 7, "python/object/new:builtins.open"),
])
def test_python_tags_are_refused_and_never_run(tmp_path, text, col, tag):
    marker = tmp_path / "RAN"
    spec = tmp_path / "evil.yaml"
    spec.write_text(TINY + text.format(marker=marker))
    line = TINY.count("\n") + 1
    expected = "error: evil.yaml " + TAG_MESSAGE.format(col=col, tag=tag).replace("line 1", f"line {line}")
    for command in (["train", str(spec), "--runs-dir", str(tmp_path / "runs")], ["validate", str(spec)],
                    ["config", str(spec)]):
        res = runner.invoke(app, command)
        assert res.exit_code == 1, res.output
        assert res.output.strip() == expected
    assert not marker.exists() and not (tmp_path / "runs").exists()


def test_python_tag_in_set_and_in_a_sweep_is_refused(tmp_path):
    marker = tmp_path / "RAN"
    spec = tmp_path / "ok.yaml"
    spec.write_text(TINY)
    res = runner.invoke(app, ["config", str(spec), "--set", f"seed=!!python/object/apply:os.system ['touch {marker}']"])
    assert res.exit_code == 1
    assert res.output.strip() == (f"error: --set seed=!!python/object/apply:os.system ['touch {marker}']: value "
                                  + TAG_MESSAGE.format(col=1, tag="python/object/apply:os.system"))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"base: ok.yaml\nparameters: {{seed: [0]}}\nmetric: loss\n"
                     f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    res = runner.invoke(app, ["sweep", str(sweep), "--dry-run"])
    assert res.exit_code == 1
    assert res.output.strip() == "error: sweep.yaml " + TAG_MESSAGE.format(
        col=7, tag="python/object/apply:os.system").replace("line 1", "line 4")
    assert not marker.exists()


def test_a_tagged_config_in_a_run_folder_is_not_run_by_the_listing(tmp_path):
    marker = tmp_path / "RAN"
    run = tmp_path / "runs" / "evil-20240101-000000"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    res = runner.invoke(app, ["runs", str(tmp_path / "runs"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)[0]["problem"] == "no checkpoints; no status.json; config.yaml is unreadable"
    assert not marker.exists()


# ---------------------------------------------------------------------------- pickles in data files

def test_pickled_data_files_are_refused(tmp_path):
    marker = tmp_path / "RAN"
    evil = np.array([Marker(marker)] * 4, dtype=object)
    np.save(tmp_path / "x.npy", evil, allow_pickle=True)
    np.save(tmp_path / "y.npy", evil, allow_pickle=True)
    np.savez(tmp_path / "d.npz", x=evil, y=evil)
    np.load(tmp_path / "x.npy", allow_pickle=True)          # the payload is live ...
    assert marker.exists()
    marker.unlink()
    cases = {
        "x.npy": "error: x.npy: holds Python objects, which are not loaded (allow_pickle is off)",
        "d.npz": "error: d.npz: array 'x' holds Python objects, which are not loaded (allow_pickle is off)",
    }
    for dataset, message in cases.items():
        spec = tmp_path / "s.yaml"
        extra = ", target_path: y.npy" if dataset.endswith(".npy") else ""
        spec.write_text(f"data: {{dataset: {dataset}{extra}}}\n")
        res = runner.invoke(app, ["train", str(spec), "--runs-dir", str(tmp_path / "runs")])
        assert res.exit_code == 1 and res.output.strip() == message, res.output
    assert not marker.exists()                              # ... and nnctl never ran it


# ---------------------------------------------------------------------------- names and paths

@pytest.mark.parametrize("name, folder", [
    ("../../escaped", "escaped"),
    ("/tmp/absolute", "tmp-absolute"),
    ("..", "run"),
    ("x/../../../y", "x-..-..-..-y"),      # one path component: harmless dots
    ("~/home", "home"),
    ("C:\\\\Windows", "C-Windows"),
    ("spaces and\\nnewline", "spaces-and-newline"),
])
def test_run_names_stay_inside_the_runs_directory(tmp_path, name, folder):
    # (a NUL byte in any value, the name too, is refused while the spec is read: test_hostile.py)
    work = tmp_path / "work"
    work.mkdir()
    spec = work / "spec.yaml"
    spec.write_text(f'name: "{name}"\n' + TINY)
    before = set(tmp_path.rglob("*"))
    res = runner.invoke(app, ["train", str(spec), "--runs-dir", str(work / "runs"), "-q"])
    assert res.exit_code == 0, res.output
    runs = list((work / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.rsplit("-", 2)[0] == folder, runs
    assert runs[0].resolve().parent == (work / "runs").resolve()
    created = {p for p in set(tmp_path.rglob("*")) - before if not p.is_relative_to(work / "runs")}
    assert created == set(), created                   # nothing written anywhere else


def test_sweep_name_stays_inside_the_runs_directory(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "base.yaml").write_text(TINY)
    (work / "sweep.yaml").write_text('name: "../../../sweep-escaped"\nbase: base.yaml\n'
                                     "parameters: {seed: [0]}\nmetric: loss\ngoal: minimize\n")
    proc = subprocess.run([sys.executable, "-m", "nnctl", "sweep", str(work / "sweep.yaml"),
                           "--runs-dir", str(work / "runs")], env=ENV, capture_output=True, text=True,
                          timeout=120, cwd=work)
    assert proc.returncode == 0, proc.stderr
    made = list((work / "runs").iterdir())
    assert len(made) == 1 and made[0].name.startswith("sweep-escaped-"), made
    # the sweep folder, and its trial runs (named after it) inside it
    assert all(p.is_relative_to(made[0]) for p in tmp_path.rglob("*escaped*") if p != made[0])
    assert [p.name for p in tmp_path.iterdir()] == ["work"]


def test_relative_data_paths_resolve_against_the_spec_folder(tmp_path):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    rows = "\n".join(f"{i % 7},{(i * 3) % 5},{i % 2}" for i in range(40))
    (project / "data" / "d.csv").write_text("a,b,label\n" + rows + "\n")
    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    np.save(project / "data" / "x.npy", x)
    np.save(project / "data" / "y.npy", (x[:, 0] > 0).astype(np.int64))
    (project / "csv.yaml").write_text("data: {dataset: data/d.csv, target: label, val_split: 0.0, test_split: 0.0}\n"
                                      "training: {epochs: 1, batch_size: 8}\n")
    (project / "npy.yaml").write_text("data: {dataset: data/x.npy, target_path: data/y.npy, test_split: 0.0}\n"
                                      "training: {epochs: 1, batch_size: 8}\n")
    # a decoy with the same relative path under the working directory: it must not be read
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "data").mkdir(parents=True)
    (elsewhere / "data" / "d.csv").write_text("only,two\n1,2\n")
    for spec, source in (("csv.yaml", "data/d.csv"), ("npy.yaml", "data/x.npy")):
        proc = subprocess.run([sys.executable, "-m", "nnctl", "train", str(project / spec), "--runs-dir", "runs",
                               "-q"], env=ENV, capture_output=True, text=True, timeout=120, cwd=elsewhere)
        assert proc.returncode == 0, proc.stderr
        run = next(p for p in (elsewhere / "runs").iterdir() if p.name.startswith(spec.split(".")[0]))
        stored = json.loads(json.dumps(__import__("yaml").safe_load((run / "config.yaml").read_text())))
        assert stored["data"]["dataset"] == str((project / source).resolve())   # stored absolute
    # and the stored absolute paths let eval rebuild the split from a third folder
    proc = subprocess.run([sys.executable, "-m", "nnctl", "eval", str(run), "--split", "val", "--json"],
                          env=ENV, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n"] == 6


# ---------------------------------------------------------------------------- the source, scanned

FORBIDDEN_IMPORTS = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "joblib"}
UNSAFE_YAML = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all",
               "Loader", "FullLoader", "UnsafeLoader", "CLoader", "CFullLoader", "CUnsafeLoader"}


def _name(node: ast.AST) -> str:
    """'np.load' for np.load, 'yaml.Loader' for yaml.Loader, 'eval' for eval."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return "?"


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def scan(source: str, filename: str) -> list[str]:
    """Every unsafe construct in one module, as 'file:line: what'."""
    problems = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in FORBIDDEN_IMPORTS:
                    problems.append(f"{where}: imports {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module.split(".")[0] in FORBIDDEN_IMPORTS:
                problems.append(f"{where}: imports from {module}")
            if module == "yaml" and any(a.name in UNSAFE_YAML for a in node.names):
                problems.append(f"{where}: imports an unsafe yaml loader")
        elif isinstance(node, ast.Attribute) and _name(node.value) == "yaml" and node.attr in UNSAFE_YAML:
            problems.append(f"{where}: uses yaml.{node.attr}")
        elif isinstance(node, ast.Call):
            func = _name(node.func)
            args = [*node.args, *(k.value for k in node.keywords)]
            constant = all(isinstance(a, ast.Constant) for a in args)
            if func in ("eval", "exec", "builtins.eval", "builtins.exec"):
                problems.append(f"{where}: calls {func}")
            elif func in ("compile", "__import__", "importlib.import_module") and not constant:
                problems.append(f"{where}: calls {func} with a non-constant argument")
            elif func in ("os.system", "os.popen"):
                problems.append(f"{where}: calls {func}")
            shell = _keyword(node, "shell")
            if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
                problems.append(f"{where}: calls {func} with shell={ast.unparse(shell)}")
            if func.endswith(".load") and func.split(".")[0] in ("np", "numpy"):
                pickle = _keyword(node, "allow_pickle")
                if not (isinstance(pickle, ast.Constant) and pickle.value is False):
                    problems.append(f"{where}: calls {func} without allow_pickle=False")
            if func.endswith("read_array"):
                pickle = _keyword(node, "allow_pickle")
                if pickle is not None and not (isinstance(pickle, ast.Constant) and pickle.value is False):
                    problems.append(f"{where}: calls {func} with allow_pickle")
    return problems


def test_the_scanner_catches_what_it_looks_for():
    bad = textwrap.dedent("""\
        import pickle, marshal
        from shelve import open as shelf
        import yaml
        from yaml import FullLoader
        import numpy as np
        import subprocess, os
        eval(user_text)
        exec("x = 1")
        compile(code, "f", "exec")
        __import__(name)
        yaml.load(text, Loader=yaml.Loader)
        yaml.unsafe_load(text)
        np.load(path)
        np.load(path, allow_pickle=True)
        np.lib.format.read_array(f, allow_pickle=True)
        subprocess.run(cmd, shell=True)
        subprocess.Popen(cmd, shell=flag)
        os.system(cmd)
        """)
    problems = sorted(p.split(": ", 1)[1] for p in scan(bad, "bad.py"))
    assert problems == sorted([
        "imports pickle", "imports marshal", "imports from shelve", "imports an unsafe yaml loader",
        "calls eval", "calls exec", "calls compile with a non-constant argument",
        "calls __import__ with a non-constant argument", "uses yaml.load", "uses yaml.Loader",
        "uses yaml.unsafe_load", "calls np.load without allow_pickle=False",
        "calls np.load without allow_pickle=False", "calls np.lib.format.read_array with allow_pickle",
        "calls subprocess.run with shell=True", "calls subprocess.Popen with shell=flag", "calls os.system",
    ])
    safe = "import yaml\nimport numpy as np\nyaml.safe_load(t)\nyaml.compose(t, Loader=yaml.SafeLoader)\n" \
           "np.load(p, mmap_mode='r', allow_pickle=False)\ncompile('1', 'f', 'eval')\n"
    assert scan(safe, "safe.py") == []


def test_the_package_has_no_eval_pickle_unsafe_yaml_or_shell(record_counts):
    files = sorted(PACKAGE.rglob("*.py"))
    problems = [p for f in files for p in scan(f.read_text(encoding="utf-8"), str(f.relative_to(ROOT)))]
    loads = sum(f.read_text(encoding="utf-8").count("np.load(") for f in files)
    record_counts("security: source files scanned", {"files": len(files)})
    record_counts("security: np.load calls checked for allow_pickle=False", {"calls": loads})
    assert len(files) >= 40 and loads >= 3
    assert problems == []
