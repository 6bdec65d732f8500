"""Text normalization shared by tokenizer training, references and hypotheses.

Every transcript that is tokenized or scored goes through `normalize_text`, so a reference and a
hypothesis that differ only in case, punctuation or spacing score as identical.

Choices that were open, and what this module does:
- Unicode NFKC first (full-width letters, ligatures and compatibility digits fold to their plain
  forms), then lowercase (optional, see `lowercase=`).
- Typographic apostrophes (U+2019, U+02BC, U+2018, U+0060, U+00B4) become "'" so "don’t" and
  "don't" are the same word.
- Punctuation (Unicode categories P*) and symbols (S*: "$", "+", "&", "▁", ...) are replaced by a
  SPACE, not deleted: "new-york" -> "new york", "a/b" -> "a b". Deleting would glue words
  together, which is the worse error for word-level scoring.
- An apostrophe is kept only inside a word, i.e. between two letters or digits ("o'clock",
  "don't"); leading/trailing ones ("'hello'", "james'") are removed.
- Control and format characters (C*: zero-width spaces, BOM, ...) are deleted; any whitespace
  becomes a single space; the result has no leading/trailing spaces.
The function is character-local apart from the apostrophe rule, so normalizing words one at a time
and joining them with spaces gives the same string as normalizing the joined text (the tokenizer's
`encode_words` relies on this).
"""
from __future__ import annotations

import unicodedata

__all__ = ["normalize_text"]

_APOSTROPHES = {"\u2019": "'", "\u02bc": "'", "\u2018": "'", "`": "'", "\u00b4": "'"}


def normalize_text(s: str, *, lowercase: bool = True) -> str:
    """Return `s` normalized for tokenization and scoring (see the module docstring for the rules).

    Args:
      s: any text.
      lowercase: lowercase after NFKC (True everywhere in jaxslu unless a tokenizer was trained
        with `lowercase=False`).
    """
    if not isinstance(s, str):
        raise TypeError(f"normalize_text expects a str, got {type(s).__name__}: {s!r}; decode "
                        "bytes first (e.g. b.decode('utf-8'))")
    s = unicodedata.normalize("NFKC", s)
    if lowercase:
        s = s.lower()
    chars: list[str] = []
    for ch in s:
        ch = _APOSTROPHES.get(ch, ch)
        if ch == "'":
            chars.append(ch)  # decided below, once the neighbours are known
            continue
        if ch.isspace():
            chars.append(" ")
            continue
        cat = unicodedata.category(ch)
        if cat[0] in "PS":
            chars.append(" ")
        elif cat[0] == "C":
            continue
        else:
            chars.append(ch)
    # Keep an apostrophe only between two word characters (letters, digits, combining marks).
    for i, ch in enumerate(chars):
        if ch == "'":
            left = chars[i - 1] if i > 0 else " "
            right = chars[i + 1] if i + 1 < len(chars) else " "
            if not (_is_word_char(left) and _is_word_char(right)):
                chars[i] = " "
    return " ".join("".join(chars).split())


def _is_word_char(ch: str) -> bool:
    return ch not in (" ", "'") and unicodedata.category(ch)[0] in "LNM"
