"""Optimizers: hand-computed steps, a float64 re-implementation of every rule, clipping, decay, state, allocation."""
from __future__ import annotations

import copy
import json
import math
import re
import tracemalloc

import numpy as np
import pytest

from nnctl.engine.optimizers import OPTIMIZERS, Optimizer
from nnctl.errors import CheckpointError, ConfigError

P0 = np.array([1.0, -2.0, 0.5])
G0 = np.array([0.1, 0.2, -0.3])


def one_step(name, p0=P0, g=G0, steps=1, **hp):
    opt = OPTIMIZERS.get(name)(**hp)
    p = {"layers.0.W": np.array(p0, dtype=np.float64)}
    for _ in range(steps):
        opt.step(p, {"layers.0.W": np.array(g, dtype=np.float64)})
    return p["layers.0.W"]


# -- one step by hand -------------------------------------------------------------------------
def test_sgd_one_step_by_hand():
    # p - lr * g with lr 0.1
    np.testing.assert_allclose(one_step("sgd", lr=0.1), [0.99, -2.02, 0.53], rtol=0, atol=1e-15)


def test_momentum_two_steps_by_hand():
    # step 1: v = g, p -= 0.1 * g;  step 2: v = 0.9 g + g = 1.9 g, p -= 0.19 g
    np.testing.assert_allclose(one_step("momentum", lr=0.1), [0.99, -2.02, 0.53], rtol=0, atol=1e-15)
    np.testing.assert_allclose(one_step("momentum", lr=0.1, steps=2), [0.971, -2.058, 0.587], rtol=0, atol=1e-15)


def test_nesterov_one_step_by_hand():
    # v = g, p -= lr * (g + 0.9 v) = 0.1 * 1.9 g
    np.testing.assert_allclose(one_step("nesterov", lr=0.1), [0.981, -2.038, 0.557], rtol=0, atol=1e-15)
    np.testing.assert_allclose(one_step("sgd", lr=0.1, momentum=0.9, nesterov=True), [0.981, -2.038, 0.557],
                               rtol=0, atol=1e-15)


def test_rmsprop_one_step_by_hand():
    # s = 0.1 g^2, so the step is lr * g / (sqrt(0.1) |g| + eps), about lr * sqrt(10) * sign(g):
    # 0.01 * 0.1 / (0.0316227766... + 1e-8) = 0.0316227666..., etc.
    expected = [1.0 - 0.03162276660168695, -2.0 - 0.031622771601684585, 0.5 + 0.031622773268350814]
    np.testing.assert_allclose(one_step("rmsprop", lr=0.01, rho=0.9, eps=1e-8), expected, rtol=1e-13)


def test_adagrad_one_step_by_hand():
    # S = g^2, step = lr * g / (|g| + 1e-10): 0.1 * 0.1 / (0.1 + 1e-10) = 0.0999999999...
    expected = [1.0 - 0.09999999990000003, -2.0 - 0.09999999995000002, 0.5 + 0.09999999996666667]
    np.testing.assert_allclose(one_step("adagrad", lr=0.1, eps=1e-10), expected, rtol=1e-13)
    # with initial_accumulator 0.03: S = 0.03 + 0.01 = 0.04 for the first entry,
    # step 0.1 * 0.1 / (0.2 + 1e-10) = 0.049999999975
    got = one_step("adagrad", lr=0.1, eps=1e-10, initial_accumulator=0.03)
    assert got[0] == pytest.approx(0.950000000025, rel=1e-13)


def test_adam_one_step_by_hand():
    # bias correction makes m_hat = g and v_hat = g^2, so the step is lr * g / (|g| + eps)
    expected = [1.0 - 0.09999999000000102, -2.0 - 0.09999999500000027, 0.5 + 0.09999999666666678]
    np.testing.assert_allclose(one_step("adam", lr=0.1), expected, rtol=1e-13)


def test_adam_constant_gradient_moves_lr_per_step():
    # a constant gradient keeps m_hat = g and v_hat = g^2 at every t: each step is ~lr * sign(g)
    got = one_step("adam", lr=0.1, steps=3)
    np.testing.assert_allclose(got, [0.7, -2.3, 0.8], rtol=0, atol=1e-7)


