"""Caption metrics: coco-caption parity (BLEU, CIDEr-D, PTB tokenization) and properties."""

import os
import random
import shutil

import numpy as np
import pytest

from vlpt.evaluation.captioning_metrics import (
  bleu,
  caption_scores,
  cider,
  cider_per_image,
  tokenize_caption,
)

from conftest import require

# caption-like sentences with the punctuation, contractions and numbers captions contain
CAPTIONS = [
  "A man riding a wave on top of a surfboard.",
  "A kitchen with stainless steel appliances and a white refrigerator .",
  "Two dogs, a cat and a bird sitting on a couch.",
  "The man's dog isn't happy about the bath!",
  "A woman holding an umbrella in the rain; it's raining hard.",
  "There's a red double-decker bus on the street.",
  "A 4-year-old boy in a t-shirt eats a slice of pizza.",
  'A sign that says "STOP" at the corner.',
  "Giraffes (three of them) stand near a tree.",
  "A plate of food: rice, beans, and chicken.",
  "A clock tower reads 10:30 in the city...",
  "People walking down the sidewalk -- it's busy.",
  "A group of people standing around a table with 2 cakes and 1,000 candles?",
  "A close-up of a cat's face.",
  "Cats' toys scattered on the floor.",
  "A man can't reach the top shelf, so he's using a ladder.",
  "An elephant walking through tall grass in Africa.",
  "The train is pulling into the station at 5 p.m. today.",
  "A baseball player swinging a bat at a ball",
  "a black and white photo of a man on a horse",
  "A bathroom with a toilet, sink & mirror.",
  "Someone wrote 'hello' on the whiteboard.",
  "It costs $5 or 50% off at the U.S. store.",
  "Mr. Smith's car is parked by the curb.",
  "A tennis player gets ready to serve the ball!!",
  "A zebra grazing on grass; another zebra looks on.",
  "\u201cLook at that!\u201d says the sign \u2014 a giant kite flies over the beach.",
  "Two people on skis going down a snowy hill.",
  "A computer desk with a laptop, keyboard and a mouse.",
  "A woman's hand holding a smartphone (an iPhone).",
  "It\u2019s a dog\u2019s toy, isn\u2019t it\u2026 \u2018quoted\u2019 word",
]

EXPECTED_TOKENS = {
  "A man riding a wave on top of a surfboard.": "a man riding a wave on top of a surfboard",
  "The man's dog isn't happy about the bath!": "the man 's dog is n't happy about the bath",
  'A sign that says "STOP" at the corner.': "a sign that says stop at the corner",
  "Giraffes (three of them) stand near a tree.": "giraffes -lrb- three of them -rrb- stand near a tree",
  "It costs $5 or 50% off at the U.S. store.": "it costs $ 5 or 50 % off at the u.s. store",
  "A clock tower reads 10:30 in the city...": "a clock tower reads 10:30 in the city",
  "I cannot believe we're gonna win": "i can not believe we 're gon na win",
  "a dog 's toy , a cat": "a dog 's toy a cat",
}


def test_tokenize_caption_hand_made():
  for text, tokens in EXPECTED_TOKENS.items():
    assert " ".join(tokenize_caption(text)) == tokens, text
  assert tokenize_caption("") == []
  assert tokenize_caption('... , ; -- "" ``') == []


def _java_ptb(sentences):
  """coco-caption's own tokenization (Stanford PTBTokenizer in Java + punctuation filter)."""
  ptb = require("pycocoevalcap.tokenizer.ptbtokenizer")
  if shutil.which("java") is None:
    pytest.fail(
      "coco-caption's PTBTokenizer needs Java: apt-get install default-jre-headless", pytrace=False
    )
  jar = os.path.join(os.path.dirname(ptb.__file__), ptb.STANFORD_CORENLP_3_4_1_JAR)
  if not os.path.exists(jar):
    pytest.fail(f"pycocoevalcap's Stanford CoreNLP jar is missing: {jar}", pytrace=False)
  out = ptb.PTBTokenizer().tokenize({i: [{"caption": s}] for i, s in enumerate(sentences)})
  return [out[i][0] for i in range(len(sentences))]


