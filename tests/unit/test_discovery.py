"""The discovery family's pieces against independent references: the pairwise margin term
(values and gradients against a per-pair numpy loop, fp32 and bf16, padded and unlabeled rows),
clustering accuracy against brute force over permutations, threshold calibration and open
thresholds on data with a known answer, the protocol split, TSV errors, grouped batches, and the
frozen-bottom decomposition of the pretrained encoder (bottom layers cached + top layers = the
whole encoder)."""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxslu.discovery import cluster as C
from jaxslu.discovery.data import (IntentGroups, Row, TsvError, protocol_split, read_domains,
                                   read_tsv)
from jaxslu.discovery.losses import pairwise_margin


def _reference_margin(e, labels, weight, mp, mn, mining):
    """Per-anchor / per-pair loops in float64."""
    e = np.asarray(e, np.float64)
    n = len(e)
    valid = [(labels[i] >= 0 and weight[i] > 0) for i in range(n)]
    d = 1.0 - e @ e.T
    pos_terms, neg_terms = [], []
    hard_pos, hard_neg = [], []
    for i in range(n):
        if not valid[i]:
            continue
        ps = [max(0.0, d[i, j] - mp) ** 2 for j in range(n)
              if j != i and valid[j] and labels[j] == labels[i]]
        ns = [max(0.0, mn - d[i, j]) ** 2 for j in range(n) if valid[j] and labels[j] != labels[i]]
        if ps:
            hard_pos.append(max(ps))
        if ns:
            hard_neg.append(max(ns))
        pos_terms += [p for p in ps if p > 0]
        neg_terms += [q for q in ns if q > 0]
    if mining == "hard":
        return ((np.mean(hard_pos) if hard_pos else 0.0) + (np.mean(hard_neg) if hard_neg else 0.0))
    return ((np.mean(pos_terms) if pos_terms else 0.0) + (np.mean(neg_terms) if neg_terms else 0.0))


def _batch(rng, n=12, d=8):
    x = rng.normal(size=(n, d)).astype(np.float32)
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, -1, 1, 0], np.int32)[:n]
    weight = np.ones(n, np.float32)
    weight[-1] = 0.0  # a padding row
    return x, labels, weight


def _normalized(x):
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("mining", ["hard", "all"])
def test_pairwise_margin_value_and_gradient_match_reference(rng, mining):
    x, labels, weight = _batch(rng)
    term = pairwise_margin(positive_margin=0.3, negative_margin=0.9, mining=mining)
    batch = {"intent": jnp.asarray(labels), "weight": jnp.asarray(weight)}

    def f(x):
        return term(batch, {"embedding": _normalized(x)}, None)[0]

    value = float(f(jnp.asarray(x)))
    ref = _reference_margin(np.asarray(_normalized(x)), labels, weight, 0.3, 0.9, mining)
    assert value > 0
    np.testing.assert_allclose(value, ref, rtol=1e-5, atol=1e-6)
    # gradient against central differences of the float64 reference
    g = np.asarray(jax.grad(f)(jnp.asarray(x)))
    eps = 1e-4
    num = np.zeros_like(x, np.float64)
    x64 = x.astype(np.float64)
    for i, j in itertools.product(range(x.shape[0]), range(x.shape[1])):
        for s in (1, -1):
            xp = x64.copy()
            xp[i, j] += s * eps
            e = xp / np.linalg.norm(xp, axis=-1, keepdims=True)
            num[i, j] += s * _reference_margin(e, labels, weight, 0.3, 0.9, mining) / (2 * eps)
    np.testing.assert_allclose(g, num, rtol=2e-3, atol=2e-4)
    # rows with weight 0 or no label get no gradient
    assert np.all(g[-1] == 0) and np.all(g[labels == -1] == 0)


def test_pairwise_margin_bf16_within_stated_tolerance(rng):
    x, labels, weight = _batch(rng)
    term = pairwise_margin(positive_margin=0.3, negative_margin=0.9)
    batch = {"intent": jnp.asarray(labels), "weight": jnp.asarray(weight)}
    e32 = _normalized(jnp.asarray(x))
    v32 = float(term(batch, {"embedding": e32}, None)[0])
    v16 = float(term(batch, {"embedding": e32.astype(jnp.bfloat16)}, None)[0])
    # bf16 embeddings (8 mantissa bits) are upcast: the loss stays within 2% of fp32
    np.testing.assert_allclose(v16, v32, rtol=2e-2)


