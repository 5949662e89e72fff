"""The evaluation suite, run periodically by the trainer and once by ``vlpt-eval``.

``config.eval.datasets`` maps a name to one evaluation dataset and the tasks run on it:

* ``zeroshot``: classification by prompt-ensembled class embeddings (Radford et al. 2021,
  Sec. 3.1.4); top-1, top-5, mean per-class recall;
* ``retrieval``: image <-> text recall@1/5/10 with several captions per image;
* ``linear_probe``: logistic regression on frozen image features of ``train_split``, scored on
  the evaluated split;
* ``captioning`` (CoCa, LocCa): greedy or beam captions scored with CIDEr-D and BLEU-4 against the
  split's captions; ``cider_shuffled`` scores the same captions against the references of other
  images (the level an image-blind captioner reaches);
* ``dense_probe``: a linear probe of the image tower's patch tokens onto per-patch class labels
  from the source's object masks, fitted on ``train_split``, scored on the evaluated split
  (:mod:`vlpt.evaluation.dense_probe`).

Metric definitions are CLIP_benchmark's (:mod:`vlpt.evaluation.metrics`). Images are read in
shares (each process decodes its rows of every global batch), embedded by the towers sharded over
the mesh, and the embeddings come back replicated so every process computes the same metrics.
Results are keyed ``NAME/TASK/METRIC``.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from vlpt.data.files import check_files_exist
from vlpt.data.normalization import normalize_images
from vlpt.evaluation import metrics as M
from vlpt.evaluation.datasets import READERS, EvalReader, open_reader, stream_images
from vlpt.evaluation.embedding import embed_in_batches, fetch_rows
from vlpt.sharding import LogicalRules, activate, batch_sharding, replicated

TASKS = ("zeroshot", "retrieval", "linear_probe", "captioning", "dense_probe")
# models whose decoder writes captions: CoCa's over its pooler's tokens, LocCa's over the patch tokens
CAPTIONERS = ("coca", "locca")
DEFAULT_TEMPLATES = ("a photo of a {}.",)

# every key of a config.eval.datasets entry, with its default
DATASET_DEFAULTS: dict[str, Any] = {
  "source": None,  # synthetic | tfds:NAME | wds:PATTERN | imagefolder:ROOT
  "split": "test",
  "num_examples": None,  # None: the whole split
  "tasks": ("zeroshot", "retrieval"),
  "every_steps": None,  # None: config.eval_every_steps
  # zeroshot: None -> vlpt's shipped lists for known datasets, else the source's own
  "class_names": None,
  "templates": None,  # prompt templates with one "{}" for the class name
  # TFDS / wds feature names (None: detected)
  "image_key": None,
  "label_key": None,
  "caption_key": None,
  # linear_probe and dense_probe (dense_probe: num_train_examples None -> as many as evaluated)
  "train_split": "train",
  "num_train_examples": None,
  # the images' size here (None: config.data.image_size); another size needs a NaFlex image
  # tower (config.model.image.naflex): evaluation at that sequence length, (size / patch)^2
  "image_size": None,
  # captioning
  "caption_method": "greedy",  # greedy | beam
  "num_beams": 4,
}


def dataset_settings(name: str, entry: Any) -> dict[str, Any]:
  """A config.eval.datasets entry with defaults filled in; ValueError names a bad key or value."""
  given = dict(entry.items() if hasattr(entry, "items") else entry)
  for key in given:
    if key not in DATASET_DEFAULTS:
      close = difflib.get_close_matches(key, list(DATASET_DEFAULTS), n=1)
      hint = f" (did you mean {close[0]}?)" if close else ""
      raise ValueError(f"unknown key config.eval.datasets.{name}.{key}{hint}")
  settings = {**DATASET_DEFAULTS, **given}
  where = f"config.eval.datasets.{name}"
  if not isinstance(settings["source"], str) or not settings["source"]:
    raise ValueError(
      f"{where}.source is required (synthetic, tfds:NAME, wds:PATTERN or imagefolder:ROOT)"
    )
  kind = settings["source"].partition(":")[0]
  if kind not in READERS:
    raise ValueError(
      f"{where}.source={settings['source']!r}: evaluation sources are {', '.join(READERS.names())}"
    )
  tasks = settings["tasks"]
  tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
  if not tasks or any(t not in TASKS for t in tasks):
    raise ValueError(f"{where}.tasks={tasks!r}: choose among {', '.join(TASKS)}")
  settings["tasks"] = tasks
  for key in ("num_examples", "num_train_examples", "every_steps"):
    value = settings[key]
    if value is not None and (not isinstance(value, int) or value <= 0):
      raise ValueError(f"{where}.{key} must be a positive integer or None, got {value!r}")
  templates = settings["templates"]
  if templates is not None:
    templates = (templates,) if isinstance(templates, str) else tuple(templates)
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
      raise ValueError(
        f"{where}.templates: each template needs exactly one '{{}}' for the "
        f"class name, got {bad or templates!r}"
      )
    settings["templates"] = templates
  if settings["caption_method"] not in ("greedy", "beam"):
    raise ValueError(
      f"{where}.caption_method must be greedy or beam, got {settings['caption_method']!r}"
    )
  return settings


def check_config(
  eval_config: Any, *, model_name: str, image_size: int | None = None, naflex: bool = False
) -> None:
  """Cheap checks of ``config.eval`` before anything is built (ValueError with the fix)."""
  import os

  for name, entry in eval_config.datasets.items():
    s = dataset_settings(name, entry)
    if s["image_size"] and image_size and int(s["image_size"]) != image_size and not naflex:
      raise ValueError(
        f"config.eval.datasets.{name}.image_size={s['image_size']} differs from the training size "
        f"{image_size}: only a NaFlex image tower (config.model.image.naflex=True) reads other sizes"
      )
    kind, _, arg = s["source"].partition(":")
    if kind == "imagefolder" and not os.path.isdir(os.path.expanduser(arg)):
      raise ValueError(f"config.eval.datasets.{name}.source={s['source']!r}: no such directory")
    if kind == "wds" and arg:
      check_files_exist(s["source"])
    if "dense_probe" in s["tasks"] and not READERS.get(kind).has_masks:
      raise ValueError(
        f"config.eval.datasets.{name}.tasks has 'dense_probe', which needs per-pixel class masks; "
        f"the {kind!r} source has none (sources with masks: "
        f"{', '.join(k for k in READERS.names() if READERS.get(k).has_masks)})"
      )
    if "captioning" in s["tasks"] and model_name not in CAPTIONERS:
      raise ValueError(
        f"config.eval.datasets.{name}.tasks has 'captioning', which needs a "
        f"captioner (config.model.name 'coca' or 'locca'), not {model_name!r}"
      )


class Encoders:
  """Jitted, sharded image/text encoders over the current parameters."""

  def __init__(self, graphdef: nnx.GraphDef, mesh: Mesh, param_shardings: Any, normalization: str):
    self.mesh = mesh

    def image_fn(params, images):
      model = nnx.merge(graphdef, params)
      return model.encode_image(normalize_images(images, normalization))

    def text_fn(params, ids):
      return nnx.merge(graphdef, params).encode_text(ids)

    self._image = jax.jit(
      image_fn, in_shardings=(param_shardings, batch_sharding(mesh, 4)), out_shardings=replicated(mesh)
    )
    self._text = jax.jit(
      text_fn, in_shardings=(param_shardings, batch_sharding(mesh, 2)), out_shardings=replicated(mesh)
    )

  def images(self, params, images: np.ndarray, global_batch: int) -> np.ndarray:
    """Embeddings of an in-memory uint8 image array (every process holds all of it)."""
    return embed_in_batches(
      lambda x: self._image(params, x), images, mesh=self.mesh, global_batch=global_batch
    )

  def read_images(
    self, params, reader: EvalReader, num_examples: int, global_batch: int, with_labels: bool = False
  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Embeddings (and labels) of the first ``num_examples`` of ``reader``, read in shares.

    Every batch's embeddings stay on the devices (:meth:`embed_stream`) and come to the host in
    one transfer at the end.
    """
    embeddings, labels = self.embed_stream(
      params, reader, num_examples, global_batch, with_labels=with_labels
    )
    return (
      fetch_rows(embeddings, num_examples),
      fetch_rows(labels, num_examples) if with_labels else None,
    )

  def embed_stream(
    self, params, reader: EvalReader, num_examples: int, global_batch: int, with_labels: bool = False
  ) -> tuple[list[jax.Array], list[jax.Array]]:
    """Per-batch replicated (embeddings, labels) device arrays; the last batch is padded."""
    embeddings, labels = [], []
    for images, batch_labels, _ in stream_images(
      reader, num_examples, mesh=self.mesh, global_batch=global_batch, with_labels=with_labels
    ):
      embeddings.append(self._image(params, images))
      if with_labels:
        labels.append(batch_labels)
    return embeddings, labels

  def texts(self, params, ids: np.ndarray, global_batch: int) -> np.ndarray:
    return embed_in_batches(
      lambda x: self._text(params, x), ids, mesh=self.mesh, global_batch=global_batch
    )


