"""Device-directedness: conversational text and delivery, the loss term against a direct
formula, and the classifier task trained and evaluated on planted features."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxslu.directedness import corpus as C
from jaxslu.directedness.features import HASH_DIMS, hashed_bow


def test_conversational_texts_are_deterministic_distinct_and_split_by_template():
    a = C.conversational_texts("train", 300, seed=1)
    assert a == C.conversational_texts("train", 300, seed=1)
    assert a != C.conversational_texts("train", 300, seed=2)
    assert len(set(a)) == 300
    test = C.conversational_texts("test", 100, seed=1)
    assert not set(a) & set(test)
    with pytest.raises(ValueError, match="split 'dev'"):
        C.conversational_texts("dev", 5)


def test_delivery_draws_and_rendering(tmp_path):
    from jaxslu.audio.spoken_nlu import corpus_params, make_nlu_speakers

    spk = make_nlu_speakers(8, 8)[0]
    params = corpus_params(seed=0)
    kinds = [C.delivery_params(f"u{k}", "hello there", spk, params, 0.7, 0)["delivery"]
             for k in range(200)]
    share = kinds.count("conversational") / len(kinds)
    assert 0.6 < share < 0.8
    u = C.delivery_params("u1", "hello", spk, params, 1.0, 0)
    assert u == C.delivery_params("u1", "hello", spk, params, 1.0, 0)
    assert u["delivery"] == "conversational" and -14 <= u["gain_db"] <= -4
    assert 1500 <= u["lowpass_hz"] <= 4000 and u["rt60"] is not None
    plain = C.delivery_params("u1", "hello", spk, params, 0.0, 0)
    assert plain["delivery"] == "plain" and plain["gain_db"] is None
    # Rendering with a stand-in synthesizer: the conversational chain is quieter and has
    # less energy above the cut-off than the plain one.
    sr = params["sample_rate"]
    t = np.arange(sr) / sr
    fake = lambda text, **kw: (0.3 * np.sin(2 * np.pi * 200 * t) +
                               0.3 * np.sin(2 * np.pi * 6000 * t)).astype(np.float32)
    x_conv = C.render_delivery(dict(u, snr_db=None), fake)
    x_plain = C.render_delivery(dict(plain, snr_db=None, rt60=None), fake)
    hi = lambda x: np.abs(np.fft.rfft(x))[5900:6100].sum() / np.abs(np.fft.rfft(x)).sum()
    assert np.sqrt(np.mean(x_conv ** 2)) < 0.7 * np.sqrt(np.mean(x_plain ** 2))
    assert hi(x_conv) < 0.3 * hi(x_plain)
    assert np.max(np.abs(x_conv)) <= 1.0


def test_lowpass_attenuates_above_cutoff():
    sr = 16000
    t = np.arange(sr) / sr
    low = C.lowpass(np.sin(2 * np.pi * 300 * t).astype(np.float32), sr, 2000)
    high = C.lowpass(np.sin(2 * np.pi * 7000 * t).astype(np.float32), sr, 2000)
    assert np.std(low[1000:]) > 0.65  # ~1/sqrt(2) passes
    assert np.std(high[1000:]) < 0.07  # 2nd order, 1.8 octaves above: about -21 dB


def test_hashed_bow_counts_words():
    from jaxslu.directedness.features import _bucket

    v = hashed_bow("stop stop it")
    want = np.zeros(HASH_DIMS)
    for w in ("stop", "stop", "it"):
        want[_bucket(w)] += 1
    np.testing.assert_allclose(v, np.log1p(want), rtol=1e-6)
    assert hashed_bow("").sum() == 0


def test_directed_bce_matches_a_direct_formula():
    from jaxslu.directedness.task import directed_bce

    z = np.array([2.0, -1.0, 0.5, 3.0, -2.0], np.float32)
    y = np.array([1, 0, 0, 1, 1])
    w = np.array([1, 1, 1, 1, 0], np.float32)  # last row is padding
    value, m = directed_bce()({"label": jnp.asarray(y), "weight": jnp.asarray(w)},
                              {"directed_logit": jnp.asarray(z)}, None)
    p = 1 / (1 + np.exp(-z.astype(np.float64)))
    nll = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    real = w > 0
    pos = nll[real & (y == 1)].mean()
    neg = nll[real & (y == 0)].mean()
    np.testing.assert_allclose(float(value), 0.5 * pos + 0.5 * neg, rtol=1e-5)
    np.testing.assert_allclose(float(m["accuracy"]), 3 / 4)


def _plant(folder, n_train=240, n_test=120):
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        y = np.arange(n) % 2
        ac = rng.normal(size=(n, 6)).astype(np.float32)
        ac[:, 0] += 2.0 * y  # the acoustic evidence
        se = rng.normal(size=(n, 4)).astype(np.float32)
        se[:, 2] += 2.0 * y  # independent semantic evidence
        delivery = np.where(y == 1, "command", np.where(np.arange(n) % 4 == 0, "plain",
                                                        "conversational"))
        np.savez(folder / f"{split}.npz", acoustic=ac, semantic=se, label=y.astype(np.int32),
                 ids=np.asarray([f"{split}{i}" for i in range(n)]),
                 texts=np.asarray(["t"] * n), hypotheses=np.asarray(["h"] * n),
                 delivery=delivery)
    z = np.load(folder / "train.npz")
    (folder / "features.json").write_text(json.dumps({"standardize": {
        k: {"mean": z[k].mean(0).tolist(), "std": (z[k].std(0) + 1e-6).tolist()}
        for k in ("acoustic", "semantic")}}))


def test_classifiers_train_and_fusing_independent_evidence_helps(tmp_path):
    from pathlib import Path

    from jaxslu.config import load_config
    from jaxslu.eval import evaluate_workdir
    from jaxslu.train.loop import train

    feats = tmp_path / "f"
    feats.mkdir()
    _plant(feats)
    root = Path(__file__).resolve().parents[2]
    eers = {}
    for v in ("acoustic", "semantic", "fused"):
        cfg = load_config(root / "configs" / "device_directedness.py", v,
                          [f"data.options.path={feats}", "train.steps=120",
                           "train.checkpoint_every=120", "data.batch_size=64"])
        train(cfg, tmp_path / v, progress=False, devices=jax.devices()[:1])
        r = evaluate_workdir(tmp_path / v)["test"]
        assert r["num_examples"] == 120 and r["num_directed"] == 60
        assert set(r["per_delivery"]) == {"plain", "conversational"}
        eers[v] = r["eer"]
    # Each cue alone: d' = 2 -> EER about 16%; both independent cues: d' = 2.8 -> about 8%.
    assert 0.05 < eers["acoustic"] < 0.3 and 0.05 < eers["semantic"] < 0.3
    assert eers["fused"] < min(eers["acoustic"], eers["semantic"])
    from flax import nnx

    from jaxslu.directedness.task import DirectednessClassifier, DirectednessConfig

    with pytest.raises(ValueError, match="model.inputs"):
        DirectednessClassifier(DirectednessConfig(inputs="text"), acoustic_dim=1,
                               semantic_dim=1, rngs=nnx.Rngs(0))


def test_missing_features_folder_is_a_clear_error(tmp_path):
    from jaxslu.directedness.task import directedness_features

    with pytest.raises(FileNotFoundError, match="directedness_experiment"):
        directedness_features("train", path=str(tmp_path))
    with pytest.raises(ValueError, match="data.options.path"):
        directedness_features("train")
