"""Tests of simple_rnn, gru and lstm (nnctl/engine/recurrent.py) and the synthetic sequence tasks."""
from __future__ import annotations

import numpy as np
import pytest

from nnctl.data.sequences import SEQUENCE_TASKS, make_marked_xor, make_parity
from nnctl.engine import conv, recurrent  # noqa: F401  (registers the layers: flatten, gru, ...)
from nnctl.engine.base import LAYERS
from nnctl.engine.gradcheck import gradcheck

from nnctl.engine.model import Sequential, build_layer

from nnctl.engine.recurrent import GRU, LSTM, SimpleRNN
from nnctl.errors import ConfigError
from engine_fit import accuracy, fit


def built(layer, shape, dtype=np.float64, seed=0):
    layer.build(tuple(shape), np.random.default_rng(seed), dtype)
    return layer


def sig(z):
    return 1.0 / (1.0 + np.exp(-z))


# -- forward values against the documented equations --------------------------------------

def ref_rnn(x, W, U, b):
    h = np.zeros((x.shape[0], U.shape[0]))
    out = []
    for t in range(x.shape[1]):
        h = np.tanh(x[:, t] @ W + h @ U + b)
        out.append(h)
    return np.stack(out, axis=1)


def ref_gru(x, W, U, b):
    u = U.shape[0]
    h = np.zeros((x.shape[0], u))
    out = []
    for t in range(x.shape[1]):
        xi, hr = x[:, t] @ W + b[0], h @ U + b[1]
        z = sig(xi[:, :u] + hr[:, :u])
        r = sig(xi[:, u:2 * u] + hr[:, u:2 * u])
        n = np.tanh(xi[:, 2 * u:] + r * hr[:, 2 * u:])
        h = z * h + (1 - z) * n
        out.append(h)
    return np.stack(out, axis=1)


def ref_lstm(x, W, U, b):
    u = U.shape[0]
    h = np.zeros((x.shape[0], u))
    c = np.zeros_like(h)
    out = []
    for t in range(x.shape[1]):
        g = x[:, t] @ W + h @ U + b
        i, f, cand, o = sig(g[:, :u]), sig(g[:, u:2 * u]), np.tanh(g[:, 2 * u:3 * u]), sig(g[:, 3 * u:])
        c = f * c + i * cand
        h = o * np.tanh(c)
        out.append(h)
    return np.stack(out, axis=1)


@pytest.mark.parametrize("cls,ref", [(SimpleRNN, ref_rnn), (GRU, ref_gru), (LSTM, ref_lstm)])
def test_forward_matches_equations(cls, ref):
    rng = np.random.default_rng(0)
    seq = built(cls(units=5, return_sequences=True), (6, 3))
    last = built(cls(units=5), (6, 3))
    b = seq.params["b"]
    b[...] = rng.standard_normal(b.shape)
    for k in seq.params:
        last.params[k][...] = seq.params[k]
    x = rng.standard_normal((4, 6, 3))
    want = ref(x, seq.params["W"], seq.params["U"], b)
    np.testing.assert_allclose(seq.forward(x, True), want, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(last.forward(x, True), want[:, -1], rtol=1e-12, atol=1e-13)
    assert seq.output_shape == (6, 5) and last.output_shape == (5,)


# -- gradients -----------------------------------------------------------------------------

CASES = [
    (SimpleRNN, {}),
    (SimpleRNN, {"return_sequences": True}),
    (SimpleRNN, {"return_sequences": True, "activation": "gelu"}),
    (GRU, {}),
    (GRU, {"return_sequences": True}),
    (GRU, {"return_sequences": True, "activation": "gelu", "recurrent_activation": "swish"}),
    (LSTM, {}),
    (LSTM, {"return_sequences": True, "unit_forget_bias": False}),
    (LSTM, {"activation": "softplus", "recurrent_activation": "swish"}),
]


@pytest.mark.parametrize("cls,kw", CASES)
def test_gradcheck(cls, kw):
    layer = built(cls(units=4, **kw), (5, 3))
    b = layer.params["b"]
    b[...] = np.random.default_rng(1).standard_normal(b.shape) * 0.5
    errors = gradcheck(layer, np.random.default_rng(2).standard_normal((3, 5, 3)))
    assert set(errors) == {"layers.0.W", "layers.0.U", "layers.0.b", "input"}
    assert max(errors.values()) < 1e-6, errors


@pytest.mark.parametrize("kw", [{"return_sequences": True},
                                {"activation": "softplus", "recurrent_activation": "swish"}])
def test_lstm_backward_does_not_depend_on_its_factor_block(kw, monkeypatch):
    # The training forward runs a block of steps at a time and turns each block's gates into
    # the backward's factors; T = 7 leaves a partial block, and every block size must give
    # the same gradients bit for bit.
    rng = np.random.default_rng(3)
    x, dy = rng.standard_normal((3, 7, 2)), rng.standard_normal((3, 7, 4))
    results = []
    for block in (1, 3, 4, 7, 50):
        monkeypatch.setattr(LSTM, "FACTOR_BLOCK", block)
        layer = built(LSTM(units=4, **kw), (7, 2), seed=5)
        layer.forward(x, True)
        dx = layer.backward(dy if kw.get("return_sequences") else dy[:, -1])
        results.append([dx] + [layer.grads[k].copy() for k in ("W", "U", "b")])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)
    assert np.abs(results[0][2]).max() > 0.01       # the gradients are not trivially zero


