"""open_clip / OpenAI CLIP checkpoints <-> vlpt (native towers: ViT, text transformer, CoCa).

An open_clip model is described by its ``model_cfg`` (``embed_dim``, ``vision_cfg``,
``text_cfg``, ``quick_gelu``, ``custom_text``, CoCa's ``multimodal_cfg``); the same dict is
what ``open_clip_config.json`` stores under ``model_cfg``. timm- or HF-backed towers are not
native open_clip towers and are refused with a pointer to the HF route.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from vlpt.errors import WeightsError
from vlpt.models.sizes import parse_text, parse_vit, tower_size
from vlpt.weights.mapping import (
  CONV,
  Rule,
  apply_rules,
  heads_in,
  heads_out,
  packed_in_bias,
  rule,
  scalar,
)
from vlpt.weights.torch_blocks import linear, norm, open_clip_block, packed_attention

_TEXT_POOL = {"argmax": "eot", "eos": "eos", "first": "first", "last": "last"}


def _act(cfg: dict) -> str:
  return "quick_gelu" if cfg.get("quick_gelu") else "gelu"


def _eps(tower: dict) -> float:
  return float((tower.get("norm_kwargs") or {}).get("eps", 1e-5))


def model_config_from_open_clip(cfg: dict) -> dict:
  """open_clip ``model_cfg`` -> vlpt ``config.model`` dict."""
  vc, tc = dict(cfg["vision_cfg"]), dict(cfg["text_cfg"])
  if vc.get("timm_model_name") or tc.get("hf_model_name"):
    raise WeightsError(
      "this open_clip model uses a timm or HF tower, which is not an open_clip "
      "native tower; convert its HF transformers export instead"
    )
  if vc.get("attentional_pool") not in (None, False, True):
    raise WeightsError(
      f"open_clip attentional_pool={vc['attentional_pool']!r} is not supported "
      "(only the released CoCa layout, attentional_pool=true)"
    )
  act = _act(cfg)
  embed_dim = int(cfg["embed_dim"])
  image_size = vc.get("image_size", 224)
  image_size = image_size[0] if isinstance(image_size, (list, tuple)) else image_size
  width = int(vc.get("width", 768))
  coca = "multimodal_cfg" in cfg
  pool = (
    "coca"
    if vc.get("attentional_pool")
    else {"tok": "token", "avg": "gap"}.get(vc.get("pool_type", "tok"))
  )
  if pool is None:
    raise WeightsError(f"open_clip vision pool_type={vc.get('pool_type')!r} is not supported")
  image = dict(
    variant=f"B/{int(vc['patch_size'])}",
    image_size=int(image_size),
    width=width,
    depth=int(vc.get("layers", 12)),
    heads=width // int(vc.get("head_width", 64)),
    mlp_dim=int(width * float(vc.get("mlp_ratio", 4.0))),
    pool=pool,
    act=act,
    ln_pre=not vc.get("no_ln_pre", False),
    final_ln_after_pool=bool(vc.get("final_ln_after_pool", False)),
    norm_eps=_eps(vc),
    layer_scale=vc.get("ls_init_value"),
    pooler_heads=int(vc.get("attn_pooler_heads", 8)),
    pooler_queries=int(vc.get("attn_pooler_queries", 256)),
  )
  twidth = int(tc.get("width", 512))
  text = dict(
    variant="B",
    vocab_size=int(tc.get("vocab_size", 49408)),
    context_length=int(tc.get("context_length", 77)),
    width=twidth,
    depth=int(tc.get("layers", 12)),
    heads=int(tc.get("heads", 8)),
    mlp_dim=int(twidth * float(tc.get("mlp_ratio", 4.0))),
    act=act,
    causal=not tc.get("no_causal_mask", False),
    pool=_TEXT_POOL[tc.get("pool_type", "argmax")],
    eos_id=tc.get("eos_id"),
    mask_padding=bool(tc.get("use_pad_mask", False) and tc.get("no_causal_mask", False)),
    pad_id=int(tc.get("pad_id", 0)),
    proj=tc.get("proj_type", "linear") != "none",
    proj_bias=bool(tc.get("proj_bias", False)),
    norm_eps=_eps(tc),
    layer_scale=tc.get("ls_init_value"),
    embed_cls=bool(tc.get("embed_cls", False)),
    cls_mask="correct" if tc.get("correct_cls_mask") else "legacy",
  )
  if text["pool"] == "eos" and text["eos_id"] is None:
    text["eos_id"] = 2  # open_clip's default eos_id
  out = dict(
    name="coca" if coca else "clip",
    embed_dim=embed_dim,
    image=image,
    text=text,
    init_logit_scale=math.log(1 / 0.07),
    max_logit_scale=math.log(100),
    init_logit_bias=cfg.get("init_logit_bias"),
  )
  if coca:
    mc = dict(cfg["multimodal_cfg"])
    mwidth = int(mc.get("width", 512))
    out["decoder"] = dict(
      width=mwidth,
      depth=int(mc.get("layers", 12)),
      heads=int(mc.get("heads", 8)),
      mlp_dim=int(mwidth * float(mc.get("mlp_ratio", 4.0))),
      context_length=int(mc.get("context_length", 76)),
      vocab_size=int(mc.get("vocab_size", text["vocab_size"])),
      layer_scale=mc.get("ls_init_value"),
      norm_eps=_eps(mc),
    )
  return out


def open_clip_config_from_model(model: dict) -> dict:
  """vlpt ``config.model`` dict -> open_clip ``model_cfg`` (refuses what open_clip can't express)."""
  image, text = model["image"], model["text"]
  _check_expressible(image, text)
  tc, custom = _open_clip_text_cfg(text)
  cfg: dict[str, Any] = dict(
    embed_dim=model["embed_dim"], vision_cfg=_open_clip_vision_cfg(image), text_cfg=tc
  )
  if image.get("act") == "quick_gelu":
    cfg["quick_gelu"] = True
  if model.get("init_logit_bias") is not None:
    cfg["init_logit_bias"] = model["init_logit_bias"]
  if model.get("name") == "coca":
    dec = model["decoder"]
    dsize = tower_size(
      parse_text("B"), **{k: dec.get(k) for k in ("width", "depth", "heads", "mlp_dim")}
    )
    cfg["multimodal_cfg"] = dict(
      context_length=dec["context_length"],
      vocab_size=dec["vocab_size"],
      width=dsize.width,
      heads=dsize.heads,
      layers=dsize.depth,
      mlp_ratio=dsize.mlp_dim / dsize.width,
    )
    custom = True
  if custom:
    cfg["custom_text"] = True
  return cfg


def _check_expressible(image: dict, text: dict) -> None:
  problems = []
  if not image.get("class_token", True) or image.get("patch_bias") or image.get("pool") == "map":
    problems.append("image towers without a class token, with a patch bias or MAP pooling")
  if image.get("proj", True) is False or image.get("proj_bias"):
    problems.append("image towers without a bias-free projection")
  if image.get("act", "gelu") != text.get("act", "gelu") or image.get("act", "gelu") not in (
    "gelu",
    "quick_gelu",
  ):
    problems.append("activations other than one shared gelu / quick_gelu")
  if problems:
    raise WeightsError(
      "open_clip's native towers cannot express " + "; ".join(problems) + "; export with --to hf instead"
    )


def _open_clip_vision_cfg(image: dict) -> dict[str, Any]:
  vsize, patch = parse_vit(image["variant"])
  vsize = tower_size(vsize, **{k: image.get(k) for k in ("width", "depth", "heads", "mlp_dim")})
  vc: dict[str, Any] = dict(
    image_size=image["image_size"],
    layers=vsize.depth,
    width=vsize.width,
    head_width=vsize.width // vsize.heads,
    mlp_ratio=vsize.mlp_dim / vsize.width,
    patch_size=patch,
  )
  if not image.get("ln_pre", True):
    vc["no_ln_pre"] = True
  if image.get("pool") == "gap":
    vc["pool_type"] = "avg"
  if image.get("final_ln_after_pool"):
    vc["final_ln_after_pool"] = True
  if image.get("pool") == "coca":
    vc.update(
      attentional_pool=True,
      attn_pooler_heads=image.get("pooler_heads") or 8,
      attn_pooler_queries=image.get("pooler_queries", 256),
      output_tokens=True,
    )
  vc.update(_shared_block_cfg(image))
  return vc


def _shared_block_cfg(tower: dict) -> dict[str, Any]:
  out: dict[str, Any] = {}
  if tower.get("layer_scale"):
    out["ls_init_value"] = tower["layer_scale"]
  if tower.get("norm_eps", 1e-5) != 1e-5:
    out["norm_kwargs"] = {"eps": tower["norm_eps"]}
  return out


def _open_clip_text_cfg(text: dict) -> tuple[dict[str, Any], bool]:
  """(open_clip text_cfg, whether it needs open_clip's custom text tower)."""
  tsize = tower_size(
    parse_text(text["variant"]), **{k: text.get(k) for k in ("width", "depth", "heads", "mlp_dim")}
  )
  tc: dict[str, Any] = dict(
    context_length=text["context_length"],
    vocab_size=text["vocab_size"],
    width=tsize.width,
    heads=tsize.heads,
    layers=tsize.depth,
    mlp_ratio=tsize.mlp_dim / tsize.width,
  )
  custom = False
  for value, default, oc_key, oc_value in (
    (text.get("causal", True), True, "no_causal_mask", True),
    (text.get("proj_bias", False), False, "proj_bias", True),
    (text.get("proj", True), True, "proj_type", "none"),
    (text.get("embed_cls", False), False, "embed_cls", True),
  ):
    if value != default:
      tc[oc_key] = oc_value
      custom = True
  if text.get("pool", "eot") != "eot":
    tc["pool_type"] = {v: k for k, v in _TEXT_POOL.items()}[text["pool"]]
    custom = True
  if text.get("pool") == "eos":
    tc["eos_id"] = text["eos_id"]
  if text.get("mask_padding"):
    tc["use_pad_mask"] = True
  if text.get("pad_id", 0):
    tc["pad_id"] = text["pad_id"]
  if text.get("cls_mask") == "correct":
    tc["correct_cls_mask"] = True
  tc.update(_shared_block_cfg(text))
  return tc, custom


def _sizes(model: dict, tower: str) -> tuple[int, int]:
  t = model[tower]
  size = parse_vit(t["variant"])[0] if tower == "image" else parse_text(t["variant"])
  size = tower_size(size, **{k: t.get(k) for k in ("width", "depth", "heads", "mlp_dim")})
  return size.depth, size.heads


def rules(model: dict, oc_cfg: dict) -> list[Rule]:
  """The open_clip <-> vlpt rules for this model (both described by their configs)."""
  image, text = model["image"], model["text"]
  depth, heads = _sizes(model, "image")
  r: list[Rule] = [
    rule("visual.conv1.weight", "image.patch_embed", CONV),
    rule("visual.class_embedding", "image.class_embedding"),
    rule("visual.positional_embedding", "image.positional_embedding"),
    *norm("visual.ln_post", "image.ln_post"),
    rule("visual.proj", "image.proj.kernel"),
  ]
  if image.get("ln_pre", True):
    r += norm("visual.ln_pre", "image.ln_pre")
  ls = bool(image.get("layer_scale"))
  for i in range(depth):
    r += open_clip_block(
      f"visual.transformer.resblocks.{i}", f"image.transformer.blocks.{i}", heads, layer_scale=ls
    )
  if image.get("pool") == "coca":
    ph = image.get("pooler_heads") or 8
    r += [
      rule("visual.attn_pool.query", "image.attn_pool.query"),
      *norm("visual.attn_pool.ln_q", "image.attn_pool.ln_q"),
      *norm("visual.attn_pool.ln_k", "image.attn_pool.ln_k"),
    ]
    if model["embed_dim"] == _width(model, "image"):
      r += packed_attention("visual.attn_pool.attn", "image.attn_pool.attn", ph)
    else:  # torch MHA keeps separate q/k/v weights when kdim != embed_dim, one packed bias
      r += _mha_separate("visual.attn_pool.attn", "image.attn_pool.attn", ph)
  tp = "text." if oc_cfg.get("custom_text") else ""
  depth, heads = _sizes(model, "text")
  r += [
    rule(f"{tp}token_embedding.weight", "text.token_embedding"),
    rule(f"{tp}positional_embedding", "text.positional_embedding"),
    *norm(f"{tp}ln_final", "text.ln_final"),
  ]
  if text.get("embed_cls"):
    r.append(rule(f"{tp}cls_emb", "text.cls_emb"))
  if text.get("proj", True):
    r += (
      linear(f"{tp}text_projection", "text.proj")
      if text.get("proj_bias")
      else [rule(f"{tp}text_projection", "text.proj.kernel")]
    )
  ls = bool(text.get("layer_scale"))
  for i in range(depth):
    r += open_clip_block(
      f"{tp}transformer.resblocks.{i}", f"text.transformer.blocks.{i}", heads, layer_scale=ls
    )
  r.append(rule("logit_scale", "logit_scale", scalar(oc_cfg.get("_logit_shape", ()))))
  if model.get("init_logit_bias") is not None:
    r.append(rule("logit_bias", "logit_bias", scalar(oc_cfg.get("_logit_shape", ()))))
  if model.get("name") == "coca":
    dec = model["decoder"]
    dsize = tower_size(
      parse_text("B"), **{k: dec.get(k) for k in ("width", "depth", "heads", "mlp_dim")}
    )
    ls = bool(dec.get("layer_scale"))
    for i in range(dsize.depth):
      r += open_clip_block(
        f"text_decoder.resblocks.{i}",
        f"decoder.transformer.blocks.{i}.self_block",
        dsize.heads,
        layer_scale=ls,
      )
      r += open_clip_block(
        f"text_decoder.cross_attn.{i}",
        f"decoder.transformer.blocks.{i}.cross_block",
        dsize.heads,
        layer_scale=ls,
        cross=True,
      )
    r += [
      *norm("text_decoder.ln_final", "decoder.ln_final"),
      rule("text_decoder.text_projection", "decoder.head.kernel"),
    ]
  return r


def _width(model: dict, tower: str) -> int:
  t = model[tower]
  return tower_size(
    parse_vit(t["variant"])[0], **{k: t.get(k) for k in ("width", "depth", "heads", "mlp_dim")}
  ).width


def _mha_separate(ext: str, ours: str, heads: int) -> list[Rule]:
  """torch MultiheadAttention with kdim != embed_dim: separate q/k/v weights, one packed bias."""
  r = [
    rule(f"{ext}.{n}_proj_weight", f"{ours}.{d}", heads_in(heads))
    for n, d in (("q", "query"), ("k", "key"), ("v", "value"))
  ]
  return r + [
    rule(
      f"{ext}.in_proj_bias",
      [f"{ours}.{d}_bias" for d in ("query", "key", "value")],
      packed_in_bias(heads),
    ),
    rule(f"{ext}.out_proj.weight", f"{ours}.out", heads_out(heads)),
    rule(f"{ext}.out_proj.bias", f"{ours}.out_bias"),
  ]


def strip_prefix(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Drops DistributedDataParallel's ``module.`` prefix."""
  if sd and all(k.startswith("module.") for k in sd):
    return {k[len("module.") :]: v for k, v in sd.items()}
  return sd


def _ignored(key: str) -> bool:
  return key in ("attn_mask", "text.attn_mask", "visual.attn_mask") or key.endswith(".attn_mask")


def from_open_clip(sd: dict[str, np.ndarray], oc_cfg: dict) -> tuple[dict, dict[str, np.ndarray]]:
  """(vlpt model config, canonical flat params) from an open_clip state dict and its config."""
  sd = strip_prefix(sd)
  model = model_config_from_open_clip(oc_cfg)
  cfg = dict(oc_cfg)
  if "logit_scale" in sd:
    cfg["_logit_shape"] = tuple(np.shape(sd["logit_scale"]))
  if "logit_bias" in sd and model.get("init_logit_bias") is None:
    model["init_logit_bias"] = float(np.asarray(sd["logit_bias"]).reshape(()))
  flat = apply_rules(sd, rules(model, cfg), to_ours=True, ignore=_ignored)
  scale = float(np.asarray(flat["logit_scale"]))
  model["max_logit_scale"] = max(math.log(100), scale)
  return model, flat


def to_open_clip(model: dict, flat: dict[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
  """(open_clip model_cfg, state dict) from a vlpt model config and canonical flat params."""
  cfg = open_clip_config_from_model(model)
  return cfg, apply_rules(flat, rules(model, cfg), to_ours=False)


__all__ = [
  "from_open_clip",
  "to_open_clip",
  "model_config_from_open_clip",
  "open_clip_config_from_model",
]
