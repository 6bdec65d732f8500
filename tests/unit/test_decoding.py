"""Transducer decoding against straightforward python references on a random model."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxslu.config import FrontendConfig
from jaxslu.decoding import (beam_from_encoder, beam_search, decode_with_slu, greedy_decode,
                             greedy_from_encoder, jit_decode_with_slu)
from jaxslu.models.transducer import (EncoderConfig, PredictorConfig, Transducer,
                                      TransducerConfig)

V, INTENTS, TAGS = 5, 3, 4


@pytest.fixture(scope="module")
def model():
    cfg = TransducerConfig(
        encoder=EncoderConfig(num_layers=1, dim=16, heads=2, ff_mult=2, conv_kernel=3),
        predictor=PredictorConfig(embed_dim=8, hidden=12), joint_dim=16, intent_head=True,
        slot_head=True)
    m = Transducer(cfg, frontend_cfg=FrontendConfig(num_mels=16), vocab_size=V,
                   num_intents=INTENTS, num_slot_tags=TAGS, rngs=nnx.Rngs(3))
    # A random joint is nearly flat; sharpen it so decoding mixes blanks, single and repeated
    # emissions per frame (checked below), which is what exercises the decoders' logic.
    m.joint_output.kernel[...] = 4.0 * m.joint_output.kernel[...]
    m.joint_output.bias[...] = m.joint_output.bias[...].at[0].set(3.0)
    return m


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    lengths = np.array([4800, 3300, 2000], np.int32)
    audio = rng.uniform(-0.5, 0.5, size=(3, 4800)).astype(np.float32)
    for i, n in enumerate(lengths):
        audio[i, n:] = 0.0
    return {"audio": jnp.asarray(audio), "audio_lengths": jnp.asarray(lengths)}


_encode = nnx.jit(lambda m, a, l: m.encode(a, l))


def _reference_greedy(model, enc, length, max_symbols):
    """Row-by-row python greedy decoding (batch of one, eager model calls)."""
    pred, state = model.predictor_step(jnp.zeros((1,), jnp.int32), model.predictor_init(1))
    out, per_frame = [], []
    for t in range(length):
        n = 0
        for _ in range(max_symbols):
            k = int(np.argmax(np.asarray(model.joint(enc[None, t], pred))[0]))
            if k == 0:
                break
            out.append(k)
            n += 1
            pred, state = model.predictor_step(jnp.asarray([k], jnp.int32), state)
        per_frame.append(n)
    return out, per_frame


def _path_score(model, enc, length, tokens):
    """Log-probability of the one-symbol-per-frame path that emits `tokens` greedily frame by
    frame (as greedy with max_symbols_per_frame=1 does): sum of the chosen log-softmax values."""
    pred, state = model.predictor_step(jnp.zeros((1,), jnp.int32), model.predictor_init(1))
    score, u = 0.0, 0
    for t in range(length):
        logp = np.asarray(jax.nn.log_softmax(model.joint(enc[None, t], pred)[0]), np.float64)
        k = int(np.argmax(logp))
        score += logp[k]
        if k != 0:
            assert tokens[u] == k
            u += 1
            pred, state = model.predictor_step(jnp.asarray([k], jnp.int32), state)
    assert u == len(tokens)
    return score


def _exact_sequence_scores(model, enc, length):
    """All alignments of the one-symbol-per-frame topology, enumerated: sequence -> log prob."""
    cache = {}

    def predictor(prefix):
        if prefix not in cache:
            if not prefix:
                cache[prefix] = model.predictor_step(jnp.zeros((1,), jnp.int32),
                                                     model.predictor_init(1))
            else:
                pred, state = predictor(prefix[:-1])
                cache[prefix] = model.predictor_step(jnp.asarray([prefix[-1]], jnp.int32), state)
        return cache[prefix]

    logp_cache = {}

    def logp(t, prefix):
        if (t, prefix) not in logp_cache:
            lp = jax.nn.log_softmax(model.joint(enc[None, t], predictor(prefix)[0])[0])
            logp_cache[(t, prefix)] = np.asarray(lp, np.float64)
        return logp_cache[(t, prefix)]

    totals = {}
    for path in itertools.product(range(V), repeat=length):
        prefix, score = (), 0.0
        for t, k in enumerate(path):
            score += logp(t, prefix)[k]
            if k:
                prefix = prefix + (k,)
        totals[prefix] = np.logaddexp(totals.get(prefix, -np.inf), score)
    return totals


def test_greedy_matches_python_reference(model, batch):
    graphdef, params = nnx.split(model, nnx.Param)
    decode = jit_decode_with_slu(graphdef, method="greedy", max_symbols_per_frame=3)
    out = jax.device_get(decode(params, batch))
    enc, enc_len = _encode(model, batch["audio"], batch["audio_lengths"])
    t = enc.shape[1]
    assert out["tokens"].shape == (3, 3 * t) and out["tokens"].dtype == np.int32
    emitted_per_frame = []
    for i in range(3):
        ref, per_frame = _reference_greedy(model, enc[i], int(enc_len[i]), 3)
        emitted_per_frame += per_frame
        n = int(out["lengths"][i])
        assert out["tokens"][i, :n].tolist() == ref
        assert np.all(out["tokens"][i, n:] == 0)
    # The test model exercises blanks, single and multiple symbols per frame.
    assert {0, 1} <= set(emitted_per_frame) and max(emitted_per_frame) >= 2, emitted_per_frame

    # SLU outputs on the hypotheses.
    assert out["intent"].shape == (3,) and out["intent_prob"].shape == (3,)
    np.testing.assert_array_equal(out["intent"],
                                  np.argmax(model.intent_from_encoder(enc, enc_len), -1))
    tags = np.argmax(model.slots_from_tokens(jnp.asarray(out["tokens"]),
                                             jnp.asarray(out["lengths"]), enc, enc_len), -1)
    valid = np.arange(out["tokens"].shape[1])[None] < out["lengths"][:, None]
    np.testing.assert_array_equal(out["slot_tags"], np.where(valid, tags, -1))

    # Compiled once per shape: new parameter values and audio of the same shape reuse it.
    params2 = jax.tree.map(lambda x: x * 1.01, params)
    decode(params2, {"audio": batch["audio"] * 0.5, "audio_lengths": batch["audio_lengths"]})
    assert decode._cache_size() == 1
    decode(params, {"audio": batch["audio"][:2], "audio_lengths": batch["audio_lengths"][:2]})
    assert decode._cache_size() == 2


def test_beam_one_equals_greedy_one_symbol_per_frame(model, batch):
    audio, lengths = batch["audio"], batch["audio_lengths"]
    enc, enc_len = _encode(model, audio, lengths)
    g_tok, g_len = nnx.jit(greedy_decode, static_argnames=("max_symbols_per_frame", "max_len"))(
        model, audio, lengths, max_symbols_per_frame=1)
    beam = nnx.jit(beam_search, static_argnames=("beam_size", "max_len"))
    b_tok, b_len, b_score = beam(model, audio, lengths, beam_size=1)
    assert g_tok.shape == b_tok.shape == (3, enc.shape[1])  # one symbol per frame at most
    np.testing.assert_array_equal(b_len, g_len)
    np.testing.assert_array_equal(b_tok, g_tok)
    assert np.any(np.asarray(g_len) > 0)
    k_tok, k_len, k_score = beam(model, audio, lengths, beam_size=4)
    for i in range(3):
        greedy_score = _path_score(model, enc[i], int(enc_len[i]),
                                   np.asarray(g_tok[i, :int(g_len[i])]).tolist())
        # float32 sums of a handful of log-probs: 1e-4.
        np.testing.assert_allclose(float(b_score[i]), greedy_score, atol=1e-4)
        # Not a theorem for pruned beams, but with merging the beam's best is at least the
        # greedy path's probability on this fixed model (deterministic, so this cannot flake).
        assert float(k_score[i]) >= greedy_score - 1e-4


def test_wide_beam_is_exact_search(model):
    """With K >= every possible distinct hypothesis nothing is pruned: the beam must return the
    most probable sequence with its exact (all-alignments) log-probability."""
    t, rows = 3, 2
    enc = jax.random.normal(jax.random.key(7), (rows, t, 16)) * 1.5
    enc_len = jnp.asarray([3, 2], jnp.int32)
    k_all = sum((V - 1) ** n for n in range(t + 1))  # 85 sequences of <= 3 non-blank tokens
    beam = nnx.jit(beam_from_encoder, static_argnames=("beam_size", "max_len"))
    tok, ln, score = beam(model, enc, enc_len, beam_size=k_all)
    tok2, ln2, score2 = beam(model, enc, enc_len, beam_size=2)
    for i in range(rows):
        totals = _exact_sequence_scores(model, enc[i], int(enc_len[i]))
        best = max(totals, key=totals.get)
        got = tuple(np.asarray(tok[i, :int(ln[i])]).tolist())
        assert got == best
        np.testing.assert_allclose(float(score[i]), totals[best], atol=1e-4)
        # A pruned beam keeps a subset of its hypothesis's alignments: score <= exact.
        got2 = tuple(np.asarray(tok2[i, :int(ln2[i])]).tolist())
        assert float(score2[i]) <= totals[got2] + 1e-4


def test_bad_decode_arguments(model, batch):
    with pytest.raises(ValueError, match="method"):
        decode_with_slu(model, batch, method="viterbi")
    with pytest.raises(ValueError, match="audio_lengths"):
        decode_with_slu(model, batch["audio"])
    enc = jnp.zeros((1, 2, 16))
    with pytest.raises(ValueError, match="beam_size"):
        beam_from_encoder(model, enc, jnp.asarray([2]), beam_size=0)
    with pytest.raises(ValueError, match="max_symbols_per_frame"):
        greedy_from_encoder(model, enc, jnp.asarray([2]), max_symbols_per_frame=0)
