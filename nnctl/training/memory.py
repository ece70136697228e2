"""Refusing a spec whose model cannot fit in memory, before the model is built or a run exists."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from nnctl.engine.memory import MemoryEstimate, estimate_memory, format_bytes, optimizer_arrays
from nnctl.errors import NnctlError

MEMINFO = Path("/proc/meminfo")
GIB = 2**30


def available_memory(meminfo: Path = MEMINFO) -> int | None:
    """Bytes the kernel says a new allocation can take without swapping (MemAvailable), or
    None where that is not known (not Linux)."""
    try:
        with open(meminfo, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def training_estimate(spec, layer_specs: list[dict[str, Any]], input_shape, split_rows: list[int]) -> MemoryEstimate:
    """The estimate `check_memory` judges: the optimizer's state arrays, and activations at the
    larger of the training batch and an evaluation batch (cut to the val/test splits' rows)."""
    from nnctl.engine.optimizers import OPTIMIZERS
    try:
        arrays = optimizer_arrays(OPTIMIZERS.create(spec.optimizer))
    except NnctlError:
        arrays = 1  # a bad optimizer spec is reported, with its line, where it is built
    rows = max([spec.training.batch_size] + [min(spec.training.eval_batch_size, n) for n in split_rows])
    return estimate_memory(layer_specs, tuple(input_shape), spec.training.dtype, rows, arrays)


def memory_limit(spec, available: int | None = None) -> tuple[int | None, str, str]:
    """(bytes, how to name it, what to do when over it): `training.memory_limit_gb`, else the
    memory available now (`available` replaces that, for tests); bytes None when unknown."""
    limit_gb = getattr(spec.training, "memory_limit_gb", None)
    if limit_gb is not None:
        return (int(limit_gb * GIB), f"training.memory_limit_gb ({format_bytes(limit_gb * GIB)})",
                "make the model smaller or raise training.memory_limit_gb")
    limit = available_memory() if available is None else available
    what = f"the {format_bytes(limit)} of memory available" if limit is not None else ""
    return limit, what, "make the model or batch smaller, or set training.memory_limit_gb if you know it fits"


def over_limit(est: MemoryEstimate, what: str) -> str:
    return (f"{est.parameters:,} parameters need about {format_bytes(est.total_bytes)} to train "
            f"({est.breakdown()}), more than {what}")


def check_memory(spec, layer_specs: list[dict[str, Any]], dataset, available: int | None = None) -> MemoryEstimate:
    """The spec's training memory estimate; a ConfigError at `model` when it is over the limit.

    The limit is `training.memory_limit_gb` when the spec sets it, otherwise the memory
    available now (`available` replaces that, for tests). Called before the model is built.
    """
    splits = [len(part) for part in (dataset.val, dataset.test) if part is not None]
    est = training_estimate(spec, layer_specs, dataset.input_shape, splits)
    at = ("model",)
    if est.stopped is not None:
        raise spec.error_at(at, f"{est.stopped}: it would need more memory than any machine has; "
                                f"make the model smaller")
    limit, what, hint = memory_limit(spec, available)
    if limit is not None and est.total_bytes > limit:
        raise spec.error_at(at, f"{over_limit(est, what)}; {hint}")
    return est
