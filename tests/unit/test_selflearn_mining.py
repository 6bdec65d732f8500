"""Rewrite mining with an absorbing Markov chain (jaxslu.selflearn.mining)."""
from __future__ import annotations

import json
from fractions import Fraction as F

import numpy as np
import pytest
import scipy.sparse as sp

from jaxslu.selflearn import mining
from jaxslu.selflearn.mining import (AbsorbingChain, Rewrite, build_chain, evaluate_rewrites,
                                     mine_rewrites, read_rewrites, write_rewrites)

A, B_, C = "play imagine dragon", "play imagine dragons", "play the imagine dragons"


def turn(t: float, asr: str, signal: str, *, success: bool = False) -> dict:
    return {"t": float(t), "directed": True, "asr": asr, "signal": signal, "success": success}


def false_wake(t: float) -> dict:
    return {"t": float(t), "directed": False, "intended": None, "asr": "", "signal": "none",
            "success": False}


def session(sid: str, *turns: dict) -> dict:
    return {"session": sid, "user": "u0", "day": 0, "split": "train", "turns": list(turns)}


def hand_sessions() -> list[dict]:
    return [
        session("s1", turn(0, A, "rephrase"), turn(5, B_, "thanks")),       # a->b, b->S
        session("s2", turn(0, A, "barge_in"), turn(3, C, "none")),          # a->c, c->S
        session("s3", turn(0, A, "abandon")),                               # a->F
        session("s4", turn(0, B_, "rephrase"), turn(4, A, "abandon")),      # b->a, a->F
        session("s5", turn(0, C, "rephrase"), turn(6, C, "thanks")),        # c->c, c->S
        session("s6", turn(0, C, "barge_in")),                              # c->F (no next)
        session("s7", turn(0, A, "rephrase"), false_wake(2),                # false wake skipped:
                turn(4, "  play  imagine   dragons ", "none")),             # a->b, b->S
        session("s8", turn(0, B_, "rephrase"), turn(100, C, "none")),       # gap: b->F, c->S
    ]


# Hand derivation (states sorted: a < b < c).
#   a: 5 visits: ->b 2 (s1, s7), ->c 1 (s2), ->F 2 (s3, s4)
#   b: 4 visits: ->S 2 (s1, s7), ->a 1 (s4), ->F 1 (s8)
#   c: 5 visits: ->S 3 (s2, s5, s8), ->c 1 (s5), ->F 1 (s6)
#   Q = [[0, 2/5, 1/5], [1/4, 0, 0], [0, 0, 1/5]],  R = [[0, 2/5], [1/2, 1/4], [3/5, 1/5]]
#   I - Q = [[M, v], [0, 4/5]] with M = [[1, -2/5], [-1/4, 1]] (det 9/10), v = (-1/5, 0):
#   M^-1 = 10/9 [[1, 2/5], [1/4, 1]] = [[10/9, 4/9], [5/18, 10/9]];
#   last column of N = M^-1 (1/5, 0) * 5/4 = (2/9, 1/18) * 5/4 = (5/18, 5/72), N[c, c] = 5/4.
N_HAND = [[F(10, 9), F(4, 9), F(5, 18)],
          [F(5, 18), F(10, 9), F(5, 72)],
          [F(0), F(0), F(5, 4)]]
#   B = N R:  a_S = 4/9 * 1/2 + 5/18 * 3/5 = 7/18;  b_S = 10/9 * 1/2 + 5/72 * 3/5 = 43/72;
#   c_S = 5/4 * 3/5 = 3/4 (and F = 1 - S: check a_F = 10/9 * 2/5 + 4/9 * 1/4 + 5/18 * 1/5 = 11/18).
B_HAND = [[F(7, 18), F(11, 18)], [F(43, 72), F(29, 72)], [F(3, 4), F(1, 4)]]
#   reach: a->b = N[a,b]/N[b,b] = (4/9)/(10/9) = 2/5 (only the direct step);
#   a->c = (5/18)/(5/4) = 2/9 = 1/5 / (1 - 2/5 * 1/4) (direct, or via b->a loops);
#   b->a = (5/18)/(10/9) = 1/4;  b->c = (5/72)/(5/4) = 1/18 = 1/4 * 2/9;  c reaches nothing.
REACH_HAND = [[1, F(2, 5), F(2, 9)], [F(1, 4), 1, F(1, 18)], [0, 0, 1]]


