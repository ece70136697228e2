"""The one error family of nnctl: every expected failure is an NnctlError with a one-line message.

The CLI catches NnctlError once, prints its message and exits 1; anything else is a bug
and keeps its traceback.
"""


class NnctlError(Exception):
    """Base of every error a user can cause; `str(err)` is the one line shown to them."""


class ConfigError(NnctlError):
    """A spec that cannot work: unknown key or name, wrong type, out of range, bad shape."""


class DataError(NnctlError):
    """A data file or dataset that cannot be used; the message names file, row and column."""


class CheckpointError(NnctlError):
    """A checkpoint or state dict that does not fit: missing, corrupt, or mismatched keys/shapes."""


class TrainingError(NnctlError):
    """Training could not go on, e.g. a non-finite loss."""
