"""Fused optimizer steps over the model's flat parameter buffer: same numbers as the loop, same state keys, no allocation."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from nnctl.config.spec import spec_from_dict
from nnctl.engine.losses import CrossEntropy
from nnctl.engine.model import Sequential
from nnctl.engine import optimizers
from nnctl.engine.optimizers import OPTIMIZERS
from nnctl.training.experiment import prepare
from test_optimizers import CASE_IDS, CASES

SHAPES = {"layers.0.W": (3, 2), "layers.0.b": (2,), "layers.1.W": (2, 4), "layers.1.b": (4,),
          "layers.2.gamma": (4,), "layers.2.beta": (4,)}


def flat_views(values: dict[str, np.ndarray], dtype) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """`values` copied into one flat array, returned with the named views into it (as Sequential lays them out)."""
    flat = np.empty(sum(v.size for v in values.values()), dtype=dtype)
    views, pos = {}, 0
    for k, v in values.items():
        views[k] = flat[pos:pos + v.size].reshape(v.shape)
        views[k][...] = v
        pos += v.size
    return flat, views


def sequences(dtype, steps=6, seed=0):
    rng = np.random.default_rng(seed)
    p0 = {k: rng.normal(size=s).astype(dtype) for k, s in SHAPES.items()}
    grads = [{k: (rng.normal(size=s) * 2.0 ** -i).astype(dtype) for k, s in SHAPES.items()} for i in range(steps)]
    return p0, grads


def run_loop(opt, params, grads, lrs):
    for g, f in zip(grads, lrs):
        opt.lr = opt.hparams["lr"] * f
        opt.step(params, {k: v.copy() for k, v in g.items()})


def run_fused(opt, params, flat_grads, grads, lrs):
    for g, f in zip(grads, lrs):
        opt.lr = opt.hparams["lr"] * f
        for k, v in g.items():
            flat_grads[k][...] = v  # the backward pass writes into the same views every step
        opt.step(params, flat_grads)


@pytest.mark.parametrize("blocks", [False, True], ids=["one-block", "blocks"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name,options,kind,extra", CASES, ids=CASE_IDS)
def test_fused_step_equals_the_per_parameter_loop(name, options, kind, extra, dtype, blocks, monkeypatch):
    if blocks:
        # blocks of 5 float64 / 10 float32 elements: their edges cut through parameters
        monkeypatch.setattr(optimizers, "CHUNK_BYTES", 40)
    p0, grads = sequences(dtype)
    lrs = [1.0 - 0.1 * i for i in range(len(grads))]
    loop_params = {k: v.copy() for k, v in p0.items()}
    loop = OPTIMIZERS.get(name)(**options)
    run_loop(loop, loop_params, grads, lrs)

    _, params = flat_views(p0, dtype)
    gflat, gviews = flat_views({k: np.zeros(s, dtype) for k, s in SHAPES.items()}, dtype)
    fused = OPTIMIZERS.get(name)(**options)
    run_fused(fused, params, gviews, grads, lrs)

    assert len(fused._flat.chunks) == (-(-28 * np.dtype(dtype).itemsize // 40) if blocks else 1)
    # every block works in the one block-sized scratch array
    assert fused._flat.tmp.size == (40 // np.dtype(dtype).itemsize if blocks else 28)
    # the fused path really ran: its state lives in flat arrays too, one per slot
    for slot in fused.slots():
        bases = {id(fused.state[k][slot].base) for k in SHAPES}
        assert len(bases) == 1 and fused.state["layers.0.W"][slot].base.size == gflat.size
    for k in SHAPES:
        assert params[k].dtype == dtype
        if options.get("clip_norm") is None:
            # elementwise rules over one array or six: the same operations, bit for bit
            np.testing.assert_array_equal(params[k], loop_params[k], err_msg=k)
        else:
            # the global norm is summed in another order: equal to rounding
            np.testing.assert_allclose(params[k], loop_params[k], rtol=1e-6 if dtype == np.float64 else 1e-5,
                                       atol=1e-12, err_msg=k)
    assert sorted(fused.state_dict()["arrays"]) == sorted(loop.state_dict()["arrays"])


@pytest.mark.parametrize("name,options,kind,extra", CASES, ids=CASE_IDS)
def test_fused_resume_is_bitwise_and_loads_state_saved_by_the_loop(name, options, kind, extra):
    dtype = np.float32
    p0, grads = sequences(dtype)
    lrs = [1.0] * len(grads)

    def fresh():
        _, params = flat_views(p0, dtype)
        _, gviews = flat_views({k: np.zeros(s, dtype) for k, s in SHAPES.items()}, dtype)
        return params, gviews

    params, gviews = fresh()
    straight = OPTIMIZERS.get(name)(**options)
    run_fused(straight, params, gviews, grads, lrs)

    # interrupted after 3 fused steps, resumed from copies of the params and the state dict
    params2, gviews2 = fresh()
    first = OPTIMIZERS.get(name)(**options)
    run_fused(first, params2, gviews2, grads[:3], lrs[:3])
    sd = first.state_dict()
    assert all(not np.shares_memory(a, first.state[key.split("/", 1)[1]][key.split("/")[0]])
               for key, a in sd["arrays"].items())
    params3, gviews3 = fresh()
    for k in params3:
        params3[k][...] = params2[k]
    resumed = OPTIMIZERS.get(name)(**options)
    resumed.load_state_dict(sd, params=params3)
    run_fused(resumed, params3, gviews3, grads[3:], lrs[3:])
    for k in SHAPES:
        np.testing.assert_array_equal(params3[k], params[k], err_msg=k)

    # a state dict written by the per-parameter loop (older checkpoints) loads into the fused path
    loop_params = {k: v.copy() for k, v in p0.items()}
    loop = OPTIMIZERS.get(name)(**options)
    run_loop(loop, loop_params, grads[:3], lrs[:3])
    params4, gviews4 = fresh()
    for k in params4:
        params4[k][...] = loop_params[k]
    mixed = OPTIMIZERS.get(name)(**options)
    mixed.load_state_dict(loop.state_dict())
    run_fused(mixed, params4, gviews4, grads[3:], lrs[3:])
    run_loop(loop, loop_params, grads[3:], lrs[3:])
    for k in SHAPES:
        np.testing.assert_allclose(params4[k], loop_params[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_model_parameters_and_grads_are_views_of_one_flat_array_each():
    specs = [{"type": "dense", "units": 5, "activation": "relu"}, {"type": "batch_norm"},
             {"type": "residual", "layers": [{"type": "dense", "units": 5}]}, {"type": "dense", "units": 2}]
    model = Sequential.from_config(specs, (3,), 0, "float64")
    same = Sequential.from_config(specs, (3,), 0, "float64")
    params, grads = model.named_parameters(), model.named_grads()
    assert list(params) == ["layers.0.W", "layers.0.b", "layers.1.gamma", "layers.1.beta",
                            "layers.2.layers.0.W", "layers.2.layers.0.b", "layers.3.W", "layers.3.b"]
    assert model.flat_params.size == model.num_parameters() == 3 * 5 + 5 + 5 + 5 + 25 + 5 + 10 + 2
    pos = 0
    for k, p in params.items():
        assert p.base is model.flat_params and grads[k].base is model.flat_grads and p.shape == grads[k].shape
        np.testing.assert_array_equal(model.flat_params[pos:pos + p.size], p.reshape(-1))
        pos += p.size
    # the initial values are the ones the layers drew: two builds from the same seed agree
    for k, p in same.named_parameters().items():
        np.testing.assert_array_equal(params[k], p)
    # a write through the flat array is seen by name, and load_state_dict writes in place
    model.flat_params[0] = 123.0
    assert params["layers.0.W"][0, 0] == 123.0
    model.load_state_dict(same.state_dict())
    assert params["layers.0.W"][0, 0] == same.named_parameters()["layers.0.W"][0, 0]
    assert model.named_parameters()["layers.0.W"].base is model.flat_params


def test_a_parameter_replaced_by_its_owner_falls_back_to_the_loop():
    model = Sequential.from_config([{"type": "dense", "units": 3}], (2,), 0, "float64")
    opt = OPTIMIZERS.get("sgd")(lr=0.5)
    g = np.arange(6.0).reshape(2, 3)
    model.named_grads()["layers.0.W"][...] = g
    opt.step(model.named_parameters(), model.named_grads())
    layer = model.layers[0]
    layer.params["W"] = np.ones((2, 3))      # no longer a view of the flat array
    layer.grads["W"] = g.copy()
    opt.step(model.named_parameters(), model.named_grads())
    np.testing.assert_array_equal(layer.params["W"], 1.0 - 0.5 * g)


def test_training_steps_allocate_no_arrays_after_warm_up():
    """forward (the model's output copy aside), backward and a fused Adam step: memory stays flat."""
    specs = [{"type": "dense", "units": 256, "activation": "relu"}, {"type": "dense", "units": 128, "activation": "tanh"},
             {"type": "dense", "units": 4}]
    model = Sequential.from_config(specs, (64,), 0, "float32")
    opt = OPTIMIZERS.get("adamw")(lr=1e-3, clip_norm=1.0)
    loss = CrossEntropy()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 64)).astype(np.float32)
    y = rng.integers(0, 4, 64)
    params, grads = model.named_parameters(), model.named_grads()
    z = model.forward(x, training=True)
    _, dz = loss(z, y)

    def step():
        model.forward(x, training=True)
        model.backward(dz)
        opt.step(params, grads)

    for _ in range(3):
        step()
    n_params = model.flat_params.size
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(50):
            step()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # nothing kept: 50 steps leave memory where it was (a few hundred bytes of Python objects)
    assert current - base < 4096
    # nothing the size of the parameters (4 bytes each) is ever allocated during a step; the
    # largest temporary is NumPy's fixed 8192-element broadcast buffer (bias adds) and the
    # model's (64, 4) output copy
    assert peak - base < 64 * 1024 < 4 * n_params // 2


def test_the_trainers_model_is_flat_and_its_optimizer_takes_the_fused_path():
    """`nnctl train` builds its model layer by layer (experiment.build_model): it still gets the flat layout."""
    exp = prepare(spec_from_dict({"data": {"dataset": "xor"}, "model": {"hidden": [4, 3]},
                                  "optimizer": {"name": "adam", "lr": 0.01}}))
    model = exp.model
    params, grads = model.named_parameters(), model.named_grads()
    assert model.flat_params.size == model.num_parameters() == 2 * 4 + 4 + 4 * 3 + 3 + 3 * 2 + 2
    for k, p in params.items():
        assert p.base is model.flat_params and grads[k].base is model.flat_grads
    grads["layers.0.W"][...] = 1.0
    before = params["layers.0.W"].copy()
    exp.optimizer.step(params, grads)
    assert exp.optimizer._flat is not None and exp.optimizer.state["layers.0.W"]["m"].base.size == model.flat_params.size
    # Adam's first step moves each parameter by lr against its gradient's sign
    np.testing.assert_allclose(params["layers.0.W"], before - 0.01, rtol=1e-5)