def as_float(m) -> np.ndarray:
    return np.array([[float(x) for x in row] for row in m])


def test_hand_computed_chain():
    chain = build_chain(hand_sessions())
    assert chain.states == [A, B_, C]
    assert chain.index == {A: 0, B_: 1, C: 2}
    np.testing.assert_array_equal(chain.counts.toarray(), [[0, 2, 1], [1, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(chain.absorb_counts, [[0, 2], [2, 1], [3, 1]])
    np.testing.assert_array_equal(chain.visits, [5, 4, 5])
    assert sp.issparse(chain.Q) and chain.Q.format == "csr"
    np.testing.assert_allclose(chain.Q.toarray(), [[0, .4, .2], [.25, 0, 0], [0, 0, .2]],
                               atol=1e-15)
    b = chain.absorption()
    np.testing.assert_allclose(b, as_float(B_HAND), rtol=0, atol=1e-12)
    assert chain.absorption() is b  # cached
    for s in range(3):
        np.testing.assert_allclose(chain.expected_visits(s), as_float(N_HAND)[s], rtol=0,
                                   atol=1e-12)
        np.testing.assert_allclose(chain.reach_probability(s), as_float(REACH_HAND)[s],
                                   rtol=0, atol=1e-12)
    h = chain.reach_probability(0, targets=[2])
    assert np.isnan(h[1]) and h[2] == pytest.approx(2 / 9, abs=1e-12)
    assert chain.successors(1, 1) == [0]
    assert chain.successors(1, 2) == [0, 2]
    assert chain.successors(2, 3) == []  # only a self-loop


def test_min_count_censors_rare_states():
    rare = "play imagine drag on"
    sessions = hand_sessions() + [
        session("r1", turn(0, A, "rephrase"), turn(2, rare, "rephrase"), turn(4, B_, "thanks")),
        session("r2", turn(0, C, "rephrase"), turn(2, rare, "abandon")),
    ]
    full = build_chain(sessions)
    assert rare in full.index and full.visits[full.index[rare]] == 2
    chain = build_chain(sessions, min_count=3)
    assert chain.states == [A, B_, C]
    # r1: a -> (rare) -> b counts a->b, b->S; r2: c -> (rare) -> FAILURE counts c->F.
    np.testing.assert_array_equal(chain.counts.toarray(), [[0, 3, 1], [1, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(chain.absorb_counts, [[0, 2], [3, 1], [3, 2]])
    np.testing.assert_array_equal(chain.visits, [6, 5, 6])
    totals = np.asarray(chain.counts.sum(axis=1)).ravel() + chain.absorb_counts.sum(axis=1)
    np.testing.assert_array_equal(totals, chain.visits)
    # Visits of kept states do not change with pruning.
    np.testing.assert_array_equal(chain.visits, [full.visits[full.index[s]] for s in chain.states])
    # Everything dropped: an empty chain.
    empty = build_chain(sessions, min_count=100)
    assert empty.states == [] and empty.absorption().shape == (0, 2)
    assert mine_rewrites(empty) == []


def random_chain(rng, t: int = 50) -> AbsorbingChain:
    """A random chain with cycles (a ring plus random edges); a few states absorb."""
    rows = np.concatenate([np.arange(t), rng.integers(0, t, 4 * t)])
    cols = np.concatenate([(np.arange(t) + 1) % t, rng.integers(0, t, 4 * t)])
    vals = rng.integers(1, 6, rows.size).astype(float)
    counts = sp.coo_matrix((vals, (rows, cols)), shape=(t, t)).tocsr()
    absorb = np.zeros((t, 2))
    some = rng.choice(t, size=t // 5, replace=False)
    absorb[some] = rng.integers(0, 4, (some.size, 2)) + np.array([1, 0])
    visits = (np.asarray(counts.sum(axis=1)).ravel() + absorb.sum(axis=1)).astype(np.int64)
    states = [f"state {i:03d}" for i in range(t)]
    return AbsorbingChain(states=states, index={s: i for i, s in enumerate(states)},
                          counts=counts, absorb_counts=absorb, visits=visits)


def test_against_dense_reference():
    rng = np.random.default_rng(0)
    chain = random_chain(rng)
    q = chain.Q.toarray()
    np.testing.assert_allclose(q.sum(axis=1) + chain.R.sum(axis=1), 1.0, atol=1e-14)
    n = np.linalg.inv(np.eye(50) - q)
    b_ref = n @ chain.R
    b = chain.absorption()
    np.testing.assert_allclose(b, b_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(b.sum(axis=1), 1.0, rtol=0, atol=1e-10)
    for s in (0, 7, 31, 49):
        np.testing.assert_allclose(chain.expected_visits(s), n[s], rtol=0, atol=1e-10)
        h = chain.reach_probability(s)
        ref = n[s] / np.diag(n)
        ref[s] = 1.0
        np.testing.assert_allclose(h, ref, rtol=0, atol=1e-10)


def test_reach_global_fallback_matches_local(monkeypatch):
    # Blocks of descendants above LOCAL_MAX use the chain's factorization instead of their own.
    rng = np.random.default_rng(3)
    chain = random_chain(rng)
    local = [chain.reach_probability(s) for s in range(0, 50, 7)]
    sessions = mining_sessions()
    mined = mine_rewrites(build_chain(sessions), min_reach=0.01, min_count=1)
    monkeypatch.setattr(mining, "LOCAL_MAX", 1)
    chain2 = random_chain(np.random.default_rng(3))
    for s, h in zip(range(0, 50, 7), local):
        np.testing.assert_allclose(chain2.reach_probability(s), h, rtol=0, atol=1e-10)
    again = mine_rewrites(build_chain(sessions), min_reach=0.01, min_count=1)
    assert [(w.source, w.target, w.support) for w in again] == [
        (w.source, w.target, w.support) for w in mined]
    np.testing.assert_allclose([w.reach for w in again], [w.reach for w in mined], atol=1e-12)


def test_built_random_walks_against_dense_reference():
    rng = np.random.default_rng(1)
    texts = [f"request {i}" for i in range(40)]
    sessions = []
    for j in range(400):
        cur = int(rng.integers(0, 40))
        turns = []
        for k in range(int(rng.integers(1, 5))):
            sig = str(rng.choice(list(mining.SIGNALS)))
            turns.append(turn(3.0 * k, texts[cur], sig))
            cur = (cur + int(rng.integers(-3, 4))) % 40
        sessions.append(session(f"w{j}", *turns))
    chain = build_chain(sessions)
    t = len(chain)
    totals = np.asarray(chain.counts.sum(axis=1)).ravel() + chain.absorb_counts.sum(axis=1)
    np.testing.assert_array_equal(totals, chain.visits)
    b_ref = np.linalg.inv(np.eye(t) - chain.Q.toarray()) @ chain.R
    np.testing.assert_allclose(chain.absorption(), b_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(chain.absorption().sum(axis=1), 1.0, rtol=0, atol=1e-10)


X, Y, Z, W, V = "play xx", "play yy", "play zz", "play ww", "play vv"


def mining_sessions() -> list[dict]:
    out = []

    def add(n, *turns):
        for _ in range(n):
            out.append(session(f"m{len(out):03d}", *turns))

    add(6, turn(0, X, "rephrase"), turn(4, Y, "thanks"))   # x -> y (good)
    add(1, turn(0, Y, "abandon"))                          # y: B_S = 6/7
    add(3, turn(0, X, "rephrase"), turn(4, Z, "none"))     # x -> z (reachable but worse)
    add(3, turn(0, Z, "abandon"))                          # z: B_S = 3/6
    add(1, turn(0, X, "rephrase"), turn(4, W, "thanks"))   # x -> w: best, but reach 1/23
    add(3, turn(0, W, "thanks"))                           # w: B_S = 1
    add(1, turn(0, X, "rephrase"), turn(4, V, "thanks"))   # v: B_S = 1, but 1 visit
    add(12, turn(0, X, "abandon"))                         # x fails: 23 visits
    return out


def test_mine_rewrites_picks_expected_target():
    chain = build_chain(mining_sessions())
    succ = chain.success()
    i = chain.index
    assert chain.visits[i[X]] == 23
    np.testing.assert_allclose(succ[[i[Y], i[Z], i[W], i[V]]], [6 / 7, 0.5, 1.0, 1.0],
                               atol=1e-12)
    bx = (6 * 6 / 7 + 3 * 0.5 + 1 + 1) / 23
    assert succ[i[X]] == pytest.approx(bx, abs=1e-12)
    [w] = mine_rewrites(chain)  # z (success 0.5) is a source too, but leads nowhere
    assert (w.source, w.target, w.support) == (X, Y, 23)
    assert w.reach == pytest.approx(6 / 23, abs=1e-12)
    assert w.source_success == pytest.approx(bx, abs=1e-12)
    assert w.target_success == pytest.approx(6 / 7, abs=1e-12)
    # w's reach 1/23 < min_reach 0.05; with a lower min_reach it wins (B_S = 1 > 6/7).
    [w2] = mine_rewrites(chain, min_reach=0.01)
    assert w2.target == W and w2.reach == pytest.approx(1 / 23, abs=1e-12)
    # v (one visit) only competes when min_count allows it; ties (v, w both 1) go to "play vv".
    [w3] = mine_rewrites(chain, min_reach=0.01, min_count=1)
    assert w3.target == V
    assert mine_rewrites(chain, min_gain=0.6) == []            # 6/7 - 0.35 < 0.6
    assert mine_rewrites(chain, max_source_success=0.3) == []  # x's 0.35 is not failing enough
    # x -> z -> ... : a two-hop candidate only within max_hops.
    extra = mining_sessions() + [session(f"h{k}", turn(0, Z, "rephrase"), turn(3, "play uu",
                                                                                 "thanks"))
                                 for k in range(6)]
    ch2 = build_chain(extra)
    assert ch2.index["play uu"] in ch2.successors(ch2.index[X], 2)
    assert ch2.index["play uu"] not in ch2.successors(ch2.index[X], 1)
    assert mine_rewrites(ch2, max_hops=1)[0].target == Y
    assert mine_rewrites(ch2, max_hops=2, min_reach=0.05)[0].target == "play uu"


def test_mine_rewrites_deterministic():
    sessions = mining_sessions()
    a = mine_rewrites(build_chain(sessions), min_reach=0.01, min_count=1)
    b = mine_rewrites(build_chain(list(reversed(sessions))), min_reach=0.01, min_count=1)
    assert a == b


def test_evaluate_rewrites_fake_judge():
    rw = [Rewrite(X, Y, 0.3, 0.8, 0.3, 10), Rewrite(Z, W, 0.2, 0.9, 0.2, 5)]
    turns = [
        turn(0, X, "none", success=False) | {"serves": True},    # win
        turn(0, "play  xx", "none", success=False) | {"serves": True},  # win (normalized)
        turn(0, X, "none", success=True) | {"serves": False},    # loss
        turn(0, X, "none", success=False) | {"serves": False},   # neutral
        turn(0, Z, "none", success=True) | {"serves": True},     # neutral
        turn(0, "play other", "none", success=False),            # untriggered failure
        turn(0, "play other 2", "none", success=True),           # untriggered success
        turn(0, Z, "none", success=False) | {"serves": True},    # win
    ]
    seen = []

    def judge(target, t):
        seen.append(target)
        return t["serves"]

    res = evaluate_rewrites(rw, turns, judge)
    assert res == {"pairs": 2, "turns": 8, "triggered": 6, "wins": 3, "losses": 1, "neutral": 2,
                   "win_loss_ratio": 3.0, "coverage": 6 / 8, "defect_rate_before": 5 / 8,
                   "defect_rate_after": 3 / 8}
    assert seen == [Y, Y, Y, Y, W, W]
    res = evaluate_rewrites(rw, turns[:2], judge)
    assert res["losses"] == 0 and res["win_loss_ratio"] == 2.0
    res = evaluate_rewrites([], [], judge)
    assert res["turns"] == 0 and res["coverage"] == 0.0
    with pytest.raises(ValueError, match=r"turn #0: missing field 'success'"):
        evaluate_rewrites(rw, [{"asr": X}], judge)


def test_bad_sessions():
    with pytest.raises(ValueError, match=r"session 's0000123'.*missing field 'turns'"):
        build_chain([{"session": "s0000123", "user": "u1", "day": 0}])
    bad = session("s9", turn(0, A, "rephrase"), {"t": 1.0, "directed": True, "signal": "none"})
    with pytest.raises(ValueError, match=r"session 's9' turn 1: missing field 'asr'"):
        build_chain([bad])
    with pytest.raises(ValueError, match=r"session 's8' turn 0: field 'signal'"):
        build_chain([session("s8", turn(0, A, "shrug"))])
    with pytest.raises(ValueError, match=r"session 's7' turn 1: field 't' goes backwards"):
        build_chain([session("s7", turn(5, A, "none"), turn(1, B_, "none"))])
    with pytest.raises(ValueError, match="min_count"):
        build_chain([], min_count=0)
    # A hand-made chain that never absorbs is refused (I - Q would be singular).
    with pytest.raises(ValueError, match="never reaches"):
        AbsorbingChain(states=["a", "b"], index={"a": 0, "b": 1},
                       counts=sp.csr_matrix(np.array([[0, 1.0], [1.0, 0]])),
                       absorb_counts=np.zeros((2, 2)), visits=np.array([1, 1]))


def test_rewrites_round_trip_and_read_errors(tmp_path):
    chain = build_chain(mining_sessions())
    rws = mine_rewrites(chain, min_reach=0.01, min_count=1)
    path = tmp_path / "sub" / "rewrites.jsonl"
    write_rewrites(path, rws)
    assert read_rewrites(path) == rws
    assert [p.name for p in path.parent.iterdir()] == ["rewrites.jsonl"]  # no temporary left
    rec = json.loads(path.read_text().splitlines()[0])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rec) + "\n" + "{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid JSON"):
        read_rewrites(bad)
    del rec["reach"]
    bad.write_text("\n" + json.dumps(rec) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: missing field 'reach'"):
        read_rewrites(bad)
    bad.write_text(json.dumps(dict(rec, reach=0.5, support="7")) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: field 'support'"):
        read_rewrites(bad)


def test_scales_to_20k_states():
    # 10k request families, each a failing text rephrased into a working one, plus cross links
    # that make cycles; 20k states.
    rng = np.random.default_rng(2)
    n = 10_000
    sessions = []
    for i in range(n):
        bad, good = f"req {i} bad", f"req {i} good"
        sessions.append(session(f"a{i}", turn(0, bad, "rephrase"), turn(5, good, "thanks")))
        sessions.append(session(f"b{i}", turn(0, bad, "abandon")))
        j = int(rng.integers(0, n))
        sessions.append(session(f"c{i}", turn(0, good, "barge_in"), turn(2, f"req {j} bad",
                                                                         "rephrase"),
                                turn(4, f"req {j} good", "none")))
    chain = build_chain(sessions)
    assert len(chain) == 2 * n
    b = chain.absorption()
    assert b.shape == (2 * n, 2)
    np.testing.assert_allclose(b.sum(axis=1), 1.0, atol=1e-10)
    rws = mine_rewrites(chain, min_count=2)
    assert rws and all(w.source.endswith("bad") and w.target.endswith("good") for w in rws)


def test_request_state_drops_correction_cues():
    from jaxslu.selflearn.mining import request_state

    assert request_state({"asr": "no no i said play  imagine dragons"}) == "play imagine dragons"
    assert request_state({"asr": "sorry i meant lights off"}) == "lights off"
    assert request_state({"asr": "play no music"}) == "play no music"
    assert request_state({"asr": "i said no"}) == "no"  # a cue-only turn keeps a word
    sessions = [{"session": "a", "turns": [
        {"t": 0.0, "directed": True, "asr": "play x", "signal": "rephrase"},
        {"t": 5.0, "directed": True, "asr": "no i said play x", "signal": "none"}]}]
    chain = mining.build_chain(sessions, state_fn=request_state)
    assert chain.states == ["play x"]  # the correction is the same state as the request
