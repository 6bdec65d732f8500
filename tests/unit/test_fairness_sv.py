"""Speaker verification with fair reweighting (jaxslu.fairness.verification, sv_metrics,
speakers; eSpeak voice variants in jaxslu.audio.synth).

* EER / minDCF against scikit-learn's ROC (several seeds, heavy ties) and a brute force over
  thresholds; known cases (separated, all tied).
* ARW weights (lambda_i = 1 + n a_i / sum_j a_j: sum 2n, padding 0), the pairwise weights (a
  pair weighs lambda_i + lambda_j), the min-max direction (one real train step with the
  adversary's group maximizing raises the adversary's weighted loss, the learner's step lowers
  it), and that lambda passes the learner no gradient.
* AAM-softmax value and gradient against a float64 numpy reference (margin, scale), padding
  rows with zero gradient; fp32 inputs at rtol 1e-5, bf16 inputs against the reference at the
  bf16-rounded inputs (rtol 1e-5) and at the unrounded ones (rtol 2e-2, bf16's 8-bit mantissa).
* The model: embedding shape, padding never changes an embedding, rows are independent.
* The panel (balanced, disjoint, deterministic, rendered once), trial lists (balanced per cell,
  within-cell non-targets, clear errors), the config variants and the task's checks.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxslu.audio import synth
from jaxslu.config import FrontendConfig, from_dict, load_config, to_dict
from jaxslu.fairness import speakers as SP
from jaxslu.fairness import sv_metrics as M
from jaxslu.fairness import verification as V

ONE = jax.devices()[:1]
CONFIG = "configs/speaker_verification.py"


# ------------------------------------------------------------------------------------------
# EER and minDCF
# ------------------------------------------------------------------------------------------


def _sk_rates(scores, labels):
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=False)
    return thr, 1.0 - tpr, fpr


def _sk_eer(scores, labels):
    """The crossing of sklearn's ROC polyline with P_miss = P_fa, found by bisection on the
    curve's arc parameter (an implementation independent of sv_metrics.eer)."""
    from scipy.optimize import brentq

    _, fnr, fpr = _sk_rates(scores, labels)
    s = np.arange(len(fpr), dtype=np.float64)
    f = lambda u: np.interp(u, s, fnr) - np.interp(u, s, fpr)
    u = brentq(f, 0.0, s[-1], xtol=1e-14)
    return float(np.interp(u, s, fpr))


def _brute_dcf(scores, labels, p, c_miss=1.0, c_fa=1.0):
    tar, non = scores[labels == 1], scores[labels == 0]
    best = np.inf
    for t in np.r_[np.unique(scores), np.inf]:
        pm, pf = np.mean(tar < t), np.mean(non >= t)
        best = min(best, c_miss * pm * p + c_fa * pf * (1 - p))
    return best / min(c_miss * p, c_fa * (1 - p))


def _random_trials(seed, n=400, ties=False):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < rng.uniform(0.2, 0.6)).astype(int)
    scores = rng.normal(size=n) + labels * rng.uniform(0.5, 2.5)
    if ties:
        scores = np.round(scores, 1)  # ~60 distinct values for 400 trials
    return scores, labels


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_eer_and_rates_match_sklearn_roc(seed, ties):
    scores, labels = _random_trials(seed, ties=ties)
    thr, pm, pf = M.error_rates(scores, labels)
    sk_thr, sk_pm, sk_pf = _sk_rates(scores, labels)
    np.testing.assert_allclose(pm, sk_pm, atol=1e-12)
    np.testing.assert_allclose(pf, sk_pf, atol=1e-12)
    np.testing.assert_allclose(thr[1:], sk_thr[1:])
    e = M.eer(scores, labels)
    assert e == pytest.approx(_sk_eer(scores, labels), abs=1e-10)
    # the crossing lies between the best operating points on either side
    assert min(np.maximum(pm, pf)) >= e - 1e-12 and e >= max(np.minimum(pm, pf)) - 1e-12


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_min_dcf_equals_brute_force(seed, ties):
    scores, labels = _random_trials(seed + 10, ties=ties)
    for p in (0.01, 0.05, 0.5):
        assert M.min_dcf(scores, labels, p) == pytest.approx(_brute_dcf(scores, labels, p),
                                                            abs=1e-12)
    assert M.min_dcf(scores, labels, 0.05, c_miss=10, c_fa=1) == pytest.approx(
        _brute_dcf(scores, labels, 0.05, 10, 1), abs=1e-12)


