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
        else:
            out += f".{part}" if out else str(part)
    return out or "<spec>"


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


def _walk(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(
                    f"{format_path(path + (key,))}: duplicate key (lines {seen[key]} and {line})"
                )
            seen[key] = line
            lines[path + (key,)] = line
            _walk(value_node, path + (key,), lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _walk(item, path + (i,), lines)


def parse_yaml(text: str, filename: str) -> Source:
    """Parse with the safe loader only; a syntax error or unsafe tag is a one-line ConfigError."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = err.problem or err.context or "invalid YAML"
        if "constructor for the tag" in str(problem):
            problem = f"tag not allowed (specs are read with a safe loader): {problem}"
        raise ConfigError(f"{filename}{where}: {problem}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{filename}: invalid YAML: {str(err).splitlines()[0]}") from None
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
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. optimizer.lr=0.01")
        dotted, text = item.split("=", 1)
        keys = tuple(k for k in dotted.strip().split("."))
        if not all(keys):
            raise ConfigError(f"--set {item}: empty key in '{dotted}'")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item}: value is not valid YAML: {str(err).splitlines()[0]}") from None
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
                    raise ConfigError(f"--set {item}: {format_path(keys[: i + 1])} is not a mapping")
            target = nxt
        target[keys[-1]] = value
        source.overridden.add(keys)