def test_amsgrad_two_steps_by_hand():
    """g1 = 1, g2 = 0, lr 0.1, p0 = 0.

    Step 1: p = -0.1 / (1 + 1e-8).  Step 2: m = 0.09, m_hat = 0.09 / 0.19; v = 0.000999,
    bias correction 1 - 0.999^2 = 0.001999. AMSGrad divides by sqrt(max(0.001, 0.000999) /
    0.001999) = 0.707283..., Adam by sqrt(0.000999 / 0.001999) = 0.706929...
    """
    def run(amsgrad):
        opt = OPTIMIZERS.get("adam")(lr=0.1, amsgrad=amsgrad)
        p = {"x.W": np.zeros(1)}
        opt.step(p, {"x.W": np.ones(1)})
        assert p["x.W"][0] == pytest.approx(-0.09999999900000002, rel=1e-14)
        opt.step(p, {"x.W": np.zeros(1)})
        return p["x.W"][0], opt
    ams, opt = run(True)
    plain, _ = run(False)
    assert ams == pytest.approx(-0.16697231217413372, rel=1e-13)
    assert plain == pytest.approx(-0.16700582346581133, rel=1e-13)
    assert opt.state["x.W"]["vmax"][0] == pytest.approx(0.001, rel=1e-13)


def test_adamw_one_step_by_hand():
    # decoupled: p *= 1 - lr * wd = 0.99, then the Adam step of ~lr * sign(g)
    expected = [0.99 - 0.09999999000000102, -1.98 - 0.09999999500000027, 0.495 + 0.09999999666666678]
    np.testing.assert_allclose(one_step("adamw", lr=0.1, weight_decay=0.1), expected, rtol=1e-13)


# -- a float64 re-implementation of every rule -----------------------------------------------
NO_DECAY = {"b", "beta", "gamma"}


def _sgd(p, g, s, t, lr, momentum=0.0, nesterov=False):
    if momentum == 0:
        return p - lr * g
    s["v"] = momentum * s.get("v", 0.0) + g
    return p - lr * (g + momentum * s["v"]) if nesterov else p - lr * s["v"]


def _rmsprop(p, g, s, t, lr, rho=0.9, eps=1e-8, momentum=0.0, centered=False):
    s["sq"] = rho * s.get("sq", 0.0) + (1 - rho) * g ** 2
    if centered:
        s["avg"] = rho * s.get("avg", 0.0) + (1 - rho) * g
        d = np.sqrt(s["sq"] - s["avg"] ** 2) + eps
    else:
        d = np.sqrt(s["sq"]) + eps
    if momentum:
        s["u"] = momentum * s.get("u", 0.0) + g / d
        return p - lr * s["u"]
    return p - lr * g / d


def _adagrad(p, g, s, t, lr, eps=1e-10, initial_accumulator=0.0):
    s["S"] = s.get("S", initial_accumulator) + g ** 2
    return p - lr * g / (np.sqrt(s["S"]) + eps)


def _adam(p, g, s, t, lr, beta1=0.9, beta2=0.999, eps=1e-8, amsgrad=False):
    s["m"] = beta1 * s.get("m", 0.0) + (1 - beta1) * g
    s["v"] = beta2 * s.get("v", 0.0) + (1 - beta2) * g ** 2
    v = s["v"]
    if amsgrad:
        s["vmax"] = np.maximum(s.get("vmax", 0.0), s["v"])
        v = s["vmax"]
    m_hat = s["m"] / (1 - beta1 ** t)
    v_hat = v / (1 - beta2 ** t)
    return p - lr * m_hat / (np.sqrt(v_hat) + eps)


RULES = {"sgd": _sgd, "rmsprop": _rmsprop, "adagrad": _adagrad, "adam": _adam, "adamw": _adam}


