"""Name -> constructor registries, so configs choose models, losses, data and evaluators by name."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

from vlpt.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
  """A named table of constructors with helpful lookup errors."""

  def __init__(self, kind: str):
    self.kind = kind
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
      close = difflib.get_close_matches(name, self._entries, n=1)
      hint = f" Did you mean {close[0]!r}?" if close else ""
      raise ConfigError(f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._entries))}")
    return self._entries[name]

  def __contains__(self, name: str) -> bool:
    return name in self._entries

  def names(self) -> list[str]:
    return sorted(self._entries)
