"""Reading a YAML spec safely, remembering the line of every key so errors can point at it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nnctl.errors import EXCERPT_CHARS, ConfigError, excerpt, printable
from nnctl.fileio import SPEC_MAX_BYTES, read_text

# A path into the spec: keys and list indices, e.g. ("model", "layers", 2, "units").
KeyPath = tuple


def format_path(path: KeyPath) -> str:
    """("model", "layers", 2, "units") -> "model.layers[2].units"."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and len(part) > EXCERPT_CHARS:
            # a key that is a whole pasted file: its start identifies it
            out += f"[{part[:EXCERPT_CHARS]!r}...]"
        elif not isinstance(part, str) or _needs_quotes(part):
            # a key like " " or "a: b" (or a null/float key) would vanish into the message
            out += f"[{part!r}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<spec>"


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


def _too_many(filename: str, mark) -> ConfigError:
    return ConfigError(f"{filename} line {mark.line + 1}: more than {MAX_NODES:,} values; a spec is never that large")


class _Loader(yaml.SafeLoader):
    """The pure-Python safe loader (without libyaml), counting nodes as it composes them, so
    a document with millions of values is refused after MAX_NODES of them, not after PyYAML
    has built the whole tree."""

    def __init__(self, text: str, filename: str):
        super().__init__(text)
        self.filename = filename
        self.nodes = 0

    def compose_node(self, parent, index):
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _too_many(self.filename, self.peek_event().start_mark)
        return super().compose_node(parent, index)


# libyaml's parser with PyYAML's safe constructors: the same data, about 50x faster than
# the pure-Python parser (which needs seconds for a few hundred kB).
_CLoader = getattr(yaml, "CSafeLoader", None)
_NODE_EVENTS = (yaml.ScalarEvent, yaml.AliasEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent)
# The C composer recurses without Python's recursion limit: nesting is bounded from the
# events first (well above MAX_DEPTH, which _measure reports with its path).
_EVENT_DEPTH = 4 * MAX_DEPTH


def _check_events(text: str, filename: str) -> None:
    """Count nodes and nesting from libyaml's event stream, before any node exists."""
    parser = _CLoader(text)
    try:
        nodes = depth = 0
        while parser.check_event():
            event = parser.get_event()
            if isinstance(event, _NODE_EVENTS):
                nodes += 1
                if nodes > MAX_NODES:
                    raise _too_many(filename, event.start_mark)
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                depth += 1
                if depth > _EVENT_DEPTH:
                    raise ConfigError(f"{filename}: nested more than {MAX_DEPTH} levels deep")
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                depth -= 1
    finally:
        parser.dispose()


def _loader(text: str, filename: str):
    if _CLoader is None:
        return _Loader(text, filename)
    _check_events(text, filename)
    return _CLoader(text)


def _compose(text: str, filename: str) -> tuple[yaml.Node | None, Any, dict[KeyPath, int]]:
    """The node tree, the data and the line of every key of one YAML document (safe loader only)."""
    lines: dict[KeyPath, int] = {}
    try:
        loader = _loader(text, filename)
        try:
            node = loader.get_single_node()
            data = None
            if node is not None:
                _measure(node, filename)
                # lines and duplicate keys from the tree as written; merge keys (<<) are
                # resolved here too, so the constructor sees plain mappings
                _walk(node, (), lines, filename)
                # one parse for both: the data is constructed from the very node tree measured above
                data = _construct(loader, node, filename)
        finally:
            loader.dispose()
    except RecursionError:
        # PyYAML composes recursively: brackets nested a thousand deep exhaust the stack first
        raise ConfigError(f"{filename}: nested more than {MAX_DEPTH} levels deep") from None
    except yaml.MarkedYAMLError as err:
        if "maximum nesting depth" in str(err.problem):  # libyaml's own bound (1000), met while scanning ahead
            raise ConfigError(f"{filename}: nested more than {MAX_DEPTH} levels deep") from None
        mark = err.problem_mark or err.context_mark
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = err.problem or err.context or "invalid YAML"
        if "constructor for the tag" in str(problem):
            problem = f"tag not allowed (specs are read with a safe loader): {problem}"
        raise ConfigError(f"{filename}{where}: {printable(problem)}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{filename}: invalid YAML: {printable(str(err).splitlines()[0])}") from None
    return node, data, lines


def _construct(loader: yaml.SafeLoader, node: yaml.Node, filename: str) -> Any:
    try:
        return loader.construct_document(node)
    except yaml.YAMLError:
        raise
    except Exception as err:  # noqa: BLE001
        # PyYAML's own constructors trip over some explicitly tagged scalars (`!!float ''`,
        # `!!timestamp x`) with IndexError/AttributeError/...; still the user's input, not our bug
        raise ConfigError(f"{filename}: invalid YAML value ({type(err).__name__}: {excerpt(str(err), 100)})") from None


