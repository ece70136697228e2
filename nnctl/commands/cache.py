"""`nnctl cache list|clear`: the parsed-table cache (see nnctl.data.table_cache)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

import typer

from nnctl.console import console
from nnctl.errors import NnctlError

DIR_OPTION = typer.Option(None, "--dir", help="The cache folder (default: data.cache: auto, i.e. NNCTL_CACHE_DIR, "
                                              "else XDG_CACHE_HOME/nnctl or ~/.cache/nnctl).")


def _cache(folder: Optional[Path]):
    from nnctl.data.table_cache import TableCache, cache_root
    return TableCache(folder if folder is not None else cache_root("auto"))


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def register(app: typer.Typer, fail: Callable[[BaseException], None]) -> None:
    group = typer.Typer(no_args_is_help=True, help="The parsed-table cache: list or clear it.")
    app.add_typer(group, name="cache")

    @group.command("list")
    def list_command(folder: Optional[Path] = DIR_OPTION) -> None:
        """One line per cached table: its CSV file, rows, columns, size, age, and whether it still matches the file."""
        try:
            cache = _cache(folder)
            entries = cache.entries()
        except (NnctlError, OSError) as err:
            fail(err)
            return
        if not entries:
            console.print(f"{cache.dir}: no cached tables", highlight=False)
            return
        # plain lines, not a table: the paths are the point and must not be cut to the terminal
        console.print(f"{cache.dir}:", highlight=False)
        for e in entries:
            built = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["built"])) if e["built"] else "-"
            rows = f"{e['rows']:,} rows, {e['columns']} columns, " if e["rows"] is not None else ""
            console.print(f"  {e['source'] or e['key']}: {rows}{_size(e['bytes'])}, built {built}, {e['state']}",
                          highlight=False, markup=False, soft_wrap=True)
        total = sum(e["bytes"] for e in entries)
        console.print(f"{len(entries)} table{'s' * (len(entries) != 1)}, {_size(total)}", highlight=False)

    @group.command("clear")
    def clear_command(folder: Optional[Path] = DIR_OPTION) -> None:
        """Remove every cached table (the next run parses its CSV again)."""
        try:
            cache = _cache(folder)
            count, total = cache.clear()
        except (NnctlError, OSError) as err:
            fail(err)
            return
        console.print(f"{cache.dir}: removed {count} table{'s' * (count != 1)} ({_size(total)})", highlight=False)
