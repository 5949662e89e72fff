"""CoCa (Yu et al. 2022, Eq. 3): the contrastive loss between the pooled image embedding and the
text CLS embedding, plus ``config.loss.caption_weight`` times the decoder's captioning loss
(teacher-forced token cross-entropy over the image tokens, :mod:`vlpt.losses.captioning`)."""

from __future__ import annotations

from typing import Any

from vlpt.losses.captioning import caption_loss
from vlpt.train.objectives.contrastive import ContrastiveObjective


class CocaObjective(ContrastiveObjective):
  extra_terms = ("contrastive_loss", "caption_loss")

  @classmethod
  def applies(cls, config: Any) -> bool:
    return config.model.name == "coca"

  @classmethod
  def check_config(cls, config: Any) -> None:
    super().check_config(config)
    if config.accumulation_steps > 1:
      raise ValueError(
        "CoCa with config.accumulation_steps > 1 is not supported; raise the "
        "number of devices or lower config.batch_size"
      )
    if config.loss.matryoshka_dims:
      raise ValueError("CoCa with config.loss.matryoshka_dims is not supported")

  def loss(self, params, batch, aux=None):
    model = self.model(params)
    image_emb, image_tokens = model.image_features(
      self.normalized(batch["image"]), dropout_rng=self.dropout_rng(batch.get("keys"))
    )
    text_emb, logits, labels = model.caption_logits(batch["text"], image_tokens)
    contrastive, metrics = self.sharded_loss(image_emb, text_emb, *self.logit_params(params))
    caption = caption_loss(logits, labels, pad_id=model.pad_id)
    total = contrastive + self.config.loss.caption_weight * caption
    return total, {**metrics, "contrastive_loss": contrastive, "caption_loss": caption}
