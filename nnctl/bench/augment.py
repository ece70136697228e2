"""`python -m nnctl.bench.augment`: what data augmentation adds to a training epoch.

Two workloads, each trained by the same loop as the trainer (iterate_batches, forward,
loss, backward, Adam) with and without a typical augmentation list:

- a small 1-D CNN on signals (N, 1, 128): conv1d(8, k5) → maxpool → conv1d(16, k5) →
  global average pool → dense(4), with shift, flip, scale, noise, cutout and mixup;
- an MLP 32-64-64-4 on a table (N, 32), with noise, feature_dropout and mixup;
- the MLP of configs/digits.yaml, 64-128-64-10 with batch norm and dropout 0.2, on a table
  (N, 64) of 10 classes, with the same three transforms (a realistic MLP step).

Epochs with and without augmentation alternate, so load from other processes on a shared
machine hits both alike, and each condition counts every step at its fastest (`fastest`).
Then each transform is timed alone on the same batches, as a share of the plain epoch.
The issue's budget: at most +50% epoch time for the CNN, far less for the MLP.
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


def epoch_steps(model: Sequential, split: Split, batch: int, aug, epoch: int) -> np.ndarray:
    """The seconds of each training step of one epoch (batching, augmentation, forward, backward, Adam)."""
    loss, opt = CrossEntropy(), Adam(lr=1e-3)
    params, grads = model.named_parameters(), model.named_grads()
    rng = np.random.default_rng([0, 1, epoch])
    times = []
    t = time.perf_counter()
    for xb, yb in iterate_batches(split, batch, rng, np.float32, None,
                                  augment=None if aug is None else aug.for_epoch(0, epoch)):
        _, dz = loss(model.forward(xb, training=True), yb)
        model.backward(dz)
        opt.step(params, grads)
        now = time.perf_counter()
        times.append(now - t)
        t = now
    return np.array(times)


def augment_steps(aug: Augmenter, x: np.ndarray, y: np.ndarray, batch: int, epoch: int) -> np.ndarray:
    """The seconds of the augmentation alone on each of x's batches (no training).

    Each batch is copied into one reused buffer first, as iterate_batches does, and the copy
    is not timed.
    """
    buf = np.empty((batch,) + x.shape[1:], dtype=x.dtype)
    f = aug.for_epoch(0, epoch)
    times = []
    for step, start in enumerate(range(0, len(x), batch)):
        xb = buf[:len(x[start:start + batch])]
        np.copyto(xb, x[start:start + batch])
        t = time.perf_counter()
        f(step, xb, y[start:start + batch])
        times.append(time.perf_counter() - t)
    return np.array(times)


def fastest(runs: list[np.ndarray]) -> float:
    """An epoch's seconds from repeated runs: each step at its fastest, summed.

    On a shared machine nearly every epoch is preempted somewhere; the fastest run of each
    step drops those pauses where the fastest whole epoch would still hold some.
    """
    return float(np.min(np.stack(runs), axis=0).sum())


def measure(name: str, specs: list[dict], shape: tuple[int, ...], layout: str, items: list[tuple[str, dict]],
            n: int, batch: int, repeats: int, classes: int = 4) -> dict[str, float]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n,) + shape).astype(np.float32)
    y = rng.integers(0, classes, n)
    split = Split(x, y, None)
    aug = augmenter(layout, items, classes)
    model = Sequential.from_config(specs, shape, np.random.default_rng([0, 0]), np.float32)
    epoch_steps(model, split, batch, aug, 0)             # warm up caches and workspaces
    plain, augmented, alone = [], [], []
    for r in range(repeats):
        plain.append(epoch_steps(model, split, batch, None, r))
        augmented.append(epoch_steps(model, split, batch, aug, r))
        alone.append(augment_steps(aug, x, y, batch, r))
    best_plain, best_aug, alone = fastest(plain), fastest(augmented), fastest(alone)
    say(f"{name}: epoch of {n} samples, batch {batch}: {best_plain:.3f} s without augmentation, "
        f"{best_aug:.3f} s with ({100 * (best_aug / best_plain - 1):+.1f}%); augmentation alone "
        f"{alone:.3f} s ({100 * alone / best_plain:.1f}% of the plain epoch); each step its fastest of {repeats}")
    out = {"plain": best_plain, "augmented": best_aug, "alone": alone}
    for item in items:
        # one transform alone: a mixing one turns the labels into soft targets, counted with it
        single = augmenter(layout, [item], classes)
        one = fastest([augment_steps(single, x, y, batch, r) for r in range(repeats)])
        say(f"  {item[0]:<16} {1e6 * one / -(-n // batch):6.1f} us a batch, "
            f"{100 * one / best_plain:5.1f}% of the plain epoch")
        out[item[0]] = one
    return out


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096, help="samples per CNN epoch (the MLP's: 8x)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=9, help="epochs per condition (each step counts its fastest)")
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
    digits = []
    for units in (128, 64):             # configs/digits.yaml's hidden layers, written out
        digits += [{"type": "dense", "units": units, "activation": "identity", "initializer": "he_normal"},
                   {"type": "batch_norm"}, {"type": "relu"}, {"type": "dropout", "rate": 0.2}]
    digits.append({"type": "dense", "units": 10})
    return {
        "cnn1d": measure("1-D CNN on signals (1, 128)", cnn, (1, 128), "signals", CNN_AUGMENT,
                         args.n, args.batch, args.repeats),
        # 8x the samples: an MLP epoch is so short that machine noise would swamp it
        "mlp": measure("MLP on a table (32,)", mlp, (32,), "table", MLP_AUGMENT, 8 * args.n, args.batch, args.repeats),
        "digits_mlp": measure("digits MLP (batch norm, dropout) on a table (64,)", digits, (64,), "table",
                              MLP_AUGMENT, 8 * args.n, args.batch, args.repeats, classes=10),
    }


if __name__ == "__main__":
    main()
