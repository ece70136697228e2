"""data.augment: each transform's effect, determinism, spec validation, soft targets, and training with it."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nnctl.cli import app
from nnctl.config.spec import load_spec, spec_from_dict
from nnctl.data import iterate_batches
from nnctl.data.augment import (LAYOUTS, TRANSFORMS, Augmenter, batch_rng, describe_entries, gaussian,
                                 normal_quantiles, rotate_images, shift_samples)
from nnctl.engine.losses import get_loss, soft_target_problem
from nnctl.errors import ConfigError, DataError
from nnctl.training.experiment import prepare
from nnctl.training.metrics import MetricAccumulator, evaluate

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()

SHAPES = {"table": (6,), "signals": (2, 9), "sequences": (9, 3), "images": (2, 7, 7)}


def make(name: str, layout: str, **options):
    cls = TRANSFORMS.get(name)
    opts = {k: p.default for k, p in cls.PARAMS.items()}
    opts.update(options)
    return cls(LAYOUTS[layout], **opts)


def batch(layout: str, n: int = 16, dtype=np.float32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n,) + SHAPES[layout]).astype(dtype)


def soft(y: np.ndarray, k: int, dtype=np.float32) -> np.ndarray:
    return Augmenter([], targets="onehot", n_classes=k).soft_targets(y, dtype)


CASES = [(name, layout) for name in sorted(TRANSFORMS.entries) for layout in TRANSFORMS.entries[name].FITS]


# -- every transform ----------------------------------------------------------------------

@pytest.mark.parametrize("name,layout", CASES, ids=[f"{n}-{l}" for n, l in CASES])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shape_dtype_kept_p0_identity_and_same_draws_same_output(name, layout, dtype):
    x = batch(layout, dtype=dtype)
    y = soft(np.arange(16) % 4, 4, dtype)
    t = make(name, layout)
    outs = []
    for _ in range(2):
        xa, ya = x.copy(), y.copy()
        ya = t.apply(xa, ya, batch_rng(7, 1, 2))
        assert xa.shape == x.shape and xa.dtype == dtype
        assert ya.shape == y.shape and ya.dtype == dtype
        outs.append((xa, ya))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    assert not np.array_equal(outs[0][0], x), "the transform changed nothing at its defaults"
    other = x.copy()
    t.apply(other, y.copy(), batch_rng(7, 1, 3))
    assert not np.array_equal(other, outs[0][0]), "another step must draw differently"
    off = make(name, layout, p=0.0)
    xa, ya = x.copy(), y.copy()
    ya = off.apply(xa, ya, batch_rng(7, 1, 2))
    np.testing.assert_array_equal(xa, x)
    np.testing.assert_array_equal(ya, y)


def test_every_registered_transform_fits_some_layout_and_has_a_case():
    assert {n for n, _ in CASES} == set(TRANSFORMS.entries) == {
        "shift", "crop", "flip", "rotate", "scale", "noise", "cutout", "feature_dropout", "mixup", "cutmix"}


def _one_hot_images(n: int, h: int = 7, w: int = 7) -> tuple[np.ndarray, tuple[int, int]]:
    x = np.zeros((n, 1, h, w))
    x[:, 0, 3, 3] = 1.0
    return x, (3, 3)


def test_shift_by_k_moves_a_one_hot_pixel_by_k():
    def shifted(x, offsets, fill):
        out = x.copy()
        shift_samples(out, (2,), [np.array(offsets)], [max(abs(o) for o in offsets)], fill)
        return out

    x = np.zeros((3, 1, 10))
    x[:, 0, 4] = 1.0
    out = shifted(x, [2, -3, 0], "zero")
    assert [int(np.argmax(r[0])) for r in out] == [6, 1, 4]
    assert out.sum() == 3
    # wrap brings a pixel pushed off one end in at the other; zero fill loses it
    np.testing.assert_array_equal(shifted(x[:1], [7], "wrap")[0, 0], np.eye(10)[1])
    assert shifted(x[:1], [7], "zero").sum() == 0
    edge = shifted(np.arange(5.0)[None, None, :], [2], "edge")
    np.testing.assert_array_equal(edge[0, 0], [0, 0, 0, 1, 2])
    # two axes in one gather, channels alike: each sample moves by its own (di, dj)
    img = np.arange(2 * 2 * 4 * 5, dtype=np.float32).reshape(2, 2, 4, 5)
    both = img.copy()
    shift_samples(both, (2, 3), [np.array([1, -2]), np.array([0, 3])], [2, 3], "wrap")
    np.testing.assert_array_equal(both[0], np.roll(img[0], (1, 0), axis=(1, 2)))
    np.testing.assert_array_equal(both[1], np.roll(img[1], (-2, 3), axis=(1, 2)))

    # the transform: every sample's pixel moves by some (di, dj) with |d| <= 2, and all 25 occur
    x, (ci, cj) = _one_hot_images(400)
    make("shift", "images", max=2).apply(x, None, batch_rng(0, 0, 0))
    pos = [np.unravel_index(np.argmax(s[0]), s[0].shape) for s in x]
    moves = {(int(i) - ci, int(j) - cj) for i, j in pos}
    assert moves == {(a, b) for a in range(-2, 3) for b in range(-2, 3)}
    assert np.all(x.sum(axis=(1, 2, 3)) == 1)


def test_shift_fraction_and_crop_stay_within_their_range():
    x, (ci, cj) = _one_hot_images(300)
    make("crop", "images", padding=1).apply(x, None, batch_rng(0, 0, 1))
    pos = [np.unravel_index(np.argmax(s[0]), s[0].shape) for s in x]
    assert {(int(i) - ci, int(j) - cj) for i, j in pos} == {(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)}
    # max 0.2 of a 10-sample axis is 2 samples
    s = np.zeros((300, 1, 10))
    s[:, 0, 5] = 1
    make("shift", "signals", max=0.2).apply(s, None, batch_rng(0, 0, 2))
    assert set(np.argmax(s[:, 0], axis=1) - 5) == {-2, -1, 0, 1, 2}


def test_flip_twice_is_identity_and_flips_the_named_axis():
    x = batch("images")
    once = x.copy()
    make("flip", "images", p=1.0).apply(once, None, batch_rng(0, 0, 0))
    np.testing.assert_array_equal(once, x[..., ::-1])
    make("flip", "images", p=1.0).apply(once, None, batch_rng(0, 0, 1))
    np.testing.assert_array_equal(once, x)
    v = x.copy()
    make("flip", "images", p=1.0, axis=-2).apply(v, None, batch_rng(0, 0, 0))
    np.testing.assert_array_equal(v, x[:, :, ::-1, :])
    seq = batch("sequences")
    out = seq.copy()
    make("flip", "sequences", p=1.0).apply(out, None, batch_rng(0, 0, 0))
    np.testing.assert_array_equal(out, seq[:, ::-1, :])     # sequences mirror time, not features
    half = batch("signals", n=2000)
    flipped = half.copy()
    make("flip", "signals").apply(flipped, None, batch_rng(0, 0, 0))
    changed = np.mean(np.any(flipped != half, axis=(1, 2)))
    assert 0.45 < changed < 0.55                              # p 0.5 per sample


def test_rotate_by_90_degrees_is_rot90_and_keeps_a_constant_image_with_edge_fill():
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 5))
    out = rotate_images(x, np.full(2, np.pi / 2))
    np.testing.assert_allclose(out, np.rot90(x, k=1, axes=(2, 3)), atol=1e-12)   # counter-clockwise as drawn
    const = np.full((4, 1, 6, 6), 2.5)
    np.testing.assert_allclose(rotate_images(const, np.array([0.1, -0.3, 0.7, 1.2]), "edge"), const, atol=1e-12)
    # zero fill: corners rotated in from outside darken; the centre keeps its value
    rot = rotate_images(const, np.full(4, np.pi / 4), "zero")
    assert rot[:, 0, 0, 0].max() < 1.0 and np.allclose(rot[:, 0, 2:4, 2:4], 2.5)
    # within [-degrees, degrees]: 10 degrees leaves a one-hot centre pixel's mass near the centre
    img, _ = _one_hot_images(50)
    make("rotate", "images", degrees=10).apply(img, None, batch_rng(0, 0, 0))
    assert np.all(img[:, 0, 3, 3] > 0.7)


def test_scale_multiplies_each_sample_by_one_factor_in_range():
    x = np.abs(batch("signals", n=200, dtype=np.float64)) + 0.5
    out = x.copy()
    make("scale", "signals", min=0.5, max=2.0).apply(out, None, batch_rng(0, 0, 0))
    ratio = out / x
    per_sample = ratio.reshape(200, -1)
    np.testing.assert_allclose(per_sample, per_sample[:, :1].repeat(per_sample.shape[1], axis=1), rtol=1e-12)
    assert 0.5 <= per_sample.min() and per_sample.max() <= 2.0 and per_sample.std() > 0.3


def test_noise_has_the_requested_std():
    x = np.zeros((4000, 16), dtype=np.float32)
    make("noise", "table", std=0.05).apply(x, None, batch_rng(0, 0, 0))
    assert abs(x.std() - 0.05) < 0.05 * 0.02 and abs(x.mean()) < 0.001
    # 16-bit inverse-CDF sampling: Gaussian in shape too (the shares within 1 and 2 std, the fourth moment), odd sizes
    z = gaussian(np.random.default_rng(3), 100_001, np.float32, 2.0).copy()
    assert z.dtype == np.float32 and z.shape == (100_001,)
    within = [np.mean(np.abs(z) < k * 2.0) for k in (1, 2)]
    assert abs(within[0] - 0.6827) < 0.005 and abs(within[1] - 0.9545) < 0.003
    assert abs(np.mean(z ** 4) / np.mean(z ** 2) ** 2 - 3.0) < 0.06
    q = normal_quantiles()
    assert len(q) == 65536 and np.mean(q * q) == pytest.approx(1.0, rel=1e-12)
    np.testing.assert_array_equal(q[::-1], -q)
    assert np.all(np.diff(q) > 0) and 4.3 < -q[0] < 4.4


@pytest.mark.parametrize("name,layout", [c for c in CASES if c[0] != "feature_dropout"],
                         ids=[f"{n}-{l}" for n, l in CASES if n != "feature_dropout"])
def test_p_leaves_the_other_samples_exactly_as_they_are(name, layout):
    """A sample p does not pick gets identity parameters (offset 0, angle 0, factor 1, no box,
    partner share 0): it comes out bit for bit, about half of them at p 0.5."""
    x = batch(layout, n=400, dtype=np.float64)
    y = soft(np.arange(400) % 4, 4, np.float64)
    xa, ya = x.copy(), y.copy()
    ya = make(name, layout, p=0.5).apply(xa, ya, batch_rng(0, 0, 0))
    same = np.all((xa == x).reshape(400, -1), axis=1)
    assert 0.4 < same.mean() < 0.62
    np.testing.assert_array_equal(ya[same], y[same])


@pytest.mark.parametrize("name,options,layout", [
    ("shift", {"fill": "zero"}, "images"), ("shift", {"fill": "edge"}, "signals"),
    ("crop", {"fill": "wrap", "padding": 2}, "sequences"), ("rotate", {"fill": "zero"}, "images"),
    ("rotate", {"fill": "edge"}, "images"), ("noise", {}, "signals"), ("cutmix", {}, "images"),
    ("mixup", {}, "table"), ("feature_dropout", {}, "table")])
def test_kept_scratch_arrays_do_not_leak_between_batches(name, options, layout):
    """A transform keeps scratch arrays per batch shape; reusing one across batches of other
    shapes and contents gives what a fresh transform gives."""
    reused = make(name, layout, **options)
    for step, n in enumerate([16, 5, 16, 5, 16]):
        x = batch(layout, n=n, seed=step)
        y = soft(np.arange(n) % 4, 4)
        before, want_x, fresh_y = x.copy(), x.copy(), y.copy()
        fresh_y = make(name, layout, **options).apply(want_x, fresh_y, batch_rng(1, 0, step))
        got_y = reused.apply(x, y, batch_rng(1, 0, step))
        assert not np.array_equal(x, before)       # the transform did something to compare
        np.testing.assert_array_equal(x, want_x)
        np.testing.assert_array_equal(got_y, fresh_y)


def test_cutout_zeroes_one_box_of_the_given_size():
    x = np.ones((500, 1, 10, 10))
    make("cutout", "images", size=4, p=1.0).apply(x, None, batch_rng(0, 0, 0))
    zeros = (x == 0).sum(axis=(1, 2, 3))
    assert zeros.max() == 16 and zeros.min() >= 4         # a 4x4 square, clipped at the border
    for s in x[:50, 0]:
        rows, cols = np.nonzero(s == 0)
        assert len(rows) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)   # a rectangle
    sig = np.ones((300, 2, 20))
    make("cutout", "signals", size=0.25).apply(sig, None, batch_rng(0, 0, 1))
    assert np.array_equal(sig[:, 0], sig[:, 1])           # a segment of time, across every channel
    hit = np.any(sig == 0, axis=(1, 2))
    assert 0.4 < hit.mean() < 0.6 and (sig == 0).sum(axis=2)[hit, 0].max() == 5


def test_feature_dropout_zeroes_features_with_probability_p():
    x = np.ones((3000, 20))
    make("feature_dropout", "table", p=0.1).apply(x, None, batch_rng(0, 0, 0))
    assert abs((x == 0).mean() - 0.1) < 0.01 and set(np.unique(x)) == {0.0, 1.0}
    seq = np.ones((500, 6, 4))
    make("feature_dropout", "sequences", p=0.3).apply(seq, None, batch_rng(0, 0, 0))
    assert np.all(seq.min(axis=1) == seq.max(axis=1))     # a feature is dropped at every step


def test_noise_then_feature_dropout_on_a_table_run_as_one_step_with_both_effects():
    aug = Augmenter([make("noise", "table", std=0.5), make("feature_dropout", "table", p=0.2)], LAYOUTS["table"])
    assert len(aug._steps) == 1                           # fused: one draw for both
    x = np.full((3000, 20), 3.0, dtype=np.float32)
    xa, _ = aug(x.copy(), None, batch_rng(0, 0, 0))
    dropped = xa == 0
    assert abs(dropped.mean() - 0.2) < 0.01
    kept = xa[~dropped] - 3.0
    assert abs(kept.std() - 0.5) < 0.5 * 0.02 and abs(kept.mean()) < 0.01
    # p so close to 1 that one 16-bit level is left: everything dropped, nothing undefined
    nearly_all = Augmenter([make("noise", "table"), make("feature_dropout", "table", p=0.99999)], LAYOUTS["table"])
    out, _ = nearly_all(np.ones((50, 4), np.float32), None, batch_rng(0, 0, 0))
    assert np.isfinite(out).all() and (out == 0).mean() > 0.9
    again, _ = aug(x.copy(), None, batch_rng(0, 0, 0))
    np.testing.assert_array_equal(again, xa)
    # not fused: another order, p < 1, or sequences
    for items, layout in ((["feature_dropout", "noise"], "table"), (["noise", "feature_dropout"], "sequences")):
        assert len(Augmenter([make(n, layout) for n in items], LAYOUTS[layout])._steps) == 2
    assert len(Augmenter([make("noise", "table", p=0.5), make("feature_dropout", "table")])._steps) == 2


def test_mixup_targets_sum_to_one_and_equal_the_mix_weights():
    n, k = 64, 64
    x = np.eye(n)[:, :, None] * np.ones((1, 1, 3))        # sample i is the indicator of position i
    x = x.transpose(0, 2, 1).copy()                       # sequences (N, T=3, F=64)
    labels = np.arange(n) % k
    y = soft(labels, k, np.float64)
    y = make("mixup", "sequences", alpha=0.4).apply(x, y, batch_rng(1, 0, 0))
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-12)
    assert soft_target_problem(y) is None
    # each row's input weights (recovered from x) are its target's weights
    np.testing.assert_allclose(x[:, 0, :], y, atol=1e-12)
    mixed = y.max(axis=1) < 1
    assert mixed.mean() > 0.8


def test_cutmix_targets_follow_the_pasted_area():
    n, k = 40, 40
    x = np.ones((n, 1, 8, 8)) * np.arange(n)[:, None, None, None]
    y = soft(np.arange(n), k, np.float64)
    y = make("cutmix", "images", alpha=1.0).apply(x, y, batch_rng(2, 0, 0))
    np.testing.assert_allclose(y.sum(axis=1), 1.0)
    for i in range(n):
        share = np.bincount(x[i].astype(int).ravel(), minlength=n) / 64.0
        np.testing.assert_allclose(y[i], share, atol=1e-12)
    assert np.mean(y.max(axis=1) < 1) > 0.5


def test_binary_and_regression_targets_mix_as_values():
    aug = Augmenter([make("mixup", "table")], LAYOUTS["table"], targets="binary")
    x = np.zeros((32, 2))
    _, y = aug(x, np.arange(32) % 2, batch_rng(0, 0, 0))
    assert y.dtype == np.float64 and y.shape == (32,) and np.all((0 <= y) & (y <= 1)) and 0 < y[0] < 1
    np.testing.assert_allclose(y[0::2] + y[1::2], 1.0, rtol=1e-12)    # an odd offset pairs a 0 with a 1
    # regression values mix like the inputs: sample i with sample i + k (mod n), one weight per batch
    aug = Augmenter([make("mixup", "table", alpha=1.0, allow_regression=True)], LAYOUTS["table"], targets="values")
    offsets = set()
    for step in range(6):
        x = np.arange(32.0)[:, None] * np.ones((1, 2))
        _, y = aug(x, np.arange(32.0), batch_rng(0, 0, step))
        np.testing.assert_array_equal(y, x[:, 0])
        d = y - np.arange(32.0)                           # w k for i < n - k, w (k - n) after
        w = (d[0] - d[-1]) / 32
        k = int(np.rint(d[0] / w))
        assert 0 < w < 1 and 1 <= k <= 31
        np.testing.assert_allclose(y, (1 - w) * np.arange(32.0) + w * np.roll(np.arange(32.0), -k), atol=1e-12)
        offsets.add(k)
    assert len(offsets) >= 4


def test_augmenter_is_a_pure_function_of_seed_epoch_step():
    aug = Augmenter([make("noise", "table"), make("mixup", "table")], LAYOUTS["table"], "onehot", 3)
    x = batch("table")
    y = np.arange(16) % 3
    a = aug.for_epoch(5, 2)(4, x.copy(), y)
    b = aug.for_epoch(5, 2)(4, x.copy(), y)
    c = aug.for_epoch(5, 3)(4, x.copy(), y)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert Augmenter().for_epoch(0, 0) is None


@pytest.mark.parametrize("targets,y", [("onehot", np.arange(16) % 3), ("binary", np.random.default_rng(3).integers(0, 2, 16).astype(float)),
                                       ("values", np.linspace(0, 1, 32).reshape(16, 2))])
def test_an_epoch_writes_soft_targets_into_one_buffer_with_the_values_of_a_fresh_call(targets, y):
    """for_epoch reuses one soft-target buffer per batch size; each batch's targets still
    equal those of a direct call, which returns a new array."""
    make_aug = lambda: Augmenter([make("noise", "table"), make("feature_dropout", "table"),
                                  make("mixup", "table", allow_regression=True)], LAYOUTS["table"], targets, 3)
    aug = make_aug().for_epoch(5, 2)
    seen = []
    for step, n in enumerate([16, 16, 7]):
        x = batch("table", n=n, seed=step)
        want_x, want_y = make_aug()(x.copy(), y[:n].copy(), batch_rng(5, 2, step))
        got_x, got_y = aug(step, x, y[:n])
        np.testing.assert_array_equal(got_x, want_x)
        np.testing.assert_array_equal(got_y, want_y)
        assert not np.array_equal(got_y, make_aug().soft_targets(y[:n], x.dtype))   # mixed
        seen.append(got_y)
    assert seen[0] is seen[1] and seen[2] is not seen[0]


def test_batches_augmented_ahead_in_a_group_equal_those_augmented_one_by_one():
    """iterate_batches augments a group of batches before yielding them (augment_group); each
    batch, the last partial one too, equals its augmentation alone, though for_epoch writes
    every batch's soft targets into one buffer."""
    from nnctl.data.batching import augment_group
    from nnctl.data.splits import Split
    x = np.random.default_rng(0).standard_normal((100, 6)).astype(np.float32)
    y = np.arange(100) % 3
    aug = Augmenter([make("noise", "table"), make("feature_dropout", "table"), make("mixup", "table")],
                    LAYOUTS["table"], "onehot", 3)
    assert augment_group(8, 6 * 4) == 32 and augment_group(1 << 16, 4) == 1
    split = Split(x, y, None)
    got = [(a.copy(), b.copy()) for a, b in
           iterate_batches(split, 8, np.random.default_rng(1), np.float32, augment=aug.for_epoch(3, 1))]
    plain = iterate_batches(split, 8, np.random.default_rng(1), np.float32)
    one = aug.for_epoch(3, 1)
    assert len(got) == 13
    for step, (xb, yb) in enumerate(plain):
        want_x, want_y = one(step, xb.copy(), yb.copy())
        np.testing.assert_array_equal(got[step][0], want_x)
        np.testing.assert_array_equal(got[step][1], want_y)
    assert not np.array_equal(got[0][1], got[1][1])


