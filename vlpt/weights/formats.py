"""The checkpoint formats vlpt reads and writes, as :class:`Bundle` s.

A bundle is a model in vlpt terms: its resolved ``config.model`` kwargs, canonical flat
parameters, tokenizer config and image preprocessing. Readers (:func:`read_bundle`): a vlpt export
(``vlpt_model.json`` + ``model.safetensors``), an open_clip directory, an HF ``CLIPModel`` /
``SiglipModel`` directory (with its tokenizer files when present), a big_vision SigLIP ``.npz``
and ``builtin:NAME`` (:mod:`vlpt.weights.builtin`). Writers (:func:`write_bundle`): vlpt,
open_clip and HF directories, which appear complete or not at all. A training workdir is read by
the trainer, which owns its checkpoints (``vlpt.train.initialization.read_checkpoint``).

Nothing is unpickled: safetensors and npz load without torch, ``.bin`` through
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

import numpy as np

from vlpt.config import WORKDIR_CONFIG
from vlpt.data.normalization import OPENAI_MEAN, OPENAI_STD, SIGLIP_MEAN, SIGLIP_STD
from vlpt.data.preprocess import Preprocess
from vlpt.errors import WeightsError
from vlpt.weights.builtin import BUILTIN_PREFIX, check_builtin_name, ensure_builtin
from vlpt.weights.io import read_tensors, write_safetensors

VLPT_MODEL_JSON = "vlpt_model.json"
VLPT_WEIGHTS = "model.safetensors"
_SIGLIP_PREPROCESS = dict(
  mean=SIGLIP_MEAN, std=SIGLIP_STD, resize_mode="squash", interpolation="bilinear"
)
_TOKENIZER_FILES = (
  "tokenizer.json",
  "vocab.json",
  "merges.txt",
  "spiece.model",
  "vocab.txt",
  # HF's settings of the same tokenizer (special tokens, model_max_length): kept on round trips
  "tokenizer_config.json",
  "special_tokens_map.json",
)
# HF CLIPTokenizer's settings for CLIP's vocabulary (as openai/clip-vit-* publish them)
_HF_CLIP_TOKENIZER_CONFIG = {
  "tokenizer_class": "CLIPTokenizer",
  "bos_token": "<|startoftext|>",
  "eos_token": "<|endoftext|>",
  "unk_token": "<|endoftext|>",
  "pad_token": "<|endoftext|>",
  "do_lower_case": True,
  "errors": "replace",
  "add_prefix_space": False,
}


@dataclasses.dataclass
class Bundle:
  """A model in vlpt terms: config, canonical flat params, tokenizer and preprocessing specs."""

  model: dict
  params: dict[str, np.ndarray]
  tokenizer: dict | None  # a config.data.tokenizer-style dict (name + kwargs), paths absolute
  preprocess: Preprocess
  source: str


def detect_format(path: str) -> str:
  """ "vlpt", "workdir", "open_clip", "hf", "big_vision" or "builtin" (a WeightsError if none fits).

  Cheap: a ``builtin:NAME`` source is only checked by name here (trained on first read).
  """
  if path.startswith(BUILTIN_PREFIX):
    check_builtin_name(path[len(BUILTIN_PREFIX) :])
    return "builtin"
  if os.path.isfile(path):
    if path.endswith(".npz"):
      return "big_vision"
    raise WeightsError(
      f"{path}: a single file must be a big_vision .npz; open_clip and HF "
      "checkpoints are directories with their config json"
    )
  if not os.path.isdir(path):
    raise WeightsError(f"no such checkpoint: {path}")
  has = lambda name: os.path.exists(os.path.join(path, name))  # noqa: E731
  if has(VLPT_MODEL_JSON):
    return "vlpt"
  if has(WORKDIR_CONFIG):
    return "workdir"
  if has("open_clip_config.json"):
    return "open_clip"
  if has("config.json"):
    return "hf"
  raise WeightsError(
    f"{path}: not a recognized checkpoint directory (expected {VLPT_MODEL_JSON}, "
    f"{WORKDIR_CONFIG}, open_clip_config.json or an HF config.json)"
  )


def _first_file(path: str, names: tuple[str, ...]) -> str:
  for name in names:
    if os.path.isfile(os.path.join(path, name)):
      return os.path.join(path, name)
  raise WeightsError(f"{path}: no weights file (looked for {', '.join(names)})")


def _tokenizer_from_files(path: str, context_length: int, *, pad_id: int | None = None) -> dict | None:
  if os.path.isfile(os.path.join(path, "tokenizer.json")):
    out = {"name": "hf", "path": os.path.join(path, "tokenizer.json"), "context_length": context_length}
  elif os.path.isfile(os.path.join(path, "vocab.json")) and os.path.isfile(
    os.path.join(path, "merges.txt")
  ):
    out = {"name": "hf", "path": path, "context_length": context_length}
  elif os.path.isfile(os.path.join(path, "spiece.model")):
    out = {
      "name": "sentencepiece",
      "model_path": os.path.join(path, "spiece.model"),
      "context_length": context_length,
    }
  else:
    return None
  if pad_id is not None:
    out["pad_id"] = pad_id
  return out


def read_open_clip(path: str) -> Bundle:
  from vlpt.weights.open_clip import from_open_clip

  with open(os.path.join(path, "open_clip_config.json")) as f:
    cfg = json.load(f)
  model_cfg = cfg.get("model_cfg", cfg)
  sd = read_tensors(
    _first_file(
      path,
      (
        "open_clip_model.safetensors",
        "open_clip_pytorch_model.bin",
        "model.safetensors",
        "pytorch_model.bin",
      ),
    )
  )
  model, params = from_open_clip(sd, model_cfg)
  pre = cfg.get("preprocess_cfg", {})
  size = pre.get("size", model["image"]["image_size"])
  preprocess = Preprocess(
    image_size=int(size[0] if isinstance(size, (list, tuple)) else size),
    mean=tuple(pre.get("mean", OPENAI_MEAN)),
    std=tuple(pre.get("std", OPENAI_STD)),
    resize_mode="squash" if pre.get("resize_mode") == "squash" else "shortest",
    interpolation=pre.get("interpolation", "bicubic"),
  )
  ctx = model["text"]["context_length"]
  tok = _tokenizer_from_files(path, ctx)
  if tok is None and not model_cfg["text_cfg"].get("hf_tokenizer_name"):
    tok = {"name": "clip_bpe", "context_length": ctx}
  return Bundle(model, params, tok, preprocess, "open_clip")


def read_hf(path: str) -> Bundle:
  from vlpt.weights.hf import from_hf

  with open(os.path.join(path, "config.json")) as f:
    config = json.load(f)
  sd = read_tensors(_first_file(path, ("model.safetensors", "pytorch_model.bin")))
  model, params = from_hf(sd, config)
  kind = config["model_type"]
  ctx = model["text"]["context_length"]
  pre: dict[str, Any] = dict(_SIGLIP_PREPROCESS) if kind == "siglip" else {}
  pp = os.path.join(path, "preprocessor_config.json")
  if os.path.isfile(pp):
    with open(pp) as f:
      p = json.load(f)
    if "image_mean" in p:
      pre.update(mean=tuple(p["image_mean"]), std=tuple(p["image_std"]))
    if "resample" in p:
      pre["interpolation"] = {3: "bicubic", 2: "bilinear", 0: "nearest"}.get(p["resample"], "bicubic")
    if "do_center_crop" in p:
      pre["resize_mode"] = "shortest" if p["do_center_crop"] else "squash"
  preprocess = Preprocess(image_size=model["image"]["image_size"], **pre)
  pad = None
  if kind == "siglip":
    pad = int((config.get("text_config") or {}).get("pad_token_id", 1))
  tok = _tokenizer_from_files(path, ctx, pad_id=pad)
  if tok is None and kind == "clip":
    tok = {"name": "clip_bpe", "context_length": ctx}
  return Bundle(model, params, tok, preprocess, "hf")


def read_big_vision(path: str) -> Bundle:
  from vlpt.weights.big_vision import from_big_vision

  model, params = from_big_vision(read_tensors(path))
  return Bundle(
    model,
    params,
    None,
    Preprocess(image_size=model["image"]["image_size"], **_SIGLIP_PREPROCESS),
    "big_vision",
  )


def read_vlpt(path: str) -> Bundle:
  with open(os.path.join(path, VLPT_MODEL_JSON)) as f:
    meta = json.load(f)
  if meta.get("format") != "vlpt":
    raise WeightsError(f"{path}/{VLPT_MODEL_JSON} is not a vlpt export")
  params = read_tensors(os.path.join(path, VLPT_WEIGHTS))
  tok = meta.get("tokenizer")
  if tok:
    tok = {
      k: (os.path.join(path, v) if k in ("path", "model_path", "vocab_path") else v)
      for k, v in tok.items()
    }
  return Bundle(meta["model"], params, tok, Preprocess(**meta["preprocess"]), "vlpt")


def read_bundle(path: str) -> Bundle:
  """Any format above (a workdir is refused: ``vlpt.train.initialization.read_checkpoint``)."""
  kind = detect_format(path)
  if kind == "builtin":
    bundle = read_vlpt(ensure_builtin(path[len(BUILTIN_PREFIX) :]))
    bundle.source = path
    return bundle
  if kind == "workdir":
    raise WeightsError(
      f"{path} is a training workdir: read it with "
      "vlpt.train.initialization.read_checkpoint (or vlpt.load)"
    )
  return {"vlpt": read_vlpt, "open_clip": read_open_clip, "hf": read_hf, "big_vision": read_big_vision}[
    kind
  ](path)


def _copy_tokenizer_files(tok: dict | None, dst: str) -> dict | None:
  """Copies the tokenizer's files into ``dst``; returns the config with relative paths."""
  if not tok:
    return tok
  out = dict(tok)
  for key in ("path", "model_path", "vocab_path"):
    if key in out and out[key]:
      src = out[key]
      if os.path.isdir(src):
        for name in _TOKENIZER_FILES:
          if os.path.isfile(os.path.join(src, name)):
            shutil.copy(os.path.join(src, name), os.path.join(dst, name))
        out[key] = "."
      else:
        shutil.copy(src, os.path.join(dst, os.path.basename(src)))
        out[key] = os.path.basename(src)
  return out