def test_pairwise_margin_zero_when_margins_hold():
    # two intents on opposite poles, each a single point repeated: every margin is met
    e = jnp.asarray([[1.0, 0.0]] * 3 + [[-1.0, 0.0]] * 3)
    batch = {"intent": jnp.asarray([0, 0, 0, 1, 1, 1]), "weight": jnp.ones(6)}
    for mining in ("hard", "all"):
        value, m = pairwise_margin(mining=mining)(batch, {"embedding": e}, None)
        assert float(value) == 0.0
        assert float(m["negative_distance"]) == pytest.approx(2.0)


def test_pairwise_margin_rejects_bad_options():
    with pytest.raises(ValueError, match="mining"):
        pairwise_margin(mining="semi")
    with pytest.raises(ValueError, match="positive_margin"):
        pairwise_margin(positive_margin=0.8, negative_margin=0.5)


def test_clustering_accuracy_matches_brute_force(rng):
    for _ in range(5):
        t = rng.integers(0, 4, size=30)
        p = rng.integers(0, 4, size=30)
        best = max(np.mean([perm[a] == b for a, b in zip(p, t)])
                   for perm in itertools.permutations(range(4)))
        assert C.clustering_accuracy(t, p) == pytest.approx(best)
    # more clusters than classes: the unmatched clusters count as wrong
    assert C.clustering_accuracy([0, 0, 1, 1], [0, 1, 2, 3]) == pytest.approx(0.5)
    m = C.cluster_metrics(["a", "a", "b", "b"], [5, 5, 7, 7])
    assert m["nmi"] == m["ari"] == m["acc"] == 100.0


def _blobs(rng, k=6, n=20, d=16, spread=0.05):
    centers = C.normalize(rng.normal(size=(k, d)))
    x = np.concatenate([centers[i] + spread * rng.normal(size=(n, d)) for i in range(k)])
    return C.normalize(x), np.repeat(np.arange(k), n)


def test_calibrated_threshold_recovers_the_partition_and_transfers(rng):
    x, y = _blobs(rng)
    t, curve = C.calibrate_threshold(x, y)
    ids = C.cut(C.linkage(x), t, len(x))
    assert ids.max() + 1 == 6
    assert C.cluster_metrics(y, ids)["ari"] == 100.0
    # the same threshold on other blobs of the same spread finds their number too
    x2, y2 = _blobs(np.random.default_rng(7), k=9, n=30)
    assert C.cut(C.linkage(x2), t, len(x2)).max() + 1 == 9


def test_open_threshold_separates():
    t, bal = C.open_threshold(np.array([0.9, 0.8, 0.85]), np.array([0.2, 0.5, 0.6]))
    assert bal == 1.0 and 0.6 < t <= 0.8
    t, bal = C.open_threshold(np.array([0.9, 0.4]), np.array([0.5, 0.1]))
    assert bal == 0.75


def test_open_metrics():
    m = C.open_metrics(["a", "b", C.OPEN, C.OPEN], ["a", "b", C.OPEN, "a"])
    assert m["accuracy"] == 75.0
    assert m["f1_open"] == pytest.approx(100 * 2 / 3, abs=0.01)


def test_merge_small_dissolves_into_nearest(rng):
    x, y = _blobs(rng, k=3, n=10)
    ids = y.copy()
    ids[0] = 3  # a singleton cluster of a point of blob 0
    out, cents = C.merge_small(ids, x, min_size=2)
    assert len(cents) == 3 and out[0] == out[1]
    anchors = x[20:21]  # blob 2's point as a known-intent anchor
    out, cents = C.merge_small(np.array([0, 0, 1]), x[[0, 1, 21]], 2, anchors=anchors)
    assert out.tolist() == [0, 0, -1]


def test_protocol_split_is_deterministic_and_follows_the_ratios():
    rows = [Row(f"t{i}", f"l{i % 10}") for i in range(200)]
    a = protocol_split(rows, 0.5, 0.1, seed=3)
    b = protocol_split(rows, 0.5, 0.1, seed=3)
    assert a == b and len(a.known) == 5
    assert any(protocol_split(rows, 0.5, 0.1, seed=k).known != a.known for k in range(4, 9))
    labeled_labels = [rows[i].label for i in a.labeled]
    assert set(labeled_labels) == set(a.known)
    assert all(labeled_labels.count(k) == 2 for k in a.known)  # 10% of 20, at least 2
    assert not set(a.labeled) & set(a.unlabeled)
    assert len(a.labeled) + len(a.unlabeled) == 200
    with pytest.raises(ValueError, match="known-ratio"):
        protocol_split(rows, 0.0, 0.1, seed=0)