def test_metrics_known_cases_and_errors():
    labels = np.array([1, 1, 0, 0, 0])
    assert M.eer([3, 2, 1, 0, -1], labels) == 0.0
    assert M.min_dcf([3, 2, 1, 0, -1], labels, 0.01) == 0.0
    assert M.eer([1, 1, 1, 1, 1], labels) == pytest.approx(0.5)
    assert M.min_dcf([1, 1, 1, 1, 1], labels, 0.01) == pytest.approx(1.0)
    assert M.eer([0, 1, 2, 3, 4], labels) == 1.0  # perfectly reversed
    out = M.verification_metrics([3, 2, 1, 0, -1], labels)
    assert set(out) == {"eer", "min_dcf", "trials", "target_trials", "nontarget_trials"}
    assert set(out["min_dcf"]) == {"0.01", "0.05"} and out["target_trials"] == 2
    with pytest.raises(ValueError, match="non-target"):
        M.eer([1.0, 2.0], [1, 1])
    with pytest.raises(ValueError, match="NaN"):
        M.eer([np.nan, 1.0], [1, 0])
    with pytest.raises(ValueError, match="p_target"):
        M.min_dcf([1.0, 2.0], [1, 0], 0.0)
    with pytest.raises(ValueError, match="one entry per trial"):
        M.eer([1.0, 2.0, 3.0], [1, 0])


# ------------------------------------------------------------------------------------------
# AAM-softmax against a float64 reference
# ------------------------------------------------------------------------------------------


def _aam_ref(e, w, labels, weight, m, s):
    e = e / np.sqrt((e ** 2).sum(-1, keepdims=True) + 1e-12)
    w = w / np.sqrt((w ** 2).sum(0, keepdims=True) + 1e-12)
    cos = e @ w
    y = np.maximum(labels, 0)
    c = np.clip(cos[np.arange(len(y)), y], -1 + 1e-6, 1 - 1e-6)
    theta = np.arccos(c)
    phi = np.where(theta + m <= np.pi, np.cos(theta + m),
                   c - np.sin(np.pi - m) * m)
    logits = s * cos
    logits[np.arange(len(y)), y] = s * phi
    mx = logits.max(-1, keepdims=True)
    lse = mx[:, 0] + np.log(np.exp(logits - mx).sum(-1))
    loss = lse - s * phi
    wt = weight * (labels >= 0)
    return float((loss * wt).sum() / max(wt.sum(), 1e-6))


def _num_grad(f, x, eps=1e-6):
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        g[i] = (f(xp) - f(xm)) / (2 * eps)
    return g


@pytest.fixture(scope="module")
def aam_case():
    rng = np.random.default_rng(3)
    e = rng.normal(size=(6, 5))
    w = rng.normal(size=(5, 4))
    labels = np.array([0, 3, 1, 2, -1, 0])
    weight = np.array([1, 1, 1, 1, 0, 0], np.float64)  # two padding rows
    return e, w, labels, weight


@pytest.mark.parametrize("m,s", [(0.2, 30.0), (0.0, 1.0), (0.5, 16.0)])
def test_aam_softmax_value_and_gradient_fp32(aam_case, m, s):
    e, w, labels, weight = aam_case
    term = V.aam_softmax(margin=m, scale=s)
    batch = {"speaker": jnp.asarray(labels, jnp.int32), "weight": jnp.asarray(weight, jnp.float32)}

    def f(e_, w_):
        return term(batch, {"embedding": e_, "speaker_weight": w_}, None)[0]

    val, (ge, gw) = jax.value_and_grad(f, argnums=(0, 1))(jnp.asarray(e, jnp.float32),
                                                          jnp.asarray(w, jnp.float32))
    ref = _aam_ref(e, w, labels, weight, m, s)
    assert float(val) == pytest.approx(ref, rel=1e-5)
    ref_ge = _num_grad(lambda x: _aam_ref(x, w, labels, weight, m, s), e)
    ref_gw = _num_grad(lambda x: _aam_ref(e, x, labels, weight, m, s), w)
    scale = np.abs(ref_ge).max()
    np.testing.assert_allclose(np.asarray(ge), ref_ge, atol=2e-4 * scale)
    np.testing.assert_allclose(np.asarray(gw), ref_gw, atol=2e-4 * np.abs(ref_gw).max())
    assert np.all(np.asarray(ge)[4:] == 0.0)  # padding rows: exactly zero gradient


