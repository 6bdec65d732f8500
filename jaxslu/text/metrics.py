"""Evaluation metrics: edit distance, corpus WER/CER, intent accuracy, SLURP's SLU-F1, breakdowns.

All error rates are CORPUS level: total edits over all utterances divided by the total reference
length (not a mean of per-utterance rates, which would overweight short utterances).

Entity metrics follow the SLURP evaluation scripts (Bastianelli et al., EMNLP 2020,
github.com/pswietojanski/slurp, scripts/evaluation/metrics/{metrics,distance}.py), micro-averaged
over all entity types; see `slu_f1` for the exact definition.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np

from jaxslu.text.normalize import normalize_text

__all__ = [
    "edit_distance", "edit_ops", "ErrorRate", "wer", "cer", "intent_accuracy", "PRF", "SluF1",
    "slu_f1", "entity_values", "breakdown", "DEFAULT_METRICS", "summary", "grouped_summary",
]

Entity = tuple[str, str]  # (type, value text)


# ------------------------------------------------------------------------------------------------
# Edit distance
# ------------------------------------------------------------------------------------------------


def _dp_table(ref: Sequence[Hashable], hyp: Sequence[Hashable]) -> tuple[np.ndarray, np.ndarray,
                                                                          np.ndarray]:
    """Full Levenshtein table D[i, j] = distance(ref[:i], hyp[:j]), plus the items as int ids.

    Rows are computed with numpy: substitutions/deletions from the previous row elementwise, then
    insertions (a left-to-right dependency) as a prefix minimum,
    D[i, j] = min_k<=j (cand[k] + j - k) = j + cummin(cand[k] - k).
    """
    vocab: dict[Hashable, int] = {}
    r = np.array([vocab.setdefault(x, len(vocab)) for x in ref], dtype=np.int64)
    h = np.array([vocab.setdefault(x, len(vocab)) for x in hyp], dtype=np.int64)
    n, m = len(r), len(h)
    table = np.empty((n + 1, m + 1), dtype=np.int64)
    cols = np.arange(m + 1, dtype=np.int64)
    table[0] = cols
    for i in range(1, n + 1):
        prev = table[i - 1]
        cand = np.empty(m + 1, dtype=np.int64)
        cand[0] = i
        cand[1:] = np.minimum(prev[:-1] + (h != r[i - 1]), prev[1:] + 1)
        table[i] = cols + np.minimum.accumulate(cand - cols)
    return table, r, h


def edit_distance(ref_seq: Sequence[Hashable], hyp_seq: Sequence[Hashable]) -> tuple[int, int]:
    """Levenshtein distance between two sequences of hashable items: (errors, len(ref_seq)).

    Substitutions, deletions and insertions each cost 1. A str is a sequence of characters.
    """
    table, _, _ = _dp_table(ref_seq, hyp_seq)
    return int(table[-1, -1]), len(ref_seq)


def edit_ops(ref_seq: Sequence[Hashable], hyp_seq: Sequence[Hashable]) -> tuple[int, int, int]:
    """(substitutions, deletions, insertions) of one minimum-cost alignment.

    Several alignments can have the same minimum cost; the backtrace (from the end) prefers a
    match/substitution, then a deletion, then an insertion, so e.g. ref "a b" vs hyp "c" counts as
    1 substitution + 1 deletion. The sum always equals `edit_distance`.
    """
    table, r, h = _dp_table(ref_seq, hyp_seq)
    i, j = len(r), len(h)
    sub = dele = ins = 0
    while i > 0 or j > 0:
        if i > 0 and j > 0:
            cost = int(r[i - 1] != h[j - 1])
            if table[i, j] == table[i - 1, j - 1] + cost:
                sub += cost
                i, j = i - 1, j - 1
                continue
        if i > 0 and table[i, j] == table[i - 1, j] + 1:
            dele += 1
            i -= 1
        else:
            ins += 1
            j -= 1
    return sub, dele, ins


@dataclasses.dataclass(frozen=True)
class ErrorRate:
    """Corpus-level error counts. `rate` = errors / ref_len.

    Empty references: an utterance with an empty reference adds its hypothesis length as
    insertions and 0 to `ref_len`. If the WHOLE corpus has ref_len 0, `rate` is 0.0 when there
    are no errors and +inf otherwise (undefined as a ratio; inf keeps it from looking good).
    """

    substitutions: int
    deletions: int
    insertions: int
    ref_len: int
    utterances: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        if self.ref_len == 0:
            return 0.0 if self.errors == 0 else math.inf
        return self.errors / self.ref_len

    def as_dict(self) -> dict[str, float | int]:
        return {"rate": self.rate, "errors": self.errors, "substitutions": self.substitutions,
                "deletions": self.deletions, "insertions": self.insertions,
                "ref_len": self.ref_len, "utterances": self.utterances}


def _check_pairs(refs: Sequence[Any], hyps: Sequence[Any], what: str) -> None:
    if isinstance(refs, str) or isinstance(hyps, str):
        raise TypeError(f"{what} expects lists of utterances (refs, hyps), got a str; wrap a "
                        "single utterance in a list")
    if len(refs) != len(hyps):
        raise ValueError(f"{what}: {len(refs)} references but {len(hyps)} hypotheses; pass one "
                         "hypothesis per reference, in the same order")


def _error_rate(refs: Sequence[str], hyps: Sequence[str], split: Callable[[str], Sequence[str]],
                normalize: bool, what: str) -> ErrorRate:
    _check_pairs(refs, hyps, what)
    sub = dele = ins = ref_len = 0
    for k, (ref, hyp) in enumerate(zip(refs, hyps)):
        if not isinstance(ref, str) or not isinstance(hyp, str):
            raise TypeError(f"{what}: utterance {k} has ref {type(ref).__name__} and hyp "
                            f"{type(hyp).__name__}; both must be str (use '' for nothing)")
        if normalize:
            ref, hyp = normalize_text(ref), normalize_text(hyp)
        r, h = split(ref), split(hyp)
        s, d, i = edit_ops(r, h)
        sub, dele, ins, ref_len = sub + s, dele + d, ins + i, ref_len + len(r)
    return ErrorRate(sub, dele, ins, ref_len, len(refs))


def wer(refs: Sequence[str], hyps: Sequence[str], *, normalize: bool = True) -> ErrorRate:
    """Corpus word error rate; words are the whitespace-separated tokens of each text.

    With `normalize=True` both sides first go through `normalize_text`.
    """
    return _error_rate(refs, hyps, str.split, normalize, "wer")


def cer(refs: Sequence[str], hyps: Sequence[str], *, normalize: bool = True) -> ErrorRate:
    """Corpus character error rate over the (normalized) text, SPACES INCLUDED.

    Counting the single space between words means a wrong word boundary ("note book" vs
    "notebook") is one error, as it is for the char tokenizer's boundary token.
    """
    return _error_rate(refs, hyps, list, normalize, "cer")


def intent_accuracy(refs: Sequence[str | None], hyps: Sequence[str | None]) -> float:
    """Fraction of utterances whose predicted intent equals the reference intent.

    Utterances with no reference intent (None) are not scored; NaN if none is scored.
    """
    _check_pairs(refs, hyps, "intent_accuracy")
    scored = [(r, h) for r, h in zip(refs, hyps) if r is not None]
    if not scored:
        return math.nan
    return sum(r == h for r, h in scored) / len(scored)


# ------------------------------------------------------------------------------------------------
# SLURP SLU-F1
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PRF:
    """Accumulated (possibly fractional) true/false positives and false negatives.

    precision = tp / (tp + fp), recall = tp / (tp + fn), f1 their harmonic mean; each is 0.0 when
    its denominator is 0 (as in SLURP's `compute_metrics`).
    """

    tp: float
    fp: float
    fn: float

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp > 0 else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn > 0 else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else 0.0

    def __add__(self, other: "PRF") -> "PRF":
        return PRF(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    def as_dict(self) -> dict[str, float]:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1,
                "tp": self.tp, "fp": self.fp, "fn": self.fn}


@dataclasses.dataclass(frozen=True)
class SluF1:
    """Entity scores of `slu_f1`: exact span F1, word- and char-distance F1, and SLU-F1."""

    span: PRF
    word: PRF
    char: PRF

    @property
    def slu(self) -> PRF:
        return self.word + self.char

    @property
    def span_f1(self) -> float:
        return self.span.f1

    @property
    def word_f1(self) -> float:
        return self.word.f1

    @property
    def char_f1(self) -> float:
        return self.char.f1

    @property
    def slu_f1(self) -> float:
        return self.slu.f1

    def as_dict(self) -> dict[str, float]:
        return {"span_f1": self.span_f1, "word_f1": self.word_f1, "char_f1": self.char_f1,
                "slu_f1": self.slu_f1, "slu_precision": self.slu.precision,
                "slu_recall": self.slu.recall}


def _word_distance(gold: str, pred: str) -> float:
    """SLURP's word distance: the WER of `pred` against `gold` (NOT clipped: can exceed 1)."""
    g, p = gold.split(), pred.split()
    if not g:
        return 0.0 if not p else 1.0
    return edit_distance(g, p)[0] / len(g)


def _char_distance(gold: str, pred: str) -> float:
    """SLURP's char distance: Levenshtein / max(len(gold), len(pred)), in [0, 1]."""
    longest = max(len(gold), len(pred))
    return edit_distance(gold, pred)[0] / longest if longest else 0.0


def _as_entities(entities: Sequence[Any], where: str) -> list[Entity]:
    out = []
    for e in entities:
        if isinstance(e, Mapping):
            if "type" not in e or ("filler" not in e and "value" not in e):
                raise ValueError(f"{where}: entity {e!r} needs 'type' and 'filler' (or 'value')")
            out.append((str(e["type"]), str(e.get("filler", e.get("value")))))
        elif isinstance(e, (tuple, list)) and len(e) == 2:
            out.append((str(e[0]), str(e[1])))
        else:
            raise ValueError(f"{where}: entity {e!r} is not a (type, value) pair; convert word "
                             "spans with jaxslu.text.metrics.entity_values(text, entities)")
    return out


def _distance_counts(gold: list[Entity], pred: list[Entity],
                     distance: Callable[[str, str], float]) -> PRF:
    """SLURP's SpanDistanceFMeasure for one utterance (see `slu_f1`)."""
    tp = fp = fn = 0.0
    remaining = list(gold)
    for ptype, pvalue in pred:
        best, best_d = -1, math.inf
        for k, (gtype, gvalue) in enumerate(remaining):
            if gtype == ptype:
                d = distance(gvalue, pvalue)
                if d < best_d:
                    best, best_d = k, d
        if best < 0:
            fp += 1
        else:
            tp += 1
            fp += best_d
            fn += best_d
            remaining.pop(best)
    fn += len(remaining)
    return PRF(tp, fp, fn)


def _span_counts(gold: list[Entity], pred: list[Entity]) -> PRF:
    tp = fp = 0
    remaining = list(gold)
    for ent in pred:
        if ent in remaining:
            tp += 1
            remaining.remove(ent)
        else:
            fp += 1
    return PRF(tp, fp, len(remaining))


def slu_f1(gold_entities_per_utt: Sequence[Sequence[Any]],
           pred_entities_per_utt: Sequence[Sequence[Any]]) -> SluF1:
    """SLURP's entity metrics over a corpus; entities are (type, value text) pairs per utterance.

    Values are compared as given (pass normalized text; word distance splits on whitespace).
    SLURP's {"type": ..., "filler": ...} dicts are accepted too. Definition (SLURP scripts,
    micro-averaged over types):

    - Span F1 (exact): a prediction is a TP if an identical (type, value) is still unmatched in
      the gold list (it is then removed), else an FP; gold left unmatched are FNs.
    - Distance F1 for a distance d in [word, char]: for each predicted entity in order, if a gold
      entity of the SAME TYPE is still unmatched, take the one with the lowest d(gold, pred)
      (first on ties), remove it, and add TP += 1, FP += d, FN += d; otherwise FP += 1. Each
      unmatched gold entity adds FN += 1. So a wrong type costs a full FP and a full FN, an exact
      value is a clean TP, and a partly right value is a TP with fractional FP/FN.
        word d = word-level edit distance / number of gold words (the WER of the value; not
                 clipped, so a value with many inserted words can cost more than 1)
        char d = character edit distance / max(len(gold), len(pred))
      precision = TP / (TP + FP), recall = TP / (TP + FN), F1 harmonic mean (0 if undefined).
    - SLU-F1: the F1 of the SUMMED word and char counts (TP_w + TP_c, FP_w + FP_c, FN_w + FN_c).
    Returns a `SluF1` (span_f1, word_f1, char_f1, slu_f1 and the counts).
    """
    _check_pairs(gold_entities_per_utt, pred_entities_per_utt, "slu_f1")
    span = word = char = PRF(0.0, 0.0, 0.0)
    for k, (g, p) in enumerate(zip(gold_entities_per_utt, pred_entities_per_utt)):
        gold = _as_entities(g, f"slu_f1 gold utterance {k}")
        pred = _as_entities(p, f"slu_f1 predicted utterance {k}")
        span += _span_counts(gold, pred)
        word += _distance_counts(gold, pred, _word_distance)
        char += _distance_counts(gold, pred, _char_distance)
    return SluF1(span, word, char)


def entity_values(text: str, entities: Sequence[Mapping[str, Any]]) -> list[Entity]:
    """Word-span entities ({"type", "start", "end"}, [start, end) of text.split()) -> pairs."""
    words = text.split()
    out = []
    for e in entities:
        start, end = int(e["start"]), int(e["end"])
        if not 0 <= start < end <= len(words):
            raise ValueError(f"entity {dict(e)!r} spans words [{start}, {end}) but the text "
                             f"{text!r} has {len(words)} words")
        out.append((str(e["type"]), " ".join(words[start:end])))
    return out


# ------------------------------------------------------------------------------------------------
# Breakdowns
# ------------------------------------------------------------------------------------------------

MetricFn = Callable[[Sequence[Mapping[str, Any]]], Any]

# name -> (record fields needed, fn(records) -> JSON-friendly value)
DEFAULT_METRICS: dict[str, tuple[tuple[str, ...], MetricFn]] = {
    "wer": (("ref", "hyp"),
            lambda rs: wer([r["ref"] for r in rs], [r["hyp"] for r in rs]).as_dict()),
    "cer": (("ref", "hyp"),
            lambda rs: cer([r["ref"] for r in rs], [r["hyp"] for r in rs]).as_dict()),
    "intent_accuracy": (("intent_ref", "intent_hyp"),
                        lambda rs: intent_accuracy([r["intent_ref"] for r in rs],
                                                   [r["intent_hyp"] for r in rs])),
    "entities": (("entities_ref", "entities_hyp"),
                 lambda rs: slu_f1([r["entities_ref"] for r in rs],
                                   [r["entities_hyp"] for r in rs]).as_dict()),
}


def summary(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The flat metrics of a list of records (what a report prints): `num_examples`, and for the
    fields every record has: wer, cer (rates) with `wer_detail`, intent_accuracy, and the
    SLU-F1 family (span_f1, word_f1, char_f1, slu_f1, precision, recall)."""
    out: dict[str, Any] = {"num_examples": len(records)}
    if not records:
        return out
    has = lambda *fields: all(f in r for r in records for f in fields)
    if has("ref", "hyp"):
        w = wer([r["ref"] for r in records], [r["hyp"] for r in records])
        out["wer"] = w.rate
        out["cer"] = cer([r["ref"] for r in records], [r["hyp"] for r in records]).rate
        out["wer_detail"] = w.as_dict()
    with_intent = [r for r in records if r.get("intent_ref") is not None and "intent_hyp" in r]
    if with_intent:
        out["intent_accuracy"] = intent_accuracy([r["intent_ref"] for r in with_intent],
                                                 [r["intent_hyp"] for r in with_intent])
    if any("entities_ref" in r for r in records):
        out.update(slu_f1([r.get("entities_ref", []) for r in records],
                          [r.get("entities_hyp", []) for r in records]).as_dict())
    return out


def grouped_summary(records: Sequence[Mapping[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    """`summary` per group of `key` (via `breakdown`), for the per-speaker/-accent reports."""
    groups = breakdown(records, key, {"summary": summary})
    return {g: m["summary"] for g, m in groups.items()}


def breakdown(records: Sequence[Mapping[str, Any]], key: str | Callable[[Mapping[str, Any]], Any],
              metric_fns: Mapping[str, MetricFn] | None = None) -> dict[str, dict[str, Any]]:
    """Metrics per group of records, e.g. per speaker or per accent.

    Args:
      records: one dict per utterance with (some of) ref, hyp, intent_ref, intent_hyp,
        entities_ref, entities_hyp, and grouping fields.
      key: the grouping field name, or a function record -> group. Groups are keyed by
        `str(value)`; a None value goes to group "unknown". A record without the field is an error.
      metric_fns: name -> fn(list of records) -> value. Default: the `DEFAULT_METRICS` whose
        fields every record has (wer, cer, intent_accuracy, entities = `SluF1.as_dict()`).
    Returns {group: {"count": number of records, name: value, ...}}, groups sorted by name.
    """
    if metric_fns is None:
        metric_fns = {name: fn for name, (fields, fn) in DEFAULT_METRICS.items()
                      if all(f in r for r in records for f in fields)}
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for k, rec in enumerate(records):
        if callable(key):
            value = key(rec)
        else:
            if key not in rec:
                raise KeyError(f"breakdown: record {k} has no field {key!r} (fields: "
                               f"{sorted(rec)}); add it or group by another key")
            value = rec[key]
        groups.setdefault("unknown" if value is None else str(value), []).append(rec)
    out = {}
    for name in sorted(groups):
        recs = groups[name]
        out[name] = {"count": len(recs), **{m: fn(recs) for m, fn in metric_fns.items()}}
    return out
