"""Incremental user embeddings: the mergeable long-term state against full recomputes, the
serving path against the batch path, the loss and ranking metrics against numpy references,
the task's encoding, and the MovieLens reader."""
import json
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxslu.data import movielens as ml
from jaxslu.personalization import memory
from jaxslu.personalization.evaluate import rank_outputs, ranking_metrics
from jaxslu.personalization.losses import sequence_ce_value
from jaxslu.personalization.models import SasRec, SasRecConfig, UserEmbeddingConfig, \
    UserEmbeddingModel


_merge = jax.jit(memory.merge)
_full = jax.jit(memory.full_memory)
_read = jax.jit(memory.read)


def _forward(model, batch):
    """The model's batch forward pass, jitted (eager op-by-op dispatch is slow)."""
    g, st = nnx.split(model)
    return np.asarray(jax.jit(lambda st, b: nnx.merge(g, st)(b, train=False)["logits"])(st, batch))


def _np_memory(s, v):
    """numpy softmax pooling per slot (float64), the independent reference."""
    s = np.asarray(s, np.float64)
    v = np.asarray(v, np.float64)
    if len(s) == 0:
        return np.zeros((s.shape[-1], v.shape[-1]))
    p = np.exp(s - s.max(axis=0))
    p = p / p.sum(axis=0)
    return p.T @ v


@pytest.mark.parametrize("seed", range(4))
def test_incremental_merges_equal_full_recompute(seed):
    """Merging a random history in random-sized windows equals the full recompute within 1e-5
    (fp32), and both equal a float64 numpy reference."""
    rng = np.random.default_rng(seed)
    n, M, D = int(rng.integers(1, 300)), 4, 8
    s = rng.normal(size=(n, M)).astype(np.float32) * rng.uniform(0.5, 8)
    v = rng.normal(size=(n, D)).astype(np.float32)
    state = memory.empty_state(M, D)
    pos = 0
    while pos < n:
        w = int(rng.choice([1, 7, 32]))  # few window shapes: few compilations
        chunk = slice(pos, min(n, pos + w))
        pad = w - (chunk.stop - chunk.start)  # ragged last window: padded and masked
        sc = np.concatenate([s[chunk], rng.normal(size=(pad, M)).astype(np.float32) * 50])
        vc = np.concatenate([v[chunk], rng.normal(size=(pad, D)).astype(np.float32)])
        mask = np.arange(w) < (chunk.stop - chunk.start)
        state = _merge(state, jnp.asarray(sc), jnp.asarray(vc), jnp.asarray(mask))
        pos = chunk.stop
    inc = np.asarray(_read(state))
    full = np.asarray(_full(jnp.asarray(s), jnp.asarray(v)))
    assert int(state.count) == n
    np.testing.assert_allclose(inc, full, atol=1e-5, rtol=0)
    np.testing.assert_allclose(full, _np_memory(s, v), atol=1e-5, rtol=0)


def test_incremental_bf16_inputs():
    """bf16 scores and values: the merged state (kept in fp32) matches the float64 reference of
    the rounded inputs within 1e-5, and the bf16 state within 2e-2."""
    rng = np.random.default_rng(7)
    s = jnp.asarray(rng.normal(size=(64, 3)) * 4, jnp.bfloat16)
    v = jnp.asarray(rng.normal(size=(64, 5)), jnp.bfloat16)
    ref = _np_memory(np.asarray(s, np.float32), np.asarray(v, np.float32))
    st32 = memory.empty_state(3, 5)
    for k in range(0, 64, 16):
        st32 = memory.merge(st32, s[k:k + 16].astype(jnp.float32), v[k:k + 16].astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(memory.read(st32)), ref, atol=1e-5)
    st16 = memory.empty_state(3, 5, dtype=jnp.bfloat16)
    for k in range(0, 64, 16):
        st16 = memory.merge(st16, s[k:k + 16], v[k:k + 16])
    np.testing.assert_allclose(np.asarray(memory.read(st16), np.float32), ref, atol=2e-2)


def test_empty_state_reads_zero_and_state_size_is_constant():
    st = memory.empty_state(4, 6)
    assert float(jnp.max(jnp.abs(memory.read(st)))) == 0.0
    s = jnp.ones((10, 4))
    v = jnp.ones((10, 6))
    small = _merge(st, s, v)
    big = small
    for _ in range(30):
        big = _merge(big, s, v)
    # the state is the same size whatever the history length: the update cost cannot grow
    assert jax.tree.map(jnp.shape, small) == jax.tree.map(jnp.shape, big)
    assert int(big.count) == 310