def test_aam_softmax_bf16_inputs(aam_case):
    e, w, labels, weight = aam_case
    term = V.aam_softmax(margin=0.2, scale=30.0)
    batch = {"speaker": jnp.asarray(labels, jnp.int32), "weight": jnp.asarray(weight, jnp.float32)}
    e16, w16 = jnp.asarray(e, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)
    val, ge = jax.value_and_grad(
        lambda x: term(batch, {"embedding": x, "speaker_weight": w16}, None)[0])(e16)
    assert val.dtype == jnp.float32 and ge.dtype == jnp.bfloat16
    rounded = _aam_ref(np.asarray(e16, np.float64), np.asarray(w16, np.float64), labels,
                       weight, 0.2, 30.0)
    assert float(val) == pytest.approx(rounded, rel=1e-5)  # f32 compute on the bf16 values
    assert float(val) == pytest.approx(_aam_ref(e, w, labels, weight, 0.2, 30.0), rel=2e-2)
    assert np.all(np.asarray(ge, np.float32)[4:] == 0.0) and np.isfinite(
        np.asarray(ge, np.float32)).all()


def test_aam_margin_lowers_the_target_logit():
    rng = np.random.default_rng(0)
    e, w = rng.normal(size=(8, 6)), rng.normal(size=(6, 5))
    labels = rng.integers(0, 5, 8)
    weight = np.ones(8)
    batch = {"speaker": jnp.asarray(labels, jnp.int32), "weight": jnp.asarray(weight)}
    vals = [float(V.aam_softmax(margin=m, scale=10.0)(
        batch, {"embedding": jnp.asarray(e), "speaker_weight": jnp.asarray(w)}, None)[0])
        for m in (0.0, 0.1, 0.3)]
    assert vals[0] < vals[1] < vals[2]
    with pytest.raises(ValueError, match="margin"):
        V.aam_softmax(margin=2.0)


# ------------------------------------------------------------------------------------------
# ARW weights and the pairwise weights
# ------------------------------------------------------------------------------------------


def test_arw_weights_formula():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=10) * 2
    w = np.r_[np.ones(7), np.zeros(3)]
    lam = np.asarray(V.arw_weights(jnp.asarray(logits, jnp.float32), jnp.asarray(w)))
    a = 1 / (1 + np.exp(-logits[:7]))
    np.testing.assert_allclose(lam[:7], 1 + 7 * a / a.sum(), rtol=1e-6)
    assert np.all(lam[7:] == 0.0)
    assert lam.sum() == pytest.approx(2 * 7, rel=1e-6)  # mean 2 over the real rows
    assert np.all(lam[:7] > 1.0)
    flat = np.asarray(V.arw_weights(jnp.full((5,), 0.3), jnp.ones(5)))
    np.testing.assert_allclose(flat, 2.0, rtol=1e-6)


def test_arw_term_is_the_lambda_weighted_aam():
    rng = np.random.default_rng(2)
    e, w = rng.normal(size=(6, 5)), rng.normal(size=(5, 4))
    labels = np.array([0, 1, 2, 3, 1, -1])
    weight = np.array([1, 1, 1, 1, 1, 0.0])
    logits = rng.normal(size=6)
    out = {"embedding": jnp.asarray(e, jnp.float32), "speaker_weight": jnp.asarray(w, jnp.float32),
           "labels": jnp.asarray(labels), "weights": jnp.asarray(weight, jnp.float32),
           "adversary_logits": jnp.asarray(logits, jnp.float32)}
    val, metrics = V.arw(margin=0.2, scale=30.0)({}, out, None)
    per = [_aam_ref(e[i:i + 1], w, labels[i:i + 1], np.ones(1), 0.2, 30.0) for i in range(5)]
    a = 1 / (1 + np.exp(-logits[:5]))
    lam = 1 + 5 * a / a.sum()
    assert float(val) == pytest.approx(float(np.sum(lam * per) / 5), rel=1e-5)
    assert float(metrics["aam"]) == pytest.approx(float(np.mean(per)), rel=1e-5)
    assert float(metrics["lambda_max"]) == pytest.approx(lam.max(), rel=1e-5)
    with pytest.raises(ValueError, match="adversary_hidden"):
        V.arw()({}, {k: v for k, v in out.items() if k != "adversary_logits"}, None)


