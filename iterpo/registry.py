"""A tiny name -> object registry used for losses, judges, pairing strategies and tasks.

Entries register themselves with a decorator (``@LOSSES.register("dpo")``), so
adding a method is adding one module; lookups of unknown names fail with the
list of known ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from iterpo.errors import ConfigError

T = TypeVar("T")
E = TypeVar("E")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind  # e.g. "loss", used in error messages
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name not in self._entries:
            known = ", ".join(sorted(self._entries))
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {known}")
        return self._entries[name]

    def create(self: Registry[type[E]], name: str, options: dict[str, Any], hint: str = "") -> E:
        """An instance of the dataclass registered as name, built from options; ConfigError on a bad option."""
        import dataclasses

        cls = self.get(name)
        known = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(
                f"{self.kind} {name!r} has no option {', '.join(map(repr, unknown))}; "
                f"its options: {', '.join(known) or 'none'}{hint}"
            )
        try:
            return cls(**options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{self.kind} {name!r}: {exc}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries


def plugin_names() -> str:
    """The ITERPO_PLUGINS of this process, for the processes it starts."""
    import os

    return os.environ.get("ITERPO_PLUGINS", "")


def load_plugins() -> None:
    """Import the modules named in ITERPO_PLUGINS (comma-separated).

    A plugin registers its own losses, judges, pairing strategies, tasks or stages with the registries'
    decorators, and the config can then name them. Training processes and cluster workers load them too.
    """
    import importlib
    import os

    for name in filter(None, (x.strip() for x in os.environ.get("ITERPO_PLUGINS", "").split(","))):
        try:
            importlib.import_module(name)
        except Exception as exc:  # a missing module, a syntax error, or the plugin's own failure at import
            raise ConfigError(
                f"ITERPO_PLUGINS: cannot import plugin module {name!r}: {type(exc).__name__}: {exc}"
            ) from None