@pytest.mark.parametrize("window", [0, 3, 12])
def test_prefix_memory_scan_equals_dense_and_reference(window):
    rng = np.random.default_rng(window)
    B, T, M, D = 2, 23, 3, 4
    s = rng.normal(size=(B, T, M)).astype(np.float32) * 5
    v = rng.normal(size=(B, T, D)).astype(np.float32)
    valid = rng.random((B, T)) > 0.25
    mem, has = jax.jit(memory.prefix_memory, static_argnums=3)(
        jnp.asarray(s), jnp.asarray(v), jnp.asarray(valid), window)
    dense, has_d = jax.jit(memory.prefix_memory_dense, static_argnums=3)(
        jnp.asarray(s), jnp.asarray(v), jnp.asarray(valid), window)
    mem, has, dense, has_d = (np.asarray(x) for x in (mem, has, dense, has_d))
    np.testing.assert_allclose(mem, dense, atol=1e-5)
    assert (has == has_d).all()
    for b in range(B):
        for t in range(T):
            idx = [i for i in range(max(t - window, 0)) if valid[b, i]]
            np.testing.assert_allclose(mem[b, t], _np_memory(s[b, idx], v[b, idx]), atol=1e-5)
            assert bool(has[b, t]) == bool(idx)


def _batch(rng, B, T, K, words=3, nf=2, lengths=None):
    lengths = lengths if lengths is not None else rng.integers(1, T + 1, B)
    label = np.full((B, T), -1, np.int32)
    tokens = np.zeros((B, T, words), np.int32)
    feats = np.zeros((B, T, nf), np.int32)
    for b, n in enumerate(lengths):
        label[b, :n] = rng.integers(0, K, n)
        tokens[b, :n] = rng.integers(0, 20, (n, words))
        feats[b, :n] = rng.integers(1, 9, (n, nf))
    scored = (label >= 0).astype(np.float32)
    return {"label": jnp.asarray(label), "tokens": jnp.asarray(tokens),
            "feats": jnp.asarray(feats), "scored": jnp.asarray(scored),
            "weight": jnp.ones((B,), jnp.float32)}, np.asarray(lengths)


@pytest.fixture(scope="module")
def small_model():
    cfg = UserEmbeddingConfig(dim=16, heads=2, slots=3, window=4, dropout=0.0)
    return UserEmbeddingModel(cfg, num_labels=7, vocab_size=20, num_feats=9, rngs=nnx.Rngs(3))


def test_serving_path_equals_batch_path(small_model):
    """Event by event through the serving state (observe/predict: the incremental long-term
    merge) gives the logits of the batch forward pass (full recompute per position) at every
    position of ragged random histories, within 1e-5."""
    rng = np.random.default_rng(0)
    batch, lengths = _batch(rng, 3, 19, 7, lengths=[19, 6, 11])
    full = _forward(small_model, batch)
    g, st = nnx.split(small_model)

    @jax.jit
    def step(st, state, label, tokens, feats):
        m = nnx.merge(g, st)
        return m.predict(state, tokens, feats), m.observe(state, label, tokens, feats)

    state = small_model.init_state((3,))
    for t in range(19):
        logits, state = step(st, state, batch["label"][:, t], batch["tokens"][:, t],
                             batch["feats"][:, t])
        live = lengths > t
        np.testing.assert_allclose(np.asarray(logits)[live], full[live, t], atol=1e-5, rtol=0)
    assert int(state["long"].count[0]) == 19 - 4


