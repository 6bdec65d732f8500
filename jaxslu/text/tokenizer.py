"""Tokenizers for transducer training: characters, or sentencepiece unigram / BPE pieces.

Id layout (all kinds): id 0 is the transducer blank (also the label padding value,
`jaxslu.data.batch.BLANK_ID`); no text ever encodes to it and `decode` drops it. Id 1 is the
unknown token: a character never seen in training encodes to 1 and decodes to "⁇" (U+2047).
`vocab_size` counts every id including the blank, so a model's output layer has `vocab_size`
classes and every encoded id is in [1, vocab_size).

- "char": ids 2.. are the word-boundary piece "▁" and then the characters seen in training
  (sorted). Following sentencepiece's convention, EVERY word starts with "▁" (also the first one),
  so each boundary token belongs to the word after it. `vocab_size` passed to `train` is an UPPER
  bound: if the corpus has more distinct characters than fit, the most frequent ones are kept
  (ties broken by code point) and the rest become unknown.
- "unigram" / "bpe": sentencepiece trained in-process (no temp files: `sentence_iterator` in,
  `model_writer` out). Sentencepiece id k is jaxslu id k + 1: its unk is its id 0 (so ours is 1)
  and its bos/eos/pad are disabled (ids -1), so the blank slot is free. Trainer options, chosen
  for reproducibility and for tiny corpora:
    hard_vocab_limit=False        `vocab_size` is a soft limit: a tiny corpus yields fewer pieces
                                  instead of an error
    num_threads=1, shuffle_input_sentence=False, input_sentence_size=0, and the global
    sentencepiece random seed set to 0 before training -> the same texts give the same model
    character_coverage=1.0        every training character gets a piece (none trained as unk)
    normalization_rule_name="identity", unk_surface="⁇"
                                  jaxslu normalizes text itself (`normalize_text`), so
                                  sentencepiece must not change it; decoding stays exact
    split_by_whitespace=True      pieces never cross a word boundary, which is what makes
                                  `encode_words` equal to `encode` of the joined words
    minloglevel=2                 keep the trainer quiet
  `vocab_size` given to `train` is an upper bound on `Tokenizer.vocab_size` for every kind:
  sentencepiece is asked for `vocab_size - 1` pieces (its own unk included), the blank being the
  remaining id; a tiny corpus may give fewer.

`encode` normalizes its input with `normalize_text` (lowercasing unless trained with
`lowercase=False`), so `decode(encode(x)) == normalize_text(x)` for text made of training
characters.

The saved form is ONE JSON file ({"format": "jaxslu-tokenizer", "version": 1, "kind", "lowercase",
and either "chars" or "sentencepiece_model" = base64 of the model proto}), written atomically
(temporary file in the same folder, then rename), so a reader never sees a half-written file.
"""
from __future__ import annotations

import base64
import binascii
import collections
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from jaxslu.text.normalize import normalize_text

__all__ = ["Tokenizer", "BLANK_ID", "UNK_ID", "KINDS", "WORD_BOUNDARY"]

BLANK_ID = 0  # the transducer blank, same value as jaxslu.data.batch.BLANK_ID
UNK_ID = 1
KINDS = ("char", "unigram", "bpe")
WORD_BOUNDARY = "\u2581"  # "▁", sentencepiece's word-start marker
UNK_SURFACE = "\u2047"  # "⁇", what an unknown token decodes to
_BLANK_PIECE = "<blank>"
_UNK_PIECE = "<unk>"
_FORMAT = "jaxslu-tokenizer"
_VERSION = 1


