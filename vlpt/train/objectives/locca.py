"""SigLIP 2's decoder loss (Tschannen et al. 2025, arXiv:2502.14786, Sec. 2.2): the contrastive
(sigmoid) loss of the two towers plus ``config.loss.decoder_weight`` times the LocCa decoder's
token cross-entropy (Wan et al. 2024, arXiv:2403.19596, Sec. 3.2), teacher forced on the image
tower's patch tokens before pooling.

Each example trains captioning; with ``config.data.train.boxes`` each of its box slots also trains
automatic referring expression (ARef: phrase -> box) and grounded captioning (GCap: box ->
phrase). The sequences and the box encoding are :mod:`vlpt.models.locca`'s; the loss reads only
the predicted part of each sequence, and ``config.loss.parallel_fraction`` of the sequences are
predicted in parallel (CapPa). The decoder term is the sum of the three tasks' token means.
``config.loss.decoder_chunk_length`` > 0 computes the output head and cross-entropy that many
positions at a time (:func:`vlpt.losses.captioning.chunked_token_nll`: the same numbers, a
fraction of the logits' memory; SigLIP 2's 256k vocabulary needs it at pod batch sizes).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from vlpt.losses.captioning import chunked_token_nll, masked_mean
from vlpt.models.locca import TASKS, decoder_inputs, parallel_rows, task_sequences
from vlpt.train.objectives.contrastive import ContrastiveObjective


class LoccaObjective(ContrastiveObjective):
  extra_terms = ("contrastive_loss", "decoder_loss", "caption_loss", "aref_loss", "gcap_loss")

  @classmethod
  def applies(cls, config: Any) -> bool:
    return config.model.name == "locca"

  @classmethod
  def check_config(cls, config: Any) -> None:
    super().check_config(config)
    loss = config.loss
    if config.accumulation_steps > 1:
      raise ValueError(
        "LocCa with config.accumulation_steps > 1 is not supported; lower config.batch_size"
      )
    if loss.matryoshka_dims:
      raise ValueError("LocCa with config.loss.matryoshka_dims is not supported")
    if not 0.0 <= float(loss.parallel_fraction) <= 1.0:
      raise ValueError(f"config.loss.parallel_fraction must be in [0, 1], got {loss.parallel_fraction}")
    if float(loss.decoder_weight) < 0:
      raise ValueError(f"config.loss.decoder_weight must be >= 0, got {loss.decoder_weight}")
    if int(loss.decoder_chunk_length) < 0:
      raise ValueError(
        f"config.loss.decoder_chunk_length must be >= 0 (0: all positions at once), "
        f"got {loss.decoder_chunk_length}"
      )

  def __init__(self, setup: Any):
    super().__init__(setup)
    tok = setup.tokenizer
    # what captions and phrases lose before they are laid into decoder sequences
    self.drop = tuple(i for i in (tok.pad_id, tok.sot_id, tok.eot_id) if i is not None)
    self.pad = int(tok.pad_id)
    self.fraction = float(self.config.loss.parallel_fraction)
    self.weight = float(self.config.loss.decoder_weight)
    self.chunk = int(self.config.loss.decoder_chunk_length)

  def decoder_loss(self, model: Any, batch: dict, image_tokens: Any) -> dict[str, Any]:
    """The decoder's terms on ``batch`` (captions, and boxes when the batch has them)."""
    boxes = {k: batch[k] for k in ("boxes", "box_labels", "box_phrases")} if "boxes" in batch else {}
    seqs = task_sequences(model.decoder, batch["text"], drop=self.drop, pad=self.pad, **boxes)
    rows = seqs["ids"].shape[0]
    parallel = jnp.asarray(parallel_rows(rows, self.fraction))
    inputs, labels, mask = decoder_inputs(model.decoder, seqs, parallel)
    per_example = rows // image_tokens.shape[0]
    context = jnp.repeat(image_tokens, per_example, axis=0)  # example-major, as the sequences
    hidden = model.decoder.hidden(inputs, context, parallel=parallel)
    nll = chunked_token_nll(hidden, model.decoder.logits, labels, self.chunk)
    terms = {
      f"{name}_loss": masked_mean(nll, mask & (seqs["task"] == i)[:, None])
      for i, name in enumerate(TASKS)
    }
    terms["decoder_loss"] = sum(terms.values())
    return terms

  def loss(self, params, batch, aux=None):
    model = self.model(params)
    image_emb, image_tokens = model.image_features(
      self.normalized(batch["image"]), dropout_rng=self.dropout_rng(batch.get("keys"))
    )
    text_emb = model.encode_text(batch["text"])
    contrastive, metrics = self.sharded_loss(image_emb, text_emb, *self.logit_params(params))
    terms = self.decoder_loss(model, batch, image_tokens)
    total = contrastive + self.weight * terms["decoder_loss"]
    return total, {**metrics, "contrastive_loss": contrastive, **terms}
