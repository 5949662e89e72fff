"""SigLIP: language-image pre-training with the pairwise sigmoid loss.

Paper: Xiaohua Zhai, Basil Mustafa, Alexander Kolesnikov, Lucas Beyer. "Sigmoid Loss for Language
Image Pre-Training", ICCV 2023, arXiv:2303.15343.

Settings from the paper: Sec. 3.2 and Table 4 (learnable temperature t' and bias b initialized to
log 10 and -10), Sec. 4 (ScalingViT-Adafactor optimizer by default), Sec. 4.2 (WebLI English
pairs, 32k sentencepiece vocabulary trained on English C4), Sec. 4.6 (the Table 3 models: image
and text towers of the same size, B, L or So400m; 40B examples seen at batch 32k with 256 image
patches and 64 text tokens; other resolutions by 5B more examples at 100x smaller learning rate),
Sec. 4.7 (beta2 = 0.95 for stability), Appendix C (learning rate 0.001, weight decay 0.0001,
cosine schedule; AdamW gave very similar results, Table 7) and the model card (Appendix F:
embedding width 768 / 1024 / 1152 = the tower width). 40B / 32,768 = 1,220,703 steps. The paper
gives no warmup length for these runs: vlpt uses 10,000 steps (LiT's, Appendix C of
arXiv:2111.07991, same authors and codebase).

Reported (zero-shot; docs/recipes.md has the side-by-side table and the compute), Table 3:
  ImageNet top-1 / MSCOCO image->text R@1 / text->image R@1:
  B/16, 256 patches (256 px, what :B16 trains): 76.7 / 65.1 / 47.4
  B/16, 196 patches (224 px): 76.2 / 64.4 / 47.2
  L/16, 256 patches (256 px, what :L16 trains): 80.5 / 69.5 / 51.1
  So400m/14, 729 patches (384 px, after the extra 5B at 384 px; :So400m14 is the 224 px
  40B stage, for which Table 3 has no row): 83.2 / 70.2 / 52.0
  No Flickr30k numbers are reported.

Variants (comma-combinable): B16 (default), L16, So400m14; smoke (micro towers on the built-in
synthetic data, 20 steps).

Data and tokenizer: WebLI is not public. Override both placeholders, e.g.
  vlpt-train --config configs/siglip.py:B16 --workdir DIR \\
      --config.data.train.source='wds:/data/datacomp/{00000..12799}.tar' \\
      --config.data.tokenizer.model_path=/models/siglip-base-patch16-224/spiece.model
(the spiece.model of a released SigLIP checkpoint is this 32k English sentencepiece model).
Until then validation fails naming the missing shard or tokenizer file.

  vlpt-train --config configs/siglip.py:smoke --workdir /tmp/siglip-smoke
"""

from __future__ import annotations

import math

import ml_collections

from vlpt.config import (
  default_config,
  imagenet_zeroshot_eval,
  large_tower_defaults,
  recipe_variants,
  siglip_towers,
  smoke_run,
)

PAPER = "arXiv:2303.15343"
DATA_PLACEHOLDER = "wds:/path/to/your/image-text-shards/{00000..12799}.tar"
TOKENIZER_PLACEHOLDER = "/path/to/siglip/spiece.model"
BATCH = 32_768  # Sec. 4.6: 32k
SAMPLES_SEEN = 40_000_000_000  # Sec. 4.6

# same-size towers (Sec. 4.6, Appendix F); 256 image patches (Sec. 4.6)
SIZES = {
  "B16": dict(image="B/16", size=256, width=768, depth=12, heads=12, mlp_dim=3072),
  "L16": dict(image="L/16", size=256, width=1024, depth=24, heads=16, mlp_dim=4096),
  "So400m14": dict(image="So400m/14", size=224, width=1152, depth=27, heads=16, mlp_dim=4304),
}
VARIANTS = (*SIZES, "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  size, variants = recipe_variants(arg, "siglip", SIZES, "B16", VARIANTS)

  c = default_config()
  c.seed = 0
  c.batch_size = BATCH
  c.total_steps = SAMPLES_SEEN // BATCH  # 1,220,703
  c.log_every_steps = 100
  c.eval_every_steps = 20_000
  c.checkpoint_every_steps = 10_000

  c.model.name = "clip"
  c.model.embed_dim = size["width"]  # Appendix F: the embedding is the tower width
  dims = {k: size[k] for k in ("width", "depth", "heads", "mlp_dim")}
  image, text = siglip_towers(size["image"], **dims)
  c.model.image = ml_collections.ConfigDict(image)
  c.model.text = ml_collections.ConfigDict(text)
  c.model.init_logit_scale = math.log(10.0)  # Sec. 3.2: t' = log 10
  c.model.init_logit_bias = -10.0  # Sec. 3.2: b = -10
  c.model.dtype = "bfloat16"

  c.loss.name = "sigmoid"

  c.optimizer.name = "adafactor"  # Sec. 4: ScalingViT-Adafactor
  c.optimizer.lr = 1e-3  # Appendix C
  c.optimizer.weight_decay = 1e-4  # Appendix C
  c.optimizer.b1, c.optimizer.b2 = 0.9, 0.95  # Sec. 4.7: beta2 0.95
  c.optimizer.eps = 1e-30  # Adafactor's epsilon1 (Shazeer & Stern 2018, Alg. 4; big_vision's)
  c.optimizer.schedule = "cosine"  # Appendix C
  c.optimizer.warmup_steps = 10_000  # not stated in the paper (see the docstring)
  c.optimizer.grad_clip_norm = 1.0  # not stated in the paper

  c.data.image_size = size["size"]
  c.data.normalization = "siglip"
  c.data.interpolation = "bilinear"
  c.data.tokenizer = ml_collections.ConfigDict(
    {"name": "sentencepiece", "model_path": TOKENIZER_PLACEHOLDER, "context_length": 64}
  )
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
  c.model.embed_dim = 64  # = the micro towers' width
  image, text = siglip_towers("micro/8", variant="micro")
  c.model.image = ml_collections.ConfigDict(image)
  c.model.text = ml_collections.ConfigDict(text)
