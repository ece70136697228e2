"""Declared hyperparameters: each registered engine class lists what it accepts, once.

The config layer reads these declarations to validate YAML (type, range, choices) and to
fill defaults; constructors take the same names as keyword arguments, so a component's
`get_config()` round-trips through the spec. Nothing here knows about YAML. It sits at the
bottom of the package (beside errors) because the engine, the data layer, augmentation and
the sweep spec all declare their parameters with it; none of them owns it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
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

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


def defaults(params: dict[str, Param]) -> dict[str, Any]:
    """The non-required defaults of a PARAMS table."""
    return {k: p.default for k, p in params.items() if not p.required}


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
        from nnctl.errors import ConfigError
        raise ConfigError(f"{self.kind} must be a name or a mapping with 'name', got {spec!r}")

    def __contains__(self, name: str) -> bool:
        return self.canonical(name) is not None


def unknown_name_message(kind: str, name: Any, valid: list[str]) -> str:
    import difflib
    close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    from nnctl.errors import excerpt
    return f"unknown {kind} '{excerpt(str(name))}'; {hint}valid: {', '.join(valid)}"
