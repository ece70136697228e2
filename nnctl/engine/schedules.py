"""Learning-rate schedules: the learning rate as a function of the epoch or the batch step.

`build_schedule(spec, base_lr, epochs, steps_per_epoch)` turns a spec such as
`{"name": "cosine", "interval": "epoch", "warmup_epochs": 2, "eta_min": 0.0}` into a
`Schedule`. The trainer asks `lr_at(epoch, step)` before every batch (epoch: 0-based epoch
index, step: 0-based global batch step) and calls `observe(epoch, logs)` after every epoch.

Every schedule but reduce_on_plateau is a pure function of its clock t: t = epoch for
interval "epoch" (the rate is constant within an epoch), t = step for interval "step". A
resumed run therefore gets the same rates from the epoch and step alone; only
reduce_on_plateau keeps state, which `state_dict()` carries.
"""
from __future__ import annotations

import math
from typing import Any

from nnctl.hparams import Configurable, Param, Registry
from nnctl.engine.base import check_state_keys
from nnctl.engine.metrics import auto_mode
from nnctl.errors import CheckpointError, ConfigError, TrainingError

SCHEDULES = Registry("schedule")

# Keys of a schedule spec handled here for every schedule; the rest go to the class's PARAMS.
SCHEDULE_KEYS = ("name", "interval", "warmup_epochs", "warmup_steps")
INTERVALS = ("epoch", "step")


class Schedule(Configurable):
    """Base class. A registered schedule declares PARAMS and implements `value(t)`.

    `bind(base_lr, total, interval)` gives it what the spec does not hold: the optimizer's
    base learning rate, the run's length in clock units (after any warmup) and the clock.
    """

    NAME = "schedule"
    PARAMS: dict[str, Param] = {}
    monitor: str | None = None  # the metric observe() reads; None for all but reduce_on_plateau

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        self.base_lr = 0.0
        self.total = 1
        self.interval = "epoch"

    def bind(self, base_lr: float, total: int, interval: str = "epoch") -> "Schedule":
        """Attach the base lr, the run length `total` (in clock units, >= 1) and the clock; returns self."""
        if interval not in INTERVALS:
            raise ConfigError(f"schedule.interval: must be one of {', '.join(INTERVALS)}, got {interval!r}")
        self.base_lr = float(base_lr)
        self.total = max(int(total), 1)
        self.interval = interval
        return self

    def value(self, t: int) -> float:
        """The learning rate at clock value t >= 0 (epochs or steps since the schedule started)."""
        raise NotImplementedError

    # -- what the trainer calls ---------------------------------------------------------
    def lr_at(self, epoch: int, step: int) -> float:
        """The learning rate for the batch at global `step` in 0-based `epoch`."""
        return float(self.value(epoch if self.interval == "epoch" else step))

    def observe(self, epoch: int, logs: dict[str, float]) -> None:
        """Called after every epoch with that epoch's metrics; only reduce_on_plateau uses it."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state; {} for the stateless schedules."""
        return {}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        _check_state_keys(self.NAME, d, ())


def _check_state_keys(name: str, d: Any, expected: tuple[str, ...]) -> None:
    check_state_keys(f"schedule state ({name})", d, expected)


def _cos_interp(start: float, end: float, frac: float) -> float:
    """Half a cosine from `start` (frac 0) to `end` (frac 1)."""
    return end + (start - end) * (1.0 + math.cos(math.pi * frac)) / 2.0


# -- the schedules --------------------------------------------------------------------------
@SCHEDULES.register("constant")
class Constant(Schedule):
    """The base learning rate throughout: lr(t) = lr."""

    def value(self, t):
        return self.base_lr


