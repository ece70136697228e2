"""Shared test plumbing: the fuzz and fault tests record how many cases they ran, shown after the run."""
from __future__ import annotations

import pytest

@pytest.fixture(autouse=True)
def _table_cache_dir(tmp_path_factory, monkeypatch):
    """Every test gets its own parsed-table cache (data.cache: auto), so none writes to ~/.cache
    and none sees another's tables; subprocesses inherit it through the environment."""
    monkeypatch.setenv("NNCTL_CACHE_DIR", str(tmp_path_factory.mktemp("nnctl-cache")))


# (test id, what was counted) lines, in the order the tests recorded them.
_COUNTS: list[tuple[str, str]] = []


@pytest.fixture
def record_counts(request):
    """`record_counts("what", {"outcome": n, ...})`: keep a line for the terminal summary.

    The fuzz/fault tests call it so every run shows how many documents, files, kills...
    were really tried, not only that the test passed.
    """

    def record(what: str, counts) -> None:
        counts = dict(counts)
        parts = ", ".join(f"{k} {v}" for k, v in counts.items())
        if len(counts) == 1:
            _COUNTS.append((request.node.nodeid, f"{what}: {parts}"))
        else:
            total = sum(int(v) for v in counts.values())
            _COUNTS.append((request.node.nodeid, f"{what}: {total} ({parts})"))

    return record


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _COUNTS:
        return
    terminalreporter.section("fuzz and fault counts")
    for nodeid, line in _COUNTS:
        terminalreporter.write_line(f"{nodeid.split('::')[-1]}: {line}")


def as_interrupted(run, epochs: int) -> None:
    """Make a finished run the interrupted first part of an `epochs`-epoch run: last.npz and
    config.yaml both say `epochs` (resume refuses a config.yaml that differs from the checkpoint),
    and status.json says interrupted. Import it with `from conftest import as_interrupted`."""
    import json
    from pathlib import Path

    from nnctl.runs.checkpoint import load_checkpoint, save_checkpoint
    from nnctl.runs.store import RunDir
    path = Path(run) / "checkpoints" / "last.npz"
    ckpt = load_checkpoint(path)
    ckpt.meta["config"]["training"]["epochs"] = epochs
    save_checkpoint(path, {k: v for k, v in ckpt.meta.items()
                           if k not in ("format", "format_version", "nnctl_version")}, ckpt.arrays)
    RunDir(run).write_config(ckpt.meta["config"])
    (Path(run) / "status.json").write_text(json.dumps({"status": "interrupted"}))