def test_pairwise_weights_are_the_sum_of_sample_weights():
    rng = np.random.default_rng(4)
    e = rng.normal(size=(6, 4))
    labels = np.array([0, 0, 1, 1, 2, 2])
    weight = np.array([1, 1, 1, 1, 1, 0.0])
    logits = rng.normal(size=6)
    out = {"embedding": jnp.asarray(e, jnp.float32), "labels": jnp.asarray(labels),
           "weights": jnp.asarray(weight, jnp.float32),
           "adversary_logits": jnp.asarray(logits, jnp.float32)}
    s, b = 10.0, 0.4
    val, metrics = V.pairwise_arw(scale=s, bias=b)({}, out, None)
    en = e / np.linalg.norm(e, axis=1, keepdims=True)
    a = 1 / (1 + np.exp(-logits[:5]))
    lam = 1 + 5 * a / a.sum()
    sp = lambda z: np.log1p(np.exp(z))
    tar, non = [], []
    for i in range(5):
        for j in range(i + 1, 5):
            c = en[i] @ en[j]
            if labels[i] == labels[j]:
                tar.append((lam[i] + lam[j]) * sp(-s * (c - b)))
            else:
                non.append((lam[i] + lam[j]) * sp(s * (c - b)))
    assert float(metrics["target_pairs"]) == len(tar) == 2
    assert float(val) == pytest.approx(np.mean(tar) + np.mean(non), rel=1e-5)
    plain, _ = V.pairwise_arw(scale=s, bias=b, adversarial=False)(
        {}, {k: v for k, v in out.items() if k != "adversary_logits"}, None)
    assert float(plain) < float(val)  # unweighted: every pair weighs 2 < mean of lam_i + lam_j


# ------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------

TINY_FRONTEND = FrontendConfig(num_mels=24)


def _model(**kw):
    cfg = V.EcapaConfig(channels=16, dilations=(2, 3), se_channels=8, mfa_channels=32,
                        attention_channels=8, embed_dim=12, crop_seconds=0.0, **kw)
    return V.Ecapa(cfg, frontend_cfg=TINY_FRONTEND, num_speakers=5, rngs=nnx.Rngs(0))


def _jitted(model, method="embed"):
    """model.<method>(*args) jitted (eager dispatch of every op is slow on CPU)."""
    graphdef, state = nnx.split(model)
    return jax.jit(lambda *a: getattr(nnx.merge(graphdef, state), method)(*a))


