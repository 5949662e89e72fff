"""Transformer-block rules shared by the PyTorch layouts (open_clip and HF transformers)."""

from __future__ import annotations

from vlpt.weights.mapping import (
  LINEAR,
  Rule,
  heads_bias,
  heads_in,
  heads_out,
  packed_in_bias,
  packed_in_proj,
  rule,
)


def norm(ext: str, ours: str) -> list[Rule]:
  return [rule(f"{ext}.weight", f"{ours}.scale"), rule(f"{ext}.bias", f"{ours}.bias")]


def linear(ext: str, ours: str, *, bias: bool = True) -> list[Rule]:
  out = [rule(f"{ext}.weight", f"{ours}.kernel", LINEAR)]
  return out + ([rule(f"{ext}.bias", f"{ours}.bias")] if bias else [])


def packed_attention(ext: str, ours: str, heads: int) -> list[Rule]:
  """torch nn.MultiheadAttention (in_proj_weight = [Wq; Wk; Wv], out_proj) -> vlpt Attention."""
  qkv = [f"{ours}.query", f"{ours}.key", f"{ours}.value"]
  return [
    rule(f"{ext}.in_proj_weight", qkv, packed_in_proj(heads)),
    rule(f"{ext}.in_proj_bias", [f"{k}_bias" for k in qkv], packed_in_bias(heads)),
    rule(f"{ext}.out_proj.weight", f"{ours}.out", heads_out(heads)),
    rule(f"{ext}.out_proj.bias", f"{ours}.out_bias"),
  ]


def split_attention(
  ext: str, ours: str, heads: int, *, names=("q_proj", "k_proj", "v_proj"), out="out_proj"
) -> list[Rule]:
  """Separate q/k/v Linear layers (HF; torch MHA with kdim != embed_dim) -> vlpt Attention."""
  rules = []
  for src, dst in zip(names, ("query", "key", "value")):
    rules.append(rule(f"{ext}.{src}.weight", f"{ours}.{dst}", heads_in(heads)))
    rules.append(rule(f"{ext}.{src}.bias", f"{ours}.{dst}_bias", heads_bias(heads)))
  rules.append(rule(f"{ext}.{out}.weight", f"{ours}.out", heads_out(heads)))
  rules.append(rule(f"{ext}.{out}.bias", f"{ours}.out_bias"))
  return rules


def open_clip_block(
  ext: str, ours: str, heads: int, *, layer_scale: bool = False, cross: bool = False
) -> list[Rule]:
  rules = (
    norm(f"{ext}.ln_1", f"{ours}.ln_1")
    + packed_attention(f"{ext}.attn", f"{ours}.attn", heads)
    + norm(f"{ext}.ln_2", f"{ours}.ln_2")
    + linear(f"{ext}.mlp.c_fc", f"{ours}.mlp.fc1")
    + linear(f"{ext}.mlp.c_proj", f"{ours}.mlp.fc2")
  )
  if cross:
    rules += norm(f"{ext}.ln_1_kv", f"{ours}.ln_1_kv")
  if layer_scale:
    rules += [
      rule(f"{ext}.ls_1.gamma", f"{ours}.ls_1.gamma"),
      rule(f"{ext}.ls_2.gamma", f"{ours}.ls_2.gamma"),
    ]
  return rules


def hf_block(ext: str, ours: str, heads: int) -> list[Rule]:
  return (
    norm(f"{ext}.layer_norm1", f"{ours}.ln_1")
    + split_attention(f"{ext}.self_attn", f"{ours}.attn", heads)
    + norm(f"{ext}.layer_norm2", f"{ours}.ln_2")
    + linear(f"{ext}.mlp.fc1", f"{ours}.mlp.fc1")
    + linear(f"{ext}.mlp.fc2", f"{ours}.mlp.fc2")
  )