@SCHEDULES.register("step")
class StepDecay(Schedule):
    """Multiply by gamma every `step_size` clock units.

    Notes
    -----
    lr(t) = lr * gamma^floor(t / step_size)
    """

    PARAMS = {
        "step_size": Param("int", ge=1, doc="epochs (or steps) between decays"),
        "gamma": Param("float", 0.1, gt=0, le=1, doc="factor applied at each decay"),
    }

    def value(self, t):
        return self.base_lr * self.hparams["gamma"] ** (t // self.hparams["step_size"])


@SCHEDULES.register("multistep")
class MultiStep(Schedule):
    """Multiply by gamma at each milestone.

    Notes
    -----
    lr(t) = lr * gamma^(number of milestones m with m <= t)
    """

    PARAMS = {
        "milestones": Param("int_list", ge=1, doc="increasing epochs (or steps) at which the rate is multiplied by gamma"),
        "gamma": Param("float", 0.1, gt=0, le=1, doc="factor applied at each milestone"),
    }

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        m = self.hparams["milestones"]
        if any(b <= a for a, b in zip(m, m[1:])):
            raise ConfigError(f"{self.NAME}.milestones: must be strictly increasing, got {m}")

    def value(self, t):
        passed = sum(1 for m in self.hparams["milestones"] if m <= t)
        return self.base_lr * self.hparams["gamma"] ** passed


@SCHEDULES.register("exponential")
class Exponential(Schedule):
    """Multiply by gamma every clock unit.

    Notes
    -----
    lr(t) = lr * gamma^t
    """

    PARAMS = {"gamma": Param("float", gt=0, le=1, doc="factor per epoch (or per step)")}

    def value(self, t):
        return self.base_lr * self.hparams["gamma"] ** t


@SCHEDULES.register("inverse_time")
class InverseTime(Schedule):
    """Inverse-time decay (Keras' InverseTimeDecay without staircase).

    Notes
    -----
    lr(t) = lr / (1 + decay_rate * t / decay_steps)
    """

    PARAMS = {
        "decay_rate": Param("float", gt=0, doc="how fast the rate falls"),
        "decay_steps": Param("int", 1, ge=1, doc="clock units per unit of decay"),
    }

    def value(self, t):
        h = self.hparams
        return self.base_lr / (1.0 + h["decay_rate"] * t / h["decay_steps"])


@SCHEDULES.register("cosine")
class Cosine(Schedule):
    """Cosine annealing from lr to eta_min over T_max clock units (Loshchilov & Hutter's SGDR without restarts).

    Notes
    -----
    lr(t) = eta_min + (lr - eta_min) * (1 + cos(pi * t / T_max)) / 2   for t <= T_max,
    lr(t) = eta_min                                                    for t > T_max
    (held there rather than rising again, unlike the closed form's continuation).
    T_max defaults to the run's length after warmup, in clock units.
    """

    PARAMS = {
        "T_max": Param("int", None, ge=1, nullable=True, doc="length of the decay (default: the run after warmup)"),
        "eta_min": Param("float", 0.0, ge=0, doc="the final learning rate"),
    }

    def value(self, t):
        t_max = self.hparams["T_max"] or self.total
        eta_min = self.hparams["eta_min"]
        if t >= t_max:
            return eta_min
        return _cos_interp(self.base_lr, eta_min, t / t_max)


@SCHEDULES.register("cosine_restarts", "sgdr")
class CosineRestarts(Schedule):
    """Cosine annealing with warm restarts (SGDR, Loshchilov & Hutter 2017).

    Notes
    -----
    Cycle i lasts T_i = T_0 * T_mult^i clock units; cycles start at 0, T_0, T_0 + T_0*T_mult, ...
    With t_cur the time since the current cycle started:
        lr(t) = eta_min + (lr - eta_min) * (1 + cos(pi * t_cur / T_i)) / 2
    """

    PARAMS = {
        "T_0": Param("int", ge=1, doc="length of the first cycle in epochs (or steps)"),
        "T_mult": Param("int", 1, ge=1, doc="each cycle is this many times longer than the previous"),
        "eta_min": Param("float", 0.0, ge=0, doc="the rate at the end of every cycle"),
    }

    def value(self, t):
        h = self.hparams
        period, t_cur = h["T_0"], int(t)
        if h["T_mult"] == 1:
            t_cur %= period
        else:
            while t_cur >= period:  # cycles grow geometrically: O(log t) iterations
                t_cur -= period
                period *= h["T_mult"]
        return _cos_interp(self.base_lr, h["eta_min"], t_cur / period)


@SCHEDULES.register("one_cycle", "onecycle")
class OneCycle(Schedule):
    """The 1cycle policy (Smith & Topin 2018) with cosine annealing, as torch.optim.lr_scheduler.OneCycleLR.

    Only the learning rate cycles; momentum is left to the optimizer.

    Notes
    -----
    With N = the run's length after warmup (clock units), a = pct_start * N - 1,
    lr_0 = max_lr / div_factor and lr_end = lr_0 / final_div_factor:
        t <= a:  lr(t) = cos_interp(lr_0, max_lr, t / a)
        t >  a:  lr(t) = cos_interp(max_lr, lr_end, (t - a) / (N - 1 - a)),  lr_end after N - 1
    where cos_interp(s, e, f) = e + (s - e) * (1 + cos(pi * f)) / 2. So lr(0) = lr_0,
    lr(a) = max_lr and lr(N - 1) = lr_end.
    """

    PARAMS = {
        "max_lr": Param("float", None, gt=0, nullable=True, doc="the peak rate (default: the optimizer's lr)"),
        "pct_start": Param("float", 0.3, gt=0, lt=1, doc="fraction of the run spent rising to max_lr"),
        "div_factor": Param("float", 25.0, gt=0, doc="the starting rate is max_lr / div_factor"),
        "final_div_factor": Param("float", 1e4, gt=0, doc="the final rate is the starting rate / final_div_factor"),
    }

    def value(self, t):
        h = self.hparams
        max_lr = h["max_lr"] if h["max_lr"] is not None else self.base_lr
        lr0 = max_lr / h["div_factor"]
        lr_end = lr0 / h["final_div_factor"]
        peak = h["pct_start"] * self.total - 1.0
        last = self.total - 1.0
        if t <= peak:
            return _cos_interp(lr0, max_lr, t / peak) if peak > 0 else max_lr
        if t >= last:
            return lr_end
        return _cos_interp(max_lr, lr_end, (t - peak) / (last - peak))


@SCHEDULES.register("reduce_on_plateau", "plateau")
class ReduceOnPlateau(Schedule):
    """Multiply the rate by `factor` when the monitored metric stops improving (like Keras' ReduceLROnPlateau).

    The only stateful schedule: `value(t)` is the current rate whatever t is, and `observe`
    updates it after each epoch.

    Notes
    -----
    After each epoch, with x = logs[monitor]:
      - improvement: x < best - min_delta (mode min) or x > best + min_delta (mode max);
        the first epoch always improves on "no best yet". On improvement best <- x, wait <- 0.
      - the `cooldown` epochs right after a reduction do not count as bad epochs.
      - any other epoch: wait <- wait + 1; when wait reaches `patience` and lr > min_lr,
        lr <- max(lr * factor, min_lr), wait <- 0, and the cooldown starts.
    mode "auto" means max for accuracy and r2 metrics, min otherwise.
    """

    PARAMS = {
        "monitor": Param("str", "val_loss", doc="the logged metric to watch, e.g. val_loss or val_accuracy"),
        "mode": Param("str", "auto", choices=("auto", "min", "max"), doc="auto: max for accuracy/r2, min otherwise"),
        "factor": Param("float", 0.1, gt=0, lt=1, doc="multiply the rate by this on a plateau"),
        "patience": Param("int", 10, ge=0, doc="bad epochs before the rate is reduced"),
        "cooldown": Param("int", 0, ge=0, doc="epochs after a reduction that do not count as bad"),
        "min_lr": Param("float", 0.0, ge=0, doc="the rate is never reduced below this"),
        "min_delta": Param("float", 1e-4, ge=0, doc="the smallest change that counts as an improvement"),
    }
    STATE_KEYS = ("best", "cooldown_counter", "lr", "wait")

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        h = self.hparams
        self.monitor = h["monitor"]
        self.mode = h["mode"] if h["mode"] != "auto" else auto_mode(self.monitor)
        self.lr = 0.0
        self.best: float | None = None  # None, not inf, so the state stays plain JSON
        self.wait = 0
        self.cooldown_counter = 0

    def bind(self, base_lr, total, interval="epoch"):
        super().bind(base_lr, total, interval)
        self.lr = self.base_lr
        return self

    def value(self, t):
        return self.lr

    def observe(self, epoch, logs):
        if self.monitor not in logs:
            logged = ", ".join(sorted(logs)) or "none"
            raise TrainingError(f"schedule {self.NAME}: monitor '{self.monitor}' is not among the metrics "
                                f"logged after epoch {epoch + 1} ({logged})")
        h = self.hparams
        x = float(logs[self.monitor])
        in_cooldown = self.cooldown_counter > 0
        if in_cooldown:
            self.cooldown_counter -= 1
        if self._improves(x):
            self.best, self.wait = x, 0
        elif not in_cooldown:
            self.wait += 1
            if self.wait >= h["patience"] and self.lr > h["min_lr"]:
                self.lr = max(self.lr * h["factor"], h["min_lr"])
                self.wait = 0
                self.cooldown_counter = h["cooldown"]

    def _improves(self, x: float) -> bool:
        if math.isnan(x):
            return False
        if self.best is None:
            return True
        delta = self.hparams["min_delta"]
        return x < self.best - delta if self.mode == "min" else x > self.best + delta

    def state_dict(self):
        return {"lr": self.lr, "best": self.best, "wait": self.wait, "cooldown_counter": self.cooldown_counter}

    def load_state_dict(self, d):
        _check_state_keys(self.NAME, d, self.STATE_KEYS)
        self.lr = float(d["lr"])
        self.best = None if d["best"] is None else float(d["best"])
        self.wait = int(d["wait"])
        self.cooldown_counter = int(d["cooldown_counter"])


# -- warmup and the factory -----------------------------------------------------------------
class Warmup(Schedule):
    """A linear warmup in front of any schedule.

    The warmup always ramps per batch step, also for interval "epoch": lr = v0 * step / W for
    the first W steps (W = warmup_steps, or warmup_epochs * steps_per_epoch), where v0 is the
    wrapped schedule's first value. So lr_at(0, 0) = 0, half way it is v0 / 2, and no epoch is
    spent entirely at lr 0 (as a per-epoch ramp would do with epoch 0).

    The wrapped schedule's clock starts when the warmup ends: its t is step - W for interval
    "step", and epoch - floor(W / steps_per_epoch) for interval "epoch" (an epoch the warmup
    ends in part-way counts as the wrapped schedule's t = 0). Its length (cosine's T_max,
    one_cycle's total) is the run after the warmup. Epochs that lie entirely within the
    warmup are not passed to `observe` (a plateau should not count them).

    Notes
    -----
    lr_at(epoch, step) = inner(0) * step / W     if step < W
                       = inner(t - offset)       otherwise, t = epoch or step
    """

    NAME = "warmup"

    def __init__(self, inner: Schedule, ramp_steps: int, offset: int, steps_per_epoch: int):
        self.inner = inner
        self.hparams = {}
        self.ramp_steps = int(ramp_steps)
        self.offset = int(offset)
        self.warm_epochs = self.ramp_steps // int(steps_per_epoch)
        self.base_lr, self.total, self.interval = inner.base_lr, inner.total, inner.interval

    @property
    def monitor(self) -> str | None:  # type: ignore[override]
        return self.inner.monitor

    def value(self, t):
        return self.inner.value(max(int(t) - self.offset, 0))

    def lr_at(self, epoch, step):
        if step < self.ramp_steps:
            return float(self.inner.value(0)) * step / self.ramp_steps
        return float(self.value(epoch if self.interval == "epoch" else step))

    def observe(self, epoch, logs):
        if epoch >= self.warm_epochs:
            self.inner.observe(epoch, logs)

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, d):
        self.inner.load_state_dict(d)

    def get_config(self):
        return self.inner.get_config()

    def __repr__(self) -> str:
        return f"Warmup({self.inner!r}, ramp_steps={self.ramp_steps})"


