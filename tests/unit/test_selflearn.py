"""The self-learning simulator, its confusions, and the rephrase / failure-isolation tasks'
numerics (losses against numpy references, decoding, metrics)."""
from __future__ import annotations

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxslu.selflearn import confusions as C
from jaxslu.selflearn import simulator as S
from jaxslu.selflearn.isolation import class_ce_value, classification_report, turn_examples
from jaxslu.selflearn.rephrase import (decode_spans, detection_report, encode,
                                       rephrase_examples, span_ce_value, span_f1)
from jaxslu.selflearn.dialogue import WordAssets, CLS, SEP


class FakeSystem:
    """Right on 80% of the pool's texts (by a hash), 'general_quirky' on the rest and on
    anything it has not seen (misrecognized texts)."""

    def __init__(self):
        corpus = S.corpus_for(S.SimulatorConfig(num_users=1))
        self.truth = {q.text: (q.intent, q.slot_dicts()) for q in corpus.requests}
        self.calls = 0

    def interpret(self, texts):
        self.calls += 1
        out = []
        for t in texts:
            h = int(hashlib.sha1(t.encode()).hexdigest()[:4], 16) % 10
            if t in self.truth and h < 8:
                intent, slots = self.truth[t]
                out.append({"intent": intent, "slots": slots, "conf": 0.9})
            else:
                out.append({"intent": "general_quirky", "slots": [], "conf": 0.3})
        return out


@pytest.fixture(scope="module")
def sessions():
    cfg = S.SimulatorConfig(num_users=25, sessions_per_user=8, seed=3)
    return list(S.simulate(cfg, FakeSystem()))


def test_simulator_is_deterministic_and_round_trips(sessions, tmp_path):
    again = list(S.simulate(S.SimulatorConfig(num_users=25, sessions_per_user=8, seed=3),
                            FakeSystem()))
    assert again == sessions
    other = list(S.simulate(S.SimulatorConfig(num_users=25, sessions_per_user=8, seed=4),
                            FakeSystem()))
    assert other != sessions
    path = tmp_path / "log" / "sessions.jsonl.gz"
    assert S.write_sessions(path, sessions) == len(sessions)
    assert S.read_sessions(path.parent) == sessions
    assert S.read_sessions(path, split="heldout") == [s for s in sessions
                                                      if s["split"] == "heldout"]


def test_simulator_ground_truth_is_consistent(sessions):
    stats = S.log_stats(sessions)
    assert stats["sessions"] == len(sessions) > 100
    assert set(stats["failures"]) == set(S.FAILURES)
    assert stats["kinds"]["paraphrase"] + stats["kinds"]["correction"] > 0
    assert 0.0 < stats["defect_rate"] < 1.0
    days = [s["day"] for s in sessions]
    assert days == sorted(days)
    for s in sessions:
        assert (s["split"] == "heldout") == (s["day"] >= 24)
        for k, t in enumerate(s["turns"]):
            assert t["success"] == (t["failure"] == "correct")
            assert len(t["asr"].split()) == len(t["spoken"].split())
            if t["failure"] == "asr_error":
                assert t["asr"] != t["spoken"]
            if not t["directed"]:
                assert t["intended"] is None and t["failure"] == "false_wake"
                continue
            if t["rephrase_of"] >= 0:
                first = s["turns"][t["rephrase_of"]]
                assert t["rephrase_of"] < k and first["intended"] == t["intended"]
                a, b = t["rephrase_span"]
                assert 0 <= a < b <= len(t["asr"].split())
                if t["kind"] == "correction":  # "no i said" + the request's words
                    assert t["spoken"].split()[a:b] == t["intended"]["text"].split()
            if t["failure"] == "correct":
                assert t["signal"] in ("none", "thanks")


def test_judge_serves_the_intended_request():
    system = FakeSystem()
    judge = S.Judge(S.Interpreter(system))
    text, (intent, slots) = next((t, v) for t, v in system.truth.items()
                                 if system.interpret([t])[0]["intent"] != "general_quirky")
    turn = {"directed": True, "result_ok": True,
            "intended": {"intent": intent, "slots": slots, "text": text}}
    assert judge(text, turn)
    assert not judge(text + " zzz", turn)
    assert not judge(text, dict(turn, result_ok=False))
    assert not judge(text, {"directed": False, "intended": None})
    calls = system.calls
    judge(text, turn)
    assert system.calls == calls  # cached


def test_slot_value_resolution():
    ref = [{"type": "artist", "value": "imagine dragons"}]
    assert S.slot_values_match([{"type": "x", "value": "imagine dragons"}], ref)
    assert S.slot_values_match([{"type": "x", "value": "play imagine dragons"}], ref)
    assert S.slot_values_match([{"type": "x", "value": "dragons"}], ref)  # half the words
    assert not S.slot_values_match([{"type": "x", "value": "imagine dragon"}], ref)
    assert not S.slot_values_match([], ref)
    assert S.slot_values_match([{"type": "x", "value": "a"}], [])
    two = ref + [{"type": "date", "value": "today"}]
    assert not S.slot_values_match([{"type": "x", "value": "imagine dragons today"}], two)


