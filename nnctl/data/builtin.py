"""Built-in datasets: seeded 2-D toy problems, a 1-D regression curve, and the shipped digits and iris.

Each entry of `DATASETS` is a class whose `PARAMS` declare the `data.options` it takes
(the config layer validates them) and whose constructor takes exactly those names;
`generate(rng)` returns a `RawData`. Every random draw comes from the given
np.random.Generator, so the same seed gives the same data.

Other modules may register generators too (`@DATASETS.register("name")` on a
`BuiltinDataset` subclass). A plain function `f(rng, **options)` with a `PARAMS`
attribute works as well: it may return a RawData or a tuple (x, y).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from nnctl.data.files import RawData, numeric_matrix, read_csv_data
from nnctl.data.targets import CLASSIFICATION, REGRESSION
from nnctl.hparams import Param, Registry, check_value, defaults, unknown_name_message
from nnctl.errors import ConfigError, DataError

DATASETS = Registry("dataset")


def datasets_dir() -> Path:
    """The repository's datasets/ folder (an editable install keeps it beside the package)."""
    import nnctl
    return Path(nnctl.__file__).resolve().parent.parent / "datasets"


class BuiltinDataset:
    """Base of the registered generators: stores the options, `generate(rng)` makes the data."""

    PARAMS: dict[str, Param] = {}
    TASK: str = CLASSIFICATION
    NAME: str = ""

    def __init__(self, **options):
        for key, value in options.items():
            setattr(self, key, value)

    def get_config(self) -> dict:
        return {k: getattr(self, k) for k in self.PARAMS}

    def generate(self, rng: np.random.Generator) -> RawData:
        raise NotImplementedError

    def _raw(self, x: np.ndarray, y: np.ndarray, names: list[str] | None = None,
             target: str = "label") -> RawData:
        if names is None:
            names = [f"x{i + 1}" for i in range(x.shape[1])]
        return RawData(x=x, y=y, feature_names=names, target_name=target,
                       source=f"{self.NAME} (built-in)", task=self.TASK)


