"""vlpt: contrastive vision-language pre-training (CLIP, SigLIP, ALIGN, LiT, CoCa) in JAX."""

__version__ = "0.2.0"


def load(path: str, **kwargs):
  """Loads a vlpt, open_clip, HF (CLIP/SigLIP) or big_vision checkpoint; see ``vlpt.pretrained``."""
  from vlpt.pretrained import load as _load

  return _load(path, **kwargs)