def _speech(n, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    return (0.3 * np.sin(2 * np.pi * (120 + 40 * seed) * t) * (1 + np.sin(7 * t))
            + 0.05 * rng.normal(size=n)).astype(np.float32)


@pytest.mark.parametrize("stride", [1, 2])
def test_embedding_shape_and_padding_invariance(stride):
    model = _model(frame_stride=stride)
    embed_fn = _jitted(model)
    lengths = [5000, 8000, 12345, 300]
    rows = [_speech(n, k) for k, n in enumerate(lengths)]

    def embed(n_pad, extra_noise=0.0):
        x = np.zeros((len(rows), n_pad), np.float32)
        for k, r in enumerate(rows):
            x[k, :len(r)] = r
            x[k, len(r):] = extra_noise  # garbage past the length must not matter
        return np.asarray(embed_fn(jnp.asarray(x), jnp.asarray(lengths, jnp.int32)))

    a = embed(12800)
    assert a.shape == (4, 12) and np.isfinite(a).all()
    np.testing.assert_allclose(embed(16000, 0.7), a, rtol=1e-4, atol=1e-5)
    if stride == 1:
        return
    # rows are independent: one row alone gives its embedding in the batch
    alone = np.asarray(embed_fn(jnp.asarray(rows[1][None]), jnp.asarray([8000], jnp.int32)))
    np.testing.assert_allclose(alone[0], a[1], rtol=1e-4, atol=1e-5)


def test_model_outputs_views_adversary_and_regions():
    model = _model(adversary_hidden=8, kmeans_regions=3)
    b, v, n = 4, 2, 6000
    audio = np.stack([np.stack([_speech(n, 2 * k + j) for j in range(v)]) for k in range(b)])
    batch = {"audio": jnp.asarray(audio), "audio_lengths": jnp.full((b, v), n, jnp.int32),
             "speaker": jnp.asarray([0, 1, 2, -1], jnp.int32),
             "weight": jnp.asarray([1, 1, 1, 0], jnp.float32)}
    graphdef, state = nnx.split(model)
    out = jax.jit(lambda b: nnx.merge(graphdef, state)(b, train=False))(batch)
    assert out["embedding"].shape == (8, 12) and out["speaker_weight"].shape == (12, 5)
    np.testing.assert_array_equal(np.asarray(out["labels"]), [0, 0, 1, 1, 2, 2, -1, -1])
    np.testing.assert_array_equal(np.asarray(out["weights"]), [1, 1, 1, 1, 1, 1, 0, 0])
    assert out["adversary_logits"].shape == (8,)
    assert set(np.asarray(out["regions"]).tolist()) <= {0, 1, 2}
    for path, p in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        assert p.get_metadata().get("logical_axes") is not None, path


def test_batch_kmeans_recovers_separated_clusters():
    rng = np.random.default_rng(0)
    centres = np.eye(6)[:3]
    x = np.concatenate([c + 0.05 * rng.normal(size=(5, 6)) for c in centres])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    w = np.ones(15)
    w[-1] = 0  # a padding row does not seed or move centroids
    assign, cents = V.batch_kmeans(jnp.asarray(x, jnp.float32), jnp.asarray(w), 3, 5)
    assign = np.asarray(assign)
    groups = [set(assign[i * 5:(i + 1) * 5 - (i == 2)].tolist()) for i in range(3)]
    assert all(len(g) == 1 for g in groups) and len(set.union(*groups)) == 3
    np.testing.assert_allclose(np.linalg.norm(np.asarray(cents), axis=1), 1.0, rtol=1e-5)


def _tiny_cfg(variant="tiny_arw", **model_kw):
    cfg = load_config(CONFIG, variant)
    model = dataclasses.replace(cfg.model, channels=16, dilations=(2,), se_channels=8,
                                mfa_channels=16, attention_channels=8, embed_dim=8,
                                crop_seconds=0.0, **model_kw)
    optim = dataclasses.replace(cfg.optim, warmup_steps=0, learning_rate=1e-3,
                                groups=tuple(dict(g, learning_rate=1e-2) for g in cfg.optim.groups))
    return dataclasses.replace(cfg, model=model, optim=optim,
                               frontend=dataclasses.replace(cfg.frontend, num_mels=16))


def _batch(mesh, rows=8, n=4000, speakers=5):
    from jaxslu.parallel import mesh as mesh_lib

    audio = np.stack([np.stack([_speech(n, 10 * (k % speakers) + j) for j in range(2)])
                      for k in range(rows)]).astype(np.float32)
    local = {"audio": audio, "audio_lengths": np.full((rows, 2), n, np.int32),
             "speaker": (np.arange(rows) % speakers).astype(np.int32),
             "index": np.arange(rows, dtype=np.int32), "weight": np.ones(rows, np.float32)}
    local["weight"][-1] = 0.0
    return mesh_lib.to_global_batch(local, mesh, None)


def _mix(new, old, adversary_from_old: bool, learner_from_old: bool):
    from jaxslu.train.state import param_path

    def pick(path, n, o):
        adv = param_path(path).startswith("adversary/")
        return o if (adv and adversary_from_old) or (not adv and learner_from_old) else n

    return jax.tree_util.tree_map_with_path(pick, new, old)


@pytest.mark.parametrize("variant", ["tiny_arw", "tiny_pairwise_arw"])
def test_min_max_step_adversary_ascends_learner_descends(variant):
    from jaxslu.train.loop import make_trainer

    cfg = _tiny_cfg(variant, kmeans_regions=2 if variant == "tiny_pairwise_arw" else 0,
                    kmeans_iterations=2)
    trainer = make_trainer(cfg, {"frontend_cfg": cfg.frontend, "num_speakers": 5}, ONE)
    state = trainer.init_state()
    old = jax.tree.map(np.asarray, state.params)  # the step donates `state`
    batch = _batch(trainer.mesh)
    new_state, metrics = trainer.train_step(state, batch)
    assert float(metrics["finite"]) == 1.0
    new = jax.tree.map(np.asarray, new_state.params)

    from jaxslu.train.step import forward

    @jax.jit
    def objective(params):
        # the objective the step differentiates (train=True; crop_seconds 0 and no dropout, so
        # no randomness); the adversary only moves the adversarial term (aam_softmax, the
        # other term of pairwise_arw's objective, does not depend on it)
        out = forward(trainer.graphdef, params, trainer.rest, batch, train=True,
                      constants=new_state.constants)
        return trainer.objective(batch, out, params)[0]

    weighted = lambda params: float(objective(params))

    base = weighted(old)
    assert weighted(_mix(new, old, adversary_from_old=False, learner_from_old=True)) > base
    assert weighted(_mix(new, old, adversary_from_old=True, learner_from_old=False)) < base


def test_lambda_passes_no_gradient_to_the_learner():
    """The ARW loss's gradient wrt every learner parameter equals the gradient with the
    adversary's logits under stop_gradient (lambda reaches the learner only through l_i)."""
    from jaxslu.train.state import param_path

    model = _model(adversary_hidden=8, kmeans_regions=2)
    graphdef, params = nnx.split(model, nnx.Param)
    batch = {k: v for k, v in _batch_local().items()}
    term = V.arw()

    def loss(p, stop):
        out = dict(nnx.merge(graphdef, p)(batch, train=False))
        if stop:
            out["adversary_logits"] = jax.lax.stop_gradient(out["adversary_logits"])
        return term(batch, out, p)[0]

    g1, g0 = jax.jit(lambda p: (jax.grad(loss)(p, False), jax.grad(loss)(p, True)))(params)
    flat1 = jax.tree_util.tree_flatten_with_path(g1)[0]
    flat0 = jax.tree.leaves(g0)
    top = max(float(np.abs(np.asarray(x)).max()) for x in flat0)
    learner = 0
    for (path, a), b in zip(flat1, flat0):
        if not param_path(path).startswith("adversary/"):
            # equal up to float summation order (a gradient through lambda would be of the
            # gradients' own size)
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6 * top)
            learner += 1
        else:
            assert np.abs(np.asarray(b)).max() == 0  # no gradient when stopped
    assert learner > 10


