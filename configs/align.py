"""ALIGN: a dual encoder trained on noisy alt-text with a label-smoothed softmax loss and LAMB.

Paper: Chao Jia, Yinfei Yang, Ye Xia, Yi-Ting Chen, Zarana Parekh, Hieu Pham, Quoc V. Le,
Yunhsuan Sung, Zhen Li, Tom Duerig. "Scaling Up Visual and Vision-Language Representation
Learning With Noisy Text Supervision", ICML 2021, arXiv:2102.05918.

Settings from the paper, Sec. 4.1 (BERT text encoder read at its [CLS] token, a fully connected
layer on the text side matching the image embedding, both towers trained from scratch) and
Sec. 5 (EfficientNet-L2 image encoder at 289x289, BERT-Large text encoder, wordpiece sequences of
at most 64 tokens, softmax temperature learnable and initialized to 1.0, label smoothing 0.1,
LAMB with weight decay 1e-5, learning rate warmed up linearly to 1e-3 in 10k steps then linearly
decayed to zero at 1.2M steps (~12 epochs), batch 16,384 on 1,024 TPUv3 cores). 1.2M steps x
16,384 = 19.7B samples seen of the 1.8B-pair dataset (Sec. 3).

vlpt has no EfficientNet: the image tower here is a ViT (B/16 or L/16) read by global average
pooling and WITHOUT a projection, so, as in the paper, the text tower's projection maps into the
image tower's feature space (embed_dim = ViT width). Images are 288 px (289 is not a multiple of
the patch); the paper's resize-to-346-then-random-289-crop with random horizontal flips is a
fixed-area random crop here (crop_scale 0.69 = (288/346)^2, square) plus flips. The text tower
is BERT-shaped (bidirectional, padding masked, [CLS] pooling) but uses vlpt's pre-LN blocks;
the paper's 100k wordpiece vocabulary was built from its own data, so a BERT vocab.txt is used
instead.

Reported (zero-shot; docs/recipes.md has the side-by-side table and the compute):
  ImageNet top-1, Table 4: 76.4.
  Retrieval R@1, Table 1: Flickr30k image->text 88.6, text->image 75.7; MSCOCO image->text 58.6,
  text->image 45.6.

Variants (comma-combinable): B16 (default: ViT-B/16 + BERT-Base-sized text), L16 (ViT-L/16 +
BERT-Large-sized text, the paper's text encoder); adamw (AdamW instead of LAMB; the paper found
LAMB better than Adam, so this is vlpt's alternative, not a paper setting); smoke (micro towers on
the built-in synthetic data, 20 steps).

Data and tokenizer: the ALIGN dataset is not public (COYO-700M is a public stand-in). Override
both placeholders, e.g.
  vlpt-train --config configs/align.py:B16 --workdir DIR \\
      --config.data.train.source='wds:/data/coyo/{00000..74751}.tar' \\
      --config.data.tokenizer.vocab_path=/models/bert-base-uncased/vocab.txt
Until then validation fails naming the missing shard or vocabulary.

  vlpt-train --config configs/align.py:smoke --workdir /tmp/align-smoke
"""

from __future__ import annotations

import ml_collections

from vlpt.config import (
  default_config,
  imagenet_zeroshot_eval,
  large_tower_defaults,
  recipe_variants,
  smoke_run,
)

PAPER = "arXiv:2102.05918"
DATA_PLACEHOLDER = "wds:/path/to/your/alt-text-shards/{00000..74751}.tar"
VOCAB_PLACEHOLDER = "/path/to/bert/vocab.txt"
BATCH = 16_384  # Sec. 5: 1,024 cores x 16 pairs
STEPS = 1_200_000  # Sec. 5

