"""big_vision SigLIP ``.npz`` checkpoints -> vlpt (Zhai et al. 2023; flax layouts, no torch).

Flax kernels are already ``[in, out]`` and attention is ``[embed, heads, head_dim]``, so most
tensors map unchanged. Tower sizes are read from the tensors' shapes; scanned checkpoints
(``encoderblock/`` with a leading depth axis) are unstacked first.
"""

from __future__ import annotations

import math
import re

import numpy as np

from vlpt.errors import WeightsError
from vlpt.weights.mapping import Rule, apply_rules, reshape, rule, scalar


def _unscan(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = {}
  for key, value in sd.items():
    m = re.search(r"/encoderblock/", key)
    if m:
      for i in range(value.shape[0]):
        out[key.replace("/encoderblock/", f"/encoderblock_{i}/")] = value[i]
    else:
      out[key] = value
  return out


def normalize_keys(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  sd = {k[len("params/") :] if k.startswith("params/") else k: np.asarray(v) for k, v in sd.items()}
  return _unscan(sd)


def _depth(sd: dict, prefix: str) -> int:
  ids = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"encoderblock_(\d+)/", k))}
  if not ids:
    raise WeightsError(f"no transformer blocks under {prefix!r} in the .npz")
  return max(ids) + 1


def model_config_from_big_vision(sd: dict[str, np.ndarray]) -> dict:
  """Reads a SigLIP model's shape from its tensors."""
  need = [
    "img/embedding/kernel",
    "img/pos_embedding",
    "txt/Embed_0/embedding",
    "txt/pos_embedding",
    "txt/head/kernel",
    "t",
  ]
  missing = [k for k in need if k not in sd]
  if missing:
    raise WeightsError(f"not a big_vision SigLIP checkpoint: missing {', '.join(missing)}")
  p, _, _, w = sd["img/embedding/kernel"].shape
  n = sd["img/pos_embedding"].shape[1]
  grid = int(round(math.sqrt(n)))
  if grid * grid != n:
    raise WeightsError(f"image position embedding of {n} tokens is not a square grid")
  blk = "img/Transformer/encoderblock_0/"
  heads = sd[blk + "MultiHeadDotProductAttention_0/query/kernel"].shape[1]
  mlp = sd[blk + "MlpBlock_0/Dense_0/kernel"].shape[1]
  vocab, tw = sd["txt/Embed_0/embedding"].shape
  tblk = "txt/Encoder_0/encoderblock_0/"
  theads = sd[tblk + "MultiHeadDotProductAttention_0/query/kernel"].shape[1]
  tmlp = sd[tblk + "MlpBlock_0/Dense_0/kernel"].shape[1]
  embed_dim = sd["txt/head/kernel"].shape[1]
  has_img_head = "img/head/kernel" in sd
  if not has_img_head and embed_dim != w:
    raise WeightsError(f"text head width {embed_dim} != image width {w} and no image head")
  has_map = "img/MAPHead_0/probe" in sd
  image = dict(
    variant=f"B/{p}",
    image_size=grid * p,
    width=w,
    depth=_depth(sd, "img/Transformer/"),
    heads=heads,
    mlp_dim=mlp,
    class_token=False,
    patch_bias=True,
    ln_pre=False,
    pool="map" if has_map else "gap",
    proj=has_img_head,
    proj_bias=has_img_head,
    act="gelu_tanh",
    norm_eps=1e-6,
  )
  text = dict(
    variant="B",
    vocab_size=vocab,
    context_length=sd["txt/pos_embedding"].shape[1],
    width=tw,
    depth=_depth(sd, "txt/Encoder_0/"),
    heads=theads,
    mlp_dim=tmlp,
    causal=False,
    pool="last",
    proj=True,
    proj_bias=True,
    act="gelu_tanh",
    norm_eps=1e-6,
  )
  scale = float(np.asarray(sd["t"]).reshape(()))
  return dict(
    name="clip",
    embed_dim=embed_dim,
    image=image,
    text=text,
    init_logit_scale=math.log(10.0),
    max_logit_scale=max(math.log(100), scale),
    init_logit_bias=-10.0 if "b" in sd else None,
  )


def _flax_block(ext: str, ours: str) -> list[Rule]:
  r = []
  for src, dst in (("LayerNorm_0", "ln_1"), ("LayerNorm_1", "ln_2")):
    r += [
      rule(f"{ext}/{src}/scale", f"{ours}.{dst}.scale"),
      rule(f"{ext}/{src}/bias", f"{ours}.{dst}.bias"),
    ]
  r += _flax_attention(f"{ext}/MultiHeadDotProductAttention_0", f"{ours}.attn")
  r += _flax_mlp(f"{ext}/MlpBlock_0", f"{ours}.mlp")
  return r