MERGE_TAG = "tag:yaml.org,2002:merge"


def _merge_sources(value: yaml.Node, path: KeyPath, filename: str) -> list[yaml.MappingNode]:
    """The mappings a `<<:` value merges in, in priority order."""
    items = value.value if isinstance(value, yaml.SequenceNode) else [value]
    for item in items:
        if not isinstance(item, yaml.MappingNode):
            kind = "a list" if isinstance(item, yaml.SequenceNode) else "a scalar"
            raise ConfigError(f"{format_path(path + ('<<',))}: merges a mapping or a list of mappings, "
                              f"got {kind} ({filename} line {item.start_mark.line + 1})")
    return items


def _resolve_merges(node: yaml.MappingNode, path: KeyPath, filename: str, depth: int = 0) -> list[tuple[Any, yaml.Node, yaml.Node]]:
    """(key, key node, value node) of a mapping after YAML 1.1 merge keys, and the node
    rewritten to hold exactly those pairs (so the constructor has no merging left to do).

    Its own keys win (a duplicate among them is an error), then each `<<` source in order,
    a key taken from the first source that has it. Done here rather than by PyYAML, whose
    versions disagree on which of two merged sources wins.
    """
    if depth > MAX_DEPTH:
        raise ConfigError(f"{format_path(path)}: merge keys nested more than {MAX_DEPTH} levels deep")
    own: list[tuple[Any, yaml.Node, yaml.Node]] = []
    seen: dict[tuple, int] = {}
    merges: list[yaml.Node] = []
    for key_node, value_node in node.value:
        if key_node.tag == MERGE_TAG:
            merges.append(value_node)
            continue
        key = _key_text(key_node)
        line = key_node.start_mark.line + 1
        if (key_node.tag, key) in seen:
            raise ConfigError(
                f"{format_path(path + (key,))}: duplicate key (lines {seen[key_node.tag, key]} and {line})"
            )
        seen[key_node.tag, key] = line
        own.append((key, key_node, value_node))
    if not merges:
        return own
    merged: list[tuple[Any, yaml.Node, yaml.Node]] = []
    for value in merges:
        for source in _merge_sources(value, path, filename):
            for key, key_node, value_node in _resolve_merges(source, path, filename, depth + 1):
                if (key_node.tag, key) not in seen:
                    seen[key_node.tag, key] = key_node.start_mark.line + 1
                    merged.append((key, key_node, value_node))
    pairs = merged + own  # merged keys first, as PyYAML orders them
    node.value = [(k, v) for _, k, v in pairs]
    return pairs


def _walk(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int], filename: str) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.ScalarNode) and "\x00" in node.value:
        # "\0" in a quoted YAML string: the OS refuses it in a path (ValueError deep in open()),
        # and no other setting means anything by it, so it is refused for every value and key
        where = format_path(path) or filename
        raise ConfigError(f"{where}: contains a NUL character (\\0), which no setting or file name "
                          f"can hold ({filename} line {node.start_mark.line + 1})")
    if isinstance(node, yaml.MappingNode):
        for key, key_node, value_node in _resolve_merges(node, path, filename):
            # a merged key points at its line in the block it was merged from
            lines[path + (key,)] = key_node.start_mark.line + 1
            _walk(key_node, path + (key,), lines, filename)
            _walk(value_node, path + (key,), lines, filename)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _walk(item, path + (i,), lines, filename)


def parse_yaml(text: str, filename: str) -> Source:
    """Parse with the safe loader only; a syntax error or unsafe tag is a one-line ConfigError."""
    _, data, lines = _compose(text, filename)
    return Source(data=data, filename=filename, lines=lines)


def read_spec(path: str | Path) -> Source:
    """Read a spec file; a missing, unreadable, non-regular or oversized file is a ConfigError naming it."""
    path = Path(path)
    text = read_text(path, SPEC_MAX_BYTES, ConfigError, what="spec")
    return parse_yaml(text, path.name)


def apply_overrides(source: Source, overrides: list[str]) -> None:
    """Apply `--set a.b.c=value` overrides in place; values are parsed as YAML."""
    if overrides and not isinstance(source.data, dict):
        source.data = {}
    for item in overrides:
        shown = excerpt(item, 300)  # echoed in messages: one line, and not a whole pasted file
        if "=" not in item:
            raise ConfigError(f"--set {shown}: expected KEY=VALUE, e.g. optimizer.lr=0.01")
        dotted, text = item.split("=", 1)
        keys = tuple(k for k in dotted.strip().split("."))
        if not all(keys):
            raise ConfigError(f"--set {shown}: empty key in '{printable(dotted)}'")
        try:
            _, value, _ = _compose(text, "value")
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
