"""Recognizer-like word confusions from eSpeak NG's phoneme output.

A recognizer mistakes a word for another that sounds alike and that its language model knows:
here, for every word of a vocabulary (the request pool's words), the other vocabulary words whose
eSpeak NG phoneme strings (stress marks removed) are within a small edit distance: 1 for short
transcriptions, 2 for ones of at least `long_len` symbols. Candidates come from a symmetric-delete
index (every transcription and its one-symbol deletions share keys with all strings within
distance 2), then the exact Levenshtein distance decides, so the search is near linear in the
vocabulary instead of quadratic. Each word's confusions are ordered by (distance, word).
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Iterable

from jaxslu.text.metrics import edit_distance

_STRESS = str.maketrans("", "", "',")


def _deletes(s: str) -> set[str]:
    return {s} | {s[:i] + s[i + 1:] for i in range(len(s))}


def confusion_table(words: Iterable[str], transcriptions: dict[str, str] | None = None, *,
                    long_len: int = 6, min_len: int = 2) -> dict[str, list[str]]:
    """{word: [confusable words]} over `words` (phonemes from eSpeak NG unless given)."""
    vocab = sorted({w for w in words if w.isalpha()})
    if transcriptions is None:
        from jaxslu.audio.synth import phonemes

        transcriptions = dict(zip(vocab, phonemes(vocab)))
    ph = {w: transcriptions.get(w, "").translate(_STRESS).replace(" ", "") for w in vocab}
    keys: dict[str, set[str]] = defaultdict(set)
    for w in vocab:
        if len(ph[w]) >= min_len:
            for k in _deletes(ph[w]):
                keys[k].add(w)
    table: dict[str, list[str]] = {}
    for w in vocab:
        p = ph[w]
        if len(p) < min_len:
            continue
        cands: set[str] = set()
        for k in _deletes(p):
            cands |= keys.get(k, set())
        cands.discard(w)
        limit = 2 if len(p) >= long_len else 1
        scored = []
        for c in cands:
            if ph[c] == p:  # homophones ("weather" / "whether"): the likeliest confusion
                scored.append((0, c))
                continue
            d = edit_distance(p, ph[c])[0]
            if d <= limit:
                scored.append((d, c))
        if scored:
            table[w] = [c for _, c in sorted(scored)]
    return table


def save_table(path: str | Path, table: dict[str, list[str]]) -> None:
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(table, sort_keys=True))
    os.replace(tmp, path)


def load_table(path: str | Path) -> dict[str, list[str]]:
    return json.loads(Path(path).read_text())
