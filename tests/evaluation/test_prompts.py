"""Shipped zero-shot class names and templates: counts, placeholders, TFDS label order."""

import json
import os

import pytest

from vlpt.evaluation import prompts

from conftest import require

COUNTS = {
  "imagenet2012": 1000,
  "cifar10": 10,
  "cifar100": 100,
  "food101": 101,
  "oxford_iiit_pet": 37,
  "oxford_flowers102": 102,
  "dtd": 47,
  "stl10": 10,
  "caltech101": 102,
  "eurosat": 10,
  "svhn_cropped": 10,
  "patch_camelyon": 2,
  "mnist": 10,
  "imagenet_v2": 1000,
  "imagenet_sketch": 1000,
}


@pytest.mark.parametrize("dataset", sorted(COUNTS))
def test_counts_and_templates(dataset):
  names = prompts.class_names(dataset)
  assert len(names) == COUNTS[dataset]
  assert all(isinstance(n, str) and n.strip() for n in names)
  # OpenAI's ImageNet names repeat two (missile: 657/744, sunglasses: 836/837); others are unique
  assert len(set(names)) == len(names) - (2 if len(names) == 1000 else 0)
  ts = prompts.templates(dataset)
  assert ts
  for t in ts:
    assert t.count("{}") == 1 and t.count("{") == 1 and t.count("}") == 1, t
    assert t.format("X").count("X") == 1


def test_known_values_and_aliases():
  assert prompts.class_names("imagenet2012")[0] == "tench"
  assert prompts.class_names("imagenet2012")[207] == "Golden Retriever"
  assert prompts.class_names("cifar10") == [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
  ]
  assert prompts.class_names("food101")[0] == "apple pie"  # underscores replaced, as CLIP_benchmark
  assert len(prompts.templates("imagenet2012")) == 80
  assert prompts.templates("cifar10")[0] == "a photo of a {}."
  assert prompts.templates("food101") == ["a photo of {}, a type of food."]
  # versions, configs, the tfds: prefix and CLIP_benchmark's names resolve to the same entries
  assert prompts.class_names("tfds:cifar100:3.0.2") == prompts.class_names("cifar100")
  assert prompts.class_names("eurosat/rgb") == prompts.class_names("eurosat")
  assert prompts.class_names("pets") == prompts.class_names("oxford_iiit_pet")
  assert prompts.prompts("cifar10")[3][0] == "a photo of a cat."
  assert "imagenet2012" in prompts.known_datasets()


def test_unknown_dataset_raises_with_the_known_list():
  with pytest.raises(KeyError) as err:
    prompts.class_names("my_dataset")
  assert "imagenet2012" in str(err.value) and "my_dataset" in str(err.value)
  with pytest.raises(KeyError):
    prompts.templates("cifar10_corrupted")


def test_assets_equal_clip_benchmarks_files():
  cb = require("clip_benchmark")
  cb_dir = os.path.join(os.path.dirname(cb.__file__), "datasets")
  for name in ("en_classnames.json", "en_zeroshot_classification_templates.json"):
    with open(os.path.join(cb_dir, name), encoding="utf-8") as f:
      theirs = json.load(f)
    with open(os.path.join(prompts._ASSETS, name), encoding="utf-8") as f:
      ours = json.load(f)
    assert ours == theirs, name
  for name in ("LICENSE-clip_benchmark.txt", "LICENSE-label_names.txt"):
    assert os.path.exists(os.path.join(prompts._ASSETS, name))


def _norm(name: str) -> str:
  return name.replace("_", " ").lower()


def test_order_matches_tfds_label_features(tmp_path):
  """Counts and (where TFDS ships the names) the names themselves follow TFDS's label order."""
  tfds = require("tensorflow_datasets")
  for dataset, expected in COUNTS.items():
    label = tfds.builder(dataset, data_dir=str(tmp_path)).info.features["label"]
    assert label.num_classes == expected, dataset
  # names TFDS ships with the builder (the rest are read from the data at download time)
  label_names = lambda ds: tfds.builder(ds, data_dir=str(tmp_path)).info.features["label"].names
  assert [_norm(n) for n in label_names("food101")] == prompts.class_names("food101")
  assert label_names("dtd") == prompts.class_names("dtd")
  assert [_norm(n) for n in label_names("oxford_iiit_pet")] == [
    n.lower() for n in prompts.class_names("oxford_iiit_pet")
  ]
  # CLIP's flower names differ in wording in three places (globe flower, ...), not in order
  same = sum(
    _norm(a).replace("-", " ") == _norm(b).replace("-", " ")
    for a, b in zip(label_names("oxford_flowers102"), prompts.class_names("flowers"))
  )
  assert same >= 99
  wnids = label_names("imagenet2012")
  assert wnids == sorted(wnids) and wnids[0] == "n01440764"
  assert label_names("imagenet_v2") == wnids
