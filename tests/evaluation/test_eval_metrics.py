"""vlpt's metrics equal CLIP_benchmark's on the same embeddings (its own code when installed,
else a plain numpy transcription of its definitions)."""

import numpy as np
import pytest

from vlpt.evaluation import metrics as M

from conftest import require


def _norm(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_case(seed, n_img=37, n_cls=7, n_tmpl=3, d=16, per_image=(3, 5)):
  rng = np.random.default_rng(seed)
  prompts = rng.standard_normal((n_cls, n_tmpl, d)).astype(np.float32)
  labels = rng.choice(
    n_cls - 1, size=n_img, p=np.linspace(1, 3, n_cls - 1) / np.linspace(1, 3, n_cls - 1).sum()
  )  # imbalanced; the last class has no examples
  images = _norm(prompts[labels].mean(1) + 1.5 * rng.standard_normal((n_img, d))).astype(np.float32)
  counts = rng.integers(per_image[0], per_image[1] + 1, size=n_img)
  owner = np.repeat(np.arange(n_img), counts)
  texts = _norm(images[owner] + 1.0 * rng.standard_normal((len(owner), d))).astype(np.float32)
  return prompts, images, labels, texts, owner


def numpy_reference(prompts, images, labels, texts, owner, ks=(1, 5, 10)):
  classifier = _norm(_norm(prompts).mean(1))
  logits = images @ classifier.T
  order = np.argsort(-logits, axis=1, kind="stable")
  out = {"top1": np.mean(order[:, 0] == labels)}
  out["top5"] = np.mean((order[:, :5] == labels[:, None]).any(1)) if logits.shape[1] >= 5 else np.nan
  pred = order[:, 0]
  out["mean_per_class_recall"] = np.mean([np.mean(pred[labels == c] == c) for c in np.unique(labels)])
  scores = texts @ images.T
  t2i = np.argsort(-scores, axis=1, kind="stable")
  i2t = np.argsort(-scores.T, axis=1, kind="stable")
  for k in ks:
    out[f"t2i_r{k}"] = np.mean((t2i[:, :k] == owner[:, None]).any(1))
    out[f"i2t_r{k}"] = np.mean((owner[i2t[:, :k]] == np.arange(len(images))[:, None]).any(1))
  return out


def vlpt_metrics(prompts, images, labels, texts, owner, block=1024):
  classifier = np.asarray(M.zeroshot_classifier(prompts))
  out = M.zeroshot_metrics(images @ classifier.T, labels)
  out.update(M.retrieval_metrics(images, texts, owner, block=block))
  return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("block", [1024, 5])  # 5 does not divide the number of rows
def test_matches_numpy_transcription(seed, block):
  case = make_case(seed)
  got, want = vlpt_metrics(*case, block=block), numpy_reference(*case)
  assert set(got) == set(want)
  for key in want:
    assert got[key] == pytest.approx(want[key], abs=1e-6), key


def test_fewer_than_five_classes_and_perfect_embeddings():
  prompts, images, labels, texts, owner = make_case(3, n_cls=4)
  assert np.isnan(
    M.zeroshot_metrics(images @ np.asarray(M.zeroshot_classifier(prompts)).T, labels)["top5"]
  )
  eye = np.eye(8, dtype=np.float32)
  perfect = M.retrieval_metrics(eye, eye[np.repeat(np.arange(8), 2)], np.repeat(np.arange(8), 2))
  assert all(v == 1.0 for v in perfect.values())
  zs = M.zeroshot_metrics(eye[:6, :6] * 5, np.arange(6))
  assert zs == {"top1": 1.0, "top5": 1.0, "mean_per_class_recall": 1.0}


def test_matches_clip_benchmark_code(torch_reference):
  """Runs CLIP_benchmark's own evaluate() functions on a stub model serving fixed embeddings."""
  torch, _ = torch_reference
  require("sklearn")
  zc = require("clip_benchmark.metrics.zeroshot_classification")
  zr = require("clip_benchmark.metrics.zeroshot_retrieval")
  prompts, images, labels, texts, owner = make_case(4, n_img=40, n_cls=8)
  n_cls, n_tmpl, _ = prompts.shape
  classnames = [f"class{c}" for c in range(n_cls)]
  templates = [f"t{t} {{c}}" for t in range(n_tmpl)]
  text_table = {f"t{t} class{c}": prompts[c, t] for c in range(n_cls) for t in range(n_tmpl)}
  caption_table = {f"caption{i}": texts[i] for i in range(len(texts))}
  text_table.update(caption_table)
  keys = list(text_table)

  class Stub(torch.nn.Module):
    def encode_image(self, idx):
      return torch.tensor(images)[idx.long()]

    def encode_text(self, ids):
      return torch.stack([torch.tensor(text_table[keys[i]]) for i in ids.tolist()])

  def tokenizer(strings):
    return torch.tensor([keys.index(s) for s in strings])

  class Classification(torch.utils.data.Dataset):
    classes = classnames

    def __len__(self):
      return len(images)

    def __getitem__(self, i):
      return torch.tensor(i), int(labels[i])

  # clip_benchmark 1.6.2's accuracy() calls float() on a 1-element array, which numpy >= 2.4
  # rejects; so its classifier and logits are used as they are, then its two metric
  # expressions (top-k over topk() indices, sklearn's balanced accuracy) are applied here.
  from sklearn.metrics import balanced_accuracy_score

  classifier = zc.zero_shot_classifier(Stub(), tokenizer, classnames, templates, "cpu", amp=False)
  logits, target = zc.run_classification(
    Stub(), classifier, torch.utils.data.DataLoader(Classification(), batch_size=9), "cpu", amp=False
  )
  top = logits.topk(5, 1, True, True)[1]
  ref = {
    "acc1": (top[:, :1] == target[:, None]).any(1).float().mean().item(),
    "acc5": (top == target[:, None]).any(1).float().mean().item(),
    "mean_per_class_recall": balanced_accuracy_score(target, logits.argmax(axis=1)),
  }
  got = vlpt_metrics(prompts, images, labels, texts, owner)
  assert got["top1"] == pytest.approx(ref["acc1"], abs=1e-6)
  assert got["top5"] == pytest.approx(ref["acc5"], abs=1e-6)
  assert got["mean_per_class_recall"] == pytest.approx(ref["mean_per_class_recall"], abs=1e-6)

  captions_of = [[f"caption{j}" for j in np.flatnonzero(owner == i)] for i in range(len(images))]

  class Retrieval(torch.utils.data.Dataset):
    def __len__(self):
      return len(images)

    def __getitem__(self, i):
      return torch.tensor(i), captions_of[i]

  loader = torch.utils.data.DataLoader(
    Retrieval(), batch_size=7, collate_fn=lambda b: (torch.stack([x for x, _ in b]), [y for _, y in b])
  )
  ref = zr.evaluate(Stub(), loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])
  for k in (1, 5, 10):
    assert got[f"t2i_r{k}"] == pytest.approx(ref[f"image_retrieval_recall@{k}"], abs=1e-6)
    assert got[f"i2t_r{k}"] == pytest.approx(ref[f"text_retrieval_recall@{k}"], abs=1e-6)
