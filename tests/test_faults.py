"""Faults: SIGKILL at random moments and inside checkpoint writes, full disks, read-only folders,
concurrent runs and SIGTERM. After every fault the run is readable and `--resume` finishes it.

The kill tests drive real `python -m nnctl train` processes. Some are killed after a seeded
random delay; others are killed by themselves at an exact point of an atomic write (a tiny
launcher wraps `os.replace`, `os.fsync` or numpy's array writer to SIGKILL its own process on
the N-th call), so kills provably land inside the write window. A tiny model with one batch
per epoch makes checkpoint writes most of the wall time.
"""
from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from nnctl.cli import app
from nnctl.runs.catalog import read_run, scan_runs
from nnctl.runs.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
EPOCHS = 120
SPEC = f"""\
name: crash
seed: 1
data: {{dataset: blobs, options: {{n_samples: 60}}, val_split: 0.2, test_split: 0.0}}
model: {{hidden: [4]}}
training: {{epochs: {EPOCHS}, batch_size: 48}}
"""

# Runs nnctl with one write primitive replaced by "SIGKILL myself on the N-th call".
LAUNCHER = textwrap.dedent("""\
    import os, signal, sys
    point, n = sys.argv[1], int(sys.argv[2])
    calls = [0]
    def killer(real):
        def wrapped(*args, **kwargs):
            calls[0] += 1
            if calls[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        return wrapped
    if point == "replace":      # temp file complete and synced, not yet renamed over the old one
        os.replace = killer(os.replace)
    elif point == "fsync":      # data written, not yet on disk
        os.fsync = killer(os.fsync)
    elif point == "array":      # half-way through an .npz: some members written, others not
        import numpy.lib.format as fmt
        fmt.write_array = killer(fmt.write_array)
    from nnctl.cli import main
    sys.argv = ["nnctl", *sys.argv[3:]]
    main()
""")


def nnctl(*args: str, kill_at: tuple[str, int] | None = None) -> subprocess.Popen:
    head = [sys.executable, "-c", LAUNCHER, kill_at[0], str(kill_at[1])] if kill_at else [sys.executable, "-m", "nnctl"]
    return subprocess.Popen([*head, *args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout: float, step: float = 0.002):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return None


def temp_files(run: Path) -> list[Path]:
    return [p for folder in (run, run / "checkpoints") if folder.is_dir() for p in folder.iterdir()
            if p.name.endswith(".tmp")]


def only_run(runs: Path) -> Path | None:
    found = [p for p in runs.iterdir() if p.is_dir()] if runs.is_dir() else []
    assert len(found) <= 1, found
    return found[0] if found else None


def epochs_of(history) -> list:
    return [r.get("epoch") for r in history]


def check_after_kill(run: Path) -> int:
    """Everything a killed run leaves must be readable; returns the epoch of last.npz."""
    last = load_checkpoint(run / "checkpoints" / "last.npz")
    e = last.meta["epoch"]
    assert epochs_of(last.meta["history"]) == list(range(1, e + 1))
    if (run / "history.json").exists():
        history = json.loads((run / "history.json").read_text())
        # history.json is rewritten right after last.npz, so it is that epoch or one behind
        assert epochs_of(history) == list(range(1, len(history) + 1)) and len(history) in (e, e - 1), (e, history)
    if (run / "checkpoints" / "best.npz").exists():
        best = load_checkpoint(run / "checkpoints" / "best.npz")
        assert best.meta["epoch"] <= e + 1    # best.npz is written just before last.npz
    json.loads((run / "status.json").read_text())
    assert isinstance(yaml.safe_load((run / "config.yaml").read_text()), dict)
    info = read_run(run)
    # running, but its process is gone; or killed on its way out, after it completed
    assert info.status == "crashed?" or (info.status == "completed" and (run / "metrics.json").exists()), \
        (info.status, info.problem)
    return e


def finish(run: Path, epochs: int = EPOCHS) -> list[dict]:
    """Resume to the end (unless the last process got there); every epoch is in the history exactly once."""
    if json.loads((run / "status.json").read_text())["status"] != "completed":
        proc = subprocess.run([sys.executable, "-m", "nnctl", "train", "--resume", str(run), "--quiet"],
                              env=ENV, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    history = json.loads((run / "history.json").read_text())
    assert epochs_of(history) == list(range(1, epochs + 1))
    assert load_checkpoint(run / "checkpoints" / "last.npz").meta["epoch"] == epochs
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    assert (run / "metrics.json").exists() and temp_files(run) == []
    return history


def reference_history(tmp_path: Path, monkeypatch) -> list[dict]:
    """The same spec trained without interruption (in-process; fsync skipped, numbers unchanged)."""
    import nnctl.runs.store as store
    monkeypatch.setattr(store.os, "fsync", lambda fd: None)
    res = CliRunner().invoke(app, ["train", str(tmp_path / "spec.yaml"), "--runs-dir", str(tmp_path / "ref"), "-q"])
    monkeypatch.undo()
    assert res.exit_code == 0, res.output
    return json.loads((only_run(tmp_path / "ref") / "history.json").read_text())


def same_numbers(a: list[dict], b: list[dict]) -> bool:
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a]
    return strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b]


