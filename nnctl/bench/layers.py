"""Benchmark: conv2d and GRU layer time against the matrix products they reduce to.

Run as `python -m nnctl.bench.layers [--reps N]`. This is a developer script, not part of
the engine (which never prints) and not a timed test: machines differ, so it reports
ratios rather than asserting them.

Conv2D: 32 -> 64 channels, 3x3, 'same', batch 128 of 16x16 float32 images. The floor is
the three GEMMs of im2col timed alone on ready, contiguous operands:
    forward  cols (N*H*W, C*9) @ W2^T (C*9, F)
    dW       dY^T (F, N*H*W)   @ cols (N*H*W, C*9)
    dcols    dY   (N*H*W, F)   @ W2 (F, C*9)
GRU: per time step, the floor is the step's recurrent products alone: forward h @ U
(N, u) @ (u, 3u), backward dR @ U^T (N, 3u) @ (3u, u), plus the step's share of the
all-time-steps products (input projection, dW, dU, dx), timed on ready operands.
The ratio printed is floor / layer time (1.0 = no overhead beyond the GEMMs).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from nnctl.engine.conv import Conv2D
from nnctl.engine.recurrent import GRU
from nnctl.bench import say



def best_of(*fns, reps: int) -> list[float]:
    """Minimum wall time of each `fn()` over `reps` rounds after one warm-up, in seconds.

    The functions run interleaved, one call each per round, so a load change on a shared
    machine hits the layer and its floor alike instead of skewing their ratio.
    """
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(reps):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def bench_conv(reps: int, rng: np.random.Generator) -> dict[str, float]:
    n, c, h, w, f, k = 128, 32, 16, 16, 64, 3
    dt = np.float32
    layer = Conv2D(filters=f, kernel_size=k, padding="same")
    layer.build((c, h, w), rng, dt)
    x = rng.standard_normal((n, c, h, w)).astype(dt)
    dy = rng.standard_normal((n, f, h, w)).astype(dt)

    def step():
        layer.forward(x, True)
        layer.backward(dy)

    cols = rng.standard_normal((n * h * w, c * k * k)).astype(dt)
    w2 = rng.standard_normal((f, c * k * k)).astype(dt)
    dy2 = rng.standard_normal((n * h * w, f)).astype(dt)
    w2t = np.ascontiguousarray(w2.T)
    dy2t = np.ascontiguousarray(dy2.T)

    def gemms():
        cols @ w2t
        dy2t @ cols
        dy2 @ w2

    fwd, layer_t, floor = best_of(lambda: layer.forward(x, True), step, gemms, reps=reps)
    return {"forward_s": fwd, "layer_s": layer_t, "floor_s": floor, "ratio": floor / layer_t}


def bench_gru(reps: int, rng: np.random.Generator) -> dict[str, float]:
    n, t, feat, u = 128, 32, 16, 64
    dt = np.float32
    layer = GRU(units=u, return_sequences=True)
    layer.build((t, feat), rng, dt)
    x = rng.standard_normal((n, t, feat)).astype(dt)
    dy = rng.standard_normal((n, t, u)).astype(dt)

    def step():
        layer.forward(x, True)
        layer.backward(dy)

    h = rng.standard_normal((n, u)).astype(dt)
    U = rng.standard_normal((u, 3 * u)).astype(dt)
    dr = rng.standard_normal((n, 3 * u)).astype(dt)
    Ut = np.ascontiguousarray(U.T)
    xs = rng.standard_normal((t * n, feat)).astype(dt)
    W = rng.standard_normal((feat, 3 * u)).astype(dt)
    hs = rng.standard_normal((t * n, u)).astype(dt)
    da = rng.standard_normal((t * n, 3 * u)).astype(dt)
    Wt = np.ascontiguousarray(W.T)

    def per_step():
        for _ in range(t):
            h @ U
            dr @ Ut

    def whole():
        xs @ W
        xs.T @ da
        hs.T @ da
        da @ Wt

    layer_t, loop, bulk = best_of(step, per_step, whole, reps=reps)
    floor = loop + bulk
    return {"layer_s": layer_t, "floor_s": floor, "per_step_layer_ms": 1e3 * layer_t / t,
            "per_step_floor_ms": 1e3 * floor / t, "ratio": floor / layer_t}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20, help="timed repetitions (the best is kept)")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    c = bench_conv(args.reps, rng)
    say(f"conv2d 32->64 3x3 same, N=128 16x16 float32: forward {c['forward_s'] * 1e3:.1f} ms, "
          f"forward+backward {c['layer_s'] * 1e3:.1f} ms; GEMM floor {c['floor_s'] * 1e3:.1f} ms; "
          f"ratio floor/layer = {c['ratio']:.2f}")
    g = bench_gru(args.reps, rng)
    say(f"gru 64 units, N=128 T=32 F=16 float32: forward+backward {g['layer_s'] * 1e3:.1f} ms "
          f"({g['per_step_layer_ms']:.3f} ms/step); matmul floor {g['floor_s'] * 1e3:.1f} ms "
          f"({g['per_step_floor_ms']:.3f} ms/step); ratio floor/layer = {g['ratio']:.2f}")


if __name__ == "__main__":
    main()
