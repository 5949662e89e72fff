"""Class names and prompt templates for zero-shot classification of known TFDS datasets.

Placeholder convention: every template has exactly one ``"{}"`` where the class name goes, so a
prompt is ``template.format(class_name)``. (CLIP_benchmark's files write ``"{c}"``; it is rewritten
on load and no template has other braces.)

The lists are CLIP_benchmark 1.6.2's English ones (``assets/en_classnames.json``,
``assets/en_zeroshot_classification_templates.json``, MIT, see ``assets/LICENSE-clip_benchmark.txt``),
most of them OpenAI CLIP's. Where CLIP_benchmark takes class names from the torchvision dataset
instead (CIFAR-10/100, Food-101, DTD, STL-10), ``assets/label_names.json`` holds the names those
loaders give (see ``assets/LICENSE-label_names.txt``), so prompts equal CLIP_benchmark's.

Names are in the TFDS dataset's label order (label ``i`` is ``class_names(ds)[i]``), checked as
follows (tests/evaluation/test_prompts.py compares counts and names with the TFDS builders' label
features):

* ``imagenet2012`` (and ``imagenet_v2``, ``imagenet_sketch``, ``imagenet2012_subset``,
  ``imagenet2012_corrupted``, ``imagenet2012_fewshot``, ``imagenet2012_real``, ``imagenet_lt``,
  which share TFDS's ``imagenet2012`` label file): TFDS labels are the 1000 WordNet ids sorted, the
  standard ILSVRC-2012 order OpenAI's 1000 names follow (index 0 "tench" = n01440764).
* ``oxford_iiit_pet``: TFDS label = the dataset's class id - 1, the order of CLIP's 37 pet names.
* ``oxford_flowers102``: TFDS label = the dataset's label - 1, the order of CLIP's 102 flower names.
* ``caltech101``: CLIP_benchmark's ``caltech101_vtab`` names, made for TFDS's 102-label order
  (VTAB reads Caltech-101 through TFDS).
* ``eurosat`` (``eurosat/rgb``), ``svhn_cropped``, ``patch_camelyon``, ``mnist``: the names
  CLIP_benchmark's VTAB (TFDS) loaders use.
* ``cifar10``, ``cifar100``, ``stl10``: TFDS takes the names from the datasets' own meta files, the
  same files and order torchvision reads; ``food101`` and ``dtd``: TFDS's sorted name files, as
  torchvision's sorted folders.

Dataset names may carry a TFDS config and version (``eurosat/rgb:2.0.0``) or a ``tfds:`` prefix;
CLIP_benchmark's own keys (``imagenet1k``, ``pets``, ``flowers``...) are accepted too.
"""

from __future__ import annotations

import functools
import json
import os

_ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")

_IMAGENET = (
  "imagenet2012",
  "imagenet_v2",
  "imagenet_sketch",
  "imagenet2012_subset",
  "imagenet2012_corrupted",
  "imagenet2012_fewshot",
  "imagenet2012_real",
  "imagenet_lt",
)

# TFDS name -> (class-name key, template key) in CLIP_benchmark's files
_TFDS: dict[str, tuple[str, str]] = {
  **{name: ("imagenet1k", "imagenet1k") for name in _IMAGENET},
  "cifar10": ("cifar10", "cifar10"),
  "cifar100": ("cifar100", "cifar100"),
  "food101": ("food101", "food101"),
  "oxford_iiit_pet": ("pets", "pets"),
  "oxford_flowers102": ("flowers", "flowers"),
  "dtd": ("dtd", "dtd"),
  "stl10": ("stl10", "stl10"),
  "caltech101": ("caltech101_vtab", "caltech101"),
  "eurosat": ("eurosat", "eurosat"),
  "svhn_cropped": ("svhn", "svhn"),
  "patch_camelyon": ("pcam", "pcam"),
  "mnist": ("mnist", "mnist"),
}
# CLIP_benchmark's dataset names for the same entries
_ALIASES = {
  "imagenet1k": "imagenet2012",
  "pets": "oxford_iiit_pet",
  "flowers": "oxford_flowers102",
  "svhn": "svhn_cropped",
  "pcam": "patch_camelyon",
}


@functools.cache
def _load(filename: str) -> dict[str, list[str]]:
  with open(os.path.join(_ASSETS, filename), encoding="utf-8") as f:
    return json.load(f)


def _names_table() -> dict[str, list[str]]:
  return {**_load("en_classnames.json"), **_load("label_names.json")}


def known_datasets() -> list[str]:
  """The TFDS dataset names with shipped class names and templates."""
  return sorted(_TFDS)


def _resolve(dataset: str) -> tuple[str, str]:
  if not isinstance(dataset, str):
    raise TypeError(f"dataset must be a TFDS name (str), got {dataset!r}")
  name = dataset.strip().lower()
  if name.startswith("tfds:"):
    name = name[len("tfds:") :]
  name = name.split(":")[0]  # version
  base = name.split("/")[0]  # config (eurosat/rgb)
  for key in (name, base):
    key = _ALIASES.get(key, key)
    if key in _TFDS:
      return _TFDS[key]
  raise KeyError(
    f"no shipped class names / templates for dataset {dataset!r}; known TFDS datasets: "
    f"{', '.join(known_datasets())} (set class_names and templates in the config "
    "for others)"
  )


def class_names(dataset: str) -> list[str]:
  """Class names of TFDS ``dataset`` in its label order; KeyError for unknown datasets."""
  names_key, _ = _resolve(dataset)
  return list(_names_table()[names_key])


def templates(dataset: str) -> list[str]:
  """Prompt templates for ``dataset``, each with exactly one ``"{}"`` for the class name."""
  _, templates_key = _resolve(dataset)
  return [
    t.replace("{c}", "{}") for t in _load("en_zeroshot_classification_templates.json")[templates_key]
  ]


def prompts(dataset: str) -> list[list[str]]:
  """``[class][template]`` prompt strings (``template.format(name)``)."""
  ts = templates(dataset)
  return [[t.format(name) for t in ts] for name in class_names(dataset)]
