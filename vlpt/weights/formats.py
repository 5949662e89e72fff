"""The checkpoint formats vlpt reads and writes, as :class:`Bundle` s.

A bundle is a model in vlpt terms: its resolved ``config.model`` kwargs, canonical flat
parameters, tokenizer config and image preprocessing. Readers (:func:`read_bundle`): a vlpt export
(``vlpt_model.json`` + ``model.safetensors``), an open_clip directory, an HF ``CLIPModel`` /
``SiglipModel`` / ``Siglip2Model`` directory (with its tokenizer files when present), a big_vision
SigLIP ``.npz`` and ``builtin:NAME`` (:mod:`vlpt.weights.builtin`). Writers (:func:`write_bundle`): vlpt,
open_clip and HF directories, which appear complete or not at all. A training workdir is read by
the trainer, which owns its checkpoints (``vlpt.train.initialization.read_checkpoint``).

Nothing is unpickled: safetensors and npz load without torch, ``.bin`` through
``torch.load(weights_only=True)``.

Sources and exports may be ``gs://`` (:mod:`vlpt.storage`): a remote source is copied to the
local cache first (its tokenizer files are opened from there); an export is written locally and
uploaded, the file its format is detected by last.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any

import numpy as np

from vlpt import storage
from vlpt.config import WORKDIR_CONFIG
from vlpt.data.normalization import OPENAI_MEAN, OPENAI_STD, SIGLIP_MEAN, SIGLIP_STD
from vlpt.data.preprocess import Preprocess
from vlpt.errors import WeightsError
from vlpt.weights.builtin import BUILTIN_PREFIX, cache_root, check_builtin_name, ensure_builtin
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
  "tokenizer.model",  # Gemma's SentencePiece model (SigLIP 2)
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
  if storage.isfile(path):
    if path.endswith(".npz"):
      return "big_vision"
    raise WeightsError(
      f"{path}: a single file must be a big_vision .npz; open_clip and HF "
      "checkpoints are directories with their config json"
    )
  if not storage.isdir(path):
    raise WeightsError(f"no such checkpoint: {path}")
  has = lambda name: storage.exists(storage.join(path, name))  # noqa: E731
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
  if kind == "siglip2":
    return _read_hf_siglip2(path, config, model, params)
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
  tok = _gemma_tokenizer(path, ctx) if kind == "siglip" else None  # SigLIP 2 at a fixed resolution
  tok = tok or _tokenizer_from_files(path, ctx, pad_id=pad)
  if tok is None and kind == "clip":
    tok = {"name": "clip_bpe", "context_length": ctx}
  return Bundle(model, params, tok, preprocess, "hf")


def _read_hf_siglip2(path: str, config: dict, model: dict, params: dict) -> Bundle:
  """An HF ``Siglip2Model`` (NaFlex) directory: Siglip2ImageProcessor's settings as a "naflex"
  preprocess, and the Gemma tokenizer as transformers' Siglip2Tokenizer runs it: texts lower-cased
  (SigLIP 2, Tschannen et al. 2025, Sec. 2.1), the special tokens ``tokenizer_config.json`` asks
  for (the published files: EOS, no BOS), padded with ``<pad>`` to the text length (64)."""
  from vlpt.models.sizes import parse_vit

  image = model["image"]
  _, patch = parse_vit(image["variant"])
  settings: dict[str, Any] = {}
  pp = os.path.join(path, "preprocessor_config.json")
  if os.path.isfile(pp):
    with open(pp) as f:
      settings = json.load(f)
  if int(settings.get("patch_size", patch)) != patch:
    raise WeightsError(f"{pp}: patch_size {settings['patch_size']} differs from the model's {patch}")
  preprocess = Preprocess(
    image_size=image["image_size"],
    mean=tuple(settings.get("image_mean", SIGLIP_MEAN)),
    std=tuple(settings.get("image_std", SIGLIP_STD)),
    resize_mode="naflex",
    interpolation={3: "bicubic", 2: "bilinear", 0: "nearest"}.get(
      settings.get("resample", 2), "bilinear"
    ),
    patch_size=patch,
    max_num_patches=int(settings.get("max_num_patches", (image["image_size"] // patch) ** 2)),
  )
  tok = _gemma_tokenizer(path, model["text"]["context_length"], require=True)
  return Bundle(model, params, tok, preprocess, "hf")


def _gemma_tokenizer(path: str, ctx: int, *, require: bool = False) -> dict | None:
  """SigLIP 2's Gemma tokenizer as trained: lower-cased, the special tokens tokenizer_config.json
  asks for (default: EOS, no BOS), ``<pad>`` (0) on the right. In a ``SiglipModel`` directory
  (SigLIP 2's fixed-resolution checkpoints) only when tokenizer_config.json names a Gemma
  tokenizer; a ``Siglip2Model`` directory's tokenizer is always read this way."""
  tok_settings: dict[str, Any] = {}
  tc_path = os.path.join(path, "tokenizer_config.json")
  if os.path.isfile(tc_path):
    with open(tc_path, encoding="utf-8") as f:
      tok_settings = json.load(f)
  if not require and not str(tok_settings.get("tokenizer_class", "")).startswith("Gemma"):
    return None

  def token(name: str, default: str) -> str:
    value = tok_settings.get(name, default)
    return value.get("content", default) if isinstance(value, dict) else value

  bos = token("bos_token", "<bos>") if tok_settings.get("add_bos_token", False) else None
  eos = token("eos_token", "<eos>") if tok_settings.get("add_eos_token", True) else None
  tok: dict[str, Any] | None
  if os.path.isfile(os.path.join(path, "tokenizer.json")):
    tok = {"name": "hf", "path": os.path.join(path, "tokenizer.json"), "specials": [bos, eos]}
  else:
    spm = [n for n in ("tokenizer.model", "spiece.model") if os.path.isfile(os.path.join(path, n))]
    tok = (
      {"name": "sentencepiece", "model_path": os.path.join(path, spm[0]), "add_eos": eos is not None}
      if spm
      else None
    )
  if tok is not None:
    tok.update(context_length=ctx, lower_case=True)
  return tok


def read_big_vision(path: str) -> Bundle:
  from vlpt.weights.big_vision import from_big_vision

  model, params = from_big_vision(read_tensors(path))
  image = model["image"]
  pre: dict[str, Any] = dict(_SIGLIP_PREPROCESS)
  if image.get("naflex"):  # SigLIP 2 NaFlex: as many patches as the position grid has by default
    from vlpt.models.sizes import parse_vit

    patch = parse_vit(image["variant"])[1]
    pre.update(
      resize_mode="naflex", patch_size=patch, max_num_patches=(image["image_size"] // patch) ** 2
    )
  return Bundle(model, params, None, Preprocess(image_size=image["image_size"], **pre), "big_vision")


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
  if storage.is_remote(path):
    path = _local_copy(path)
  return {"vlpt": read_vlpt, "open_clip": read_open_clip, "hf": read_hf, "big_vision": read_big_vision}[
    kind
  ](path)


def _local_copy(url: str) -> str:
  """A fresh local copy of the remote file or directory ``url``, in the cache (readers open local
  files, and a tokenizer is built from its files lazily), replacing an older copy whole."""
  final = os.path.join(cache_root(), "remote", *url.replace("://", "/", 1).split("/"))
  parent = os.path.dirname(final)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".download-", dir=parent)
  try:
    storage.download(url, os.path.join(tmp, "new"))
    try:
      os.replace(final, os.path.join(tmp, "stale"))
    except FileNotFoundError:
      pass
    try:
      os.replace(os.path.join(tmp, "new"), final)
    except OSError:  # another process put the same copy in place first
      if not os.path.exists(final):
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return final


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


# The tokenizers each target can carry: any other would be replaced by the target's default on
# loading (silently different token ids), so such an export is refused.
_EXPORTABLE_TOKENIZERS = {"hf": ("clip_bpe", "hf", "sentencepiece"), "open_clip": ("clip_bpe", "hf")}


def _check_tokenizer_exportable(tokenizer: dict | None, to: str) -> None:
  name = (tokenizer or {}).get("name")
  if name is None or to not in _EXPORTABLE_TOKENIZERS or name in _EXPORTABLE_TOKENIZERS[to]:
    return
  demo = " (demo-only: it knows only the built-in dataset's words)" if name == "word" else ""
  raise WeightsError(
    f"the model's tokenizer {name!r}{demo} has no {to} equivalent: the export would load with "
    f"another tokenizer's ids; export with --to vlpt, or train with one of "
    f"{', '.join(_EXPORTABLE_TOKENIZERS[to])} (nothing was written)"
  )


# the image tower's self-distillation parts (SigLIP 2, Sec. 2.3: pre-training only)
_SSL_PARAMS = ("image.mask_token", "image.ssl_global.", "image.ssl_patch.")


def contrastive_part(bundle: Bundle) -> Bundle:
  """A model as the CLIP / SigLIP model of its two towers: a LocCa decoder (SigLIP 2,
  arXiv:2502.14786, Sec. 2.2) and the image tower's self-distillation heads and mask token
  (Sec. 2.3) serve pre-training only, and open_clip / HF hold no such parts. A model without them
  is returned as it is."""
  model, params = bundle.model, bundle.params
  image = model.get("image") or {}
  if model.get("name") != "locca" and not image.get("ssl_head"):
    return bundle
  if model.get("name") == "locca":
    model = {**{k: v for k, v in model.items() if k != "decoder"}, "name": "clip"}
    params = {k: v for k, v in params.items() if not k.startswith("decoder.")}
  if image.get("ssl_head"):
    model = {**model, "image": {k: v for k, v in image.items() if k != "ssl_head"}}
    params = {k: v for k, v in params.items() if not k.startswith(_SSL_PARAMS)}
  return dataclasses.replace(bundle, model=model, params=params)


def write_bundle(bundle: Bundle, dst: str, to: str = "vlpt") -> None:
  """Writes ``bundle`` as a vlpt export, an open_clip directory or an HF directory."""
  if to not in ("vlpt", "open_clip", "hf"):
    raise WeightsError(f"unknown target format {to!r}; choose vlpt, open_clip or hf")
  if storage.listdir(dst) if storage.is_remote(dst) else (os.path.exists(dst) and os.listdir(dst)):
    raise WeightsError(
      f"{dst} exists and is not empty; choose a new directory (nothing was overwritten)"
    )
  _check_tokenizer_exportable(bundle.tokenizer, to)
  if to != "vlpt":
    bundle = contrastive_part(bundle)
  # convert fully before touching the disk, so a refusal leaves nothing half-written
  cfg = sd = None
  if to == "open_clip":
    from vlpt.weights.open_clip import to_open_clip

    cfg, sd = to_open_clip(bundle.model, bundle.params)
  elif to == "hf":
    from vlpt.weights.hf import to_hf

    cfg, sd = to_hf(bundle.model, bundle.params)
  if storage.is_remote(dst):
    _write_remote(bundle, dst, to, cfg, sd)
    return
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


def _hf_pixel_settings(pre: Preprocess, resample: int) -> dict:
  """The settings every HF image processor of an export shares: resize filter, [0, 1] scaling,
  mean and std."""
  return {
    "do_resize": True,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": list(pre.mean),
    "image_std": list(pre.std),
    "resample": resample,
  }


def _write_hf_siglip2_processing(bundle: Bundle, dst: str, resample: int) -> None:
  """Siglip2ImageProcessor's settings and the tokenizer files of an HF ``Siglip2Model`` export."""
  from vlpt.models.sizes import parse_vit

  pre, image = bundle.preprocess, bundle.model["image"]
  patch = pre.patch_size or parse_vit(image["variant"])[1]
  proc = {
    "image_processor_type": "Siglip2ImageProcessor",
    "processor_class": "Siglip2Processor",
    **_hf_pixel_settings(pre, resample),
    "patch_size": patch,
    "max_num_patches": pre.max_num_patches or (image["image_size"] // patch) ** 2,
  }
  with open(os.path.join(dst, "preprocessor_config.json"), "w") as f:
    json.dump(proc, f, indent=2)
  _write_gemma_tokenizer(bundle, dst)


def _write_gemma_tokenizer(bundle: Bundle, dst: str) -> None:
  """The tokenizer files of a SigLIP 2 export (its Gemma tokenizer, read by ``_gemma_tokenizer``)."""
  tok = bundle.tokenizer or {}
  if tok.get("name") not in ("hf", "sentencepiece"):
    return
  _copy_tokenizer_files(tok, dst)
  # what vlpt's tokenizer adds, for transformers: Siglip2Tokenizer (5.x) runs tokenizer.json's own
  # post-processor whatever add_bos_token / add_eos_token say, so the file is made to agree
  bos, eos = tok.get("specials") or (None, "<eos>" if tok.get("add_eos", True) else None)
  file = os.path.join(dst, "tokenizer.json")
  if tok.get("name") == "hf" and tok.get("specials") is not None and os.path.isfile(file):
    from tokenizers import Tokenizer

    from vlpt.data.tokenizers import special_tokens_template

    fast = Tokenizer.from_file(file)
    fast.post_processor = special_tokens_template(fast, (bos, eos))
    fast.save(file)
  path = os.path.join(dst, "tokenizer_config.json")
  settings: dict[str, Any] = {}
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      settings = json.load(f)
  # and right padding, as SigLIP 2 was trained (big_vision) and its text tower reads the last slot
  settings.update(add_bos_token=bos is not None, add_eos_token=eos is not None, padding_side="right")
  settings.setdefault("tokenizer_class", "GemmaTokenizer")
  settings["model_max_length"] = int(bundle.model["text"]["context_length"])
  with open(path, "w", encoding="utf-8") as f:
    json.dump(settings, f, indent=2)


# the files detect_format recognizes a directory by: uploaded last, so a reader never detects a
# partly uploaded export
_FORMAT_FILES = (VLPT_MODEL_JSON, "open_clip_config.json", "config.json")


def _write_remote(bundle: Bundle, dst: str, to: str, cfg: dict | None, sd: Any) -> None:
  """Writes the export in a local temporary directory, then uploads it file by file."""
  local = tempfile.mkdtemp(prefix="vlpt-export-")
  try:
    _write_files(bundle, local, to, cfg if to != "vlpt" else None, sd if to != "vlpt" else None)
    names = sorted(storage.walk_files(local), key=lambda name: (name in _FORMAT_FILES, name))
    for name in names:
      storage.upload(os.path.join(local, name), storage.join(dst, name))
  finally:
    shutil.rmtree(local, ignore_errors=True)


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
    if cfg["model_type"] == "siglip2":
      _write_hf_siglip2_processing(bundle, dst, resample)
      return
    crop = pre.resize_mode == "shortest"
    proc = {
      "image_processor_type": "CLIPImageProcessor"
      if cfg["model_type"] == "clip"
      else "SiglipImageProcessor",
      **_hf_pixel_settings(pre, resample),
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
    elif tok.get("specials") is not None:  # SigLIP 2's Gemma tokenizer at a fixed resolution
      _write_gemma_tokenizer(bundle, dst)
      return
    else:
      _copy_tokenizer_files(tok if tok.get("name") in ("hf", "sentencepiece") else None, dst)
    _write_hf_tokenizer_config(dst, cfg["model_type"], bundle.model["text"]["context_length"])