def _common_int(spec: dict[str, Any], key: str) -> int:
    value = spec.pop(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"schedule.{key}: must be an integer >= 0, got {value!r}")
    return value


def build_schedule(spec: dict[str, Any] | str | None, base_lr: float, epochs: int,
                   steps_per_epoch: int) -> Schedule:
    """The schedule for a run of `epochs` epochs of `steps_per_epoch` batches from the optimizer's `base_lr`.

    `spec`: None (constant), a name, or {"name": ..., "interval": "epoch" | "step",
    "warmup_epochs": int, "warmup_steps": int, **the schedule's own PARAMS}.
    """
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(f"build_schedule: epochs and steps_per_epoch must be >= 1, got {epochs}, {steps_per_epoch}")
    if spec is None:
        spec = {"name": "constant"}
    elif isinstance(spec, str):
        spec = {"name": spec}
    spec = dict(spec)
    if "name" not in spec:
        raise ConfigError(f"schedule.name: is required (one of: {', '.join(SCHEDULES.names())})")
    cls = SCHEDULES.get(spec.pop("name"))
    interval = spec.pop("interval", "epoch") or "epoch"
    if interval not in INTERVALS:
        raise ConfigError(f"schedule.interval: must be one of {', '.join(INTERVALS)}, got {interval!r}")
    warmup_epochs = _common_int(spec, "warmup_epochs")
    warmup_steps = _common_int(spec, "warmup_steps")
    if warmup_epochs and warmup_steps:
        raise ConfigError("schedule: give warmup_epochs or warmup_steps, not both")
    inner = cls(**spec)

    ramp = warmup_epochs * steps_per_epoch if warmup_epochs else warmup_steps
    if interval == "epoch":
        offset = warmup_epochs if warmup_epochs else warmup_steps // steps_per_epoch
        total = epochs - offset
    else:
        offset = ramp
        total = epochs * steps_per_epoch - ramp
    # A warmup as long as the run is allowed (e.g. a spec's epochs cut to 1 for a smoke test):
    # the ramp simply never finishes, and the wrapped schedule gets a nominal length of 1.
    inner.bind(base_lr, max(total, 1), interval)
    if not ramp:
        return inner
    return Warmup(inner, ramp, offset, steps_per_epoch)