# ViT image towers (no projection: embed_dim = width) and BERT-shaped text towers
SIZES = {
  "B16": dict(image="B/16", width=768, text=dict(width=768, depth=12, heads=12, mlp_dim=3072)),
  "L16": dict(
    image="L/16",
    width=1024,  # BERT-Large: 24 layers, 1024 wide, 16 heads
    text=dict(width=1024, depth=24, heads=16, mlp_dim=4096),
  ),
}
VARIANTS = (*SIZES, "adamw", "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  size, variants = recipe_variants(arg, "align", SIZES, "B16", VARIANTS)

  c = default_config()
  c.seed = 0
  c.batch_size = BATCH
  c.total_steps = STEPS
  c.log_every_steps = 100
  c.eval_every_steps = 20_000
  c.checkpoint_every_steps = 10_000

  c.model.name = "clip"
  c.model.embed_dim = size["width"]
  c.model.image = ml_collections.ConfigDict(
    {"variant": size["image"], "pool": "gap", "class_token": False, "proj": False}
  )
  c.model.text = ml_collections.ConfigDict(
    {
      "variant": "B",
      **size["text"],
      "causal": False,
      "pool": "first",
      "mask_padding": True,
      "vocab_size": ml_collections.FieldReference(None, field_type=int),
      "context_length": ml_collections.FieldReference(None, field_type=int),
    }
  )
  c.model.init_logit_scale = 0.0  # Sec. 5: temperature initialized to 1.0, scale = 1 / 1.0
  c.model.dtype = "bfloat16"

  c.loss.name = "softmax"
  c.loss.label_smoothing = 0.1  # Sec. 5

  c.optimizer.name = "lamb"  # Sec. 5
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 10_000
  c.optimizer.schedule = "linear"  # linear decay to zero after the warmup
  c.optimizer.end_lr_factor = 0.0
  c.optimizer.weight_decay = 1e-5
  # not stated in the paper: optax.lamb's defaults
  c.optimizer.b1, c.optimizer.b2, c.optimizer.eps = 0.9, 0.999, 1e-6
  c.optimizer.grad_clip_norm = 0.0  # not stated in the paper

  c.data.image_size = 288
  c.data.normalization = "clip"
  c.data.train.source = DATA_PLACEHOLDER
  c.data.train.shuffle = True
  c.data.train.crop_scale = (0.69, 0.69)  # random 288 crop of a 346 resize (Sec. 5)
  c.data.train.crop_ratio = (1.0, 1.0)
  c.data.train.flip = True  # Sec. 5: random horizontal flips
  c.data.tokenizer = ml_collections.ConfigDict(
    {"name": "wordpiece", "vocab_path": VOCAB_PLACEHOLDER, "context_length": 64}
  )

  imagenet_zeroshot_eval(c)
  large_tower_defaults(c)  # ViT-L and larger: scanned blocks, remat (docs/scale.md)

  if "adamw" in variants:  # vlpt's alternative: CLIP's AdamW settings on ALIGN's schedule
    c.optimizer.name = "adamw"
    c.optimizer.lr = 5e-4
    c.optimizer.weight_decay = 0.2
    c.optimizer.b1, c.optimizer.b2, c.optimizer.eps = 0.9, 0.98, 1e-6
  if "smoke" in variants:
    _smoke(c)
  return c


def _smoke(c: ml_collections.ConfigDict) -> None:
  """Micro towers on the built-in synthetic data: the recipe's loss and optimizer, 20 steps."""
  smoke_run(c)  # 20 steps on the built-in data, 8 simulated devices
  c.model.embed_dim = 64  # = the micro ViT's width (no image projection)
  c.model.image.variant = "micro/8"
  c.model.text = ml_collections.ConfigDict(
    {
      "variant": "micro",
      "causal": False,
      "pool": "first",
      "mask_padding": True,
      "vocab_size": ml_collections.FieldReference(None, field_type=int),
      "context_length": ml_collections.FieldReference(None, field_type=int),
    }
  )
  c.optimizer.lr = 1e-3
  c.data.train.crop_scale = (0.9, 1.0)
  c.data.train.crop_ratio = (3 / 4, 4 / 3)
