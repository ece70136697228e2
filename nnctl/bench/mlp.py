"""`python -m nnctl.bench`: one epoch of MLP training, in samples/s, against the GEMM floor.

The workload matches /work/shared/bench/peers.py: an MLP 784-512-256-10 (ReLU, softmax
cross-entropy, Adam lr 1e-3, batch 128, float32) trained for one epoch on 60,000 synthetic
samples (standard normal features, random labels, seeded). The GEMM floor is the same
matrix products timed alone in the same process (x @ W forward; x.T @ g and g @ W.T
backward, for every layer), so the ratio does not depend on the machine or on BLAS
settings such as OPENBLAS_CORETYPE. The floor runs interleaved with training, a chunk of
batches at a time, so load from other processes affects both measurements alike.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from nnctl.engine.losses import CrossEntropy
from nnctl.engine.model import Sequential
from nnctl.engine.optimizers import Adam
from nnctl import threads
from nnctl.bench import say



class GemmFloor:
    """Only the matmuls any backprop of this MLP does, on one fixed batch (as peers.py does)."""

    def __init__(self, sizes: list[int], x: np.ndarray, batch: int, rng: np.random.Generator):
        self.ws = [rng.standard_normal((i, o)).astype(x.dtype) for i, o in zip(sizes[:-1], sizes[1:])]
        self.xb = x[:batch]
        self.seconds = 0.0
        self.samples = 0

    def run(self, steps: int) -> None:
        t = time.perf_counter()
        for _ in range(steps):
            acts = [self.xb]
            for w in self.ws:
                acts.append(acts[-1] @ w)
            g = acts[-1]
            for w, a in zip(reversed(self.ws), reversed(acts[:-1])):
                a.T @ g
                g = g @ w.T
        self.seconds += time.perf_counter() - t
        self.samples += steps * len(self.xb)


def train_epoch(sizes: list[int], x: np.ndarray, y: np.ndarray, batch: int, seed: int,
                floor: GemmFloor, chunk: int, warmup: int = 20) -> tuple[float, float]:
    """(samples/s, last batch loss) of one epoch of Adam training with the nnctl engine.

    Every `chunk` training batches, the floor runs as many steps, so both are timed under
    the same machine load (0: the floor runs once, after the epoch, for as many steps).
    """
    dtype = x.dtype
    specs = [{"type": "dense", "units": u, "activation": "relu"} for u in sizes[1:-1]]
    specs.append({"type": "dense", "units": sizes[-1]})
    model = Sequential.from_config(specs, (sizes[0],), np.random.default_rng([seed, 0]), dtype)
    loss = CrossEntropy()
    opt = Adam(lr=1e-3)
    params, grads = model.named_parameters(), model.named_grads()
    xbuf = np.empty((batch, sizes[0]), dtype=dtype)
    ybuf = np.empty(batch, dtype=np.int64)

    def step(idx: np.ndarray) -> float:
        b = len(idx)
        # gathered straight into preallocated buffers (mode="clip" avoids a temporary copy)
        xb, yb = xbuf[:b], ybuf[:b]
        np.take(x, idx, axis=0, out=xb, mode="clip")
        np.take(y, idx, out=yb, mode="clip")
        z = model.forward(xb, training=True)
        value, dz = loss(z, yb)
        model.backward(dz)
        opt.step(params, grads)
        return value

    order = np.random.default_rng([seed, 1]).permutation(len(x))
    for k in range(warmup):
        step(order[k * batch:(k + 1) * batch])
    floor.run(warmup)
    floor.seconds, floor.samples = 0.0, 0
    starts = list(range(0, len(x), batch))
    value, seconds = float("nan"), 0.0
    per = chunk if chunk > 0 else len(starts)
    for c in range(0, len(starts), per):
        t = time.perf_counter()
        for start in starts[c:c + per]:
            value = step(order[start:start + batch])
        seconds += time.perf_counter() - t
        floor.run(len(starts[c:c + per]))
    return len(x) / seconds, value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nnctl.bench", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=60000, help="training samples (default 60000)")
    p.add_argument("--d", type=int, default=784, help="input features (default 784)")
    p.add_argument("--hidden", default="512,256", help="hidden sizes, comma-separated (default 512,256)")
    p.add_argument("--classes", type=int, default=10, help="classes (default 10)")
    p.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=25,
                   help="interleave the floor every this many batches (0: time it after the epoch)")
    p.add_argument("--threads", type=int, default=None, help="BLAS threads (default: as `nnctl train` chooses)")
    a = p.parse_args(argv)
    choice = threads.choose(a.threads, None)
    with threads.limited(choice.threads, choice.source):
        return _run(a, choice)


def _run(a: argparse.Namespace, choice: threads.Choice) -> int:
    sizes = [a.d] + [int(h) for h in a.hidden.split(",") if h.strip()] + [a.classes]
    dtype = np.dtype(a.dtype)
    rng = np.random.default_rng(a.seed)
    x = rng.standard_normal((a.n, a.d)).astype(dtype)
    y = rng.integers(0, a.classes, a.n)
    floor = GemmFloor(sizes, x, a.batch, np.random.default_rng([a.seed, 2]))
    rate, value = train_epoch(sizes, x, y, a.batch, a.seed, floor, a.chunk)
    floor_rate = floor.samples / floor.seconds
    flops = 6 * sum(i * o for i, o in zip(sizes[:-1], sizes[1:]))  # per sample, fwd + bwd
    say(f"mlp {sizes} batch {a.batch} {dtype}: {a.n} samples, one epoch (last batch loss {value:.4f}); "
        f"BLAS {threads.blas_name()}, threads {choice.threads} ({choice.source})")
    say(f"nnctl       {rate:10.0f} samples/s  {rate * flops / 1e9:6.1f} GFLOP/s")
    say(f"gemm_floor  {floor_rate:10.0f} samples/s  {floor_rate * flops / 1e9:6.1f} GFLOP/s")
    say(f"ratio       {rate / floor_rate:10.1%} of the GEMM floor")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
