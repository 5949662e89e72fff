"""LiT: locked-image tuning, a text tower trained from scratch against a frozen pretrained image tower.

Paper: Xiaohua Zhai, Xiao Wang, Basil Mustafa, Andreas Steiner, Daniel Keysers, Alexander
Kolesnikov, Lucas Beyer. "LiT: Zero-Shot Transfer with Locked-image text Tuning", 2022,
arXiv:2111.07991.

Settings from the paper: Sec. 3.3 (the "Lu" setup: image tower locked and initialized from a
pretrained model, text tower unlocked and randomly initialized), Sec. 5.1 (the best model: a
ViT-g/14 image tower pretrained on JFT-3B, batch 32k, 18 billion image-text pairs seen, roughly
550k steps) and Appendix C (Adafactor with learning rate 0.001, beta1 0.9, beta2 0.999, no weight
decay, cosine schedule with 10k warmup steps, 224x224 images, no linear head on the locked image
tower). 18B / 32,768 = 549,317 steps. Appendix E restricts text to 16 tokens (YFCC100m study).

The paper's ViT-g/14 (JFT-3B) tower is not public. Here the locked tower is any CLIP-layout ViT
that vlpt.load reads: ``config.init.checkpoint`` names the checkpoint (an open_clip directory, an
HF CLIPModel directory, a vlpt export or training workdir) and ``config.init.towers =
("image",)`` takes only its image tower, with its projection, which then stays locked
(``config.init.lock_towers``); the text tower (ViT-B-sized: 12 layers, 768 wide, as in Sec.
5.4) starts from the random init and may differ from the checkpoint's. ``config.model.image``
must describe the checkpoint's image tower (``vlpt-convert SRC --print-config`` prints it;
OpenAI weights need ``act="quick_gelu"``) and ``embed_dim`` its projection width. Tokenizer:
CLIP's BPE (the paper used sentencepiece or wordpiece vocabularies, Table 4).

Reported (zero-shot; docs/recipes.md has the side-by-side table and the compute), Table 1:
  ImageNet top-1: 85.2 (ViT-g/14, private data; ObjectNet 82.5), 75.7 (public data: ViT-L/16
  ImageNet-21k tower tuned on YFCC100m-CLIP + CC12M, Appendix D). Table 1 reports no COCO or
  Flickr30k retrieval for these models.

Variants (comma-combinable): B16 (default: a ViT-B/16 CLIP image tower, embed 512), L14 (a
ViT-L/14 CLIP image tower, embed 768); smoke (``init.checkpoint="builtin:demo"``: vlpt's own
tiny demo CLIP, trained once on the built-in synthetic data and cached under $VLPT_CACHE, about a
minute; then 20 LiT steps with a text tower of another size than the demo's).

Data and checkpoint: override both placeholders, e.g.
  vlpt-train --config configs/lit.py:B16 --workdir DIR \\
      --config.init.checkpoint=/models/open_clip-ViT-B-16-laion2b \\
      --config.data.train.source='wds:/data/cc12m/{00000..01242}.tar'
Until then validation fails naming the missing checkpoint or shard.

  vlpt-train --config configs/lit.py:smoke --workdir /tmp/lit-smoke
"""

from __future__ import annotations

import math

import ml_collections

from vlpt.config import (
  default_config,
  imagenet_zeroshot_eval,
  large_tower_defaults,
  recipe_variants,
  smoke_run,
)

PAPER = "arXiv:2111.07991"
DATA_PLACEHOLDER = "wds:/path/to/your/image-text-shards/{00000..01242}.tar"
CHECKPOINT_PLACEHOLDER = "/path/to/a/pretrained/clip-checkpoint"
BATCH = 32_768  # Sec. 5.1: 32k
SAMPLES_SEEN = 18_000_000_000  # Sec. 5.1

# CLIP-layout image towers (the checkpoint's; locked) and their projection width
SIZES = {
  "B16": dict(image="B/16", embed_dim=512),
  "L14": dict(image="L/14", embed_dim=768),
}
VARIANTS = (*SIZES, "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  size, variants = recipe_variants(arg, "lit", SIZES, "B16", VARIANTS)

  c = default_config()
  c.seed = 0
  c.batch_size = BATCH
  c.total_steps = -(-SAMPLES_SEEN // BATCH)  # 549,317
  c.log_every_steps = 100
  c.eval_every_steps = 10_000
  c.checkpoint_every_steps = 5_000

  c.model.name = "clip"
  c.model.embed_dim = size["embed_dim"]
  c.model.image = ml_collections.ConfigDict({"variant": size["image"], "pool": "token", "act": "gelu"})
  c.model.text = ml_collections.ConfigDict(
    {
      "variant": "B",
      "width": 768,
      "depth": 12,
      "heads": 12,
      "mlp_dim": 3072,
      "vocab_size": ml_collections.FieldReference(None, field_type=int),
      "context_length": ml_collections.FieldReference(None, field_type=int),
    }
  )
  c.init.checkpoint = CHECKPOINT_PLACEHOLDER
  c.init.towers = ("image",)  # only the image tower (and its projection) is loaded
  c.init.lock_towers = ("image",)  # "Lu" (Sec. 3.3)
  c.model.init_logit_scale = math.log(1 / 0.07)  # not stated in the paper
  c.model.dtype = "bfloat16"

  c.loss.name = "softmax"

  c.optimizer.name = "adafactor"  # Appendix C
  c.optimizer.lr = 1e-3
  c.optimizer.b1, c.optimizer.b2 = 0.9, 0.999
  c.optimizer.eps = 1e-30  # Adafactor's epsilon1 (Shazeer & Stern 2018, Alg. 4; big_vision's)
  c.optimizer.weight_decay = 0.0  # "No weight decay is used during tuning"
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 10_000
  c.optimizer.grad_clip_norm = 1.0  # Appendix D (public-data runs); not stated for Appendix C

  c.data.image_size = 224
  c.data.normalization = "clip"  # the locked tower's (a CLIP checkpoint's) normalization
  c.data.tokenizer = ml_collections.ConfigDict({"name": "clip_bpe", "context_length": 16})
  c.data.train.source = DATA_PLACEHOLDER
  c.data.train.shuffle = True

  imagenet_zeroshot_eval(c)
  large_tower_defaults(c)  # ViT-L and larger: scanned blocks, remat (docs/scale.md)

  if "smoke" in variants:
    _smoke(c)
  return c


def _smoke(c: ml_collections.ConfigDict) -> None:
  """The locked image tower of ``builtin:demo`` (micro/8, 32 px, embed 64) and a new, larger
  ("demo"-sized) text tower trained for 20 steps on the built-in synthetic data."""
  smoke_run(c)  # 20 steps on the built-in data, 8 simulated devices
  c.init.checkpoint = "builtin:demo"
  c.model.embed_dim = 64  # builtin:demo's image projection width
  c.model.image = ml_collections.ConfigDict({"variant": "micro/8", "pool": "token", "act": "gelu"})
  c.model.text = ml_collections.ConfigDict(
    {
      "variant": "demo",
      "vocab_size": ml_collections.FieldReference(None, field_type=int),
      "context_length": ml_collections.FieldReference(None, field_type=int),
    }
  )