def _batch_local(rows=4, n=5000):
    audio = np.stack([np.stack([_speech(n, 10 * k + j) for j in range(2)]) for k in range(rows)])
    return {"audio": jnp.asarray(audio, jnp.float32),
            "audio_lengths": jnp.full((rows, 2), n, jnp.int32),
            "speaker": jnp.asarray(np.arange(rows) % 3, jnp.int32),
            "weight": jnp.ones((rows,), jnp.float32)}


# ------------------------------------------------------------------------------------------
# Task checks and config
# ------------------------------------------------------------------------------------------


def test_config_variants_round_trip_and_errors():
    for variant in ("default", "arw", "pairwise_arw", "pairwise", "tiny", "tiny_arw",
                    "tiny_pairwise_arw", "tiny_pairwise"):
        cfg = load_config(CONFIG, variant)
        assert from_dict(to_dict(cfg)) == cfg, variant
        if "arw" in variant:
            (g,) = cfg.optim.groups
            assert g["pattern"] == "^adversary/" and g["maximize"] is True
            assert cfg.model.adversary_hidden > 0
        else:
            assert cfg.optim.groups == () and cfg.model.adversary_hidden == 0
    assert load_config(CONFIG, "pairwise_arw").model.kmeans_regions > 0
    ablation = load_config(CONFIG, "pairwise")
    assert ablation.loss == load_config(CONFIG, "pairwise_arw").loss
    assert ablation.loss_options["pairwise_arw"]["adversarial"] is False
    with pytest.raises(ValueError, match="unknown variant 'big'"):
        load_config(CONFIG, "big")


def test_task_checks_name_the_problem():
    from jaxslu.train.loop import make_trainer

    kw = {"num_speakers": 5}
    cfg = _tiny_cfg("tiny_arw")
    no_group = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, groups=()))
    with pytest.raises(ValueError, match="ascend"):
        make_trainer(no_group, {"frontend_cfg": cfg.frontend, **kw}, ONE)
    no_adv = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, adversary_hidden=0),
                                 optim=dataclasses.replace(cfg.optim, groups=()))
    with pytest.raises(ValueError, match="adversary_hidden > 0"):
        make_trainer(no_adv, {"frontend_cfg": cfg.frontend, **kw}, ONE)
    base = _tiny_cfg("tiny", adversary_hidden=4)
    with pytest.raises(ValueError, match="no arw or pairwise_arw"):
        make_trainer(base, {"frontend_cfg": cfg.frontend, **kw}, ONE)
    # the unweighted pairwise ablation needs no adversary (and is accepted without one)
    abl = _tiny_cfg("tiny_pairwise")
    make_trainer(abl, {"frontend_cfg": abl.frontend, **kw}, ONE)
    with pytest.raises(ValueError, match="unknown for speaker_verification"):
        V.SpeakerVerificationTask(dataclasses.replace(cfg, task_options={"viewz": 2}))


# ------------------------------------------------------------------------------------------
# Panel, rendering and trials
# ------------------------------------------------------------------------------------------