def test_history_changes_predictions_and_no_history_ignores_it(small_model):
    rng = np.random.default_rng(1)
    batch, _ = _batch(rng, 2, 12, 7, lengths=[12, 12])
    other = dict(batch, label=jnp.asarray(np.where(np.asarray(batch["label"]) >= 0,
                                                   (np.asarray(batch["label"]) + 3) % 7, -1)))
    a = _forward(small_model, batch)
    b = _forward(small_model, other)
    assert np.allclose(a[:, 0], b[:, 0], atol=1e-6)  # position 0 has no history
    assert not np.allclose(a[:, 5:], b[:, 5:], atol=1e-3)
    nh = UserEmbeddingModel(UserEmbeddingConfig(dim=16, heads=2, history=False), num_labels=7,
                            vocab_size=20, num_feats=9, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(_forward(nh, batch), _forward(nh, other), atol=1e-6)


def test_sasrec_is_causal():
    rng = np.random.default_rng(2)
    m = SasRec(SasRecConfig(dim=16, heads=2, num_layers=1, max_len=16, dropout=0.0),
               num_labels=7, vocab_size=20, num_feats=9, rngs=nnx.Rngs(0))
    batch, _ = _batch(rng, 2, 10, 7, lengths=[10, 10])
    lab = np.asarray(batch["label"]).copy()
    lab[:, 6:] = (lab[:, 6:] + 1) % 7  # change the future only
    a = _forward(m, batch)
    b = _forward(m, dict(batch, label=jnp.asarray(lab)))
    np.testing.assert_allclose(a[:, :7], b[:, :7], atol=1e-5)  # t <= 6 sees events < t only
    assert not np.allclose(a[:, 7:], b[:, 7:], atol=1e-4)


def _np_ce(logits, label, scored, weight):
    logits = np.asarray(logits, np.float64)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    valid = (label >= 0) * scored * weight[:, None]
    nll = lse - np.take_along_axis(logits, np.maximum(label, 0)[..., None], -1)[..., 0]
    return float((nll * valid).sum() / max(valid.sum(), 1.0))


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 3e-2)])
def test_sequence_ce_value_and_gradient(dtype, tol):
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(3, 5, 6)).astype(np.float32) * 3
    label = rng.integers(-2, 6, (3, 5)).astype(np.int32)  # -1 padding, -2 unknown
    scored = (rng.random((3, 5)) > 0.3).astype(np.float32)
    weight = np.asarray([1, 1, 0], np.float32)
    x = jnp.asarray(logits, dtype)
    val, metrics = sequence_ce_value(x, jnp.asarray(label), jnp.asarray(scored),
                                     jnp.asarray(weight))
    ref_logits = np.asarray(x.astype(jnp.float32))
    assert abs(float(val) - _np_ce(ref_logits, label, scored, weight)) < tol * 10
    g = jax.grad(lambda z: sequence_ce_value(z, jnp.asarray(label), jnp.asarray(scored),
                                             jnp.asarray(weight))[0])(x)  # in the input dtype
    g = np.asarray(g.astype(jnp.float32))
    # reference gradient: (softmax - onehot) * valid / n_valid
    valid = (label >= 0) * scored * weight[:, None]
    p = np.exp(ref_logits - ref_logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    oh = np.eye(6)[np.maximum(label, 0)]
    ref_g = (p - oh) * valid[..., None] / valid.sum()
    # the loss upcasts to fp32; a bf16 gradient is rounded to bf16 (8 bits of mantissa)
    np.testing.assert_allclose(g, ref_g, atol=1e-6 if dtype == jnp.float32 else 2e-3)


def test_ranking_metrics_hand_computed():
    logits = jnp.asarray([[[0.1, 0.9, 0.5, 0.3], [0.8, 0.2, 0.1, 0.7], [0.1, 0.2, 0.3, 0.4]]])
    label = jnp.asarray([[1, 3, 0]])
    rank, pred = rank_outputs(logits, label, exclude_seen=False)
    assert np.asarray(rank).tolist() == [[0, 1, 3]]
    assert np.asarray(pred).tolist() == [[1, 0, 3]]
    # exclude_seen: at t = 2 the items 1 and 3 (seen at t = 0, 1) are not ranked
    rank_ex, pred_ex = rank_outputs(logits, label, exclude_seen=True)
    assert np.asarray(rank_ex).tolist() == [[0, 1, 1]]
    assert int(pred_ex[0, 2]) == 2
    m = ranking_metrics(np.asarray([0, 1, 3, 12]), k=10)
    assert m["accuracy"] == 0.25 and m["recall@10"] == 0.75
    assert abs(m["ndcg@10"] - (1 + 1 / np.log2(3) + 1 / np.log2(5)) / 4) < 1e-12


def test_task_encoding_truncates_and_marks_unknown_labels():
    from jaxslu.config import load_config
    from jaxslu.data.pipeline import DataError
    from jaxslu.task import get_task

    cfg = load_config("configs/user_embeddings.py", "tiny",
                      ["task_options.max_events=4", "task_options.event_buckets=[4,8]"])
    task = get_task(cfg)
    from jaxslu.personalization.task import PersonalizationAssets

    assets = PersonalizationAssets(["a", "b"], ["play", "radio"], ["hour=1"])
    ev = [{"label": x, "text": "play radio now", "feats": ["hour=1", "hour=9"]}
          for x in ("a", "b", "a", "zzz", "b", "a")]
    row = task.encode_row({"id": "u", "events": ev, "score_from": 0}, assets)
    assert row["label"].tolist() == [0, -2, 1, 0]  # the last 4; "zzz" unknown
    assert row["tokens"][0].tolist()[:3] == [1, 2, 0]
    assert row["feats"][0].tolist() == [1, 0]
    assert row["scored"].tolist() == [1, 1, 1, 1]
    row = task.encode_row({"id": "u", "events": ev, "score_from": 5}, assets)
    assert row["scored"].tolist() == [0, 0, 0, 1]
    with pytest.raises(DataError, match="max_events"):
        task.encode_row({"id": "u", "events": ev, "score_from": 1}, assets)
    batch = task.collate([dict(row, index=0)], 2)
    assert batch["label"].shape == (2, 4) and batch["weight"].tolist() == [1.0, 0.0]


def test_movielens_formats_and_errors(tmp_path):
    folder = ml.synthetic_movielens(tmp_path / "atomic", num_users=5, num_items=9)
    a = ml.load_movielens(folder)
    assert len(a) > 0 and a.kg and a.link and set(a.item_info) == {str(i) for i in range(1, 10)}
    seqs = a.sequences()
    for idx in seqs.values():
        assert (np.diff(a.timestamps[idx]) >= 0).all()
    # the same data in the GroupLens layout
    g = tmp_path / "ml-100k"
    g.mkdir()
    (g / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in
                                      zip(a.users, a.items, a.ratings.astype(int), a.timestamps)))
    flags = ["0"] * 19
    flags[1] = "1"
    (g / "u.item").write_text("1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(flags) +
                              "\n", encoding="latin-1")
    b = ml.load_movielens(tmp_path)  # finds ml-100k/ inside
    assert len(b) == len(a) and b.kg is None and b.item_info["1"]["genres"] == ["Action"]
    # read straight from a wheel-like zip
    whl = tmp_path / "recbole-1.2.1-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        for f in folder.iterdir():
            z.write(f, ml.WHEEL_PREFIX + f.name)
    c = ml.load_movielens(whl)
    assert len(c) == len(a) and len(c.kg) == len(a.kg)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\t"
                                       "timestamp:float\n1\t2\t3\n")
    with pytest.raises(ValueError, match=r"ml-100k.inter:2: 3 fields"):
        ml.load_movielens(bad)
    with pytest.raises(ml.MovieLensNotFound, match="forbid redistribution"):
        ml.find_movielens(tmp_path / "nowhere")