def _write_hf_tokenizer_config(dst: str, model_type: str, context_length: int) -> None:
  """``tokenizer_config.json`` with ``model_max_length`` = the model's context length, so HF's
  tokenizers truncate where the model's positions end (``truncation=True``); a CLIP vocabulary
  gets CLIPTokenizer's special tokens; a copied source config keeps its other settings."""
  path = os.path.join(dst, "tokenizer_config.json")
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      settings = json.load(f)
  elif model_type == "clip" and os.path.isfile(os.path.join(dst, "vocab.json")):
    settings = dict(_HF_CLIP_TOKENIZER_CONFIG)
  elif any(os.path.isfile(os.path.join(dst, n)) for n in ("tokenizer.json", "spiece.model")):
    settings = {}
  else:
    return  # no tokenizer exported
  settings["model_max_length"] = int(context_length)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(settings, f, indent=2)


def write_bundle(bundle: Bundle, dst: str, to: str = "vlpt") -> None:
  """Writes ``bundle`` as a vlpt export, an open_clip directory or an HF directory."""
  if to not in ("vlpt", "open_clip", "hf"):
    raise WeightsError(f"unknown target format {to!r}; choose vlpt, open_clip or hf")
  if os.path.exists(dst) and os.listdir(dst):
    raise WeightsError(
      f"{dst} exists and is not empty; choose a new directory (nothing was overwritten)"
    )
  # convert fully before touching the disk, so a refusal leaves nothing half-written
  cfg = sd = None
  if to == "open_clip":
    from vlpt.weights.open_clip import to_open_clip

    cfg, sd = to_open_clip(bundle.model, bundle.params)
  elif to == "hf":
    from vlpt.weights.hf import to_hf

    cfg, sd = to_hf(bundle.model, bundle.params)
  final, dst = dst, dst.rstrip("/") + ".partial"
  shutil.rmtree(dst, ignore_errors=True)
  os.makedirs(dst)
  try:
    _write_files(bundle, dst, to, cfg if to != "vlpt" else None, sd if to != "vlpt" else None)
  except BaseException:
    shutil.rmtree(dst, ignore_errors=True)
    raise
  if os.path.isdir(final):
    os.rmdir(final)  # empty, checked above
  os.replace(dst, final)  # the directory appears complete or not at all