# ---------------------------------------------------------------------------- SIGKILL

def test_sigkill_inside_checkpoint_writes_then_resume(tmp_path, monkeypatch, record_counts):
    """Kills at exact points of atomic writes, one after another on the same run, then a clean finish."""
    (tmp_path / "spec.yaml").write_text(SPEC)
    runs = tmp_path / "runs"
    rng = random.Random(7)
    counts = Counter()
    # (point, N): the very first writes of a new run, then writes inside later epochs
    # replace #3 is a new run's first last.npz: killed there, the run has nothing to resume
    proc = nnctl("train", str(tmp_path / "spec.yaml"), "--runs-dir", str(tmp_path / "early"), "-q",
                 kill_at=("replace", 3))
    assert proc.wait(timeout=60) == -signal.SIGKILL
    counts["kill at replace"] += 1
    early = only_run(tmp_path / "early")
    assert not (early / "checkpoints" / "last.npz").exists() and temp_files(early)
    check_before_first_checkpoint(early)
    # then one run killed again and again: replace #6 is its first history.json (last.npz exists),
    # the rest hit resumed processes anywhere in their writes
    plan = [("replace", 6), ("fsync", 3), ("array", 2), ("replace", 1)] + [
        (rng.choice(["replace", "fsync", "array"]), rng.randint(1, 14)) for _ in range(8)]
    run = None
    for point, n in plan:
        args = ["train", str(tmp_path / "spec.yaml"), "--runs-dir", str(runs), "-q"] if run is None else \
            ["train", "--resume", str(run), "-q"]
        proc = nnctl(*args, kill_at=(point, n))
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, (point, n, proc.returncode, err)
        counts[f"kill at {point}"] += 1
        run = run or only_run(runs)
        counts["temp files left by the kill"] += len(temp_files(run))
        check_after_kill(run)
    history = finish(run)
    assert same_numbers(history, reference_history(tmp_path, monkeypatch))
    kills = {k: v for k, v in counts.items() if k.startswith("kill at")}
    record_counts("faults: SIGKILL inside writes, kills", kills)
    record_counts("faults: SIGKILL inside writes, torn temp files found after the kills",
                  {"temp files": counts["temp files left by the kill"]})
    assert sum(kills.values()) == len(plan) + 1
    assert counts["temp files left by the kill"] > 0


def check_before_first_checkpoint(run: Path) -> None:
    """A run killed before its first last.npz: listed as broken, and --resume says why, exit 1."""
    runs = scan_runs(run.parent)
    assert [r.status for r in runs] == ["broken"]
    assert "no checkpoints" in runs[0].problem
    res = CliRunner().invoke(app, ["runs", str(run.parent), "--json"])
    assert res.exit_code == 0, res.output
    assert [r["status"] for r in json.loads(res.output)] == ["broken"]
    res = CliRunner().invoke(app, ["train", "--resume", str(run)])
    assert res.exit_code == 1
    assert res.output.strip() == (f"error: {run}/checkpoints/last.npz: no such checkpoint; the run stopped before "
                                  "its first checkpoint was written, so there is nothing to resume (train the spec again)")


