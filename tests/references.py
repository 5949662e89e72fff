"""Drivers of reference implementations that tests compare against, made to run here."""

import contextlib
import io
import warnings

import numpy as np


def topk_accuracy(output, target, topk=(1,)):
  """CLIP_benchmark's ``accuracy`` (fraction of targets among the top k logits), numpy-2.4 safe."""
  top = output.topk(max(topk), dim=1).indices
  hits = top == target.view(-1, 1)
  return [hits[:, :k].any(dim=1).float().sum().item() / len(target) for k in topk]


def patch_clip_benchmark_probe_for_cpu(mp, torch):
  """CLIP_benchmark's ``linear_probe`` module, made to run on CPU torch under MonkeyPatch ``mp``.

  Its code moves tensors with ``.cuda()`` / ``.to("cuda")``: those become no-ops. Its
  ``accuracy()`` calls ``float()`` on a 1-element array, which numpy >= 2.4 rejects: replaced by
  the same top-k count returning a Python float.
  """
  from clip_benchmark.metrics import linear_probe as lp

  to = torch.Tensor.to
  mp.setattr(torch.nn.Module, "cuda", lambda self, *a, **k: self)
  mp.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
  mp.setattr(
    torch.Tensor, "to", lambda self, *a, **k: to(self, *("cpu" if v == "cuda" else v for v in a), **k)
  )
  mp.setattr(lp, "accuracy", topk_accuracy)
  return lp


def run_clip_benchmark_probe(torch, lp, root, splits, seed=0):
  """CLIP_benchmark's ``evaluate`` on ``splits`` ({split: (features, labels)}), given through its
  feature cache (``root/model/features_{split}.pt``), unchanged otherwise."""
  (root / "model").mkdir(exist_ok=True)
  for split, (x, y) in splits.items():
    torch.save(torch.from_numpy(np.asarray(x)), root / "model" / f"features_{split}.pt")
    torch.save(torch.from_numpy(np.asarray(y, np.int64)), root / "model" / f"targets_{split}.pt")
  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # tiny matmuls: more threads only contend on a busy machine
  try:
    torch.manual_seed(seed)  # as its command line does before evaluating
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pin_memory without an accelerator, autocast on CPU
        return lp.evaluate(
          None,
          None,
          None,
          fewshot_k=-1,
          batch_size=64,
          num_workers=0,
          lr=0.1,
          epochs=10,
          model_id="model",
          seed=seed,
          feature_root=str(root),
          device="cuda",
          val_dataloader=[],
          normalize=True,
          amp=False,
        )
  finally:
    torch.set_num_threads(threads)


def perturb_torch(torch, model):
  """Every tensor moved off its init (no zero bias or unit scale can hide a layout bug)."""
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn(p.shape, generator=gen) * 0.05)
  return model.eval()


def big_vision_scanned(npz):
  """big_vision's scanned layout of a plain npz dict: one ``encoderblock`` with a leading depth axis."""
  groups, out = {}, {}
  for key, value in npz.items():
    if "encoderblock_" in key:
      head, _, tail = key.partition("encoderblock_")
      idx, _, rest = tail.partition("/")
      groups.setdefault(f"{head}encoderblock/{rest}", {})[int(idx)] = value
    else:
      out[key] = value
  return {**out, **{k: np.stack([v[i] for i in sorted(v)]) for k, v in groups.items()}}
