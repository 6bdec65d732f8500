"""Compute-cost amortized Transformer: hard straight-through gates, gate activity, the
compute_cost loss term, inference through the gated-FFN kernel, and training with the Trainer."""
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxslu.config import FrontendConfig, OptimConfig, TrainConfig, load_config
from jaxslu.layers.amortized import (Arbitrator, GateActivity, component_record,
                                     hard_gumbel_gate)
from jaxslu.layers.streaming_attention import AttentionSpec, TransformerBlock
from jaxslu.losses import intermediates_of
from jaxslu.models.streaming import (StreamingEncoderConfig, StreamingTransducer,
                                     StreamingTransducerConfig)
from jaxslu.models.transducer import PredictorConfig
from jaxslu.registry import LOSSES
from jaxslu.train.loop import make_trainer
from jaxslu.slu.task import transducer_model_kwargs

FE = FrontendConfig(num_mels=16, normalize="none")
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def tiny_model(bias: float = 3.0, attention: str = "causal", seed: int = 0):
    enc = StreamingEncoderConfig(kind="transformer", num_layers=2, dim=16, heads=2, ff_mult=2,
                                 attention=attention, window=3, chunk_frames=2,
                                 arbitrator_hidden=4, gate_init_bias=bias, dropout=0.0)
    cfg = StreamingTransducerConfig(encoder=enc, predictor=PredictorConfig(embed_dim=8, hidden=8),
                                    joint_dim=8)
    return StreamingTransducer(cfg, frontend_cfg=FE, vocab_size=5, rngs=nnx.Rngs(seed))