def test_panel_is_balanced_disjoint_and_deterministic():
    panel = SP.make_panel(48, seed=3, voices=["en-us", "en-gb", "en-029"])
    assert panel == SP.make_panel(48, seed=3, voices=["en-us", "en-gb", "en-029"])
    assert panel != SP.make_panel(48, seed=4, voices=["en-us", "en-gb", "en-029"])
    cells = {}
    for s in panel:
        assert synth.VARIANTS[s.variant] == s.gender
        cells.setdefault((s.accent, s.gender), []).append(s)
    assert len(cells) == 6 and {len(v) for v in cells.values()} == {8}
    for group in cells.values():
        test = [s for s in group if s.split == "test"]
        assert len(test) == 3  # round(8 / 3)
        assert len({s.variant for s in test}) == 3  # distinct variants among test speakers
        # variants spread: no repeat before all of the gender's variants are used
        n_var = 5 if group[0].gender == "female" else 7
        assert len({s.variant for s in group}) == min(8, n_var)
        # a repeated variant gets one of the pitch levels away from the first use's 50 +- 15
        for s in group:
            first = next(x for x in group if x.variant == s.variant)
            if first is s:
                assert 35 <= s.pitch <= 65
            else:
                assert min(abs(s.pitch - lv) for lv in SP.PITCH_LEVELS) <= 5
    assert len({s.id for s in panel}) == 48
    with pytest.raises(ValueError, match="multiple of the 16"):
        SP.make_panel(100)
    with pytest.raises(ValueError, match="at least 3"):
        SP.make_panel(32)
    with pytest.raises(ValueError, match="unknown voice"):
        SP.make_panel(6, voices=["en-xx"])


def test_render_panel_once_and_serve_it(tmp_path, monkeypatch):
    opts = dict(num_speakers=12, utterances_per_speaker=2, voices=["en-us", "en-gb-scotland"],
                max_seconds=1.5, min_words=3, max_words=6, fsdd_train_per_speaker=10,
                cache_dir=str(tmp_path))
    train = V.speaker_panel("train", **opts)
    test = V.speaker_panel("test", **opts)
    spk_train = {train.metadata(i)["speaker"] for i in range(len(train))}
    spk_test = {test.metadata(i)["speaker"] for i in range(len(test))}
    assert not spk_train & spk_test
    assert len([s for s in spk_train if s.startswith("fsdd_")]) == 5
    assert len(test) == 8 * 2 and len(train) == 4 * 2 + 50
    ex = test[0]
    assert ex["sample_rate"] == 16000 and 0.3 < len(ex["audio"]) / 16000 <= 1.5
    assert ex["meta"]["gender"] in ("female", "male") and ex["meta"]["corpus"] == "espeak"
    fsdd_ex = [train.metadata(i) for i in range(len(train))
               if train.metadata(i)["speaker"].startswith("fsdd_")]
    digits = [m["text"] for m in fsdd_ex if m["speaker"] == "fsdd_george"]
    assert len(digits) == 10 == len(set(digits))  # one recording of each digit
    # a second build renders nothing (and a changed option renders into another folder)
    monkeypatch.setattr(synth, "synthesize", lambda **k: (_ for _ in ()).throw(
        AssertionError("re-rendered")))
    (next(tmp_path.glob("speaker_panel-*")) / "manifest.jsonl").unlink()
    again = V.speaker_panel("test", **opts)
    assert [again.metadata(i) for i in range(len(again))] == [
        test.metadata(i) for i in range(len(test))]
    with pytest.raises(ValueError, match="split 'dev' unknown"):
        V.speaker_panel("dev", **opts)
    fsdd_test = V.speaker_panel("fsdd_test", **opts)
    assert len(fsdd_test) == 250


def _records(cells, per_speaker):
    out = []
    for (g, a), n_spk in cells.items():
        for s in range(n_spk):
            for u in range(per_speaker):
                out.append({"speaker": f"{g}-{a}-{s}", "meta": {"gender": g, "accent": a}})
    return out


def test_trials_balanced_within_cells():
    recs = _records({("female", "x"): 3, ("male", "x"): 4, ("female", "y"): 2,
                     ("male", "y"): 3}, 5)
    trials = SP.make_trials(recs, per_cell=12, seed=1)
    assert trials == SP.make_trials(recs, per_cell=12, seed=1)
    assert trials != SP.make_trials(recs, per_cell=12, seed=2)
    by_cell = {}
    for t in trials:
        a, b = recs[t["a"]], recs[t["b"]]
        assert a["meta"] == b["meta"] == t["cell"]  # non-targets within gender and accent
        assert (a["speaker"] == b["speaker"]) == t["target"] and t["a"] != t["b"]
        by_cell.setdefault(tuple(t["cell"].values()), []).append(t["target"])
    assert len(by_cell) == 4
    for flags in by_cell.values():
        assert sum(flags) == 12 and len(flags) == 24
    pairs = [(t["a"], t["b"]) for t in trials]
    assert len(set(pairs)) == len(pairs)
    # targets spread evenly over a cell's speakers
    spk = [recs[t["a"]]["speaker"] for t in trials if t["target"]
           and t["cell"] == {"gender": "male", "accent": "x"}]
    assert sorted(np.unique(spk, return_counts=True)[1].tolist()) == [3, 3, 3, 3]


