"""big_vision SigLIP / SigLIP 2 ``.npz`` checkpoints -> vlpt (Zhai et al. 2023; Tschannen et al.
2025, arXiv 2502.14786; flax layouts, no torch).

Flax kernels are already ``[in, out]`` and attention is ``[embed, heads, head_dim]``, so most
tensors map unchanged. Tower sizes are read from the tensors' shapes; scanned checkpoints
(``encoderblock/`` with a leading depth axis) are unstacked first.

SigLIP 2's fixed-resolution checkpoints have SigLIP's layout (``vit.py`` + ``two_towers.py``; only
the vocabulary, Gemma's 256k, differs). Its NaFlex checkpoints (``naflex_vit.py``) differ in the
image stem only: ``img/embedding/kernel`` is a Dense ``[p*p*3, width]`` over patches flattened
(y, x, channel), and ``img/pos_embedding`` a square ``[g, g, width]`` grid resized per image;
they load as a ``naflex`` image tower (as HF ``Siglip2Model``) whose ``image_size`` is g * p.
"""

from __future__ import annotations

import math
import re

import numpy as np

from vlpt.errors import WeightsError
from vlpt.models.sizes import parse_vit
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


def is_naflex(sd: dict[str, np.ndarray]) -> bool:
  """A NaFlex image stem (SigLIP 2's ``naflex_vit.py``): a Dense patch embedding ``[p*p*3, width]``
  instead of ``vit.py``'s convolution ``[p, p, 3, width]``."""
  return np.ndim(sd["img/embedding/kernel"]) == 2


def _image_stem(sd: dict[str, np.ndarray]) -> tuple[int, int, int]:
  """(patch, grid side, width) of the image stem, plain ViT or NaFlex."""
  kernel, pos = sd["img/embedding/kernel"], sd["img/pos_embedding"]
  if is_naflex(sd):
    k, w = kernel.shape
    p = math.isqrt(k // 3)
    if p * p * 3 != k:
      raise WeightsError(f"NaFlex patch embedding of {k} inputs is not a p x p x 3 patch")
    if np.ndim(pos) != 3 or pos.shape[0] != pos.shape[1] or pos.shape[2] != w:
      raise WeightsError(
        f"NaFlex position embedding {tuple(pos.shape)} is not a square [g, g, {w}] grid"
      )
    return p, pos.shape[0], w
  if np.ndim(kernel) != 4 or kernel.shape[0] != kernel.shape[1]:
    raise WeightsError(f"image patch embedding {tuple(kernel.shape)} is not [p, p, 3, width]")
  p, w = kernel.shape[0], kernel.shape[-1]
  n = pos.shape[1]
  grid = math.isqrt(n)
  if grid * grid != n:
    raise WeightsError(f"image position embedding of {n} tokens is not a square grid")
  return p, grid, w


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
  p, grid, w = _image_stem(sd)
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
  if is_naflex(sd):
    image["naflex"] = True
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
  p = parse_vit(image["variant"])[1]
  grid = image["image_size"] // p
  n = grid * grid
  if image.get("naflex"):  # naflex_vit.py: a Dense over (y, x, channel) patches, a [g, g, w] grid
    stem = [
      rule("img/embedding/kernel", "image.patch_embed", reshape((p * p * 3, w), (p, p, 3, w))),
      rule("img/pos_embedding", "image.positional_embedding", reshape((grid, grid, w), (n, w))),
    ]
  else:
    stem = [
      rule("img/embedding/kernel", "image.patch_embed"),
      rule("img/pos_embedding", "image.positional_embedding", reshape((1, n, w), (n, w))),
    ]
  r = [
    *stem,
    rule("img/embedding/bias", "image.patch_bias"),
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
  """vlpt SigLIP-layout params -> big_vision npz keys (``params/...``), e.g. for round trips; a
  ``naflex`` image tower is written in ``naflex_vit.py``'s layout."""
  fake = {"t": np.zeros(scale_shape)}
  if "logit_bias" in flat:
    fake["b"] = np.zeros(scale_shape)
  out = apply_rules(flat, rules(model, fake), to_ours=False)
  return {f"params/{k}": v for k, v in out.items()}