def _fuzz_captions(seed, count):
  rng = random.Random(seed)
  vocab = (
    "a man woman dog cat sitting on the table with two people standing near street pizza "
    "plate of food bus train red white kitchen giraffe field sky kite beach clock tower "
    "city large small young old it is are there that in at and"
  ).split()
  special = [
    "isn't",
    "it's",
    "there's",
    "man's",
    "dogs'",
    "don't",
    "can't",
    "won't",
    "they're",
    "i'm",
    "cannot",
    "black-and-white",
    "t-shirt",
    "3.5",
    "1,000",
    "10:30",
    "$5",
    "50%",
    "U.S.",
    "Mr.",
    "e.g.",
    "2",
    "1990s",
    "&",
    "and/or",
    "o'clock",
    "5th",
    "café",
  ]
  punct = [".", ",", "!", "?", ";", ":", "...", " .", " ,"] + [""] * 8
  lines = []
  for _ in range(count):
    words = []
    for _ in range(rng.randint(3, 14)):
      w = rng.choice(special) if rng.random() < 0.2 else rng.choice(vocab)
      w = w.capitalize() if rng.random() < 0.15 else w
      r = rng.random()
      w = f'"{w}"' if r < 0.04 else f"'{w}'" if r < 0.06 else f"({w})" if r < 0.08 else w
      words.append(w + rng.choice(punct))
    lines.append(" ".join(words))
  return lines


def test_tokenize_caption_equals_coco_captions_java_tokenizer():
  fuzz = _fuzz_captions(0, 400)
  java = _java_ptb(CAPTIONS + list(EXPECTED_TOKENS) + fuzz)
  ours = [" ".join(tokenize_caption(s)) for s in CAPTIONS + list(EXPECTED_TOKENS) + fuzz]
  n = len(CAPTIONS) + len(EXPECTED_TOKENS)
  assert ours[:n] == java[:n]
  # random punctuation soup: the stand-in agrees on (nearly) all of it
  agree = np.mean([a == b for a, b in zip(ours[n:], java[n:])])
  assert agree >= 0.99, agree


def _pycoco(candidates, references):
  bleu_mod = require("pycocoevalcap.bleu.bleu")
  cider_mod = require("pycocoevalcap.cider.cider")
  gts = {i: list(r) for i, r in enumerate(references)}
  res = {i: [c] for i, c in enumerate(candidates)}
  b, _ = bleu_mod.Bleu(4).compute_score(gts, res, verbose=0)
  c, per_image = cider_mod.Cider().compute_score(gts, res)
  return b, c, per_image


def _max_diff(candidates, references):
  b, c, per_image = _pycoco(candidates, references)
  ours_b = bleu(candidates, references)
  diffs = [abs(b[k] - ours_b[f"bleu{k + 1}"]) for k in range(4)]
  diffs.append(abs(c - cider(candidates, references)))
  diffs.extend(np.abs(np.asarray(per_image) - cider_per_image(candidates, references)))
  return max(diffs)


def test_bleu_cider_equal_pycocoevalcap_hand_made():
  cases = [
    # identical, partial overlap, clipping (repeated words), a length mismatch
    (
      ["a man riding a horse", "the the the the", "a dog", "two cats on a red couch"],
      [
        ["a man riding a horse", "a person on a horse"],
        ["the cat is on the mat"],
        ["a dog running in the park", "a brown dog plays"],
        ["a cat", "two cats sleep"],
      ],
    ),
    # an empty candidate and a reference set with an empty reference
    (["", "a kite in the sky"], [["a boy flies a kite"], ["", "a kite flying in the blue sky"]]),
    # a single image (CIDEr's idf is log(1) = 0)
    (["a bus on the street"], [["a red bus on a city street", "a bus parked"]]),
    # the candidate longer than every reference (no brevity penalty)
    (
      ["a very long caption about a small dog sitting on a big green chair"],
      [
        ["a dog on a chair"],
      ],
    ),
  ]
  worst = max(_max_diff(c, r) for c, r in cases)
  assert worst < 1e-6, worst


