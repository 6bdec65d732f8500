"""The recommendation family against independent references: segment softmax and a KGAT layer
vs dense per-head references (values and gradients), the bpr / transr / graph_infonce terms vs
numpy formulas (fp32 and bf16), Recall/NDCG vs hand-computed values, negative sampling, the
recipe generator, the CKG builder and clear errors on bad input."""
from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxslu.losses.base import build_objective
from jaxslu.recommendation import data as D
from jaxslu.recommendation.evaluate import recall_ndcg_at_k, top_k
from jaxslu.recommendation.losses import bpr, graph_infonce, transr
from jaxslu.recommendation.models import Kgat, KgatConfig, segment_softmax
from jaxslu.recommendation.task import (RecAssets, projection_table, sample_negative)

SMALL = dict(users=40, recipes=30, cuisines=4, ingredients=20, keywords=6,
             browse=(6, 12), add_to_cart=(3, 6), cook_along=(4, 8))


# -- segment softmax and one KGAT layer vs dense references -------------------------------------

def test_segment_softmax_matches_dense_per_head(rng):
    n, e = 7, 40
    head = rng.integers(0, n - 1, e)  # node n-1 has no edges
    logits = rng.normal(size=e).astype(np.float32) * 30  # large: stability matters
    mask = rng.random(e) < 0.8
    got = np.asarray(segment_softmax(jnp.asarray(logits), jnp.asarray(head), n,
                                     jnp.asarray(mask)))
    want = np.zeros(e)
    for h in range(n):
        idx = np.flatnonzero((head == h) & mask)
        if len(idx):
            z = logits[idx].astype(np.float64)
            p = np.exp(z - z.max())
            want[idx] = p / p.sum()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert np.all(np.isfinite(got)) and np.all(got[~mask] == 0)


def _tiny_graph(rng, num_users=3, num_entities=5, num_forward=3):
    """A small CKG with some (head, tail) pairs joined by two relations."""
    n = num_users + num_entities
    R = 2 * num_forward
    edges = set()
    while len(edges) < 30:
        h, t, r = (int(x) for x in (rng.integers(0, n), rng.integers(0, n), rng.integers(0, R)))
        if h != t:
            edges.add((r, h, t))
    r, h, t = (np.asarray(x, np.int32) for x in zip(*sorted(edges)))
    graph = {"head": h, "relation": r, "tail": t}
    table, proj_offsets = projection_table(graph, R)
    graph.update(table)
    offsets = tuple(np.searchsorted(r, np.arange(R + 1)).tolist())
    return graph, offsets, proj_offsets, n, R


def _dense_reference(params, graph, n, R, num_entities, slope, dims):
    """Dense per-relation attention and bi-interaction, in jnp for autodiff (no segment ops)."""
    ego, er, W = params["node_embedding"], params["relation_embedding"], params["transr"]
    exps, Ls = [], []
    for r in range(R):
        P = ego @ W[r]
        L = jnp.sum(P[None, :, :] * jnp.tanh(P[:, None, :] + er[r]), -1)  # L[h, t]
        M = np.zeros((n, n))
        sel = graph["relation"] == r
        M[graph["head"][sel], graph["tail"][sel]] = 1
        Ls.append((L, M))
    mx = jnp.max(jnp.stack([jnp.where(M > 0, L, -1e30) for L, M in Ls]), axis=(0, 2))
    mx = jax.lax.stop_gradient(jnp.where(mx > -1e29, mx, 0.0))
    exps = [M * jnp.exp(L - mx[:, None]) for L, M in Ls]
    Z = sum(x.sum(1) for x in exps)
    A = sum(exps) / jnp.maximum(Z, 1e-30)[:, None]
    reps, x = [ego], ego
    for k in range(len(dims)):
        lay = params["layers"][k]
        nb = A @ x
        act = lambda v: jnp.where(v > 0, v, slope * v)
        x = act((x + nb) @ lay["w1"] + lay["b1"]) + act((x * nb) @ lay["w2"] + lay["b2"])
        reps.append(x / jnp.linalg.norm(x, axis=-1, keepdims=True))
    return jnp.concatenate(reps, -1)


