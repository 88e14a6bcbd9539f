"""A small name -> factory registry (timm's ``@register_model`` idea) for heads, losses, post-processors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from birdclef.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories. ``@reg.register("name")`` adds one; ``reg.create("name", ...)`` builds it.

    Example:
        >>> heads = Registry("head")
        >>> @heads.register("identity")
        ... class Identity: ...
        >>> heads.names()
        ['identity']
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def add(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} already registered by {self._items[name]!r}")
            self._items[name] = factory
            return factory

        return add

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose from {self.names()}")
        return self._items[name]

    def create(self, name: str, *args: Any, **kwargs: Any) -> T:
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
