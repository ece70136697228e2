"""The one Rich console for stdout and one for stderr; nothing else in nnctl prints."""
from rich.console import Console

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
