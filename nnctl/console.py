"""The one Rich console for stdout and one for stderr; nothing else in nnctl prints.

Neither console ever turns text into emoji (`:x:` in a user's value is text). The stderr
console also never interprets markup or highlights: everything it shows may quote user text.
"""
from rich.console import Console

from nnctl.errors import NnctlError, one_line

console = Console(highlight=False, emoji=False)
err_console = Console(stderr=True, highlight=False, markup=False, emoji=False)


def print_error(err: BaseException) -> None:
    """`error: <problem>` on stderr, one line per problem, each escaped and length-capped."""
    problems = err.problems if isinstance(err, NnctlError) else (str(err).splitlines() or [type(err).__name__])
    for problem in problems:
        err_console.print(f"error: {one_line(problem)}", markup=False, highlight=False, emoji=False,
                          soft_wrap=True)
