"""Pretrained weights in and out: parity with open_clip and HF transformers on random weights.

Every reference model gets random perturbations on all parameters (so no tensor is a trivial
0/1 init that could hide a layout bug). Embeddings and logits must match within 1e-5 in fp32,
and exports must load back into the reference library and match again.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

import vlpt
from vlpt.errors import WeightsError
from vlpt.models import build_model
from vlpt.train.initialization import read_checkpoint as read_bundle
from vlpt.weights.big_vision import from_big_vision, to_big_vision
from vlpt.weights.formats import write_bundle
from vlpt.weights.hf import from_hf
from vlpt.weights.io import write_safetensors
from vlpt.weights.open_clip import from_open_clip, to_open_clip
from vlpt.weights.state import assign_params, flat_params

from references import big_vision_scanned

TOL = 1e-5
IMAGES = np.random.RandomState(0).randn(3, 32, 32, 3).astype(np.float32)


def _ids(vocab, length, eot, n=3, seed=1):
  ids = np.random.RandomState(seed).randint(1, eot - 1, (n, length))
  ids[:, 0] = eot - 1
  for row, end in enumerate((length // 2, length - 1, 3)[:n]):
    ids[row, end] = eot
    ids[row, end + 1 :] = 0
  return ids


def _perturb(torch, module, seed=0):
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      # some reference tensors are left as torch.empty (e.g. CoCa's decoder projection)
      p.copy_(torch.where(torch.isfinite(p) & (p.abs() < 5), p, torch.zeros_like(p)))
      p.add_(torch.randn(p.shape, generator=gen) * 0.05)
  return module.eval()


def _sd(module):
  return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _vlpt(model_cfg, flat, **overrides):
  model = build_model({**model_cfg, **overrides}, nnx.Rngs(0))
  assign_params(model, flat)
  return model


def _nchw(torch, x):
  return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


OC_CLIP = dict(
  embed_dim=24,
  quick_gelu=True,
  vision_cfg=dict(image_size=32, layers=2, width=128, patch_size=8),
  text_cfg=dict(context_length=16, vocab_size=100, width=32, heads=2, layers=2),
)
OC_COCA = dict(
  embed_dim=32,
  vision_cfg=dict(
    image_size=32,
    layers=2,
    width=128,
    patch_size=8,
    attentional_pool=True,
    attn_pooler_heads=4,
    attn_pooler_queries=9,
    output_tokens=True,
  ),
  text_cfg=dict(
    context_length=12, vocab_size=100, width=32, heads=2, layers=2, embed_cls=True, output_tokens=True
  ),
  multimodal_cfg=dict(context_length=12, vocab_size=100, width=32, heads=2, layers=2),
)


@pytest.fixture(scope="module")
def oc_clip(torch_reference):
  torch, open_clip = torch_reference
  torch.manual_seed(0)
  return _perturb(torch, open_clip.model.CLIP(**OC_CLIP))


def _oc_embeddings(torch, model, ids):
  with torch.no_grad():
    return (
      model.encode_image(_nchw(torch, IMAGES), normalize=True).numpy(),
      model.encode_text(torch.from_numpy(ids), normalize=True).numpy(),
    )


@pytest.mark.parametrize("scan", [False, True])
def test_open_clip_clip_parity_and_round_trip(torch_reference, oc_clip, scan):
  torch, _ = torch_reference
  sd = _sd(oc_clip)
  model_cfg, flat = from_open_clip(sd, OC_CLIP)
  assert model_cfg["image"]["act"] == "quick_gelu"
  model = _vlpt(
    model_cfg, flat, image={**model_cfg["image"], "scan": scan}, text={**model_cfg["text"], "scan": scan}
  )
  ids = _ids(100, 16, 99)
  ref_i, ref_t = _oc_embeddings(torch, oc_clip, ids)
  np.testing.assert_allclose(model.encode_image(IMAGES), ref_i, atol=TOL)
  np.testing.assert_allclose(model.encode_text(ids), ref_t, atol=TOL)
  # export back: the same tensors under the same names
  _, sd2 = to_open_clip(model_cfg, flat_params(model))
  assert set(sd2) == set(sd)
  for key in sd:
    np.testing.assert_array_equal(sd2[key], sd[key], err_msg=key)


def test_open_clip_directory_load_and_export_loads_in_open_clip(torch_reference, oc_clip, tmp_path):
  torch, open_clip = torch_reference
  src = tmp_path / "oc"
  src.mkdir()
  write_safetensors(str(src / "open_clip_model.safetensors"), _sd(oc_clip))
  (src / "open_clip_config.json").write_text(json.dumps({"model_cfg": OC_CLIP}))
  loaded = vlpt.load(str(src))
  ids = _ids(100, 16, 99)
  ref_i, ref_t = _oc_embeddings(torch, oc_clip, ids)
  np.testing.assert_allclose(loaded.encode_image(IMAGES), ref_i, atol=TOL)
  np.testing.assert_allclose(loaded.encode_text(ids), ref_t, atol=TOL)
  assert loaded.logit_scale == pytest.approx(float(oc_clip.logit_scale.detach().exp()), rel=1e-6)
  assert loaded.logit_bias is None
  # vlpt export -> open_clip export -> open_clip's own loader
  loaded.save(str(tmp_path / "vlpt"))
  vlpt.load(str(tmp_path / "vlpt")).save(str(tmp_path / "back"), to="open_clip")
  back = open_clip.create_model("local-dir:" + str(tmp_path / "back")).eval()
  got_i, got_t = _oc_embeddings(torch, back, ids)
  np.testing.assert_allclose(got_i, ref_i, atol=TOL)
  np.testing.assert_allclose(got_t, ref_t, atol=TOL)


def test_open_clip_preprocess_matches(torch_reference, tmp_path):
  _, open_clip = torch_reference
  from PIL import Image

  from vlpt.data.preprocess import Preprocess

  rng = np.random.RandomState(3)
  from open_clip.transform import image_transform

  transform = image_transform(32, is_train=False)
  for size in [(50, 40), (40, 90), (33, 32)]:
    img = Image.fromarray(rng.randint(0, 255, (*size[::-1], 3), np.uint8))
    ref = transform(img).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(Preprocess(image_size=32)(img), ref, atol=1e-5)


def test_coca_parity_including_caption_logits(torch_reference):
  torch, _ = torch_reference
  from open_clip.coca_model import CoCa

  torch.manual_seed(0)
  ref = _perturb(torch, CoCa(**OC_COCA))
  sd = _sd(ref)
  model_cfg, flat = from_open_clip(sd, {**OC_COCA, "custom_text": True})
  assert model_cfg["name"] == "coca"
  model = _vlpt(model_cfg, flat)
  ids = _ids(100, 12, 99)
  with torch.no_grad():
    out = ref(_nchw(torch, IMAGES), torch.from_numpy(ids))
  ours = model(IMAGES, ids)
  np.testing.assert_allclose(ours["image_emb"], out["image_features"].numpy(), atol=TOL)
  np.testing.assert_allclose(ours["text_emb"], out["text_features"].numpy(), atol=TOL)
  np.testing.assert_allclose(ours["logits"], out["logits"].numpy(), atol=TOL)
  np.testing.assert_array_equal(ours["labels"], out["labels"].numpy())
  _, sd2 = to_open_clip(model_cfg, flat_params(model))
  assert set(sd2) == set(sd)
  for key in sd:
    np.testing.assert_array_equal(sd2[key], sd[key], err_msg=key)


def _hf_models(torch_reference):
  torch, _ = torch_reference
  import transformers

  tc = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    vocab_size=100,
    max_position_embeddings=16,
  )
  vc = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=32,
    patch_size=8,
  )
  clip_cfg = transformers.CLIPConfig(
    text_config={**tc, "eos_token_id": 99}, vision_config=vc, projection_dim=24
  )
  siglip_cfg = transformers.SiglipConfig(text_config=tc, vision_config=vc)
  torch.manual_seed(0)
  return {"clip": (transformers.CLIPModel, clip_cfg), "siglip": (transformers.SiglipModel, siglip_cfg)}


def _hf_outputs(torch, ref, ids):
  with torch.no_grad():
    pix = _nchw(torch, IMAGES)
    img = ref.get_image_features(pixel_values=pix)
    txt = ref.get_text_features(input_ids=torch.from_numpy(ids))
    img, txt = getattr(img, "pooler_output", img), getattr(txt, "pooler_output", txt)
    logits = ref(pixel_values=pix, input_ids=torch.from_numpy(ids)).logits_per_image
  norm = torch.nn.functional.normalize
  return norm(img, dim=-1).numpy(), norm(txt, dim=-1).numpy(), logits.numpy()


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_hf_parity_and_export_round_trip(torch_reference, kind, tmp_path):
  torch, _ = torch_reference
  cls, cfg = _hf_models(torch_reference)[kind]
  ref = _perturb(torch, cls(cfg))
  ref.save_pretrained(str(tmp_path / "hf"))
  loaded = vlpt.load(str(tmp_path / "hf"))
  ids = _ids(100, 16, 99)
  ref_i, ref_t, ref_logits = _hf_outputs(torch, ref, ids)
  img, txt = np.asarray(loaded.encode_image(IMAGES)), np.asarray(loaded.encode_text(ids))
  np.testing.assert_allclose(img, ref_i, atol=TOL)
  np.testing.assert_allclose(txt, ref_t, atol=TOL)
  logits = img @ txt.T * loaded.logit_scale + (loaded.logit_bias or 0.0)
  np.testing.assert_allclose(logits, ref_logits, atol=TOL * 10, rtol=1e-6)
  if kind == "siglip":
    assert loaded.logit_bias == pytest.approx(float(ref.logit_bias.detach().reshape(())))
  loaded.save(str(tmp_path / "out"), to="hf")
  back = cls.from_pretrained(str(tmp_path / "out")).eval()
  got = _hf_outputs(torch, back, ids)
  for a, b in zip(got, (ref_i, ref_t, ref_logits)):
    np.testing.assert_allclose(a, b, atol=TOL * 10)
  if kind == "clip":  # the CLIP vocabulary travels as HF files and is read back from them
    from vlpt.data.tokenizers import ClipBpeTokenizer, HFTokenizer

    again = vlpt.load(str(tmp_path / "out"))
    assert isinstance(again.tokenizer, HFTokenizer)
    texts = ["a photo of a cat", "Ünïcode 🙂 & more"]
    np.testing.assert_array_equal(again.tokenizer(texts), ClipBpeTokenizer(16)(texts))


def test_big_vision_npz_plain_and_scanned(torch_reference, tmp_path):
  torch, _ = torch_reference
  cls, cfg = _hf_models(torch_reference)["siglip"]
  ref = _perturb(torch, cls(cfg))
  model_cfg, flat = from_hf(_sd(ref), cfg.to_dict())
  bv_model, _ = from_big_vision(
    to_big_vision(dict(model_cfg, image=dict(model_cfg["image"]), text=dict(model_cfg["text"])), flat)
  )
  npz = to_big_vision(bv_model, flat)
  np.savez(tmp_path / "plain.npz", **npz)
  scanned = big_vision_scanned(npz)
  np.savez(tmp_path / "scanned.npz", **scanned)
  ids = _ids(100, 16, 99)
  ref_i, ref_t, _ = _hf_outputs(torch, ref, ids)
  for name in ("plain.npz", "scanned.npz"):
    loaded = vlpt.load(str(tmp_path / name))
    np.testing.assert_allclose(loaded.encode_image(IMAGES), ref_i, atol=TOL)
    np.testing.assert_allclose(loaded.encode_text(ids), ref_t, atol=TOL)
    assert loaded.preprocess.mean == (0.5, 0.5, 0.5)


def test_position_embedding_resizing(torch_reference, oc_clip, tmp_path):
  src = tmp_path / "oc"
  src.mkdir()
  write_safetensors(str(src / "open_clip_model.safetensors"), _sd(oc_clip))
  (src / "open_clip_config.json").write_text(json.dumps({"model_cfg": OC_CLIP}))
  same = vlpt.load(str(src), image_size=32, context_length=16)
  bigger = vlpt.load(str(src), image_size=48, context_length=20)
  assert bigger.bundle.params["image.positional_embedding"].shape == (1 + 6 * 6, 128)
  assert bigger.encode_image(np.zeros((2, 48, 48, 3), np.float32)).shape == (2, 24)
  assert bigger.preprocess.image_size == 48
  ids = _ids(100, 16, 99)
  np.testing.assert_allclose(bigger.encode_text(ids), same.encode_text(ids), atol=1e-6)
  # a grid resized to itself is unchanged
  np.testing.assert_array_equal(
    same.bundle.params["image.positional_embedding"], _sd(oc_clip)["visual.positional_embedding"]
  )


def test_bad_checkpoints_are_refused_with_names(torch_reference, oc_clip, tmp_path):
  torch, _ = torch_reference
  sd = _sd(oc_clip)
  missing = {k: v for k, v in sd.items() if k != "visual.proj"}
  with pytest.raises(WeightsError, match="visual.proj"):
    from_open_clip(missing, OC_CLIP)
  with pytest.raises(WeightsError, match="extra.weight"):
    from_open_clip({**sd, "extra.weight": np.zeros(3)}, OC_CLIP)
  # a model whose shapes differ from the checkpoint's
  model_cfg, flat = from_open_clip(sd, OC_CLIP)
  model = build_model(dict(model_cfg, embed_dim=16), nnx.Rngs(0))
  with pytest.raises(WeightsError, match="shape mismatch"):
    assign_params(model, flat)
  # pickled code is never executed
  src = tmp_path / "evil"
  src.mkdir()
  (src / "open_clip_config.json").write_text(json.dumps({"model_cfg": OC_CLIP}))
  torch.save({"state": Exploit()}, str(src / "open_clip_pytorch_model.bin"))
  with pytest.raises(WeightsError, match="never unpickles"):
    vlpt.load(str(src))
  assert not os.path.exists(tmp_path / "pwned")


class Exploit:
  def __reduce__(self):
    return (os.system, (f"touch {os.getcwd()}/pwned",))


def test_export_refusals_leave_nothing_behind(torch_reference, tmp_path):
  torch, _ = torch_reference
  cls, cfg = _hf_models(torch_reference)["siglip"]
  _perturb(torch, cls(cfg)).save_pretrained(str(tmp_path / "hf"))
  bundle = read_bundle(str(tmp_path / "hf"))
  with pytest.raises(WeightsError, match="open_clip's native towers cannot express"):
    write_bundle(bundle, str(tmp_path / "oc"), "open_clip")
  assert not os.path.exists(tmp_path / "oc") and not os.path.exists(tmp_path / "oc.partial")
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "keep.txt").write_text("mine")
  with pytest.raises(WeightsError, match="not empty"):
    write_bundle(bundle, str(tmp_path / "full"), "vlpt")
  assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_vlpt_convert_cli(torch_reference, tmp_path, cli_env):
  torch, _ = torch_reference
  cls, cfg = _hf_models(torch_reference)["clip"]
  ref = _perturb(torch, cls(cfg))
  ref.save_pretrained(str(tmp_path / "hf"))
  run = lambda *a: subprocess.run(
    [sys.executable, "-m", "vlpt.cli.convert", *a],
    env=cli_env,  # noqa: E731
    capture_output=True,
    text=True,
    timeout=300,
  )
  out = run(str(tmp_path / "hf"), str(tmp_path / "v"))
  assert out.returncode == 0, out.stderr
  assert "hf -> vlpt" in out.stdout
  out = run(str(tmp_path / "v"), str(tmp_path / "oc"), "--to", "open_clip")
  assert out.returncode == 0, out.stderr
  out = run(str(tmp_path / "oc"), "--print-config")
  printed = json.loads(out.stdout)
  assert printed["model"]["image"]["width"] == 32 and printed["data"]["image_size"] == 32
  out = run(str(tmp_path / "nowhere"), str(tmp_path / "x"))
  assert out.returncode == 2 and "no such checkpoint" in out.stderr
  ids = _ids(100, 16, 99)
  ref_i, ref_t, _ = _hf_outputs(torch, ref, ids)
  final = vlpt.load(str(tmp_path / "oc"))
  np.testing.assert_allclose(final.encode_image(IMAGES), ref_i, atol=TOL)
  np.testing.assert_allclose(final.encode_text(ids), ref_t, atol=TOL)


def test_scanned_and_looped_towers_agree():
  cfg = dict(
    name="clip",
    embed_dim=32,
    image=dict(variant="micro/8", image_size=32),
    text=dict(variant="micro", vocab_size=50, context_length=8),
  )
  looped = build_model(cfg, nnx.Rngs(0))
  flat = flat_params(looped)
  scanned = build_model(
    dict(
      cfg,
      image=dict(cfg["image"], scan=True, remat="full"),
      text=dict(cfg["text"], scan=True, remat="dots"),
    ),
    nnx.Rngs(1),
  )
  assign_params(scanned, flat)
  ids = _ids(50, 8, 49)
  images = IMAGES
  np.testing.assert_allclose(scanned.encode_image(images), looped.encode_image(images), atol=1e-6)
  np.testing.assert_allclose(scanned.encode_text(ids), looped.encode_text(ids), atol=1e-6)

  # gradients too (remat changes what is stored, not what is computed)
  def loss(m):
    return (m.encode_image(images) * m.encode_text(ids)[: len(images)]).sum()

  g1 = flat_params_of_grads(nnx.grad(loss)(looped), looped)
  g2 = flat_params_of_grads(nnx.grad(loss)(scanned), scanned)
  for key in g1:
    np.testing.assert_allclose(g2[key], g1[key], atol=1e-5, err_msg=key)


def flat_params_of_grads(grads, model):
  clone = nnx.clone(model)
  nnx.update(clone, grads)
  return flat_params(clone)


@pytest.mark.slow
def test_full_size_vit_b32_open_clip_parity(torch_reference, tmp_path):
  torch, open_clip = torch_reference
  cfg = open_clip.get_model_config("ViT-B-32")
  torch.manual_seed(0)
  ref = _perturb(torch, open_clip.model.CLIP(**cfg), seed=1)
  model_cfg, flat = from_open_clip(_sd(ref), cfg)
  model = _vlpt(model_cfg, flat)
  images = np.random.RandomState(0).randn(2, 224, 224, 3).astype(np.float32)
  ids = open_clip.tokenize(["a photo of a dog", "a diagram"]).numpy()
  with torch.no_grad():
    ref_i = ref.encode_image(_nchw(torch, images), normalize=True).numpy()
    ref_t = ref.encode_text(torch.from_numpy(ids), normalize=True).numpy()
  np.testing.assert_allclose(model.encode_image(images), ref_i, atol=TOL)
  np.testing.assert_allclose(model.encode_text(ids), ref_t, atol=TOL)
  _, sd2 = to_open_clip(model_cfg, flat_params(model))
  sd = _sd(ref)
  assert set(sd2) == set(sd) and all(np.array_equal(sd2[k], sd[k]) for k in sd)


@pytest.mark.slow
def test_full_size_siglip_b16_hf_parity(torch_reference, tmp_path):
  torch, _ = torch_reference
  import transformers

  torch.manual_seed(0)
  ref = _perturb(torch, transformers.SiglipModel(transformers.SiglipConfig()), seed=2)
  ref.save_pretrained(str(tmp_path / "hf"))
  loaded = vlpt.load(str(tmp_path / "hf"))
  images = np.random.RandomState(0).randn(2, 224, 224, 3).astype(np.float32)
  ids = np.random.RandomState(1).randint(2, 32000, (2, 64))
  with torch.no_grad():
    pix = _nchw(torch, images)
    out = ref(pixel_values=pix, input_ids=torch.from_numpy(ids))
  norm = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
  img, txt = np.asarray(loaded.encode_image(images)), np.asarray(loaded.encode_text(ids))
  np.testing.assert_allclose(img, norm(out.image_embeds.numpy()), atol=TOL)
  np.testing.assert_allclose(txt, norm(out.text_embeds.numpy()), atol=TOL)
  logits = img @ txt.T * loaded.logit_scale + loaded.logit_bias
  np.testing.assert_allclose(logits, out.logits_per_image.numpy(), atol=1e-4)
