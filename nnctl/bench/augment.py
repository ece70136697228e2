"""`python -m nnctl.bench.augment`: what data augmentation adds to a training epoch.

Two workloads, each trained by the same loop as the trainer (iterate_batches, forward,
loss, backward, Adam) with and without a typical augmentation list:

- a small 1-D CNN on signals (N, 1, 128): conv1d(8, k5) → maxpool → conv1d(16, k5) →
  global average pool → dense(4), with shift, flip, scale, noise, cutout and mixup;
- an MLP 32-64-64-4 on a table (N, 32), with noise, feature_dropout and mixup.

Epochs with and without augmentation alternate and each condition keeps its fastest epoch,
so load from other processes on a shared machine hits both alike. Then each transform is
timed alone on the same batches, as a share of the plain epoch. The issue's budget: at
most +50% epoch time for the CNN, far less for the MLP.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from nnctl import threads
from nnctl.bench import say
from nnctl.data.augment import LAYOUTS, TRANSFORMS, Augmenter
from nnctl.data.batching import iterate_batches
from nnctl.data.splits import Split
from nnctl.engine.losses import CrossEntropy
from nnctl.engine.model import Sequential
from nnctl.engine.optimizers import Adam

CNN_AUGMENT = [("shift", {"max": 8}), ("flip", {}), ("scale", {}), ("noise", {"std": 0.1}),
               ("cutout", {"size": 16}), ("mixup", {"alpha": 0.2})]
MLP_AUGMENT = [("noise", {"std": 0.1}), ("feature_dropout", {"p": 0.1}), ("mixup", {"alpha": 0.2})]


def augmenter(layout: str, items: list[tuple[str, dict]], n_classes: int) -> Augmenter:
    transforms = []
    for name, options in items:
        cls = TRANSFORMS.get(name)
        opts = {k: p.default for k, p in cls.PARAMS.items()}
        transforms.append(cls(LAYOUTS[layout], **{**opts, **options}))
    return Augmenter(transforms, LAYOUTS[layout], "onehot", n_classes)


def epoch_seconds(model: Sequential, split: Split, batch: int, aug, epoch: int) -> float:
    loss, opt = CrossEntropy(), Adam(lr=1e-3)
    params, grads = model.named_parameters(), model.named_grads()
    t = time.perf_counter()
    rng = np.random.default_rng([0, 1, epoch])
    for xb, yb in iterate_batches(split, batch, rng, np.float32, None,
                                  augment=None if aug is None else aug.for_epoch(0, epoch)):
        _, dz = loss(model.forward(xb, training=True), yb)
        model.backward(dz)
        opt.step(params, grads)
    return time.perf_counter() - t


def augment_seconds(aug: Augmenter, x: np.ndarray, y: np.ndarray, batch: int, repeats: int) -> float:
    """The fastest of `repeats` passes of the augmentation alone over x's batches (no training).

    Each batch is copied into one reused buffer first, as iterate_batches does, so only the
    transforms are timed.
    """
    buf = np.empty((batch,) + x.shape[1:], dtype=x.dtype)
    times = []
    for r in range(repeats):
        f = aug.for_epoch(0, r)
        t = time.perf_counter()
        for step, start in enumerate(range(0, len(x), batch)):
            xb = buf[:len(x[start:start + batch])]
            np.copyto(xb, x[start:start + batch])
            f(step, xb, y[start:start + batch])
        times.append(time.perf_counter() - t)
    return min(times)


def measure(name: str, specs: list[dict], shape: tuple[int, ...], layout: str, items: list[tuple[str, dict]],
            n: int, batch: int, repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n,) + shape).astype(np.float32)
    y = rng.integers(0, 4, n)
    split = Split(x, y, None)
    aug = augmenter(layout, items, 4)
    model = Sequential.from_config(specs, shape, np.random.default_rng([0, 0]), np.float32)
    epoch_seconds(model, split, batch, aug, 0)          # warm up caches and workspaces
    plain, augmented = [], []
    for r in range(repeats):
        plain.append(epoch_seconds(model, split, batch, None, r))
        augmented.append(epoch_seconds(model, split, batch, aug, r))
    best_plain, best_aug = min(plain), min(augmented)
    alone = augment_seconds(aug, x, y, batch, repeats)
    say(f"{name}: epoch of {n} samples, batch {batch}: {best_plain:.3f} s without augmentation, "
        f"{best_aug:.3f} s with ({100 * (best_aug / best_plain - 1):+.1f}%); augmentation alone "
        f"{alone:.3f} s ({100 * alone / best_plain:.1f}% of the plain epoch); fastest of {repeats}")
    out = {"plain": best_plain, "augmented": best_aug, "alone": alone}
    for item in items:
        # one transform alone: a mixing one turns the labels into soft targets, counted with it
        one = augment_seconds(augmenter(layout, [item], 4), x, y, batch, repeats)
        say(f"  {item[0]:<16} {1e6 * one / -(-n // batch):6.1f} us a batch, "
            f"{100 * one / best_plain:5.1f}% of the plain epoch")
        out[item[0]] = one
    return out


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096, help="samples per CNN epoch (the MLP's: 8x)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5, help="epochs per condition (the fastest counts)")
    ap.add_argument("--threads", type=int, default=None, help="BLAS threads (default: as `nnctl train` chooses)")
    args = ap.parse_args(argv)
    choice = threads.choose(args.threads, None)
    with threads.limited(choice.threads, choice.source):
        say(f"BLAS {threads.blas_name()}, threads {choice.threads} ({choice.source})")
        return _run(args)


def _run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    cnn = [{"type": "conv1d", "filters": 8, "kernel_size": 5, "padding": "same", "activation": "relu"},
           {"type": "maxpool1d", "size": 2},
           {"type": "conv1d", "filters": 16, "kernel_size": 5, "padding": "same", "activation": "relu"},
           {"type": "global_avg_pool"}, {"type": "dense", "units": 4}]
    mlp = [{"type": "dense", "units": 64, "activation": "relu"},
           {"type": "dense", "units": 64, "activation": "relu"}, {"type": "dense", "units": 4}]
    return {
        "cnn1d": measure("1-D CNN on signals (1, 128)", cnn, (1, 128), "signals", CNN_AUGMENT,
                         args.n, args.batch, args.repeats),
        # 8x the samples: an MLP epoch is so short that machine noise would swamp it
        "mlp": measure("MLP on a table (32,)", mlp, (32,), "table", MLP_AUGMENT, 8 * args.n, args.batch, args.repeats),
    }


if __name__ == "__main__":
    main()
