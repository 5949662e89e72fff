"""CLIP: contrastive language-image pre-training from scratch with the softmax (InfoNCE) loss.

Paper: Alec Radford, Jong Wook Kim, Chris Hallacy, Aditya Ramesh, Gabriel Goh, Sandhini Agarwal,
Girish Sastry, Amanda Askell, Pamela Mishkin, Jack Clark, Gretchen Krueger, Ilya Sutskever.
"Learning Transferable Visual Models From Natural Language Supervision", ICML 2021,
arXiv:2103.00020.

Settings from the paper: Sec. 2.5 (32 epochs, Adam with decoupled weight decay on all weights
but gains and biases, cosine schedule, temperature initialized to 0.07 and clipped at 100,
batch 32,768, mixed precision), Table 18 (common hyperparameters: batch 32,768, vocabulary
49,408, 32 epochs, maximum temperature 100, weight decay 0.2, 2,000 warm-up iterations; Adam
beta2 0.98 and epsilon 1e-6 for ViTs) and Table 20 (per model: learning rate, embedding
dimension, resolution, tower sizes). 32 epochs of the 400M-pair WIT dataset = 12.8B samples seen
= 390,625 steps of 32,768.

Reported (zero-shot; docs/recipes.md has the side-by-side table and the compute):
  ImageNet top-1, Table 11: ViT-B/32 63.2, ViT-B/16 68.6, ViT-L/14 75.3, ViT-L/14@336px 76.2
  (76.2 is also Table 1).
  Zero-shot retrieval R@1 of the paper's CLIP (ViT-L/14@336px), Table 13: Flickr30k
  image->text 88.0, text->image 68.7; MSCOCO image->text 58.4, text->image 37.8.

Variants (comma-combinable): B32, B16 (default), L14 (Table 20 sizes); smoke (micro towers on the
built-in synthetic data, 20 steps, seconds on a CPU).

Data: WIT is not public. Point the run at your own image-text WebDataset shards (LAION-400M is
the usual stand-in), e.g.
  vlpt-train --config configs/clip.py:B16 --workdir DIR \\
      --config.data.train.source='wds:/data/laion400m/{00000..41455}.tar'
Until overridden, the placeholder pattern below fails validation naming the missing shard. The
ImageNet zero-shot evaluation reads TFDS imagenet2012 (prepare it as array_record once; set
config.data.tfds_data_dir); see docs/evaluation.md for COCO/Flickr30k retrieval sets.

  vlpt-train --config configs/clip.py:smoke --workdir /tmp/clip-smoke
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

PAPER = "arXiv:2103.00020"
DATA_PLACEHOLDER = "wds:/path/to/your/image-text-shards/{00000..41455}.tar"
SAMPLES_SEEN = 32 * 400_000_000  # 32 epochs of WIT (Sec. 2.5, Table 18)
BATCH = 32_768  # Table 18

# Table 20: learning rate, embedding dimension, resolution, ViT, text width (text: 12 layers)
SIZES = {
  "B32": dict(lr=5e-4, embed_dim=512, image="B/32", text="B"),
  "B16": dict(lr=5e-4, embed_dim=512, image="B/16", text="B"),
  "L14": dict(lr=4e-4, embed_dim=768, image="L/14", text="L"),  # text 768 wide, 12 heads
}
VARIANTS = (*SIZES, "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  size, variants = recipe_variants(arg, "clip", SIZES, "B16", VARIANTS)

  c = default_config()
  c.seed = 0
  c.batch_size = BATCH
  c.total_steps = SAMPLES_SEEN // BATCH  # 390,625
  c.log_every_steps = 100
  c.eval_every_steps = 10_000
  c.checkpoint_every_steps = 5_000

  c.model.name = "clip"
  c.model.embed_dim = size["embed_dim"]
  c.model.image = ml_collections.ConfigDict({"variant": size["image"], "pool": "token", "act": "gelu"})
  c.model.text.variant = size["text"]  # causal, pooled at the end-of-text token (Sec. 2.4)
  c.model.init_logit_scale = math.log(1 / 0.07)  # Sec. 2.5: temperature initialized to 0.07
  c.model.max_logit_scale = math.log(100)  # Table 18: maximum temperature 100
  c.model.dtype = "bfloat16"  # Sec. 2.5: mixed precision

  c.loss.name = "softmax"

  c.optimizer.name = "adamw"
  c.optimizer.lr = size["lr"]
  c.optimizer.warmup_steps = 2_000  # Table 18
  c.optimizer.schedule = "cosine"  # Sec. 2.5
  c.optimizer.b1, c.optimizer.b2, c.optimizer.eps = 0.9, 0.98, 1e-6  # Table 18 (ViT)
  c.optimizer.weight_decay = 0.2  # Table 18
  # "applied to all weights that are not gains or biases" (Sec. 2.5); rank < 2 is never decayed
  c.optimizer.no_decay = ("logit_scale", "ln_", "bias")
  c.optimizer.grad_clip_norm = 0.0  # the paper clips no gradients

  c.data.image_size = 224
  c.data.normalization = "clip"
  c.data.tokenizer = ml_collections.ConfigDict({"name": "clip_bpe", "context_length": 77})
  c.data.train.source = DATA_PLACEHOLDER
  c.data.train.shuffle = True

  imagenet_zeroshot_eval(c)
  large_tower_defaults(c)  # ViT-L and larger: scanned blocks, remat (docs/scale.md)

  if "smoke" in variants:
    _smoke(c)
  return c


def _smoke(c: ml_collections.ConfigDict) -> None:
  """Micro towers on the built-in synthetic data: the recipe's loss and optimizer, 20 steps."""
  smoke_run(c)  # 20 steps on the built-in data, 8 simulated devices
  c.model.embed_dim = 32
  c.model.image = ml_collections.ConfigDict({"variant": "micro/8", "pool": "token", "act": "gelu"})
  c.model.text.variant = "micro"
  c.optimizer.lr = 1e-3
  c.optimizer.grad_clip_norm = 1.0
