"""big_vision SigLIP 2 ``.npz`` checkpoints (big_vision/configs/proj/image_text/README_siglip2.md)
into vlpt, against live transformers on CPU (fp32, random perturbed weights).

The npz files are written from small HF models by the inverse of transformers' own conversion
mappings: src/transformers/models/siglip2/convert_siglip2_to_hf.py (NaFlex: ``img/embedding/kernel``
a Dense ``[p*p*3, width]``, ``img/pos_embedding`` a ``[g, g, width]`` grid) and
src/transformers/models/siglip/convert_siglip_to_hf.py (fixed resolution: SigLIP's layout, a conv
kernel ``[p, p, 3, width]`` and ``[1, g*g, width]`` positions; SigLIP 2 only changes the
vocabulary to Gemma's 256k). Both scripts load the result strictly, so these keys are all there is.
"""

import numpy as np
import pytest

import vlpt
from vlpt.weights.big_vision import from_big_vision, to_big_vision

from references import big_vision_scanned, perturb_torch

TOL = 1e-5
PATCH, GRID, TEXT_LEN = 4, 4, 16
SIZES = ((30, 70), (90, 20), (48, 48), (9, 200))  # wide, tall, square, extreme


def _attention(sd, hf: str, bv: str, heads: int) -> dict[str, np.ndarray]:
  """HF q/k/v/out projections -> flax MultiHeadDotProductAttention ([W, H, D], [H, D, W])."""
  out = {}
  for theirs, ours in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
    w = sd[f"{hf}.{theirs}.weight"]
    out[f"{bv}/{ours}/kernel"] = w.T.reshape(w.shape[1], heads, -1)
    out[f"{bv}/{ours}/bias"] = sd[f"{hf}.{theirs}.bias"].reshape(heads, -1)
  w = sd[f"{hf}.out_proj.weight"]
  out[f"{bv}/out/kernel"] = w.T.reshape(heads, -1, w.shape[0])
  out[f"{bv}/out/bias"] = sd[f"{hf}.out_proj.bias"]
  return out


def _norm(sd, hf: str, bv: str) -> dict[str, np.ndarray]:
  return {f"{bv}/scale": sd[f"{hf}.weight"], f"{bv}/bias": sd[f"{hf}.bias"]}


def _dense(sd, hf: str, bv: str) -> dict[str, np.ndarray]:
  return {f"{bv}/kernel": sd[f"{hf}.weight"].T, f"{bv}/bias": sd[f"{hf}.bias"]}


def _encoder(sd, hf: str, bv: str, depth: int, heads: int) -> dict[str, np.ndarray]:
  out = {}
  for i in range(depth):
    h, b = f"{hf}.layers.{i}", f"{bv}/encoderblock_{i}"
    out.update(_norm(sd, f"{h}.layer_norm1", f"{b}/LayerNorm_0"))
    out.update(_norm(sd, f"{h}.layer_norm2", f"{b}/LayerNorm_1"))
    out.update(_attention(sd, f"{h}.self_attn", f"{b}/MultiHeadDotProductAttention_0", heads))
    out.update(_dense(sd, f"{h}.mlp.fc1", f"{b}/MlpBlock_0/Dense_0"))
    out.update(_dense(sd, f"{h}.mlp.fc2", f"{b}/MlpBlock_0/Dense_1"))
  return out


