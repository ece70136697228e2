"""Sizing a sweep before it launches: each trial's training memory from shapes, alone and with its workers together.

`train` refuses a model that cannot fit before its run folder exists (nnctl.training.memory);
a sweep would otherwise find out trial by trial, after its folder, and with several workers
the trials that fit one by one can still not fit side by side. So the sweep sizes its trials
with the same estimate before anything is written:

- each trial against its own limit (`training.memory_limit_gb`, else the memory available):
  the largest trial over it is the one error, naming its values and how many are over;
- with local workers, the `workers` largest trials together against the memory available,
  naming the most workers that fit.

Grid and random sweeps know their trials. A model-based sampler proposes them later, so its
space is sized at its corners: every choice and both ends of every range, all combinations up
to MAX_CORNERS, else that many seeded random corners (memory grows with the ends of a range:
more units, a larger batch).
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from nnctl.errors import ConfigError, NnctlError

MAX_CORNERS = 512


@dataclass(frozen=True)
class DataShape:
    """What the memory estimate needs of a trial's data: sample shape, outputs and split sizes."""

    input_shape: tuple[int, ...]
    n_outputs: int                 # classes (or regression targets) in the data
    split_rows: tuple[int, ...]    # rows of the val and test splits that exist

    @classmethod
    def of(cls, dataset) -> "DataShape":
        rows = tuple(len(part) for part in (dataset.val, dataset.test) if part is not None)
        return cls(tuple(int(d) for d in dataset.input_shape), int(dataset.n_outputs), rows)


@dataclass(frozen=True)
class Sized:
    index: int | None              # the trial's number (None: a corner of a model-based space)
    overrides: dict[str, Any]
    bytes: int
    limit: int | None
    message: str                   # "N parameters need about X to train (...), more than Y"
    hint: str


def corners(parameters, seed: int) -> list[dict[str, Any]]:
    """The corner assignments of a search space (see the module notes)."""
    ends = []
    for p in parameters:
        if p.distribution == "choice":
            ends.append(list(p.values))
        else:
            ends.append([p.low, p.high] if p.low != p.high else [p.low])
    names = [p.name for p in parameters]
    total = 1
    for e in ends:
        total *= len(e)
    if total <= MAX_CORNERS:
        return [dict(zip(names, combo)) for combo in itertools.product(*ends)]
    rng = np.random.default_rng([seed, 17])
    return [{n: e[int(rng.integers(len(e)))] for n, e in zip(names, ends)} for _ in range(MAX_CORNERS)]


def _size(spec, shape: DataShape, available: int | None) -> tuple[Any, int | None, str, str]:
    from nnctl.training.experiment import model_layer_specs
    from nnctl.training.memory import memory_limit, training_estimate
    loss = spec.loss.get("name") if isinstance(spec.loss, dict) else spec.loss
    units = 1 if loss == "binary_cross_entropy" else shape.n_outputs
    est = training_estimate(spec, model_layer_specs(spec, units), shape.input_shape, list(shape.split_rows))
    limit, what, hint = memory_limit(spec, available)
    return est, limit, what, hint


def size_trials(sweep, trials: list[tuple[int | None, dict[str, Any], Any]],
                available: int | None = None) -> list[Sized]:
    """Size (index, overrides, Spec) triples; a trial whose data section differs from the base's
    (a swept data.* value) has its data loaded once per distinct section for its shapes."""
    from nnctl.data.dataset import load_dataset
    from nnctl.training.memory import over_limit
    shapes: dict[str, DataShape] = {}
    base_key = json.dumps(sweep.base.get("data"), sort_keys=True, default=str)
    if sweep.data_shape is not None:
        shapes[base_key] = sweep.data_shape
    out: list[Sized] = []
    for index, overrides, spec in trials:
        key = json.dumps(spec.data, sort_keys=True, default=str)
        if key not in shapes:
            shapes[key] = DataShape.of(load_dataset(spec.data, spec.seed, spec.base_dir, spec.training.dtype))
        est, limit, what, hint = _size(spec, shapes[key], available)
        if est.stopped is not None:
            out.append(Sized(index, overrides, 2**63, 0, f"{est.stopped}: it would need more memory than any "
                                                         f"machine has", "make the model smaller"))
            continue
        out.append(Sized(index, overrides, est.total_bytes, limit, over_limit(est, what), hint))
    return out


