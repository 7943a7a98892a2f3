"""One named-builder registry, used for backbones and losses: unknown names fail loudly with the known ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Builders by name (like timm's ``@register_model``): ``@registry.register("name")`` adds one."""

    def __init__(self, kind: str, error: type[Exception] = KeyError) -> None:
        self.kind = kind
        self.error = error
        self._builders: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding ``builder`` under ``name``; a name registered twice is a programming error."""

        def add(builder: T) -> T:
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._builders[name] = builder
            return builder

        return add

    def names(self) -> list[str]:
        return sorted(self._builders)

    def check(self, name: str) -> str:
        """``name`` itself if registered, else the registry's error naming the known ones."""
        if name not in self._builders:
            raise self.error(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return name

    def get(self, name: str) -> T:
        return self._builders[self.check(name)]