def _to_npz(ref, naflex: bool) -> dict[str, np.ndarray]:
  """An HF SiglipModel / Siglip2Model -> big_vision npz keys: the convert scripts run backwards."""
  sd = {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}
  vc, tc = ref.config.vision_config, ref.config.text_config
  w, tw, vh = vc.hidden_size, tc.hidden_size, vc.num_attention_heads
  v, t = "vision_model", "text_model"
  patch = sd[f"{v}.embeddings.patch_embedding.weight"]
  pos = sd[f"{v}.embeddings.position_embedding.weight"]
  if naflex:  # Linear (W, p*p*3) -> Dense [p*p*3, W]; positions (g*g, W) -> [g, g, W]
    g = int(np.sqrt(pos.shape[0]))
    img = {"img/embedding/kernel": patch.T, "img/pos_embedding": pos.reshape(g, g, w)}
  else:  # Conv2d (W, 3, p, p) -> [p, p, 3, W]; positions (N, W) -> [1, N, W]
    img = {"img/embedding/kernel": patch.transpose(2, 3, 1, 0), "img/pos_embedding": pos[None]}
  img["img/embedding/bias"] = sd[f"{v}.embeddings.patch_embedding.bias"]
  img.update(_encoder(sd, f"{v}.encoder", "img/Transformer", vc.num_hidden_layers, vh))
  img.update(_norm(sd, f"{v}.post_layernorm", "img/Transformer/encoder_norm"))
  head = f"{v}.head"
  img["img/MAPHead_0/probe"] = sd[f"{head}.probe"]
  qkv_w = np.split(sd[f"{head}.attention.in_proj_weight"], 3)
  qkv_b = np.split(sd[f"{head}.attention.in_proj_bias"], 3)
  mha = "img/MAPHead_0/MultiHeadDotProductAttention_0"
  for name, wt, bs in zip(("query", "key", "value"), qkv_w, qkv_b, strict=True):
    img[f"{mha}/{name}/kernel"] = wt.T.reshape(w, vh, -1)
    img[f"{mha}/{name}/bias"] = bs.reshape(vh, -1)
  out_w = sd[f"{head}.attention.out_proj.weight"]
  img[f"{mha}/out/kernel"] = out_w.T.reshape(vh, -1, w)
  img[f"{mha}/out/bias"] = sd[f"{head}.attention.out_proj.bias"]
  img.update(_norm(sd, f"{head}.layernorm", "img/MAPHead_0/LayerNorm_0"))
  img.update(_dense(sd, f"{head}.mlp.fc1", "img/MAPHead_0/MlpBlock_0/Dense_0"))
  img.update(_dense(sd, f"{head}.mlp.fc2", "img/MAPHead_0/MlpBlock_0/Dense_1"))
  txt = {
    "txt/Embed_0/embedding": sd[f"{t}.embeddings.token_embedding.weight"],
    "txt/pos_embedding": sd[f"{t}.embeddings.position_embedding.weight"][None],
    **_encoder(sd, f"{t}.encoder", "txt/Encoder_0", tc.num_hidden_layers, tc.num_attention_heads),
    **_norm(sd, f"{t}.final_layer_norm", "txt/Encoder_0/encoder_norm"),
    **_dense(sd, f"{t}.head", "txt/head"),
  }
  assert txt["txt/Embed_0/embedding"].shape[1] == tw
  flat = {**img, **txt, "t": sd["logit_scale"].reshape(1), "b": sd["logit_bias"].reshape(1)}
  used = {k for k in sd if not k.endswith("position_ids")}
  assert sum(a.size for a in flat.values()) == sum(sd[k].size for k in used)  # every tensor moved
  return {f"params/{k}": v for k, v in flat.items()}


def _text_embeddings(torch, ref, ids):
  with torch.no_grad():
    out = ref.get_text_features(input_ids=torch.as_tensor(ids, dtype=torch.long))
  return torch.nn.functional.normalize(out.pooler_output, dim=-1).numpy()


def _image_embeddings(torch, ref, inputs):
  with torch.no_grad():
    out = ref.get_image_features(**{k: torch.as_tensor(np.asarray(v)) for k, v in inputs.items()})
  return torch.nn.functional.normalize(out.pooler_output, dim=-1).numpy()


