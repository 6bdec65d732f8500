"""Tests for jaxslu.text.normalize and jaxslu.text.tokenizer on a small real corpus (the first 300
SLURP devel sentences): exact round trips, the blank id, save/load, encode_words, errors."""
from __future__ import annotations

import json
import os

import pytest

from jaxslu.paths import data_dir
from jaxslu.text.normalize import normalize_text
from jaxslu.text.tokenizer import BLANK_ID, UNK_ID, Tokenizer

VOCAB = 64


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    with open(data_dir() / "slurp" / "devel.jsonl", encoding="utf-8") as f:
        texts = [json.loads(line)["sentence"] for _, line in zip(range(300), f)]
    assert len(texts) == 300
    return texts


@pytest.fixture(scope="module")
def tokenizers(corpus, tmp_path_factory) -> dict[str, Tokenizer]:
    folder = tmp_path_factory.mktemp("tok")
    return {kind: Tokenizer.train(corpus, kind=kind, vocab_size=VOCAB,
                                  model_path=folder / f"{kind}.json")
            for kind in ("char", "unigram", "bpe")}


# ---------------------------------------------------------------------------------------------
# normalize_text
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, expected", [
    ("  Hello,   World!  ", "hello world"),
    ("Don’t stop", "don't stop"),  # typographic apostrophe, kept inside the word
    ("'quoted' james' o'clock", "quoted james o'clock"),
    ("new-york/boston", "new york boston"),
    ("ＡＢＣ ﬁne", "abc fine"),  # NFKC: full-width letters and the fi ligature
    ("zero\u200bwidth\ttab\nline", "zerowidth tab line"),
    ("$5 + 10%", "5 10"),
    ("", ""),
    ("?!", ""),
])
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected


def test_normalize_text_word_by_word_equals_whole():
    text = "Hi, it's NEW-York's 'best' café — ok?"
    words = text.split()
    per_word = " ".join(w for w in (normalize_text(x) for x in words) if w)
    assert per_word == normalize_text(text)
    assert normalize_text("ABC", lowercase=False) == "ABC"
    with pytest.raises(TypeError, match="expects a str"):
        normalize_text(b"bytes")


# ---------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["char", "unigram", "bpe"])
def test_round_trip_and_id_range(tokenizers, corpus, kind):
    tok = tokenizers[kind]
    assert 4 <= tok.vocab_size <= VOCAB
    seen = set()
    for text in corpus:
        ids = tok.encode(text)
        assert ids, text
        assert min(ids) >= 1 and max(ids) < tok.vocab_size
        seen.update(ids)
        assert tok.decode(ids) == normalize_text(text)
        # blanks anywhere are ignored by decode
        assert tok.decode([BLANK_ID, *ids, BLANK_ID]) == tok.decode(ids)
        assert "".join(tok.pieces(ids)).replace("\u2581", " ").strip() == normalize_text(text)
    assert BLANK_ID not in seen and UNK_ID not in seen  # corpus characters are all known
    assert tok.pieces([BLANK_ID, UNK_ID]) == ["<blank>", "<unk>"]


@pytest.mark.parametrize("kind", ["char", "unigram", "bpe"])
def test_save_load_identical(tokenizers, corpus, kind, tmp_path):
    tok = tokenizers[kind]
    path = tmp_path / "sub" / "tok.json"
    tok.save(path)
    assert os.listdir(path.parent) == ["tok.json"]  # one file, no temp file left behind
    loaded = Tokenizer.load(path)
    assert (loaded.kind, loaded.vocab_size) == (tok.kind, tok.vocab_size)
    for text in corpus:
        assert loaded.encode(text) == tok.encode(text)
    ids = list(range(tok.vocab_size))
    assert loaded.pieces(ids) == tok.pieces(ids)


@pytest.mark.parametrize("kind", ["unigram", "bpe"])
def test_sentencepiece_training_is_deterministic(tokenizers, corpus, kind, tmp_path):
    again = Tokenizer.train(corpus, kind=kind, vocab_size=VOCAB, model_path=tmp_path / "t.json")
    first = tmp_path / "first.json"
    tokenizers[kind].save(first)
    assert (tmp_path / "t.json").read_bytes() == first.read_bytes()


@pytest.mark.parametrize("kind", ["char", "unigram", "bpe"])
def test_encode_words_matches_encode(tokenizers, corpus, kind):
    tok = tokenizers[kind]
    for text in corpus[:100] + ["Wake me up at seven:thirty, please -- o'clock!"]:
        words = text.split()
        ids, word_of_token = tok.encode_words(words)
        assert ids == tok.encode(" ".join(words))
        assert len(word_of_token) == len(ids)
        assert word_of_token == sorted(word_of_token)
        for i, word in enumerate(words):
            own = [t for t, w in zip(ids, word_of_token) if w == i]
            assert tok.decode(own) == normalize_text(word)
    # punctuation-only words get no tokens; a hyphenated word keeps all its tokens
    ids, word_of_token = tok.encode_words(["new-york", "--", "city"])
    assert ids == tok.encode("new-york -- city")
    assert set(word_of_token) == {0, 2}
    assert tok.decode([t for t, w in zip(ids, word_of_token) if w == 0]) == "new york"


def test_char_tokenizer_layout_and_unknown():
    tok = Tokenizer.train(["ab ba", "b"], kind="char", vocab_size=10, model_path=None)
    # 0 blank, 1 unk, 2 word boundary, then the sorted characters a=3, b=4
    assert tok.vocab_size == 5
    assert tok.encode("AB b") == [2, 3, 4, 2, 4]
    assert tok.encode("aж") == [2, 3, UNK_ID]
    assert tok.decode([2, 3, UNK_ID]) == "a\u2047"
    # vocab_size is an upper bound: only the most frequent character (b: 3 times) fits
    small = Tokenizer.train(["ab ba", "b"], kind="char", vocab_size=4, model_path=None)
    assert small.vocab_size == 4
    assert small.encode("ab") == [2, UNK_ID, 3]


@pytest.mark.parametrize("kind", ["unigram", "bpe"])
def test_sentencepiece_unknown_character(tokenizers, kind):
    tok = tokenizers[kind]
    ids = tok.encode("what жж")
    assert UNK_ID in ids and BLANK_ID not in ids
    assert "\u2047" in tok.decode(ids)


def test_bad_inputs(tokenizers, tmp_path, corpus):
    with pytest.raises(ValueError, match="unknown tokenizer kind 'word'"):
        Tokenizer.train(corpus, kind="word", vocab_size=10, model_path=None)
    with pytest.raises(ValueError, match="no non-empty texts"):
        Tokenizer.train(["?!", ""], kind="char", vocab_size=10, model_path=None)
    with pytest.raises(ValueError, match="distinct characters"):
        Tokenizer.train(corpus, kind="unigram", vocab_size=8, model_path=None)
    with pytest.raises(ValueError, match="outside"):
        tokenizers["char"].decode([tokenizers["char"].vocab_size])
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json"):
        Tokenizer.load(missing)
    for content in ("not json", json.dumps({"format": "other"}),
                    json.dumps({"format": "jaxslu-tokenizer", "version": 1, "kind": "bpe",
                                "lowercase": True, "sentencepiece_model": "@@@"})):
        bad = tmp_path / "bad.json"
        bad.write_text(content)
        with pytest.raises(ValueError, match="bad.json.*corrupt"):
            Tokenizer.load(bad)
