"""Multi-party streaming ASR: meeting simulation, SURT loss terms against independent references,
streaming = offline decoding, and the metrics."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxslu.config import FrontendConfig
from jaxslu.losses.base import build_objective
from jaxslu.models.transducer import EncoderConfig, PredictorConfig
from jaxslu.multiparty import evaluate as ev
from jaxslu.multiparty import losses as L
from jaxslu.multiparty.model import Surt, SurtConfig
from jaxslu.multiparty.simulate import (assign_channels, overlap_ratio, plan_meetings,
                                        render_meeting)
from jaxslu.multiparty.task import EOT, SOT, WordVocab, channel_references

# ---- simulation --------------------------------------------------------------------------------


def _clips(n_speakers=4, per=6, sr=8000, seed=0):
    rng = np.random.default_rng(seed)
    speakers, clips = [], {}
    for k in range(n_speakers * per):
        speakers.append(f"spk{k % n_speakers}")
        n = int(rng.integers(2000, 5000))
        a = np.zeros(n + 800, np.float32)
        a[400:400 + n] = rng.normal(0, 0.1, n)  # speech between 50 ms silences
        clips[k] = a
    return speakers, clips


def test_meetings_are_deterministic_and_never_three_speakers_at_once():
    speakers, clips = _clips()
    plans = plan_meetings(speakers, 40, seed=3)
    assert plans == plan_meetings(speakers, 40, seed=3)
    assert plans != plan_meetings(speakers, 40, seed=4)
    ratios = []
    for plan in plans:
        turns_spk = [t["speaker"] for t in plan["turns"]]
        assert 2 <= len(turns_spk) <= 4
        assert all(a != b for a, b in zip(turns_spk, turns_spk[1:]))
        mix, turns = render_meeting(plan, clips, 8000)
        assert np.all(np.isfinite(mix)) and np.max(np.abs(mix)) <= 0.99 + 1e-6
        starts = [t["start"] for t in turns]
        assert starts == sorted(starts)
        for k in range(2, len(turns)):
            assert turns[k]["start"] >= turns[k - 2]["end"] - 1e-9
        # clips are cut to their speech bounds (the 50 ms of silence around each is dropped)
        assert all(abs(t["start"] - t["onset"] / 8000) <= 0.011 for t in turns)
        assert all(abs(t["end"] - t["offset"] / 8000) <= 0.011 for t in turns)
        ratios.append(overlap_ratio(turns))
        # first-free channels never hold two overlapping turns
        assign = assign_channels(turns, 2)
        for c in (0, 1):
            mine = [t for t, a in zip(turns, assign) if a == c]
            assert all(a["end"] <= b["start"] + 1e-9 for a, b in zip(mine, mine[1:]))
    assert min(ratios) == 0.0 and 0.05 < max(ratios) < 0.6


def test_channel_references_put_turn_tokens_on_first_free_channels():
    vocab = WordVocab(["<blank>", "<unk>", "<sot>", "<eot>", "one", "two"])
    turns = [{"start": 0.0, "end": 1.0, "words": ["one"]},
             {"start": 0.5, "end": 2.0, "words": ["two", "two"]},
             {"start": 1.5, "end": 2.5, "words": ["one", "zzz"]}]
    assign, tokens, eot_turn = channel_references(turns, 2, vocab)
    assert assign == [0, 1, 0]
    assert tokens[0] == [SOT, 4, EOT, SOT, 4, 1, EOT]
    assert tokens[1] == [SOT, 5, 5, EOT]
    assert eot_turn[0] == [-1, -1, 0, -1, -1, -1, 2]
    _, single, _ = channel_references(turns, 1, vocab)
    assert single[0] == [SOT, 4, EOT, SOT, 5, 5, EOT, SOT, 4, 1, EOT]


# ---- loss terms --------------------------------------------------------------------------------


def _brute_force_nll(logp, labels, T, U, penalty):
    """-log sum over all monotonic alignments of a [T, U+1, V] log-prob lattice (penalty on
    emitting label u at frame t subtracted), by enumeration: the independent reference."""
    total = []
    # an alignment = the frame at which each of the U labels is emitted (non-decreasing)
    for frames in itertools.combinations_with_replacement(range(T), U):
        lp, u = 0.0, 0
        for t in range(T):
            while u < U and frames[u] == t:
                lp += logp[t, u, labels[u]] - penalty[t, u]
                u += 1
            lp += logp[t, u, 0]  # the blank that leaves frame t
        total.append(lp)
    return -float(np.logaddexp.reduce(total))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_penalized_lattice_matches_enumeration_values_and_gradient(dtype):
    rng = np.random.default_rng(0)
    B, T, U, V = 3, 5, 3, 6
    logits = jnp.asarray(rng.normal(size=(B, T, U + 1, V)), jnp.float32)
    labels = np.array([[3, 2, 3], [1, 3, 0], [3, 0, 0]], np.int32)
    t_len = np.array([5, 4, 3], np.int32)
    u_len = np.array([3, 2, 1], np.int32)
    eot_frame = np.where(labels == 3, np.array([[0, -1, 2], [-1, 1, -1], [0, -1, -1]]), -1)
    pen = L.eot_penalty(jnp.asarray(eot_frame), T, alpha=0.7, buffer=1)
    x = logits.astype(dtype)
    nll_pen, nll = L.penalized_nll(x, jnp.asarray(labels), jnp.asarray(t_len),
                                   jnp.asarray(u_len), pen)
    logp = np.asarray(jax.nn.log_softmax(x.astype(jnp.float32), -1), np.float64)
    tol = 1e-4 if dtype == jnp.float32 else 1e-3  # bf16 inputs, fp32 lattice: rounding of logp
    for b in range(B):
        ref_pen = _brute_force_nll(logp[b], labels[b], t_len[b], u_len[b], np.asarray(pen[b]))
        ref = _brute_force_nll(logp[b], labels[b], t_len[b], u_len[b], np.zeros((T, U + 1)))
        assert abs(float(nll_pen[b]) - ref_pen) < tol * max(1, abs(ref_pen))
        assert abs(float(nll[b]) - ref) < tol * max(1, abs(ref))
        assert float(nll_pen[b]) >= float(nll[b]) - 1e-5  # the penalty only removes mass
    # gradient against central differences of the enumeration (fp32)
    if dtype == jnp.float32:
        def f(lg):
            a, b = L.penalized_nll(lg, jnp.asarray(labels), jnp.asarray(t_len),
                                   jnp.asarray(u_len), pen)
            return jnp.sum(a - b)
        g = np.asarray(jax.grad(f)(logits))
        lg = np.asarray(logits, np.float64)
        for (b, t, u, v) in [(0, 1, 2, 3), (1, 2, 1, 3), (0, 4, 3, 0), (2, 2, 1, 0)]:
            def val(d):
                y = lg.copy()
                y[b, t, u, v] += d
                lp = y[b] - np.log(np.exp(y[b]).sum(-1, keepdims=True))
                return (_brute_force_nll(lp, labels[b], t_len[b], u_len[b], np.asarray(pen[b]))
                        - _brute_force_nll(lp, labels[b], t_len[b], u_len[b],
                                           np.zeros((T, U + 1))))
            num = (val(1e-4) - val(-1e-4)) / 2e-4
            assert abs(g[b, t, u, v] - num) < 1e-3, (b, t, u, v)
        assert np.all(g[2, 3:] == 0)  # frames past row 2's length get nothing


def _outputs(rng, B=3, C=2, T=6, U=4, J=8, V=7):
    enc = jnp.asarray(rng.normal(size=(B, C, T, J)), jnp.float32)
    pred = jnp.asarray(rng.normal(size=(B, C, U + 1, J)), jnp.float32)
    out = {"encoder": enc, "predictor": pred, "encoder_lengths": jnp.array([6, 5, 4][:B]),
           "joint_weight": jnp.asarray(rng.normal(size=(J, V)), jnp.float32),
           "joint_bias": jnp.zeros((V,), jnp.float32),
           "activity_logits": jnp.asarray(rng.normal(size=(B, C, T)), jnp.float32)}
    batch = {"tokens": jnp.asarray(rng.integers(1, V, size=(B, C, U)), jnp.int32),
             "token_lengths": jnp.array([[4, 2], [3, 3], [1, 0]][:B], jnp.int32),
             "eot_frame": jnp.full((B, C, U), -1, jnp.int32),
             "activity": jnp.asarray(rng.integers(0, 2, size=(B, C, T)), jnp.float32),
             "weight": jnp.ones((B,), jnp.float32)}
    return batch, out


def test_surt_rnnt_trains_the_better_permutation():
    from jaxslu.losses.rnnt import rnnt_loss
    from jaxslu.losses.terms import joint_logits

    batch, out = _outputs(np.random.default_rng(1))
    nll = np.zeros((3, 2, 2))
    for c in range(2):
        for r in range(2):
            lg = joint_logits({"encoder": out["encoder"][:, c], "predictor": out["predictor"][:, r],
                               "joint_weight": out["joint_weight"],
                               "joint_bias": out["joint_bias"]})
            nll[:, c, r] = np.asarray(rnnt_loss(lg, batch["tokens"][:, r], out["encoder_lengths"],
                                                batch["token_lengths"][:, r], reduction="none"))
    np.testing.assert_allclose(np.asarray(L.pairwise_nll(batch, out)), nll, rtol=1e-5)
    best = np.minimum(nll[:, 0, 0] + nll[:, 1, 1], nll[:, 0, 1] + nll[:, 1, 0])
    value, metrics = L.surt_rnnt(normalize="sequence")(batch, out, None)
    np.testing.assert_allclose(float(value), best.mean(), rtol=1e-5)
    swapped = (nll[:, 0, 1] + nll[:, 1, 0]) < (nll[:, 0, 0] + nll[:, 1, 1])
    np.testing.assert_allclose(float(metrics["permuted_fraction"]), swapped.mean())
    perm = np.asarray(L.channel_assignment(batch, out))
    np.testing.assert_array_equal(perm[:, 0], swapped.astype(int))
    # swapping the reference streams (and the predictor outputs over them) leaves the value:
    # permutation invariance
    flip = dict(batch, tokens=batch["tokens"][:, ::-1],
                token_lengths=batch["token_lengths"][:, ::-1])
    v2, _ = L.surt_rnnt(normalize="sequence")(flip, dict(out, predictor=out["predictor"][:, ::-1]),
                                              None)
    np.testing.assert_allclose(float(v2), float(value), rtol=1e-6)
    # padding rows contribute nothing
    pad = dict(batch, weight=jnp.array([1.0, 1.0, 0.0]))
    v3, _ = L.surt_rnnt(normalize="sequence")(pad, out, None)
    np.testing.assert_allclose(float(v3), best[:2].mean(), rtol=1e-5)


def test_speech_activity_follows_the_assignment_and_objective_composes():
    batch, out = _outputs(np.random.default_rng(2))
    perm = np.asarray(L.channel_assignment(batch, out))
    logits = np.asarray(out["activity_logits"], np.float64)
    target = np.stack([np.asarray(batch["activity"])[b, perm[b]] for b in range(3)])
    lengths = np.asarray(out["encoder_lengths"])
    mask = (np.arange(6)[None, None, :] < lengths[:, None, None]) * np.ones((3, 2, 6))
    bce = np.logaddexp(0, logits) - logits * target
    ref = (bce * mask).sum() / mask.sum()
    value, m = L.speech_activity()(batch, out, None)
    np.testing.assert_allclose(float(value), ref, rtol=1e-5)
    assert 0.0 <= float(m["frame_accuracy"]) <= 1.0
    obj = build_objective("surt_rnnt + 0.5*speech_activity + eot_latency",
                          {"surt_rnnt": {"fastemit_lambda": 0.01},
                           "eot_latency": {"alpha": 0.1, "buffer": 2}})
    total, metrics = obj(batch, out, None)
    assert np.isfinite(float(total)) and "loss/eot_latency" in metrics
    # no <eot> positions: the latency term is exactly 0
    np.testing.assert_allclose(float(metrics["loss/eot_latency"]), 0.0, atol=1e-5)
    with pytest.raises(ValueError, match="alpha"):
        L.eot_latency(alpha=-1.0)


# ---- model: streaming equals offline -----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_surt():
    cfg = SurtConfig(encoder=EncoderConfig(kind="lstm", num_layers=2, dim=16, causal=True,
                                           subsampling=4, subsampling_channels=4),
                     predictor=PredictorConfig(embed_dim=8, hidden=8), joint_dim=8, channels=2)
    fcfg = FrontendConfig(sample_rate=8000, num_mels=12, fmax=3800.0, normalize="none")
    return Surt(cfg, frontend_cfg=fcfg, vocab_size=9, rngs=nnx.Rngs(0))


def test_streaming_encoder_and_decode_equal_offline(tiny_surt):
    model = tiny_surt
    rng = np.random.default_rng(0)
    audio = rng.normal(0, 0.3, size=(2, 4000)).astype(np.float32)
    lengths = np.array([4000, 2700], np.int32)
    audio[1, 2700:] = 0
    tok, fr, ln = (np.asarray(x) for x in jax.jit(
        lambda a, l: ev.offline_decode(model, a, l))(audio, lengths))
    assert ln.shape == (2, 2) and ln.sum() > 0  # a random model emits something
    s_tok, s_fr, s_ln = ev.stream_decode(model, audio, lengths, chunk_frames=8)
    np.testing.assert_array_equal(s_ln, ln)
    for b in range(2):
        for c in range(2):
            np.testing.assert_array_equal(s_tok[b, c, : ln[b, c]], tok[b, c, : ln[b, c]])
            np.testing.assert_array_equal(s_fr[b, c, : ln[b, c]], fr[b, c, : ln[b, c]])
    # the encoder itself, chunk by chunk
    from jaxslu.audio.frontend import log_mel
    feats, flen = log_mel(jnp.asarray(audio), jnp.asarray(lengths), model.frontend_cfg)
    enc, enc_len = jax.jit(model.encode_features)(feats, flen)
    f = feats.shape[1] - feats.shape[1] % 8
    chunk = jax.jit(model.encode_chunk)
    state, parts = model.stream_init(2), []
    for k in range(f // 8):
        e, valid, state = chunk(feats[:, 8 * k: 8 * k + 8], jnp.clip(flen - 8 * k, 0, 8), state)
        parts.append(e)
    streamed = jnp.concatenate(parts, axis=2)
    np.testing.assert_allclose(np.asarray(streamed), np.asarray(enc[:, :, : streamed.shape[2]]),
                               atol=2e-5)


def test_model_refuses_wrong_batch_and_configs(tiny_surt):
    with pytest.raises(ValueError, match="channels=2"):
        tiny_surt({"audio": jnp.zeros((1, 800)), "audio_lengths": jnp.array([800]),
                   "tokens": jnp.zeros((1, 3), jnp.int32), "token_lengths": jnp.array([1])})
    with pytest.raises(ValueError, match="causal"):
        SurtConfig(encoder=EncoderConfig(kind="conformer", causal=False))
    with pytest.raises(ValueError, match="channels"):
        SurtConfig(channels=0)


# ---- metrics -------------------------------------------------------------------------------


def test_parse_turns_and_meeting_scores():
    vocab = WordVocab(["<blank>", "<unk>", "<sot>", "<eot>", "one", "two"])
    turns = ev.parse_turns([SOT, 4, EOT, 5, EOT, SOT, 5], [1, 2, 4, 6, 7, 9, 10], vocab)
    assert turns == [{"words": ["one"], "sot_frame": 1, "eot_frame": 4},
                     {"words": ["two"], "sot_frame": None, "eot_frame": 7},
                     {"words": ["two"], "sot_frame": 9, "eot_frame": None}]
    ref = [{"start": 0.0, "end": 0.5, "words": ["one", "two"]},
           {"start": 0.3, "end": 1.0, "words": ["two"]}]
    # channel 1 holds turn 0 and channel 0 turn 1: the permutation finds it
    hyp = [[{"words": ["two"], "sot_frame": 9, "eot_frame": 24}],
           [{"words": ["one", "one"], "sot_frame": 0, "eot_frame": 12}]]
    s = ev.meeting_scores(ref, hyp, frame_seconds=0.04)
    assert s["errors"] == 1 and s["perm"] == [1, 0] and s["ref_words"] == 3
    assert s["hyp_turns"] == 2 and s["ref_turns"] == 2
    np.testing.assert_allclose(sorted(s["sot_ms"]), [40.0, 100.0])
    np.testing.assert_allclose(sorted(s["eot_ms"]), [0.0, 20.0])
    summary = ev.summarize([s, dict(s, hyp_turns=3)])
    assert summary["turn_count_accuracy"] == 0.5 and summary["wer"] == pytest.approx(2 / 6, abs=1e-4)
    # ORC: best assignment of reference turns to channels
    assert ev.orc_errors([["a"], ["b"], ["c"]], [["b"], ["a", "c"]], [0, 1, 0]) == 0
    assert ev.min_permutation_errors([["a", "b"], ["c"]], [["c"], ["a", "b"]]) == (0, (1, 0))