def check_sweep_memory(sweep, trials: list[tuple[int | None, dict[str, Any], Any]], workers: int,
                       together: bool, available: int | None = None) -> None:
    """A ConfigError (one line) when the largest trial, or the `workers` largest side by side
    (`together`: local workers share this machine), cannot fit; see the module notes."""
    from nnctl.engine.memory import format_bytes
    from nnctl.sweep.spec import describe_values
    from nnctl.training.memory import available_memory
    sized = size_trials(sweep, trials, available)
    if not sized:
        return

    def name(s: Sized) -> str:
        who = f"trial {s.index}" if s.index is not None else f"the {sweep.method} space's corner"
        return f"{who} ({describe_values(s.overrides)})" if s.overrides else who

    over = [s for s in sized if s.limit is not None and s.bytes > s.limit]
    if over:
        worst = max(over, key=lambda s: s.bytes)
        which = "trials" if worst.index is not None else "corners"
        count = f"; {len(over)} of {len(sized)} {which} are over it" if len(over) > 1 else ""
        raise ConfigError(f"{name(worst)}: model: {worst.message}{count}; {worst.hint}, or leave such "
                          f"values out of the sweep")
    if not together or workers <= 1:
        return
    machine = available_memory() if available is None else available
    if machine is None:
        return
    biggest = sorted(sized, key=lambda s: s.bytes, reverse=True)
    side_by_side = sum(s.bytes for s in biggest[:workers])
    if side_by_side <= machine:
        return
    fit, total = 0, 0
    for s in biggest:
        if total + s.bytes > machine:
            break
        fit, total = fit + 1, total + s.bytes
    raise ConfigError(f"--workers {workers}: the {workers} largest trials side by side need about "
                      f"{format_bytes(side_by_side)} to train (the largest, {name(biggest[0])}, "
                      f"{format_bytes(biggest[0].bytes)}), more than the {format_bytes(machine)} of memory "
                      f"available; use --workers {max(fit, 1)} or make the models smaller")


def sweep_trials_to_size(sweep, trials) -> list[tuple[int | None, dict[str, Any], Any]]:
    """(index, overrides, Spec) for each built trial, or for the corners of a model-based space."""
    from nnctl.sweep.spec import build_trial
    if not sweep.model_based:
        return [(t.index, t.overrides, t.spec) for t in trials]
    out = []
    for overrides in corners(sweep.parameters, sweep.seed):
        try:
            trial = build_trial(sweep, 0, overrides)
        except NnctlError:
            continue   # a combination that is not a valid spec fails as that trial, if proposed
        out.append((None, overrides, trial.spec))
    return out


def check_resume_memory(sd, sweep, todo: list[int], workers: int, together: bool) -> None:
    """`check_sweep_memory` for a resume: the snapshotted specs of the trials to run again, and
    for a model-based sweep with trials still to ask, its space's corners; nothing is written."""
    from nnctl.config.spec import load_spec
    from nnctl.runs import sweep_store
    from nnctl.sweep.spec import load_sweep
    if sweep is None:
        sweep = load_sweep(sd.path / sweep_store.LAUNCHED)   # as launched, base inlined
    trials: list[tuple[int | None, dict[str, Any], Any]] = [
        (i, sd.trial(i).overrides, load_spec(sd.spec_path(i))) for i in todo]
    if sweep.model_based and sd.declared > len(sd.trials):
        trials += sweep_trials_to_size(sweep, [])
    check_sweep_memory(sweep, trials, workers, together)