def test_kgat_layer_matches_dense_reference_values_and_gradients(rng):
    graph, offsets, proj, n, R = _tiny_graph(rng)
    num_users, num_entities = 3, 5
    cfg = KgatConfig(dim=4, layer_dims=(3, 2), message_dropout=0.0, contrastive=False,
                     attention_grad=True, init_scale=0.5)
    model = Kgat(cfg, num_users=num_users, num_items=2, num_entities=num_entities,
                 num_relations=R, relation_offsets=offsets, projection_offsets=proj,
                 rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model, nnx.Param)
    pure = nnx.to_pure_dict(state)
    batch = {"graph": {k: jnp.asarray(v) for k, v in graph.items()}}
    w = jnp.asarray(rng.normal(size=(n, cfg.dim + 5)).astype(np.float32))

    def model_loss(p):
        st = nnx.State(jax.tree.map(lambda x: x, state))
        nnx.replace_by_pure_dict(st, p)
        out = nnx.merge(graphdef, st).embed_all(batch)
        reps = jnp.concatenate([out["items"], jnp.zeros((num_entities - 2, cfg.dim + 5)),
                                out["users"]])
        return jnp.sum(jnp.tanh(reps) * w), reps

    def ref_loss(p):
        reps = _dense_reference(p, graph, n, R, num_entities, cfg.leaky_slope, cfg.layer_dims)
        reps = reps.at[2:num_entities].set(0.0)
        return jnp.sum(jnp.tanh(reps) * w), reps

    (v1, reps1), g1 = jax.jit(jax.value_and_grad(model_loss, has_aux=True))(pure)
    (v2, reps2), g2 = jax.jit(jax.value_and_grad(ref_loss, has_aux=True))(pure)
    np.testing.assert_allclose(np.asarray(reps1), np.asarray(reps2), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(v1), float(v2), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    # The attention really is trained here (attention_grad=True): W_r has a gradient.
    assert float(jnp.abs(g1["transr"]).max()) > 0


# -- loss terms vs numpy (values, finite-difference gradients of the numpy formulas) -------------

def _softplus(x):
    return np.logaddexp(0.0, x)


def np_bpr(u, p, n, w, l2):
    d = (u * p).sum(-1) - (u * n).sum(-1)
    reg = 0.5 * ((u * u).sum(-1) + (p * p).sum(-1) + (n * n).sum(-1))
    return float(((_softplus(-d) + l2 * reg) * w).sum() / w.sum())


def np_transr(pos, neg, kg_l2, w, l2):
    return float(((_softplus(-(neg - pos)) + l2 * kg_l2) * w).sum() / w.sum())


def np_infonce(a, b, ids, w, t):
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    total = 0.0
    for i in range(len(a)):
        if w[i] == 0:
            continue
        cols = [j for j in range(len(a)) if j == i or (w[j] > 0 and ids[j] != ids[i])]
        s = np.array([a[i] @ b[j] / t for j in cols])
        total += -(a[i] @ b[i] / t) + np.log(np.exp(s - s.max()).sum()) + s.max()
    return total / w.sum()


def _fd_grad(f, x, eps=1e-5):
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        g[idx] = (f(xp) - f(xm)) / (2 * eps)
    return g


# fp32: values to 1e-5 relative, gradients to 1e-4; bf16 inputs are rounded to bf16 first and
# the references run (float64) on the same rounded values: the terms compute in fp32, so values
# agree to 1e-5, gradients (returned in bf16) to 1e-2 relative.
TOL = {jnp.float32: (1e-5, 1e-4, 1e-6), jnp.bfloat16: (1e-5, 1e-2, 1e-3)}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_bpr_and_transr_match_numpy(dtype, rng):
    B, Dm = 6, 5
    w = np.array([1, 1, 1, 1, 1, 0], np.float32)
    u, p, n = (rng.normal(size=(B, Dm)) for _ in range(3))
    u, p, n = (np.asarray(jnp.asarray(x, dtype).astype(jnp.float32), np.float64) for x in (u, p, n))
    vt, gt, at = TOL[dtype]
    term = bpr(l2=0.1)
    batch = {"weight": jnp.asarray(w)}
    f = lambda uu: term(batch, {"user": uu, "pos_item": jnp.asarray(p, dtype),
                               "neg_item": jnp.asarray(n, dtype)}, None)[0]
    val, grad = jax.jit(jax.value_and_grad(f))(jnp.asarray(u, dtype))
    np.testing.assert_allclose(float(val), np_bpr(u, p, n, w, 0.1), rtol=vt)
    want = _fd_grad(lambda x: np_bpr(x, p, n, w, 0.1), u)
    np.testing.assert_allclose(np.asarray(grad, np.float64), want, rtol=gt, atol=at)
    assert np.all(np.asarray(grad, np.float64)[-1] == 0)  # padding row: no gradient

    pos, neg, kl2 = (np.abs(rng.normal(size=B)) * 3 for _ in range(3))
    pos, neg, kl2 = (np.asarray(jnp.asarray(x, dtype).astype(jnp.float32), np.float64)
                     for x in (pos, neg, kl2))
    term = transr(l2=0.01)
    f = lambda ps, ng: term(batch, {"kg_pos_score": ps, "kg_neg_score": ng,
                                    "kg_l2": jnp.asarray(kl2, dtype)}, None)[0]
    val, (gp, gn) = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(jnp.asarray(pos, dtype),
                                                          jnp.asarray(neg, dtype))
    np.testing.assert_allclose(float(val), np_transr(pos, neg, kl2, w, 0.01), rtol=vt)
    np.testing.assert_allclose(np.asarray(gp, np.float64),
                               _fd_grad(lambda x: np_transr(x, neg, kl2, w, 0.01), pos),
                               rtol=gt, atol=at)
    np.testing.assert_allclose(np.asarray(gn, np.float64),
                               _fd_grad(lambda x: np_transr(pos, x, kl2, w, 0.01), neg),
                               rtol=gt, atol=at)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_graph_infonce_matches_numpy(dtype, rng):
    B, Dm = 7, 4
    w = np.array([1, 1, 1, 1, 1, 1, 0], np.float32)
    users = np.array([0, 1, 2, 1, 3, 4, 0], np.int32)   # a repeated user is not its own negative
    items = np.array([5, 6, 7, 8, 9, 5, 5], np.int32)
    arrs = [np.asarray(jnp.asarray(rng.normal(size=(B, Dm)), dtype).astype(jnp.float32),
                       np.float64) for _ in range(4)]
    vt, gt, at = TOL[dtype]
    term = graph_infonce(temperature=0.5)
    batch = {"weight": jnp.asarray(w), "user": jnp.asarray(users), "pos_item": jnp.asarray(items)}

    def f(a):
        out = {"view1_user": a, "view2_user": jnp.asarray(arrs[1], dtype),
               "view1_item": jnp.asarray(arrs[2], dtype), "view2_item": jnp.asarray(arrs[3], dtype)}
        return term(batch, out, None)[0]

    def ref(a):
        return (np_infonce(a, arrs[1], users, w, 0.5) + np_infonce(arrs[2], arrs[3], items, w, 0.5))

    val, grad = jax.jit(jax.value_and_grad(f))(jnp.asarray(arrs[0], dtype))
    np.testing.assert_allclose(float(val), ref(arrs[0]), rtol=vt)
    np.testing.assert_allclose(np.asarray(grad, np.float64), _fd_grad(ref, arrs[0]),
                               rtol=gt, atol=at)
    assert np.all(np.isfinite(np.asarray(grad, np.float64)))


def test_objective_line_and_term_errors():
    obj = build_objective("bpr + 0.1*transr + 0.05*graph_infonce",
                          {"bpr": {"l2": 1e-5}, "graph_infonce": {"temperature": 0.3}})
    assert obj.names == ("bpr", "transr", "graph_infonce")
    with pytest.raises(KeyError, match="model.contrastive=True"):
        graph_infonce()({"weight": jnp.ones(2)}, {}, None)
    with pytest.raises(KeyError, match="bpr_mf has no knowledge graph"):
        transr()({"weight": jnp.ones(2)}, {"user": 1}, None)
    with pytest.raises(ValueError, match="temperature"):
        graph_infonce(temperature=0.0)


# -- metrics -------------------------------------------------------------------------------------

def test_recall_ndcg_hand_computed():
    ranked, rel = [3, 1, 4, 5, 9, 7], {1, 5, 7}
    r, n = recall_ndcg_at_k(ranked, rel, 5)  # hits at ranks 2 and 4
    assert r == pytest.approx(2 / 3)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert n == pytest.approx(dcg / idcg) and n == pytest.approx(0.498189, abs=1e-6)
    r, n = recall_ndcg_at_k(ranked, rel, 2)  # IDCG over min(|test|, K) = 2 ideal hits
    assert r == pytest.approx(1 / 3) and n == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert recall_ndcg_at_k([1, 2], {1}, 20) == (1.0, 1.0)
    with pytest.raises(ValueError):
        recall_ndcg_at_k([1], set(), 5)


def test_top_k_masks_training_items_and_breaks_ties_by_index():
    scores = np.array([[0.9, 0.5, 0.5, 0.1, 0.8], [0.1, 0.2, 0.3, 0.4, 0.5]])
    got = top_k(scores, [{0}, {4, 3}], 3)
    assert got.tolist() == [[4, 1, 2], [2, 1, 0]]


# -- data: splits, CKG, negatives, recipe generator, errors --------------------------------------

def test_time_split_per_user():
    users = np.array([0] * 10 + [1] * 5 + [2])
    times = np.concatenate([np.arange(10)[::-1], np.arange(5), [7]])
    lab = D.time_split(users, times, 0.2, 0.1)
    # user 0: latest 2 (times 9, 8 -> positions 0, 1) test, next latest 1 valid
    assert lab[:10].tolist() == [2, 2, 1, 0, 0, 0, 0, 0, 0, 0]
    assert lab[10:15].tolist() == [0, 0, 0, 1, 2]
    assert lab[15] == 0  # a single interaction stays in train


def test_recipe_generator_deterministic_and_split_honest():
    a, b = D.recipe_data(3, **SMALL), D.recipe_data(3, **SMALL)
    c = D.recipe_data(4, **SMALL)
    for s in D.SPLITS:
        for k in ("user", "item", "relation", "time"):
            np.testing.assert_array_equal(a.splits[s][k], b.splits[s][k])
    np.testing.assert_array_equal(a.kg, b.kg)
    assert not np.array_equal(a.splits["train"]["item"], c.splits["train"]["item"])
    assert a.relations[:3] == ["browse", "add_to_cart", "cook_along"]
    assert {a.relations[r] for r in a.kg[:, 1]} == {"has_cuisine", "has_ingredient", "has_keyword"}
    cook = a.relations.index("cook_along")
    for s in ("valid", "test"):
        assert set(a.splits[s]["relation"].tolist()) == {cook}
    # nothing in train happens at or after a user's first held-out cook-along
    tr, va = a.splits["train"], a.splits["valid"]
    for u in range(a.num_users):
        held = np.concatenate([va["time"][va["user"] == u],
                               a.splits["test"]["time"][a.splits["test"]["user"] == u]])
        if len(held):
            assert tr["time"][tr["user"] == u].max(initial=0) < held.min()
    counts = np.bincount(tr["relation"], minlength=3)
    assert counts[0] > counts[1] > 0 and counts[2] > 0


def test_ckg_has_both_directions_and_is_sorted():
    d = D.recipe_data(0, **SMALL)
    g = d.ckg_edges()
    assert all(v.dtype == np.int32 for v in g.values())
    key = list(zip(g["relation"].tolist(), g["head"].tolist(), g["tail"].tolist()))
    assert key == sorted(set(key))
    inv = len(d.relations)
    fw = {(r, h, t) for r, h, t in key if r < inv}
    bw = {(r - inv, t, h) for r, h, t in key if r >= inv}
    assert fw == bw
    tr = d.splits["train"]
    assert len([1 for r, h, t in key if r < 3]) == len(set(zip(tr["user"], tr["item"],
                                                               tr["relation"])))
    assert int(g["head"].max()) < d.num_nodes


def test_negative_sampling_never_positive_and_deterministic():
    pos = set(range(0, 50, 2)) | {51, 53}
    draws = [sample_negative(7, i, e, pos, 60) for i in range(200) for e in range(3)]
    assert not set(draws) & pos and len(set(draws)) > 10
    assert draws == [sample_negative(7, i, e, pos, 60) for i in range(200) for e in range(3)]
    assert sample_negative(7, 0, 0, pos, 60) != sample_negative(7, 0, 1, pos, 60) or \
        sample_negative(7, 1, 0, pos, 60) != sample_negative(7, 1, 1, pos, 60)
    assert sample_negative(0, 0, 0, set(range(59)), 60) == 59  # dense: the complement
    with pytest.raises(ValueError, match="every one of the 3 items"):
        sample_negative(0, 0, 0, {0, 1, 2}, 3)


def test_task_rows_negatives_and_corrupted_tails(tmp_path):
    from jaxslu.config import load_config
    from jaxslu.task import get_task
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "configs" / "kgat_recipes.py", "tiny")
    task = get_task(cfg)
    src = task.open_source("train")
    assets = task.build_assets(src, tmp_path / "scratch")
    task.save_assets(assets, tmp_path)
    again = task.load_assets(tmp_path)
    for k in ("head", "relation", "tail", "proj_node", "head_pos", "tail_pos"):
        np.testing.assert_array_equal(again.graph[k], assets.graph[k])
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporary files
    prep = task.prepare_fn(src, again, train=True)
    n = len(src.rows)
    rows = [prep(j) for j in list(range(200)) + list(range(n, n + 200))]
    kg = {tuple(x) for x in again.kg.tolist()}
    for r in rows:
        assert r["neg_item"] not in again.train_positives[r["user"]]
        assert r["pos_item"] in again.train_positives[r["user"]]
        assert (r["kg_head"], r["kg_relation"], r["kg_tail"]) in kg
        assert (r["kg_head"], r["kg_relation"], r["kg_neg_tail"]) not in kg
    assert rows[:200] == [prep(j) for j in range(200)]  # deterministic
    assert [r["neg_item"] for r in rows[:200]] != [r["neg_item"] for r in rows[200:]]  # per pass
    batch = task.collate(rows[:10], 16)
    assert batch["weight"].tolist() == [1] * 10 + [0] * 6 and batch["graph"]["head"].ndim == 1
    assert set(task.batch_partition()) == {f"graph/{k}" for k in batch["graph"]}