# -- soft targets in the loss and the metrics ---------------------------------------------

def _central_diff(f, z, h=1e-6):
    g = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[idx] += h
        zm[idx] -= h
        g[idx] = (f(zp) - f(zm)) / (2 * h)
    return g


@pytest.mark.parametrize("opts", [{}, {"label_smoothing": 0.1}, {"class_weights": [1.0, 3.0, 0.5, 2.0]},
                                  {"label_smoothing": 0.2, "class_weights": [0.2, 1.0, 4.0, 1.0]}])
def test_soft_target_cross_entropy_gradient_matches_central_differences(opts):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((6, 4)) * 2
    q = rng.dirichlet(np.ones(4), size=6)
    loss = get_loss({"name": "cross_entropy", **opts})
    value, dz = loss(z, q)
    assert value == pytest.approx(loss.value(z, q), rel=1e-12)
    num = _central_diff(lambda zz: loss.value(zz, q), z)
    assert np.max(np.abs(dz - num)) / max(np.max(np.abs(num)), 1e-12) < 1e-7


def test_soft_target_cross_entropy_by_hand_and_one_hot_equals_labels():
    z = np.array([[1.0, 2.0, 0.0]])
    q = np.array([[0.25, 0.75, 0.0]])
    lse = np.log(np.exp(1) + np.exp(2) + 1)
    assert get_loss("cross_entropy").value(z, q) == pytest.approx(lse - (0.25 * 1 + 0.75 * 2), rel=1e-12)
    # smoothing 0.3: q' = 0.7 q + 0.1; class weights: the expected weight 0.25 * 2 + 0.75 * 4 = 3.5 (one sample: cancels)
    ls = get_loss({"name": "cross_entropy", "label_smoothing": 0.3, "class_weights": [2.0, 4.0, 1.0]})
    assert ls.value(z, q) == pytest.approx(lse - (0.7 * (0.25 + 1.5) + 0.1 * 3.0), rel=1e-12)
    rng = np.random.default_rng(1)
    z = rng.standard_normal((10, 5))
    y = rng.integers(0, 5, 10)
    for opts in ({}, {"label_smoothing": 0.1, "class_weights": [1, 2, 3, 4, 5]}):
        loss = get_loss({"name": "cross_entropy", **opts})
        hard, soft_ = loss(z, y), loss(z, np.eye(5)[y])
        assert hard[0] == pytest.approx(soft_[0], rel=1e-12)
        np.testing.assert_allclose(hard[1], soft_[1], rtol=1e-12, atol=1e-15)


