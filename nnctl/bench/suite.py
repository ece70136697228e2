"""`nnctl bench --suite` and `--busy`: issue 15's workloads through the real `nnctl train` path.

Each workload writes seeded synthetic data to a temporary .npz, trains it with the same
function `nnctl train` calls (run directories in a temporary folder, output silenced) and
reads the per-epoch seconds from the run's history.json: training plus the validation pass,
as a user's epoch. When PyTorch is importable the same network, data, batch size, optimizer
and validation pass run in PyTorch in the same process right after, with the same thread
count, and the ratio torch/nnctl is printed (> 1: nnctl is faster). PyTorch is never a
dependency: without it that column says so.

The first epoch of each side is a warm-up; the figure is the median of the others. Machines
are shared: compare ratios from one run, and run the suite more than once.

The predict row's "% floor" is the forward GEMMs alone over the same rows and batches: the
eval path is near it, so its ratio to PyTorch is mostly one BLAS against another.

`--busy` trains the big MLP for a few epochs alone, then again beside a second CPU-bound
process (a busy loop, as another job on the machine would be), and prints the slowdown.
The issue's target is at most 1.5x.
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nnctl.bench import say


@dataclass
class Workload:
    """One net: how to make its data, its nnctl layers and its PyTorch twin."""

    name: str
    x_shape: tuple[int, ...]          # one sample
    classes: int
    n: int                            # rows before the 10% validation split
    batch: int
    layers: list[Any]                 # nnctl model.layers (the output layer is added by nnctl)
    torch_net: Callable[[Any], Any]   # torch.nn module -> the same net
    lr: float = 1e-3
    floor_sizes: list[int] | None = None  # dense sizes: the GEMM floor applies
    extra: dict[str, Any] = field(default_factory=dict)


def _torch_mlp(sizes):
    def build(nn):
        mods = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            mods.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                mods.append(nn.ReLU())
        return nn.Sequential(*mods)
    return build


def _torch_conv1d(nn):
    return nn.Sequential(nn.Conv1d(1, 25, 5, padding=2), nn.ReLU(), nn.Conv1d(25, 25, 5, padding=2), nn.ReLU(),
                         nn.Conv1d(25, 25, 5, padding=2), nn.ReLU(), nn.Flatten(), nn.Linear(25 * 40, 4))


def _torch_cnn2d(nn):
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(64 * 7 * 7, 10))


def _torch_recurrent(kind):
    def build(nn):
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.rnn = getattr(nn, kind)(8, 64, batch_first=True)
                self.out = nn.Linear(64, 2)

            def forward(self, x):
                seq, _ = self.rnn(x)
                return self.out(seq[:, -1])
        return Net()
    return build


def _torch_transformer(nn):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(8, 64)
            self.block = nn.TransformerEncoderLayer(64, 4, dim_feedforward=256, dropout=0.0, activation="gelu",
                                                    batch_first=True, norm_first=True)
            self.out = nn.Linear(64, 2)

        def forward(self, x):
            return self.out(self.block(self.inp(x)).mean(dim=1))
    return Net()


WORKLOADS = [
    Workload("mlp 784-512-256-10", (784,), 10, 25_000, 128,
             [{"dense": {"units": 512, "activation": "relu"}}, {"dense": {"units": 256, "activation": "relu"}}],
             _torch_mlp([784, 512, 256, 10]), floor_sizes=[784, 512, 256, 10]),
    Workload("conv1d x3 (25 filters), L=40", (1, 40), 4, 5_000, 100,
             [{"conv1d": {"filters": 25, "kernel_size": 5, "padding": "same", "activation": "relu"}}] * 3
             + ["flatten"], _torch_conv1d),
    Workload("cnn2d 32/64 on 28x28", (1, 28, 28), 10, 3_000, 64,
             [{"conv2d": {"filters": 32, "kernel_size": 3, "padding": "same", "activation": "relu"}},
              {"maxpool2d": {"size": 2}},
              {"conv2d": {"filters": 64, "kernel_size": 3, "padding": "same", "activation": "relu"}},
              {"maxpool2d": {"size": 2}}, "flatten"], _torch_cnn2d),
    Workload("gru(64), T=40", (40, 8), 2, 3_000, 100, [{"gru": {"units": 64}}], _torch_recurrent("GRU")),
    Workload("lstm(64), T=40", (40, 8), 2, 3_000, 100, [{"lstm": {"units": 64}}], _torch_recurrent("LSTM")),
    Workload("transformer block T=64 D=64 h=4", (64, 8), 2, 2_000, 32,
             [{"dense": {"units": 64}},
              {"transformer_block": {"heads": 4, "mlp_units": 256, "activation": "gelu"}},
              {"global_avg_pool": {"data_format": "channels_last"}}], _torch_transformer),
    Workload("mlp 20-64-64-2, 1,500 rows", (20,), 2, 1_667, 32,
             [{"dense": {"units": 64, "activation": "relu"}}, {"dense": {"units": 64, "activation": "relu"}}],
             _torch_mlp([20, 64, 64, 2]), floor_sizes=[20, 64, 64, 2]),
]


def _data(w: Workload, folder: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((w.n,) + w.x_shape).astype(np.float32)
    y = rng.integers(0, w.classes, w.n)
    y[:w.classes] = np.arange(w.classes)  # every class present, so the task is classification
    path = folder / f"{w.name.split()[0]}-{w.n}.npz"
    np.savez(path, x=x, y=y)
    return path


def _spec(w: Workload, data: Path, epochs: int) -> dict[str, Any]:
    return {"name": "bench", "seed": 0,
            "data": {"dataset": str(data), "val_split": 0.1, "standardize": False, "task": "classification"},
            "model": {"layers": w.layers},
            "optimizer": {"name": "adam", "lr": w.lr},
            "training": {"epochs": epochs, "batch_size": w.batch, "eval_batch_size": 1024}}


def nnctl_epochs(w: Workload, data: Path, epochs: int, threads: int, folder: Path) -> list[float]:
    """Seconds of every epoch of `nnctl train` on the workload (from the run's history.json)."""
    from nnctl.commands.train import run_training
    from nnctl.console import console
    from nnctl.runs.store import dump_yaml, read_run_history
    spec_path = folder / "spec.yaml"
    spec_path.write_text(dump_yaml(_spec(w, data, epochs)))
    runs = Path(tempfile.mkdtemp(prefix="runs-", dir=folder))
    quiet = console.quiet
    console.quiet = True  # the suite prints its own table
    try:
        code = run_training(spec_path, [], None, runs, True, threads)
    finally:
        console.quiet = quiet
    if code != 0:
        raise RuntimeError(f"{w.name}: nnctl train exited {code}")
    (run,) = list(runs.iterdir())
    return [float(r["seconds"]) for r in read_run_history(run)]


def torch_epochs(w: Workload, data: Path, epochs: int, threads: int) -> list[float] | None:
    """Seconds of every epoch of the same training in PyTorch (None when it is not installed)."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    with np.load(data, allow_pickle=False) as z:
        x, y = torch.from_numpy(z["x"]), torch.from_numpy(z["y"])
    n_val = int(round(0.1 * len(x)))
    xv, yv, xt, yt = x[:n_val], y[:n_val], x[n_val:], y[n_val:]
    net = w.torch_net(torch.nn)
    opt = torch.optim.Adam(net.parameters(), lr=w.lr)
    lossf = torch.nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        net.train()
        order = torch.randperm(len(xt), generator=g)
        for s in range(0, len(xt), w.batch):
            idx = order[s:s + w.batch]
            opt.zero_grad(set_to_none=True)
            loss = lossf(net(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            for s in range(0, len(xv), 1024):
                lossf(net(xv[s:s + 1024]), yv[s:s + 1024]).item()
        out.append(time.perf_counter() - t0)
    return out


def floor_seconds(sizes: list[int], n_train: int, n_val: int, batch: int, reps: int = 3) -> float:
    """The GEMMs alone of one epoch: every training step's forward and backward products, the validation forwards."""
    rng = np.random.default_rng(2)
    ws = [rng.standard_normal((i, o)).astype(np.float32) for i, o in zip(sizes[:-1], sizes[1:])]
    xb = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    xv = rng.standard_normal((min(n_val, 1024), sizes[0])).astype(np.float32)
    steps, val_batches = -(-n_train // batch), -(-n_val // 1024)

    def step():
        acts = [xb]
        for w in ws:
            acts.append(acts[-1] @ w)
        g = acts[-1]
        for i in reversed(range(len(ws))):
            acts[i].T @ g
            if i:   # the input needs no gradient: training never computes it, nor may the floor
                g = g @ ws[i].T

    def val():
        h = xv
        for w in ws:
            h = h @ w

    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        for _ in range(val_batches):
            val()
        best = min(best, time.perf_counter() - t0)
    return best


def predict_floor_seconds(sizes: list[int], rows: int, batch: int = 1024, reps: int = 3) -> float:
    """The forward GEMMs alone of predicting `rows` rows in batches of `batch`: what any
    implementation of the same dense net must spend (bias, activations and copies excluded)."""
    rng = np.random.default_rng(3)
    ws = [rng.standard_normal((i, o)).astype(np.float32) for i, o in zip(sizes[:-1], sizes[1:])]
    x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    outs = [np.empty((batch, o), dtype=np.float32) for o in sizes[1:]]
    full, rest = divmod(rows, batch)
    best = float("inf")
    for _ in range(reps + 1):   # the first is a warm-up
        t0 = time.perf_counter()
        for b in [batch] * full + ([rest] if rest else []):
            h = x[:b]
            for w, o in zip(ws, outs):
                np.matmul(h, w, out=o[:b])
                h = o[:b]
        best = min(best, time.perf_counter() - t0)
    return best


def predict_seconds(w: Workload, data: Path, threads: int, reps: int = 3) -> tuple[float, float | None]:
    """Best-of-`reps` seconds of predicting every row of the data in batches of 1024: the
    engine's `Sequential.predict` (what `nnctl predict` and `eval` run), and PyTorch's
    `torch.no_grad()` forward of the same net when it is installed."""
    from nnctl.config.spec import spec_from_dict
    from nnctl.training.experiment import prepare
    with np.load(data, allow_pickle=False) as z:
        x = np.ascontiguousarray(z["x"])
    model = prepare(spec_from_dict(_spec(w, data, 1))).model  # the model `nnctl train` builds
    best = float("inf")
    for _ in range(reps + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        model.predict(x, 1024)
        best = min(best, time.perf_counter() - t0)
    try:
        import torch
    except ImportError:
        return best, None
    torch.set_num_threads(threads)
    net = w.torch_net(torch.nn).eval()
    xt = torch.from_numpy(x)
    theirs = float("inf")
    with torch.no_grad():
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            for s in range(0, len(xt), 1024):
                net(xt[s:s + 1024])
            theirs = min(theirs, time.perf_counter() - t0)
    return best, theirs


def _median(xs: list[float]) -> float:
    return statistics.median(xs[1:] if len(xs) > 1 else xs)


def _ms(s: float) -> str:
    return f"{s * 1e3:8.1f} ms" if s < 10 else f"{s:8.2f} s "


# With PyTorch present each workload runs this many alternating rounds (nnctl, then PyTorch,
# then nnctl again ...) and the ratio printed is the median of the rounds' ratios: on a shared
# machine one round's two halves can see loads several times apart (one suite run measured
# the 2-D CNN at 0.45x and, a minute later, 1.37x), and alternating pairs them up.
ROUNDS = 3


def _ratio_text(ratios: list[float]) -> str:
    if not ratios:
        return "           -"
    text = f"{statistics.median(ratios):11.2f}x"
    return text if len(ratios) == 1 else text + "  (" + " ".join(f"{r:.2f}" for r in ratios) + ")"


def run_suite(epochs: int = 3, threads: int | None = None, only: str | None = None) -> int:
    from nnctl import threads as th
    choice = th.choose(threads, None)
    try:
        import torch  # noqa: F401
        have_torch = f"PyTorch {torch.__version__}"
    except ImportError:
        have_torch = None
    rounds = ROUNDS if have_torch else 1
    say(f"nnctl bench --suite: {epochs} epochs each (median of epochs 2..{epochs}; validation included), "
        f"BLAS {th.blas_name()}, threads {choice.threads} ({choice.source}); "
        f"{have_torch or 'PyTorch not installed: no comparison'}")
    if have_torch:
        say(f"{rounds} alternating rounds per workload: times are the rounds' medians, the ratio the median "
            f"of the rounds' ratios (each round's in brackets)")
    load = _load()
    if load:
        say(f"load average {load}: on a busy machine compare the ratios, not the times")
    say("times are per epoch (predict: every row once, batches of 1024, PyTorch under no_grad)")
    say(f"{'workload':<34}{'nnctl':>13}{'samples/s':>11}{'% floor':>9}{'torch':>13}{'torch/nnctl':>13}")
    with tempfile.TemporaryDirectory(prefix="nnctl-bench-suite-") as tmp:
        folder = Path(tmp)
        for w in WORKLOADS:
            if only and only not in w.name:
                continue
            data = _data(w, folder)
            mine, theirs = [], []
            for _ in range(rounds):
                mine.append(_median(nnctl_epochs(w, data, epochs, choice.threads, folder)))
                if have_torch:
                    theirs.append(_median(torch_epochs(w, data, epochs, choice.threads)))
            ours = statistics.median(mine)
            n_val = int(round(0.1 * w.n))
            rate = (w.n - n_val) / ours
            floor = ""
            if w.floor_sizes:
                floor = f"{floor_seconds(w.floor_sizes, w.n - n_val, n_val, w.batch) / ours:8.1%}"
            t_text = _ms(statistics.median(theirs)) if theirs else "        -   "
            ratio = _ratio_text([t / o for t, o in zip(theirs, mine)])
            say(f"{w.name:<34}{_ms(ours):>13}{rate:>11,.0f}{floor:>9}{t_text:>13}{ratio:>13}")
        if not only or only in "predict":
            w = WORKLOADS[0]
            data = _data(w, folder)
            pairs = [predict_seconds(w, data, choice.threads) for _ in range(rounds)]
            ours = statistics.median(p[0] for p in pairs)
            floor = f"{predict_floor_seconds(w.floor_sizes, w.n) / ours:8.1%}"
            theirs = [p[1] for p in pairs if p[1] is not None]
            t_text = _ms(statistics.median(theirs)) if theirs else "        -   "
            ratio = _ratio_text([t / p[0] for t, p in zip(theirs, pairs)])
            say(f"{'predict ' + w.name.split()[1] + ' (all rows)':<34}{_ms(ours):>13}{w.n / ours:>11,.0f}{floor:>9}"
                f"{t_text:>13}{ratio:>13}")
    return 0


def _load() -> str:
    try:
        import os
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except (AttributeError, OSError):
        return ""


COMPETITOR = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"


def run_busy(epochs: int = 3, threads: int | None = None) -> int:
    """The big MLP alone, then beside one CPU-bound competitor process: the slowdown."""
    from nnctl import threads as th
    choice = th.choose(threads, None)
    w = WORKLOADS[0]
    say(f"nnctl bench --busy: {w.name}, {epochs} epochs (median of epochs 2..{epochs}), BLAS {th.blas_name()}, "
        f"threads {choice.threads} ({choice.source}), {th.logical_cpus()} CPUs; load average {_load()}")
    with tempfile.TemporaryDirectory(prefix="nnctl-bench-busy-") as tmp:
        folder = Path(tmp)
        data = _data(w, folder)
        alone = _median(nnctl_epochs(w, data, epochs, choice.threads, folder))
        say(f"alone:               {_ms(alone)} per epoch")
        competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR.format(seconds=900)])
        try:
            busy = _median(nnctl_epochs(w, data, epochs, choice.threads, folder))
        finally:
            competitor.terminate()
            competitor.wait()
        say(f"beside a busy loop:  {_ms(busy)} per epoch")
        say(f"slowdown {busy / alone:.2f}x (target <= 1.5x)")
    return 0