def _write_files(
  bundle: Bundle, dst: str, to: str, cfg: dict | None, sd: dict[str, np.ndarray] | None
) -> None:
  pre = bundle.preprocess
  if to == "vlpt":
    meta = {
      "format": "vlpt",
      "version": 1,
      "model": bundle.model,
      "preprocess": pre.to_dict(),
      "tokenizer": _copy_tokenizer_files(bundle.tokenizer, dst),
      "source": bundle.source,
    }
    write_safetensors(os.path.join(dst, VLPT_WEIGHTS), bundle.params)
    with open(os.path.join(dst, VLPT_MODEL_JSON), "w") as f:
      json.dump(meta, f, indent=2)
  elif to == "open_clip":
    write_safetensors(os.path.join(dst, "open_clip_model.safetensors"), sd)
    preprocess_cfg = {
      "size": pre.image_size,
      "mean": list(pre.mean),
      "std": list(pre.std),
      "interpolation": pre.interpolation,
      "resize_mode": pre.resize_mode,
    }
    with open(os.path.join(dst, "open_clip_config.json"), "w") as f:
      json.dump({"model_cfg": cfg, "preprocess_cfg": preprocess_cfg}, f, indent=2)
    _copy_tokenizer_files(
      bundle.tokenizer if (bundle.tokenizer or {}).get("name") == "hf" else None, dst
    )
  else:
    write_safetensors(os.path.join(dst, "model.safetensors"), sd, metadata={"format": "pt"})
    with open(os.path.join(dst, "config.json"), "w") as f:
      json.dump(cfg, f, indent=2)
    resample = {"bicubic": 3, "bilinear": 2, "nearest": 0}[pre.interpolation]
    crop = pre.resize_mode == "shortest"
    proc = {
      "image_processor_type": "CLIPImageProcessor"
      if cfg["model_type"] == "clip"
      else "SiglipImageProcessor",
      "do_resize": True,
      "do_rescale": True,
      "rescale_factor": 1 / 255,
      "do_normalize": True,
      "image_mean": list(pre.mean),
      "image_std": list(pre.std),
      "resample": resample,
      "do_center_crop": crop,
      "size": (
        {"shortest_edge": pre.image_size}
        if crop
        else {"height": pre.image_size, "width": pre.image_size}
      ),
    }
    if crop:
      proc["crop_size"] = {"height": pre.image_size, "width": pre.image_size}
    with open(os.path.join(dst, "preprocessor_config.json"), "w") as f:
      json.dump(proc, f, indent=2)
    tok = bundle.tokenizer or {}
    if tok.get("name") == "clip_bpe":
      from vlpt.data.tokenizers import write_hf_clip_vocab

      write_hf_clip_vocab(dst)
    else:
      _copy_tokenizer_files(tok if tok.get("name") in ("hf", "sentencepiece") else None, dst)
    _write_hf_tokenizer_config(dst, cfg["model_type"], bundle.model["text"]["context_length"])
