"""SigLIP 2 NaFlex (Tschannen et al. 2025, arXiv 2502.14786): HF ``Siglip2Model`` directories in and
out of vlpt, against live transformers on CPU (fp32, random perturbed weights).

Images of several aspect ratios at two ``max_num_patches`` go through transformers'
Siglip2ImageProcessor; both models get the same processor output and must agree to 1e-5. The
tokenizer is a small Gemma-shaped BPE (byte fallback, ``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2) built
offline with the ``tokenizers`` library.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vlpt
from vlpt.models.vit import resize_positions

from references import perturb_torch

TOL = 1e-5
PATCH, GRID, TEXT_LEN = 4, 4, 64
# (height, width): wide, tall, square, extreme; each gives its own patch grid
SIZES = ((30, 70), (90, 20), (48, 48), (9, 200))
CORPUS = [
  f"A Photo of a {c} {s}."
  for c in ("Red", "green", "BLUE", "yellow")
  for s in ("circle", "Square", "cross")
] * 20 + ["Ünïcode straße émoji 🙂 Words"] * 5
TEXTS = ["A Photo of a RED circle.", "a photo of a red circle.", "Ünïcode 🙂 " * 3, "x " * 100]


def _gemma_like_tokenizer(directory, template: str) -> None:
  """tokenizer.json shaped like Gemma's (spaces as ▁, BPE with byte fallback) + its config."""
  from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers

  tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
  tok.normalizer = normalizers.Replace(" ", "▁")
  tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
  specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [f"<0x{i:02X}>" for i in range(256)]
  tok.train_from_iterator(
    CORPUS, trainers.BpeTrainer(vocab_size=340, special_tokens=specials, show_progress=False)
  )
  ids = {"<bos>": 2, "<eos>": 1}
  tok.post_processor = processors.TemplateProcessing(
    single=template, special_tokens=[(t, i) for t, i in ids.items() if t in template]
  )
  tok.save(str(directory / "tokenizer.json"))
  config = {
    "tokenizer_class": "GemmaTokenizer",  # as google/siglip2-*: transformers maps it to Siglip2Tokenizer
    "add_bos_token": False,
    "add_eos_token": True,
    "padding_side": "right",
    **{f"{k}_token": f"<{k}>" for k in ("pad", "eos", "bos", "unk", "mask")},
  }
  (directory / "tokenizer_config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def siglip2_dir(tmp_path_factory):
  """A small random perturbed HF Siglip2Model directory with processor and tokenizer files."""
  from vlpt.reference import import_torch_reference

  torch, _ = import_torch_reference()
  import transformers

  text = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    vocab_size=350,
    max_position_embeddings=TEXT_LEN,
  )
  vision = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_patches=GRID * GRID,
    patch_size=PATCH,
  )
  torch.manual_seed(0)
  ref = perturb_torch(
    torch, transformers.Siglip2Model(transformers.Siglip2Config(text_config=text, vision_config=vision))
  )
  path = tmp_path_factory.mktemp("siglip2") / "hf"
  ref.save_pretrained(str(path))
  transformers.Siglip2ImageProcessor(patch_size=PATCH, max_num_patches=GRID * GRID).save_pretrained(
    str(path)
  )
  _gemma_like_tokenizer(path, "$A <eos>")
  return path, ref


def _images():
  rng = np.random.RandomState(0)
  from PIL import Image

  return [Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]


def _hf_image_embeddings(torch, ref, inputs):
  with torch.no_grad():
    out = ref.get_image_features(**{k: torch.as_tensor(np.asarray(v)) for k, v in inputs.items()})
  return torch.nn.functional.normalize(out.pooler_output, dim=-1).numpy()


def _hf_text_embeddings(torch, ref, ids):
  with torch.no_grad():
    out = ref.get_text_features(input_ids=torch.as_tensor(np.asarray(ids), dtype=torch.long))
  return torch.nn.functional.normalize(out.pooler_output, dim=-1).numpy()


def test_image_embeddings_match_transformers(torch_reference, siglip2_dir):
  torch, _ = torch_reference
  import transformers

  path, ref = siglip2_dir
  loaded = vlpt.load(str(path))
  images = _images()
  grids = set()
  for n in (GRID * GRID, 40):  # the model's own budget, and more patches than positions
    inputs = transformers.Siglip2ImageProcessor(patch_size=PATCH, max_num_patches=n)(
      images, return_tensors="np"
    )
    grids |= {tuple(s) for s in np.asarray(inputs["spatial_shapes"]).tolist()}
    ours = np.asarray(loaded.encode_image(dict(inputs)))
    np.testing.assert_allclose(ours, _hf_image_embeddings(torch, ref, inputs), atol=TOL)
  assert len(grids) >= 6  # several aspect ratios at each budget, so positions are truly resized


