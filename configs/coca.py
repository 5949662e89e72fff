"""CoCa: contrastive captioners, a contrastive loss plus a captioning loss over a shared encoder.

Paper: Jiahui Yu, Zirui Wang, Vijay Vasudevan, Legg Yeung, Mojtaba Seyedhosseini, Yonghui Wu.
"CoCa: Contrastive Captioners are Image-Text Foundation Models", 2022, arXiv:2205.01917.

Settings from the paper: Table 1 (size variants: CoCa-Base image encoder 12 layers, MLP 3072;
CoCa-Large 24 layers, MLP 4096; text decoder n_uni = n_multi = 12 layers; hidden 768 / 1024,
12 / 16 heads), Sec. 3.2 (288x288 images with 18x18 patches = 256 image tokens, following ALIGN;
attentional poolers with 256 queries for the captioning loss and 1 for the contrastive loss; the
text embedding is a [CLS] token appended at the end of the unimodal decoder) and Sec. 4.1 (JFT-3B
label texts and ALIGN alt-texts, half a batch each; batch 65,536; 500k steps; caption loss weight
2.0 and contrastive weight 1.0; trainable temperature initialized to 0.07; Adafactor with
beta1 0.9, beta2 0.999 and decoupled weight decay 0.01; learning rate warmed up over the first 2%
of steps to 8e-4 then decayed linearly; a 64k sentencepiece vocabulary; one further epoch at
576x576, not part of this config). 500k x 65,536 = 32.8B samples seen.

vlpt's CoCa follows open_clip's layout: the unimodal decoder is the causal text tower (with the
appended CLS token) and the multimodal decoder is config.model.decoder. Deviations: CLIP's BPE
tokenizer (77 tokens) instead of the paper's 64k sentencepiece model; the pooler's head count is
not given in the paper (8 here); weight decay follows the AdamW convention (multiplied by the
learning rate), the paper does not say which convention its "ratio" uses.

Reported (zero-shot; docs/recipes.md has the side-by-side table and the compute):
  ImageNet top-1, Table 4: CoCa-Base 82.6, CoCa-Large 84.8, CoCa (1B image encoder) 86.3.
  Retrieval R@1, Table 3 (Flickr30k image->text, text->image; MSCOCO image->text, text->image):
  CoCa-Base 89.8, 76.8, 63.8, 47.5; CoCa-Large 91.4, 79.0, 65.4, 50.1; CoCa 92.5, 80.4, 66.3, 51.2.

Variants (comma-combinable): base (default), large (Table 1); smoke (micro towers on the
built-in synthetic data, 20 steps).

Data: JFT-3B and the ALIGN data are not public. Override the placeholder, e.g.
  vlpt-train --config configs/coca.py:base --workdir DIR \\
      --config.data.train.source='wds:/data/laion2b/{000000..231349}.tar'
(or set config.data.train.mixture to two sources weighted 0.5 / 0.5, as the paper's half-and-half
batches). Until then validation fails naming the missing shard.

  vlpt-train --config configs/coca.py:smoke --workdir /tmp/coca-smoke
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

PAPER = "arXiv:2205.01917"
DATA_PLACEHOLDER = "wds:/path/to/your/image-text-shards/{000000..231349}.tar"
BATCH = 65_536  # Sec. 4.1
STEPS = 500_000  # Sec. 4.1

# Table 1: image encoder, unimodal / multimodal decoder halves (12 + 12 layers), hidden, heads
SIZES = {
  "base": dict(image="B/18", image_depth=12, image_mlp=3072, width=768, heads=12, text_mlp=3072),
  "large": dict(image="L/18", image_depth=24, image_mlp=4096, width=1024, heads=16, text_mlp=4096),
}
VARIANTS = (*SIZES, "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  size, variants = recipe_variants(arg, "coca", SIZES, "base", VARIANTS)

  c = default_config()
  c.seed = 0
  c.batch_size = BATCH
  c.total_steps = STEPS
  c.log_every_steps = 100
  c.eval_every_steps = 20_000
  c.checkpoint_every_steps = 5_000

  c.model.name = "coca"
  c.model.embed_dim = size["width"]  # = text and decoder width (open_clip layout)
  c.model.image = ml_collections.ConfigDict(
    {
      "variant": size["image"],
      "depth": size["image_depth"],
      "mlp_dim": size["image_mlp"],
      "pool": "coca",
      "pooler_queries": 257,  # 256 + 1
      "pooler_heads": 8,
    }
  )
  text = dict(width=size["width"], depth=12, heads=size["heads"], mlp_dim=size["text_mlp"])
  c.model.text = ml_collections.ConfigDict(
    {
      "variant": "B",
      **text,
      "vocab_size": ml_collections.FieldReference(None, field_type=int),
      "context_length": ml_collections.FieldReference(None, field_type=int),
    }
  )
  c.model.decoder = ml_collections.ConfigDict({"variant": "B", **text})
  c.loss.caption_weight = 2.0  # Sec. 4.1 (contrastive weight 1.0)
  c.model.init_logit_scale = math.log(1 / 0.07)  # Sec. 4.1
  c.model.dtype = "bfloat16"

  c.loss.name = "softmax"

  c.optimizer.name = "adafactor"  # Sec. 4.1
  c.optimizer.lr = 8e-4
  c.optimizer.warmup_steps = STEPS // 50  # the first 2% of steps
  c.optimizer.schedule = "linear"
  c.optimizer.end_lr_factor = 0.0
  c.optimizer.b1, c.optimizer.b2 = 0.9, 0.999
  c.optimizer.eps = 1e-30  # Adafactor's epsilon1 (Shazeer & Stern 2018, Alg. 4; big_vision's)
  c.optimizer.weight_decay = 0.01
  c.optimizer.grad_clip_norm = 0.0  # not stated in the paper

  c.data.image_size = 288
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
  """Micro towers on the built-in synthetic data: both losses and the recipe's optimizer."""
  smoke_run(c)  # 20 steps on the built-in data, 8 simulated devices
  c.model.embed_dim = 64
  c.model.image = ml_collections.ConfigDict(
    {"variant": "micro/8", "pool": "coca", "pooler_queries": 17, "pooler_heads": 4}
  )
  c.model.text = ml_collections.ConfigDict(
    {
      "variant": "micro",
      "vocab_size": ml_collections.FieldReference(None, field_type=int),
      "context_length": ml_collections.FieldReference(None, field_type=int),
    }
  )
  c.model.decoder = ml_collections.ConfigDict({"variant": "micro"})
  c.optimizer.lr = 1e-3