@dataclasses.dataclass
class EvalContext:
  """What the evaluators need from the trainer (never the trainer itself)."""

  graphdef: nnx.GraphDef
  mesh: Mesh
  rules: LogicalRules
  param_shardings: Any
  tokenizer: Any
  normalization: str
  image_size: int
  interpolation: str = "bicubic"
  batch_size: int = 256  # global
  seed: int = 0
  data_dir: str | None = None


def _known_metadata(reader: EvalReader) -> tuple[list[str] | None, list[str] | None]:
  """vlpt's shipped class names / templates for the TFDS dataset behind ``reader``, if any."""
  dataset = getattr(reader, "dataset", None)
  if dataset is None:
    return None, None
  from vlpt.evaluation import prompts

  try:
    names = list(prompts.class_names(dataset))
  except KeyError:
    names = None
  try:
    templates = list(prompts.templates(dataset))
  except KeyError:
    templates = None
  return names, templates


class DatasetEvaluator:
  """All tasks of one ``config.eval.datasets`` entry; image embeddings are computed once a call."""

  def __init__(self, name: str, settings: dict[str, Any], ctx: EvalContext, encoders: Encoders):
    if settings["image_size"]:  # a NaFlex tower evaluated at another sequence length
      ctx = dataclasses.replace(ctx, image_size=int(settings["image_size"]))
    self.name, self.settings, self.ctx, self.encoders = name, settings, ctx, encoders
    self.every_steps = settings["every_steps"]
    options = {k: settings[k] for k in ("image_key", "label_key", "caption_key")}
    opened = lambda split: open_reader(  # noqa: E731
      settings["source"],
      split=split,
      image_size=ctx.image_size,
      interpolation=ctx.interpolation,
      seed=ctx.seed,
      data_dir=ctx.data_dir,
      **options,
    )
    self.reader = opened(settings["split"])
    n = len(self.reader)
    self.num_examples = min(settings["num_examples"] or n, n)
    if self.num_examples == 0:
      raise ValueError(f"config.eval.datasets.{name}: {self.reader.name} is empty")
    tasks = settings["tasks"]
    needs_labels = "zeroshot" in tasks or "linear_probe" in tasks
    if needs_labels and not self.reader.has_labels:
      raise ValueError(
        f"config.eval.datasets.{name}: {self.reader.name} has no labels for "
        f"{[t for t in tasks if t in ('zeroshot', 'linear_probe')]}"
      )
    if ("retrieval" in tasks or "captioning" in tasks) and not self.reader.has_captions:
      raise ValueError(
        f"config.eval.datasets.{name}: {self.reader.name} has no captions for "
        f"{[t for t in tasks if t in ('retrieval', 'captioning')]}"
      )
    self.needs_labels = needs_labels
    tok = ctx.tokenizer
    if "zeroshot" in tasks:
      self.class_names, self.templates = self._zeroshot_prompts()
      prompts = [t.format(c) for c in self.class_names for t in self.templates]
      self.prompt_ids = tok(prompts).reshape(len(self.class_names), len(self.templates), -1)
    if "retrieval" in tasks or "captioning" in tasks:
      self.captions = [self.reader.captions(i) for i in range(self.num_examples)]
      empty = [i for i, c in enumerate(self.captions) if not c]
      if empty:
        raise ValueError(
          f"config.eval.datasets.{name}: example {empty[0]} of "
          f"{self.reader.name} has no caption ({len(empty)} such)"
        )
      flat = [c for cs in self.captions for c in cs]
      self.caption_ids = tok(flat)
      self.caption_owner = np.repeat(
        np.arange(self.num_examples), [len(c) for c in self.captions]
      ).astype(np.int32)
    if "linear_probe" in tasks:
      self.train_reader = opened(settings["train_split"])
      if not self.train_reader.has_labels:
        raise ValueError(f"config.eval.datasets.{name}: {self.train_reader.name} has no labels")
      m = len(self.train_reader)
      self.num_train = min(settings["num_train_examples"] or m, m)
    if "captioning" in tasks:
      self._captioner = make_captioner(ctx, settings)
    if "dense_probe" in tasks:
      from vlpt.evaluation.dense_probe import DenseProbe

      fit_reader = opened(settings["train_split"])
      num_fit = min(settings["num_train_examples"] or self.num_examples, len(fit_reader))
      try:
        self._dense = DenseProbe(ctx, self.reader, self.num_examples, fit_reader, num_fit)
      except ValueError as e:
        raise ValueError(f"config.eval.datasets.{name}: {e}") from None

  def _zeroshot_prompts(self) -> tuple[list[str], list[str]]:
    s, reader = self.settings, self.reader
    shipped_names, shipped_templates = _known_metadata(reader)
    names = (
      list(s["class_names"])
      if s["class_names"] is not None
      else shipped_names or (list(reader.class_names) if reader.class_names else None)
    )
    if not names:
      raise ValueError(
        f"config.eval.datasets.{self.name}: {reader.name} has no class names; set class_names"
      )
    templates = (
      list(s["templates"])
      if s["templates"] is not None
      else shipped_templates or list(reader.prompt_templates or DEFAULT_TEMPLATES)
    )
    return names, templates

  def due(self, step: int, default_every: int) -> bool:
    return step % (self.every_steps or default_every) == 0

  def __call__(self, params: Any) -> dict[str, float]:
    tasks, batch, enc = self.settings["tasks"], self.ctx.batch_size, self.encoders
    out: dict[str, float] = {}
    image_emb, labels = None, None
    if any(t in tasks for t in ("zeroshot", "retrieval", "linear_probe")):
      image_emb, labels = enc.read_images(
        params, self.reader, self.num_examples, batch, with_labels=self.needs_labels
      )
    if "zeroshot" in tasks:
      c, t, length = self.prompt_ids.shape
      prompt_emb = enc.texts(params, self.prompt_ids.reshape(c * t, length), batch)
      classifier = np.asarray(M.zeroshot_classifier(prompt_emb.reshape(c, t, -1)))
      logits = image_emb @ classifier.T
      out.update(_keyed(self.name, "zeroshot", M.zeroshot_metrics(logits, labels)))
    if "retrieval" in tasks:
      text_emb = enc.texts(params, self.caption_ids, batch)
      out.update(
        _keyed(self.name, "retrieval", M.retrieval_metrics(image_emb, text_emb, self.caption_owner))
      )
    if "linear_probe" in tasks:
      from vlpt.evaluation.linear_probe import linear_probe

      train_emb, train_labels = enc.read_images(
        params, self.train_reader, self.num_train, batch, with_labels=True
      )
      num_classes = int(max(train_labels.max(), labels.max())) + 1
      probe = linear_probe(
        train_emb, train_labels, image_emb, labels, num_classes=num_classes, seed=self.ctx.seed
      )
      out.update(_keyed(self.name, "linear_probe", probe))
    if "captioning" in tasks:
      out.update(_keyed(self.name, "captioning", self._caption_scores(params)))
    if "dense_probe" in tasks:
      out.update(_keyed(self.name, "dense_probe", self._dense(params)))
    return out

  def _caption_scores(self, params: Any) -> dict[str, float]:
    from vlpt.evaluation.captioning_metrics import caption_scores

    generated = fetch_rows(
      [
        self._captioner(params, images)
        for images, _, _ in stream_images(
          self.reader, self.num_examples, mesh=self.ctx.mesh, global_batch=self.ctx.batch_size
        )
      ],
      self.num_examples,
    )
    tok = self.ctx.tokenizer
    texts = [tok.decode(ids) for ids in generated]
    scores = caption_scores(texts, self.captions)
    # the same captions against other images' references: what ignoring the image would score
    order = np.random.default_rng(self.ctx.seed).permutation(len(texts))
    if len(texts) > 1:
      order = np.where(order == np.arange(len(texts)), np.roll(order, 1), order)
    shuffled = caption_scores(texts, [self.captions[j] for j in order])
    scores["cider_shuffled"] = shuffled["cider"]
    scores["bleu4_shuffled"] = shuffled["bleu4"]
    return scores


