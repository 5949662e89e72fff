"""vlpt: contrastive vision-language pre-training (CLIP, SigLIP, ALIGN, LiT, CoCa) in JAX."""

__version__ = "0.1.0"
