"""``python -m vlpt.train.builtin NAME OUT``: trains ``builtin:NAME`` and exports it.

Run by :func:`vlpt.weights.builtin.ensure_builtin` in a subprocess (8 simulated CPU devices), so
the weights layer never imports the trainer. Trains in ``OUT/run`` and writes the vlpt export to
``OUT/model``, with the recipe version and final evaluation in ``builtin.json``.
"""

from __future__ import annotations

import json
import os
import sys

from vlpt.train.initialization import read_checkpoint
from vlpt.train.loop import train
from vlpt.weights.builtin import BUILTIN_META, BUILTIN_PREFIX, BUILTINS
from vlpt.weights.formats import write_bundle


def train_builtin(name: str, out: str) -> None:
  version, make_config = BUILTINS[name]
  config = make_config()
  workdir = os.path.join(out, "run")
  results = train(config, workdir)
  bundle = read_checkpoint(workdir)
  bundle.source = BUILTIN_PREFIX + name
  model_dir = os.path.join(out, "model")
  write_bundle(bundle, model_dir, "vlpt")
  meta = {
    "name": name,
    "version": version,
    "metrics": {k: float(v) for k, v in results.items()},
    "config": json.loads(config.to_json_best_effort()),
  }
  with open(os.path.join(model_dir, BUILTIN_META), "w") as f:
    json.dump(meta, f, indent=2)


if __name__ == "__main__":
  train_builtin(sys.argv[1], sys.argv[2])
