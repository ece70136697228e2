"""`nnctl cache list|clear`: the parsed-table cache and the image decode cache (see nnctl.data.table_cache
and nnctl.data.image_cache), both under the one cache folder."""
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
    from nnctl.engine.memory import format_bytes   # imported late: numpy is not loaded for `nnctl --help`
    return format_bytes(n)


def register(app: typer.Typer, fail: Callable[[BaseException], None]) -> None:
    group = typer.Typer(no_args_is_help=True, help="The parsed-table and image decode caches: list or clear them.")
    app.add_typer(group, name="cache")

    @group.command("list")
    def list_command(folder: Optional[Path] = DIR_OPTION) -> None:
        """One line per cached table (its CSV file, rows, columns, size, age, whether it still matches the
        file), then one per decoded image folder (images, shape, size, age)."""
        try:
            cache = _cache(folder)
            entries = cache.entries()
        except (NnctlError, OSError) as err:
            fail(err)
            return
        if not entries:
            console.print(f"{cache.dir}: no cached tables", highlight=False)
            _list_images(cache.root)
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
        _list_images(cache.root)

    @group.command("clear")
    def clear_command(folder: Optional[Path] = DIR_OPTION) -> None:
        """Remove every cached table and decoded image folder (the next run parses or decodes again)."""
        from nnctl.data.image_cache import clear_images
        try:
            cache = _cache(folder)
            count, total = cache.clear()
            images, image_bytes = clear_images(cache.root)
        except (NnctlError, OSError) as err:
            fail(err)
            return
        console.print(f"{cache.dir}: removed {count} table{'s' * (count != 1)} ({_size(total)})", highlight=False,
                      soft_wrap=True)
        console.print(f"{cache.root / 'images'}: removed {images} image folder{'s' * (images != 1)} "
                      f"({_size(image_bytes)})", highlight=False, soft_wrap=True)


def _list_images(root: Path) -> None:
    """The image decode cache's entries, one line each (the file name is the folder's key)."""
    from nnctl.data.image_cache import image_entries
    entries = image_entries(root)
    folder = root / "images"
    if not entries:
        console.print(f"{folder}: no decoded image folders", highlight=False)
        return
    console.print(f"{folder}:", highlight=False)
    for e in entries:
        built = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["built"]))
        what = (f"{e['images']:,} images of {'x'.join(str(s) for s in e['shape'])}, " if e["shape"] is not None
                else "unreadable, ")
        console.print(f"  {e['file'].name}: {what}{_size(e['bytes'])}, built {built}",
                      highlight=False, markup=False, soft_wrap=True)
    total = sum(e["bytes"] for e in entries)
    console.print(f"{len(entries)} image folder{'s' * (len(entries) != 1)}, {_size(total)}", highlight=False)