def test_sigkill_at_random_moments_then_resume(tmp_path, record_counts):
    """Seeded random kill times, including 'as soon as a temp file shows up'; kill, resume, kill, ..."""
    (tmp_path / "spec.yaml").write_text(SPEC.replace(f"epochs: {EPOCHS}", "epochs: 300"))
    rng = random.Random(2024)
    counts = Counter()
    kills = 0
    for chain in range(3):
        runs = tmp_path / f"runs{chain}"
        proc = nnctl("train", str(tmp_path / "spec.yaml"), "--runs-dir", str(runs), "-q")
        run = None
        for _ in range(5):
            if run is None:
                run = wait_for(lambda: only_run(runs) if runs.is_dir() else None, 30)
                assert run is not None
                assert wait_for(lambda: (run / "checkpoints" / "last.npz").exists(), 30)
            how = rng.choice(["delay", "in a write"])
            if how == "delay":
                time.sleep(rng.uniform(0.0, 0.4))
            else:
                wait_for(lambda: temp_files(run), 1.0, step=0.0005)
            writing = bool(temp_files(run))
            proc.kill()
            proc.wait(timeout=30)
            if proc.returncode != -signal.SIGKILL:
                break   # it finished first
            kills += 1
            counts[f"kill after {how}"] += 1
            counts["kill while a temp file existed"] += writing
            check_after_kill(run)
            if read_run(run).status == "completed":
                break
            # the next kill may land in startup or restore, before any new epoch
            proc = nnctl("train", "--resume", str(run), "-q")
            time.sleep(rng.uniform(0.2, 0.8))
        proc.kill()
        proc.wait(timeout=30)
        if proc.returncode == -signal.SIGKILL and read_run(run).status != "completed":
            kills += 1
            counts["kill of a resumed process"] += 1
            check_after_kill(run)
        finish(run, 300)
    writing = counts.pop("kill while a temp file existed")
    record_counts("faults: SIGKILL at random moments, kills", counts)
    record_counts("faults: SIGKILL at random moments, kills while a temp file existed", {"kills": writing})
    assert kills == sum(counts.values()) >= 12


