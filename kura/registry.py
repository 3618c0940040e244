"""A named registry of extension functions (cleaning rules, synthetic output checks, …): `@REG.register(name)`
adds one, a config lists names in order, and `REG.unknown(names)` says which a config got wrong. A new extension is
one decorated function; nothing else is edited."""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

F = TypeVar("F", bound=Callable)


class Registry(dict[str, F], Generic[F]):
    def __init__(self, what: str, prefixes: tuple[str, ...] = ()):
        super().__init__()
        self.what, self.prefixes = what, prefixes

    def register(self, name: str) -> Callable[[F], F]:
        if self.prefixes and not name.startswith(self.prefixes):
            raise ValueError(f"{self.what} {name!r}: a {self.what} name starts with its family, one of "
                             f"{self.prefixes}")

        def add(fn: F) -> F:
            if name in self and self[name] is not fn:
                raise ValueError(f"{self.what} {name!r} is registered twice ({self[name].__module__}, "
                                 f"{fn.__module__})")
            self[name] = fn
            return fn

        return add

    def unknown(self, names: list[str]) -> list[str]:
        return [n for n in names if n not in self]
