"""Helpers for end-to-end tests that run the CLIs as subprocesses."""

import json
import os
import re
import signal
import subprocess
import tarfile
import time

import numpy as np

from conftest import PYTHON, REPO

DEMO = os.path.join(REPO, "configs", "demo.py")
# the shared reference runs (conftest.reference_run) and the overrides runs compared with them use
LONG_OVERRIDES = (
  "--config.total_steps=80",
  "--config.checkpoint_every_steps=10",
  "--config.eval.at_end=False",
  "--config.eval_every_steps=1000",
)
REFERENCE_OVERRIDES = {"short": (), "long": LONG_OVERRIDES}


def env_with_devices(base_env, devices):
  env = dict(base_env)
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
  env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
  return env


def cli(module, workdir, *overrides, config=DEMO + ":tiny"):
  return [PYTHON, "-m", module, "--config", config, "--workdir", str(workdir), *overrides]


def launch(n, command):
  return [PYTHON, os.path.join(REPO, "launch", "local.py"), "-n", str(n), "--", *command]


def run(command, env, timeout=300, cwd=None):
  proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
  assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
  return proc


def same_topology_reference(processes, reference_run, env, directory, overrides=LONG_OVERRIDES):
  """(``command_for(workdir)``, the losses of an uninterrupted run of the same topology) for a
  run of ``processes`` (1 or 2) to compare bitwise: the session's shared long reference run for
  one process, a run in ``directory/reference`` for two."""

  def command_for(workdir):
    command = cli("vlpt.cli.train", workdir, *overrides)
    return launch(2, command) if processes == 2 else command

  if processes == 1:
    return command_for, train_losses(reference_run("long"))
  run(command_for(directory / "reference"), env)
  return command_for, train_losses(directory / "reference")


def kill_after_checkpoint(command, env, workdir, min_step):
  """Starts training, SIGKILLs it once a checkpoint >= min_step is finalized."""
  proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  ckpt = workdir / "checkpoints"
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    steps = [int(d) for d in os.listdir(ckpt) if d.isdigit()] if ckpt.exists() else []
    if steps and max(steps) >= min_step:
      break
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  return proc


def metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def train_losses(workdir):
  """step -> train/loss, the last logged value for each step (a restart re-logs steps)."""
  return {row["step"]: row["train/loss"] for row in metrics(workdir) if "train/loss" in row}


def eval_rows(workdir):
  return [row for row in metrics(workdir) if any(k.endswith("zeroshot/top1") for k in row)]


def one_train_step(config):
  """Builds ``config`` and runs one jitted step of its objective on its first batch, in-process.

  Returns (setup, state before (host), batch (host), state after (host), computed metrics).
  """
  import jax

  from vlpt import sharding as S
  from vlpt.train.loop import make_loader
  from vlpt.train.objectives import objective_class
  from vlpt.train.setup import build, initial_state
  from vlpt.train.step import make_train_step

  setup = build(config)
  state = initial_state(setup)
  before = jax.device_get(state)
  loader = make_loader(setup)
  batch = next(loader)
  loader.close()
  objective = objective_class(config)(setup)
  with S.activate(setup.mesh, setup.rules):
    after, m = make_train_step(setup, objective)(state, batch)
  return setup, before, jax.device_get(batch), jax.device_get(after), jax.device_get(m.compute())


def resolved_model_config(config, tokenizer=None):
  """``config.model`` as constructor kwargs (resolution and text sizes filled in)."""
  from vlpt.data.tokenizers import build_tokenizer
  from vlpt.models import model_kwargs

  tok = tokenizer or build_tokenizer(config.data.tokenizer)
  return model_kwargs(
    config.model,
    image_size=config.data.image_size,
    vocab_size=tok.vocab_size,
    context_length=tok.context_length,
  )