def _flax_attention(ext: str, ours: str) -> list[Rule]:
  r = []
  for name in ("query", "key", "value"):
    r += [
      rule(f"{ext}/{name}/kernel", f"{ours}.{name}"),
      rule(f"{ext}/{name}/bias", f"{ours}.{name}_bias"),
    ]
  return r + [rule(f"{ext}/out/kernel", f"{ours}.out"), rule(f"{ext}/out/bias", f"{ours}.out_bias")]


def _flax_mlp(ext: str, ours: str) -> list[Rule]:
  return [
    rule(f"{ext}/Dense_0/kernel", f"{ours}.fc1.kernel"),
    rule(f"{ext}/Dense_0/bias", f"{ours}.fc1.bias"),
    rule(f"{ext}/Dense_1/kernel", f"{ours}.fc2.kernel"),
    rule(f"{ext}/Dense_1/bias", f"{ours}.fc2.bias"),
  ]


def rules(model: dict, sd: dict[str, np.ndarray]) -> list[Rule]:
  image, text = model["image"], model["text"]
  w, tw = image["width"], text["width"]
  n = sd["img/pos_embedding"].shape[1]
  r = [
    rule("img/embedding/kernel", "image.patch_embed"),
    rule("img/embedding/bias", "image.patch_bias"),
    rule("img/pos_embedding", "image.positional_embedding", reshape((1, n, w), (n, w))),
    rule("img/Transformer/encoder_norm/scale", "image.ln_post.scale"),
    rule("img/Transformer/encoder_norm/bias", "image.ln_post.bias"),
    rule("txt/Embed_0/embedding", "text.token_embedding"),
    rule(
      "txt/pos_embedding",
      "text.positional_embedding",
      reshape((1, text["context_length"], tw), (text["context_length"], tw)),
    ),
    rule("txt/Encoder_0/encoder_norm/scale", "text.ln_final.scale"),
    rule("txt/Encoder_0/encoder_norm/bias", "text.ln_final.bias"),
    rule("txt/head/kernel", "text.proj.kernel"),
    rule("txt/head/bias", "text.proj.bias"),
    rule("t", "logit_scale", scalar(np.shape(sd["t"]))),
  ]
  if "b" in sd:
    r.append(rule("b", "logit_bias", scalar(np.shape(sd["b"]))))
  if image["proj"]:
    r += [rule("img/head/kernel", "image.proj.kernel"), rule("img/head/bias", "image.proj.bias")]
  if image["pool"] == "map":
    r += [
      rule("img/MAPHead_0/probe", "image.map_head.probe", reshape((1, 1, w), (1, w))),
      *_flax_attention("img/MAPHead_0/MultiHeadDotProductAttention_0", "image.map_head.attn"),
      rule("img/MAPHead_0/LayerNorm_0/scale", "image.map_head.ln.scale"),
      rule("img/MAPHead_0/LayerNorm_0/bias", "image.map_head.ln.bias"),
      *_flax_mlp("img/MAPHead_0/MlpBlock_0", "image.map_head.mlp"),
    ]
  for i in range(image["depth"]):
    r += _flax_block(f"img/Transformer/encoderblock_{i}", f"image.transformer.blocks.{i}")
  for i in range(text["depth"]):
    r += _flax_block(f"txt/Encoder_0/encoderblock_{i}", f"text.transformer.blocks.{i}")
  return r


def from_big_vision(sd: dict[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
  sd = normalize_keys(sd)
  model = model_config_from_big_vision(sd)
  return model, apply_rules(sd, rules(model, sd), to_ours=True)


def to_big_vision(
  model: dict, flat: dict[str, np.ndarray], *, scale_shape=(1,)
) -> dict[str, np.ndarray]:
  """vlpt SigLIP-layout params -> big_vision npz keys (``params/...``), e.g. for round trips."""
  fake = {
    "img/pos_embedding": np.zeros((1, flat["image.positional_embedding"].shape[0], 1)),
    "t": np.zeros(scale_shape),
  }
  if "logit_bias" in flat:
    fake["b"] = np.zeros(scale_shape)
  out = apply_rules(flat, rules(model, fake), to_ours=False)
  return {f"params/{k}": v for k, v in out.items()}
