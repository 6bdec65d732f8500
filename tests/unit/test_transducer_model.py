"""The transducer model: contract outputs, padding invariance, causality, heads, gradients."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxslu.config import FrontendConfig
from jaxslu.losses.base import Objective
from jaxslu.losses.terms import joint_logits
from jaxslu.models.transducer import (EncoderConfig, PredictorConfig, Transducer,
                                      TransducerConfig)
from jaxslu.registry import MODELS

# float32; 1e-5 absolute at O(1) activations is a few ulps of accumulated rounding.
TOL = 1e-5
V, INTENTS, TAGS = 7, 3, 4
FRONTEND = FrontendConfig(num_mels=16)


def _cfg(kind="conformer", causal=False, **kw):
    enc = EncoderConfig(kind=kind, num_layers=1, dim=16, heads=2, ff_mult=2, conv_kernel=3,
                        dropout=0.1, causal=causal, lstm_hidden=12)
    return TransducerConfig(encoder=enc, predictor=PredictorConfig(embed_dim=8, hidden=12),
                            joint_dim=16, ctc_head=True, intent_head=True, slot_head=True, **kw)


def _build(cfg, frontend=FRONTEND, seed=0):
    return MODELS.get("transducer").factory(cfg, frontend_cfg=frontend, vocab_size=V,
                                            num_intents=INTENTS, num_slot_tags=TAGS,
                                            rngs=nnx.Rngs(seed))


@pytest.fixture(scope="module")
def model():
    return _build(_cfg())


# Jitted forward passes: one compile per batch shape is much cheaper than eager op-by-op.
_forward = nnx.jit(lambda m, b: m(b))
_forward_train = nnx.jit(lambda m, b, r: m(b, train=True, rngs=r))


def _batch(rng, audio_lengths, token_lengths, n=None, u=None, garbage=True):
    """A batch whose padding holds noise (audio) and random ids (tokens), not zeros."""
    n = n or max(audio_lengths)
    u = u or max(max(token_lengths), 1)
    b = len(audio_lengths)
    audio = rng.uniform(-0.5, 0.5, size=(b, n)).astype(np.float32)
    tokens = rng.integers(1, V, size=(b, u)).astype(np.int32)
    if not garbage:
        for i in range(b):
            audio[i, audio_lengths[i]:] = 0
            tokens[i, token_lengths[i]:] = 0
    return {"audio": jnp.asarray(audio), "audio_lengths": jnp.asarray(audio_lengths, jnp.int32),
            "tokens": jnp.asarray(tokens), "token_lengths": jnp.asarray(token_lengths, jnp.int32)}


def test_registry_state_and_logical_axes(model):
    entry = MODELS.get("transducer")
    assert entry.factory is Transducer and entry.config is TransducerConfig
    _, params, rest = nnx.split(model, nnx.Param, ...)
    assert not jax.tree.leaves(rest), "model must hold only nnx.Param state"
    flat = list(nnx.to_flat_state(params))
    assert len(flat) > 20
    for path, var in flat:
        axes = var.get_metadata().get("logical_axes")
        assert axes is not None and len(axes) == np.ndim(var.get_value()), path


def test_output_shapes_and_lengths(model, rng):
    batch = _batch(rng, [3200, 2000, 1], [3, 1, 0])
    out = _forward(model, batch)
    t = model.output_frames(3200)
    assert t == 5  # 18 feature frames (25 ms / 10 ms) -> 9 -> 5
    assert out["encoder"].shape == (3, t, 16)
    np.testing.assert_array_equal(out["encoder_lengths"],
                                  [model.output_frames(n) for n in (3200, 2000, 1)])
    assert out["encoder_lengths"].dtype == jnp.int32
    assert out["predictor"].shape == (3, 4, 16)
    assert out["joint_weight"].shape == (16, V) and out["joint_bias"].shape == (V,)
    assert out["ctc_logits"].shape == (3, t, V)
    assert out["intent_logits"].shape == (3, INTENTS)
    assert out["slot_logits"].shape == (3, 3, TAGS)
    assert np.all(np.asarray(out["encoder"][1, out["encoder_lengths"][1]:]) == 0)


def test_padding_does_not_change_valid_outputs(model, rng):
    lens, tlens = [3200, 2100, 1500], [3, 1, 2]
    batch = _batch(rng, lens, tlens, n=3600, u=5)
    out = _forward(model, batch)
    for i, (n, u) in list(enumerate(zip(lens, tlens)))[1:]:
        row = {"audio": batch["audio"][i:i + 1, :n], "tokens": batch["tokens"][i:i + 1, :u],
               "audio_lengths": batch["audio_lengths"][i:i + 1],
               "token_lengths": batch["token_lengths"][i:i + 1]}
        alone = _forward(model, row)
        t = int(alone["encoder_lengths"][0])
        assert t == int(out["encoder_lengths"][i])
        np.testing.assert_allclose(alone["encoder"][0, :t], out["encoder"][i, :t], atol=TOL)
        np.testing.assert_allclose(alone["ctc_logits"][0, :t], out["ctc_logits"][i, :t], atol=TOL)
        np.testing.assert_allclose(alone["predictor"][0], out["predictor"][i, :u + 1], atol=TOL)
        np.testing.assert_allclose(alone["intent_logits"][0], out["intent_logits"][i], atol=TOL)
        np.testing.assert_allclose(alone["slot_logits"][0], out["slot_logits"][i, :u], atol=TOL)


@nnx.jit
def _methods(m, batch):
    """The decoding/evaluation methods, jitted together (one compile instead of eager ops)."""
    enc, lengths = m.encode(batch["audio"], batch["audio_lengths"])
    pred = m.predict(batch["tokens"], batch["token_lengths"])
    state = m.predictor_init(batch["tokens"].shape[0])
    labels = jnp.concatenate([jnp.zeros_like(batch["tokens"][:, :1]), batch["tokens"]], 1)
    steps = []
    for u in range(labels.shape[1]):
        step_out, state = m.predictor_step(labels[:, u], state)
        steps.append(step_out)
    return {"encoder": enc, "lengths": lengths,
            "intent": m.intent_from_encoder(enc, lengths),
            "slots": m.slots_from_tokens(batch["tokens"], batch["token_lengths"], enc, lengths),
            "joint": m.joint(enc[:, :, None], pred[:, None]),
            "steps": jnp.stack(steps, 1)}


def test_methods_agree_with_forward_and_loss_contract(model, rng):
    batch = _batch(rng, [3200, 2400], [3, 2], garbage=False)
    out = _forward(model, batch)
    got = _methods(model, batch)
    np.testing.assert_allclose(got["encoder"], out["encoder"], atol=TOL)
    np.testing.assert_array_equal(got["lengths"], out["encoder_lengths"])
    np.testing.assert_allclose(got["intent"], out["intent_logits"], atol=TOL)
    np.testing.assert_allclose(got["slots"], out["slot_logits"], atol=TOL)
    # The joint method and the loss terms' joint_logits compute the same thing.
    np.testing.assert_allclose(got["joint"], joint_logits(out, "tanh"), atol=TOL)
    # Stepping the prediction network one token at a time reproduces its full-sequence output
    # (at each row's real label positions; later positions are padding).
    for u in range(got["steps"].shape[1]):
        valid = u <= np.asarray(batch["token_lengths"])
        np.testing.assert_allclose(got["steps"][valid, u], out["predictor"][valid, u], atol=TOL)


@pytest.mark.parametrize("kind", ["conformer", "lstm"])
def test_causal_encoder_ignores_future_audio(rng, kind):
    # Utterance normalization uses the whole utterance: streaming needs normalize="none".
    frontend = dataclasses.replace(FRONTEND, normalize="none")
    m = _build(_cfg(kind, causal=True), frontend)
    n, cut = 4800, 2000
    audio = rng.uniform(-0.5, 0.5, size=(1, n)).astype(np.float32)
    changed = audio.copy()
    changed[:, cut:] = rng.uniform(-0.5, 0.5, size=(1, n - cut))
    lens = jnp.asarray([n])
    e0, _ = m.encode(jnp.asarray(audio), lens)
    e1, _ = m.encode(jnp.asarray(changed), lens)
    # Encoder frame t sees feature frames <= 4t, i.e. samples < 4t*160 + 400: t <= 2 for cut=2000.
    np.testing.assert_allclose(e0[0, :3], e1[0, :3], atol=TOL)
    assert np.abs(np.asarray(e0[0, 3:] - e1[0, 3:])).max() > 1e-3


def test_training_randomness_comes_from_call_rngs(model, rng):
    batch = _batch(rng, [3200, 2400], [3, 2], garbage=False)
    keys = lambda: nnx.Rngs(dropout=jax.random.key(1), augment=jax.random.key(2))
    a = _forward_train(model, batch, keys())
    b = _forward_train(model, batch, keys())
    # train=True without rngs: no dropout and no SpecAugment, i.e. the eval forward.
    ev = nnx.jit(lambda m, b: m(b, train=True, rngs=None))(model, batch)
    np.testing.assert_allclose(a["encoder"], b["encoder"], atol=0)  # same keys, same result
    np.testing.assert_allclose(ev["encoder"], _forward(model, batch)["encoder"], atol=TOL)
    assert np.abs(np.asarray(a["encoder"] - ev["encoder"])).max() > 1e-3
    with pytest.raises(ValueError, match="augment"):
        model(batch, train=True, rngs=nnx.Rngs(dropout=jax.random.key(1)))


def test_bad_configs_and_inputs_are_clear_errors(model, rng):
    with pytest.raises(ValueError, match="kind"):
        EncoderConfig(kind="transformer")
    with pytest.raises(ValueError, match="joint_activation|activation"):
        TransducerConfig(joint_activation="sigmoid")
    with pytest.raises(ValueError, match="num_intents"):
        Transducer(_cfg(), frontend_cfg=FRONTEND, vocab_size=V, num_intents=0,
                   num_slot_tags=TAGS, rngs=nnx.Rngs(0))
    with pytest.raises(KeyError, match="tokens"):
        model({"audio": jnp.zeros((1, 800)), "audio_lengths": jnp.asarray([800])})


def test_every_parameter_gets_a_gradient(model, rng):
    graphdef, params = nnx.split(model, nnx.Param)
    batch = _batch(rng, [3200, 2400], [3, 2], garbage=False)
    # Cheap connectivity check (the loss terms are tested with the losses): every output the
    # loss terms read feeds a squared-value term, and every parameter must get a gradient.
    def squares(b, out, p):
        value = jnp.mean(joint_logits(out) ** 2)
        for key in ("ctc_logits", "intent_logits", "slot_logits"):
            value = value + jnp.mean(out[key] ** 2)
        return value, {}

    objective = Objective((("squares", 1.0, squares),))

    @jax.jit
    def loss(p):
        out = nnx.merge(graphdef, p)(batch)  # eval mode: dropout adds compile time, not paths
        return objective(batch, out, p)[0]

    value, grads = jax.value_and_grad(loss)(params)
    assert np.isfinite(float(value))
    for path, g in nnx.to_flat_state(grads):
        g = np.asarray(g.get_value() if hasattr(g, "get_value") else g)
        assert np.all(np.isfinite(g)), path
        assert np.abs(g).max() > 0, f"no gradient reaches {path}"
