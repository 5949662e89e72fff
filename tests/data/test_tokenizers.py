"""Tokenizers: CLIP BPE id-for-id with open_clip; HF, SentencePiece and WordPiece wrappers."""

import json
import os
import pickle

import numpy as np
import pytest

from vlpt.data.tokenizers import (
  ClipBpeTokenizer,
  HFTokenizer,
  SentencePieceTokenizer,
  WordPieceTokenizer,
  WordTokenizer,
  build_tokenizer,
  write_hf_clip_vocab,
)
from vlpt.errors import ConfigError

from conftest import require
from e2e_utils import train_sentencepiece

CORPUS = [
  "a photo of a cat",
  "A Photo Of A CAT!",
  "don't, I'll, we've, she's, they're, I'm, he'd",
  "café naïve Ærøskøbing São Paulo façade",
  "東京タワーの写真",
  "한국어 텍스트",
  "Ελληνικά κείμενα",
  "emoji 🙂👍🏽🇫🇷 and ❤️",
  "&amp;lt;b&amp;gt;bold&amp;lt;/b&amp;gt; &quot;quoted&quot;",
  "mojibake: Ã©tÃ© â€œquotesâ€\x9d",
  "tabs\tand\nnewlines\r\n  and   spaces",
  "",
  "   ",
  "3.14159 and 1,000,000 and 2024-11-24",
  "hyphen-ated, under_score, slash/path",
  "<start_of_text> literal specials <end_of_text>",
  "word " * 120,
  "a" * 300,
  "supercalifragilisticexpialidocious antidisestablishmentarianism",
  "IT'S MY DOG'S BALL",
  "a\u0345b \u0345",
  "\u01c5ungla \u017fs 'ſ",
  "nbsp\u00a0and\u3000ideo\u2028sep",
  "ctrl\x1cchars\x1f",
  "zero\u200bwidth",
  "ﬁne ﬂour",
  "&amp;amp;amp;",
  "&#39;quoted&#39; &eacute;",
  "\x1b[31mred\x1b[0m",
  "<START_OF_TEXT>shouted</end_of_text>!<start_of_text>",
]


def _random_corpus(n=300, seed=0):
  rng = np.random.default_rng(seed)
  pieces = [
    "a",
    "the",
    "cat",
    "Dog",
    "é",
    "ü",
    "ß",
    "東",
    "🙂",
    "👍🏽",
    "&amp;",
    "'s",
    "'ll",
    "!",
    "?",
    "...",
    "  ",
    "\t",
    "\n",
    "123",
    "4",
    "x-y",
    "naïve",
    "ÆØÅ",
    "ñ",
    "\u00a0",
    "中文",
    "🇫🇷",
    "–",
    "—",
    "“",
    "”",
    "©",
    "™",
    "Ã©",
    "â€™",
    "&lt;",
    "<end_of_text>",
    "'T",
    "\u0345",
    "\r\n",
    "\x00",
    "٣",
    "½",
  ]
  return ["".join(rng.choice(pieces, size=rng.integers(0, 40))) for _ in range(n)]


@pytest.fixture(scope="module")
def open_clip_tokenize(torch_reference):
  _, open_clip = torch_reference
  return lambda texts, length=77: open_clip.tokenize(texts, context_length=length).numpy()


def test_clip_bpe_matches_open_clip(open_clip_tokenize):
  tok = ClipBpeTokenizer()
  texts = CORPUS + _random_corpus()
  np.testing.assert_array_equal(tok(texts), open_clip_tokenize(texts))
  assert (tok.sot_id, tok.eot_id, tok.pad_id, tok.vocab_size) == (49406, 49407, 0, 49408)


def test_clip_bpe_truncation_keeps_eot_and_other_lengths(open_clip_tokenize):
  long = ["word " * 200, "short"]
  for length in (5, 16, 77):
    ids = ClipBpeTokenizer(context_length=length)(long)
    np.testing.assert_array_equal(ids, open_clip_tokenize(long, length))
    assert ids[0, -1] == 49407 and ids.shape == (2, length)


def test_hf_clip_vocab_files_follow_open_clip_encoder(torch_reference, tmp_path):
  _, open_clip = torch_reference
  write_hf_clip_vocab(str(tmp_path))
  encoder = dict(open_clip.tokenizer.SimpleTokenizer().encoder)
  encoder["<|startoftext|>"] = encoder.pop("<start_of_text>")
  encoder["<|endoftext|>"] = encoder.pop("<end_of_text>")
  assert json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8")) == encoder
  merges = (tmp_path / "merges.txt").read_text(encoding="utf-8").split("\n")
  assert merges[0] == "#version: 0.2" and len([m for m in merges[1:] if m]) == 49152 - 256 - 2


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("hf_clip")
  write_hf_clip_vocab(str(path))
  return str(path)