def batch(b=2, n=4000):
    audio = np.random.default_rng(0).normal(0, 0.1, (b, n)).astype(np.float32)
    return {"audio": jnp.asarray(audio), "audio_lengths": jnp.array([n, n * 5 // 8][:b]),
            "tokens": jnp.array([[1, 2, 3], [4, 1, 0]][:b], jnp.int32),
            "token_lengths": jnp.array([3, 2][:b], jnp.int32),
            "weight": jnp.ones((b,), jnp.float32)}


_COMPILED = {}


def activities(model, bt, train=False):
    """Jitted forward (eager dispatch of the many tiny ops is slower than compiling; one program
    per model structure); returns the outputs with their intermediates and GateActivity values."""
    graphdef, state = nnx.split(model)
    if (graphdef, train) not in _COMPILED:
        def run(state, bt):
            m = nnx.merge(graphdef, state)
            rngs = nnx.Rngs(dropout=1, augment=2) if train else None
            out = dict(m(bt, train=train, rngs=rngs))
            out["intermediates"] = nnx.pop(m, nnx.Intermediate)
            return out
        _COMPILED[graphdef, train] = jax.jit(run)
    out = _COMPILED[graphdef, train](state, bt)
    return out, intermediates_of(out, GateActivity)


# ---- gates ------------------------------------------------------------------------------------


def test_hard_gate_is_exactly_binary_with_straight_through_gradient():
    key = jax.random.key(3)
    logits = jnp.linspace(-3.0, 3.0, 41)
    c = jnp.cos(jnp.arange(41.0))  # arbitrary upstream weights
    tau = 0.7
    g = hard_gumbel_gate(logits, key=key, temperature=tau)
    assert set(np.unique(np.asarray(g)).tolist()) <= {0.0, 1.0}
    noise = jax.random.logistic(key, logits.shape)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(logits + noise > 0, np.float32))
    # Gradient through the hard gate == gradient of the soft (Gumbel-sigmoid) relaxation.
    st = jax.grad(lambda l: jnp.sum(c * hard_gumbel_gate(l, key=key, temperature=tau)))(logits)
    soft = jax.grad(lambda l: jnp.sum(c * jax.nn.sigmoid((l + noise) / tau)))(logits)
    np.testing.assert_allclose(np.asarray(st), np.asarray(soft), rtol=1e-6, atol=1e-7)
    assert np.all(np.abs(np.asarray(st)) > 0)
    # Inference: deterministic threshold at 0.
    np.testing.assert_array_equal(np.asarray(hard_gumbel_gate(logits)),
                                  np.asarray(logits > 0, np.float32))


def test_gate_on_probability_is_sigmoid_of_logit():
    # Binary Gumbel-softmax = logistic noise: P(on) = sigmoid(logit). 40000 draws: std < 0.0025.
    logits = jnp.full((40000,), 0.8)
    g = hard_gumbel_gate(logits, key=jax.random.key(0))
    assert abs(float(jnp.mean(g)) - float(jax.nn.sigmoid(0.8))) < 0.01


def test_block_gate_gradient_reaches_arbitrators_and_matches_soft_relaxation():
    """d loss / d (arbitrator on-logits) through the block equals (d loss / d gate) * sigmoid'."""
    block = TransformerBlock(8, 2, AttentionSpec("causal"), ff_mult=2, dropout_rate=0.0,
                             arbitrator_hidden=4, gate_init_bias=0.0, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (1, 5, 8))
    lengths = jnp.array([5])
    w = jax.random.normal(jax.random.key(2), (1, 5, 8))
    graphdef, state = nnx.split(block)

    def loss(st):
        # train=True without rngs: no noise, and the dense FFN (full straight-through gradient).
        return jnp.sum(w * nnx.merge(graphdef, st)(x, lengths, train=True))

    grad = jax.jit(jax.grad(loss))(state)["ffn_gate"]["out"]["bias"][...]
    # Independent computation: with the gates of the forward, y = x1 + g * f(x1); so
    # d loss / d g_t = sum_d w * f(x1), and d g / d bias = sigmoid'(logit_t) (no noise at eval).
    b = nnx.merge(graphdef, state)
    a_gate = b.attn_gate(x, train=False, rngs=None)
    attn, _ = b.attn(b.attn_norm(x), lengths)
    x1 = x + a_gate[..., None] * attn
    logit = b.ffn_gate.logits(x1)
    ffn_branch = jax.nn.gelu(
        _ln(x1, b.ffn_ln_scale[...], b.ffn_ln_bias[...]) @ b.ffn_w1[...] + b.ffn_b1[...],
        approximate=True) @ b.ffn_w2[...] + b.ffn_b2[...]
    s = jax.nn.sigmoid(logit)
    expected = jnp.sum(jnp.sum(w * ffn_branch, -1) * s * (1 - s))
    np.testing.assert_allclose(float(grad[0]), float(expected), rtol=1e-4)


def _ln(x, scale, bias, eps=1e-6):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / jnp.sqrt(v + eps) * scale + bias


def test_arbitrator_rejects_bad_sizes():
    with pytest.raises(ValueError, match="hidden"):
        Arbitrator(8, 0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="temperature"):
        hard_gumbel_gate(jnp.zeros(3), temperature=0.0)


# ---- activity and the compute_cost term ------------------------------------------------------


def test_compute_cost_equals_hand_count():
    # Two blocks, batch of 2 rows (the second a padding row: weight 0), 3 frames, row 0 has 2
    # valid frames. Block 1: attention flops 10/20/30 per frame, gates 1,0,(1 invalid);
    # ffn 100 per frame, gates 0,1,1. Block 2: attention 5, gates 1,1,0; ffn 50, gates 0,0,1.
    valid = jnp.array([[1, 1, 0], [1, 1, 1]], jnp.float32)
    other = jnp.ones((3,))
    act1 = {"attention": component_record(jnp.stack([jnp.array([1., 0, 1]), other]),
                                          jnp.array([[10., 20, 30]] * 2), valid),
            "ffn": component_record(jnp.stack([jnp.array([0., 1, 1]), other]), 100.0, valid),
            "fixed": component_record(jnp.ones((2, 3)), 7.0, valid)}
    act2 = {"attention": component_record(jnp.stack([jnp.array([1., 1, 0]), other]), 5.0, valid),
            "ffn": component_record(jnp.stack([jnp.array([0., 0, 1]), other]), 50.0, valid)}
    outputs = {"intermediates": nnx.State({"a": GateActivity(act1), "b": GateActivity(act2)})}
    bt = {"weight": jnp.array([1.0, 0.0])}
    term = LOSSES.get("compute_cost").factory()
    value, metrics = term(bt, outputs, None)
    executed = 10 + 100 + 5 + 5  # row 0, frames 0 and 1 only
    dense = (10 + 20) + 2 * 100 + 2 * 5 + 2 * 50
    assert float(value) == pytest.approx(executed / dense, rel=1e-6)
    assert float(metrics["rate/attention"]) == pytest.approx(3 / 4)
    assert float(metrics["rate/ffn"]) == pytest.approx(1 / 4)
    assert float(metrics["relative_compute_total"]) == pytest.approx(
        (executed + 14) / (dense + 14), rel=1e-6)
    target = LOSSES.get("compute_cost").factory(target=0.2)
    assert float(target(bt, outputs, None)[0]) == pytest.approx(executed / dense - 0.2, rel=1e-5)
    high = LOSSES.get("compute_cost").factory(target=0.9)
    assert float(high(bt, outputs, None)[0]) == 0.0


@pytest.mark.parametrize("train", [False, True])
def test_compute_cost_is_one_all_on_and_zero_all_off(train):
    term = LOSSES.get("compute_cost").factory()
    bt = batch()
    for bias, expected in [(60.0, 1.0), (-60.0, 0.0)]:
        out, acts = activities(tiny_model(bias), bt, train=train)
        assert len(acts) == 2  # one GateActivity per block
        value, metrics = term(bt, out, None)
        assert float(value) == pytest.approx(expected, abs=1e-6)
        assert float(metrics["rate/ffn"]) == pytest.approx(expected, abs=1e-6)
        assert 0.0 < float(metrics["fixed_fraction"]) < 1.0


def test_recorded_attention_flops_follow_visible_keys():
    d = 16
    bt = batch()
    # Visible keys of query t in a row of n valid frames (chunk 2, 2 left chunks; window 3).
    rules = {"causal": lambda t, n: t + 1,
             "sliding": lambda t, n: min(t + 1, 3),
             "chunked": lambda t, n: min(n, 2 * (t // 2) + 2) - 2 * max(0, t // 2 - 2)}
    for attention, visible in rules.items():
        _, acts = activities(tiny_model(attention=attention), bt)
        rec = acts[0]["attention"]
        n = int(rec["valid"][1].sum())  # the shorter row: keys past its length are not visible
        got = np.asarray(rec["flops"][1, :n])
        want = np.array([4 * d * d + 4 * d * visible(t, n) for t in range(n)], np.float32)
        np.testing.assert_allclose(got, want, err_msg=attention)


def test_compute_cost_without_gates_is_a_clear_error():
    with pytest.raises(ValueError, match="no GateActivity"):
        LOSSES.get("compute_cost").factory()({}, {"intermediates": nnx.State({})}, None)
    with pytest.raises(ValueError, match="target"):
        LOSSES.get("compute_cost").factory(target=1.5)


# ---- inference through the gated-FFN kernel ---------------------------------------------------


def test_inference_skips_off_frames_and_matches_dense_gating():
    """train=False: hard gates, compacted attention queries and the compacting FFN kernel give
    the same block output as the dense computation with the same gates (capacity = all rows
    selects the dense paths); tolerance 1e-5, same fp32 math in another order."""
    block = TransformerBlock(8, 2, AttentionSpec("causal"), ff_mult=2, dropout_rate=0.0,
                             arbitrator_hidden=4, gate_init_bias=0.0, rngs=nnx.Rngs(0))
    keys = jax.random.split(jax.random.key(5), 3)
    for arb, key in zip((block.attn_gate, block.ffn_gate), keys):  # decisive, mixed gates
        arb.out.kernel[...] = 3.0 * jax.random.normal(key, arb.out.kernel.shape)
    x = jax.random.normal(keys[2], (2, 6, 8))
    lengths = jnp.array([6, 4])

    def run(block):  # the capacity ratio is static (part of the graphdef)
        graphdef, state = nnx.split(block)

        def f(state, x):
            b = nnx.merge(graphdef, state)
            y = b(x, lengths, train=False)
            return y, nnx.pop(b, nnx.Intermediate)
        return jax.jit(f)(state, x)

    block.capacity_ratio = 0.9  # 11 of 12 rows (>= the 10 valid ones): compaction runs
    skipped, inter = run(block)
    act = intermediates_of({"intermediates": inter}, GateActivity)[0]
    rates = [float(act[c]["gate"].sum() / act[c]["valid"].sum()) for c in ("attention", "ffn")]
    assert all(0.0 < r < 1.0 for r in rates), rates
    block.capacity_ratio = 1.0  # capacity = all rows: dense paths
    dense, _ = run(block)
    valid = np.arange(6)[None, :] < np.asarray(lengths)[:, None]
    np.testing.assert_allclose(np.asarray(skipped)[valid], np.asarray(dense)[valid], atol=1e-5)


def test_compacted_attention_queries_equal_masked_dense():
    """Inference attention with gates: computing only the active query rows (capacity = the
    active count) equals the masked dense computation; an overflowing capacity falls back to the
    dense path (exact too). Tolerance 1e-5: same fp32 math in a different order."""
    from jaxslu.layers.streaming_attention import StreamingSelfAttention
    attn = StreamingSelfAttention(8, 2, AttentionSpec("sliding", window=3), rngs=nnx.Rngs(0))
    h = jax.random.normal(jax.random.key(0), (2, 7, 8))
    lengths = jnp.array([7, 5])
    gate = (jax.random.uniform(jax.random.key(1), (2, 7)) > 0.5).astype(jnp.float32)
    count = int(gate.sum())
    assert 0 < count < 14
    masked, vis = attn(h, lengths, gate=gate, capacity=None)
    assert np.all(np.asarray(masked)[np.asarray(gate) == 0] == 0)
    for cap in (count, count + 3, count - 1):
        out, vis2 = jax.jit(lambda h, g: attn(h, lengths, gate=g, capacity=cap))(h, gate)
        np.testing.assert_allclose(np.asarray(out), np.asarray(masked), atol=1e-5)
        np.testing.assert_array_equal(np.asarray(vis2), np.asarray(vis))


# ---- training through the Trainer ------------------------------------------------------------


def test_amortized_model_trains_with_rnnt_plus_compute_cost():
    cfg = load_config(CONFIGS / "slurp_transformer_amortized.py", "tiny")
    cfg = dataclasses.replace(
        cfg, loss="rnnt + 0.1*compute_cost", loss_options={}, frontend=FE,
        model=dataclasses.replace(cfg.model, ctc_head=False, intent_head=False, slot_head=False),
        optim=OptimConfig(learning_rate=1e-3, warmup_steps=1),
        train=TrainConfig(steps=3))
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, encoder=dataclasses.replace(cfg.model.encoder, num_layers=1)))
    trainer = make_trainer(cfg, transducer_model_kwargs(cfg, 5), devices=jax.devices()[:1])
    state = trainer.init_state()
    gate_kernel = lambda st: np.asarray(
        st.params["encoder"]["blocks"][0]["ffn_gate"]["out"]["kernel"][...])
    before = gate_kernel(state)
    bt = batch()
    for _ in range(3):
        state, metrics = trainer.train_step(state, bt)
        metrics = jax.device_get(metrics)
        assert np.isfinite(metrics["loss/total"]) and metrics["finite"] == 1.0
    assert metrics["loss/rnnt"] > 0 and 0.0 < metrics["loss/compute_cost"] <= 1.0
    assert metrics["loss/total"] == pytest.approx(
        metrics["loss/rnnt"] + 0.1 * metrics["loss/compute_cost"], rel=1e-5)
    assert "compute_cost/rate/attention" in metrics and "compute_cost/rate/ffn" in metrics
    # The arbitrators were updated: their gradient (through the straight-through gates) is not 0.
    assert np.abs(gate_kernel(state) - before).max() > 0
