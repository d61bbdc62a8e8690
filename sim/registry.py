"""One registry for every plugin kind (scheduler, router, ordering, arrival process, ...).

A plugin is registered under a kind and a name with a decorator, or lazily as a
``"module:attr"`` string that is imported on first use, so a user can add a policy in a file of
their own without touching the engine::

    from sim.registry import register

    @register("scheduler", "my-fcfs")
    class MyScheduler: ...

Duplicate names are errors (pass ``replace=True`` to override on purpose).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, did_you_mean


@dataclass
class PluginSpec:
    """A registered plugin: the object itself, or a lazy ``module:attr`` entry point."""

    kind: str
    name: str
    entry_point: str | None = None
    obj: Any = None
    summary: str = ""

    def load(self) -> Any:
        """The plugin object, importing a lazy entry point on first use."""
        if self.obj is None:
            module, _, attr = self.entry_point.partition(":")
            self.obj = getattr(importlib.import_module(module), attr)
            if not self.summary:
                self.summary = _first_line(self.obj)
        return self.obj


@dataclass
class Registry:
    """Plugins by kind and name."""

    _specs: dict[str, dict[str, PluginSpec]] = field(default_factory=dict)

    def add(self, kind: str, name: str, obj: Any = None, *, entry_point: str | None = None,
            replace: bool = False) -> PluginSpec:
        """Register `obj` (or a lazy ``module:attr`` entry point) as plugin `name` of `kind`; a taken name is an
        error unless `replace`."""
        kind_specs = self._specs.setdefault(kind, {})
        key = name.lower()
        if key in kind_specs and not replace and kind_specs[key].obj is not obj:
            raise ConfigError(f"{kind} plugin {name!r} is already registered; pick another name or pass replace=True")
        spec = PluginSpec(kind, key, entry_point, obj, _first_line(obj) if obj is not None else "")
        kind_specs[key] = spec
        return spec

    def get(self, kind: str, name: str) -> Any:
        """The plugin `name` of `kind` (case-insensitive); an unknown name raises a ConfigError listing the choices."""
        specs = self._specs.get(kind, {})
        spec = specs.get(str(name).lower())
        if spec is None:
            raise ConfigError(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(specs)) or '(none)'}"
                              f"{did_you_mean(str(name), specs)}")
        return spec.load()

    def names(self, kind: str) -> list[str]:
        """Registered names of `kind`, sorted."""
        return sorted(self._specs.get(kind, {}))

    def kinds(self) -> list[str]:
        """Plugin kinds that have at least one registration, sorted."""
        return sorted(self._specs)

    def specs(self, kind: str) -> list[PluginSpec]:
        """The `PluginSpec` of every plugin of `kind`, sorted by name."""
        return [self._specs[kind][n] for n in self.names(kind)]


REGISTRY = Registry()


def register(kind: str, name: str, *, replace: bool = False) -> Callable[[Any], Any]:
    """Decorator: register a class or function as plugin `name` of `kind`."""

    def deco(obj: Any) -> Any:
        REGISTRY.add(kind, name, obj, replace=replace)
        return obj

    return deco


def register_lazy(kind: str, name: str, entry_point: str) -> None:
    """Register a plugin by ``"module:attr"``, imported only when first used."""
    REGISTRY.add(kind, name, entry_point=entry_point)


def get(kind: str, name: str) -> Any:
    """The plugin `name` of `kind`, with a one-line error listing the choices when unknown."""
    return REGISTRY.get(kind, name)


def _first_line(obj: Any) -> str:
    doc = getattr(obj, "__doc__", None) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def plugin_options(obj: Any) -> type | None:
    """The pydantic ``Options`` model a plugin declares, or None for a plugin without options."""
    opts = getattr(obj, "Options", None)
    return opts if isinstance(opts, type) and hasattr(opts, "model_validate") else None


def validate_options(kind: str, name: str, options: dict | None, where: str | None = None) -> Any:
    """A plugin's options validated against its ``Options`` model (None when it has none); errors are one line
    naming `where` (the config key, default ``<kind>_options``), the bad option and the fix."""
    from pydantic import ValidationError

    obj = get(kind, name)
    model = plugin_options(obj)
    where = where or f"{kind}_options"
    options = dict(options or {})
    if model is None:
        if options:
            raise ConfigError(f"{where}: {kind} {name!r} takes no options; remove {', '.join(map(repr, options))}")
        return None
    try:
        return model.model_validate(options)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            known = list(model.model_fields)
            raise ConfigError(f"{where}.{key}: unknown option {key!r} of {kind} {name!r}; known options: "
                              f"{', '.join(known) or '(none)'}{did_you_mean(key, known)}") from None
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{where}.{key}: option {key!r} of {kind} {name!r}: {msg}; got {err.get('input')!r}") from None