def test_bad_inputs_give_clear_errors(tmp_path):
    from jaxslu.data.movielens import load_movielens, synthetic_movielens
    ml = load_movielens(synthetic_movielens(tmp_path / "nokg", with_kg=False))
    with pytest.raises(D.RecDataError, match="no knowledge graph.*ml-100k.kg"):
        D.movielens_data(ml)
    with pytest.raises(D.RecDataError, match="unknown option.*colour"):
        D.recipe_data(0, colour=3)
    with pytest.raises(D.RecDataError, match="cook_along=.*low <= high"):
        D.recipe_data(0, cook_along=(5, 2))
    with pytest.raises(D.RecDataError, match="users=0"):
        D.recipe_data(0, users=0)
    with pytest.raises(D.RecDataError, match="test_fraction"):
        D.time_split(np.zeros(3), np.zeros(3), 1.5)
    with pytest.raises(D.RecDataError, match="unknown split 'dev'"):
        D.recipe_graph("dev", **SMALL)
    ml = load_movielens(synthetic_movielens(tmp_path / "kg"))
    ml.kg = ml.kg + [("m.item1", "", "x")]
    with pytest.raises(D.RecDataError, match=r"ml-100k.kg: triple \d+"):
        D.movielens_data(ml)
    # a broken vocabulary file in a workdir is named
    from jaxslu.config import load_config
    from jaxslu.task import get_task
    from pathlib import Path
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "kgat_recipes.py", "tiny")
    task = get_task(cfg)
    (tmp_path / "recommendation_vocab.json").write_text(json.dumps({"users": []}))
    np.savez(tmp_path / "ckg.npz", head=np.zeros(1, np.int32))
    with pytest.raises(D.RecDataError, match="recommendation_vocab.json: missing fields"):
        task.load_assets(tmp_path)
    with pytest.raises(ValueError, match="task_options.*unknown for the kgat task"):
        get_task(type(cfg)(**{**cfg.__dict__, "task_options": {"colour": 1}}))