def test_hf_directory_from_clip_vocab_matches_open_clip(open_clip_tokenize, hf_clip_dir):
  tok = build_tokenizer({"name": "hf", "path": hf_clip_dir, "context_length": 77})
  texts = CORPUS + _random_corpus(seed=1)
  np.testing.assert_array_equal(tok(texts), open_clip_tokenize(texts))
  assert (tok.sot_id, tok.eot_id, tok.pad_id, tok.vocab_size) == (49406, 49407, 0, 49408)


def test_hf_directory_exotic_unicode_matches_open_clip(open_clip_tokenize, hf_clip_dir):
  # code points of all planes: HF's regex engine has its own Unicode tables, CLIP's classes do not
  rng = np.random.default_rng(2)
  cps = np.concatenate(
    [
      rng.integers(0, 0x800, 4000),
      rng.integers(0x800, 0xD800, 4000),
      rng.integers(0xE000, 0x30000, 4000),
    ]
  )
  texts = ["".join(map(chr, rng.choice(cps, rng.integers(1, 12)))) for _ in range(1500)]
  np.testing.assert_array_equal(HFTokenizer(hf_clip_dir)(texts), open_clip_tokenize(texts))


def test_hf_directory_cased_matches_open_clip_whitespace_cleaning(torch_reference, hf_clip_dir):
  _, open_clip = torch_reference
  ref = open_clip.tokenizer.SimpleTokenizer(clean="whitespace")
  texts = CORPUS[:12] + ["<START_OF_TEXT> Mixed Case", "IT'S Café"] + _random_corpus(60, seed=3)
  ours = HFTokenizer(hf_clip_dir, lower_case=False)(texts)
  np.testing.assert_array_equal(ours, ref(texts).numpy())


def test_hf_clip_tokenizer_reads_the_exported_files(torch_reference, tmp_path):
  transformers = require("transformers")
  write_hf_clip_vocab(str(tmp_path))
  hf = transformers.CLIPTokenizer.from_pretrained(str(tmp_path))
  ours = ClipBpeTokenizer()
  for text in ["a photo of a cat", "don't stop", "café au lait 123"]:
    assert hf(text)["input_ids"] == [i for i in ours(text)[0] if i]


def test_decode_round_trip():
  tok = ClipBpeTokenizer()
  for text in ["a photo of a red circle", "two dogs, one cat!", "café naïve"]:
    assert tok.decode(tok(text)[0]) in (text, text.replace(",", " ,").replace("!", " !"))
  assert tok.decode(tok("3.14")[0]) == "3 . 1 4"  # digits are single tokens, as in CLIP
  assert tok.decode(tok("")[0]) == ""
  assert tok.decode(tok("东京 🙂")[0]) == "东京 🙂"


def test_clip_bpe_cache_restart_and_pickle():
  tok = ClipBpeTokenizer(context_length=16)
  tok.cache_size = 4  # forces the cache to start over mid-text
  texts = ["a photo of a dog", "zebras grazing beside giraffes at dusk"]
  fresh = ClipBpeTokenizer(context_length=16)(texts)
  np.testing.assert_array_equal(tok(texts), fresh)
  clone = pickle.loads(pickle.dumps(tok))  # grain workers receive tokenizers pickled
  np.testing.assert_array_equal(clone(texts), fresh)
  with pytest.raises(ValueError, match="context_length"):
    ClipBpeTokenizer(context_length=1)


def _word_level_json(path, post=True):
  from tokenizers import Tokenizer, models, pre_tokenizers, processors

  vocab = {"[PAD]": 0, "<unk>": 1, "</s>": 2, "hello": 3, "world": 4, "big": 5}
  t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  t.pre_tokenizer = pre_tokenizers.Whitespace()
  if post:
    t.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
  t.enable_padding(pad_id=0, pad_token="[PAD]", length=9)  # ours replaces it
  t.enable_truncation(3)
  t.save(str(path))
  return str(path)


def test_tokenizer_json_file(tmp_path):
  tok = HFTokenizer(_word_level_json(tmp_path / "tokenizer.json"), context_length=4)
  np.testing.assert_array_equal(
    tok(["hello world", "big big big big big", "nope", "Hello"]),
    [[3, 4, 2, 0], [5, 5, 5, 2], [1, 2, 0, 0], [1, 2, 0, 0]],
  )
  assert (tok.sot_id, tok.eot_id, tok.pad_id, tok.vocab_size) == (None, 2, 0, 6)
  lower = HFTokenizer(str(tmp_path), context_length=4, lower_case=True, pad_id=5)  # the directory
  np.testing.assert_array_equal(lower(["Hello WORLD"]), [[3, 4, 2, 5]])
  np.testing.assert_array_equal(pickle.loads(pickle.dumps(lower))(["Hello"]), [[3, 2, 5, 5]])


