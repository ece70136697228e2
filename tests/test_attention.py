"""Tests of embeddings, multi-head attention and transformer blocks (nnctl/engine/attention.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nnctl.data.sequences import make_marked_xor
from nnctl.engine import attention, conv  # noqa: F401  (registers the layers)
from nnctl.engine.attention import (Embedding, MultiHeadAttention, PositionalEmbedding, SinusoidalEncoding,
                                    TransformerBlock, TransformerEncoder)
from nnctl.engine.base import LAYERS
from nnctl.engine.gradcheck import gradcheck

from nnctl.engine.model import Sequential, build_layer

from nnctl.errors import ConfigError, DataError
from engine_fit import accuracy, fit


def built(layer, shape, dtype=np.float64, seed=0):
    layer.build(tuple(shape), np.random.default_rng(seed), dtype)
    return layer


def assert_gradcheck(layer, x, **kw):
    errors = gradcheck(layer, x, **kw)
    bad = {k: v for k, v in errors.items() if not v < 1e-6}
    assert not bad, f"gradient check failed: {bad}"
    return errors


def softmax_rows(s):
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def ref_attention(x, mha):
    """Per sample and head, the textbook formula with explicit slicing."""
    h, dk = mha.hparams["heads"], mha.dk
    q_, k_, v_, o_ = mha.query.params, mha.key.params, mha.value.params, mha.output.params
    n, t, _ = x.shape
    out = np.zeros_like(x)
    for i in range(n):
        heads = []
        for j in range(h):
            cols = slice(j * dk, (j + 1) * dk)
            Q = x[i] @ q_["W"][:, cols] + q_["b"][cols]
            K = x[i] @ k_["W"][:, cols]
            V = x[i] @ v_["W"][:, cols] + v_["b"][cols]
            S = Q @ K.T / math.sqrt(dk)
            if mha.hparams["causal"]:
                S = np.where(np.triu(np.ones((t, t), bool), 1), -np.inf, S)
            heads.append(softmax_rows(S) @ V)
        out[i] = np.concatenate(heads, axis=1) @ o_["W"] + o_["b"]
    return out


# -- attention values ----------------------------------------------------------------------

@pytest.mark.parametrize("kw", [{"heads": 2}, {"heads": 3, "key_dim": 4, "causal": True}, {"heads": 1}])
def test_attention_matches_reference(kw):
    rng = np.random.default_rng(0)
    mha = built(MultiHeadAttention(**kw), (5, 6))
    for child in (mha.query, mha.value, mha.output):
        child.params["b"][...] = rng.standard_normal(child.params["b"].shape)
    x = rng.standard_normal((3, 5, 6))
    np.testing.assert_allclose(mha.forward(x, False), ref_attention(x, mha), rtol=1e-10, atol=1e-12)


def test_block_evaluation_in_groups_of_samples_matches_one_pass(monkeypatch):
    # 576 bytes a sample (T=6 by the widest intermediate, heads * T = 12, float64): groups of
    # 2, 2 and 1 samples, against the block evaluated in one group and sample by sample
    rng = np.random.default_rng(11)
    block = built(TransformerBlock(heads=2, mlp_units=8, causal=True), (6, 4))
    x = rng.standard_normal((5, 6, 4))
    whole = block.forward(x, False).copy()
    one_by_one = np.concatenate([block.forward(x[i:i + 1], False).copy() for i in range(5)])
    monkeypatch.setattr(attention, "CACHE_BLOCK_BYTES", 2 * 576)
    groups = []
    forward = block.attn.forward
    monkeypatch.setattr(block.attn, "forward", lambda a, training: groups.append(len(a)) or forward(a, training))
    grouped = block.forward(x, False)
    assert groups == [2, 2, 1]
    np.testing.assert_allclose(grouped, whole, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(grouped, one_by_one, rtol=1e-13, atol=1e-14)
    groups.clear()
    block.forward(x, True)                             # training: one group, for backward
    assert groups == [5]


def test_causal_attention_ignores_the_future():
    rng = np.random.default_rng(1)
    block = built(TransformerBlock(heads=2, causal=True, mlp_units=8), (6, 4))
    x = rng.standard_normal((2, 6, 4))
    y = block.forward(x, False).copy()
    x2 = x.copy()
    x2[:, 4:] += rng.standard_normal((2, 2, 4))
    y2 = block.forward(x2, False)
    np.testing.assert_allclose(y2[:, :4], y[:, :4], rtol=1e-12, atol=1e-12)
    assert not np.allclose(y2[:, 4:], y[:, 4:])


def test_attention_dropout_uses_the_mask_and_is_off_in_evaluation():
    rng = np.random.default_rng(2)
    mha = built(MultiHeadAttention(heads=2, dropout=0.5), (4, 4))
    x = rng.standard_normal((2, 4, 4))
    plain = mha.forward(x, False).copy()
    keep = np.ones((2, 2, 4, 4), dtype=bool)
    mha.fix_mask(keep)                                 # nothing dropped: the weights only rescale by 2
    v = mha.value.forward(x, False).reshape(2, 4, 2, 2).transpose(0, 2, 1, 3)
    mha.forward(x, True)
    doubled = np.matmul(2.0 * mha._a, v).transpose(0, 2, 1, 3).reshape(2, 4, 4) @ mha.output.params["W"]
    np.testing.assert_allclose(mha.forward(x, True), doubled + mha.output.params["b"], rtol=1e-12)
    mha.fix_mask(None)
    a = mha.forward(x, True).copy()
    b = mha.forward(x, True)
    assert not np.allclose(a, b)                       # fresh masks from the model's Generator
    np.testing.assert_allclose(mha.forward(x, False), plain)


# -- gradients -----------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [
    {"heads": 2},
    {"heads": 3, "key_dim": 3, "causal": True},
    {"heads": 2, "dropout": 0.3},
    {"heads": 2, "dropout": 0.3, "causal": True, "bias": False},
])
def test_attention_gradcheck(kw):
    mha = built(MultiHeadAttention(**kw), (5, 6))
    assert_gradcheck(mha, np.random.default_rng(3).standard_normal((2, 5, 6)))


def test_attention_gradcheck_with_a_fixed_dropout_mask():
    mha = built(MultiHeadAttention(heads=2, dropout=0.4, causal=True), (4, 6))
    mha.fix_mask(np.random.default_rng(5).random((2, 2, 4, 4)) >= 0.4)
    assert_gradcheck(mha, np.random.default_rng(4).standard_normal((2, 4, 6)))


@pytest.mark.parametrize("layer", [
    TransformerBlock(heads=2, mlp_units=8),
    TransformerBlock(heads=2, mlp_units=8, dropout=0.2, causal=True, activation="relu"),
    TransformerEncoder(num_layers=2, heads=2, key_dim=2, mlp_units=6),
    SinusoidalEncoding(),
    PositionalEmbedding(max_len=9),
])
def test_block_and_encoding_gradcheck(layer):
    built(layer, (5, 6))
    assert_gradcheck(layer, np.random.default_rng(6).standard_normal((2, 5, 6)))


def test_embedding_gradcheck_and_gradient_by_hand():
    emb = built(Embedding(vocab_size=5, dim=3), (4,))
    ids = np.array([[0, 3, 3, 1], [4, 3, 0, 2]], dtype=np.float64)
    errors = assert_gradcheck(emb, ids, check_input=False)
    assert set(errors) == {"layers.0.W"}
    y = emb.forward(ids, True)
    np.testing.assert_array_equal(y[1, 0], emb.params["W"][4])
    dy = np.arange(24, dtype=np.float64).reshape(2, 4, 3)
    dx = emb.backward(dy)
    assert dx.shape == ids.shape and not dx.any()
    np.testing.assert_array_equal(emb.grads["W"][3], dy[0, 1] + dy[0, 2] + dy[1, 1])   # id 3 used 3 times
    np.testing.assert_array_equal(emb.grads["W"][0], dy[0, 0] + dy[1, 2])


def test_transformer_parameter_names_nest():
    specs = [{"type": "dense", "units": 8},
             {"type": "transformer_encoder", "num_layers": 2, "heads": 2},
             {"type": "transformer_block", "heads": 4, "causal": True}]
    model = Sequential.from_config(specs, (5, 3), 0, "float64")
    names = model.named_parameters()
    for name in ("layers.1.blocks.0.attn.query.W", "layers.1.blocks.1.attn.output.b", "layers.1.blocks.0.ln1.gamma",
                 "layers.1.blocks.1.mlp1.W", "layers.1.blocks.1.mlp2.b", "layers.1.norm.beta",
                 "layers.2.attn.value.W", "layers.2.ln2.beta"):
        assert name in names, name
    assert "layers.2.attn.key.b" not in names                 # see MultiHeadAttention's Notes
    assert names["layers.1.blocks.0.mlp1.W"].shape == (8, 32)  # mlp_units defaults to 4 D
    assert set(names) == set(model.named_grads())


# -- encodings and embeddings: values, options, errors -------------------------------------

def test_sinusoidal_values():
    enc = built(SinusoidalEncoding(), (3, 4))
    x = np.zeros((1, 3, 4))
    pe = enc.forward(x, True)[0]
    np.testing.assert_allclose(pe[0], [0, 1, 0, 1])
    np.testing.assert_allclose(pe[2], [math.sin(2), math.cos(2), math.sin(2 / 100), math.cos(2 / 100)])


def test_positional_embedding_adds_rows_and_zeroes_the_unused_gradient():
    pos = built(PositionalEmbedding(max_len=6), (4, 2))
    x = np.zeros((3, 4, 2))
    np.testing.assert_array_equal(pos.forward(x, True)[1], pos.params["P"][:4])
    pos.backward(np.ones((3, 4, 2)))
    np.testing.assert_array_equal(pos.grads["P"][:4], 3.0)
    np.testing.assert_array_equal(pos.grads["P"][4:], 0.0)


def test_embedding_accepts_a_trailing_axis_and_rejects_bad_ids():
    emb = built(Embedding(vocab_size=4, dim=2), (3, 1))
    assert emb.output_shape == (3, 2)
    assert emb.forward(np.array([[[1.0], [0.0], [3.0]]]), True).shape == (1, 3, 2)
    with pytest.raises(DataError, match=r"^embedding: token ids must be integers in \[0, 4\), got 4$"):
        emb.forward(np.array([[[1.0], [4.0], [3.0]]]), True)
    with pytest.raises(DataError, match=r"^embedding: token ids must be integers in \[0, 4\), got 1\.5$"):
        emb.forward(np.array([[[1.5], [0.0], [3.0]]]), True)


@pytest.mark.parametrize("make,shape,message", [
    (lambda: MultiHeadAttention(heads=3), (5, 8),
     "multi_head_attention: heads 3 does not divide the model width D=8; set key_dim or change heads"),
    (lambda: MultiHeadAttention(heads=2), (8,),
     "multi_head_attention: expects a sequence (N, T, D), got input (N, 8)"),
    (lambda: TransformerBlock(heads=3), (5, 8),
     "transformer_block: multi_head_attention: heads 3 does not divide the model width D=8; "
     "set key_dim or change heads"),
    (lambda: TransformerEncoder(heads=2), (4, 2, 2),
     "transformer_encoder: expects a sequence (N, T, D), got input (N, 4, 2, 2)"),
    (lambda: PositionalEmbedding(max_len=4), (5, 8),
     "positional_embedding: sequence length 5 is longer than max_len 4"),
    (lambda: Embedding(vocab_size=3, dim=2), (5, 2),
     "embedding: expects token ids of shape (N, T) or (N, T, 1), got input (N, 5, 2)"),
])
def test_shape_errors_at_build_time(make, shape, message):
    with pytest.raises(ConfigError) as err:
        built(make(), shape)
    assert str(err.value) == message


def test_key_dim_makes_any_head_count_work():
    mha = built(MultiHeadAttention(heads=3, key_dim=5), (4, 8))
    assert mha.query.params["W"].shape == (8, 15) and mha.output.params["W"].shape == (15, 8)


@pytest.mark.parametrize("layer,shape", [
    (MultiHeadAttention(heads=2, causal=True, dropout=0.2), (4, 6)),
    (TransformerBlock(heads=2, mlp_units=8, dropout=0.1), (4, 6)),
    (TransformerEncoder(num_layers=1, heads=2), (4, 6)),
    (SinusoidalEncoding(), (4, 6)),
    (PositionalEmbedding(), (4, 6)),
])
def test_float32_stays_float32(layer, shape):
    built(layer, shape, np.float32)
    rng = np.random.default_rng(0)
    y = layer.forward(rng.standard_normal((3,) + shape).astype(np.float32), True)
    assert y.dtype == np.float32
    dx = layer.backward(rng.standard_normal(y.shape).astype(np.float32))
    assert dx.dtype == np.float32
    model = Sequential([layer])
    assert all(g.dtype == np.float32 for g in model.named_grads().values())


def test_embedding_float32():
    emb = built(Embedding(vocab_size=3, dim=2), (4,), np.float32)
    y = emb.forward(np.array([[0, 1, 2, 1]], dtype=np.float32), True)
    assert y.dtype == np.float32
    assert emb.backward(np.ones_like(y)).dtype == np.float32 and emb.grads["W"].dtype == np.float32


def test_registry_and_config_round_trip():
    for name in ("embedding", "sinusoidal_encoding", "positional_embedding", "multi_head_attention", "mha",
                 "transformer_block", "transformer_encoder"):
        assert name in LAYERS
    layer = build_layer({"type": "transformer_encoder", "num_layers": 3, "heads": 4, "activation": "relu"})
    assert type(layer)(**layer.get_config()).get_config() == layer.get_config()
    assert len(layer.children()) == 4


# -- end to end ----------------------------------------------------------------------------


def test_small_transformer_solves_marked_xor_where_an_mlp_stays_at_chance():
    x, y = make_marked_xor(np.random.default_rng(1), n_samples=3000, length=16)
    x = x.astype(np.float32)
    xtr, ytr, xte, yte = x[:2000], y[:2000], x[2000:], y[2000:]
    budget = {"epochs": 6, "lr": 3e-3, "seed": 1}
    transformer = fit(Sequential.from_config([
        {"type": "dense", "units": 16},
        {"type": "transformer_block", "heads": 2, "mlp_units": 32},
        {"type": "global_avg_pool", "data_format": "channels_last"},
        {"type": "dense", "units": 32, "activation": "relu"},
        {"type": "dense", "units": 2},
    ], (16, 2), 1, "float32"), xtr, ytr, **budget)
    mlp = fit(Sequential.from_config([
        {"type": "flatten"},
        {"type": "dense", "units": 128, "activation": "relu"},
        {"type": "dense", "units": 128, "activation": "relu"},
        {"type": "dense", "units": 2},
    ], (16, 2), 1, "float32"), xtr, ytr, **budget)
    acc_tf, acc_mlp = accuracy(transformer, xte, yte), accuracy(mlp, xte, yte)
    assert acc_tf >= 0.95, f"transformer {acc_tf:.3f}, mlp {acc_mlp:.3f}"
    assert acc_mlp <= 0.6, f"transformer {acc_tf:.3f}, mlp {acc_mlp:.3f}"


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype,scale", [(np.float64, 1.0), (np.float64, 300.0), (np.float32, 300.0)])
def test_attention_softmax_with_and_without_the_max_shift(causal, dtype, scale):
    # scale 1: scores far inside exp's range, the unshifted path; 300: scores of several
    # hundred (exp would overflow), the shifted path. Both match the textbook formula.
    rng = np.random.default_rng(7)
    mha = built(MultiHeadAttention(heads=2, causal=causal), (5, 6), dtype=dtype)
    x = rng.standard_normal((3, 5, 6)) * scale
    s = np.einsum("ntd,nsd->nts", x @ mha.query.params["W"].astype(np.float64) + mha.query.params["b"],
                  x @ mha.key.params["W"].astype(np.float64))
    assert (np.abs(s).max() > 200.0) == (scale > 1.0)
    got = mha.forward(x.astype(dtype), False)
    assert got.dtype == dtype and np.isfinite(got).all()
    rtol = 1e-10 if dtype == np.float64 else 2e-3
    want = ref_attention(x, built(MultiHeadAttention(heads=2, causal=causal), (5, 6)))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())