def ref_lstm_grads(x, W, U, b, dy):
    """Plain BPTT of ref_lstm (Keras gate order): dx, dW, dU, db for dy (N, T, u) or (N, u)."""
    n, t_len, _ = x.shape
    u = U.shape[0]
    h, c = np.zeros((n, u)), np.zeros((n, u))
    steps = []
    for t in range(t_len):
        z = x[:, t] @ W + h @ U + b
        i, f, g, o = sig(z[:, :u]), sig(z[:, u:2 * u]), np.tanh(z[:, 2 * u:3 * u]), sig(z[:, 3 * u:])
        steps.append((h, c, i, f, g, o))
        c = f * c + i * g
        h = o * np.tanh(c)
    dx, dW, dU, db = np.zeros_like(x), np.zeros_like(W), np.zeros_like(U), np.zeros_like(b)
    dh_next, dc_next = np.zeros((n, u)), np.zeros((n, u))
    for t in reversed(range(t_len)):
        h_prev, c_prev, i, f, g, o = steps[t]
        c = f * c_prev + i * g
        dh = dh_next + (dy[:, t] if dy.ndim == 3 else (dy if t == t_len - 1 else 0.0))
        tc = np.tanh(c)
        dc = dc_next + dh * o * (1 - tc ** 2)
        dz = np.concatenate([dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g ** 2),
                             dh * tc * o * (1 - o)], axis=1)
        dW += x[:, t].T @ dz
        dU += h_prev.T @ dz
        db += dz.sum(axis=0)
        dx[:, t] = dz @ W.T
        dh_next, dc_next = dz @ U.T, dc * f
    return dx, dW, dU, db


@pytest.mark.parametrize("return_sequences", [False, True])
def test_lstm_gradients_match_plain_bptt(return_sequences):
    # The backward sums dW, dU, db step by step from gate-major per-step products, with
    # factors computed in the forward a block of steps at a time: against plain BPTT, to rounding.
    rng = np.random.default_rng(6)
    layer = built(LSTM(units=5, return_sequences=return_sequences), (7, 3), seed=5)
    b = layer.params["b"]
    b[...] = rng.standard_normal(b.shape) * 0.5
    x = rng.standard_normal((4, 7, 3))
    dy = rng.standard_normal((4, 7, 5) if return_sequences else (4, 5))
    layer.forward(x, True)
    dx = layer.backward(dy)
    want = ref_lstm_grads(x, layer.params["W"], layer.params["U"], b, dy)
    for got, ref in zip([dx, layer.grads["W"], layer.grads["U"], layer.grads["b"]], want):
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-13)
        assert np.abs(ref).max() > 0.01                           # non-trivial


def test_lstm_reused_buffers_give_a_fresh_layers_results():
    # The second batch of a shape reuses every buffer of the first (the stacked input's
    # constant columns are set only when it is allocated) and an evaluation in between
    # has buffers of its own: the results are those of plain BPTT on the second batch.
    rng = np.random.default_rng(11)
    layer = built(LSTM(units=5, return_sequences=True), (6, 3), seed=2)
    first, second = rng.standard_normal((2, 4, 6, 3))
    dy = rng.standard_normal((4, 6, 5))
    layer.forward(first, True)
    layer.backward(dy)
    layer.forward(second, False)
    y = layer.forward(second, True)
    dx = layer.backward(dy)
    W, U, b = (layer.params[k] for k in ("W", "U", "b"))
    np.testing.assert_allclose(y, ref_lstm(second, W, U, b), rtol=1e-12, atol=1e-13)
    want = ref_lstm_grads(second, W, U, b, dy)
    for got, ref in zip([dx, layer.grads["W"], layer.grads["U"], layer.grads["b"]], want):
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("kw", [{"return_sequences": True},
                                {"activation": "softplus", "recurrent_activation": "swish"}])
