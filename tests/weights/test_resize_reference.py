"""Position-embedding resizing (vlpt.weights.resize) by value against open_clip and HF transformers.

vlpt resamples the image grid with ``jax.image.resize(..., "bicubic", antialias=True)``: the
Keys cubic with a = -0.5, weights renormalized where the kernel leaves the grid, the kernel widened
by the scale factor when the grid shrinks. That is what open_clip's ``resize_pos_embed`` computes
(``F.interpolate(..., "bicubic", antialias=True)``), so both directions agree to float32 rounding.
(Until this test, vlpt did not antialias, and a shrunk grid differed from open_clip's by ~1 on a
white-noise table.)

HF's ``CLIPVisionEmbeddings.interpolate_pos_encoding`` (and SigLIP's, the same code without a
class token) calls ``F.interpolate(..., "bicubic", align_corners=False)`` without antialias:
torch's a = -0.75 cubic with edge replication. That is a different interpolant: on a white-noise
table it differs from vlpt by ~0.3 everywhere; on a smooth table (2-D sin-cos embeddings, values
in [-1, 1]), growing a grid, by at most 0.053, RMS 0.011 (grids 7 -> 9/10/14/15, 14 -> 16,
16 -> 24), asserted at 0.06 / 0.015; shrinking it (where HF does not low-pass filter) by at most
0.17, RMS 0.045 (14 -> 7; 10 -> 7, 14 -> 10, 16 -> 12: <= 0.10 / 0.02), asserted at 0.2 / 0.05.

Text positions: vlpt truncates, or extends by repeating the last learned position, so every
position it keeps carries its learned vector; open_clip's ``resize_text_pos_embed`` interpolates
linearly (every position changes), and HF has no text resizing. There is no reference to match:
tests/test_weights.py checks that a model with a longer context encodes short texts unchanged.
"""

import types

import numpy as np
import pytest

from vlpt.weights.resize import resize_image_positions

WIDTH = 32


def open_clip_resized(torch, open_clip, table, new_grid):
  """open_clip's own ``resize_pos_embed`` (the one its loaders call), on a state dict."""
  state = {"visual.positional_embedding": torch.from_numpy(table.copy())}
  model = types.SimpleNamespace(visual=types.SimpleNamespace(grid_size=(new_grid, new_grid)))
  open_clip.model.resize_pos_embed(state, model)
  return state["visual.positional_embedding"].numpy()


def hf_resized(torch, table, new_grid, patch=4):
  """HF ``CLIPVisionEmbeddings.interpolate_pos_encoding`` for a ``new_grid``-patch image."""
  from transformers import CLIPVisionConfig
  from transformers.models.clip.modeling_clip import CLIPVisionEmbeddings

  grid = int(round(np.sqrt(len(table) - 1)))
  config = CLIPVisionConfig(
    hidden_size=WIDTH,
    image_size=grid * patch,
    patch_size=patch,
    num_hidden_layers=1,
    num_attention_heads=1,
    intermediate_size=8,
  )
  embeddings = CLIPVisionEmbeddings(config)
  with torch.no_grad():
    embeddings.position_embedding.weight.copy_(torch.from_numpy(table))
    tokens = torch.zeros(1, 1 + new_grid * new_grid, WIDTH)
    side = new_grid * patch
    return embeddings.interpolate_pos_encoding(tokens, side, side)[0].numpy()


def random_table(grid, seed=0):
  return np.random.default_rng(seed).standard_normal((1 + grid * grid, WIDTH)).astype(np.float32)


@pytest.mark.parametrize("grid,new_grid", [(7, 10), (7, 15), (16, 24)])
def test_upsampling_equals_open_clip(torch_reference, grid, new_grid):
  """Measured max |difference| <= 2.2e-6 on a white-noise table (std 1); asserted 1e-5."""
  torch, open_clip = torch_reference
  table = random_table(grid)
  ours = resize_image_positions(table, new_grid, prefix=1)
  want = open_clip_resized(torch, open_clip, table, new_grid)
  assert ours.shape == want.shape == (1 + new_grid * new_grid, WIDTH)
  np.testing.assert_array_equal(ours[0], table[0])  # the class token is kept as it is
  np.testing.assert_allclose(ours, want, rtol=0, atol=1e-5)


def test_downsampling_equals_open_clip(torch_reference):
  torch, open_clip = torch_reference
  grid, new_grid = 14, 7
  table = random_table(grid)
  np.testing.assert_allclose(
    resize_image_positions(table, new_grid, prefix=1),
    open_clip_resized(torch, open_clip, table, new_grid),
    atol=1e-5,
  )


@pytest.mark.parametrize("grid,new_grid,max_diff,rms_diff", [(7, 10, 0.06, 0.015), (14, 7, 0.2, 0.05)])
def test_close_to_hf_interpolation_on_a_smooth_table(
  torch_reference, grid, new_grid, max_diff, rms_diff
):
  """Different kernels (a = -0.5 vs -0.75) and borders: close only where the table is smooth."""
  torch, open_clip = torch_reference
  from open_clip.pos_embed import get_2d_sincos_pos_embed

  table = get_2d_sincos_pos_embed(WIDTH, grid, cls_token=True).astype(np.float32)
  table[0] = random_table(0)[0]  # a class token that is not zero
  ours = resize_image_positions(table, new_grid, prefix=1)
  want = hf_resized(torch, table, new_grid)
  assert ours.shape == want.shape
  np.testing.assert_array_equal(ours[0], want[0])
  diff = ours - want
  assert np.max(np.abs(diff)) <= max_diff
  assert np.sqrt(np.mean(diff**2)) <= rms_diff
  # The bound is tight enough to tell the grid's axes apart (a transposed grid fails it).
  flipped = ours[1:].reshape(new_grid, new_grid, WIDTH).transpose(1, 0, 2).reshape(-1, WIDTH)
  assert np.max(np.abs(flipped - want[1:])) > 0.5
