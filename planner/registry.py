"""Name -> class registries (scorers, exporters), filled by class decorators at import time."""

from __future__ import annotations

from typing import Callable, ClassVar, Protocol, TypeVar

from planner.errors import PlannerError


class Named(Protocol):
    """A registrable class: it declares the name it is filed under."""

    name: ClassVar[str]


T = TypeVar("T", bound="type[Named]")


def registrar(table: dict[str, type], kind: str) -> Callable[[str], Callable[[T], T]]:
    """Return a ``register(name)`` class decorator that files classes in ``table`` under unique names."""

    def register(name: str) -> Callable[[T], T]:
        def deco(cls: T) -> T:
            if name in table and table[name] is not cls:
                raise PlannerError(
                    f"{kind} names must be unique, but {name!r} is already registered by {table[name].__name__}"
                )
            cls.name = name
            table[name] = cls
            return cls

        return deco

    return register
