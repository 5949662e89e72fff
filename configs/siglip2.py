"""SigLIP 2: the sigmoid loss with a LocCa decoder, self-distillation and masked prediction.

Paper: Michael Tschannen, Alexey Gritsenko, Xiao Wang, et al. "SigLIP 2: Multilingual
Vision-Language Encoders with Improved Semantic Understanding, Localization, and Dense Features",
arXiv:2502.14786 (2025).

Settings from the paper, Sec. 2.1: SigLIP's architecture (same-size image and text towers, MAP
head; a g-sized image tower is paired with an So400m-sized text tower), patch size 16 at 256 px
(256 image tokens) for all sizes, text length 64, the multilingual Gemma tokenizer (256k
vocabulary) on lower-cased text, batch 32k, a cosine schedule with 20k warmup steps, 40B examples
seen (= 1,220,703 steps); Adam with learning rate 1e-3 and decoupled weight decay 1e-4, gradients
clipped to norm 1 (vlpt's reading of Sec. 2.1; the optimizer is AdamW here). Sec. 2.2: the LocCa
decoder (captioning, referring-expression prediction, grounded captioning) on the un-pooled image
tokens (vlpt's reading: the text tower's shape with half its layers, as wide as the image tower;
captioning only unless the data carries boxes, config.data.train.boxes). Sec. 2.3:
self-distillation and masked prediction added for the last 20% of training. Sec. 2.4: NaFlex
(native aspect ratio, several sequence lengths).

Reported (zero-shot; fixed-resolution models, the paper's Table 1 as the released model cards
quote it): ImageNet-1k top-1 / COCO text->image R@1 / image->text R@1:
  B/16 at 256 px: 79.1 / 53.2 / 69.7        B/16 at 224 px: 78.2 / 52.1 / 68.9
  So400m/16 at 256 px: 83.4 / - / -         So400m/16 at 512 px: 84.3 / 56.0 / 71.3
(other rows of Table 1 are not recorded here).

Variants (comma-combinable): B16 (default), L16, So400m16, So400m14, g16 (g-opt image tower,
So400m text tower); naflex (the NaFlex image tower: native aspect ratio, token budgets); demo
(a tiny model on the built-in data with every SigLIP 2 term that vlpt implements, and the dense
per-patch probe), and with demo: sigmoid (the same run with only the sigmoid loss), locca
(sigmoid + LocCa); demo,sigmoid,naflex (the demo's NaFlex run: token-budget batches of mixed
aspect ratios, evaluated at three sequence lengths); smoke (micro towers on the built-in data,
20 steps, as every recipe).

Data and tokenizer: WebLI is not public. Override both placeholders, e.g.
  vlpt-train --config configs/siglip2.py:B16 --workdir DIR \\
      --config.data.train.source='wds:/data/datacomp/{00000..12799}.tar' \\
      --config.data.tokenizer.model_path=/models/siglip2-base-patch16-256/tokenizer.model
(the Gemma tokenizer.model of a released SigLIP 2 checkpoint).

  vlpt-train --config configs/siglip2.py:demo --workdir /tmp/siglip2-demo
  vlpt-train --config configs/siglip2.py:demo,sigmoid --workdir /tmp/siglip2-demo-sigmoid
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

PAPER = "arXiv:2502.14786"
DATA_PLACEHOLDER = "wds:/path/to/your/image-text-shards/{00000..12799}.tar"
TOKENIZER_PLACEHOLDER = "/path/to/siglip2/tokenizer.model"
BATCH = 32_768  # Sec. 2.1
SAMPLES_SEEN = 40_000_000_000  # Sec. 2.1
GEMMA_VOCAB = 256_000  # Sec. 2.1: the Gemma tokenizer
TEXT_LENGTH = 64  # Sec. 2.1

# Sec. 2.1: patch 16 at 256 px for every size; the g-sized image tower has an So400m text tower
# (the embedding is the image tower's width: the text tower's head projects to it, so g's
# So400m text tower maps 1152 -> 1536, as the released giant-opt checkpoints do)
SIZES = {
  "B16": dict(image="B/16", text="B", width=768, size=256),
  "L16": dict(image="L/16", text="L", width=1024, size=256),
  "So400m16": dict(image="So400m/16", text="So400m", width=1152, size=256),
  "So400m14": dict(image="So400m/14", text="So400m", width=1152, size=224),  # released /14: 224 px
  "g16": dict(image="g-opt/16", text="So400m", width=1536, size=256),
}
# SigLIP's text towers have the same-size image tower's dimensions (not CLIP's narrower text sizes)
TEXT_TOWERS = {
  "B": dict(width=768, depth=12, heads=12, mlp_dim=3072),
  "L": dict(width=1024, depth=24, heads=16, mlp_dim=4096),
  "So400m": dict(width=1152, depth=27, heads=16, mlp_dim=4304),
}
DEMO_ABLATIONS = ("sigmoid", "locca")  # with demo: the runs of the ablation table
VARIANTS = (*SIZES, "naflex", "demo", *DEMO_ABLATIONS, "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  size, variants = recipe_variants(arg, "siglip2", SIZES, "B16", VARIANTS)
  if variants & {"sigmoid", "locca"} and "demo" not in variants:
    raise ValueError("siglip2 variants sigmoid and locca are ablations of the demo: add 'demo'")
  if {"sigmoid", "locca"} <= variants:
    raise ValueError("choose one of the siglip2 demo ablations: sigmoid or locca")
  if {"demo", "naflex"} <= variants and "sigmoid" not in variants:
    raise ValueError(
      "the NaFlex demo trains the sigmoid loss only (vlpt's LocCa decoder reads fixed-size images): "
      "use configs/siglip2.py:demo,sigmoid,naflex"
    )

  c = default_config()
  c.seed = 0
  c.batch_size = BATCH
  c.total_steps = SAMPLES_SEEN // BATCH  # 1,220,703
  c.log_every_steps = 100
  c.eval_every_steps = 20_000
  c.checkpoint_every_steps = 10_000

  c.model.name = "clip"
  image, text = siglip_towers(size["image"], variant=size["text"], **TEXT_TOWERS[size["text"]])
  c.model.image = ml_collections.ConfigDict(image)
  c.model.text = ml_collections.ConfigDict(text)
  c.model.text.vocab_size = GEMMA_VOCAB  # the table's real size even before the tokenizer exists
  c.model.embed_dim = size["width"]  # the image tower's width
  c.model.init_logit_scale = math.log(10.0)  # SigLIP's t' = log 10
  c.model.init_logit_bias = -10.0  # SigLIP's b = -10
  c.model.dtype = "bfloat16"

  c.loss.name = "sigmoid"

  c.optimizer.name = "adamw"  # Sec. 2.1: Adam with decoupled weight decay
  c.optimizer.lr = 1e-3
  c.optimizer.weight_decay = 1e-4
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 20_000  # Sec. 2.1
  c.optimizer.grad_clip_norm = 1.0

  c.data.image_size = size["size"]
  c.data.normalization = "siglip"
  c.data.interpolation = "bilinear"
  c.data.tokenizer = ml_collections.ConfigDict(
    {
      "name": "sentencepiece",
      "model_path": TOKENIZER_PLACEHOLDER,
      "context_length": TEXT_LENGTH,
      "lower_case": True,  # Sec. 2.1: lower-cased text
    }
  )
  c.data.train.source = DATA_PLACEHOLDER
  c.data.train.shuffle = True

  imagenet_zeroshot_eval(c)
  # Sec. 2.2: the text tower's shape with half its layers (vlpt's reading), the image tower's width
  dims = TEXT_TOWERS[size["text"]]
  _locca(
    c,
    {
      "variant": size["text"],
      "depth": dims["depth"] // 2,
      "heads": dims["heads"],
      "mlp_dim": dims["mlp_dim"],
    },
  )
  _self_distillation(c)
  large_tower_defaults(c)  # ViT-L and larger: scanned blocks, remat (docs/scale.md)

  if "demo" in variants:
    _demo(c, ablation=next(iter(variants & {"sigmoid", "locca"}), None))
  if "smoke" in variants:
    _smoke(c)
  if "naflex" in variants:
    _naflex(c, small="demo" in variants or "smoke" in variants)
  return c


def _self_distillation(c: ml_collections.ConfigDict, **head) -> None:
  """Sec. 2.3: self-distillation (SILC) and masked prediction (TIPS) against the EMA teacher from
  80% of training. The paper's: the two terms, the EMA teacher, the start. Weights 1 and 0.25:
  vlpt's reading, not confirmed against the paper's text here (docs/losses.md). vlpt's choices:
  the EMA decay, 8 local views of (0.05, 0.4) of the area at 96 px (SILC's / DINO's for 224 px;
  98 px for /14), DINO's head (65536 prototypes), temperatures 0.04 / 0.1, mask ratio 0.5."""
  patch = int(c.model.image.variant.split("/")[1])
  head = {"prototypes": 65536, "hidden": 2048, "bottleneck": 256, "layers": 3, **head}
  c.model.image.ssl_head = ml_collections.ConfigDict(head)
  c.ema.decay = 0.999
  sd = c.self_distillation
  sd.weight, sd.masked_weight, sd.start_fraction = 1.0, 0.25, 0.8
  sd.local_crops, sd.local_size = 8, patch * round(96 / patch)


