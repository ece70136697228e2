"""Learning-rate schedules: values at known points, warmup, epoch vs step clocks, reduce_on_plateau."""
from __future__ import annotations

import json
import math
import re

import pytest

from nnctl.hparams import REQUIRED
from nnctl.engine.schedules import SCHEDULE_KEYS, SCHEDULES, Schedule, build_schedule
from nnctl.errors import CheckpointError, ConfigError, TrainingError


def at(spec, t, base_lr=1.0, epochs=100, steps_per_epoch=1):
    """lr at clock t for an epoch-interval schedule (one step per epoch keeps epoch == step)."""
    return build_schedule(spec, base_lr, epochs, steps_per_epoch).lr_at(t, t)


# -- values at known points -------------------------------------------------------------------
def test_constant_and_none():
    for spec in (None, "constant", {"name": "constant"}):
        s = build_schedule(spec, 0.3, 5, 7)
        assert [s.lr_at(e, e * 7 + 3) for e in range(5)] == [0.3] * 5


def test_step_decay():
    spec = {"name": "step", "step_size": 3, "gamma": 0.5}
    assert [at(spec, t) for t in range(8)] == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]
    assert at({"name": "step", "step_size": 10}, 25, base_lr=2.0) == pytest.approx(0.02, rel=1e-15)


def test_multistep():
    spec = {"name": "multistep", "milestones": [2, 5], "gamma": 0.5}
    assert [at(spec, t) for t in range(7)] == [1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]


def test_exponential():
    spec = {"name": "exponential", "gamma": 0.5}
    assert [at(spec, t, base_lr=2.0) for t in range(4)] == [2.0, 1.0, 0.5, 0.25]


def test_inverse_time():
    spec = {"name": "inverse_time", "decay_rate": 0.5, "decay_steps": 2}
    # 1 / (1 + 0.5 * t / 2)
    assert at(spec, 0) == 1.0 and at(spec, 4) == 0.5 and at(spec, 8) == pytest.approx(1 / 3, rel=1e-15)
    assert at({"name": "inverse_time", "decay_rate": 1.0}, 3) == 0.25


