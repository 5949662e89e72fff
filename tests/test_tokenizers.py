"""Tokenizers: CLIP BPE id-for-id with open_clip; HF, SentencePiece and WordPiece wrappers."""

import numpy as np
import pytest

from vlpt.data.tokenizers import (ClipBpeTokenizer, HFTokenizer, SentencePieceTokenizer,
                                  WordPieceTokenizer, build_tokenizer, write_hf_clip_vocab)

CORPUS = [
    "a photo of a cat", "A Photo Of A CAT!", "don't, I'll, we've, she's, they're, I'm, he'd",
    "café naïve Ærøskøbing São Paulo façade", "東京タワーの写真", "한국어 텍스트", "Ελληνικά κείμενα",
    "emoji 🙂👍🏽🇫🇷 and ❤️", "&amp;lt;b&amp;gt;bold&amp;lt;/b&amp;gt; &quot;quoted&quot;",
    "mojibake: Ã©tÃ© â€œquotesâ€\x9d", "tabs\tand\nnewlines\r\n  and   spaces", "",
    "   ", "3.14159 and 1,000,000 and 2024-11-24", "hyphen-ated, under_score, slash/path",
    "<start_of_text> literal specials <end_of_text>", "word " * 120,
    "a" * 300, "supercalifragilisticexpialidocious antidisestablishmentarianism",
]


def _random_corpus(n=300, seed=0):
  rng = np.random.default_rng(seed)
  pieces = ["a", "the", "cat", "Dog", "é", "ü", "ß", "東", "🙂", "👍🏽", "&amp;", "'s", "'ll", "!",
            "?", "...", "  ", "\t", "\n", "123", "4", "x-y", "naïve", "ÆØÅ", "ñ", "\u00a0", "中文",
            "🇫🇷", "–", "—", "“", "”", "©", "™"]
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


def test_hf_directory_from_clip_vocab_matches_open_clip(open_clip_tokenize, tmp_path):
  write_hf_clip_vocab(str(tmp_path))
  tok = HFTokenizer(str(tmp_path))
  # (literal "<start_of_text>" strings in a text are special tokens to open_clip only)
  texts = [t for t in CORPUS if "_of_text>" not in t] + _random_corpus(seed=1)
  np.testing.assert_array_equal(tok(texts), open_clip_tokenize(texts))
  assert (tok.sot_id, tok.eot_id, tok.pad_id) == (49406, 49407, 0)


def test_hf_clip_tokenizer_reads_the_exported_files(torch_reference, tmp_path):
  transformers = pytest.importorskip("transformers")
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


def test_tokenizer_json_file(tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers, processors
  vocab = {"[PAD]": 0, "<unk>": 1, "</s>": 2, "hello": 3, "world": 4, "big": 5}
  t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  t.pre_tokenizer = pre_tokenizers.Whitespace()
  t.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
  t.save(str(tmp_path / "tokenizer.json"))
  tok = HFTokenizer(str(tmp_path / "tokenizer.json"), context_length=4)
  np.testing.assert_array_equal(tok(["hello world", "big big big big big", "nope"]),
                                [[3, 4, 2, 0], [5, 5, 5, 2], [1, 2, 0, 0]])
  assert tok.eot_id == 2 and tok.pad_id == 0


def test_sentencepiece(tmp_path):
  spm = pytest.importorskip("sentencepiece")
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("\n".join(f"a photo of a {c} {s}" for c in ("red", "green", "blue")
                              for s in ("circle", "square", "cross")) * 20)
  spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "m"),
                                 vocab_size=24, pad_id=3, bos_id=-1, eos_id=1, unk_id=0)
  tok = build_tokenizer({"name": "sentencepiece", "model_path": str(tmp_path / "m.model"),
                         "context_length": 16})
  sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "m.model"))
  text = "a red circle"
  expect = sp.encode(text) + [1]
  assert len(expect) < 16
  row = tok(text)[0]
  assert list(row[: len(expect)]) == expect and all(row[len(expect):] == 3)
  long = tok("red " * 50)[0]
  assert long[-1] == 1 and len(long) == 16  # EOS kept under truncation
  assert tok.decode(row) == text
  with pytest.raises(FileNotFoundError, match="nowhere.model"):
    SentencePieceTokenizer(str(tmp_path / "nowhere.model"))


def test_wordpiece_matches_bert_tokenizer(torch_reference, tmp_path):
  transformers = pytest.importorskip("transformers")
  words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "red", "circle",
           "##s", "cat", "un", "##believ", "##able", ",", "!"]
  (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
  ours = WordPieceTokenizer(str(tmp_path / "vocab.txt"), context_length=12)
  bert = transformers.BertTokenizer.from_pretrained(str(tmp_path))
  for text in ["A photo of red circles!", "unbelievable cats, zebra", ""]:
    expect = bert(text, padding="max_length", max_length=12, truncation=True)["input_ids"]
    assert list(ours(text)[0]) == expect
  assert ours("a " * 40)[0][-1] == 3  # [SEP] kept


def test_missing_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.json"):
    HFTokenizer(str(tmp_path / "missing.json"))
  with pytest.raises(FileNotFoundError, match="vocab.json"):
    HFTokenizer(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="vocab.txt"):
    WordPieceTokenizer(str(tmp_path / "vocab.txt"))
