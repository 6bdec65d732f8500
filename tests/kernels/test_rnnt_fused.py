"""Fused joint + RNN-T loss (kernels/rnnt/fused.py) against the unfused loss on materialized logits.

The unfused side builds logits = act(enc + pred) @ W + b with plain jnp and differentiates through
the XLA loss (itself checked against reference.py and brute force), so all four gradients of the
fused path are compared with autodiff through an independent joint. Tolerances: fp32 both sides,
different summation orders over V tiles / T chunks: values rtol 1e-5; gradients accumulate over
B*T*U*V terms of magnitude <= |W| or |h|, so atol 1e-4 (relative to entries of order 1).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxslu.kernels.rnnt import fused, fused_rnnt_loss, rnnt_loss, specs

SHAPE = specs.RnntShape(B=3, T=7, U=4, V=13, J=6)


def _joint_inputs(shape=SHAPE, seed=0, dtype=np.float32):
    p = specs.make_problem(shape, seed=seed)
    return [jnp.asarray(a) for a in specs.make_joint(shape, seed=seed, dtype=dtype)], p


def _unfused(args, p, activation="tanh", **kw):
    enc, pred, w, b = args
    h = fused.ACTIVATIONS[activation](enc[:, :, None, :] + pred[:, None, :, :])
    return rnnt_loss(h @ w + b, p.labels, p.logit_lengths, p.label_lengths, **kw)


def _value_and_grads(fn, args):
    weights = jnp.arange(1.0, args[0].shape[0] + 1)  # distinct cotangent per sequence
    return jax.value_and_grad(lambda *a: jnp.sum(weights * fn(*a)), argnums=(0, 1, 2, 3))(*args)


@pytest.mark.parametrize("activation,tile_v,t_chunk", [
    ("tanh", 4, 3),  # V and T not multiples of the tile / chunk: padded tiles and frames
    ("relu", 4, 3), ("gelu", 4, 3), ("swish", 4, 3),
    ("tanh", 13, None),  # one tile, automatic chunking
    ("tanh", 512, 2),  # tile wider than V
])
def test_fused_equals_unfused(activation, tile_v, t_chunk):
    args, p = _joint_inputs(seed=tile_v + len(activation))
    lam = 0.3
    want_v, want_g = _value_and_grads(
        lambda *a: _unfused(a, p, activation, reduction="none", fastemit_lambda=lam), args)
    got_v, got_g = _value_and_grads(
        lambda *a: fused.fused_rnnt_loss(*a, p.labels, p.logit_lengths, p.label_lengths,
                                         fastemit_lambda=lam, activation=activation,
                                         tile_v=tile_v, t_chunk=t_chunk), args)
    np.testing.assert_allclose(got_v, want_v, rtol=1e-5)
    for name, g, w in zip(("encoder", "predictor", "weight", "bias"), got_g, want_g):
        np.testing.assert_allclose(g, w, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_public_fused_api_reductions(reduction):
    args, p = _joint_inputs(seed=5)
    got = fused_rnnt_loss(*args, p.labels, p.logit_lengths, p.label_lengths, reduction=reduction)
    want = _unfused(args, p, reduction=reduction)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    g = jax.grad(lambda w: jnp.sum(fused_rnnt_loss(args[0], args[1], w, args[3], p.labels,
                                                   p.logit_lengths, p.label_lengths,
                                                   reduction=reduction)))(args[2])
    g_want = jax.grad(lambda w: jnp.sum(_unfused((args[0], args[1], w, args[3]), p,
                                                 reduction=reduction)))(args[2])
    np.testing.assert_allclose(g, g_want, atol=1e-4)


def test_bf16_inputs_get_bf16_gradients():
    args, p = _joint_inputs(seed=6, dtype=jnp.bfloat16)
    v, grads = _value_and_grads(lambda *a: fused_rnnt_loss(
        *a, p.labels, p.logit_lengths, p.label_lengths, reduction="none"), args)
    assert all(g.dtype == jnp.bfloat16 for g in grads)
    # The joint runs in fp32 on the bf16 values: same as the unfused fp32 loss on those values.
    args32 = [a.astype(jnp.float32) for a in args]
    want_v, want_g = _value_and_grads(lambda *a: _unfused(a, p, reduction="none"), args32)
    np.testing.assert_allclose(v, want_v, rtol=1e-5)
    for g, w in zip(grads, want_g):  # bf16 rounding of the returned gradient: 2^-8 relative
        np.testing.assert_allclose(g.astype(jnp.float32), w, rtol=1e-2, atol=1e-2)


def test_fused_memory_never_holds_full_logits():
    """Compiled fused loss+grads needs a small fraction of one [B, T, U+1, V] fp32 array."""
    shape = specs.RnntShape(B=2, T=32, U=8, V=2048, J=16)
    args, p = _joint_inputs(shape)
    logits_bytes = shape.logits_elements * 4
    f = jax.jit(jax.grad(lambda *a: fused.fused_rnnt_loss(
        *a, p.labels, p.logit_lengths, p.label_lengths, tile_v=128, t_chunk=8).sum(),
        argnums=(0, 1, 2, 3)))
    mem = f.lower(*args).compile().memory_analysis()
    # Temporaries: a few [B, 8, U+1, 128] tiles and [B, 8, U+1, J] slabs, O(B*T*U) lattice
    # arrays and V*J-sized weight tiles / accumulators: ~12% of the logits at this small size.
    assert mem.temp_size_in_bytes < 0.15 * logits_bytes, (mem.temp_size_in_bytes, logits_bytes)


def test_loss_term_uses_fused_path():
    """The registered `rnnt` loss term (jaxslu/losses/terms.py) agrees fused vs unfused."""
    from jaxslu.losses import terms

    args, p = _joint_inputs(seed=8)
    outputs = {"encoder": args[0], "predictor": args[1], "joint_weight": args[2],
               "joint_bias": args[3], "encoder_lengths": jnp.asarray(p.logit_lengths)}
    batch = {"tokens": jnp.asarray(p.labels), "token_lengths": jnp.asarray(p.label_lengths),
             "weight": jnp.ones(SHAPE.B)}
    v_fused, _ = terms.rnnt(fused=True)(batch, outputs, None)
    v_plain, _ = terms.rnnt(fused=False)(batch, outputs, None)
    np.testing.assert_allclose(v_fused, v_plain, rtol=1e-5)


def test_fused_bad_inputs_raise():
    args, p = _joint_inputs()
    with pytest.raises(ValueError, match="activation"):
        fused_rnnt_loss(*args, p.labels, p.logit_lengths, p.label_lengths, activation="sigmoid")
    with pytest.raises(ValueError, match="do not fit"):
        fused_rnnt_loss(args[0], args[1], args[2][:-1], args[3], p.labels, p.logit_lengths,
                        p.label_lengths)
    with pytest.raises(ValueError, match="interpret=True"):
        fused_rnnt_loss(*args, p.labels, p.logit_lengths, p.label_lengths,
                        implementation="pallas")


def test_fused_clamp_matches_unfused_clamp_and_changes_the_gradient():
    """clamp clips d loss / d logits inside the fused backward exactly as the unfused loss clips
    its logits' gradient (then the joint's chain rule), with tiles and chunks that do not divide
    V and T; the value is unchanged."""
    args, p = _joint_inputs(seed=9)
    c = 0.02
    kw = dict(tile_v=4, t_chunk=3)
    want_v, want_g = _value_and_grads(lambda *a: _unfused(a, p, reduction="none", clamp=c), args)
    got_v, got_g = _value_and_grads(lambda *a: fused.fused_rnnt_loss(
        *a, p.labels, p.logit_lengths, p.label_lengths, clamp=c, **kw), args)
    plain_v, plain_g = _value_and_grads(lambda *a: fused.fused_rnnt_loss(
        *a, p.labels, p.logit_lengths, p.label_lengths, **kw), args)
    np.testing.assert_allclose(got_v, want_v, rtol=1e-5)
    np.testing.assert_allclose(got_v, plain_v, rtol=1e-6)
    for name, g, w, g0 in zip(("encoder", "predictor", "weight", "bias"), got_g, want_g, plain_g):
        np.testing.assert_allclose(g, w, atol=1e-4, err_msg=name)
        assert float(jnp.abs(g - g0).max()) > 1e-2 * float(jnp.abs(g0).max()), name
    # the public entry point passes it through (and validates it)
    g_api = jax.grad(lambda w: jnp.sum(fused_rnnt_loss(args[0], args[1], w, args[3], p.labels,
                                                       p.logit_lengths, p.label_lengths,
                                                       reduction="none", clamp=c)))(args[2])
    g_want = jax.grad(lambda w: jnp.sum(_unfused((args[0], args[1], w, args[3]), p,
                                                 reduction="none", clamp=c)))(args[2])
    np.testing.assert_allclose(g_api, g_want, atol=1e-4)
    with pytest.raises(ValueError, match="clamp"):
        fused_rnnt_loss(*args, p.labels, p.logit_lengths, p.label_lengths, clamp=0.0)


def _term_inputs(seed=8):
    from jaxslu.losses import terms

    args, p = _joint_inputs(seed=seed)
    outputs = {"encoder": args[0], "predictor": args[1], "joint_weight": args[2],
               "joint_bias": args[3], "encoder_lengths": jnp.asarray(p.logit_lengths)}
    batch = {"tokens": jnp.asarray(p.labels), "token_lengths": jnp.asarray(p.label_lengths),
             "weight": jnp.ones(SHAPE.B)}
    return terms, batch, outputs


def test_loss_term_honours_clamp_fused_and_refuses_what_it_cannot():
    terms, batch, outputs = _term_inputs()
    with pytest.raises(ValueError, match="clamp"):
        terms.rnnt(implementation="reference", clamp=0.1)
    with pytest.raises(ValueError, match="implementation"):
        terms.rnnt(implementation="triton")

    floats = {k: v for k, v in outputs.items() if k != "encoder_lengths"}

    def value_and_grads(term):
        return jax.value_and_grad(lambda f: term(batch, dict(outputs, **f), None)[0])(floats)

    def grads(term):
        return value_and_grads(term)[1]

    g_fused = grads(terms.rnnt(fused=True, clamp=0.02, fastemit_lambda=0.2))
    g_plain = grads(terms.rnnt(fused=False, clamp=0.02, fastemit_lambda=0.2))
    g_noclamp = grads(terms.rnnt(fused=True, fastemit_lambda=0.2))
    for k in ("encoder", "predictor", "joint_weight", "joint_bias"):
        np.testing.assert_allclose(g_fused[k], g_plain[k], atol=1e-4, err_msg=k)
    assert float(jnp.abs(g_fused["joint_weight"] - g_noclamp["joint_weight"]).max()) > 1e-3
    # (the reference's FastEmit, which the term used to drop: test_rnnt_dispatch.py)


def test_loss_term_padding_rows_are_inert_and_invalid_real_rows_stop_the_step():
    """Under jit: a padding row (weight 0) with zero frames contributes exactly nothing; a real row
    with zero frames makes the value +inf (the train step then skips the update)."""
    terms, batch, outputs = _term_inputs()
    term = terms.rnnt(fused=True)

    @jax.jit
    def value(weight, lengths):
        return jax.value_and_grad(lambda w_: term(dict(batch, weight=weight), dict(
            outputs, encoder_lengths=lengths, joint_weight=w_), None)[0])(outputs["joint_weight"])

    lengths = jnp.asarray(outputs["encoder_lengths"]).at[2].set(0)
    pad = jnp.array([1.0, 1.0, 0.0])
    v, g = value(pad, lengths)
    v_full, g_full = value(pad, jnp.asarray(outputs["encoder_lengths"]))
    np.testing.assert_allclose(v, v_full, rtol=1e-6)
    np.testing.assert_allclose(g, g_full, atol=1e-6)
    v_bad, _ = value(jnp.ones(3), lengths)
    assert np.isposinf(float(v_bad))