def test_lstm_evaluation_forward_matches_training_and_a_backward_after_it_replays(kw):
    # Evaluation keeps one step of state (no history) in its own buffers: the same outputs
    # bit for bit, a training batch of another size in between disturbs nothing, and a
    # backward after it (as gradient checks do) gives the training forward's gradients.
    rng = np.random.default_rng(7)
    x, other = rng.standard_normal((3, 6, 2)), rng.standard_normal((5, 6, 2))
    dy = rng.standard_normal((3, 6, 4) if kw.get("return_sequences") else (3, 4))
    trained, evaluated = (built(LSTM(units=4, **kw), (6, 2), seed=8) for _ in range(2))
    y = trained.forward(x, True)
    dx = trained.backward(dy)
    evaluated.forward(other, True)
    y_eval = evaluated.forward(x, False)
    assert np.array_equal(y_eval, y)
    assert np.array_equal(evaluated.backward(dy), dx)
    for k in ("W", "U", "b"):
        assert np.array_equal(evaluated.grads[k], trained.grads[k])
    assert np.abs(dx).max() > 0.01


def test_lstm_evaluation_in_chunks_of_rows_matches_training(monkeypatch):
    # A large evaluation batch runs in chunks of rows (here 3 + 3 + 1 of 7); the outputs
    # match the training forward's, and a backward after it replays all rows.
    monkeypatch.setattr(LSTM, "EVAL_CHUNK_MACS", 3 * (2 + 4 + 1) * 4)
    monkeypatch.setattr(LSTM, "EVAL_CHUNK_MIN_ROWS", 1)
    rng = np.random.default_rng(9)
    x, dy = rng.standard_normal((7, 6, 2)), rng.standard_normal((7, 6, 4))
    trained, evaluated = (built(LSTM(units=4, return_sequences=True), (6, 2), seed=8) for _ in range(2))
    y = trained.forward(x, True)
    dx = trained.backward(dy)
    y_eval = evaluated.forward(x, False)
    assert evaluated.ws.arrays["eval C"].shape == (3, 4)            # it did run in chunks
    np.testing.assert_allclose(y_eval, y, rtol=1e-12, atol=1e-15)
    assert np.array_equal(evaluated.backward(dy), dx)
    for k in ("W", "U", "b"):
        assert np.array_equal(evaluated.grads[k], trained.grads[k])
    assert np.abs(y[-1]).max() > 0.01


def test_gradcheck_in_a_stack_with_a_time_step_of_one():
    specs = [{"type": "gru", "units": 3, "return_sequences": True}, {"type": "lstm", "units": 2}]
    model = Sequential.from_config(specs, (1, 2), 0, "float64")
    errors = gradcheck(model, np.random.default_rng(3).standard_normal((2, 1, 2)))
    assert max(errors.values()) < 1e-6, errors


def test_batch_size_change_and_skipped_input_gradient():
    rng = np.random.default_rng(4)
    layer = built(GRU(units=3, return_sequences=True), (4, 2))
    layer.forward(rng.standard_normal((5, 4, 2)), True)
    x, dy = rng.standard_normal((2, 4, 2)), rng.standard_normal((2, 4, 3))
    y = layer.forward(x, True)
    dx = layer.backward(dy)
    fresh = built(GRU(units=3, return_sequences=True), (4, 2))
    np.testing.assert_allclose(fresh.forward(x, True), y)
    np.testing.assert_allclose(fresh.backward(dy), dx)
    fresh.input_grad = False
    fresh.forward(x, True)
    assert fresh.backward(dy) is None
    np.testing.assert_allclose(fresh.grads["U"], layer.grads["U"])


# -- initialization ------------------------------------------------------------------------

def test_initialization():
    lstm = built(LSTM(units=4), (3, 5))
    b = lstm.params["b"]
    np.testing.assert_array_equal(b[4:8], 1.0)                       # forget gate
    np.testing.assert_array_equal(np.concatenate([b[:4], b[8:]]), 0.0)
    assert np.all(built(LSTM(units=4, unit_forget_bias=False), (3, 5)).params["b"] == 0.0)
    gru = built(GRU(units=4), (3, 5))
    assert gru.params["b"].shape == (2, 12) and gru.params["W"].shape == (5, 12)
    for g in range(3):  # each gate's recurrent block is orthogonal
        block = gru.params["U"][:, 4 * g:4 * (g + 1)]
        np.testing.assert_allclose(block.T @ block, np.eye(4), atol=1e-12)
    rnn = built(SimpleRNN(units=4, kernel_initializer="zeros"), (3, 5))
    assert np.all(rnn.params["W"] == 0) and rnn.params["U"].shape == (4, 4)


@pytest.mark.parametrize("layer", [SimpleRNN(units=3, return_sequences=True), GRU(units=3),
                                   LSTM(units=3, return_sequences=True), GRU(units=2, activation="gelu")])
