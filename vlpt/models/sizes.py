"""Tower size tables: a config names a size ("B/16", "demo/4") instead of spelling out widths.

ViT sizes follow Dosovitskiy et al. 2021 (Table 1) and Zhai et al. 2022 ("Scaling ViTs"); text
sizes follow CLIP (Radford et al. 2021, Sec. 2.4 and Table 19) as open_clip ships them.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TowerSize:
  width: int
  depth: int
  heads: int
  mlp_dim: int


VIT_SIZES: dict[str, TowerSize] = {
  # tiny sizes for CPU demos and tests
  "micro": TowerSize(64, 2, 2, 256),
  "demo": TowerSize(128, 3, 4, 512),
  "Ti": TowerSize(192, 12, 3, 768),
  "S": TowerSize(384, 12, 6, 1536),
  "M": TowerSize(512, 12, 8, 2048),
  "B": TowerSize(768, 12, 12, 3072),
  "L": TowerSize(1024, 24, 16, 4096),
  "H": TowerSize(1280, 32, 16, 5120),
  "g": TowerSize(1408, 40, 16, 6144),
  "g-opt": TowerSize(1536, 40, 16, 6144),  # SigLIP 2's g (shape-optimized, Alabdulmohsin et al. 2023)
  "So400m": TowerSize(1152, 27, 16, 4304),
}

VIT_PATCHES = (4, 8, 14, 16, 32)

TEXT_SIZES: dict[str, TowerSize] = {
  "micro": TowerSize(64, 2, 2, 256),
  "demo": TowerSize(128, 3, 4, 512),
  "Ti": TowerSize(192, 12, 3, 768),
  "S": TowerSize(384, 12, 6, 1536),
  "B": TowerSize(512, 12, 8, 2048),  # CLIP ViT-B text tower
  "L": TowerSize(768, 12, 12, 3072),  # CLIP ViT-L/14 text tower
  "H": TowerSize(1024, 24, 16, 4096),
}


def parse_vit(variant: str) -> tuple[TowerSize, int]:
  """'B/16' -> (size of B, patch 16)."""
  name, sep, patch = variant.partition("/")
  if not sep or not patch.isdigit():
    raise ValueError(f"image tower variant {variant!r} must look like 'SIZE/PATCH', e.g. 'B/16'")
  if name not in VIT_SIZES:
    raise ValueError(f"unknown ViT size {name!r} in {variant!r}; known: {', '.join(VIT_SIZES)}")
  return VIT_SIZES[name], int(patch)


def parse_text(variant: str) -> TowerSize:
  if variant not in TEXT_SIZES and variant in VIT_SIZES:
    return VIT_SIZES[variant]  # SigLIP-style text towers match the image tower's width
  if variant not in TEXT_SIZES:
    raise ValueError(f"unknown text tower size {variant!r}; known: {', '.join(TEXT_SIZES)}")
  return TEXT_SIZES[variant]


def tower_size(
  size: TowerSize,
  *,
  width: int | None = None,
  depth: int | None = None,
  heads: int | None = None,
  mlp_dim: int | None = None,
) -> TowerSize:
  """``size`` with any explicitly given dimension replaced (imported checkpoints, ablations)."""
  out = TowerSize(width or size.width, depth or size.depth, heads or size.heads, mlp_dim or size.mlp_dim)
  if out.width % out.heads:
    raise ValueError(f"tower width {out.width} is not divisible by {out.heads} heads")
  return out
