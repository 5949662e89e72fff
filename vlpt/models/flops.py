"""Model FLOPs of a training example, from the model's constructor arguments (no tracing).

The MFU convention (Chowdhery et al. 2022, PaLM, Appendix B; Kaplan et al. 2020, Sec. 2.1):
only matrix multiplications count, 2 FLOPs per multiply-add, attention scores and values
included; a trained part costs 3x its forward pass (forward, and the two backward matmuls),
a locked tower (LiT) 1x; rematerialization is not counted (it is overhead, not model work).
Attention is counted in full also where it is causal (XLA computes the whole score matrix).
Embedding lookups are gathers and count nothing.
"""

from __future__ import annotations

from typing import Any

from vlpt.models.sizes import parse_text, parse_vit, tower_size


def attention(n_q: int, n_kv: int, width: int, kv_width: int | None = None) -> int:
  """q/k/v/out projections and the score and value matmuls of one attention layer."""
  kv_width = kv_width or width
  projections = 2 * n_q * width * width * 2 + 2 * n_kv * kv_width * width * 2  # q, out; k, v
  return projections + 2 * 2 * n_q * n_kv * width


def mlp(n: int, width: int, hidden: int) -> int:
  return 2 * 2 * n * width * hidden


def block(n: int, width: int, hidden: int) -> int:
  return attention(n, n, width) + mlp(n, width, hidden)


def image_tower(kw: dict, embed_dim: int) -> tuple[int, int]:
  """(forward FLOPs of one image, tokens the pooled output sees besides the prefix)."""
  size, patch = parse_vit(kw["variant"])
  size = _size(size, kw)
  w, grid = size.width, kw["image_size"] // patch
  patches = grid * grid
  flops = 2 * patches * patch * patch * 3 * w
  kept = patches
  if kw.get("patch_dropout", 0.0):
    kept = max(1, int(patches * (1.0 - kw["patch_dropout"])))
  n = kept + int(kw.get("class_token", True))
  flops += size.depth * block(n, w, size.mlp_dim)
  pool = kw.get("pool", "token")
  pool_dim = w
  if pool == "map":
    flops += attention(1, n, w) + mlp(1, w, size.mlp_dim)
  elif pool == "coca":
    q = kw.get("pooler_queries", 256)
    flops += attention(q, n, embed_dim, kv_width=w)
    pool_dim = embed_dim
  if kw.get("proj", True):
    flops += 2 * pool_dim * embed_dim
  return flops, kw.get("pooler_queries", 256) - 1 if pool == "coca" else 0


def text_tower(kw: dict, embed_dim: int) -> int:
  size = _size(parse_text(kw.get("variant", "B")), kw)
  w = size.width
  n = kw["context_length"] + int(kw.get("embed_cls", False))
  flops = size.depth * block(n, w, size.mlp_dim)
  if kw.get("pool", "eot") == "map":
    flops += attention(1, n, w) + mlp(1, w, size.mlp_dim)
  if kw.get("proj", True):
    flops += 2 * w * embed_dim
  return flops


def decoder(kw: dict, context_length: int, image_tokens: int) -> int:
  """CoCa's multimodal decoder under teacher forcing: L-1 positions, each layer a causal block
  and a cross-attention block over the image tokens, then the vocabulary head."""
  size = _size(parse_text(kw.get("variant", "B")), kw)
  w, n = size.width, context_length - 1
  per_layer = block(n, w, size.mlp_dim) + attention(n, image_tokens, w) + mlp(n, w, size.mlp_dim)
  return size.depth * per_layer + 2 * n * w * kw["vocab_size"]


def locca_decoder(kw: dict, image: dict, context_length: int) -> int:
  """LocCa's decoder on one caption sequence over every patch token (SigLIP 2, Sec. 2.2); with
  boxes each example adds an ARef and a GCap sequence per box slot, which this does not count."""
  size, patch = parse_vit(image["variant"])
  patches = (image["image_size"] // patch) ** 2
  kw = {"width": _size(size, image).width, **kw}
  vocab = kw["vocab_size"] + kw.get("num_bins", 500) + 5
  return decoder({**kw, "vocab_size": vocab}, context_length + 1, patches)


def _size(size, kw: dict):
  return tower_size(size, **{k: kw.get(k) for k in ("width", "depth", "heads", "mlp_dim")})


def training_flops_per_example(
  model_kwargs: dict, *, batch_size: int, locked: tuple[str, ...] = (), loss: Any = None
) -> dict[str, int]:
  """Training FLOPs of one example, by part (``image``, ``text``, ``decoder``, ``loss``) and
  ``total``. ``model_kwargs`` as :func:`vlpt.models.model_kwargs` resolves them; the contrastive
  logits of one example are one row against the ``batch_size`` columns (x2 for each of its
  Matryoshka prefixes, ``loss.matryoshka_dims``)."""
  e = model_kwargs["embed_dim"]
  image = {**model_kwargs["image"]}
  text = {**model_kwargs["text"]}
  if model_kwargs["name"] == "coca":
    image.setdefault("pool", "coca")
    text.setdefault("embed_cls", True)
  image_fwd, image_tokens = image_tower(image, e)
  parts = {"image": image_fwd, "text": text_tower(text, e)}
  if model_kwargs["name"] == "coca":
    parts["decoder"] = decoder(model_kwargs["decoder"], text["context_length"], image_tokens)
  elif model_kwargs["name"] == "locca":
    parts["decoder"] = locca_decoder(model_kwargs["decoder"], image, text["context_length"])
  dims = tuple((loss or {}).get("matryoshka_dims", ()) or ()) or (e,)
  parts["loss"] = sum(2 * batch_size * d for d in dims)
  out = {k: v * (1 if k in locked else 3) for k, v in parts.items()}
  out["total"] = sum(out.values())
  return out
