"""The one error family of nnctl: every expected failure is an NnctlError with one-line problems.

The CLI catches NnctlError once, prints each problem on its own line and exits 1; anything
else is a bug and keeps its traceback. Messages that quote a user's text (a file's contents,
a header name, a value) pass it through `printable` (escapes control characters, so one
problem stays one line) or `excerpt` (that, cut to a short prefix, so an error never prints
a whole file).
"""
from __future__ import annotations

# The longest piece of user text an error quotes, and the longest line it prints at all.
EXCERPT_CHARS = 60
MAX_LINE_CHARS = 1000


class NnctlError(Exception):
    """Base of every error a user can cause.

    `NnctlError("a problem")` or, for several problems found at once,
    `NnctlError("first", "second")`: each argument is printed as one line, and a newline
    inside an argument is escaped rather than starting a new line. `str(err)` joins them
    with newlines.
    """

    @property
    def problems(self) -> list[str]:
        return [str(a) for a in self.args] or [type(self).__name__]

    def __str__(self) -> str:
        return "\n".join(str(a) for a in self.args)


class ConfigError(NnctlError):
    """A spec that cannot work: unknown key or name, wrong type, out of range, bad shape."""


class DataError(NnctlError):
    """A data file or dataset that cannot be used; the message names file, row and column."""


class CheckpointError(NnctlError):
    """A checkpoint or state dict that does not fit: missing, corrupt, or mismatched keys/shapes."""


class TrainingError(NnctlError):
    """Training could not go on, e.g. a non-finite loss."""


def printable(text: str) -> str:
    """`text` with control characters escaped: user text inside a message must not break its one line."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """At most `limit` characters of user text, escaped, with how much was left out.

    An error about a value that should have been a path or a mapping must not echo a whole
    file someone pointed nnctl at (it may hold secrets): the start is enough to recognise it.
    """
    text = str(text)
    if len(text) <= limit:
        return printable(text)
    return f"{printable(text[:limit])}... ({len(text):,} characters)"


def quoted(value: object) -> str:
    """repr(value) for a message, as an excerpt: a value read from a user's file (a spec, a
    checkpoint's metadata) may be a whole file's worth of text."""
    return excerpt(repr(value))


def one_line(text: str, limit: int = MAX_LINE_CHARS) -> str:
    """A problem as exactly one printable line of at most about `limit` characters."""
    text = printable(text)
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text) - limit:,} more characters)"
    return text