def test_trials_errors_name_the_input():
    with pytest.raises(ValueError, match="speaker 'female-x-1' has 1 utterance"):
        SP.make_trials(_records({("female", "x"): 2}, 2)[:3], per_cell=1)
    with pytest.raises(ValueError, match="has 1 speaker"):
        SP.make_trials(_records({("female", "x"): 1, ("male", "x"): 2}, 3), per_cell=1)
    with pytest.raises(ValueError, match="lower the trials per cell"):
        SP.make_trials(_records({("female", "x"): 2}, 3), per_cell=50)


def test_cohort_report_gap_and_spread():
    rng = np.random.default_rng(0)
    cells, scores, labels = [], [], []
    for g, sep in (("female", 1.0), ("male", 3.0)):
        for a in ("x", "y"):
            for t in (1, 0):
                n = 200
                scores += list(rng.normal(size=n) + t * (sep + (a == "y")))
                labels += [t] * n
                cells += [{"gender": g, "accent": a}] * n
    r = V.cohort_report(np.asarray(scores), np.asarray(labels), cells)
    f, m = r["per_cohort"]["gender"]["female"]["eer"], r["per_cohort"]["gender"]["male"]["eer"]
    assert f > m and r["gender_gap"]["female_minus_male"] == pytest.approx(f - m)
    assert r["gender_gap"]["relative"] == pytest.approx(abs(f - m) / ((f + m) / 2))
    acc = r["per_cohort"]["accent"]
    assert r["accent_spread"]["max_minus_min"] == pytest.approx(
        abs(acc["x"]["eer"] - acc["y"]["eer"]))
    assert r["per_cohort"]["gender"]["female"]["trials"] == 800


# ------------------------------------------------------------------------------------------
# eSpeak voice variants
# ------------------------------------------------------------------------------------------


def _f0(x, sr=16000):
    out = []
    for i in range(0, len(x) - 640, 640):
        b = x[i:i + 640] - x[i:i + 640].mean()
        if np.sqrt((b ** 2).mean()) < 0.03:
            continue
        ac = np.correlate(b, b, "full")[639:]
        lo, hi = sr // 400, sr // 60
        out.append(sr / (lo + np.argmax(ac[lo:hi])))
    return float(np.median(out))


def test_variants_load_and_set_gender():
    text = "please set an alarm for seven"
    for v in ("m1", "m7", "f1", "f5"):
        synth.check_voice("en-gb", v)
    male = synth.synthesize(text, voice="en-us", variant="m3")
    female = synth.synthesize(text, voice="en-us", variant="f3")
    plain = synth.synthesize(text, voice="en-us")
    assert _f0(female) > 1.5 * _f0(male)
    assert not np.array_equal(male, plain)
    np.testing.assert_array_equal(female, synth.synthesize(text, voice="en-us", variant="f3"))
    with pytest.raises(ValueError, match="unknown voice variant 'f9'"):
        synth.synthesize(text, variant="f9")
    with pytest.raises(ValueError, match="unknown voice variant"):
        synth.check_voice("en-us", "zz")


def test_variant_cache_keys(tmp_path, monkeypatch):
    text = "turn off the lights"
    base = dict(text=text, voice="en-us", rate=175, pitch=50, noise_snr_db=None, seed=0,
                sample_rate=16000)
    # no variant: the key of earlier versions (parameters without a "variant" field)
    import hashlib
    import json
    blob = json.dumps({**base, "espeak": synth.espeak_version(), "format": 1}, sort_keys=True)
    assert synth._cache_key(base) == hashlib.sha256(blob.encode()).hexdigest()
    synth.synthesize(text, cache_dir=tmp_path)
    synth.synthesize(text, cache_dir=tmp_path, variant="f2")
    names = sorted(p.stem for p in tmp_path.glob("*.npy"))
    assert names == sorted([synth._cache_key(base), synth._cache_key({**base, "variant": "f2"})])


def test_select_voice_rejects_a_silent_fallback(monkeypatch):
    """eSpeak silently keeps the plain voice for an unknown variant file: the identifier check
    catches it (simulated by a variant table entry eSpeak has no file for)."""
    monkeypatch.setitem(synth.VARIANTS, "m99", "male")
    with pytest.raises(synth.SynthesisError, match="could not load voice 'en-us' with variant"):
        synth.check_voice("en-us", "m99")