def test_read_tsv_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(TsvError, match="not found"):
        read_tsv(tmp_path / "nope.tsv")
    f = tmp_path / "a.tsv"
    f.write_text("text\tlabel\nhello there\tgreet\nno tab here\n")
    with pytest.raises(TsvError, match=r"a.tsv:3: expected text<TAB>label"):
        read_tsv(f)
    f.write_text("text\tlabel\nhello\t\n")
    with pytest.raises(TsvError, match="empty label"):
        read_tsv(f)
    f.write_text("text\tlabel\n  Hello   THERE \tgreet\n\n")
    assert read_tsv(f) == [Row("hello there", "greet")]
    d = tmp_path / "domains.json"
    d.write_text('{"x": ["a", "b"], "y": ["c"]}')
    assert read_domains(d) == {"a": "x", "b": "x", "c": "y"}


def test_intent_groups_hold_one_label_each():
    rows = [{"text": f"t{i}", "label": f"l{i % 3}", "feature_row": i} for i in range(14)]
    g = IntentGroups(rows, group_size=4, seed=0)
    for i in range(len(g)):
        members = g.metadata(i)["members"]
        assert len(members) == 4 and len({m["label"] for m in members}) == 1
    covered = {j for grp in g.groups for j in grp}
    assert covered == set(range(14))
    flat = IntentGroups(rows, group_size=1)
    assert [grp for grp in flat.groups] == [[i] for i in range(14)]


def test_cached_bottom_plus_top_layers_equals_the_whole_encoder(minilm_path, tmp_path):
    """FeatureStore (layers 0-3, stored float16) + DiscoveryEncoder's top 2 layers from the
    checkpoint = all-MiniLM-L6-v2's mean-pooled, normalized output within 2e-3 (cosine > 0.9999):
    the float16 cache is the only difference."""
    from jaxslu.config import ExperimentConfig
    from jaxslu.discovery.features import FeatureStore
    from jaxslu.discovery.models import DiscoveryEncoder, DiscoveryModelConfig
    from jaxslu.discovery.task import DiscoveryTask
    from jaxslu.nlu.bert import BertConfig, HFTokenizer, embed_sentences, load_pretrained
    from jaxslu.train.state import split_model
    from flax import nnx

    texts = ["what is my account balance", "play some jazz in the kitchen", "book a table",
             "how do i say thank you in french"]
    store = FeatureStore.build(texts, minilm_path, 4, 48, tmp_path)
    assert len(store) == 4 and store.meta["total_layers"] == 6
    again = FeatureStore.build(texts, minilm_path, 4, 48, tmp_path)  # from the cache
    assert again.directory == store.directory
    cfg = ExperimentConfig(name="t", task="intent_discovery", model=DiscoveryModelConfig(),
                           task_options={"pretrained": str(minilm_path),
                                         "features": str(store.directory)})
    task = DiscoveryTask(cfg)
    bcfg = BertConfig.from_hf_json(minilm_path / "config.json")
    model = DiscoveryEncoder(cfg.model, num_classes=0, bert_config=bcfg, rngs=nnx.Rngs(0))
    graphdef, params, rest = split_model(model)
    params = task.init_params(params, None)
    model = nnx.merge(graphdef, params, rest)
    lengths = np.array([store.length(i) for i in range(4)])
    feats = np.zeros((4, lengths.max(), store.dim), np.float32)
    for i in range(4):
        feats[i, :lengths[i]] = store.get(i)
    got = np.asarray(model({"features": feats, "lengths": lengths})["embedding"])
    ref = embed_sentences(load_pretrained(minilm_path), HFTokenizer(minilm_path / "tokenizer.json"),
                          texts)
    np.testing.assert_allclose(got, ref, atol=2e-3)
    assert np.min(np.sum(got * ref, axis=1)) > 0.9999


def test_refine_corrects_assignments_and_drops_empty_clusters(rng):
    from jaxslu.discovery.pipeline import refine

    x, y = _blobs(rng, k=4, n=10)
    # blobs 0, 1 are known (labeled rows: their first 3 points), 2 and 3 new clusters 2, 3;
    # a point of blob 2 is wrongly held by known intent 0, one of blob 0 by new cluster 3,
    # and an extra new cluster 4 holds nothing
    assign = y.copy()
    assign[20], assign[5] = 0, 3
    lab = np.concatenate([x[0:3], x[10:13]])
    out, cents = refine(x, assign, lab, [0, 0, 0, 1, 1, 1], n_known=2, n_total=5, steps=3)
    assert out.tolist() == y.tolist()
    assert len(cents) == 2