def test_tokenizer_json_without_closing_token_truncates_plainly(tmp_path):
  tok = HFTokenizer(_word_level_json(tmp_path / "tokenizer.json", post=False), context_length=3)
  assert tok.eot_id is None and tok.sot_id is None
  np.testing.assert_array_equal(tok(["hello world big big", "big"]), [[3, 4, 5], [5, 0, 0]])


def test_tokenizer_json_pad_token_from_tokenizer_config(tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers

  t = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1, "hi": 2}, unk_token="<unk>"))
  t.pre_tokenizer = pre_tokenizers.Whitespace()
  t.save(str(tmp_path / "tokenizer.json"))
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": "</s>"}))
  tok = HFTokenizer(str(tmp_path), context_length=3)  # SigLIP-style: pad is EOS
  assert tok.pad_id == 1
  np.testing.assert_array_equal(tok("hi"), [[2, 1, 1]])


def test_hf_clip_tokenizer_json_from_transformers(torch_reference, hf_clip_dir, tmp_path):
  transformers = require("transformers")
  transformers.CLIPTokenizerFast.from_pretrained(hf_clip_dir).save_pretrained(str(tmp_path))
  tok = HFTokenizer(str(tmp_path / "tokenizer.json"), context_length=8)
  assert (tok.sot_id, tok.eot_id) == (49406, 49407)
  ids = tok(["a photo of a cat", "a very very very very long caption indeed"])
  ref = ClipBpeTokenizer(context_length=8)(["a photo of a cat", "a very very very very long caption"])
  np.testing.assert_array_equal(ids[:, :6], ref[:, :6])
  assert ids[1, -1] == 49407 and ids[0, 6] == tok.pad_id


def test_sentencepiece(tmp_path):
  spm = require("sentencepiece")
  model = train_sentencepiece(tmp_path)
  tok = build_tokenizer({"name": "sentencepiece", "model_path": model, "context_length": 16})
  sp = spm.SentencePieceProcessor(model_file=model)
  texts = ["a red circle", "A Green Cross", "", "blue square photo", "red " * 50]
  rows = tok(texts)
  assert rows.shape == (5, 16) and rows.dtype == np.int32
  for text, row in zip(texts, rows):
    expect = sp.encode(text) + [1]
    if len(expect) > 16:
      expect = expect[:15] + [1]  # EOS kept under truncation (big_vision's eos="sticky")
    assert list(row) == expect + [3] * (16 - len(expect))
  assert (tok.sot_id, tok.eot_id, tok.pad_id, tok.vocab_size) == (None, 1, 3, 24)
  assert tok.decode(rows[0]) == "a red circle"
  np.testing.assert_array_equal(pickle.loads(pickle.dumps(tok))(texts), rows)


def test_sentencepiece_options(tmp_path):
  spm = require("sentencepiece")
  model = train_sentencepiece(tmp_path)
  sp = spm.SentencePieceProcessor(model_file=model)
  plain = SentencePieceTokenizer(model, context_length=4, add_eos=False, pad_id=0)
  long = sp.encode("red green blue circle square")
  assert len(long) > 4 and list(plain("red green blue circle square")[0]) == long[:4]
  assert list(plain("red")[0]) == sp.encode("red") + [0] * (4 - len(sp.encode("red")))
  assert plain.eot_id is None
  lower = SentencePieceTokenizer(model, context_length=8, lower_case=True)
  assert list(lower("RED Circle")[0]) == list(lower("red circle")[0])
  accent = sp.encode("É") + [1]
  assert list(lower("É")[0][: len(accent)]) == accent  # ASCII letters only, as tf.strings.lower
  spm.SentencePieceTrainer.train(
    input=str(tmp_path / "corpus.txt"),
    model_prefix=str(tmp_path / "n"),
    vocab_size=22,
    eos_id=-1,
    bos_id=-1,
    minloglevel=2,
  )
  with pytest.raises(ValueError, match="EOS"):
    SentencePieceTokenizer(str(tmp_path / "n.model"))
  with pytest.raises(FileNotFoundError, match="nowhere.model"):
    SentencePieceTokenizer(str(tmp_path / "nowhere.model"))