def test_soft_targets_that_are_not_distributions_are_named():
    assert soft_target_problem(np.array([[0.5, 0.6, 0.0], [1.0, 0.0, 0.0]])) == \
        "each row of soft targets must sum to 1, got 1.1"
    for bad in (np.array([[1.5, -0.5, 0.0], [1.0, 0.0, 0.0]]), np.array([[np.nan, 1.0], [1.0, 0.0]]),
                np.array([[np.inf, 0.0], [1.0, 0.0]])):
        assert soft_target_problem(bad) == "soft targets must be finite probabilities >= 0"
    assert soft_target_problem(np.eye(3)) is None
    assert soft_target_problem(np.zeros((0, 3))) is None


def test_training_accuracy_counts_the_dominant_label_of_soft_targets():
    acc = MetricAccumulator("classification")
    z = np.array([[3.0, 0.0], [0.0, 3.0], [3.0, 0.0]])
    acc.update(0.5, z, np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7]]))
    assert acc.result()["accuracy"] == pytest.approx(1 / 3)
    binary = MetricAccumulator("classification")
    binary.update(0.5, np.array([[2.0], [-1.0]]), np.array([0.9, 0.8]))
    assert binary.result()["accuracy"] == 0.5


# -- the spec -----------------------------------------------------------------------------

