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
