"""Tests for jaxslu.text.metrics: hand-worked WER/CER and SLURP SLU-F1 cases, and the numpy edit
distance against an independent plain-Python Levenshtein.

Tolerances: all expected values are exact rationals computed by hand; floats are compared with
pytest.approx(rel=1e-12), i.e. only float rounding is allowed.
"""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxslu.text.metrics import (breakdown, cer, edit_distance, edit_ops, entity_values,
                                 intent_accuracy, slu_f1, wer)


def approx(x):
    return pytest.approx(x, rel=1e-12, abs=1e-12)


def reference_levenshtein(a, b) -> int:
    """Textbook O(nm) double loop, written independently of the numpy row-scan version."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


# ---------------------------------------------------------------------------------------------
# Edit distance
# ---------------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=9), st.lists(st.integers(0, 3), max_size=9))
def test_edit_distance_matches_reference(a, b):
    errors, ref_len = edit_distance(a, b)
    assert errors == reference_levenshtein(a, b)
    assert ref_len == len(a)
    s, d, i = edit_ops(a, b)
    assert s + d + i == errors
    # hits + S + D = len(ref) and hits + S + I = len(hyp), so D - I = len(ref) - len(hyp)
    assert d - i == len(a) - len(b)


def test_edit_distance_hashable_items_and_strings():
    assert edit_distance(["the", "cat"], ["the", "hat"]) == (1, 2)
    assert edit_distance("kitten", "sitting") == (3, 6)
    assert edit_distance([("a", 1), None], [None]) == (1, 2)
    assert edit_distance([], ["x", "y"]) == (2, 0)


# ---------------------------------------------------------------------------------------------
# WER / CER
# ---------------------------------------------------------------------------------------------


def test_wer_substitution_insertion_deletion():
    r = wer(["the cat sat"], ["the bat sat"])
    assert (r.substitutions, r.deletions, r.insertions, r.ref_len) == (1, 0, 0, 3)
    assert r.rate == approx(1 / 3)
    r = wer(["the cat sat"], ["the cat sat down"])
    assert (r.substitutions, r.deletions, r.insertions) == (0, 0, 1)
    assert r.rate == approx(1 / 3)
    r = wer(["the cat sat"], ["the sat"])
    assert (r.substitutions, r.deletions, r.insertions) == (0, 1, 0)
    # "a b" -> "c": one substitution and one deletion under the documented tie-breaking
    r = wer(["a b"], ["c"])
    assert (r.substitutions, r.deletions, r.insertions) == (1, 1, 0)


def test_wer_empty_hypothesis_and_empty_reference():
    r = wer(["the cat sat"], [""])
    assert (r.deletions, r.errors, r.rate) == (3, 3, 1.0)
    # An empty reference inside a corpus contributes insertions and no length.
    r = wer(["", "a b"], ["x y", "a b"])
    assert (r.insertions, r.ref_len, r.utterances) == (2, 2, 2)
    assert r.rate == approx(1.0)
    # A corpus with no reference words: 0 if nothing was hypothesized, else inf (documented).
    assert wer([""], [""]).rate == 0.0
    assert math.isinf(wer([""], ["hello"]).rate)


def test_wer_is_corpus_level_and_normalizes():
    # 1 error over 5 reference words = 0.2 (a mean of per-utterance rates would give 0.5).
    r = wer(["a", "b c d e"], ["x", "b c d e"])
    assert r.rate == approx(0.2)
    assert wer(["Hello, World!"], ["hello world"]).rate == 0.0
    assert wer(["Hello, World!"], ["hello world"], normalize=False).errors == 2


def test_cer_hand_examples():
    r = cer(["abc"], ["abd"])
    assert (r.substitutions, r.ref_len) == (1, 3)
    assert r.rate == approx(1 / 3)
    # the space is a character: "ab cd" -> "abcd" is one deletion out of 5
    r = cer(["ab cd"], ["abcd"])
    assert (r.deletions, r.ref_len) == (1, 5)
    assert r.rate == approx(0.2)
    assert cer(["hi"], [""]).rate == 1.0


def test_wer_bad_input():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        wer(["a", "b"], ["a"])
    with pytest.raises(TypeError, match="lists of utterances"):
        wer("a b", "a b")
    with pytest.raises(TypeError, match="utterance 0"):
        wer([None], ["a"])


def test_intent_accuracy():
    assert intent_accuracy(["a", "b", None, "c"], ["a", "x", "a", "c"]) == approx(2 / 3)
    assert math.isnan(intent_accuracy([None], ["a"]))


# ---------------------------------------------------------------------------------------------
# SLU-F1 (SLURP)
# ---------------------------------------------------------------------------------------------


def test_slu_f1_exact_match_is_one():
    res = slu_f1([[("date", "monday"), ("time", "five pm")]],
                 [[("time", "five pm"), ("date", "monday")]])
    assert (res.span_f1, res.word_f1, res.char_f1, res.slu_f1) == (1.0, 1.0, 1.0, 1.0)


def test_slu_f1_wrong_type_is_zero():
    res = slu_f1([[("date", "monday")]], [[("time", "monday")]])
    assert (res.span_f1, res.word_f1, res.char_f1, res.slu_f1) == (0.0, 0.0, 0.0, 0.0)
    assert (res.word.tp, res.word.fp, res.word.fn) == (0, 1, 1)


def test_slu_f1_partial_value_gets_partial_credit():
    res = slu_f1([[("place_name", "new york city")]], [[("place_name", "new york")]])
    # word distance = 1 deleted word / 3 gold words: TP 1, FP 1/3, FN 1/3 -> P = R = F1 = 3/4
    assert (res.word.tp, res.word.fp, res.word.fn) == (1, approx(1 / 3), approx(1 / 3))
    assert res.word_f1 == approx(0.75)
    # char distance = 5 (" city") / max(13, 8): P = R = 1 / (1 + 5/13) = 13/18
    assert res.char_f1 == approx(13 / 18)
    # SLU-F1 sums the counts: TP 2, FP = FN = 1/3 + 5/13 = 28/39 -> 2 / (2 + 28/39) = 39/53
    assert res.slu_f1 == approx(39 / 53)
    assert res.span_f1 == 0.0  # not an exact match
    # A prediction longer than the gold: char distance is normalized by the LONGER string,
    # 5 edits / len("afternoon") = 5/9 -> P = 1 / (1 + 5/9) = 9/14; word distance 1/1 -> 1/2.
    res = slu_f1([[("time", "noon")]], [[("time", "afternoon")]])
    assert res.char_f1 == approx(9 / 14)
    assert res.word_f1 == approx(0.5)


def test_slu_f1_missing_entity_lowers_recall():
    res = slu_f1([[("date", "monday"), ("time", "five pm")]], [[("date", "monday")]])
    for prf in (res.span, res.word, res.char, res.slu):
        assert prf.precision == approx(1.0)
        assert prf.recall == approx(0.5)
        assert prf.f1 == approx(2 / 3)


def test_slu_f1_extra_entity_lowers_precision():
    res = slu_f1([[("date", "monday")]], [[("date", "monday"), ("time", "noon")]])
    for prf in (res.span, res.word, res.char, res.slu):
        assert prf.precision == approx(0.5)
        assert prf.recall == approx(1.0)
        assert prf.f1 == approx(2 / 3)


def test_slu_f1_matches_the_closest_gold_of_the_type():
    # "bob" must match gold "bob" (distance 0), leaving "anna" as the only miss.
    res = slu_f1([[("person", "anna"), ("person", "bob")]], [[("person", "bob")]])
    assert (res.word.tp, res.word.fp, res.word.fn) == (1, 0, 1)
    assert (res.char.tp, res.char.fp, res.char.fn) == (1, 0, 1)


def test_slu_f1_word_distance_is_not_clipped():
    # SLURP uses the value's WER, which can exceed 1: 2 inserted words / 1 gold word = 2.
    res = slu_f1([[("x", "a")]], [[("x", "a b c")]])
    assert (res.word.tp, res.word.fp, res.word.fn) == (1, 2, 2)
    assert res.word_f1 == approx(1 / 3)


def test_slu_f1_micro_average_over_utterances_and_formats():
    gold = [[("date", "monday")], [], [{"type": "time", "filler": "noon"}]]
    pred = [[("date", "monday")], [("time", "now")], [{"type": "time", "filler": "noon"}]]
    res = slu_f1(gold, pred)
    # span: TP 2, FP 1 (the extra "now"), FN 0 -> P 2/3, R 1, F1 0.8
    assert res.span.precision == approx(2 / 3)
    assert res.span_f1 == approx(0.8)
    assert res.as_dict()["slu_f1"] == approx(0.8)
    with pytest.raises(ValueError, match="not a \\(type, value\\) pair"):
        slu_f1([[("a", "b", "c")]], [[]])


def test_entity_values():
    ents = entity_values("set an alarm for five pm", [{"type": "time", "start": 4, "end": 6}])
    assert ents == [("time", "five pm")]
    with pytest.raises(ValueError, match="has 2 words"):
        entity_values("two words", [{"type": "x", "start": 1, "end": 3}])


# ---------------------------------------------------------------------------------------------
# Breakdown
# ---------------------------------------------------------------------------------------------


def test_breakdown_per_speaker():
    records = [
        dict(ref="a b", hyp="a b", intent_ref="x", intent_hyp="x", entities_ref=[("t", "a")],
             entities_hyp=[("t", "a")], speaker="s1", accent="uk"),
        dict(ref="a b c d", hyp="a c d", intent_ref="x", intent_hyp="y", entities_ref=[],
             entities_hyp=[], speaker="s2", accent=None),
        dict(ref="e f", hyp="e g", intent_ref="z", intent_hyp="z", entities_ref=[("t", "f")],
             entities_hyp=[("t", "g")], speaker="s2", accent="uk"),
    ]
    out = breakdown(records, "speaker")
    assert sorted(out) == ["s1", "s2"]
    assert out["s1"]["count"] == 1 and out["s2"]["count"] == 2
    assert out["s1"]["wer"]["rate"] == 0.0
    # s2: 1 deletion + 1 substitution over 6 reference words
    assert out["s2"]["wer"]["rate"] == approx(2 / 6)
    assert out["s2"]["intent_accuracy"] == approx(0.5)
    assert out["s2"]["entities"]["span_f1"] == 0.0
    assert out["s1"]["entities"]["slu_f1"] == 1.0
    by_accent = breakdown(records, "accent", {"n_words": lambda rs: sum(len(r["ref"].split())
                                                                        for r in rs)})
    assert by_accent == {"uk": {"count": 2, "n_words": 4}, "unknown": {"count": 1, "n_words": 4}}
    with pytest.raises(KeyError, match="no field 'age'"):
        breakdown(records, "age")