def test_confusions_from_phonemes():
    trans = {"weather": "w'ED3", "whether": "w'ED3", "heather": "h'ED3", "sun": "s'Vn",
             "zebra": "z'i:br@"}
    table = C.confusion_table(trans, trans)
    assert table["weather"][0] == "whether"  # homophone first
    assert "heather" in table["weather"]
    assert "zebra" not in table and "sun" not in table
    real = C.confusion_table(["weather", "whether", "lights", "light", "zebra"])
    assert "whether" in real["weather"] and "light" in real["lights"]


def test_log_errors_name_the_line(tmp_path):
    bad = tmp_path / "s.jsonl"
    bad.write_text('{"session": "a", "user": "u", "day": 0, "split": "train", "turns": [{}]}\n')
    with pytest.raises(S.LogFormatError, match=r"s.jsonl:1: session 'a' turn 0 lacks"):
        S.read_sessions(bad)
    bad.write_text("not json\n")
    with pytest.raises(S.LogFormatError, match="s.jsonl:1: not JSON"):
        S.read_sessions(bad)
    with pytest.raises(FileNotFoundError, match="selflearn simulate"):
        S.read_sessions(tmp_path / "missing")


# ------------------------------------------------------------------------- rephrase detection
def _turn(asr, t, rephrase_of=-1, span=None, directed=True, failure="nlu_error"):
    return {"t": t, "directed": directed, "asr": asr, "rephrase_of": rephrase_of,
            "rephrase_span": span, "failure": failure}


def test_rephrase_examples_and_encoding():
    s = {"session": "s", "turns": [
        _turn("play imagine dragon", 0.0),
        _turn("no i said play imagine dragons", 6.0, 0, [3, 6]),
        _turn("what time is it", 100.0, -1, [0, 4], failure="correct")]}
    ex = rephrase_examples([s], max_gap=45.0)
    assert [e["has_rephrase"] for e in ex] == [True, False, False]
    assert ex[0]["target"] == (0, 3, 6) and len(ex[0]["candidates"]) == 1  # turn 2: beyond gap
    assert ex[1]["target"] is None and not ex[1]["candidates"]  # its goal has no later rephrase
    assets = WordAssets(sorted({w for t in s["turns"] for w in t["asr"].split()}))
    enc = encode(ex[0], assets, 64)
    toks = list(enc["tokens"])
    assert toks[0] == CLS and toks[4] == SEP
    words = [assets.words[i - 4] for i in toks[enc["start"]:enc["end"] + 1]]
    assert words == ["play", "imagine", "dragons"]
    assert enc["feats"][enc["start"]] % 2 == 1  # "play" is in the current turn
    assert encode(ex[2], assets, 64)["start"] == 0


def test_rephrase_truth_uses_the_goal():
    s = {"session": "s", "turns": [
        _turn("a b", 0.0), _turn("a c", 5.0, 0, [0, 2]), _turn("no a b", 10.0, 0, [1, 3])]}
    ex = rephrase_examples([s])
    # turn 1 restates turn 0's goal; turn 2 restates it again, so it is turn 1's rephrase too
    assert ex[0]["target"] == (0, 0, 2)
    assert ex[1]["target"] == (0, 1, 3)
    assert ex[2]["target"] is None and not ex[2]["has_rephrase"]


def test_decode_spans_and_metrics():
    L = 8
    seg = np.array([[0, 0, 0, 1, 1, 1, 2, 2]])
    start = np.full((1, L), -5.0)
    end = np.full((1, L), -5.0)
    start[0, 0], end[0, 0] = 0.0, 0.0
    start[0, 3], end[0, 5] = 4.0, 4.0
    end[0, 6] = 9.0  # a better end in another segment: not allowed
    start[0, 6] = -50.0
    end[0, 4] = 3.0
    assert decode_spans(start, end, seg, np.array([L]), 10) == [(3, 5)]
    assert decode_spans(start, end, seg, np.array([L]), 10, threshold=20.0) == [(0, 0)]
    assert decode_spans(start, end, seg, np.array([L]), 2) == [(3, 4)]
    assert span_f1((3, 5), (3, 5)) == 1.0
    assert span_f1((3, 4), (3, 5)) == pytest.approx(2 * 1.0 * (2 / 3) / (1 + 2 / 3))
    assert span_f1((0, 0), (3, 5)) == 0.0
    recs = [{"detected": True, "has_rephrase": True, "pred": [1, 2], "true": [1, 2],
             "span_f1": 1.0},
            {"detected": True, "has_rephrase": False, "pred": [1, 2], "true": [0, 0],
             "span_f1": 0.0},
            {"detected": False, "has_rephrase": True, "pred": [0, 0], "true": [3, 4],
             "span_f1": 0.0}]
    rep = detection_report(recs)
    assert rep["precision"] == 0.5 and rep["recall"] == 0.5 and rep["span_f1"] == 0.5