def test_movielens_leave_one_out_source(tmp_path):
    from jaxslu.personalization.data import movielens_seq

    folder = ml.synthetic_movielens(tmp_path / "m", num_users=6, num_items=20)
    tr, dv, te = (movielens_seq(s, path=str(folder)) for s in ("train", "dev", "test"))
    for i in range(len(te)):
        full = te.metadata(i)["events"]
        assert len(dv.metadata(i)["events"]) == len(full) - 1
        assert len(tr.metadata(i)["events"]) == len(full) - 2
        assert te.metadata(i)["score_from"] == len(full) - 1
    assert len(te.catalogue) == 20
    assert json.dumps(te.metadata(0))  # rows are plain JSON


def test_simulate_log_command_and_log_source(tmp_path, capsys):
    from jaxslu.cli import main
    from jaxslu.personalization.data import assistant_log

    out = tmp_path / "log.jsonl"
    assert main(["simulate-log", "--out", str(out), "--users", "40", "--seed", "3"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["users"] == 40 and out.exists()
    splits = {s: assistant_log(s, path=str(out)) for s in ("train", "dev", "test")}
    users = [{r["id"] for r in src.rows} for src in splits.values()]
    assert sum(map(len, users)) == 40 and not (users[0] & users[2]) and not (users[0] & users[1])
    row = splits["train"].metadata(0)
    assert row["events"][0]["feats"][0].startswith("hour=") and "kind" in row["events"][0]["meta"]
    with pytest.raises(FileNotFoundError, match="simulate-log"):
        assistant_log("train", path=str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="split"):
        assistant_log("validation", path=str(out))