def _no_self_distillation(c: ml_collections.ConfigDict) -> None:
  c.self_distillation.weight = c.self_distillation.masked_weight = 0.0
  c.ema.decay = 0.0
  if "ssl_head" in c.model.image:
    del c.model.image["ssl_head"]


def _smoke(c: ml_collections.ConfigDict) -> None:
  """Micro towers on the built-in synthetic data: the recipe's loss and optimizer, 20 steps
  (without the self-distillation stage: :demo runs it)."""
  smoke_run(c)  # 20 steps on the built-in data, 8 simulated devices
  c.model.embed_dim = 64  # = the micro towers' width
  image, text = siglip_towers("micro/8", variant="micro")
  c.model.image = ml_collections.ConfigDict(image)
  c.model.text = ml_collections.ConfigDict(text)
  c.model.decoder = ml_collections.ConfigDict({"variant": "micro", "num_bins": 32})
  _no_self_distillation(c)


PAPER_NAFLEX_LENGTHS = (128, 256, 576, 784, 1024)  # Sec. 2.4.2


def _naflex(c: ml_collections.ConfigDict, small: bool) -> None:
  """Sec. 2.4: the image tower takes patch sequences of images at their native aspect ratio;
  training draws a sequence length per step and fills a token budget (the fixed-resolution
  batch's patches: 32k x 256); the demo's micro/4 tower at 32 px has 4x4, 6x6 and 8x8 grids, and
  is evaluated at all three sequence lengths (16, 24 and 32 px held-out images). Without the
  self-distillation stage (vlpt's local views are fixed-size crops, not NaFlex batches) and
  without the LocCa decoder (vlpt's reads fixed-size images)."""
  _no_self_distillation(c)
  _no_locca(c)
  c.model.image.naflex = True
  patch = int(c.model.image.variant.split("/")[1])
  full = (c.data.image_size // patch) ** 2
  c.data.train.naflex.lengths = (16, 36, 64) if small else PAPER_NAFLEX_LENGTHS
  c.data.train.naflex.token_budget = c.batch_size * full
  if small:  # half the fixed demo's tokens a step: its host work (up to 512 resizes) stays small
    c.data.train.naflex.token_budget //= 2
    heldout = c.eval.datasets.heldout
    for size in (16, 24):
      c.eval.datasets[f"heldout_{size}px"] = ml_collections.ConfigDict({**heldout, "image_size": size})


def _demo(c: ml_collections.ConfigDict, ablation: str | None) -> None:
  """A tiny SigLIP 2 on the built-in data (8 simulated devices), evaluated on held-out zero-shot,
  retrieval and the dense per-patch probe; ``ablation`` 'sigmoid' keeps only the sigmoid loss."""
  c.host_device_count = 8
  c.total_steps = 800  # minutes on 2 CPU cores; the ablation runs share it
  c.batch_size = 256
  c.log_every_steps = 50
  c.eval_every_steps = 400
  c.checkpoint_every_steps = 400
  c.model.dtype = "float32"
  image, text = siglip_towers("micro/8", variant="micro")
  image["variant"] = "micro/4"  # 8 x 8 patches of 4 px at 32 px: a grid fine enough for objects
  c.model.image = ml_collections.ConfigDict(image)
  c.model.text = ml_collections.ConfigDict(text)
  c.model.embed_dim = 64
  if ablation is None:  # Sec. 2.3, small: 4 local views of 16 px (4 x 4 patches), 256 prototypes
    _self_distillation(c, prototypes=256, hidden=128, bottleneck=32)
    c.ema.decay = 0.99  # averages over ~100 steps: the teacher of the last 20% (160 of 800)
    c.self_distillation.local_crops, c.self_distillation.local_size = 4, 16
  else:
    _no_self_distillation(c)
  c.optimizer.lr = 2e-3
  c.optimizer.warmup_steps = 50
  c.optimizer.weight_decay = 1e-4
  c.data.image_size = 32
  c.data.tokenizer = ml_collections.ConfigDict({"name": "word", "context_length": 16})
  c.data.train.source = "synthetic"
  c.data.train.boxes = ablation != "sigmoid"  # the objects' boxes, for LocCa's localization tasks
  c.eval.batch_size = 256
  c.eval.datasets = ml_collections.ConfigDict(
    {
      "heldout": {
        "source": "synthetic",
        "split": "eval",
        "num_examples": 1024,
        "tasks": ("zeroshot", "retrieval", "dense_probe"),
      }
    }
  )
  if ablation == "sigmoid":
    _no_locca(c)
  else:  # the image tower's width (64); the coordinate bins are finer than the 8 x 8 patch grid
    _locca(c, {"variant": "micro", "num_bins": 32})
    c.loss.decoder_chunk_length = 0  # a 128-row vocabulary: nothing to save
    # its greedy captions of the held-out images are scored against the shuffled baseline
    c.eval.datasets.heldout.tasks = (*c.eval.datasets.heldout.tasks, "captioning")


def _locca(c: ml_collections.ConfigDict, decoder: dict) -> None:
  """Sec. 2.2: a LocCa decoder on the un-pooled patch tokens, as wide as the image tower
  (captioning; ARef and GCap where the data has boxes: ``config.data.train.boxes``; half the
  sequences predicted in parallel), weight 1 beside the sigmoid loss. Its head and cross-entropy
  run 16 positions at a time: the Gemma vocabulary's logits of a whole sequence would be
  gigabytes per chip (docs/models.md)."""
  c.model.name = "locca"
  c.model.decoder = ml_collections.ConfigDict(decoder)
  c.loss.decoder_weight = 1.0
  c.loss.parallel_fraction = 0.5
  c.loss.decoder_chunk_length = 16


def _no_locca(c: ml_collections.ConfigDict) -> None:
  c.model.name = "clip"
  c.model.decoder = ml_collections.ConfigDict()
  c.loss.decoder_chunk_length = 0
