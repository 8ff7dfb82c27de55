"""One registry idiom for everything filed by name (stages, SSL methods, adapters), as timm's
`register_model`: a decorator files an object under its name; `get` looks it up or names the choices.

Torch-free: configs register here too, so `--help` and `status` can list every choice without
importing a training library.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from medalign.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def file(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = obj
            return obj
        return file

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} '{name}' (choices: {', '.join(self._entries)})")
        return self._entries[name]

    __getitem__ = get

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def items(self):
        return self._entries.items()

    def values(self):
        return self._entries.values()