def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


DIGITS = """\
seed: 0
data:
  dataset: digits
  shape: [1, 8, 8]
  standardize: global
  augment:
{augment}
model:
  layers: [flatten, {{dense: {{units: 16, activation: relu}}}}]
training: {{epochs: 2, batch_size: 64}}
"""


def digits_spec(tmp_path, augment: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(DIGITS.format(augment=textwrap.indent(textwrap.dedent(augment), "    ")))
    return path


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as err:
        prepare(load_spec(path))
    return str(err.value)


def test_unknown_names_and_option_ranges_name_the_key_and_line(tmp_path):
    path = digits_spec(tmp_path, """\
        - shfit: {max: 2}
        - noise: {std: -1}
        - flip: {axiss: 1}
        """)
    assert config_error(path).splitlines() == [
        "data.augment[0]: unknown augmentation 'shfit'; did you mean 'shift'? valid: crop, cutmix, cutout, "
        "feature_dropout, flip, mixup, noise, rotate, scale, shift (spec.yaml line 7)",
        "data.augment[1].noise.std: must be > 0, got -1 (spec.yaml line 8)",
        "data.augment[2].flip.axiss: unknown key 'axiss'; did you mean 'axis'? valid: axis, p (spec.yaml line 9)",
    ]


@pytest.mark.parametrize("augment,data_extra,loss,message", [
    ("- shift: {max: 2}", "dataset: iris", None,
     "data.augment[0].shift: does not apply to table (N, F) (samples [4]); it applies to signals (N, C, L), "
     "sequences (N, T, F), images (N, C, H, W) (spec.yaml line 4)"),
    ("- rotate: {degrees: 5}", "dataset: sine\n  shape: [1, 1]\n  layout: signals", "mse",
     "data.augment[0].rotate: does not apply to signals (N, C, L) (samples [1, 1]); it applies to images "
     "(N, C, H, W) (spec.yaml line 6)"),
    ("- mixup: {alpha: 0.2}", "dataset: sine", "mse",
     "data.augment[0].mixup: mixes targets, and mse is a regression loss; set allow_regression: true to mix "
     "regression targets (spec.yaml line 4)"),
    ("- noise: {std: 0.1}", "dataset: digits\n  shape: [8, 8]", None,
     "data.augment: samples [8, 8] may be signals (C, L) or sequences (T, F); set data.layout: signals or "
     "sequences (spec.yaml line 4)"),
    ("- shift: {max: 8}", "dataset: digits\n  shape: [1, 8, 8]", None,
     "data.augment[0].shift.max: 8 samples is not smaller than axis H (8) (spec.yaml line 5)"),
    ("- shift: {max: 1.5}", "dataset: digits\n  shape: [1, 8, 8]", None,
     "data.augment[0].shift.max: must be a whole number of samples or a fraction < 1, got 1.5 (spec.yaml line 5)"),
    ("- flip: {axis: 0}", "dataset: digits\n  shape: [1, 8, 8]", None,
     "data.augment[0].flip.axis: 0 is axis C of images (N, C, H, W); flip a spatial axis: -2 (H), -1 (W) "
     "(spec.yaml line 5)"),
    ("- scale: {min: 2, max: 1}", "dataset: digits", None,
     "data.augment[0].scale.min: 2 is larger than max (1) (spec.yaml line 4)"),
    ("- noise: {std: 0.1}", "dataset: digits\n  layout: images", None,
     "data.layout: images samples have 3 axes (C, H, W), the data's samples are [64] (spec.yaml line 3)"),
])
def test_transforms_that_do_not_fit_the_data_are_errors(tmp_path, augment, data_extra, loss, message):
    text = (f"data:\n  {data_extra}\n  augment:\n    {augment}\n" + (f"loss: {loss}\n" if loss else "")
            + "model: {layers: [flatten]}\n")
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    assert config_error(path) == message


def test_allow_regression_and_layouts_from_the_model(tmp_path):
    path = write(tmp_path, """\
        data: {dataset: sine, augment: [{mixup: {allow_regression: true}}, noise]}
        """)
    exp = prepare(load_spec(path))
    assert exp.augmenter.targets == "values" and exp.augmenter.layout.name == "table"
    sig = write(tmp_path, """\
        data: {dataset: digits, shape: [4, 16], augment: [shift]}
        model: {layers: [{conv1d: {filters: 2, kernel_size: 3}}, flatten]}
        """, "sig.yaml")
    exp = prepare(load_spec(sig))
    assert exp.augmenter.describe() == [
        "augment (signals (N, C, L), as conv1d reads it), training batches only:",
        "  1. shift: L by up to 2, zero fill"]
    seq = write(tmp_path, """\
        data: {dataset: digits, shape: [8, 8], augment: [cutout]}
        model: {layers: [{gru: {units: 4}}]}
        """, "seq.yaml")
    assert prepare(load_spec(seq)).augmenter.layout.name == "sequences"


def test_resolved_spec_round_trips_with_every_option(tmp_path):
    spec = load_spec(digits_spec(tmp_path, "- shift\n- {flip: null}\n- mixup: {alpha: 0.4}\n"))
    assert describe_entries(spec.data["augment"]) == "shift, flip, mixup(alpha=0.4)"
    assert describe_entries([{"warp": {}}, "noise", {"crop": {"padding": 1}}]) == "{'warp': {}}, 'noise', crop(padding=1)"
    assert describe_entries({"shift": {}}) == ""
    assert spec.data["augment"] == [{"shift": {"max": 2, "fill": "zero", "p": 1.0}},
                                    {"flip": {"axis": None, "p": 0.5}},
                                    {"mixup": {"alpha": 0.4, "p": 1.0, "allow_regression": False}}]
    assert spec_from_dict(spec.to_dict()).data["augment"] == spec.data["augment"]


# -- in training ---------------------------------------------------------------------------

def test_only_training_batches_are_augmented_and_eval_is_unchanged(tmp_path):
    exp = prepare(load_spec(digits_spec(tmp_path, "- noise: {std: 1.0}\n- mixup: {alpha: 1.0}\n")))
    plain = prepare(load_spec(digits_spec(tmp_path, "[]")))
    split, dtype = exp.dataset.train, exp.dtype
    aug = exp.augmenter.for_epoch(0, 0)
    xa, ya = next(iterate_batches(split, 32, None, dtype, exp.standardizer, augment=aug))
    xp, yp = next(iterate_batches(split, 32, None, dtype, exp.standardizer))
    assert ya.shape == (32, 10) and yp.shape == (32,)
    assert np.abs(xa - xp).std() > 0.3        # noise of std 1, mixed: std >= 0.7 before the abs
    # same weights: every evaluation of the augmented run equals that of the plain one
    plain.model.load_state_dict(exp.model.state_dict())
    for part in ("val", "test"):
        a = evaluate(exp.model, exp.loss, getattr(exp.dataset, part), exp.standardizer, 100, "classification", dtype)
        b = evaluate(plain.model, plain.loss, getattr(plain.dataset, part), plain.standardizer, 100,
                     "classification", dtype)
        assert a == b


def test_a_trained_run_evaluates_like_the_same_weights_without_augment(tmp_path):
    path = digits_spec(tmp_path, "- shift: {max: 1}\n- cutmix: {alpha: 1.0}\n")
    res = runner.invoke(app, ["train", str(path), "--runs-dir", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    # the train header and `nnctl show` list the augmentations
    assert ("augment (images (N, C, H, W)), training batches only:\n  1. shift: H, W by up to 1, zero fill\n"
            "  2. cutmix: pastes a partner's box over H, W; soft targets by area\n") in res.output
    run = next((tmp_path / "runs").iterdir())
    res = runner.invoke(app, ["show", str(run)])
    assert res.exit_code == 0, res.output
    assert "augment (training batches only): shift(max=1), cutmix\n" in res.output
    res = runner.invoke(app, ["eval", str(run), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    from nnctl.runs.checkpoint import load_checkpoint
    plain = prepare(load_spec(digits_spec(tmp_path, "[]")))
    plain.model.load_state_dict(load_checkpoint(run / "checkpoints" / "best.npz").model_state)
    want = evaluate(plain.model, plain.loss, plain.dataset.test, plain.standardizer, 1024, "classification",
                    plain.dtype)
    assert got["accuracy"] == want["accuracy"] and got["loss"] == pytest.approx(want["loss"], rel=1e-6)


RESUME = """\
    name: resume-augment
    seed: 4
    data:
      dataset: digits
      shape: [1, 8, 8]
      standardize: global
      augment: [{shift: {max: 1}}, {rotate: {degrees: 8, p: 0.5}}, {noise: {std: 0.1}}, {mixup: {alpha: 0.4}}]
    model: {layers: [flatten, {dense: {units: 16, activation: relu}}, {dropout: 0.1}]}
    optimizer: {name: adam, lr: 0.01}
    training: {epochs: 4, batch_size: 128, dtype: float64, early_stopping: {monitor: val_loss, patience: 100}}
    """


def test_resume_with_augmentation_equals_uninterrupted(tmp_path):
    from nnctl.runs.checkpoint import load_checkpoint, save_checkpoint
    from nnctl.runs.store import RunDir
    spec = write(tmp_path, RESUME)
    full_dir, part_dir = tmp_path / "full", tmp_path / "part"
    assert runner.invoke(app, ["train", str(spec), "-q", "--runs-dir", str(full_dir)]).exit_code == 0
    res = runner.invoke(app, ["train", str(spec), "-q", "--runs-dir", str(part_dir), "--set", "training.epochs=2"])
    assert res.exit_code == 0, res.output
    run = next(part_dir.iterdir())
    ckpt_path = run / "checkpoints" / "last.npz"
    ckpt = load_checkpoint(ckpt_path)
    ckpt.meta["config"]["training"]["epochs"] = 4
    save_checkpoint(ckpt_path, {k: v for k, v in ckpt.meta.items()
                                if k not in ("format", "format_version", "nnctl_version")}, ckpt.arrays)
    RunDir(run).write_config(ckpt.meta["config"])  # config.yaml says so too, or resume refuses the edit
    (run / "status.json").write_text(json.dumps({"status": "interrupted"}))
    res = runner.invoke(app, ["train", "--resume", str(run), "-q"])
    assert res.exit_code == 0, res.output
    full = json.loads((next(full_dir.iterdir()) / "history.json").read_text())
    resumed = json.loads((run / "history.json").read_text())
    strip = [[v for k, v in r.items() if k != "seconds"] for r in resumed]
    assert [r["epoch"] for r in resumed] == [1, 2, 3, 4]
    assert strip == [[v for k, v in r.items() if k != "seconds"] for r in full]
    # and augmentation did change training: the same spec without it has another history
    plain_dir = tmp_path / "plain"
    runner.invoke(app, ["train", str(spec), "-q", "--runs-dir", str(plain_dir), "--set", "data.augment=[]"])
    plain = json.loads((next(plain_dir.iterdir()) / "history.json").read_text())
    assert plain[0]["loss"] != full[0]["loss"]


def _shifted_digits(tmp_path: Path) -> tuple[Path, Path]:
    """Digits split into 600 training rows as shipped and 500 test rows each shifted by -1, 0 or +1
    pixel along both axes (np.roll with the wrapped row/column blanked: independent of nnctl's shift)."""
    raw = np.loadtxt(ROOT / "datasets" / "digits.csv", delimiter=",", skiprows=1)
    x, y = raw[:, :-1], raw[:, -1].astype(np.int64)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    tr, te = order[:600], order[600:1100]
    img = x[te].reshape(-1, 8, 8)
    moved = np.zeros_like(img)
    for i, (di, dj) in enumerate(rng.integers(-1, 2, (len(te), 2))):
        m = np.roll(img[i], (di, dj), axis=(0, 1))
        if di:
            m[0 if di > 0 else -1, :] = 0
        if dj:
            m[:, 0 if dj > 0 else -1] = 0
        moved[i] = m
    np.savez(tmp_path / "train.npz", x=x[tr], y=y[tr])
    np.savez(tmp_path / "test.npz", x=moved.reshape(-1, 64), y=y[te])
    return tmp_path / "train.npz", tmp_path / "test.npz"


def test_shift_augmentation_helps_on_shifted_test_digits(tmp_path):
    """The shipped digits are centred, so shifting training digits does not help on their own test
    split (measured: 0.949 -> 0.951 test accuracy with an MLP, 3 seeds, 40 epochs). It must help
    when the test digits are moved by a pixel: mean test accuracy over 3 seeds (8 epochs) rises by
    >= 0.15 (measured: 0.385 -> 0.627)."""
    _shifted_digits(tmp_path)
    means = {}
    for augment in ("[]", "[{shift: {max: 1}}]"):
        accs = []
        for seed in range(3):
            spec = write(tmp_path, f"""\
                seed: {seed}
                data: {{dataset: train.npz, test_path: test.npz, shape: [1, 8, 8], standardize: global,
                       val_split: 0.0, augment: {augment}}}
                model: {{layers: [flatten, {{dense: {{units: 64, activation: relu}}}}]}}
                optimizer: {{name: adam, lr: 0.003}}
                training: {{epochs: 8, batch_size: 32}}
                """)
            runs = tmp_path / f"runs-{len(means)}-{seed}"
            res = runner.invoke(app, ["train", str(spec), "-q", "--runs-dir", str(runs)])
            assert res.exit_code == 0, res.output
            accs.append(json.loads((next(runs.iterdir()) / "metrics.json").read_text())["test"]["test_accuracy"])
        means[augment] = float(np.mean(accs))
    assert means["[{shift: {max: 1}}]"] >= means["[]"] + 0.15, means


def test_rotate_augmentation_helps_a_small_cnn_on_the_digits_own_test_split(tmp_path):
    """A small CNN trained on 10% of the shipped digits (val_split 0, test_split 0.9: ~180
    training rows, the other ~1617 its test split) generalizes better with `rotate: {degrees: 10}`.
    Measured over seeds 0-4 at 100 epochs: test accuracy 0.918/0.953/0.928/0.905/0.930 without,
    0.927/0.960/0.934/0.918/0.938 with: every seed gains 0.006 to 0.013. The test takes seeds 0-2
    and asks each to gain >= 0.003 (about 5 test digits) and their mean to gain >= 0.005.
    (Shift and crop did not help here: the shipped digits are centred, and a one-pixel move is an
    eighth of the image.)"""
    gains = []
    for seed in range(3):
        accs = []
        for augment in ("[]", "[{rotate: {degrees: 10}}]"):
            spec = write(tmp_path, f"""\
                seed: {seed}
                data: {{dataset: digits, shape: [1, 8, 8], standardize: global, val_split: 0.0,
                       test_split: 0.9, augment: {augment}}}
                model: {{layers: [{{conv2d: {{filters: 8, kernel_size: 3, padding: same, activation: relu}}}},
                                  {{maxpool2d: {{size: 2}}}}, flatten]}}
                optimizer: {{name: adam, lr: 0.003}}
                training: {{epochs: 100, batch_size: 32}}
                """)
            runs = tmp_path / f"runs-{seed}-{len(accs)}"
            res = runner.invoke(app, ["train", str(spec), "-q", "--runs-dir", str(runs)])
            assert res.exit_code == 0, res.output
            metrics = json.loads((next(runs.iterdir()) / "metrics.json").read_text())["test"]
            accs.append(metrics["test_accuracy"])
        gains.append(accs[1] - accs[0])
    assert min(gains) >= 0.003 and float(np.mean(gains)) >= 0.005, gains


# -- the CLI ---------------------------------------------------------------------------------

def test_validate_lists_the_augmentations_and_their_axes(tmp_path):
    path = digits_spec(tmp_path, "- crop: {padding: 1}\n- flip: {axis: -2}\n- cutmix: {p: 0.5}\n")
    res = runner.invoke(app, ["validate", str(path)])
    assert res.exit_code == 0, res.output
    assert ("augment (images (N, C, H, W)), training batches only:\n"
            "  1. crop: H, W: pad 1 (zero), crop back\n"
            "  2. flip: mirrors H, p 0.5\n"
            "  3. cutmix: pastes a partner's box over H, W; soft targets by area, p 0.5\n") in res.output


def test_augment_preview_draws_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="augment-preview needs the plot extra")
    path = digits_spec(tmp_path, "- shift: {max: 1}\n- cutout: {size: 3}\n")
    out = tmp_path / "grid.png"
    res = runner.invoke(app, ["augment-preview", str(path), "--out", str(out), "-n", "5", "--dpi", "50"])
    assert res.exit_code == 0, res.output
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (5 * 80, 2 * 80)      # 5 columns x 2 rows of 1.6-inch cells at 50 dpi
    empty = digits_spec(tmp_path, "[]")
    res = runner.invoke(app, ["augment-preview", str(empty), "--out", str(tmp_path / "no.png")])
    assert res.exit_code == 1 and "data.augment is empty; nothing to preview" in res.output
    assert not (tmp_path / "no.png").exists()
