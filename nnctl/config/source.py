"""Reading a YAML spec safely, remembering the line of every key so errors can point at it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nnctl.errors import ConfigError

# A path into the spec: keys and list indices, e.g. ("model", "layers", 2, "units").
KeyPath = tuple


def format_path(path: KeyPath) -> str:
    """("model", "layers", 2, "units") -> "model.layers[2].units"."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not isinstance(part, str) or _needs_quotes(part):
            # a key like " " or "a: b" (or a null/float key) would vanish into the message
            out += f"[{part!r}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<spec>"


def printable(text: str) -> str:
    """`text` with control characters escaped: user text inside a message must not break its one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _needs_quotes(key: str) -> bool:
    return not key or any(c.isspace() or not c.isprintable() or c in ":[]'\"" for c in key)


@dataclass
class Source:
    """The raw spec as plain Python data, plus where each part came from."""

    data: Any
    filename: str = "<spec>"
    lines: dict[KeyPath, int] = field(default_factory=dict)
    overridden: set[KeyPath] = field(default_factory=set)

    def where(self, path: KeyPath) -> str:
        """' (digits.yaml line 18)' for the closest enclosing key that has a known line."""
        for n in range(len(path), -1, -1):
            sub = tuple(path[:n])
            if sub in self.overridden:
                return f" (--set {format_path(sub)})"
            if sub in self.lines:
                return f" ({self.filename} line {self.lines[sub]})"
        return f" ({self.filename})"


# Aliases let a few lines of YAML stand for a huge (or, for a self-reference, infinite)
# tree; everything downstream walks the expanded tree, so both are refused up front.
MAX_NODES = 100_000
MAX_DEPTH = 64


def _measure(node: yaml.Node, filename: str, path: KeyPath = (), active: set | None = None,
             sizes: dict | None = None) -> int:
    """Nodes in the tree `node` expands to (aliases counted at every use); a ConfigError if it
    refers to itself, nests deeper than MAX_DEPTH or expands to more than MAX_NODES."""
    active = set() if active is None else active
    sizes = {} if sizes is None else sizes
    key = id(node)
    if key in sizes:
        return sizes[key]
    line = node.start_mark.line + 1
    where = f"{format_path(path)}: " if path else ""
    if key in active:
        raise ConfigError(f"{where}an alias refers to the node that contains it ({filename} line {line})")
    if len(path) > MAX_DEPTH:
        raise ConfigError(f"{where}nested more than {MAX_DEPTH} levels deep ({filename} line {line})")
    if isinstance(node, yaml.MappingNode):
        children = [(_key_text(k), v) for k, v in node.value]
    elif isinstance(node, yaml.SequenceNode):
        children = list(enumerate(node.value))
    else:
        children = []
    active.add(key)
    total = 1
    for part, child in children:
        total += _measure(child, filename, path + (part,), active, sizes)
        if total > MAX_NODES:
            raise ConfigError(f"{where}expands to more than {MAX_NODES:,} values "
                              f"(aliases repeated inside aliases?) ({filename} line {line})")
    active.discard(key)
    sizes[key] = total
    return total


def _key_text(node: yaml.Node):
    return node.value if isinstance(node, yaml.ScalarNode) else "?"


def _compose(text: str, filename: str) -> tuple[yaml.Node | None, Any]:
    """The node tree (for lines) and the data of one YAML document, with the safe loader only."""
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                _measure(node, filename)
            # one parse for both: the data is constructed from the very node tree measured above
            data = _construct(loader, node, filename) if node is not None else None
        finally:
            loader.dispose()
    except RecursionError:
        # PyYAML composes recursively: brackets nested a thousand deep exhaust the stack first
        raise ConfigError(f"{filename}: nested more than {MAX_DEPTH} levels deep") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = err.problem or err.context or "invalid YAML"
        if "constructor for the tag" in str(problem):
            problem = f"tag not allowed (specs are read with a safe loader): {problem}"
        raise ConfigError(f"{filename}{where}: {problem}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{filename}: invalid YAML: {str(err).splitlines()[0]}") from None
    return node, data


def _construct(loader: yaml.SafeLoader, node: yaml.Node, filename: str) -> Any:
    try:
        return loader.construct_document(node)
    except yaml.YAMLError:
        raise
    except Exception as err:  # noqa: BLE001
        # PyYAML's own constructors trip over some explicitly tagged scalars (`!!float ''`,
        # `!!timestamp x`) with IndexError/AttributeError/...; still the user's input, not our bug
        raise ConfigError(f"{filename}: invalid YAML value ({type(err).__name__}: {err})") from None


def _walk(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[tuple, int] = {}
        for key_node, value_node in node.value:
            key = _key_text(key_node)
            line = key_node.start_mark.line + 1
            if (key_node.tag, key) in seen:
                raise ConfigError(
                    f"{format_path(path + (key,))}: duplicate key (lines {seen[key_node.tag, key]} and {line})"
                )
            seen[key_node.tag, key] = line
            lines[path + (key,)] = line
            _walk(value_node, path + (key,), lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _walk(item, path + (i,), lines)


def parse_yaml(text: str, filename: str) -> Source:
    """Parse with the safe loader only; a syntax error or unsafe tag is a one-line ConfigError."""
    node, data = _compose(text, filename)
    lines: dict[KeyPath, int] = {}
    if node is not None:
        _walk(node, (), lines)
    return Source(data=data, filename=filename, lines=lines)


def read_spec(path: str | Path) -> Source:
    """Read a spec file; a missing or unreadable file is a ConfigError naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a YAML file") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    return parse_yaml(text, path.name)


def apply_overrides(source: Source, overrides: list[str]) -> None:
    """Apply `--set a.b.c=value` overrides in place; values are parsed as YAML."""
    if overrides and not isinstance(source.data, dict):
        source.data = {}
    for item in overrides:
        shown = printable(item)  # echoed in messages, which must stay one line
        if "=" not in item:
            raise ConfigError(f"--set {shown}: expected KEY=VALUE, e.g. optimizer.lr=0.01")
        dotted, text = item.split("=", 1)
        keys = tuple(k for k in dotted.strip().split("."))
        if not all(keys):
            raise ConfigError(f"--set {shown}: empty key in '{printable(dotted)}'")
        try:
            _, value = _compose(text, "value")
        except ConfigError as err:
            raise ConfigError(f"--set {shown}: {err}") from None
        target = source.data
        for i, key in enumerate(keys[:-1]):
            nxt = target.get(key)
            if nxt is None:
                nxt = target[key] = {}
            elif not isinstance(nxt, dict):
                # e.g. `--set optimizer.lr=...` where the spec says `optimizer: adam`
                if isinstance(nxt, str) and key in ("optimizer", "schedule", "loss"):
                    nxt = target[key] = {"name": nxt}
                else:
                    raise ConfigError(f"--set {shown}: {format_path(keys[: i + 1])} is not a mapping")
            target = nxt
        target[keys[-1]] = value
        source.overridden.add(keys)