def reference(kind, params, grad_seq, lrs, weight_decay=0.0, clip_norm=None, clip_value=None,
              exclude_from_decay=False, **hp):
    """The published rules, step by step in float64 (see the optimizers' Notes):

    clip by value (np.clip), then by global norm (g *= c / max(||g||, c)), then weight decay:
    adamw p -= lr * wd * p, the others g += wd * p; biases/norm params skipped when
    excluded; then the rule. Adam's t counts from 1.
    """
    p = {k: v.astype(np.float64) for k, v in params.items()}
    state = {k: {} for k in p}
    for t, (grads, lr) in enumerate(zip(grad_seq, lrs), start=1):
        g = {k: v.astype(np.float64) for k, v in grads.items()}
        if clip_value is not None:
            g = {k: np.clip(v, -clip_value, clip_value) for k, v in g.items()}
        if clip_norm is not None:
            norm = math.sqrt(sum(float(np.sum(v ** 2)) for v in g.values()))
            g = {k: v * (clip_norm / max(norm, clip_norm)) for k, v in g.items()}
        for k in p:
            wd = 0.0 if exclude_from_decay and k.split(".")[-1] in NO_DECAY else weight_decay
            if kind == "adamw":
                p[k] = p[k] - lr * wd * p[k]
            else:
                g[k] = g[k] + wd * p[k]
            p[k] = RULES[kind](p[k], g[k], state[k], t, lr, **hp)
    return p


# (registered name, options, reference kind, reference options beyond the options)
CASES = [
    ("sgd", {"lr": 0.1}, "sgd", {}),
    ("sgd", {"lr": 0.1, "momentum": 0.8, "weight_decay": 0.05}, "sgd", {}),
    ("momentum", {"lr": 0.05}, "sgd", {"momentum": 0.9}),
    ("nesterov", {"lr": 0.05, "weight_decay": 0.01, "exclude_from_decay": True}, "sgd",
     {"momentum": 0.9, "nesterov": True}),
    ("rmsprop", {"lr": 0.01}, "rmsprop", {}),
    ("rmsprop", {"lr": 0.01, "rho": 0.8, "momentum": 0.5}, "rmsprop", {}),
    ("rmsprop", {"lr": 0.01, "centered": True, "weight_decay": 0.1}, "rmsprop", {}),
    ("rmsprop", {"lr": 0.01, "centered": True, "momentum": 0.9, "clip_norm": 1.0}, "rmsprop", {}),
    ("adagrad", {"lr": 0.1}, "adagrad", {}),
    ("adagrad", {"lr": 0.1, "initial_accumulator": 0.1, "clip_value": 0.5}, "adagrad", {}),
    ("adam", {"lr": 0.01}, "adam", {}),
    ("adam", {"lr": 0.01, "amsgrad": True, "beta1": 0.5, "beta2": 0.9}, "adam", {}),
    ("adam", {"lr": 0.01, "weight_decay": 0.1, "clip_norm": 0.5, "clip_value": 0.4}, "adam", {}),
    ("adamw", {"lr": 0.01}, "adamw", {"weight_decay": 0.01, "exclude_from_decay": True}),
    ("adamw", {"lr": 0.01, "weight_decay": 0.2, "amsgrad": True, "exclude_from_decay": False}, "adamw", {}),
]
CASE_IDS = [f"{n}-{'-'.join(sorted(o))}" for n, o, _, _ in CASES]


def problem(dtype=np.float64, steps=5, seed=0):
    """Three named params and a gradient sequence that shrinks (so AMSGrad's max matters) and flips sign."""
    rng = np.random.default_rng(seed)
    shapes = {"layers.0.W": (3, 2), "layers.0.b": (2,), "layers.1.gamma": (2,)}
    params = {k: rng.normal(size=s).astype(dtype) for k, s in shapes.items()}
    grads = [{k: (rng.normal(size=s) * 2.0 ** -i).astype(dtype) for k, s in shapes.items()} for i in range(steps)]
    lrs = [1.0 - 0.1 * i for i in range(steps)]  # the schedule changes opt.lr between steps
    return params, grads, lrs


def run(name, options, params, grads, lrs, opt=None):
    """Run `opt` (or a new one) over the sequence, scaling its base lr by `lrs` as a schedule would."""
    opt = opt or OPTIMIZERS.get(name)(**options)
    base = options["lr"]
    for g, f in zip(grads, lrs):
        opt.lr = base * f
        opt.step(params, {k: v.copy() for k, v in g.items()})
    return opt