def _np_ce(logits, tgt):
    logits = logits.astype(np.float64)
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    return -logp[np.arange(len(tgt)), tgt]


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_span_ce_matches_numpy(dtype, tol):
    rng = np.random.default_rng(0)
    B, L = 5, 7
    s = rng.normal(size=(B, L)).astype(np.float32)
    e = rng.normal(size=(B, L)).astype(np.float32)
    lengths = np.array([7, 3, 5, 1, 4])
    pad = np.arange(L)[None] >= lengths[:, None]
    s[pad], e[pad] = -1e9, -1e9
    st, en = np.array([2, 0, 4, 0, 1]), np.array([3, 1, 4, 0, 3])
    w = np.array([1, 1, 1, 1, 0], np.float32)
    s_in = jnp.asarray(s).astype(dtype)
    e_in = jnp.asarray(e).astype(dtype)
    ref_s, ref_e = np.asarray(s_in.astype(jnp.float32)), np.asarray(e_in.astype(jnp.float32))
    ref = np.sum(0.5 * (_np_ce(ref_s, st) + _np_ce(ref_e, en)) * w) / w.sum()
    val, _ = span_ce_value(s_in, e_in, jnp.asarray(st), jnp.asarray(en), jnp.asarray(w))
    assert abs(float(val) - ref) < tol * max(1.0, abs(ref))
    g = jax.grad(lambda a: span_ce_value(a, e_in, jnp.asarray(st), jnp.asarray(en),
                                         jnp.asarray(w))[0])(s_in)
    p = np.exp(ref_s - ref_s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ref_g = 0.5 * (p - np.eye(L)[st]) * w[:, None] / w.sum()
    np.testing.assert_allclose(np.asarray(g.astype(jnp.float32)), ref_g, atol=tol)
    assert g.dtype == dtype


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_failure_ce_matches_numpy(dtype, tol):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 6)).astype(np.float32)
    label = np.array([0, 5, 2, -1, 3, 1])
    w = np.array([1, 1, 1, 1, 1, 0], np.float32)
    x = jnp.asarray(logits).astype(dtype)
    ref_x = np.asarray(x.astype(jnp.float32))
    valid = w * (label >= 0)
    ref = np.sum(_np_ce(ref_x, np.maximum(label, 0)) * valid) / valid.sum()
    val, m = class_ce_value(x, jnp.asarray(label), jnp.asarray(w))
    assert abs(float(val) - ref) < tol * max(1.0, ref)
    g = jax.grad(lambda a: class_ce_value(a, jnp.asarray(label), jnp.asarray(w))[0])(x)
    p = np.exp(ref_x - ref_x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ref_g = (p - np.eye(6)[np.maximum(label, 0)]) * valid[:, None] / valid.sum()
    np.testing.assert_allclose(np.asarray(g.astype(jnp.float32)), ref_g, atol=tol)


def test_classification_report_matches_sklearn():
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(2)
    true = [S.FAILURES[i] for i in rng.integers(0, 6, 300)]
    pred = [t if rng.random() < 0.6 else S.FAILURES[int(rng.integers(0, 6))] for t in true]
    rep = classification_report(true, pred)
    assert rep["accuracy"] == pytest.approx(accuracy_score(true, pred))
    ref = f1_score(true, pred, labels=list(S.FAILURES), average=None)
    np.testing.assert_allclose([rep["per_class_f1"][c] for c in S.FAILURES], ref, atol=1e-12)
    assert rep["macro_f1"] == pytest.approx(f1_score(true, pred, average="macro"))


def test_turn_examples_observe_only_what_the_assistant_sees(sessions):
    ex = turn_examples(sessions[:50])
    assert len(ex) == sum(len(s["turns"]) for s in sessions[:50])
    for e, t in zip(ex, [t for s in sessions[:50] for t in s["turns"]]):
        assert e["words"] == t["asr"].split()  # the recognizer's words, never the spoken ones
        assert e["failure"] == t["failure"]
        assert all(np.isfinite(e["features"]))


def test_balanced_failure_ce_weights_rare_classes():
    from jaxslu.selflearn.dialogue import WordAssets
    from jaxslu.selflearn.isolation import FailureIsolationTask
    from jaxslu.config import load_config

    cfg = load_config("configs/selflearn_isolation.py", "tiny")
    task = FailureIsolationTask(cfg)
    assets = WordAssets(["a"], list(S.FAILURES), [900, 0, 25, 50, 25, 0])
    w = np.asarray(task.constants(None, assets)["class_weights"])
    present = np.array([900, 0, 25, 50, 25, 0]) > 0
    assert w[~present].tolist() == [0.0, 0.0]
    assert w[present].mean() == pytest.approx(1.0)
    assert w[2] / w[0] == pytest.approx(np.sqrt(900 / 25))  # square-root inverse frequency
    logits = jnp.asarray(np.random.default_rng(3).normal(size=(4, 6)), jnp.float32)
    label = jnp.asarray([0, 2, 3, 0])
    val, _ = class_ce_value(logits, label, jnp.ones(4), jnp.asarray(w))
    ce = _np_ce(np.asarray(logits), np.asarray(label))
    cw = w[np.asarray(label)]
    assert float(val) == pytest.approx(float(np.sum(ce * cw) / np.sum(cw)), rel=1e-5)