def test_preprocess_gives_the_processors_patch_grid(torch_reference, siglip2_dir):
  import transformers

  path, _ = siglip2_dir
  loaded = vlpt.load(str(path))
  assert loaded.preprocess.resize_mode == "naflex"
  for n in (GRID * GRID, 40):
    processor = transformers.Siglip2ImageProcessor(patch_size=PATCH, max_num_patches=n)
    for image in _images():
      ours = loaded.preprocess(image, max_num_patches=n)
      theirs = processor(image, return_tensors="np")
      assert ours["pixel_values"].shape == (1, n, PATCH * PATCH * 3)
      np.testing.assert_array_equal(ours["spatial_shapes"], theirs["spatial_shapes"])
      np.testing.assert_array_equal(ours["pixel_attention_mask"], theirs["pixel_attention_mask"])
      np.testing.assert_allclose(ours["pixel_values"], theirs["pixel_values"], atol=2e-2)
  default = loaded.preprocess(_images()[0])  # the directory's max_num_patches
  assert default["pixel_values"].shape[1] == GRID * GRID
  batch = loaded.preprocess.batch(_images(), max_num_patches=40)
  assert batch["pixel_values"].shape == (len(SIZES), 40, PATCH * PATCH * 3)
  assert loaded.encode_image(batch).shape == (len(SIZES), 32)


def test_text_ids_and_embeddings_match_transformers(torch_reference, siglip2_dir):
  torch, _ = torch_reference
  from transformers import AutoTokenizer

  path, ref = siglip2_dir
  loaded = vlpt.load(str(path))
  ids = loaded.tokenizer(TEXTS)
  hf = AutoTokenizer.from_pretrained(str(path))
  assert type(hf).__name__ == "Siglip2Tokenizer"
  theirs = hf(TEXTS, padding="max_length", max_length=TEXT_LEN, truncation=True)["input_ids"]
  np.testing.assert_array_equal(ids, np.asarray(theirs))
  assert ids.shape == (len(TEXTS), TEXT_LEN)
  np.testing.assert_array_equal(ids[0], ids[1])  # lower-cased, as SigLIP 2 trains
  assert ids[0, 0] != 2 and 1 in ids[0] and ids[0, -1] == 0  # no BOS, EOS, then <pad> = 0
  assert ids[3, -1] == 1  # truncation keeps EOS last
  np.testing.assert_allclose(
    np.asarray(loaded.encode_text(ids)), _hf_text_embeddings(torch, ref, ids), atol=TOL
  )
  assert loaded.logit_bias == pytest.approx(float(ref.logit_bias.detach().reshape(())))
  assert loaded.logit_scale == pytest.approx(float(ref.logit_scale.detach().exp().reshape(())))


def test_tokenizer_config_flags_decide_the_special_tokens(tmp_path):
  """Gemma's own tokenizer.json prepends <bos>; SigLIP 2's tokenizer_config.json asks for no BOS
  and an EOS, which is what the model was trained with (and what vlpt's export writes out)."""
  from vlpt.data.tokenizers import build_tokenizer
  from vlpt.weights.formats import _gemma_tokenizer

  _gemma_like_tokenizer(tmp_path, "<bos> $A")
  ids = build_tokenizer(_gemma_tokenizer(str(tmp_path), 8))(["Red circle"])
  assert ids[0, 0] != 2 and list(ids[0]).count(1) == 1 and ids[0, -1] == 0