@pytest.mark.parametrize("name,options,kind,extra", CASES, ids=CASE_IDS)
def test_five_steps_match_reference_float64(name, options, kind, extra):
    params, grads, lrs = problem()
    hp = {k: v for k, v in {**options, **extra}.items() if k != "lr"}
    expected = reference(kind, params, grads, [options["lr"] * f for f in lrs], **hp)
    run(name, options, params, grads, lrs)
    for k in params:
        np.testing.assert_allclose(params[k], expected[k], rtol=1e-12, atol=1e-14, err_msg=k)


@pytest.mark.parametrize("name,options,kind,extra", CASES, ids=CASE_IDS)
def test_float32_kept_and_close_to_reference(name, options, kind, extra):
    params, grads, lrs = problem(np.float32)
    hp = {k: v for k, v in {**options, **extra}.items() if k != "lr"}
    expected = reference(kind, params, grads, [options["lr"] * f for f in lrs], **hp)
    opt = run(name, options, params, grads, lrs)
    for k, p in params.items():
        assert p.dtype == np.float32, k
        np.testing.assert_allclose(p, expected[k], rtol=2e-5, atol=2e-6, err_msg=k)
    for k, slots in opt.state.items():
        for slot, arr in slots.items():
            assert arr.dtype == np.float32 and arr.shape == params[k].shape, f"{slot}/{k}"
    assert all(a.dtype == np.float32 for a in opt.state_dict()["arrays"].values())


# -- weight decay -----------------------------------------------------------------------------
def test_l2_decay_is_a_gradient_term_decoupled_decay_is_not():
    zero = np.zeros(3)
    # sgd: g = 0 + 0.1 p, p -= 0.1 * g  ->  p * 0.99
    np.testing.assert_allclose(one_step("sgd", g=zero, lr=0.1, weight_decay=0.1), [0.99, -1.98, 0.495],
                               rtol=0, atol=1e-15)
    # adam (L2): the decay goes through the adaptive scaling, a full ~lr step against sign(p)
    np.testing.assert_allclose(one_step("adam", g=zero, lr=0.1, weight_decay=0.1), [0.9, -1.9, 0.4],
                               rtol=0, atol=1e-7)
    # adamw: p *= 1 - lr * wd exactly; the Adam part is 0 / (0 + eps) = 0
    np.testing.assert_array_equal(one_step("adamw", g=zero, lr=0.1, weight_decay=0.1), P0 * (1 - 0.1 * 0.1))


@pytest.mark.parametrize("name,options,decayed", [
    ("sgd", {}, {"layers.0.W", "layers.0.b", "layers.1.beta", "layers.1.gamma", "layers.b.W"}),
    ("sgd", {"exclude_from_decay": True}, {"layers.0.W", "layers.b.W"}),
    ("adamw", {}, {"layers.0.W", "layers.b.W"}),
    ("adamw", {"exclude_from_decay": None}, {"layers.0.W", "layers.b.W"}),
    ("adamw", {"exclude_from_decay": False}, {"layers.0.W", "layers.0.b", "layers.1.beta", "layers.1.gamma",
                                              "layers.b.W"}),
])
def test_exclude_from_decay_by_local_name(name, options, decayed):
    names = ["layers.0.W", "layers.0.b", "layers.1.beta", "layers.1.gamma", "layers.b.W"]
    params = {k: np.full(2, 4.0) for k in names}
    opt = OPTIMIZERS.get(name)(lr=1.0, weight_decay=0.5, **options)
    opt.step(params, {k: np.zeros(2) for k in names})
    # sgd: p -= 1 * 0.5 p; adamw: p *= 1 - 1 * 0.5; both give 2.0 where decay applies
    got = {k for k, v in params.items() if np.array_equal(v, [2.0, 2.0])}
    untouched = {k for k, v in params.items() if np.array_equal(v, [4.0, 4.0])}
    assert got == decayed and untouched == set(names) - decayed