WORDPIECE = [
  "[PAD]",
  "[UNK]",
  "[CLS]",
  "[SEP]",
  "[MASK]",
  "a",
  "photo",
  "of",
  "red",
  "circle",
  "##s",
  "cat",
  "un",
  "##believ",
  "##able",
  ",",
  "!",
  "cafe",
  "東",
  "京",
  "'",
  "t",
  "don",
]
WORDPIECE_TEXTS = [
  "A photo of red circles!",
  "unbelievable cats, zebra",
  "",
  "Café  東京\tdon't",
  "a " * 40,
  "\x00ctrl\u200b a",
]


def _bert_tokenizers(transformers, directory, **kwargs):
  """transformers' pure-Python BERT tokenizer (``BertTokenizerLegacy`` from transformers 5) and its
  ``tokenizers``-backed one."""
  try:
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy as Slow
  except ImportError:
    Slow = transformers.BertTokenizer
  return (
    Slow(vocab_file=os.path.join(directory, "vocab.txt"), **kwargs),
    transformers.BertTokenizerFast.from_pretrained(directory, **kwargs),
  )


def test_wordpiece_matches_bert_tokenizer(torch_reference, tmp_path):
  transformers = require("transformers")
  (tmp_path / "vocab.txt").write_text("\n".join(WORDPIECE) + "\n", encoding="utf-8")
  ours = build_tokenizer(
    {"name": "wordpiece", "vocab_path": str(tmp_path / "vocab.txt"), "context_length": 12}
  )
  assert (ours.sot_id, ours.eot_id, ours.pad_id, ours.vocab_size) == (2, 3, 0, len(WORDPIECE))
  rows = ours(WORDPIECE_TEXTS)
  for bert in _bert_tokenizers(transformers, str(tmp_path)):
    for text, row in zip(WORDPIECE_TEXTS, rows):
      expect = bert(text, padding="max_length", max_length=12, truncation=True)["input_ids"]
      assert list(row) == expect, (type(bert).__name__, text)
  assert rows[4][-1] == 3  # [SEP] kept under truncation
  np.testing.assert_array_equal(pickle.loads(pickle.dumps(ours))(WORDPIECE_TEXTS), rows)


def test_wordpiece_cased(torch_reference, tmp_path):
  transformers = require("transformers")
  (tmp_path / "vocab.txt").write_text("\n".join(WORDPIECE + ["Red", "Café"]) + "\n", encoding="utf-8")
  ours = WordPieceTokenizer(str(tmp_path / "vocab.txt"), context_length=8, lower_case=False)
  for bert in _bert_tokenizers(transformers, str(tmp_path), do_lower_case=False):
    for text in ["Red red Café cafe", "RED"]:
      assert list(ours(text)[0]) == bert(text, padding="max_length", max_length=8)["input_ids"]


def test_missing_files_and_tokens_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.json"):
    HFTokenizer(str(tmp_path / "missing.json"))
  with pytest.raises(FileNotFoundError, match="vocab.json"):
    HFTokenizer(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="vocab.txt"):
    WordPieceTokenizer(str(tmp_path / "vocab.txt"))
  with pytest.raises(FileNotFoundError, match="nowhere.gz"):
    ClipBpeTokenizer(vocab_path=str(tmp_path / "nowhere.gz"))
  (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\na\n")
  with pytest.raises(ValueError, match=r"\[CLS\]"):
    WordPieceTokenizer(str(tmp_path / "vocab.txt"))


def test_registry_names():
  from vlpt.data.tokenizers import TOKENIZERS

  for name, cls in (
    ("clip_bpe", ClipBpeTokenizer),
    ("hf", HFTokenizer),
    ("sentencepiece", SentencePieceTokenizer),
    ("wordpiece", WordPieceTokenizer),
  ):
    assert TOKENIZERS.get(name) is cls
  tok = build_tokenizer({"name": "clip_bpe", "context_length": 10})
  assert tok("a cat").shape == (1, 10) and tok.context_length == 10
  assert build_tokenizer({"name": "word", "context_length": 8})("a red circle").shape == (1, 8)


def test_word_tokenizer_layout():
  tok = WordTokenizer(["a", "red", "circle"], context_length=5)
  ids = tok(["A red circle!", "", "a a a a a a a"])
  assert ids.shape == (3, 5) and ids.dtype == np.int32
  assert list(ids[0]) == [tok.sot_id, 2, 4, 3, tok.eot_id]
  assert list(ids[1]) == [tok.sot_id, tok.eot_id, 0, 0, 0]
  assert ids[2, -1] == tok.eot_id  # truncation keeps EOT last
  assert tok.eot_id == tok.vocab_size - 1 and (ids.argmax(1) == [4, 1, 4]).all()
  assert build_tokenizer({"name": "word", "context_length": 16}).vocab_size > 40
  with pytest.raises(ConfigError, match="unknown tokenizer"):
    build_tokenizer({"name": "nope"})
