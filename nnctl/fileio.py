"""Opening user files safely: only regular files, and never more bytes than a stated limit.

A FIFO blocks `open` until a writer comes, a character device (/dev/zero) never ends, a
socket cannot be read and a symlink loop makes `Path.resolve` raise RuntimeError. Every
place that reads a file a user named (specs, sweep specs, datasets, checkpoints, the JSON of
run folders) asks `check_regular` first or opens through `open_regular`, which also refuses
them after the check (the file is opened non-blocking and checked again with fstat, so a
FIFO swapped in between cannot hang it either).
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from nnctl.errors import NnctlError, excerpt

# Specs and sweep specs are written by hand; anything larger is not a spec (or is an attack
# on the YAML parser, which is slow and builds the whole tree in memory).
SPEC_MAX_BYTES = 1_000_000
# status.json, metrics.json, history.json of a run folder: even a long history is a few MB.
RUN_JSON_MAX_BYTES = 64_000_000

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def _problem(err: OSError) -> str:
    if err.errno == errno.ELOOP:
        return "is a symlink loop"
    if err.errno == errno.ENOENT:
        return "no such file"
    if err.errno == errno.ENAMETOOLONG:
        return "file name too long"
    return f"cannot read: {err.strerror or err}"


def shown(path: str | Path) -> str:
    """A path as error messages quote it: escaped and, if absurdly long, cut."""
    return excerpt(str(path), 200)


def regular_file_problem(path: str | Path) -> str | None:
    """Why `path` is not a readable regular file ("is a FIFO (named pipe), not a regular
    file", "is a symlink loop", "no such file"), or None when it is one."""
    try:
        st = os.stat(path)
    except OSError as err:
        return _problem(err)
    except ValueError:  # an embedded NUL byte
        return "invalid file name"
    if stat.S_ISREG(st.st_mode):
        return None
    return f"is {_kind(st.st_mode)}, not a regular file"


def check_regular(path: str | Path, error: type[NnctlError] = NnctlError, label: str | None = None,
                  missing_ok: bool = False) -> None:
    """Raise `error("<label>: <why>")` unless `path` is a regular file (symlinks followed).

    `missing_ok`: a path that does not exist passes, for callers with their own
    "not found" message; a symlink loop or a FIFO never passes.
    """
    problem = regular_file_problem(path)
    if problem is None or (missing_ok and problem == "no such file"):
        return
    raise error(f"{label if label is not None else shown(path)}: {problem}")


def open_regular(path: str | Path, error: type[NnctlError] = NnctlError, label: str | None = None) -> BinaryIO:
    """`path` opened for binary reading, or `error` if it is not a regular file."""
    label = label if label is not None else shown(path)
    check_regular(path, error, label)
    try:
        # O_NONBLOCK: a FIFO swapped in after the check opens at once instead of blocking
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise error(f"{label}: {_problem(err)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{label}: is {_kind(st.st_mode)}, not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | Path, limit: int, error: type[NnctlError] = NnctlError, label: str | None = None,
               what: str = "file") -> bytes:
    """The whole of regular file `path`, refused (before reading it) when it is over `limit` bytes."""
    label = label if label is not None else shown(path)
    with open_regular(path, error, label) as f:
        size = os.fstat(f.fileno()).st_size
        # st_size can be 0 for files that still have content (/proc): read at most limit + 1
        data = f.read(limit + 1) if size <= limit else b""
        if size > limit or len(data) > limit:
            raise error(f"{label}: {max(size, len(data)):,} bytes is over the {limit:,}-byte limit for a {what}")
    return data


def read_text(path: str | Path, limit: int, error: type[NnctlError] = NnctlError, label: str | None = None,
              what: str = "file") -> str:
    """`read_bytes` decoded as UTF-8; undecodable bytes are an `error` naming the offset."""
    label = label if label is not None else shown(path)
    data = read_bytes(path, limit, error, label, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{label}: not UTF-8 text (byte {err.start})") from None
