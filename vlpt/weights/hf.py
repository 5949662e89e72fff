"""HF transformers ``CLIPModel`` / ``SiglipModel`` / ``Siglip2Model`` directories <-> vlpt.

A directory holds ``config.json`` (``model_type`` "clip", "siglip" or "siglip2") and
``model.safetensors``. ``Siglip2Model`` is SigLIP 2's NaFlex layout (Tschannen et al. 2025,
arXiv 2502.14786): SigLIP's towers with the patch embedding as a Linear over flattened patches
and a square grid of ``num_patches`` learned positions, resized per image; it loads as a
``naflex`` image tower whose ``image_size`` is sqrt(num_patches) * patch. (SigLIP 2's
fixed-resolution checkpoints are ``SiglipModel`` directories with a Gemma tokenizer.)
HF CLIP pools text at the first ``eos_token_id`` (or at argmax(ids) for legacy configs with
eos_token_id 2); HF SigLIP reads the last position and is run without an attention mask, as HF
does when none is given.
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
  heads_out,
  packed_in_bias,
  packed_in_proj,
  reshape,
  rule,
  scalar,
)
from vlpt.weights.torch_blocks import hf_block, linear, norm

_ACTS = {
  "quick_gelu": "quick_gelu",
  "gelu": "gelu",
  "gelu_pytorch_tanh": "gelu_tanh",
  "gelu_new": "gelu_tanh",
  "gelu_fast": "gelu_tanh",
}
_ACTS_OUT = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}

CLIP_TEXT_DEFAULTS = dict(
  vocab_size=49408,
  hidden_size=512,
  intermediate_size=2048,
  num_hidden_layers=12,
  num_attention_heads=8,
  max_position_embeddings=77,
  hidden_act="quick_gelu",
  layer_norm_eps=1e-5,
  eos_token_id=49407,
)
CLIP_VISION_DEFAULTS = dict(
  hidden_size=768,
  intermediate_size=3072,
  num_hidden_layers=12,
  num_attention_heads=12,
  image_size=224,
  patch_size=32,
  hidden_act="quick_gelu",
  layer_norm_eps=1e-5,
)
SIGLIP_TEXT_DEFAULTS = dict(
  vocab_size=32000,
  hidden_size=768,
  intermediate_size=3072,
  num_hidden_layers=12,
  num_attention_heads=12,
  max_position_embeddings=64,
  hidden_act="gelu_pytorch_tanh",
  layer_norm_eps=1e-6,
)
SIGLIP2_VISION_DEFAULTS = dict(
  hidden_size=768,
  intermediate_size=3072,
  num_hidden_layers=12,
  num_attention_heads=12,
  num_patches=256,
  patch_size=16,
  hidden_act="gelu_pytorch_tanh",
  layer_norm_eps=1e-6,
)
SIGLIP_VISION_DEFAULTS = dict(
  hidden_size=768,
  intermediate_size=3072,
  num_hidden_layers=12,
  num_attention_heads=12,
  image_size=224,
  patch_size=16,
  hidden_act="gelu_pytorch_tanh",
  layer_norm_eps=1e-6,
)


def _act(name: str) -> str:
  if name not in _ACTS:
    raise WeightsError(f"HF hidden_act {name!r} is not supported; known: {sorted(_ACTS)}")
  return _ACTS[name]


def _tower(defaults: dict, cfg: dict | None) -> dict:
  return {**defaults, **(cfg or {})}


def model_config_from_hf(config: dict) -> dict:
  """HF ``config.json`` -> vlpt ``config.model`` dict."""
  kind = config.get("model_type")
  if kind == "clip":
    tc = _tower(CLIP_TEXT_DEFAULTS, config.get("text_config"))
    vc = _tower(CLIP_VISION_DEFAULTS, config.get("vision_config"))
    embed_dim = int(config.get("projection_dim", 512))
    eos = int(tc.get("eos_token_id", 49407))
    image = dict(class_token=True, ln_pre=True, pool="token", proj=True)
    text = dict(
      causal=True, pool="eot" if eos == 2 else "eos", eos_id=None if eos == 2 else eos, proj=True
    )
  elif kind in ("siglip", "siglip2"):
    tc = _tower(SIGLIP_TEXT_DEFAULTS, config.get("text_config"))
    vc = _tower(
      SIGLIP_VISION_DEFAULTS if kind == "siglip" else SIGLIP2_VISION_DEFAULTS,
      config.get("vision_config"),
    )
    if not vc.get("vision_use_head", True):
      raise WeightsError("SigLIP vision towers without their pooling head are not supported")
    embed_dim = int(vc["hidden_size"])
    proj_size = int(tc.get("projection_size") or tc["hidden_size"])
    if proj_size != embed_dim:
      raise WeightsError(f"SigLIP text projection_size {proj_size} != vision width {embed_dim}")
    image = dict(class_token=False, patch_bias=True, ln_pre=False, pool="map", proj=False)
    text = dict(causal=False, pool="last", proj=True, proj_bias=True)
    if kind == "siglip2":
      patch, n = int(vc["patch_size"]), int(vc["num_patches"])
      grid = math.isqrt(n)
      if grid * grid != n:
        raise WeightsError(f"Siglip2 num_patches={n} is not a square grid of positions")
      vc = dict(vc, image_size=grid * patch)
      image["naflex"] = True
  else:
    raise WeightsError(f"HF model_type {kind!r} is not supported (clip, siglip, siglip2)")
  vw, tw = int(vc["hidden_size"]), int(tc["hidden_size"])
  image.update(
    variant=f"B/{int(vc['patch_size'])}",
    image_size=int(vc["image_size"]),
    width=vw,
    depth=int(vc["num_hidden_layers"]),
    heads=int(vc["num_attention_heads"]),
    mlp_dim=int(vc["intermediate_size"]),
    act=_act(vc["hidden_act"]),
    norm_eps=float(vc["layer_norm_eps"]),
  )
  text.update(
    variant="B",
    vocab_size=int(tc["vocab_size"]),
    context_length=int(tc["max_position_embeddings"]),
    width=tw,
    depth=int(tc["num_hidden_layers"]),
    heads=int(tc["num_attention_heads"]),
    mlp_dim=int(tc["intermediate_size"]),
    act=_act(tc["hidden_act"]),
    norm_eps=float(tc["layer_norm_eps"]),
  )
  scale = float(config.get("logit_scale_init_value", math.log(1 / 0.07)))
  return dict(
    name="clip",
    embed_dim=embed_dim,
    image=image,
    text=text,
    init_logit_scale=scale if kind == "clip" else math.log(10.0),
    max_logit_scale=math.log(100),
    init_logit_bias=None if kind == "clip" else -10.0,
    _hf_kind=kind,
  )


def hf_kind(model: dict) -> str:
  """Which HF family can hold this vlpt model ("clip", "siglip" or, for a NaFlex image tower,
  "siglip2"), or a WeightsError why not."""
  image, text = model["image"], model["text"]
  if (
    image.get("pool", "token") == "token"
    and image.get("class_token", True)
    and image.get("ln_pre", True)
    and not image.get("patch_bias")
    and image.get("proj", True)
    and not image.get("proj_bias")
    and text.get("causal", True)
    and text.get("pool", "eot") in ("eot", "eos")
    and text.get("proj", True)
    and not text.get("proj_bias")
  ):
    kind = "clip"
  elif (
    image.get("pool") == "map"
    and not image.get("class_token", True)
    and image.get("patch_bias")
    and not image.get("ln_pre", True)
    and not image.get("proj", True)
    and not text.get("causal", True)
    and text.get("pool") == "last"
    and text.get("proj_bias")
  ):
    kind = "siglip2" if image.get("naflex") else "siglip"
  else:
    raise WeightsError("this model's layout is neither HF CLIPModel's nor SiglipModel's")
  if image.get("naflex") and kind != "siglip2":
    raise WeightsError("a NaFlex image tower is held by HF Siglip2Model only (SigLIP's layout)")
  if (
    image.get("layer_scale")
    or text.get("layer_scale")
    or text.get("embed_cls")
    or model.get("name", "clip") != "clip"
    or image.get("final_ln_after_pool")
    or text.get("mask_padding")
  ):
    raise WeightsError(
      "HF CLIPModel/SiglipModel cannot hold LayerScale, CoCa parts, final_ln_after_pool or padding masks"
    )
  return kind


def hf_config_from_model(model: dict) -> dict:
  """vlpt ``config.model`` dict -> HF ``config.json``."""
  kind = hf_kind(model)
  image, text = model["image"], model["text"]
  vsize, patch = parse_vit(image["variant"])
  vsize = tower_size(vsize, **{k: image.get(k) for k in ("width", "depth", "heads", "mlp_dim")})
  tsize = tower_size(
    parse_text(text["variant"]), **{k: text.get(k) for k in ("width", "depth", "heads", "mlp_dim")}
  )
  vc = dict(
    hidden_size=vsize.width,
    intermediate_size=vsize.mlp_dim,
    num_hidden_layers=vsize.depth,
    num_attention_heads=vsize.heads,
    image_size=image["image_size"],
    patch_size=patch,
    hidden_act=_ACTS_OUT[image.get("act", "gelu")],
    layer_norm_eps=image.get("norm_eps", 1e-5),
  )
  tc = dict(
    vocab_size=text["vocab_size"],
    hidden_size=tsize.width,
    intermediate_size=tsize.mlp_dim,
    num_hidden_layers=tsize.depth,
    num_attention_heads=tsize.heads,
    max_position_embeddings=text["context_length"],
    hidden_act=_ACTS_OUT[text.get("act", "gelu")],
    layer_norm_eps=text.get("norm_eps", 1e-5),
  )
  if kind == "clip":
    tc["eos_token_id"] = 2 if text.get("pool", "eot") == "eot" else int(text["eos_id"])
    return dict(
      architectures=["CLIPModel"],
      model_type="clip",
      projection_dim=model["embed_dim"],
      logit_scale_init_value=model.get("init_logit_scale", math.log(1 / 0.07)),
      text_config={**tc, "model_type": "clip_text_model", "projection_dim": model["embed_dim"]},
      vision_config={**vc, "model_type": "clip_vision_model", "projection_dim": model["embed_dim"]},
    )
  if kind == "siglip2":
    vc["num_patches"] = (vc.pop("image_size") // patch) ** 2
    return dict(
      architectures=["Siglip2Model"],
      model_type="siglip2",
      text_config={**tc, "model_type": "siglip2_text_model", "projection_size": model["embed_dim"]},
      vision_config={**vc, "model_type": "siglip2_vision_model"},
    )
  return dict(
    architectures=["SiglipModel"],
    model_type="siglip",
    text_config={**tc, "model_type": "siglip_text_model", "projection_size": model["embed_dim"]},
    vision_config={**vc, "model_type": "siglip_vision_model"},
  )


def rules(model: dict) -> list[Rule]:
  kind = model.get("_hf_kind") or hf_kind(model)
  image, text = model["image"], model["text"]
  vsize, patch = parse_vit(image["variant"])
  vsize = tower_size(vsize, **{k: image.get(k) for k in ("width", "depth", "heads", "mlp_dim")})
  tsize = tower_size(
    parse_text(text["variant"]), **{k: text.get(k) for k in ("width", "depth", "heads", "mlp_dim")}
  )
  v, t = "vision_model", "text_model"
  # Siglip2's patch embedding is a Linear over patches flattened (y, x, channel), vlpt's order
  patch_embed = reshape_linear((patch, patch, 3, vsize.width)) if kind == "siglip2" else CONV
  r: list[Rule] = [
    rule(f"{v}.embeddings.patch_embedding.weight", "image.patch_embed", patch_embed),
    rule(f"{v}.embeddings.position_embedding.weight", "image.positional_embedding"),
    *norm(f"{v}.post_layernorm", "image.ln_post"),
    rule(f"{t}.embeddings.token_embedding.weight", "text.token_embedding"),
    rule(f"{t}.embeddings.position_embedding.weight", "text.positional_embedding"),
    *norm(f"{t}.final_layer_norm", "text.ln_final"),
  ]
  for i in range(vsize.depth):
    r += hf_block(f"{v}.encoder.layers.{i}", f"image.transformer.blocks.{i}", vsize.heads)
  for i in range(tsize.depth):
    r += hf_block(f"{t}.encoder.layers.{i}", f"text.transformer.blocks.{i}", tsize.heads)
  if kind == "clip":
    r += [
      rule(f"{v}.embeddings.class_embedding", "image.class_embedding"),
      *norm(f"{v}.pre_layrnorm", "image.ln_pre"),
      *linear("visual_projection", "image.proj", bias=False),
      *linear("text_projection", "text.proj", bias=False),
      rule("logit_scale", "logit_scale", scalar(())),
    ]
  else:
    h, w = vsize.heads, vsize.width
    r += [
      rule(f"{v}.embeddings.patch_embedding.bias", "image.patch_bias"),
      rule(f"{v}.head.probe", "image.map_head.probe", reshape((1, 1, w), (1, w))),
      rule(
        f"{v}.head.attention.in_proj_weight",
        ["image.map_head.attn.query", "image.map_head.attn.key", "image.map_head.attn.value"],
        packed_in_proj(h),
      ),
      rule(
        f"{v}.head.attention.in_proj_bias",
        [
          "image.map_head.attn.query_bias",
          "image.map_head.attn.key_bias",
          "image.map_head.attn.value_bias",
        ],
        packed_in_bias(h),
      ),
      rule(f"{v}.head.attention.out_proj.weight", "image.map_head.attn.out", heads_out(h)),
      rule(f"{v}.head.attention.out_proj.bias", "image.map_head.attn.out_bias"),
      *norm(f"{v}.head.layernorm", "image.map_head.ln"),
      *linear(f"{v}.head.mlp.fc1", "image.map_head.mlp.fc1"),
      *linear(f"{v}.head.mlp.fc2", "image.map_head.mlp.fc2"),
      *linear(f"{t}.head", "text.proj"),
      rule("logit_scale", "logit_scale", scalar((1,))),
      rule("logit_bias", "logit_bias", scalar((1,))),
    ]
  return r


def reshape_linear(our_shape: tuple[int, ...]):
  """torch Linear weight (out, in) <-> a kernel of ``our_shape`` whose flattened leading axes are
  ``in`` and whose last is ``out``."""
  return (
    lambda a: [a[0].T.reshape(our_shape)],
    lambda a: [a[0].reshape(-1, our_shape[-1]).T],
  )


def _ignored(key: str) -> bool:
  return key.endswith("position_ids")


def from_hf(sd: dict[str, np.ndarray], config: dict) -> tuple[dict, dict[str, np.ndarray]]:
  model = model_config_from_hf(config)
  flat = apply_rules(sd, rules(model), to_ours=True, ignore=_ignored)
  model.pop("_hf_kind")
  model["max_logit_scale"] = max(math.log(100), float(np.asarray(flat["logit_scale"])))
  return model, flat


def to_hf(model: dict, flat: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  config = hf_config_from_model(model)
  return config, apply_rules(flat, rules(model), to_ours=False)
