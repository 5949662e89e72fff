"""Data sources, named in configs by a spec string: ``synthetic``, later ``tfds:NAME``, ``wds:PATTERN``.

A source is random-access (``__len__`` / ``__getitem__``) and yields dicts with at least
``image`` (uint8 [H, W, 3]) and ``caption`` (str); evaluation splits also carry ``captions``
(several per image) and ``label``.
"""

from __future__ import annotations

from typing import Any

from vlpt.registry import Registry

SOURCES: Registry = Registry("data source")


@SOURCES.register("synthetic")
def _synthetic(argument: str, *, split: str, image_size: int, seed: int, **kwargs: Any):
  from vlpt.data.synthetic import SyntheticCaptions
  if argument:
    raise ValueError(f"the synthetic source takes no argument, got 'synthetic:{argument}'")
  return SyntheticCaptions(split, image_size=image_size, seed=seed, **kwargs)


def build_source(spec: str, **kwargs: Any):
  """``'kind:argument'`` -> a random-access source."""
  kind, _, argument = spec.partition(":")
  return SOURCES.get(kind)(argument, **kwargs)