def test_fixed_resolution_siglip2_reads_its_gemma_tokenizer(torch_reference, tmp_path):
  """SigLIP 2 at a fixed resolution is an HF SiglipModel directory with Gemma's tokenizer files:
  its text runs as trained (lower-cased, EOS, <pad> 0, not SigLIP's pad_token_id 1), embeddings
  equal transformers' for the same ids, and an HF export keeps the tokenizer."""
  torch, _ = torch_reference
  import transformers
  from transformers import AutoTokenizer

  tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
  torch.manual_seed(0)
  config = transformers.SiglipConfig(
    text_config={**tower, "vocab_size": 350, "max_position_embeddings": 16},
    vision_config={**tower, "image_size": 16, "patch_size": 8},
  )
  ref = perturb_torch(torch, transformers.SiglipModel(config))
  ref.save_pretrained(str(tmp_path / "hf"))
  _gemma_like_tokenizer(tmp_path / "hf", "<bos> $A")
  loaded = vlpt.load(str(tmp_path / "hf"))
  ids = loaded.tokenizer(TEXTS)
  np.testing.assert_array_equal(ids[0], ids[1])
  assert ids.shape == (len(TEXTS), 16) and ids[0, 0] != 2 and ids[0, -1] == 0 and ids[3, -1] == 1
  np.testing.assert_allclose(
    np.asarray(loaded.encode_text(ids)), _hf_text_embeddings(torch, ref, ids), atol=TOL
  )
  loaded.save(str(tmp_path / "out"), to="hf")
  np.testing.assert_array_equal(vlpt.load(str(tmp_path / "out")).tokenizer(TEXTS), ids)
  lower = [t.lower() for t in TEXTS]  # (transformers' GemmaTokenizer itself does not lower-case)
  theirs = AutoTokenizer.from_pretrained(str(tmp_path / "out"))(
    lower, padding="max_length", max_length=16, truncation=True
  )["input_ids"]
  np.testing.assert_array_equal(np.asarray(theirs), ids)


def test_convert_export_reloads_in_transformers(torch_reference, siglip2_dir, tmp_path):
  torch, _ = torch_reference
  import transformers
  from transformers import AutoTokenizer

  from vlpt.cli.convert import main

  path, ref = siglip2_dir
  assert main([str(path), str(tmp_path / "v")]) == 0  # -> vlpt export
  assert main([str(tmp_path / "v"), str(tmp_path / "hf"), "--to", "hf"]) == 0
  config = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert config["model_type"] == "siglip2" and config["vision_config"]["num_patches"] == GRID * GRID
  back = transformers.Siglip2Model.from_pretrained(str(tmp_path / "hf")).eval()
  processor = transformers.Siglip2ImageProcessor.from_pretrained(str(tmp_path / "hf"))
  assert processor.max_num_patches == GRID * GRID and processor.patch_size == PATCH
  inputs = processor(_images(), return_tensors="np")
  np.testing.assert_allclose(
    _hf_image_embeddings(torch, back, inputs), _hf_image_embeddings(torch, ref, inputs), atol=TOL
  )
  loaded = vlpt.load(str(tmp_path / "hf"))
  ids = loaded.tokenizer(TEXTS)
  hf_ids = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))(
    TEXTS, padding="max_length", max_length=TEXT_LEN, truncation=True
  )["input_ids"]
  np.testing.assert_array_equal(ids, np.asarray(hf_ids))
  np.testing.assert_allclose(
    _hf_text_embeddings(torch, back, ids), _hf_text_embeddings(torch, ref, ids), atol=TOL
  )
  np.testing.assert_allclose(
    np.asarray(loaded.encode_image(dict(inputs))), _hf_image_embeddings(torch, ref, inputs), atol=TOL
  )


@pytest.mark.parametrize("shape", [(4, 4), (2, 9), (12, 3), (1, 1), (7, 5), (1, 30)])
def test_position_resize_is_torch_antialiased_bilinear(torch_reference, shape):
  """SigLIP 2 resizes its positions as torch's interpolate(bilinear, antialias=True): shrinking
  (antialiased) and growing, per axis; jax.image.resize agrees where its shape is static."""
  torch, _ = torch_reference
  grid = np.random.RandomState(1).randn(GRID, GRID, 5).astype(np.float32)
  h, w = shape
  ours = np.asarray(resize_positions(jnp.asarray(grid), jnp.asarray([[h, w]]), h * w + 3))[0]
  theirs = torch.nn.functional.interpolate(
    torch.from_numpy(grid).permute(2, 0, 1)[None],
    size=(h, w),
    mode="bilinear",
    align_corners=False,
    antialias=True,
  )[0].permute(1, 2, 0)
  np.testing.assert_allclose(ours[: h * w], theirs.reshape(h * w, 5).numpy(), atol=1e-6)
  static = jax.image.resize(jnp.asarray(grid), (h, w, 5), method="linear", antialias=True)
  np.testing.assert_allclose(ours[: h * w], np.asarray(static).reshape(h * w, 5), atol=1e-6)
  np.testing.assert_allclose(ours[h * w :], np.broadcast_to(ours[0], (3, 5)))  # padding: finite