def test_bleu_cider_equal_pycocoevalcap_random():
  rng = random.Random(0)
  vocab = "a the man dog on sits with of red blue big ball in park two".split()
  sentence = lambda lo, hi: " ".join(rng.choice(vocab) for _ in range(rng.randint(lo, hi)))
  worst = 0.0
  for _ in range(60):
    n = rng.randint(1, 25)
    cands = [sentence(0, 12) for _ in range(n)]
    refs = [[sentence(1, 12) for _ in range(rng.randint(1, 5))] for _ in range(n)]
    worst = max(worst, _max_diff(cands, refs))
  assert worst < 1e-6, worst


def test_caption_scores_equal_clip_benchmarks_pipeline():
  """Raw captions: ours (tokenize_caption) vs coco-caption (Java PTB tokenizer) + its scorers."""
  rng = random.Random(1)
  refs = [CAPTIONS[i : i + 3] for i in range(0, 27, 3)]
  cands = [rng.choice(CAPTIONS) for _ in refs]
  java = _java_ptb(cands + [r for rs in refs for r in rs])
  java_cands, flat = java[: len(cands)], java[len(cands) :]
  java_refs = [flat[3 * i : 3 * i + 3] for i in range(len(refs))]
  b, c, _ = _pycoco(java_cands, java_refs)
  ours = caption_scores(cands, refs)
  assert set(ours) == {"bleu4", "cider"}
  assert ours["bleu4"] == pytest.approx(b[3], abs=1e-6)
  assert ours["cider"] == pytest.approx(c, abs=1e-6)


def _paraphrase_corpus(num_images, seed=0):
  """Per image: 6 captions of the same scene (5 references + 1 held-out candidate)."""
  rng = random.Random(seed)
  colors = "red blue green yellow black white brown orange".split()
  animals = "dog cat horse bird cow sheep zebra giraffe elephant bear".split()
  actions = ["running", "sleeping", "eating", "standing", "jumping", "sitting"]
  places = ["in a field", "on a beach", "near a river", "in the snow", "on a road", "in a barn"]
  forms = [
    "a {c} {a} {v} {p}.",
    "A {a} that is {c} {v} {p}",
    "there is a {c} {a} {v} {p}",
    "a {c} {a} is {v} {p}",
    "{c} {a} {v} {p}",
    "the {a} is {c} and {v} {p}",
  ]
  corpus = []
  for _ in range(num_images):
    c, a, v, p = (rng.choice(colors), rng.choice(animals), rng.choice(actions), rng.choice(places))
    corpus.append([f.format(c=c, a=a, v=v, p=p) for f in forms])
  return corpus


def test_properties_identical_high_shuffled_low():
  corpus = _paraphrase_corpus(40)
  refs = [caps[:5] for caps in corpus]
  held_out = [caps[5] for caps in corpus]
  exact = [caps[0] for caps in corpus]
  shuffled = held_out[1:] + held_out[:1]  # each image gets another image's caption
  s_exact = caption_scores(exact, refs)
  s_held = caption_scores(held_out, refs)
  s_shuffled = caption_scores(shuffled, refs)
  assert s_exact["cider"] > 2.0 and s_exact["bleu4"] > 0.5
  assert s_held["cider"] > 1.0
  assert s_shuffled["cider"] < 0.25 * s_held["cider"]
  assert s_shuffled["bleu4"] < s_held["bleu4"]


def test_input_checks():
  with pytest.raises(ValueError, match="reference sets"):
    bleu(["a"], [["a"], ["b"]])
  with pytest.raises(ValueError, match="non-empty"):
    cider(["a"], [[]])
  with pytest.raises(TypeError):
    caption_scores("a dog", [["a dog"]])