# -- clipping ---------------------------------------------------------------------------------
def test_clip_norm_scales_all_grads_to_the_global_norm():
    params = {"a.W": np.zeros(2), "a.b": np.zeros(2)}
    grads = {"a.W": np.array([3.0, 0.0]), "a.b": np.array([0.0, 4.0])}  # global norm 5
    OPTIMIZERS.get("sgd")(lr=1.0, clip_norm=1.0).step(params, grads)
    norm = math.sqrt(sum(float(np.sum(g ** 2)) for g in grads.values()))
    assert norm == pytest.approx(1.0, abs=1e-15)  # documented: the step clips grads in place
    np.testing.assert_allclose(params["a.W"], [-0.6, 0.0], atol=1e-15)
    np.testing.assert_allclose(params["a.b"], [0.0, -0.8], atol=1e-15)


def test_clip_norm_float32_and_below_threshold():
    grads = {"a.W": np.array([3.0, 0.0], np.float32), "a.b": np.array([0.0, 4.0], np.float32)}
    OPTIMIZERS.get("sgd")(lr=1.0, clip_norm=2.0).step({k: np.zeros(2, np.float32) for k in grads}, grads)
    assert grads["a.W"].dtype == np.float32
    assert math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values())) == pytest.approx(2.0, rel=1e-6)
    small = {"a.W": np.array([0.3, 0.0]), "a.b": np.array([0.0, 0.4])}
    before = {k: v.copy() for k, v in small.items()}
    OPTIMIZERS.get("sgd")(lr=1.0, clip_norm=0.5).step({k: np.zeros(2) for k in small}, small)
    for k in small:
        np.testing.assert_array_equal(small[k], before[k])


def test_clip_value_then_norm():
    params = {"a.W": np.zeros(3)}
    OPTIMIZERS.get("sgd")(lr=1.0, clip_value=0.5).step(params, {"a.W": np.array([3.0, -0.2, -7.0])})
    np.testing.assert_array_equal(params["a.W"], [-0.5, 0.2, 0.5])
    # value first: [0.5, 0.5] (norm 0.7071), then norm 0.5: each 0.5 / sqrt(2)
    params = {"a.W": np.zeros(2)}
    OPTIMIZERS.get("sgd")(lr=1.0, clip_value=0.5, clip_norm=0.5).step(params, {"a.W": np.array([3.0, 9.0])})
    np.testing.assert_allclose(params["a.W"], [-0.5 / math.sqrt(2)] * 2, rtol=1e-15)


def test_non_finite_norm_is_not_clipped_away():
    grads = {"a.W": np.array([np.inf, 1.0])}
    params = {"a.W": np.zeros(2)}
    OPTIMIZERS.get("sgd")(lr=1.0, clip_norm=1.0).step(params, grads)
    assert params["a.W"][0] == -np.inf and params["a.W"][1] == -1.0