def test_float32_stays_float32(layer):
    built(layer, (4, 2), np.float32)
    rng = np.random.default_rng(0)
    y = layer.forward(rng.standard_normal((3, 4, 2)).astype(np.float32), True)
    assert y.dtype == np.float32
    dx = layer.backward(rng.standard_normal(y.shape).astype(np.float32))
    assert dx.dtype == np.float32 and dx.shape == (3, 4, 2)
    assert all(g.dtype == np.float32 for g in layer.grads.values())
    assert all(p.dtype == np.float32 for p in layer.params.values())


# -- registry, config, errors --------------------------------------------------------------

def test_registry_and_config_round_trip():
    for name in ("simple_rnn", "rnn", "gru", "lstm"):
        assert name in LAYERS
    layer = build_layer({"type": "lstm", "units": 8, "return_sequences": True})
    assert type(layer)(**layer.get_config()).get_config() == layer.get_config()
    assert layer.get_config()["recurrent_initializer"] == "orthogonal"


@pytest.mark.parametrize("make,shape,message", [
    (lambda: GRU(units=4), (8,), "gru: expects input of shape (N, T, F), got (N, 8)"),
    (lambda: LSTM(units=4), (8, 2, 2), "lstm: expects input of shape (N, T, F), got (N, 8, 2, 2)"),
    (lambda: SimpleRNN(units=4), (), "simple_rnn: expects input of shape (N, T, F), got (N, )"),
])
def test_rnn_needs_3d_input(make, shape, message):
    with pytest.raises(ConfigError) as err:
        built(make(), shape)
    assert str(err.value) == message


def test_bad_options():
    with pytest.raises(ConfigError, match=r"^gru\.units: must be >= 1, got 0$"):
        GRU(units=0)
    with pytest.raises(ConfigError, match="unknown activation 'tahn'; did you mean 'tanh'"):
        SimpleRNN(units=2, activation="tahn")
    with pytest.raises(ConfigError, match=r"^lstm: unknown option\(s\) forget_bias$"):
        LSTM(units=2, forget_bias=True)


# -- the sequence tasks --------------------------------------------------------------------

def test_marked_xor_data():
    x, y = make_marked_xor(np.random.default_rng(0), n_samples=300, length=7)
    assert x.shape == (300, 7, 2) and x.dtype == np.float64 and y.dtype == np.int64
    assert np.all(x[..., 1].sum(axis=1) == 2)
    assert set(np.unique(x[..., 0])) == {0.0, 1.0}
    for xi, yi in zip(x, y):
        i, j = np.flatnonzero(xi[:, 1])
        assert yi == int(xi[i, 0]) ^ int(xi[j, 0])
    assert 0.4 < y.mean() < 0.6
    x2, y2 = make_marked_xor(np.random.default_rng(0), n_samples=300, length=7)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)


def test_parity_data():
    x, y = make_parity(np.random.default_rng(1), n_samples=50, length=9)
    assert x.shape == (50, 9, 1) and y.shape == (50,) and y.dtype == np.int64
    np.testing.assert_array_equal(y, x.sum(axis=(1, 2)).astype(np.int64) % 2)
    for name, fn in SEQUENCE_TASKS.items():
        assert set(fn.PARAMS) == {"n_samples", "length"} and fn.TASK == "classification", name


def test_gru_solves_marked_xor_where_an_mlp_stays_at_chance():
    rng = np.random.default_rng(0)
    x, y = make_marked_xor(rng, n_samples=3000, length=16)
    x = x.astype(np.float32)
    xtr, ytr, xte, yte = x[:2000], y[:2000], x[2000:], y[2000:]
    budget = {"epochs": 30, "lr": 3e-3, "seed": 0}
    gru = fit(Sequential.from_config([{"type": "gru", "units": 32}, {"type": "dense", "units": 2}],
                                     (16, 2), 0, "float32"), xtr, ytr, **budget)
    mlp = fit(Sequential.from_config([{"type": "flatten"},
                                      {"type": "dense", "units": 128, "activation": "relu"},
                                      {"type": "dense", "units": 128, "activation": "relu"},
                                      {"type": "dense", "units": 2}], (16, 2), 0, "float32"), xtr, ytr, **budget)
    acc_gru, acc_mlp = accuracy(gru, xte, yte), accuracy(mlp, xte, yte)
    assert acc_gru >= 0.95, f"gru {acc_gru:.3f}, mlp {acc_mlp:.3f}"
    assert acc_mlp <= 0.6, f"gru {acc_gru:.3f}, mlp {acc_mlp:.3f}"
    # the MLP is not simply untrained: it fits its training set far better than chance
    assert accuracy(mlp, xtr, ytr) >= 0.9