class Tokenizer:
    """Text <-> token ids, with id 0 reserved for the blank (see the module docstring).

    Build one with `Tokenizer.train(...)` or `Tokenizer.load(path)`; the constructor is internal.
    """

    def __init__(self, kind: str, *, lowercase: bool = True, chars: Sequence[str] | None = None,
                 sentencepiece_model: bytes | None = None):
        if kind not in KINDS:
            raise ValueError(f"unknown tokenizer kind {kind!r}; use one of {KINDS}")
        self.kind = kind
        self.lowercase = bool(lowercase)
        self._chars: list[str] | None = None
        self._char_to_id: dict[str, int] = {}
        self._sp = None
        self._sp_model: bytes | None = None
        if kind == "char":
            if chars is None:
                raise ValueError("a 'char' tokenizer needs its character list (chars=...)")
            self._chars = list(chars)
            # ids: 0 blank, 1 unk, 2 "▁", 3.. characters
            self._char_to_id = {c: i + 2 for i, c in enumerate([WORD_BOUNDARY, *self._chars])}
        else:
            if sentencepiece_model is None:
                raise ValueError(f"a {kind!r} tokenizer needs its sentencepiece model proto "
                                 "(sentencepiece_model=...)")
            import sentencepiece as spm
            self._sp_model = bytes(sentencepiece_model)
            self._sp = spm.SentencePieceProcessor(model_proto=self._sp_model)

    # ---------------------------------------------------------------------------------------
    # Training, saving, loading
    # ---------------------------------------------------------------------------------------

    @classmethod
    def train(cls, texts: Iterable[str], *, kind: str, vocab_size: int,
              model_path: str | os.PathLike | None, lowercase: bool = True) -> "Tokenizer":
        """Train a tokenizer of `kind` on `texts` and save it to `model_path` (None: don't save).

        Texts are normalized with `normalize_text` first; empty ones are dropped. `vocab_size`
        is an upper bound on the result's `vocab_size` (blank included), see the module
        docstring.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown tokenizer kind {kind!r}; use one of {KINDS} "
                             "(config field tokenizer.kind)")
        if isinstance(texts, str):
            raise TypeError("Tokenizer.train expects an iterable of texts, got one str; wrap it "
                            "in a list")
        normalized = [t for t in (normalize_text(x, lowercase=lowercase) for x in texts) if t]
        if not normalized:
            raise ValueError("Tokenizer.train got no non-empty texts; pass the training "
                             "transcripts")
        if kind == "char":
            min_size = 4  # blank, unk, boundary, at least one character
            if vocab_size < min_size:
                raise ValueError(f"vocab_size={vocab_size} is too small for a 'char' tokenizer; "
                                 f"use at least {min_size} (blank, unk, word boundary, 1 char)")
            counts = collections.Counter(c for t in normalized for c in t if c != " ")
            ranked = sorted(counts, key=lambda c: (-counts[c], c))[: vocab_size - 3]
            tok = cls("char", lowercase=lowercase, chars=sorted(ranked))
        else:
            if vocab_size < 3:
                raise ValueError(f"vocab_size={vocab_size} is too small for a {kind!r} tokenizer;"
                                 " use at least 3 (blank, unk, one piece)")
            model = _train_sentencepiece(normalized, kind, vocab_size - 1)
            tok = cls(kind, lowercase=lowercase, sentencepiece_model=model)
        if model_path is not None:
            tok.save(model_path)
        return tok

    def save(self, path: str | os.PathLike) -> None:
        """Write this tokenizer to one JSON file at `path`, atomically (temp file + rename)."""
        path = Path(path)
        payload: dict = {"format": _FORMAT, "version": _VERSION, "kind": self.kind,
                         "lowercase": self.lowercase}
        if self.kind == "char":
            payload["chars"] = self._chars
        else:
            payload["sentencepiece_model"] = base64.b64encode(self._sp_model).decode("ascii")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(payload, f, ensure_ascii=False)
                f.write("\n")
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """Read a tokenizer written by `save` (or `train`); errors name the path."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {str(path)!r} does not exist; train one "
                                    "with Tokenizer.train(..., model_path=...) or point to the "
                                    "run's tokenizer file")
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
                raise ValueError("not a jaxslu tokenizer file (missing format tag)")
            if payload.get("version") != _VERSION:
                raise ValueError(f"unsupported version {payload.get('version')!r} "
                                 f"(this code reads version {_VERSION})")
            kind = payload["kind"]
            if kind == "char":
                chars = payload["chars"]
                if not all(isinstance(c, str) and len(c) == 1 for c in chars):
                    raise ValueError("'chars' must be a list of single characters")
                return cls("char", lowercase=payload["lowercase"], chars=chars)
            model = base64.b64decode(payload["sentencepiece_model"], validate=True)
            return cls(kind, lowercase=payload["lowercase"], sentencepiece_model=model)
        except (ValueError, KeyError, TypeError, RuntimeError, binascii.Error,
                UnicodeDecodeError) as e:
            raise ValueError(f"tokenizer file {str(path)!r} is corrupt or not a jaxslu tokenizer "
                             f"({type(e).__name__}: {e}); re-train it or restore it from the "
                             "run's workdir") from e

    # ---------------------------------------------------------------------------------------
    # Encoding and decoding
    # ---------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids INCLUDING the blank 0: every id is in [0, vocab_size)."""
        if self.kind == "char":
            return 3 + len(self._chars)
        return self._sp.get_piece_size() + 1

    @property
    def blank_id(self) -> int:
        return BLANK_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    def encode(self, text: str) -> list[int]:
        """Normalize `text` and return its token ids (all >= 1; unknown characters -> 1)."""
        return self._encode_normalized(self._normalize(text))

    def encode_words(self, words: Sequence[str]) -> tuple[list[int], list[int]]:
        """Encode a word list; also return, per token, the index in `words` it came from.

        `ids` equals `encode(" ".join(words))`: each word is normalized and encoded on its own
        (pieces never cross a word boundary). A word that normalizes to nothing (pure punctuation)
        gets no tokens; one that normalizes to several words ("new-york") maps all its tokens to
        its own index. This is how word-level slot spans become token-level BIO tags.
        """
        if isinstance(words, str):
            raise TypeError("encode_words expects a list of words, got one str; use "
                            "text.split()")
        ids: list[int] = []
        word_of_token: list[int] = []
        for i, word in enumerate(words):
            piece_ids = self._encode_normalized(self._normalize(word))
            ids.extend(piece_ids)
            word_of_token.extend([i] * len(piece_ids))
        return ids, word_of_token

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text. Blanks (0) are skipped; unknown tokens decode to "⁇"."""
        ids = self._check_ids(ids)
        ids = [i for i in ids if i != BLANK_ID]
        if self.kind == "char":
            out = []
            for i in ids:
                if i == UNK_ID:
                    out.append(UNK_SURFACE)
                elif i == 2:
                    out.append(" ")
                else:
                    out.append(self._chars[i - 3])
            return " ".join("".join(out).split())
        return self._sp.decode([i - 1 for i in ids])

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """The piece string of each id ("<blank>" for 0, "<unk>" for 1, "▁..." at word starts)."""
        out = []
        for i in self._check_ids(ids):
            if i == BLANK_ID:
                out.append(_BLANK_PIECE)
            elif i == UNK_ID:
                out.append(_UNK_PIECE)
            elif self.kind == "char":
                out.append(WORD_BOUNDARY if i == 2 else self._chars[i - 3])
            else:
                out.append(self._sp.id_to_piece(i - 1))
        return out

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"

    # ---------------------------------------------------------------------------------------

    def _normalize(self, text: str) -> str:
        if not isinstance(text, str):
            raise TypeError(f"Tokenizer.encode expects a str, got {type(text).__name__}: "
                            f"{text!r}")
        return normalize_text(text, lowercase=self.lowercase)

    def _encode_normalized(self, text: str) -> list[int]:
        if not text:
            return []
        if self.kind == "char":
            ids: list[int] = []
            for word in text.split(" "):
                ids.append(2)
                ids.extend(self._char_to_id.get(c, UNK_ID) for c in word)
            return ids
        return [i + 1 for i in self._sp.encode(text)]

    def _check_ids(self, ids: Iterable[int]) -> list[int]:
        out = [int(i) for i in ids]
        v = self.vocab_size
        bad = [i for i in out if not 0 <= i < v]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside [0, {v}) for this {self.kind!r} "
                             "tokenizer; were they produced with a different tokenizer?")
        return out


def _train_sentencepiece(texts: list[str], kind: str, vocab_size: int) -> bytes:
    """Train a sentencepiece model proto in memory with the options in the module docstring."""
    import io

    import sentencepiece as spm

    writer = io.BytesIO()
    spm.set_random_generator_seed(0)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=writer, model_type=kind,
            vocab_size=vocab_size, hard_vocab_limit=False, character_coverage=1.0,
            num_threads=1, shuffle_input_sentence=False, input_sentence_size=0,
            unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, unk_surface=UNK_SURFACE,
            normalization_rule_name="identity", split_by_whitespace=True, minloglevel=2)
    except RuntimeError as e:
        raise ValueError(f"sentencepiece could not train a {kind!r} model of {vocab_size} "
                         f"pieces on {len(texts)} texts: {e}. Every distinct character needs "
                         "its own piece (character_coverage=1.0): set tokenizer.vocab_size "
                         "above the number of distinct characters plus 2.") from e
    return writer.getvalue()