def export_random_model(config, dst, *, seed=7, tokenizer=None, **model_overrides):
  """A randomly initialized model of ``config`` (``model_overrides`` on its constructor kwargs)
  written as a vlpt export at ``dst``, with ``tokenizer`` (default: the config's); returns
  (model, flat parameters)."""
  from flax import nnx

  from vlpt.data.preprocess import Preprocess
  from vlpt.models import build_model
  from vlpt.weights.formats import Bundle, write_bundle
  from vlpt.weights.state import flat_params

  model_cfg = dict(resolved_model_config(config), **model_overrides)
  model = build_model(model_cfg, nnx.Rngs(seed))
  flat = flat_params(model)
  tok = tokenizer or config.data.tokenizer.to_dict()
  write_bundle(
    Bundle(model_cfg, flat, tok, Preprocess(image_size=config.data.image_size), "test"), str(dst)
  )
  return model, flat


def train_sentencepiece(directory):
  """A tiny SentencePiece model (24 pieces, pad 3, eos 1, unk 0, no bos) -> its path."""
  import sentencepiece as spm

  corpus = directory / "corpus.txt"
  corpus.write_text(
    "\n".join(
      f"a photo of a {c} {s}" for c in ("red", "green", "blue") for s in ("circle", "square", "cross")
    )
    * 20
  )
  spm.SentencePieceTrainer.train(
    input=str(corpus),
    model_prefix=str(directory / "m"),
    vocab_size=24,
    pad_id=3,
    bos_id=-1,
    eos_id=1,
    unk_id=0,
    minloglevel=2,
  )
  return str(directory / "m.model")


def data_config(source, workers=0, shuffle=True, crop_scale=(1.0, 1.0)):
  """The default config reading ``source`` at 32 px (input-pipeline tests)."""
  from vlpt.config import default_config

  c = default_config()
  c.data.image_size = 32
  c.data.num_workers = workers
  c.data.train.source = source
  c.data.train.shuffle = shuffle
  c.data.train.crop_scale = crop_scale
  return c


def data_stream(c, process_index=0, process_count=1, batch=8):
  """This process's batches of ``c``'s training stream (seed 0)."""
  from vlpt.data.pipeline import train_dataset
  from vlpt.data.tokenizers import build_tokenizer

  tok = build_tokenizer(c.data.tokenizer)
  return iter(
    train_dataset(
      c.data,
      tokenizer=tok,
      global_batch=batch,
      seed=0,
      process_index=process_index,
      process_count=process_count,
    )
  )


def write_shards(out, n, shard_size, *, fmt="png", size=32, bad=None):
  """Sample k: a constant image of value k (so k can be read back), caption 'a red circle'.

  ``bad``: {k: 'garbage' | 'cut_jpeg' | 'empty'} corrupts sample k.
  """
  from vlpt.data.shards import ShardWriter, encode_image

  bad = bad or {}
  with ShardWriter(str(out), shard_size) as w:
    for k in range(n):
      image = np.full((size, size + 8 * (k % 3), 3), k, np.uint8)
      data, ext, caption = encode_image(image, fmt), fmt, "a red circle"
      if bad.get(k) == "garbage":
        data = b"this is not an image"
      elif bad.get(k) == "cut_jpeg":
        data, ext = encode_image(np.random.default_rng(k).integers(0, 255, (64, 64, 3)), "jpg"), "jpg"
        data = data[: len(data) // 2]
      elif bad.get(k) == "empty":
        caption = "  "
      w.write(data, ext, caption, {"k": k} if k % 2 else None)
  return w.close()


def broken_shards(out):
  """100 samples in 4 shards with 5 bad examples (garbage and cut images, empty captions) and the
  last shard cut inside sample 90's image -> the pattern."""
  bad = {3: "garbage", 17: "cut_jpeg", 30: "empty", 41: "empty", 42: "garbage"}
  pattern = write_shards(out, 100, 25, bad=bad)
  last = out / "00003.tar"
  with tarfile.open(last) as tf:
    cut = tf.getmember("000030015.png").offset_data + 10
  with open(last, "r+b") as f:  # cut the last shard inside sample 90's image
    f.truncate(cut)
  return pattern