def test_kill_before_any_checkpoint_states_are_listed(tmp_path):
    """The states a SIGKILL can leave before the first checkpoint; `nnctl runs` lists them all, never crashes."""
    runs = tmp_path / "runs"
    (runs / "a-20240101-000000" / "checkpoints").mkdir(parents=True)           # killed right after mkdir
    b = runs / "b-20240101-000000"
    (b / "checkpoints").mkdir(parents=True)
    (b / "config.yaml").write_text("name: b\n")                                # config only
    (b / "checkpoints" / ".last.npz.x1.tmp").write_bytes(b"PK\x03\x04 half")  # torn temp file
    c = runs / "c-20240101-000000"
    (c / "checkpoints").mkdir(parents=True)
    (c / "config.yaml").write_text("name: c\n")
    (c / "status.json").write_text(json.dumps({"status": "running", "pid": 2**22 + 12345}))
    res = CliRunner().invoke(app, ["runs", str(runs), "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert {k: r["status"] for k, r in rows.items()} == {
        "a-20240101-000000": "broken", "b-20240101-000000": "broken", "c-20240101-000000": "broken"}
    assert rows["c-20240101-000000"]["problem"].startswith("status is running but process 4206649 is gone")
    res = CliRunner().invoke(app, ["runs", str(runs)])
    assert res.exit_code == 0 and "broken" in res.output


# ---------------------------------------------------------------------------- full disk, read-only

def inject(monkeypatch, target: str, nth: int, code: int, persistent: bool) -> dict:
    """Make the nth atomic write of `target` (a run file name) fail with OSError(code).

    ENOSPC fails at fsync (the data does not fit), EACCES at creating the temp file (a
    read-only folder), both inside `atomic_write`, so its own clean-up runs. `persistent`:
    every later write fails too (the disk stays full).
    """
    import nnctl.runs.store as store
    state = {"seen": 0, "failed": False}
    real_mkstemp, real_fsync = store.tempfile.mkstemp, store.os.fsync

    def should_fail(name: str) -> bool:
        if state["failed"] and persistent:
            return True
        if name == target:
            state["seen"] += 1
            if state["seen"] == nth:
                state["failed"] = True
                return True
        return False

    def mkstemp(prefix="", suffix="", dir=None):
        if code == errno.EACCES and should_fail(prefix[1:-1]):
            raise PermissionError(code, os.strerror(code))
        return real_mkstemp(prefix=prefix, suffix=suffix, dir=dir)

    def fsync(fd):
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if code == errno.ENOSPC and name.endswith(".tmp") and should_fail(name[1:].split(".tmp")[0].rsplit(".", 1)[0]):
            raise OSError(code, os.strerror(code))
        return real_fsync(fd)

    monkeypatch.setattr(store.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(store.os, "fsync", fsync)
    return state


SMALL = """\
name: disk
data: {dataset: blobs, options: {n_samples: 60}, val_split: 0.2, test_split: 0.0}
model: {hidden: [4]}
training: {epochs: 4, batch_size: 48}
"""


@pytest.mark.parametrize("target, nth, code, persistent, last_epoch, status", [
    ("last.npz", 3, errno.ENOSPC, True, 1, "running"),      # disk stays full: status can't be written
    ("last.npz", 3, errno.ENOSPC, False, 1, "failed"),
    ("best.npz", 2, errno.EACCES, False, 1, "failed"),
    ("history.json", 2, errno.ENOSPC, False, 2, "failed"),  # last.npz of epoch 2 is ahead of history.json
    ("metrics.json", 1, errno.EACCES, False, 4, "failed"),  # all epochs done, the summary failed
    ("status.json", 1, errno.ENOSPC, True, None, None),     # the very first status write
    ("config.yaml", 1, errno.EACCES, True, None, None),     # read-only from the start
])
def test_full_disk_or_read_only(tmp_path, monkeypatch, target, nth, code, persistent, last_epoch, status):
    (tmp_path / "spec.yaml").write_text(SMALL)
    runs = tmp_path / "runs"
    state = inject(monkeypatch, target, nth, code, persistent)
    res = CliRunner().invoke(app, ["train", str(tmp_path / "spec.yaml"), "--runs-dir", str(runs), "-q"])
    monkeypatch.undo()
    assert state["failed"] and res.exit_code == 1, res.output
    run = only_run(runs)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    why = os.strerror(code)
    if target == "config.yaml":
        assert run is None     # nothing was written: no half-made run folder is left behind
        assert lines[0].startswith(f"error: {runs}/disk-") and lines[0].endswith(f": cannot write: {why}")
        return
    assert temp_files(run) == []            # atomic_write cleaned up after itself
    if last_epoch is None:
        assert lines[0] == f"error: {run}: cannot write: {why}; no checkpoint was written"
        assert scan_runs(runs)[0].status == "broken"
        return
    assert lines[0] == f"error: {run}: cannot write: {why}; the last complete checkpoint is {run}/checkpoints/last.npz"
    assert load_checkpoint(run / "checkpoints" / "last.npz").meta["epoch"] == last_epoch
    record = json.loads((run / "status.json").read_text())
    assert record["status"] == status
    if status == "failed":
        assert record["error"] == f"{'PermissionError' if code == errno.EACCES else 'OSError'}: [Errno {code}] {why}"
    # the disk has room again: the run resumes and ends with every epoch once
    res = CliRunner().invoke(app, ["train", "--resume", str(run), "-q"])
    assert res.exit_code == 0, res.output
    assert epochs_of(json.loads((run / "history.json").read_text())) == [1, 2, 3, 4]


# ---------------------------------------------------------------------------- concurrency, SIGTERM

SYNC_START = textwrap.dedent("""\
    import sys, time
    from nnctl.cli import main          # imports done before the barrier
    start = float(sys.argv[1])
    time.sleep(max(0.0, start - time.time()))
    sys.argv = ["nnctl", *sys.argv[2:]]
    main()
""")


def test_simultaneous_runs_get_their_own_directories(tmp_path, record_counts):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace("name: crash", "name: same").replace(f"epochs: {EPOCHS}", "epochs: 400"))
    runs = tmp_path / "runs"
    start = float(int(time.time()) + 2) + 0.05   # all in the same second, so the names collide
    stamps: set = set()
    procs = [subprocess.Popen([sys.executable, "-c", SYNC_START, str(start), "train", str(spec),
                               "--runs-dir", str(runs), "-q"], env=ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    try:
        def all_running():
            if not runs.is_dir():
                return None
            infos = scan_runs(runs)
            ok = len(infos) == 4 and all(i.status == "running" and i.history for i in infos)
            return infos if ok else None
        infos = wait_for(all_running, 60, step=0.02)
        assert infos, [(i.name, i.status) for i in scan_runs(runs)] if runs.is_dir() else "no runs dir"
        res = CliRunner().invoke(app, ["runs", str(runs), "--json"])
        assert res.exit_code == 0, res.output
        listed = json.loads(res.output)
        assert len(listed) == 4 and {r["status"] for r in listed} == {"running"}
        assert len({r["path"] for r in listed}) == 4
        pids = {json.loads((Path(r["path"]) / "status.json").read_text())["pid"] for r in listed}
        assert pids == {p.pid for p in procs}
        stamps = {Path(r["path"]).name.split("-", 1)[1][:15] for r in listed}
        if len(stamps) == 1:   # same second: numbered -2, -3, -4 by mkdir's exclusivity
            stamp = next(iter(stamps))
            assert sorted(Path(r["path"]).name for r in listed) == [
                f"same-{stamp}", f"same-{stamp}-2", f"same-{stamp}-3", f"same-{stamp}-4"]
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=60) for p in procs]
    assert codes == [130] * 4, [p.stderr.read() for p in procs]
    assert [i.status for i in scan_runs(runs)] == ["interrupted"] * 4
    record_counts("faults: concurrent runs (all listed as running, then SIGTERM -> 130)", {"processes": 4})


def test_sigterm_mid_write_is_ctrl_c(tmp_path):
    """SIGTERM while a checkpoint is being written: interrupted, exit 130, nothing torn, resumable."""
    (tmp_path / "spec.yaml").write_text(SPEC)
    runs = tmp_path / "runs"
    proc = nnctl("train", str(tmp_path / "spec.yaml"), "--runs-dir", str(runs), "-q")
    run = wait_for(lambda: only_run(runs) if runs.is_dir() else None, 30)
    assert wait_for(lambda: (run / "history.json").exists(), 30)
    wait_for(lambda: temp_files(run), 2.0, step=0.0005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    done = load_checkpoint(run / "checkpoints" / "last.npz").meta["epoch"]
    assert err.splitlines() == [f"interrupted after {done} epochs; resume with:", f"  nnctl train --resume {run}"]
    assert json.loads((run / "status.json").read_text())["status"] == "interrupted"
    assert temp_files(run) == []       # the interrupted write removed its temp file
    assert epochs_of(json.loads((run / "history.json").read_text())) == list(range(1, done + 1))
    finish(run)


def test_interrupt_while_finishing_is_still_an_interrupt(tmp_path, monkeypatch):
    """Ctrl-C/SIGTERM after the last epoch (while writing metrics.json): interrupted, not failed; resume ends it."""
    from nnctl.runs.store import RunDir
    (tmp_path / "spec.yaml").write_text(SMALL)

    def interrupted(self, metrics):
        raise KeyboardInterrupt

    monkeypatch.setattr(RunDir, "write_metrics", interrupted)
    res = CliRunner().invoke(app, ["train", str(tmp_path / "spec.yaml"), "--runs-dir", str(tmp_path / "runs"), "-q"])
    monkeypatch.undo()
    run = only_run(tmp_path / "runs")
    assert res.exit_code == 130, res.output
    assert res.output.splitlines() == ["interrupted after 4 epochs; resume with:", f"  nnctl train --resume {run}"]
    assert json.loads((run / "status.json").read_text())["status"] == "interrupted"
    res = CliRunner().invoke(app, ["train", "--resume", str(run), "-q"])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 4
