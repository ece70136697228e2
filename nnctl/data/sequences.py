"""Synthetic sequence-classification tasks that a recurrent or attention model solves and an MLP does not.

Each task is a function `make_<task>(rng, **options) -> (x, y)` with a `PARAMS` attribute
declaring its options (and `TASK = "classification"`), the shape the built-in dataset
registry accepts. x is float64 (N, T, F) (batches are cast to the model's dtype later),
y is int64 (N,). Every draw comes from the given Generator.

Why these tasks (measured with the engine, 2000 training samples, Adam 3e-3, batch 32):

- marked_xor (the default sequence task): T bits, two of them marked; the label is the XOR
  of the two marked bits (a binary cousin of Hochreiter & Schmidhuber's adding problem).
  As a function of the flattened input the label is uncorrelated with every function of
  fewer than four input values (each marked bit alone, or with both markers, is
  independent of the label), so an MLP gets no gradient signal towards the rule and can
  only memorize: at length 16 it stays at 0.51-0.53 test accuracy even after 100 epochs.
  A GRU/LSTM needs a per-step rule (latch a marked bit, XOR the next one) and reaches
  > 0.99 after 15-25 epochs; self-attention finds the marked positions by content and
  gets there in 1-3 epochs. At length 10 the MLP does learn it (0.99 after 300 epochs),
  which is why the default length is 16.
- parity: the classic; the label is the sum of T bits mod 2. It separates the models
  only at lengths where the sequence models are slow too: an MLP memorizes lengths up
  to ~10 (2^10 patterns, most of them seen in training: 0.97 test accuracy), while at
  lengths 14-16 a GRU sits on a loss plateau of very seed-dependent length (measured:
  solved within 15-25 s in about half the runs). Offered for experiments, not used by
  the fast tests.
"""
from __future__ import annotations

import numpy as np

from nnctl.hparams import Param

CLASSIFICATION = "classification"


def make_marked_xor(rng: np.random.Generator, n_samples: int = 2000, length: int = 16):
    """x (n_samples, length, 2): channel 0 random bits, channel 1 marks exactly two steps;
    y (n_samples,) int64 = XOR of the two marked bits (classes 0/1, balanced in expectation)."""
    bits = rng.integers(0, 2, (n_samples, length))
    # Two distinct marked positions per row: the first two of a random permutation.
    marked = np.argsort(rng.random((n_samples, length)), axis=1)[:, :2]
    mark = np.zeros((n_samples, length))
    np.put_along_axis(mark, marked, 1.0, axis=1)
    y = (np.take_along_axis(bits, marked, axis=1).sum(axis=1) % 2).astype(np.int64)
    x = np.stack([bits.astype(np.float64), mark], axis=-1)
    return x, y


make_marked_xor.PARAMS = {
    "n_samples": Param("int", 2000, ge=1, le=10_000_000, doc="number of sequences"),
    "length": Param("int", 16, ge=2, le=100_000, doc="time steps per sequence (two of them are marked)"),
}
make_marked_xor.TASK = CLASSIFICATION


def make_parity(rng: np.random.Generator, n_samples: int = 2000, length: int = 12):
    """x (n_samples, length, 1) of random bits 0/1; y (n_samples,) int64 = sum of the bits mod 2."""
    bits = rng.integers(0, 2, (n_samples, length, 1))
    y = (bits.sum(axis=(1, 2)) % 2).astype(np.int64)
    return bits.astype(np.float64), y


make_parity.PARAMS = {
    "n_samples": Param("int", 2000, ge=1, le=10_000_000, doc="number of sequences"),
    "length": Param("int", 12, ge=1, le=100_000, doc="bits per sequence"),
}
make_parity.TASK = CLASSIFICATION

# name -> generator, for the lead to register as built-in datasets.
SEQUENCE_TASKS = {"marked_xor": make_marked_xor, "parity": make_parity}