def make_captioner(ctx: EvalContext, settings: dict[str, Any]) -> Callable:
  """(params, global uint8 images) -> replicated token ids [B, context_length]."""
  from vlpt.models.generation import generate

  tok = ctx.tokenizer
  method, beams = settings["caption_method"], int(settings["num_beams"])

  def captions(params, images):
    model = nnx.merge(ctx.graphdef, params)
    ids = generate(
      model,
      normalize_images(images, ctx.normalization),
      max_len=tok.context_length,
      # a LocCa decoder starts and ends captions with its own task and end tokens
      sot_id=getattr(model, "caption_start", tok.sot_id),
      eot_id=getattr(model, "caption_end", tok.eot_id),
      pad_id=tok.pad_id,
      method=method,
      num_beams=beams,
    )
    return model.text_ids(ids) if hasattr(model, "text_ids") else ids

  return jax.jit(
    captions,
    in_shardings=(ctx.param_shardings, batch_sharding(ctx.mesh, 4)),
    out_shardings=replicated(ctx.mesh),
  )


def _keyed(dataset: str, task: str, values: dict[str, float]) -> dict[str, float]:
  return {f"{dataset}/{task}/{k}": float(v) for k, v in values.items()}


class EvalSuite:
  """Every configured dataset, built once (prompts tokenized, captions read) and run on demand."""

  def __init__(self, config: Any, ctx: EvalContext):
    self.ctx = ctx
    with activate(ctx.mesh, ctx.rules):
      self.encoders = Encoders(ctx.graphdef, ctx.mesh, ctx.param_shardings, ctx.normalization)
      self.datasets = [
        DatasetEvaluator(name, dataset_settings(name, entry), ctx, self.encoders)
        for name, entry in sorted(config.eval.datasets.items())
      ]
    self.default_every = int(config.eval_every_steps)

  def due(self, step: int) -> bool:
    return any(ds.due(step, self.default_every) for ds in self.datasets)

  def __call__(self, params: Any, step: int | None = None) -> dict[str, float]:
    """All datasets (``step`` given: only those due at that step), under the run's mesh."""
    results: dict[str, float] = {}
    with activate(self.ctx.mesh, self.ctx.rules):
      for ds in self.datasets:
        if step is None or ds.due(step, self.default_every):
          results.update(ds(params))
    return results
