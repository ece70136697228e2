"""The resolved spec as YAML with `# default` after every value the spec did not give."""
from __future__ import annotations

from typing import Any

import yaml

DEFAULT_MARK = "  # default"


def _scalar(value: Any) -> str:
    # flow style keeps a scalar or a list of scalars on its key's line
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10_000)
    # a bare scalar document ends with an explicit end marker that a value on a key's line must not carry
    return text.removesuffix("\n...\n").strip()


def _simple(value: Any) -> bool:
    if isinstance(value, dict):
        return not value
    if isinstance(value, list):
        return all(not isinstance(v, (dict, list)) for v in value)
    return True


def annotated_yaml(data: dict[str, Any], defaulted: frozenset | set) -> str:
    """YAML of `data` (a mapping) in block style, marking the key paths in `defaulted`.

    Paths are tuples of keys and list indices, as `Checker.defaulted` records them.
    """
    lines: list[str] = []

    def emit_map(mapping: dict[str, Any], path: tuple, indent: str, first_prefix: str | None = None) -> None:
        for i, (key, value) in enumerate(mapping.items()):
            prefix = first_prefix if (first_prefix is not None and i == 0) else indent
            mark = DEFAULT_MARK if path + (key,) in defaulted else ""
            if _simple(value):
                lines.append(f"{prefix}{key}: {_scalar(value)}{mark}")
            elif isinstance(value, dict):
                lines.append(f"{prefix}{key}:{mark}")
                emit_map(value, path + (key,), indent + "  ")
            else:
                lines.append(f"{prefix}{key}:{mark}")
                emit_list(value, path + (key,), indent + "  ")

    def emit_list(items: list[Any], path: tuple, indent: str) -> None:
        for j, item in enumerate(items):
            if isinstance(item, dict) and item:
                emit_map(item, path + (j,), indent + "  ", first_prefix=indent + "- ")
            elif isinstance(item, list) and not _simple(item):
                lines.append(f"{indent}-")
                emit_list(item, path + (j,), indent + "  ")
            else:
                lines.append(f"{indent}- {_scalar(item)}")

    emit_map(data, (), "")
    return "\n".join(lines) + "\n"