def test_cosine_known_points():
    spec = {"name": "cosine", "T_max": 10, "eta_min": 0.1}
    assert at(spec, 0) == 1.0
    assert at(spec, 5) == pytest.approx((1.0 + 0.1) / 2, rel=1e-15)
    assert at(spec, 10) == pytest.approx(0.1, rel=1e-15)
    assert at(spec, 13) == 0.1  # held at eta_min after T_max
    values = [at(spec, t) for t in range(11)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_cosine_default_t_max_is_the_run_after_warmup():
    s = build_schedule({"name": "cosine"}, 2.0, 10, 4)
    assert s.lr_at(5, 20) == pytest.approx(1.0, rel=1e-15)  # T_max = 10 epochs, half way
    s = build_schedule({"name": "cosine", "warmup_epochs": 2}, 2.0, 12, 4)
    assert s.lr_at(7, 28) == pytest.approx(1.0, rel=1e-15)  # T_max = 10, the clock starts at epoch 2
    s = build_schedule({"name": "cosine", "interval": "step"}, 2.0, 10, 4)
    assert s.lr_at(5, 20) == pytest.approx(1.0, rel=1e-15)  # T_max = 40 steps


def test_cosine_restarts():
    spec = {"name": "cosine_restarts", "T_0": 4, "T_mult": 2, "eta_min": 0.0}
    # cycles [0, 4), [4, 12), [12, 28): restarts at T_0 = 4 and T_0 + T_0 * T_mult = 12
    assert at(spec, 0) == 1.0 and at(spec, 4) == 1.0 and at(spec, 12) == 1.0 and at(spec, 28) == 1.0
    assert at(spec, 2) == pytest.approx(0.5, rel=1e-15)    # half of the first cycle
    assert at(spec, 8) == pytest.approx(0.5, rel=1e-15)    # half of the second (length 8)
    assert at(spec, 20) == pytest.approx(0.5, rel=1e-15)   # half of the third (length 16)
    assert at(spec, 3) < at(spec, 2) and at(spec, 11) < at(spec, 10)
    same = {"name": "sgdr", "T_0": 3, "eta_min": 0.2}
    assert [at(same, t) for t in (0, 3, 6, 9)] == [1.0] * 4
    assert at(same, 1) == pytest.approx(0.2 + 0.8 * (1 + math.cos(math.pi / 3)) / 2, rel=1e-15)


def test_one_cycle_like_torch():
    s = build_schedule({"name": "one_cycle", "max_lr": 1.0, "interval": "step"}, 0.1, 10, 10)  # 100 steps
    lr = [s.lr_at(i // 10, i) for i in range(100)]
    assert lr[0] == pytest.approx(1.0 / 25, rel=1e-15)               # max_lr / div_factor
    assert lr[29] == pytest.approx(1.0, rel=1e-15)                   # peak at pct_start * 100 - 1
    assert lr[99] == pytest.approx(1.0 / 25 / 1e4, rel=1e-12)        # / (div_factor * final_div_factor)
    assert all(a < b for a, b in zip(lr[:29], lr[1:30]))
    assert all(a > b for a, b in zip(lr[29:99], lr[30:100]))
    # max_lr defaults to the optimizer's lr; per-epoch clock over 20 epochs peaks at 0.25 * 20 - 1 = 4
    s = build_schedule({"name": "onecycle", "pct_start": 0.25, "div_factor": 10.0}, 0.5, 20, 3)
    assert s.lr_at(0, 0) == pytest.approx(0.05, rel=1e-15) and s.lr_at(4, 12) == pytest.approx(0.5, rel=1e-15)


# -- warmup ------------------------------------------------------------------------------------
def test_warmup_is_linear_per_step_from_zero():
    s = build_schedule({"name": "constant", "warmup_epochs": 2}, 1.0, 10, 10)  # 20 warmup steps
    assert s.lr_at(0, 0) == 0.0
    assert s.lr_at(0, 5) == 0.25
    assert s.lr_at(1, 10) == 0.5          # half way: half the wrapped value
    assert s.lr_at(1, 19) == 0.95
    assert s.lr_at(2, 20) == 1.0 and s.lr_at(9, 99) == 1.0


def test_warmup_wrapped_clock_starts_after_warmup():
    spec = {"name": "step", "step_size": 2, "gamma": 0.5, "warmup_epochs": 3}
    s = build_schedule(spec, 1.0, 10, 4)
    assert s.lr_at(1, 6) == pytest.approx(0.5)   # ramp towards the wrapped schedule's first value
    assert [s.lr_at(e, 4 * e) for e in range(3, 8)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    # warmup_steps with the step clock: ramp over 4 steps, then the step schedule counts from 0
    spec = {"name": "step", "step_size": 2, "gamma": 0.5, "interval": "step", "warmup_steps": 4}
    s = build_schedule(spec, 1.0, 3, 4)
    assert [s.lr_at(i // 4, i) for i in range(10)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    # warmup_epochs on the step clock is converted with steps_per_epoch
    s = build_schedule({"name": "cosine", "interval": "step", "warmup_epochs": 1}, 1.0, 3, 10)
    assert s.lr_at(0, 5) == 0.5 and s.lr_at(1, 10) == 1.0
    assert s.lr_at(2, 20) == pytest.approx(0.5, rel=1e-15)  # T_max = 30 - 10 steps, half way


def test_warmup_steps_on_the_epoch_clock():
    # 15 warmup steps of 10 per epoch: the ramp ends inside epoch 1, which is the wrapped t = 0
    s = build_schedule({"name": "exponential", "gamma": 0.5, "warmup_steps": 15}, 1.0, 5, 10)
    assert s.lr_at(0, 3) == pytest.approx(0.2) and s.lr_at(1, 14) == pytest.approx(14 / 15)
    assert [s.lr_at(e, 10 * e + 5) for e in (1, 2, 3)] == [1.0, 0.5, 0.25]


def test_interval_epoch_is_constant_within_an_epoch_and_step_is_not():
    by_epoch = build_schedule({"name": "step", "step_size": 5}, 1.0, 10, 8)
    assert [by_epoch.lr_at(0, i) for i in range(8)] == [1.0] * 8
    assert by_epoch.lr_at(5, 40) == pytest.approx(0.1)
    by_step = build_schedule({"name": "step", "step_size": 5, "interval": "step"}, 1.0, 10, 8)
    assert [by_step.lr_at(0, i) for i in range(8)] == [1.0] * 5 + [pytest.approx(0.1)] * 3


def test_warmup_errors():
    with pytest.raises(ConfigError, match=r"^schedule: give warmup_epochs or warmup_steps, not both$"):
        build_schedule({"name": "constant", "warmup_epochs": 1, "warmup_steps": 3}, 1.0, 5, 2)
    # a warmup longer than the run (a spec cut to 1 epoch for a smoke test) just never finishes
    s = build_schedule({"name": "cosine", "warmup_epochs": 3}, 1.0, 1, 4)
    assert [s.lr_at(0, i) for i in range(4)] == [0.0, 1 / 12, 2 / 12, 3 / 12]
    with pytest.raises(ConfigError, match=r"^schedule.warmup_steps: must be an integer >= 0, got -1$"):
        build_schedule({"name": "constant", "warmup_steps": -1}, 1.0, 5, 2)


# -- reduce_on_plateau -------------------------------------------------------------------------------
def plateau(**options):
    return build_schedule({"name": "reduce_on_plateau", **options}, 1.0, 50, 3)


def lrs_after(s, values, monitor="val_loss"):
    """The lr for the next epoch after observing each value in turn."""
    out = []
    for e, v in enumerate(values):
        s.observe(e, {"loss": 0.0, monitor: v})
        out.append(s.lr_at(e + 1, 3 * (e + 1)))
    return out


@pytest.mark.parametrize("options,values,expected", [
    # patience 2: two bad epochs after the best (epochs 2 and 3) -> halved after epoch 3
    ({"factor": 0.5, "patience": 2}, [1.0, 0.9, 0.95, 0.95, 0.8, 0.85],
     [1.0, 1.0, 1.0, 0.5, 0.5, 0.5]),
    # constant metric, cooldown 1: reduce, skip one epoch, two more bad, reduce ...
    ({"factor": 0.5, "patience": 2, "cooldown": 1}, [1.0] * 9,
     [1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125]),
    # patience 0: every bad epoch reduces; min_lr floors it and stops further reductions
    ({"factor": 0.5, "patience": 0, "min_lr": 0.3}, [1.0, 1.0, 1.0, 1.0],
     [1.0, 0.5, 0.3, 0.3]),
    # min_delta: 0.95 is not better than 1.0 by more than 0.1, 0.85 is
    ({"factor": 0.1, "patience": 2, "min_delta": 0.1}, [1.0, 0.95, 0.85, 0.8, 0.8],
     [1.0, 1.0, 1.0, 1.0, pytest.approx(0.1)]),
    # a NaN is never an improvement
    ({"factor": 0.5, "patience": 1}, [1.0, float("nan")], [1.0, 0.5]),
])
def test_plateau_table(options, values, expected):
    assert lrs_after(plateau(**options), values) == expected


def test_plateau_modes():
    up = [0.5, 0.6, 0.6, 0.6]
    assert lrs_after(plateau(monitor="val_accuracy", factor=0.5, patience=2), up, "val_accuracy") == [1.0, 1.0, 1.0, 0.5]
    assert lrs_after(plateau(monitor="val_r2", mode="auto", factor=0.5, patience=2), up, "val_r2") == [1.0, 1.0, 1.0, 0.5]
    # mode min on a growing metric: every epoch after the first is bad
    assert lrs_after(plateau(monitor="accuracy", mode="min", factor=0.5, patience=2), up, "accuracy") == [1.0, 1.0, 0.5, 0.5]
    assert plateau().monitor == "val_loss" and plateau(monitor="mae").mode == "min"


def test_plateau_missing_monitor_is_a_training_error():
    s = plateau(monitor="val_mae")
    with pytest.raises(TrainingError, match=re.escape(
            "schedule reduce_on_plateau: monitor 'val_mae' is not among the metrics logged after epoch 3 "
            "(accuracy, loss)")):
        s.observe(2, {"loss": 1.0, "accuracy": 0.5})


def test_plateau_state_round_trip_continues_identically():
    # saved right after a reduction, so the restored cooldown decides when epoch 6 reduces again
    values = [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.7, 0.8, 0.8, 0.8, 0.8]
    options = {"factor": 0.5, "patience": 2, "cooldown": 1, "min_lr": 0.1}
    straight = lrs_after(plateau(**options), values)
    first = plateau(**options)
    head = lrs_after(first, values[:4])
    state = json.loads(json.dumps(first.state_dict()))
    assert state == {"lr": 0.5, "best": 0.9, "wait": 0, "cooldown_counter": 1}
    second = plateau(**options)
    second.load_state_dict(state)
    tail = []
    for e, v in enumerate(values[4:], start=4):
        second.observe(e, {"val_loss": v})
        tail.append(second.lr_at(e + 1, 0))
    assert head + tail == straight == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125, 0.125, 0.125]
    assert straight[-1] == 0.125 and min(straight) >= 0.1


def test_plateau_with_warmup_ignores_warmup_epochs():
    s = build_schedule({"name": "plateau", "factor": 0.5, "patience": 1, "warmup_epochs": 2}, 1.0, 10, 4)
    assert s.monitor == "val_loss"
    assert s.lr_at(1, 4) == 0.5  # ramping towards the plateau's current rate
    s.observe(0, {"val_loss": 1.0})
    s.observe(1, {"val_loss": 2.0})  # still warmup: not counted
    assert s.lr_at(2, 8) == 1.0
    s.observe(2, {"val_loss": 1.0})
    s.observe(3, {"val_loss": 1.0})
    assert s.lr_at(4, 16) == 0.5
    assert s.state_dict() == {"lr": 0.5, "best": 1.0, "wait": 0, "cooldown_counter": 0}


# -- registry, state, options ------------------------------------------------------------------------
MINIMAL = {"step": {"step_size": 2}, "multistep": {"milestones": [1, 3]}, "exponential": {"gamma": 0.9},
           "inverse_time": {"decay_rate": 0.5}, "cosine_restarts": {"T_0": 2}}


@pytest.mark.parametrize("name", sorted(SCHEDULES.entries))
def test_every_schedule_builds_and_has_state_dict(name):
    cls = SCHEDULES.get(name)
    assert set(cls.PARAMS).isdisjoint(SCHEDULE_KEYS)
    required = {k for k, p in cls.PARAMS.items() if p.default is REQUIRED}
    assert required == set(MINIMAL.get(name, {}))
    for interval in ("epoch", "step"):
        s = build_schedule({"name": name, "interval": interval, **MINIMAL.get(name, {})}, 0.1, 4, 3)
        assert isinstance(s, Schedule)
        lrs = [s.lr_at(i // 3, i) for i in range(12)]
        assert all(isinstance(v, float) and 0.0 <= v <= 0.1 for v in lrs)
        assert lrs[0] == pytest.approx(0.1 / 25 if name == "one_cycle" else 0.1)
        s.observe(0, {"val_loss": 1.0})
        state = s.state_dict()
        assert json.loads(json.dumps(state)) == state
        s.load_state_dict(state)
        assert (s.monitor is None) == (name != "reduce_on_plateau")
        assert (state == {}) == (name != "reduce_on_plateau")
        assert type(s)(**s.get_config()).get_config() == s.get_config()


def test_config_layer_spec_with_every_common_key_builds():
    # the config layer fills interval/warmup defaults; the factory accepts them as given
    s = build_schedule({"name": "cosine", "interval": "epoch", "warmup_epochs": 0, "warmup_steps": 0,
                        "T_max": None, "eta_min": 0.0}, 1.0, 4, 2)
    assert s.lr_at(0, 0) == 1.0 and s.lr_at(2, 4) == pytest.approx(0.5)


def test_strict_state_loading():
    with pytest.raises(CheckpointError, match=re.escape("schedule state (cosine): unknown key 'lr'")):
        build_schedule("cosine", 1.0, 4, 2).load_state_dict({"lr": 0.1})
    s = plateau()
    with pytest.raises(CheckpointError, match=re.escape("schedule state (reduce_on_plateau): missing key 'wait'")):
        s.load_state_dict({"lr": 0.1, "best": None, "cooldown_counter": 0})
    with pytest.raises(CheckpointError, match=re.escape("schedule state (reduce_on_plateau): unknown key 'patience'")):
        s.load_state_dict({**s.state_dict(), "patience": 3})


@pytest.mark.parametrize("spec,message", [
    ({"name": "cosine", "T_max": 0}, "cosine.T_max: must be >= 1, got 0"),
    ({"name": "cosine", "eta_mni": 0.1}, "cosine: unknown option(s) eta_mni; valid: T_max, eta_min"),
    ({"name": "step"}, "step.step_size: is required"),
    ({"name": "step", "step_size": 2, "gamma": 0.0}, "step.gamma: must be > 0, got 0"),
    ({"name": "multistep", "milestones": [5, 2]}, "multistep.milestones: must be strictly increasing, got [5, 2]"),
    ({"name": "multistep", "milestones": [0, 2]}, "multistep.milestones[0]: must be >= 1, got 0"),
    ({"name": "sgdr", "T_0": 2, "T_mult": 1.5}, "cosine_restarts.T_mult: must be an integer, got 1.5"),
    ({"name": "one_cycle", "pct_start": 1.0}, "one_cycle.pct_start: must be < 1, got 1"),
    ({"name": "plateau", "factor": 1.0}, "reduce_on_plateau.factor: must be < 1, got 1"),
    ({"name": "plateau", "mode": "up"}, "reduce_on_plateau.mode: must be one of auto, min, max, got 'up'"),
    ({"name": "cosine", "interval": "batch"}, "schedule.interval: must be one of epoch, step, got 'batch'"),
    ({"name": "cosin"}, "unknown schedule 'cosin'; did you mean 'cosine'?"),
    ({"interval": "step"}, "schedule.name: is required"),
])
def test_bad_specs_are_config_errors(spec, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        build_schedule(spec, 1.0, 10, 2)
