"""BLAS threads for training: the default, where a choice came from, and applying it.

Why nnctl chooses instead of leaving it to OpenBLAS: OpenBLAS starts one thread per core
and its threads spin-wait for each other, so when another process wants the same cores
they collapse. Measured on a 2-core machine with other work running, one epoch of the
784-512-256-10 MLP (`nnctl bench`) took 45 s with 2 BLAS threads and 7.3 s with 1; on
the quiet machine 2 threads gain at most ~1.5x. So the default keeps half the physical
cores free (at least 1 thread, at most 4, beyond which nnctl's nets stop scaling).

BLAS results depend on the thread count (sums split differently), so the count used is
recorded in the run's config and reused on --resume.

This module imports NumPy only inside the functions that need it: the CLI calls
`set_environment` before NumPy is first imported, which is the only way to set the count
without threadpoolctl.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from nnctl.errors import ConfigError

# Read by the BLAS libraries NumPy may be linked with, once, when NumPy is first imported.
BLAS_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
# polars (the `csv` extra's parser) sizes its thread pool from this, once, when first imported
PARSER_VAR = "POLARS_MAX_THREADS"
MAX_DEFAULT = 4
MISSING = 'threadpoolctl is not installed: pip install -e ".[fast]"'


class ThreadsError(ConfigError):
    """A thread count that cannot be applied in this process."""


def logical_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def physical_cores() -> int:
    """Distinct (package, core) pairs among the CPUs this process may use; hyperthreads count once."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return logical_cpus()
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topo.joinpath("physical_package_id").read_text().strip(),
                       topo.joinpath("core_id").read_text().strip()))
        except OSError:
            return len(cpus)  # no topology (not Linux, a container hiding /sys): count logical CPUs
    return max(1, len(cores))


def default_threads(cores: int | None = None) -> int:
    """Half the physical cores, at least 1, at most MAX_DEFAULT (see the module docstring)."""
    cores = physical_cores() if cores is None else cores
    return max(1, min(MAX_DEFAULT, cores // 2))


def from_environment() -> tuple[int, str] | None:
    """(threads, variable) when the environment already fixes BLAS threads (a sweep trial's does)."""
    for var in BLAS_VARS:
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) >= 1:
            return int(value), var
    return None


@dataclass(frozen=True)
class Choice:
    """A thread count and where it came from, as the train header shows it."""

    threads: int
    source: str   # "--threads", "training.threads", "OPENBLAS_NUM_THREADS", "default for 2 physical cores", ...


# The default the CLI put into the environment before NumPy loaded (so it is not reported
# as a user's OPENBLAS_NUM_THREADS).
_preset_default: Choice | None = None


def preset(flag: int | None) -> None:
    """Before NumPy loads (the CLI, first thing): --threads, or else the default, into the environment.

    This is what applies the count when threadpoolctl is not installed. A count the user's
    environment already sets is left alone.
    """
    global _preset_default
    if flag is not None:
        set_environment(flag)
        set_parser_threads(flag)
    elif from_environment() is None:
        cores = physical_cores()
        choice = Choice(default_threads(cores), _default_source(cores))
        if set_environment(choice.threads):
            _preset_default = choice


def _default_source(cores: int) -> str:
    return f"default for {cores} physical core{'s' if cores != 1 else ''}"


def choose(flag: int | None, spec_value: int | None) -> Choice:
    """--threads first, then the spec's training.threads, then the environment, then the default."""
    if flag is not None:
        return Choice(flag, "--threads")
    if spec_value is not None:
        return Choice(spec_value, "training.threads")
    env = from_environment()
    if env is not None:
        if _preset_default is not None and env[0] == _preset_default.threads:
            return _preset_default
        return Choice(env[0], env[1])
    cores = physical_cores()
    return Choice(default_threads(cores), _default_source(cores))


def set_environment(threads: int) -> bool:
    """Put `threads` into the BLAS variables if NumPy is not loaded yet; True if that took effect."""
    if "numpy" in sys.modules:
        return False
    for var in BLAS_VARS:
        os.environ[var] = str(threads)
    return True


_parser_threads_set = False


def set_parser_threads(threads: int) -> None:
    """The CSV parser's pool size (an explicit --threads), unless the user's environment sets it
    or polars has loaded.

    Without one, polars uses every CPU: unlike OpenBLAS's spin-waiting threads (see the module
    docstring) its pool sleeps when idle, and predict on 2 CPUs needs both to parse at 100k rows/s.
    """
    global _parser_threads_set
    if PARSER_VAR in os.environ and not _parser_threads_set or "polars" in sys.modules:
        return
    os.environ[PARSER_VAR] = str(threads)
    _parser_threads_set = True


def parser_threads_source() -> str:
    """Where the CSV parser's thread count came from, for fast_csv.describe."""
    if _parser_threads_set:
        return "nnctl's thread count"
    return PARSER_VAR if os.environ.get(PARSER_VAR) else "polars' default: every CPU"


def blas_name() -> str:
    """The BLAS NumPy was built with, as NumPy reports it ("scipy-openblas 0.3.31", "accelerate", ...)."""
    import numpy as np
    try:
        blas = np.__config__.CONFIG["Build Dependencies"]["blas"]
        return f"{blas.get('name', 'unknown')} {blas.get('version', '')}".strip()
    except (AttributeError, KeyError, TypeError):
        return "unknown"


def current_blas_threads() -> int | None:
    """What the loaded BLAS runs with now, if threadpoolctl can tell; None without it."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    counts = [pool["num_threads"] for pool in threadpool_info() if pool.get("user_api") == "blas"]
    return counts[0] if counts else None


@contextlib.contextmanager
def limited(threads: int, where: str) -> Iterator[None]:
    """BLAS limited to `threads` inside the block (previous limits restored after it).

    With threadpoolctl this works at any time. Without it the count must already be in the
    environment NumPy loaded with; anything else is a clear error naming `where` the count
    came from and the extra to install, rather than training with another count than the
    one the run records.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        env = from_environment()
        if env is None or env[0] != threads:
            loaded = f"NumPy loaded with {env[1]}={env[0]}" if env else "NumPy already loaded"
            raise ThreadsError(f"{where}: {threads} BLAS threads cannot be set once NumPy is loaded "
                               f"({loaded}); {MISSING}, or set OPENBLAS_NUM_THREADS={threads}") from None
        yield
        return
    limiter = threadpool_limits(limits=threads, user_api="blas")
    try:
        yield
    finally:
        limiter.restore_original_limits()


def header(choice: Choice) -> str:
    """The train header's one line: 'threads: 1 (default for 2 physical cores; BLAS scipy-openblas 0.3.31)'."""
    return f"threads: {choice.threads} ({choice.source}; BLAS {blas_name()})"


def resolve(flag: int | None, spec, resumed: bool) -> Choice:
    """The count for this run; written into `spec.training.threads` so the run's config records it.

    A resumed run keeps the count it recorded (its numbers depend on it): a different
    --threads is refused rather than silently breaking the exact resume.
    """
    from dataclasses import replace
    recorded = spec.training.threads
    if resumed and flag is not None and recorded is not None and flag != recorded:
        raise ThreadsError(f"--threads {flag}: the run was trained with {recorded} BLAS threads and resumes "
                           f"with them (results depend on the count); leave --threads out")
    choice = Choice(recorded, "recorded in the run") if resumed and recorded is not None else choose(flag, recorded)
    spec.training = replace(spec.training, threads=choice.threads)
    return choice