def _ids(vocab: int) -> np.ndarray:
  """Gemma-style rows (no BOS, EOS 1, <pad> 0 on the right) reaching the top of the vocabulary."""
  ids = np.random.RandomState(1).randint(3, vocab, (3, TEXT_LEN))
  ids[0, :2] = (vocab - 1, vocab - 2)
  for row, end in enumerate((TEXT_LEN // 2, TEXT_LEN - 1, 3)):
    ids[row, end] = 1
    ids[row, end + 1 :] = 0
  return ids


@pytest.fixture(scope="module")
def naflex_ref():
  from vlpt.reference import import_torch_reference

  torch, _ = import_torch_reference()
  import transformers

  tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
  torch.manual_seed(0)
  config = transformers.Siglip2Config(
    text_config={**tower, "vocab_size": 350, "max_position_embeddings": TEXT_LEN},
    vision_config={**tower, "num_patches": GRID * GRID, "patch_size": PATCH},
  )
  return perturb_torch(torch, transformers.Siglip2Model(config))


def test_naflex_npz_matches_transformers_siglip2(torch_reference, naflex_ref, tmp_path):
  """siglip2_b16_naflex.npz's layout: image embeddings at several aspect ratios and two patch
  budgets (the same Siglip2ImageProcessor output for both) and text embeddings within 1e-5."""
  torch, _ = torch_reference
  import transformers
  from PIL import Image

  npz = _to_npz(naflex_ref, naflex=True)
  assert npz["params/img/pos_embedding"].shape == (GRID, GRID, 32)
  np.savez(tmp_path / "plain.npz", **npz)
  np.savez(tmp_path / "scanned.npz", **big_vision_scanned(npz))
  rng = np.random.RandomState(0)
  images = [Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]
  ids = _ids(350)
  ref_t = _text_embeddings(torch, naflex_ref, ids)
  for name in ("plain.npz", "scanned.npz"):
    loaded = vlpt.load(str(tmp_path / name))
    image = loaded.bundle.model["image"]
    assert image["naflex"] and image["image_size"] == GRID * PATCH and image["pool"] == "map"
    assert loaded.preprocess.resize_mode == "naflex"
    assert loaded.preprocess.max_num_patches == GRID * GRID
    grids = set()
    for n in (GRID * GRID, 40):  # the grid's own budget, and more patches than positions
      inputs = transformers.Siglip2ImageProcessor(patch_size=PATCH, max_num_patches=n)(
        images, return_tensors="np"
      )
      grids |= {tuple(s) for s in np.asarray(inputs["spatial_shapes"]).tolist()}
      np.testing.assert_allclose(
        np.asarray(loaded.encode_image(dict(inputs))),
        _image_embeddings(torch, naflex_ref, inputs),
        atol=TOL,
      )
    assert len(grids) >= 6
    np.testing.assert_allclose(np.asarray(loaded.encode_text(ids)), ref_t, atol=TOL)
    assert loaded.logit_bias == pytest.approx(float(naflex_ref.logit_bias.detach().reshape(())))
    assert loaded.logit_scale == pytest.approx(float(naflex_ref.logit_scale.detach().exp().reshape(())))


def test_naflex_npz_round_trip_and_hf_export(torch_reference, naflex_ref, tmp_path):
  """to_big_vision writes a NaFlex tower back in naflex_vit.py's layout, and vlpt-convert turns
  the npz into an HF Siglip2Model directory that transformers loads with the same embeddings."""
  torch, _ = torch_reference
  import transformers

  from vlpt.cli.convert import main

  npz = _to_npz(naflex_ref, naflex=True)
  model, flat = from_big_vision(npz)
  back = to_big_vision(model, flat)
  assert sorted(back) == sorted(npz)
  for key, value in npz.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)
  np.savez(tmp_path / "naflex.npz", **npz)
  assert main([str(tmp_path / "naflex.npz"), str(tmp_path / "hf"), "--to", "hf"]) == 0
  hf = transformers.Siglip2Model.from_pretrained(str(tmp_path / "hf")).eval()
  inputs = transformers.Siglip2ImageProcessor.from_pretrained(str(tmp_path / "hf"))(
    [np.full((20, 50, 3), 128, np.uint8), np.arange(24 * 8 * 3, dtype=np.uint8).reshape(24, 8, 3)],
    return_tensors="np",
  )
  np.testing.assert_allclose(
    _image_embeddings(torch, hf, inputs), _image_embeddings(torch, naflex_ref, inputs), atol=TOL
  )


def test_fixed_resolution_npz_has_siglips_layout_with_a_256k_vocabulary(torch_reference, tmp_path):
  """siglip2_b16_256.npz & co.: SigLIP's layout (scanned, as the SigLIP 2 colab loads them) with
  Gemma's 256k vocabulary; the text width may differ from the image width (g-opt/16 pairs a
  1536-wide image tower with the So400m text tower, its head projecting to 1536)."""
  torch, _ = torch_reference
  import transformers

  vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
  text = dict(hidden_size=16, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2)
  torch.manual_seed(0)
  config = transformers.SiglipConfig(
    text_config={
      **text,
      "vocab_size": 256_000,
      "max_position_embeddings": TEXT_LEN,
      "projection_size": 32,
    },
    vision_config={**vision, "image_size": 16, "patch_size": 4},
  )
  ref = perturb_torch(torch, transformers.SiglipModel(config))
  npz = _to_npz(ref, naflex=False)
  assert npz["params/txt/Embed_0/embedding"].shape == (256_000, 16)
  assert npz["params/txt/head/kernel"].shape == (16, 32)
  np.savez(tmp_path / "siglip2.npz", **big_vision_scanned(npz))
  loaded = vlpt.load(str(tmp_path / "siglip2.npz"))
  model = loaded.bundle.model
  assert not model["image"].get("naflex") and model["text"]["vocab_size"] == 256_000
  assert model["embed_dim"] == 32 and model["text"]["width"] == 16
  assert loaded.preprocess.resize_mode == "squash" and loaded.preprocess.image_size == 16
  images = np.random.RandomState(0).uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32)
  with torch.no_grad():
    out = ref.get_image_features(pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2))
  ref_i = torch.nn.functional.normalize(out.pooler_output, dim=-1).numpy()
  np.testing.assert_allclose(np.asarray(loaded.encode_image(images)), ref_i, atol=TOL)
  ids = _ids(256_000)
  np.testing.assert_allclose(
    np.asarray(loaded.encode_text(ids)), _text_embeddings(torch, ref, ids), atol=TOL
  )