# -- state: save, load, resume ------------------------------------------------------------------
@pytest.mark.parametrize("name,options,kind,extra", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_resume_from_state_dict_is_bitwise_identical(name, options, kind, extra, dtype):
    params, grads, lrs = problem(dtype, steps=10, seed=1)
    straight = {k: v.copy() for k, v in params.items()}
    run(name, options, straight, grads, lrs)

    first = {k: v.copy() for k, v in params.items()}
    opt = run(name, options, first, grads[:5], lrs[:5])
    sd = opt.state_dict()
    saved = {"scalars": json.loads(json.dumps(sd["scalars"])), "arrays": copy.deepcopy(sd["arrays"])}
    assert saved["scalars"]["iterations"] == 5
    fresh = OPTIMIZERS.get(name)(**options)
    fresh.load_state_dict(saved)
    run(name, options, first, grads[5:], lrs[5:], opt=fresh)
    for k in params:
        np.testing.assert_array_equal(first[k], straight[k], err_msg=k)
    assert fresh.iterations == 10


def test_state_dict_keys_and_copies():
    params, grads, lrs = problem(steps=1)
    opt = run("adam", {"lr": 0.01, "amsgrad": True}, params, grads, lrs)
    sd = opt.state_dict()
    assert sd["scalars"] == {"name": "adam", "iterations": 1, "lr": 0.01}
    assert sorted(sd["arrays"]) == sorted(f"{s}/{k}" for s in ("m", "v", "vmax") for k in params)
    sd["arrays"]["m/layers.0.W"][...] = 123.0  # a copy: the optimizer's state is untouched
    assert not np.any(opt.state["layers.0.W"]["m"] == 123.0)
    assert OPTIMIZERS.get("sgd")().state_dict() == {"scalars": {"name": "sgd", "iterations": 0, "lr": 0.01},
                                                     "arrays": {}}


def _adam_state():
    params, grads, lrs = problem(steps=2)
    opt = run("adam", {"lr": 0.01}, params, grads, lrs)
    return params, opt.state_dict()


def _load_error(sd, params=None, step_params=None, **options):
    opt = OPTIMIZERS.get(options.pop("name", "adam"))(**{"lr": 0.01, **options})
    with pytest.raises(CheckpointError) as info:
        opt.load_state_dict(sd, params)
        if step_params is not None:
            opt.step(step_params, {k: np.zeros_like(v) for k, v in step_params.items()})
    return str(info.value)


def test_strict_load_unknown_and_missing_keys():
    params, sd = _adam_state()
    bad = copy.deepcopy(sd)
    bad["arrays"]["foo/layers.0.W"] = np.zeros((3, 2))
    assert _load_error(bad) == "optimizer state: unknown key 'foo/layers.0.W' for adam (slots: m, v)"
    bad = copy.deepcopy(sd)
    del bad["arrays"]["v/layers.0.b"]
    assert _load_error(bad) == "optimizer state: missing key 'v/layers.0.b'"
    assert _load_error(sd, amsgrad=True) == "optimizer state: missing key 'vmax/layers.0.W'"
    # the same optimizer configured differently: sgd saved with momentum, loaded without
    params, grads, lrs = problem(steps=1)
    sgd_sd = run("sgd", {"lr": 0.1, "momentum": 0.9}, params, grads, lrs).state_dict()
    assert _load_error(sgd_sd, name="sgd") == (
        "optimizer state: unknown key 'velocity/layers.0.W' for sgd (it keeps no per-parameter state)")
    bad = copy.deepcopy(sd)
    del bad["scalars"]["iterations"]
    assert _load_error(bad) == "optimizer state: missing key 'iterations'"
    bad = copy.deepcopy(sd)
    bad["scalars"]["epoch"] = 3
    assert _load_error(bad) == "optimizer state: unknown key 'epoch'"
    bad = copy.deepcopy(sd)
    bad["scalars"]["name"] = "rmsprop"
    assert _load_error(bad) == "optimizer state: saved by optimizer 'rmsprop', cannot load it into 'adam'"
    assert _load_error({"arrays": {}}) == "optimizer state: expected keys 'arrays' and 'scalars', got ['arrays']"


def test_strict_load_against_parameters():
    params, sd = _adam_state()
    wrong = dict(params, **{"layers.0.W": np.zeros((2, 3))})
    msg = "optimizer state: 'm/layers.0.W' has shape (3, 2), the parameter has (2, 3)"
    assert _load_error(sd, params=wrong) == msg
    assert _load_error(sd, step_params=wrong) == msg  # without params: checked at the next step
    extra = dict(params, **{"layers.2.W": np.zeros(4)})
    assert _load_error(sd, step_params=extra) == "optimizer state: missing key 'm/layers.2.W'"
    fewer = {k: v for k, v in params.items() if k != "layers.1.gamma"}
    assert _load_error(sd, params=fewer) == "optimizer state: key 'm/layers.1.gamma' matches no model parameter"


def test_load_casts_state_to_the_parameter_dtype():
    params, sd = _adam_state()
    opt = OPTIMIZERS.get("adam")(lr=0.01)
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    opt.load_state_dict(sd, p32)
    opt.step(p32, {k: np.ones_like(v) for k, v in p32.items()})
    assert all(a.dtype == np.float32 for s in opt.state.values() for a in s.values())


# -- no per-step allocation ------------------------------------------------------------------------
@pytest.mark.parametrize("name,options,kind,extra", CASES, ids=CASE_IDS)
def test_no_array_allocated_per_step(name, options, kind, extra):
    n = 20_000  # 80 kB per float32 parameter
    rng = np.random.default_rng(0)
    names = ["layers.0.W", "layers.0.b", "layers.1.W"]
    params = {k: rng.normal(size=n).astype(np.float32) for k in names}
    grads = {k: rng.normal(size=n).astype(np.float32) for k in names}
    opt = OPTIMIZERS.get(name)(**options)
    opt.step(params, grads)  # warm-up: state and scratch are allocated here
    opt.step(params, grads)

    def peak_bytes(fn):
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            fn()
            return tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()

    def three_steps():
        for _ in range(3):
            opt.lr = 0.001
            opt.step(params, grads)

    # control: the measurement does see a temporary the size of one parameter
    assert peak_bytes(lambda: params["layers.0.W"] * 2.0) >= 4 * n
    assert peak_bytes(three_steps) < 4 * n // 20


# -- registry, options, config round trip ------------------------------------------------------------
@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_builds_from_defaults_and_round_trips(name):
    opt = OPTIMIZERS.get(name)()
    assert isinstance(opt, Optimizer) and opt.NAME == name
    cfg = opt.get_config()
    assert set(cfg) == set(type(opt).PARAMS)
    assert type(opt)(**cfg).get_config() == cfg
    assert json.loads(json.dumps(cfg)) == cfg


def test_registered_defaults():
    assert OPTIMIZERS.get("momentum")().momentum == 0.9 and not OPTIMIZERS.get("momentum")().nesterov
    assert OPTIMIZERS.get("nesterov")().nesterov and OPTIMIZERS.get("nesterov")().momentum == 0.9
    adamw = OPTIMIZERS.get("adamw")()
    assert adamw.weight_decay == 0.01 and adamw.exclude_from_decay is True
    assert OPTIMIZERS.get("adam")().exclude_from_decay is False
    assert OPTIMIZERS.get("rmsprop")().eps == 1e-8 and OPTIMIZERS.get("adagrad")().eps == 1e-10
    assert OPTIMIZERS.get("adam")().get_config() == {
        "lr": 0.001, "weight_decay": 0.0, "clip_norm": None, "clip_value": None, "exclude_from_decay": None,
        "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "amsgrad": False}


@pytest.mark.parametrize("name,options,message", [
    ("adam", {"betas": [0.9, 0.99]}, "adam: unknown option(s) betas; valid: "),
    ("adam", {"lr": 0}, "adam.lr: must be > 0, got 0"),
    ("adam", {"beta1": 1.0}, "adam.beta1: must be < 1, got 1"),
    ("adam", {"eps": 0.0}, "adam.eps: must be > 0, got 0"),
    ("sgd", {"weight_decay": -1e-4}, "sgd.weight_decay: must be >= 0, got -0.0001"),
    ("sgd", {"momentum": 1.0}, "sgd.momentum: must be < 1, got 1"),
    ("sgd", {"nesterov": True}, "sgd.nesterov: needs momentum > 0, got momentum 0"),
    ("sgd", {"clip_norm": 0.0}, "sgd.clip_norm: must be > 0, got 0"),
    ("rmsprop", {"rho": -0.1}, "rmsprop.rho: must be >= 0, got -0.1"),
    ("rmsprop", {"centered": "yes"}, "rmsprop.centered: must be true or false, got 'yes'"),
    ("adagrad", {"lr": "fast"}, "adagrad.lr: must be a number, got 'fast'"),
    ("adamw", {"weight_decay": None}, "adamw.weight_decay: must not be null"),
])
def test_bad_options_are_config_errors(name, options, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        OPTIMIZERS.get(name)(**options)


def test_lr_attribute_is_what_the_step_uses():
    opt = OPTIMIZERS.get("sgd")(lr=0.1)
    p = {"a.W": np.ones(2)}
    opt.lr = 0.5
    opt.step(p, {"a.W": np.ones(2)})
    np.testing.assert_array_equal(p["a.W"], [0.5, 0.5])
    assert opt.iterations == 1 and opt.get_config()["lr"] == 0.1