def _per_class(n: int, k: int) -> np.ndarray:
    """Class of each of n samples split as evenly as possible over k classes: (n,) int64."""
    return np.repeat(np.arange(k), [n // k + (c < n % k) for c in range(k)])


N_SAMPLES = Param("int", 500, ge=4, le=10_000_000, doc="number of samples generated")


@DATASETS.register("xor")
class Xor(BuiltinDataset):
    """Four Gaussian clusters at the corners (+-1, +-1); the label is the XOR of the signs.

    x: (n_samples, 2), y: (n_samples,) in {0, 1}; the two classes are not linearly separable.
    """

    PARAMS = {
        "n_samples": Param("int", 400, ge=4, le=10_000_000, doc="number of samples (spread over 4 corners)"),
        "noise": Param("float", 0.1, ge=0, doc="standard deviation of the Gaussian around each corner"),
    }

    def generate(self, rng):
        corner = _per_class(self.n_samples, 4)
        bits = np.stack([corner // 2, corner % 2], axis=1)  # 00, 01, 10, 11
        x = (2.0 * bits - 1.0) + self.noise * rng.standard_normal((self.n_samples, 2))
        y = (bits[:, 0] ^ bits[:, 1]).astype(np.int64)
        return self._raw(x, y)


@DATASETS.register("spirals", "spiral")
class Spirals(BuiltinDataset):
    """Interleaved spiral arms, one per class (the CS231n spiral).

    x: (n_samples, 2), y: (n_samples,) in 0..classes-1.

    Notes
    -----
    Arm c has points at radius r in [0, 1] (evenly spaced) and angle
    t = 4c + 4r + noise * N(0, 1); x = (r sin t, r cos t).
    """

    PARAMS = {
        "n_samples": Param("int", 600, ge=4, le=10_000_000, doc="number of samples (spread over the arms)"),
        "classes": Param("int", 3, ge=2, le=100, doc="number of arms, one class each"),
        "noise": Param("float", 0.2, ge=0, doc="standard deviation of the angle noise (radians)"),
    }

    def generate(self, rng):
        y = _per_class(self.n_samples, self.classes)
        r = np.empty(self.n_samples)
        for c in range(self.classes):
            members = y == c
            r[members] = np.linspace(0.0, 1.0, int(members.sum()))
        t = 4.0 * y + 4.0 * r + self.noise * rng.standard_normal(self.n_samples)
        x = np.stack([r * np.sin(t), r * np.cos(t)], axis=1)
        return self._raw(x, y.astype(np.int64))


@DATASETS.register("moons")
class Moons(BuiltinDataset):
    """Two interleaving half circles.

    x: (n_samples, 2), y: (n_samples,) in {0, 1}.

    Notes
    -----
    With t ~ U[0, pi]: class 0 at (cos t, sin t), class 1 at (1 - cos t, 0.5 - sin t),
    plus N(0, noise^2) on each coordinate.
    """

    PARAMS = {
        "n_samples": N_SAMPLES,
        "noise": Param("float", 0.1, ge=0, doc="standard deviation of the Gaussian noise"),
    }

    def generate(self, rng):
        y = _per_class(self.n_samples, 2)
        t = rng.uniform(0.0, math.pi, self.n_samples)
        upper = np.stack([np.cos(t), np.sin(t)], axis=1)
        lower = np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], axis=1)
        x = np.where((y == 0)[:, None], upper, lower)
        x = x + self.noise * rng.standard_normal(x.shape)
        return self._raw(x, y.astype(np.int64))


@DATASETS.register("circles")
class Circles(BuiltinDataset):
    """A small circle inside a large one.

    x: (n_samples, 2), y: (n_samples,): 0 on the unit circle, 1 on the circle of radius `factor`.
    """

    PARAMS = {
        "n_samples": N_SAMPLES,
        "noise": Param("float", 0.05, ge=0, doc="standard deviation of the Gaussian noise"),
        "factor": Param("float", 0.5, gt=0, lt=1, doc="radius of the inner circle (the outer is 1)"),
    }

    def generate(self, rng):
        y = _per_class(self.n_samples, 2)
        t = rng.uniform(0.0, 2.0 * math.pi, self.n_samples)
        radius = np.where(y == 0, 1.0, self.factor)
        x = radius[:, None] * np.stack([np.cos(t), np.sin(t)], axis=1)
        x = x + self.noise * rng.standard_normal(x.shape)
        return self._raw(x, y.astype(np.int64))


@DATASETS.register("blobs")
class Blobs(BuiltinDataset):
    """Isotropic Gaussian clusters, one class each, around centres drawn in [-10, 10]^n_features.

    x: (n_samples, n_features), y: (n_samples,) in 0..centers-1.
    """

    PARAMS = {
        "n_samples": N_SAMPLES,
        "centers": Param("int", 3, ge=2, le=100, doc="number of clusters (classes)"),
        "n_features": Param("int", 2, ge=1, le=10_000, doc="dimension of each sample"),
        "cluster_std": Param("float", 1.0, gt=0, doc="standard deviation of each cluster"),
    }

    def generate(self, rng):
        centres = rng.uniform(-10.0, 10.0, (self.centers, self.n_features))
        y = _per_class(self.n_samples, self.centers)
        x = centres[y] + self.cluster_std * rng.standard_normal((self.n_samples, self.n_features))
        return self._raw(x, y.astype(np.int64))


@DATASETS.register("sine")
class Sine(BuiltinDataset):
    """1-D regression: y = sin(x) + noise, x uniform on [low, high].

    x: (n_samples, 1), y: (n_samples, 1).
    """

    TASK = REGRESSION
    PARAMS = {
        "n_samples": N_SAMPLES,
        "noise": Param("float", 0.1, ge=0, doc="standard deviation of the Gaussian noise on y"),
        "low": Param("float", -math.pi, doc="smallest x"),
        "high": Param("float", math.pi, doc="largest x (must be > low)"),
    }

    def __init__(self, **options):
        super().__init__(**options)
        if not self.high > self.low:
            raise ConfigError(f"data.options.high: must be > low ({self.low}), got {self.high}")

    def generate(self, rng):
        x = rng.uniform(self.low, self.high, (self.n_samples, 1))
        y = np.sin(x) + self.noise * rng.standard_normal((self.n_samples, 1))
        return self._raw(x, y, names=["x"], target="y")


class _Shipped(BuiltinDataset):
    """A real dataset read from the repository's datasets/ folder (the seed is not used)."""

    FILE = ""
    TARGET = ""

    def generate(self, rng):
        path = datasets_dir() / self.FILE
        if not path.is_file():
            raise DataError(
                f"built-in dataset '{self.NAME}': {path} is missing; nnctl looks for its "
                "datasets/ folder next to the package (install with `pip install -e .` from the repository)"
            )
        raw = read_csv_data(path, self.TARGET, None, dtype=np.float64)   # the shipped values, exactly
        raw.x, raw.columns = numeric_matrix(raw), None
        raw.source = f"{self.NAME} (built-in)"
        raw.task = CLASSIFICATION
        return raw


@DATASETS.register("digits")
class Digits(_Shipped):
    """UCI optical recognition of handwritten digits, 8x8 version: x (1797, 64) in 0..16, 10 classes."""

    FILE = "digits.csv"
    TARGET = "label"


@DATASETS.register("iris")
class Iris(_Shipped):
    """Fisher's iris: x (150, 4) in cm, 3 classes setosa/versicolor/virginica."""

    FILE = "iris.csv"
    TARGET = "species"


# ---------------------------------------------------------------------------- options

def resolve_options(name: str, options: dict | None) -> dict:
    """The full option set for built-in `name`: defaults filled, unknown keys and bad values refused."""
    entry = DATASETS.get(name)
    params: dict[str, Param] = getattr(entry, "PARAMS", {})
    options = dict(options or {})
    for key in options:
        if key not in params:
            valid = sorted(params)
            if not valid:
                raise ConfigError(f"data.options.{key}: dataset '{name}' takes no options")
            raise ConfigError(f"data.options: {unknown_name_message(f'option for {name}', key, valid)}")
    for key, p in params.items():
        if p.required and key not in options:
            raise ConfigError(f"data.options.{key}: required for dataset '{name}'")
    out = {**defaults(params), **options}
    return {k: check_value(f"data.options.{k}", v, params[k]) for k, v in out.items()}


def generate(name: str, options: dict | None, rng: np.random.Generator) -> RawData:
    """Make built-in dataset `name` with `options` (validated here too) from `rng`."""
    entry = DATASETS.get(name)
    opts = resolve_options(name, options)
    canonical = DATASETS.canonical(name)
    if isinstance(entry, type):
        made = entry(**opts)
        out = getattr(made, "generate", made)(rng)
    else:
        out = entry(rng, **opts)
    if isinstance(out, tuple):
        x, y = out
        out = RawData(x=np.asarray(x), y=None if y is None else np.asarray(y), feature_names=None,
                      target_name=None, source=f"{canonical} (built-in)",
                      task=getattr(entry, "TASK", None))
    return out


def _register_sequence_tasks() -> None:
    # The sequence tasks live beside the recurrent/attention tests' reasoning in sequences.py.
    from nnctl.data.sequences import make_marked_xor, make_parity
    DATASETS.register("marked_xor")(make_marked_xor)
    DATASETS.register("parity")(make_parity)


_register_sequence_tasks()
