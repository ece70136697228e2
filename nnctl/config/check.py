"""Checking raw YAML values against declared Params, collecting every error with its path and line."""
from __future__ import annotations

import math
import re
from typing import Any, Callable

from nnctl.config.source import KeyPath, Source, format_path, printable
from nnctl.hparams import Param, Registry, format_number, unknown_name_message
from nnctl.errors import EXCERPT_CHARS, ConfigError

_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")

_TYPE_WORDS = {
    "float": "a number",
    "int": "an integer",
    "bool": "true or false",
    "str": "a string",
    "int_or_tuple": "an integer or a list of integers",
    "float_list": "a list of numbers",
    "float_list_or_map": "a list of numbers or a mapping of names to numbers",
    "int_list": "a list of integers",
    "layers": "a list of layer specs",
    "mapping": "a mapping",
}


def describe(value: Any) -> str:
    if isinstance(value, str):
        # a short, escaped excerpt: the value may be a whole file that someone pointed nnctl at
        if len(value) > EXCERPT_CHARS:
            return f"{value[:EXCERPT_CHARS]!r}... ({len(value):,} characters)"
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'}"
    return repr(value)


class Checker:
    """Accumulates errors; `raise_if_any()` raises one ConfigError with one line per error."""

    def __init__(self, source: Source):
        self.source = source
        self.errors: list[str] = []
        # key paths whose value the spec did not give (filled from a Param default), so
        # `nnctl config` can show users what they did not choose
        self.defaulted: set[KeyPath] = set()

    def error(self, path: KeyPath, message: str) -> None:
        line = f"{format_path(path)}: {printable(message)}{self.source.where(path)}"
        if line not in self.errors:
            self.errors.append(line)

    def raise_if_any(self) -> None:
        if self.errors:
            raise ConfigError(*self.errors)  # one line per problem

    # -- scalars ---------------------------------------------------------------------------
    def _number(self, value: Any, kind: str) -> bool:
        if isinstance(value, bool):
            return False
        if kind == "int":
            return isinstance(value, int)
        return isinstance(value, (int, float))

    def _bounds(self, path: KeyPath, value: float, p: Param) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            self.error(path, f"must be a finite number, got {value}")
            return False
        for bound, op, word in ((p.gt, lambda a, b: a > b, ">"), (p.ge, lambda a, b: a >= b, ">="),
                                (p.lt, lambda a, b: a < b, "<"), (p.le, lambda a, b: a <= b, "<=")):
            if bound is not None and not op(value, bound):
                self.error(path, f"must be {word} {format_number(bound)}, got {format_number(value)}")
                return False
        return True

    def _number_map(self, path: KeyPath, value: dict, p: Param) -> dict:
        """name -> number; the names are checked later by whoever knows them (e.g. the classes)."""
        out = {}
        for key, item in value.items():
            if isinstance(key, (dict, list)) or key is None:
                self.error(path, f"keys must be names or numbers, got {describe(key)}")
                continue
            if not self._number(item, "float"):
                self.error(path + (str(key),), f"must be a number, got {describe(item)}")
                continue
            self._bounds(path + (str(key),), float(item), p)
            out[key] = float(item)
        return out

    def value(self, path: KeyPath, value: Any, p: Param, registries: dict[str, Registry]) -> Any:
        """Check one value; return it normalized (ints widened to float where floats expected)."""
        if value is None:
            if p.nullable or p.default is None:
                return None
            self.error(path, f"must be {_TYPE_WORDS.get(p.kind, p.kind)}, got null")
            return value
        kind = p.kind
        if kind in ("float", "int"):
            if kind == "float" and isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
                # PyYAML reads `1e-3` (no dot) as a string; users mean the number.
                value = float(value)
            if not self._number(value, kind):
                self.error(path, f"must be {_TYPE_WORDS[kind]}, got {describe(value)}")
                return value
            value = float(value) if kind == "float" else int(value)
            self._bounds(path, value, p)
            return value
        if kind == "bool":
            if not isinstance(value, bool):
                self.error(path, f"must be true or false, got {describe(value)}")
            return value
        if kind == "bool_or_choice":
            if not isinstance(value, bool) and value not in (p.choices or ()):
                self.error(path, f"must be true, false or one of {', '.join(p.choices or ())}, got {describe(value)}")
            return value
        if kind == "str":
            if value is False and p.false_means is not None:
                return p.false_means
            if not isinstance(value, str):
                self.error(path, f"must be a string, got {describe(value)}")
            elif p.choices is not None and value not in p.choices:
                self.error(path, unknown_name_message("value", value, list(p.choices)))
            return value
        if kind == "float_list_or_map" and isinstance(value, dict):
            return self._number_map(path, value, p)
        if kind in ("int_list", "float_list", "int_or_tuple", "float_list_or_map"):
            if isinstance(value, str) and p.choices is not None and value in p.choices:
                return value  # a named rule in place of the list, e.g. class_weights: balanced
            if kind == "int_or_tuple" and isinstance(value, int) and not isinstance(value, bool):
                self._bounds(path, value, p)
                return value
            if not isinstance(value, list):
                self.error(path, f"must be {_TYPE_WORDS[kind]}, got {describe(value)}")
                return value
            elem = "float" if kind in ("float_list", "float_list_or_map") else "int"
            out = []
            for i, item in enumerate(value):
                if not self._number(item, elem):
                    self.error(path + (i,), f"must be {_TYPE_WORDS[elem]}, got {describe(item)}")
                    out.append(item)
                    continue
                item = float(item) if elem == "float" else int(item)
                self._bounds(path + (i,), item, p)
                out.append(item)
            return out
        if kind in ("activation", "initializer"):
            ref = self.component(path, value, registries[kind], name_key="name")
            # a bare name stays a bare name, so resolved specs read like what was written
            if isinstance(ref, dict) and isinstance(value, str) and "name" in ref:
                return ref["name"]
            return ref
        if kind == "mapping":
            if not isinstance(value, dict):
                self.error(path, f"must be a mapping, got {describe(value)}")
            return value
        if kind == "layers":
            return self.layer_list(path, value, registries)
        return value  # "any"

    # -- sections and components -------------------------------------------------------
    def section(self, path: KeyPath, raw: Any, params: dict[str, Param],
                registries: dict[str, Registry], allow_extra: tuple[str, ...] = ()) -> dict[str, Any]:
        """Check a mapping against a PARAMS table; return it with every default filled in."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            self.error(path, f"must be a mapping, got {describe(raw)}")
            return {k: p.default for k, p in params.items() if not p.required}
        out: dict[str, Any] = {}
        for key in raw:
            if key not in params and key not in allow_extra:
                self.error(path + (key,), unknown_name_message("key", key, sorted(params)))
        for key, p in params.items():
            if key in raw:
                out[key] = self.value(path + (key,), raw[key], p, registries)
            elif p.required:
                self.error(path + (key,), "is required")
            else:
                out[key] = _copy(p.default)
                self.defaulted.add(path + (key,))
        for key in allow_extra:
            if key in raw:
                out[key] = raw[key]
        return out

    def component(self, path: KeyPath, raw: Any, registry: Registry, name_key: str = "name",
                  common: dict[str, Param] | None = None,
                  post: Callable[[type, dict], None] | None = None) -> Any:
        """A registry reference: "adam" or {name: adam, lr: ...}; returns {name: canonical, **options}."""
        # a bare name ("adam") is the name itself: its errors point at `path`, not path.name
        name_path = path if isinstance(raw, str) else path + (name_key,)
        if isinstance(raw, str):
            raw = {name_key: raw}
        if not isinstance(raw, dict):
            self.error(path, f"must be a {registry.kind} name or a mapping with '{name_key}', got {describe(raw)}")
            return raw
        name = raw.get(name_key)
        if name is None:
            self.error(path + (name_key,), f"is required (one of: {', '.join(registry.names())})")
            return raw
        if not isinstance(name, str) or name not in registry:
            self.error(name_path, unknown_name_message(registry.kind, name, registry.names()))
            return raw
        canon = registry.canonical(name)
        cls = registry.entries[canon]
        params = dict(getattr(cls, "PARAMS", {}))
        if common:
            params = {**common, **params}
        options = {k: v for k, v in raw.items() if k != name_key}
        checked = self.section(path, options, params, {})
        if post is not None:
            post(cls, checked)
        return {name_key: canon, **checked}

    def layer_list(self, path: KeyPath, raw: Any, registries: dict[str, Registry]) -> list:
        """The long model form: [ {dense: {units: 8}}, {dropout: 0.2}, relu, ... ] -> canonical specs."""
        if not isinstance(raw, list):
            self.error(path, f"must be a list of layer specs, got {describe(raw)}")
            return []
        layers = registries["layer"]
        out = []
        for i, item in enumerate(raw):
            p = path + (i,)
            if isinstance(item, str):
                name, options = item, {}
            elif isinstance(item, dict) and isinstance(item.get("type"), str):
                # the canonical form, as stored in resolved configs: {type: relu, ...}
                name, options = item["type"], {k: v for k, v in item.items() if k != "type"}
            elif isinstance(item, dict) and len(item) == 1:
                name, options = next(iter(item.items()))
            else:
                self.error(p, "must be a layer name or a one-key mapping like {dense: {units: 64}}")
                continue
            if not isinstance(name, str) or name not in layers:
                self.error(p, unknown_name_message("layer", name, layers.names()))
                continue
            cls = layers.get(name)
            params = getattr(cls, "PARAMS", {})
            if options is None:
                options = {}
            if not isinstance(options, dict):
                # scalar shorthand: {dropout: 0.2} -> rate, {dense: 64} -> units
                short = getattr(cls, "SHORTHAND", None) or _first_required(params)
                if short is None:
                    self.error(p, f"{name} takes options as a mapping, got {describe(options)}")
                    continue
                options = {short: options}
                p_opts = p + (name,)
            else:
                p_opts = p if isinstance(item, dict) and "type" in item else p + (name,)
            checked = self.section(p_opts, options, params, registries)
            if p_opts != p:
                # resolved configs hold layers as {type: ..., **options}: record defaults at that path
                moved = {d for d in self.defaulted if d[:len(p_opts)] == p_opts}
                self.defaulted -= moved
                self.defaulted |= {p + d[len(p_opts):] for d in moved}
            out.append({"type": layers.canonical(name), **checked})
        return out


def _first_required(params: dict[str, Param]) -> str | None:
    for k, p in params.items():
        if p.required:
            return k
    return None


def _copy(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        import copy
        return copy.deepcopy(value)
    if isinstance(value, tuple):
        return list(value)
    return value
