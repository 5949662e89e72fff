"""vlpt's built-in dataset: procedurally drawn shapes with captions from a small grammar.

It lets a new user train a real (small) CLIP on a CPU in minutes and *see* it learn, with no
download: held-out zero-shot classification over the 24 color x shape classes and caption
retrieval are meaningful because captions also name size, position, background and a distractor
object, which the model must bind to the right object.

Every example is a pure function of ``(seed, split, index)`` (NumPy's Philox-free
``default_rng([seed, split_id, index])``), so any process, worker or order of access sees the
same bytes. Held-out splits use other split ids than ``train`` and never overlap it.

With ``annotations=True`` an example also says where its objects are (drawn from the same
masks, so the pixels are unchanged): ``boxes`` float32 [k, 4] normalized ``[y0, x0, y1, x1]``
around each object's visible pixels, ``box_labels`` int32 [k] (class ids, as ``label``),
``box_phrases`` (the class names, e.g. ``"red circle"``) and ``mask`` uint8 [H, W] (the class
covering each pixel, :data:`BACKGROUND` elsewhere). Object 0 is the target the captions
describe, object 1 the distractor when there is one. This is what LocCa-style referring
expressions and grounded captions (Wan et al. 2024) and dense probes need.
"""

from __future__ import annotations

import functools

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
  "red": (215, 35, 35),
  "green": (35, 165, 55),
  "blue": (40, 75, 220),
  "yellow": (235, 215, 35),
  "purple": (145, 55, 190),
  "orange": (245, 135, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
CLASS_NAMES: tuple[str, ...] = tuple(f"{c} {s}" for c in COLORS for s in SHAPES)
BACKGROUND = len(CLASS_NAMES)  # the id of pixels no object covers in ``mask``
MAX_OBJECTS = 2  # the target and at most one distractor
PROMPT_TEMPLATES: tuple[str, ...] = (
  "a photo of a {}.",
  "a picture of a {}.",
  "an image showing a {}.",
  "a drawing of a {}.",
  "a {}.",
  "a {} on a background.",
)

_SPLIT_IDS = {"train": 0, "eval": 1, "test": 2}
_DEFAULT_SIZES = {"train": 2**31 - 1, "eval": 1024, "test": 1024}
# Backgrounds are muted (low saturation, mid grey) so object colors stay unambiguous.
BACKGROUNDS = ("noisy", "striped", "checkered", "smooth")
_SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
_ROWS = ("top", "middle", "bottom")
_COLS = ("left", "center", "right")

_MAIN_TEMPLATES = (
  "a {size} {color} {shape} {pos}",
  "a {color} {shape} {pos} on a {bg} background",
  "there is a {size} {color} {shape} on a {bg} background",
  "a photo of a {size} {color} {shape} {pos}",
  "a {bg} background with a {color} {shape} {pos}",
  "a {size} {color} {shape} on a {bg} background {pos}",
)
_DISTRACTOR_TEMPLATES = (
  "a {size} {color} {shape} next to a small {dcolor} {dshape}",
  "a {color} {shape} {pos} and a small {dcolor} {dshape}",
  "a {size} {color} {shape} {pos} beside a small {dcolor} {dshape}",
)


def position_phrase(row: int, col: int) -> str:
  """Words for a 3x3 grid cell, e.g. 'in the top left corner', 'on the right', 'in the middle'."""
  if row == 1 and col == 1:
    return "in the middle"
  if row == 1:
    return f"on the {_COLS[col]}"
  if col == 1:
    return f"at the {_ROWS[row]}"
  return f"in the {_ROWS[row]} {_COLS[col]} corner"


def _words(text: str) -> list[str]:
  return text.lower().replace(".", " ").replace(",", " ").split()


def _vocabulary() -> tuple[str, ...]:
  words: set[str] = set()
  fills = {
    "color": list(COLORS),
    "dcolor": list(COLORS),
    "shape": list(SHAPES),
    "dshape": list(SHAPES),
    "bg": list(BACKGROUNDS),
    "size": [w for ws in _SIZE_WORDS.values() for w in ws],
    "pos": [position_phrase(r, c) for r in range(3) for c in range(3)],
  }
  for template in _MAIN_TEMPLATES + _DISTRACTOR_TEMPLATES + PROMPT_TEMPLATES:
    words.update(_words(template.replace("{}", "")))
  for options in fills.values():
    for option in options:
      words.update(_words(option))
  return tuple(sorted(w for w in words if "{" not in w))


VOCABULARY: tuple[str, ...] = _vocabulary()


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
  return yy, xx


def shape_mask(shape: str, size: int, cy: float, cx: float, r: float) -> np.ndarray:
  """Boolean [size, size] mask of a shape of half-extent ``r`` centred at (cy, cx)."""
  yy, xx = _grid(size)
  dy, dx = yy - cy, xx - cx
  if shape == "circle":
    return dy * dy + dx * dx <= r * r
  if shape == "square":
    s = 0.82 * r
    return (np.abs(dx) <= s) & (np.abs(dy) <= s)
  if shape == "triangle":  # apex up, base at the bottom
    t = (dy + r) / (1.85 * r)
    return (t >= 0) & (t <= 1) & (np.abs(dx) <= t * r)
  if shape == "cross":
    w = 0.32 * r
    return ((np.abs(dx) <= w) & (np.abs(dy) <= r)) | ((np.abs(dy) <= w) & (np.abs(dx) <= r))
  raise ValueError(f"unknown shape {shape!r}")


def _background(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
  yy, xx = _grid(size)
  base = rng.uniform(80, 175) + rng.uniform(-12, 12, size=3)
  amp = rng.uniform(8, 22)
  if kind == "noisy":
    tex = rng.standard_normal((size, size)).astype(np.float32) * (amp * 0.6)
  elif kind == "striped":
    theta, period = rng.uniform(0, np.pi), rng.uniform(3, 8) * size / 32
    tex = amp * np.sign(np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * (2 * np.pi / period)))
  elif kind == "checkered":
    cell = max(2, int(rng.integers(3, 7) * size / 32))
    tex = amp * (((yy // cell + xx // cell) % 2) * 2 - 1)
  else:  # smooth gradient
    theta = rng.uniform(0, 2 * np.pi)
    tex = amp * 2 * ((xx * np.cos(theta) + yy * np.sin(theta)) / size)
  return base[None, None, :] + tex[..., None]


def _paint(canvas: np.ndarray, mask: np.ndarray, rgb: np.ndarray) -> None:
  canvas[mask] = rgb


def _object_color(rng: np.random.Generator, name: str) -> np.ndarray:
  jitter = rng.uniform(-18, 18, size=3) + rng.uniform(-15, 15)
  return np.asarray(COLORS[name], np.float32) + jitter


def _box(mask: np.ndarray) -> np.ndarray:
  """Normalized [y0, x0, y1, x1] around a non-empty mask's pixels (pixel edges, not centres)."""
  n = mask.shape[0]
  ys, xs = np.nonzero(mask)
  return np.asarray([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], np.float32) / n


def render_example(
  rng: np.random.Generator,
  image_size: int,
  distractor_prob: float,
  captions_per_image: int,
  *,
  annotate: bool = False,
) -> dict:
  """Draws one image and its captions from ``rng`` (``annotate``: also boxes and class mask).

  The annotations use no random draws, so the image and captions are the same either way.
  """
  n = image_size
  color_i = int(rng.integers(len(COLORS)))
  shape_i = int(rng.integers(len(SHAPES)))
  color, shape = list(COLORS)[color_i], SHAPES[shape_i]
  bg = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
  size_name = "large" if rng.random() < 0.5 else "small"
  r = n * (rng.uniform(0.26, 0.34) if size_name == "large" else rng.uniform(0.17, 0.22))
  row, col = int(rng.integers(3)), int(rng.integers(3))
  # Centre inside its 3x3 cell where the object fits; clamp so it stays in the image.
  cy = np.clip((row + rng.uniform(0.3, 0.7)) * n / 3, r, n - r)
  cx = np.clip((col + rng.uniform(0.3, 0.7)) * n / 3, r, n - r)
  canvas = _background(rng, n, bg)

  distractor, d_mask, d_class = None, None, -1
  if rng.random() < distractor_prob:
    d_class = int(rng.integers(len(CLASS_NAMES) - 1))
    d_class += d_class >= color_i * len(SHAPES) + shape_i  # any class but the main one
    d_color, d_shape = list(COLORS)[d_class // len(SHAPES)], SHAPES[d_class % len(SHAPES)]
    dr = n * rng.uniform(0.08, 0.11)
    # Place it in the cell farthest from the main object so both stay visible.
    cells = [(a, b) for a in range(3) for b in range(3)]
    far = max(cells, key=lambda c: (c[0] - row) ** 2 + (c[1] - col) ** 2 + rng.random())
    dy = np.clip((far[0] + 0.5) * n / 3, dr, n - dr)
    dx = np.clip((far[1] + 0.5) * n / 3, dr, n - dr)
    d_mask = shape_mask(d_shape, n, dy, dx, dr)
    _paint(canvas, d_mask, _object_color(rng, d_color))
    distractor = (d_color, d_shape)
  main_mask = shape_mask(shape, n, cy, cx, r)
  _paint(canvas, main_mask, _object_color(rng, color))
  image = np.clip(canvas, 0, 255).astype(np.uint8)

  templates = list(_MAIN_TEMPLATES) + (list(_DISTRACTOR_TEMPLATES) if distractor else [])
  order = rng.permutation(len(templates))
  captions = []
  for k in range(captions_per_image):
    template = templates[order[k % len(order)]]
    captions.append(
      template.format(
        size=_SIZE_WORDS[size_name][int(rng.integers(2))],
        color=color,
        shape=shape,
        pos=position_phrase(row, col),
        bg=bg,
        dcolor=distractor[0] if distractor else "",
        dshape=distractor[1] if distractor else "",
      )
    )
  label = color_i * len(SHAPES) + shape_i
  example = {"image": image, "caption": captions[0], "captions": captions, "label": np.int32(label)}
  if annotate:
    # the main object is painted last: it hides what it overlaps of the distractor
    class_mask = np.full((n, n), BACKGROUND, np.uint8)
    objects = [(label, main_mask)]
    if d_mask is not None:
      class_mask[d_mask] = d_class
      objects.append((d_class, d_mask & ~main_mask))
    class_mask[main_mask] = label
    objects = [(c, m) for c, m in objects if m.any()]
    example["boxes"] = np.stack([_box(m) for _, m in objects]).astype(np.float32)
    example["box_labels"] = np.asarray([c for c, _ in objects], np.int32)
    example["box_phrases"] = [CLASS_NAMES[c] for c, _ in objects]
    example["mask"] = class_mask
  return example


class SyntheticCaptions:
  """Random-access source of the built-in dataset (grain-compatible, picklable).

  ``train`` is an effectively unbounded stream (2**31 - 1 examples); ``eval`` and ``test`` are
  fixed held-out splits (1024 examples unless ``num_examples`` says otherwise).
  """

  def __init__(
    self,
    split: str = "train",
    *,
    image_size: int = 32,
    seed: int = 0,
    num_examples: int | None = None,
    distractor_prob: float = 0.3,
    captions_per_image: int = 5,
    annotations: bool = False,
  ):
    if split not in _SPLIT_IDS:
      raise ValueError(f"unknown split {split!r}; choose one of {sorted(_SPLIT_IDS)}")
    if image_size < 16:
      raise ValueError(f"image_size must be >= 16, got {image_size}")
    if not 0.0 <= distractor_prob <= 1.0:
      raise ValueError(f"distractor_prob must be in [0, 1], got {distractor_prob}")
    if captions_per_image < 1:
      raise ValueError(f"captions_per_image must be >= 1, got {captions_per_image}")
    if num_examples is not None and num_examples < 1:
      raise ValueError(f"num_examples must be positive, got {num_examples}")
    self.split = split
    self.image_size = image_size
    self.seed = seed
    self.distractor_prob = distractor_prob
    self.captions_per_image = captions_per_image
    self.annotations = annotations
    self._len = num_examples or _DEFAULT_SIZES[split]
    self.class_names = CLASS_NAMES
    self.prompt_templates = PROMPT_TEMPLATES

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if not 0 <= index < self._len:
      raise IndexError(f"index {index} out of range for {self._len} examples")
    rng = np.random.default_rng([self.seed, _SPLIT_IDS[self.split], index])
    example = render_example(
      rng, self.image_size, self.distractor_prob, self.captions_per_image, annotate=self.annotations
    )
    example["index"] = np.int64(index)
    return example

  def __repr__(self) -> str:
    return (
      f"SyntheticCaptions(split={self.split!r}, image_size={self.image_size}, "
      f"seed={self.seed}, len={self._len})"
    )
