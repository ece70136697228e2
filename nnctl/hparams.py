"""Declared hyperparameters: each registered engine class lists what it accepts, once.

The config layer reads these declarations to validate YAML (type, range, choices) and to
fill defaults; constructors take the same names as keyword arguments, so a component's
`get_config()` round-trips through the spec. Nothing here knows about YAML. It sits at the
bottom of the package (beside errors) because the engine, the data layer, augmentation and
the sweep spec all declare their parameters with it; none of them owns it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any


REQUIRED = object()  # sentinel default: the spec must give this value


@dataclass(frozen=True)
class Param:
    """One hyperparameter.

    kind: "float", "int", "bool", "str", "bool_or_choice" (true/false or one of `choices`),
          "int_or_tuple" (an int or a list of ints),
          "float_list", "int_list", "float_list_or_map" (a list of numbers, or a mapping
          name -> number that a later stage turns into the list, e.g. class weights by label),
          "layers" (a nested list of layer specs), "any".
          Integers are accepted where floats are expected.
    default: the value when the spec omits it; REQUIRED if it must be given.
    gt/ge/lt/le: numeric bounds (on every element, for lists).
    choices: the allowed strings for kind "str".
    nullable: None is allowed (and means "off").
    false_means: for kind "str", the string a YAML false stands for (`cache: off` reads as false).
    doc: one line for the README and `nnctl config`.
    """

    kind: str
    default: Any = REQUIRED
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: tuple[str, ...] | None = None
    nullable: bool = False
    doc: str = ""
    false_means: str | None = None   # kind "str": YAML's false (an unquoted off/no) stands for this

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


def defaults(params: dict[str, Param]) -> dict[str, Any]:
    """The non-required defaults of a PARAMS table."""
    return {k: p.default for k, p in params.items() if not p.required}


# -- checking values given in code -------------------------------------------------------------
# The config layer checks YAML against the same tables, with file and line, all errors at once
# (config/check.py). These are the guards for components built in Python (and for values that
# reach a constructor some other way): the first problem is one ConfigError line.

def _is_bool(value: Any) -> bool:
    # Python's bool is a numbers.Integral that must not count as a number; numpy's bool (named
    # bool_ before numpy 2) is neither, and must count as a bool
    return type(value).__name__ in ("bool", "bool_")


def check_value(where: str, value: Any, p: Param) -> Any:
    """`value` checked against `p` (type, finiteness, bounds, choices); numbers come back as
    Python int/float. Kinds other than numbers, lists of numbers, bool and str pass unchanged."""
    from nnctl.errors import ConfigError, quoted
    if value is None:
        if p.nullable or p.default is None:
            return None
        raise ConfigError(f"{where}: must not be null")
    if p.kind in ("float", "int"):
        return _check_number(where, value, p.kind, p)
    if p.kind in ("float_list", "int_list", "float_list_or_map"):
        # a component takes lists only: a mapping by name is resolved before it is built
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: must be a list of {'integers' if p.kind == 'int_list' else 'numbers'}, "
                              f"got {quoted(value)}")
        elem = "int" if p.kind == "int_list" else "float"
        return [_check_number(f"{where}[{i}]", v, elem, p) for i, v in enumerate(value)]
    if p.kind == "bool":
        if not _is_bool(value):
            raise ConfigError(f"{where}: must be true or false, got {quoted(value)}")
        return bool(value)
    if p.kind == "str":
        if value is False and p.false_means is not None:
            return p.false_means
        if not isinstance(value, str):
            raise ConfigError(f"{where}: must be a string, got {quoted(value)}")
        if p.choices is not None and value not in p.choices:
            raise ConfigError(f"{where}: must be one of {', '.join(p.choices)}, got {quoted(value)}")
    return value


def format_number(x: float | int) -> str:
    """A number in a message, the same from YAML and from code: 1e-05, 0.5, -1, 7."""
    return f"{x:.10g}" if isinstance(x, float) else str(x)


def _check_number(where: str, value: Any, kind: str, p: Param) -> float | int:
    from nnctl.errors import ConfigError, quoted
    if _is_bool(value) or not isinstance(value, Integral if kind == "int" else Real):
        raise ConfigError(f"{where}: must be {'an integer' if kind == 'int' else 'a number'}, got {quoted(value)}")
    value = int(value) if kind == "int" else float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{where}: must be a finite number, got {value}")
    for bound, ok, word in ((p.gt, lambda a, b: a > b, ">"), (p.ge, lambda a, b: a >= b, ">="),
                            (p.lt, lambda a, b: a < b, "<"), (p.le, lambda a, b: a <= b, "<=")):
        if bound is not None and not ok(value, bound):
            raise ConfigError(f"{where}: must be {word} {format_number(bound)}, got {format_number(value)}")
    return value


def check_options(owner: str, params: dict[str, Param], given: dict[str, Any]) -> dict[str, Any]:
    """`given` checked against a PARAMS table (unknown keys, required keys, each value); returns
    every option, defaults filled in."""
    from nnctl.errors import ConfigError
    unknown = sorted(set(given) - set(params))
    if unknown:
        raise ConfigError(f"{owner}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(params))}")
    out: dict[str, Any] = {}
    for key, p in params.items():
        if key in given:
            out[key] = check_value(f"{owner}.{key}", given[key], p)
        elif p.required:
            raise ConfigError(f"{owner}.{key}: is required")
        else:
            out[key] = list(p.default) if isinstance(p.default, list) else p.default
    return out


class Configurable:
    """A component built from keyword options declared in PARAMS (activations, initializers,
    optimizers, schedules): constructed with them checked, `get_config()` returns exactly
    them, so `type(c)(**c.get_config())` rebuilds it, and the repr shows them."""

    NAME = "component"
    PARAMS: dict[str, Param] = {}

    def __init__(self, **hparams: Any):
        self.hparams = check_options(self.NAME, self.PARAMS, hparams)

    def get_config(self) -> dict[str, Any]:
        return dict(self.hparams)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@dataclass
class Registry:
    """Name -> class for one kind of component (layers, activations, optimizers, ...).

    Aliases map extra names (e.g. "silu" -> "swish") to the canonical one.
    """

    kind: str
    entries: dict[str, type] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def register(self, name: str, *aliases: str):
        def deco(cls):
            cls.NAME = name
            self.entries[name] = cls
            for a in aliases:
                self.aliases[a] = name
            return cls
        return deco

    def canonical(self, name: str) -> str | None:
        if name in self.entries:
            return name
        return self.aliases.get(name)

    def names(self) -> list[str]:
        return sorted(set(self.entries) | set(self.aliases))

    def get(self, name: str) -> type:
        """The class for `name`; an unknown name is a ConfigError naming the closest valid one."""
        canon = self.canonical(name)
        if canon is None:
            from nnctl.errors import ConfigError
            raise ConfigError(unknown_name_message(self.kind, name, self.names()))
        return self.entries[canon]

    def create(self, spec: Any) -> Any:
        """An instance from a name ("relu") or a mapping ({"name": "leaky_relu", "alpha": 0.2})."""
        if isinstance(spec, str):
            return self.get(spec)()
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            return self.get(spec["name"])(**{k: v for k, v in spec.items() if k != "name"})
        from nnctl.errors import ConfigError, quoted
        raise ConfigError(f"{self.kind} must be a name or a mapping with 'name', got {quoted(spec)}")

    def __contains__(self, name: str) -> bool:
        return self.canonical(name) is not None


def unknown_name_message(kind: str, name: Any, valid: list[str]) -> str:
    import difflib
    close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    from nnctl.errors import excerpt
    return f"unknown {kind} '{excerpt(str(name))}'; {hint}valid: {', '.join(valid)}"
