"""XLA RNN-T loss (kernels/rnnt/xla.py through the public api) against reference.py and torchaudio.

reference.py differentiates its own alpha recursion by autodiff, independently of the analytic
gradient under test. Tolerances: fp32 both sides, same math in a different order: values rtol
1e-5, gradients atol 1e-5 (entries are probability differences in [-1, 1]). bf16: both sides read
the same bf16 logits in fp32, so values still agree to rtol 1e-5; the gradient is returned in bf16,
whose rounding (8 mantissa bits) bounds the error by 2^-8 * |g| <= 4e-3.
"""
from __future__ import annotations

import functools
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxslu.kernels.rnnt import reference, specs
from jaxslu.kernels.rnnt import rnnt_loss
from jaxslu.kernels.rnnt import xla as rnnt_xla

SHAPE = specs.RnntShape(B=4, T=9, U=5, V=12)


def _inputs(shape=SHAPE, seed=0, scale=1.0):
    p = specs.make_problem(shape, seed=seed)
    return jnp.asarray(specs.make_logits(shape, seed=seed, scale=scale)), p


@jax.jit
def _ref_value_and_grad(logits, labels, tl, ul, w):
    """Jitted once per shape (lengths and labels are arguments, not constants)."""
    def f(x):
        per = reference.rnnt_loss_reference(x.astype(jnp.float32), labels, tl, ul)
        return jnp.sum(per * w), per

    return jax.value_and_grad(f, has_aux=True)(logits)


def _ref_loss_and_grad(logits, p, weights=None):
    labels = np.where(np.arange(p.labels.shape[1])[None] < p.label_lengths[:, None], p.labels, 0)
    w = jnp.ones(logits.shape[0]) if weights is None else weights
    (_, per), g = _ref_value_and_grad(logits, labels, p.logit_lengths, p.label_lengths, w)
    return per, g


@functools.partial(jax.jit, static_argnames=("kw",))
def _value_and_grad(logits, labels, tl, ul, kw):
    def f(x):
        out = rnnt_loss(x, labels, tl, ul, **dict(kw))
        return jnp.sum(out), out

    return jax.value_and_grad(f, has_aux=True)(logits)


def _loss_and_grad(logits, p, **kw):
    (_, out), g = _value_and_grad(logits, p.labels, p.logit_lengths, p.label_lengths,
                                  tuple(sorted(kw.items())))
    return out, g


def test_matches_reference_fp32_ragged_with_garbage_padding():
    logits, p = _inputs()
    per, g = _loss_and_grad(logits, p, reduction="none")
    ref_per, ref_g = _ref_loss_and_grad(logits, p)
    np.testing.assert_allclose(per, ref_per, rtol=1e-5)
    np.testing.assert_allclose(g, ref_g, atol=1e-5)
    # Cells outside each sequence's lattice get exactly zero gradient.
    t = np.arange(SHAPE.T)[None, :, None]
    u = np.arange(SHAPE.U + 1)[None, None, :]
    outside = (t >= p.logit_lengths[:, None, None]) | (u > p.label_lengths[:, None, None])
    assert np.all(np.asarray(g)[outside] == 0)


def test_each_row_equals_its_cropped_problem():
    """Padding contributes nothing: row b equals the unpadded [1, T_b, U_b+1, V] problem."""
    logits, p = _inputs(seed=3)
    per, g = _loss_and_grad(logits, p, reduction="none")
    for b in range(SHAPE.B):
        tb, ub = int(p.logit_lengths[b]), int(p.label_lengths[b])
        sub = logits[b:b + 1, :tb, :ub + 1]
        per_b, g_b = jax.value_and_grad(lambda x: rnnt_loss(
            x, p.labels[b:b + 1, :ub], np.array([tb], np.int32), np.array([ub], np.int32),
            reduction="sum"))(sub)
        np.testing.assert_allclose(per[b], per_b, rtol=1e-6)
        np.testing.assert_allclose(g[b, :tb, :ub + 1], g_b[0], atol=1e-6)


def test_bf16_matches_reference_on_same_values():
    logits, p = _inputs(seed=1)
    x16 = logits.astype(jnp.bfloat16)
    per, g = _loss_and_grad(x16, p, reduction="none")
    assert per.dtype == jnp.float32 and g.dtype == jnp.bfloat16
    ref_per, ref_g = _ref_loss_and_grad(x16.astype(jnp.float32), p)
    np.testing.assert_allclose(per, ref_per, rtol=1e-5)
    np.testing.assert_allclose(g.astype(jnp.float32), ref_g, atol=4e-3)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_reductions_values_and_gradients(reduction):
    logits, p = _inputs(seed=2)
    ref_per, ref_g = _ref_loss_and_grad(logits, p)
    out, g = jax.value_and_grad(lambda x: jnp.sum(rnnt_loss(
        x, p.labels, p.logit_lengths, p.label_lengths, reduction=reduction)))(logits)
    scale = 1.0 / SHAPE.B if reduction == "mean" else 1.0
    want = {"none": jnp.sum(ref_per), "sum": jnp.sum(ref_per), "mean": jnp.mean(ref_per)}[reduction]
    np.testing.assert_allclose(out, want, rtol=1e-5)
    np.testing.assert_allclose(g, ref_g * scale, atol=1e-5)
    # A non-uniform cotangent per sequence scales each row's gradient.
    w = jnp.arange(1.0, SHAPE.B + 1)
    g_w = jax.grad(lambda x: jnp.sum(w * rnnt_loss(x, p.labels, p.logit_lengths, p.label_lengths,
                                                   reduction="none")))(logits)
    np.testing.assert_allclose(g_w, _ref_loss_and_grad(logits, p, w)[1], atol=1e-5)


def test_fastemit_keeps_loss_and_scales_emission_terms():
    logits, p = _inputs(seed=4)
    per0, g0 = _loss_and_grad(logits, p, reduction="none")
    per1, g1 = _loss_and_grad(logits, p, reduction="none", fastemit_lambda=1.0)
    per_h, g_h = _loss_and_grad(logits, p, reduction="none", fastemit_lambda=0.25)
    np.testing.assert_array_equal(per0, per1)
    # The gradient is affine in lambda, and the added term sums to zero over V
    # (lambda * emit_post * (softmax - onehot(label)) at every cell).
    np.testing.assert_allclose(g_h, g0 + 0.25 * (g1 - g0), atol=1e-6)
    np.testing.assert_allclose(jnp.sum(g1 - g0, -1), 0.0, atol=1e-5)
    assert float(jnp.max(jnp.abs(g1 - g0))) > 1e-2


def test_clamp_is_two_sided():
    logits, p = _inputs(seed=5, scale=3.0)
    _, g = _loss_and_grad(logits, p, reduction="none")
    c = 0.3
    assert float(g.max()) > c and float(g.min()) < -c  # both sides actually get clipped
    _, gc = _loss_and_grad(logits, p, reduction="none", clamp=c)
    np.testing.assert_allclose(gc, jnp.clip(g, -c, c), atol=1e-6)
    assert float(gc.max()) == pytest.approx(c) and float(gc.min()) == pytest.approx(-c)
    # The clamp applies to the per-sequence gradient, before the (mean) reduction's 1/B.
    g_mean = jax.grad(lambda x: rnnt_loss(x, p.labels, p.logit_lengths, p.label_lengths,
                                          clamp=c))(logits)
    np.testing.assert_allclose(g_mean, gc / SHAPE.B, atol=1e-6)


def test_jit_with_donated_logits_and_implementation_choice():
    logits, p = _inputs(seed=6)
    want_loss, want_g = _ref_loss_and_grad(logits, p)
    f = jax.jit(jax.value_and_grad(lambda x, lab, tl, ul: rnnt_loss(x, lab, tl, ul,
                                                                   reduction="sum",
                                                                   implementation="xla")),
                donate_argnums=0)
    loss, g = f(jnp.array(logits), p.labels, p.logit_lengths, p.label_lengths)
    np.testing.assert_allclose(loss, jnp.sum(want_loss), rtol=1e-5)
    np.testing.assert_allclose(g, want_g, atol=1e-5)
    default = rnnt_loss(logits, p.labels, p.logit_lengths, p.label_lengths, reduction="none")
    np.testing.assert_array_equal(default, rnnt_xla.rnnt_loss(
        logits, p.labels, p.logit_lengths, p.label_lengths))


def test_memory_is_logits_plus_gradient(monkeypatch):
    """Compiled loss+grad holds the logits, their gradient and only O(B*T*U) temporaries.

    bf16 log-sum-exps run in slices of _LSE_SLICE_ELEMENTS (4 MB fp32 by default); it is shrunk
    here so this small problem has several slices (a shape used by no other test, so the jit
    cache cannot hold a trace made with the default).
    """
    monkeypatch.setattr(rnnt_xla, "_LSE_SLICE_ELEMENTS", 1 << 13)
    shape = specs.RnntShape(B=2, T=40, U=10, V=512)
    logits, p = _inputs(shape)
    for dtype in (jnp.float32, jnp.bfloat16):
        x = logits.astype(dtype)
        f = jax.jit(jax.grad(lambda x: rnnt_loss(x, p.labels, p.logit_lengths, p.label_lengths)))
        mem = f.lower(x).compile().memory_analysis()
        assert mem.temp_size_in_bytes < 0.1 * x.nbytes, (dtype, mem.temp_size_in_bytes, x.nbytes)


def test_bad_inputs_raise_clear_errors():
    logits, p = _inputs()
    lab, tl, ul = p.labels, p.logit_lengths, p.label_lengths
    with pytest.raises(ValueError, match="logits must be"):
        rnnt_loss(logits[0], lab, tl, ul)
    with pytest.raises(ValueError, match="labels has shape"):
        rnnt_loss(logits, lab[:, :-1], tl, ul)
    with pytest.raises(TypeError, match="logit_lengths must be an integer"):
        rnnt_loss(logits, lab, tl.astype(np.float32), ul)
    with pytest.raises(ValueError, match="reduction"):
        rnnt_loss(logits, lab, tl, ul, reduction="avg")
    with pytest.raises(ValueError, match="exceed T"):
        rnnt_loss(logits, lab, tl + SHAPE.T, ul)
    with pytest.raises(ValueError, match="label_lengths"):
        rnnt_loss(logits, lab, tl, ul + SHAPE.U + 1)
    bad = lab.copy()
    bad[0, 0] = SHAPE.V
    with pytest.raises(ValueError, match="outside"):
        rnnt_loss(logits, bad, tl, ul)
    bad[0, 0] = 0
    with pytest.raises(ValueError, match="blank"):
        rnnt_loss(logits, bad, tl, ul)
    with pytest.raises(ValueError, match="clamp"):
        rnnt_loss(logits, lab, tl, ul, clamp=-1.0)
    with pytest.raises(ValueError, match="interpret=True"):
        rnnt_loss(logits, lab, tl, ul, implementation="pallas")
    with pytest.raises(ValueError, match="implementation"):
        rnnt_loss(logits, lab, tl, ul, implementation="cuda")


# A few fixed shapes (each compiles once), everything else drawn: lengths, labels, values.
_HYP_SHAPES = [specs.RnntShape(1, 1, 0, 2), specs.RnntShape(2, 5, 3, 4),
               specs.RnntShape(3, 6, 5, 7)]


@settings(max_examples=8, deadline=None)
@given(data=st.data(), shape=st.sampled_from(_HYP_SHAPES), seed=st.integers(0, 2**16),
       scale=st.sampled_from([0.1, 1.0, 5.0]))
def test_randomized_against_reference(data, shape, seed, scale):
    logits = jnp.asarray(specs.make_logits(shape, seed=seed, scale=scale))
    p = specs.make_problem(shape, seed=seed, ragged=False)  # valid labels everywhere
    p.logit_lengths = np.array(data.draw(st.lists(st.integers(1, shape.T), min_size=shape.B,
                                                  max_size=shape.B)), np.int32)
    p.label_lengths = np.array(data.draw(st.lists(st.integers(0, shape.U), min_size=shape.B,
                                                  max_size=shape.B)), np.int32)
    pad = np.arange(shape.U)[None] >= p.label_lengths[:, None]
    p.labels = np.where(pad, -7, p.labels).astype(np.int32)  # garbage past the lengths
    per, g = _loss_and_grad(logits, p, reduction="none")
    ref_per, ref_g = _ref_loss_and_grad(logits, p)
    np.testing.assert_allclose(per, ref_per, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g, ref_g, atol=1e-5)


def test_matches_torchaudio():
    """Peer check (only where torchaudio with rnnt_loss is installed: the bench extra)."""
    torch = pytest.importorskip("torch")
    taf = pytest.importorskip("torchaudio.functional")
    logits, p = _inputs(seed=7)
    labels = np.where(np.arange(SHAPE.U)[None] < p.label_lengths[:, None], p.labels, 0)
    for clamp in (None, 0.2):
        per, g = _loss_and_grad(logits, p, reduction="none", clamp=clamp)
        x = torch.tensor(np.asarray(logits), requires_grad=True)
        out = taf.rnnt_loss(x, torch.tensor(labels, dtype=torch.int32),
                            torch.tensor(p.logit_lengths), torch.tensor(p.label_lengths),
                            blank=0, reduction="none", clamp=-1 if clamp is None else clamp)
        out.sum().backward()
        np.testing.assert_allclose(per, out.detach().numpy(), rtol=1e-5)
        np.testing.assert_allclose(g, x.grad.numpy(), atol=1e-5)


def test_pallas_dispatch_interpret_and_clear_errors(monkeypatch):
    """implementation='pallas' with interpret=True runs the Pallas TPU kernel (interpreted) and
    agrees with XLA; a kernel raising NotImplementedError gives an error saying what to do."""
    from jaxslu.kernels.rnnt import pallas_tpu

    shape = specs.RnntShape(B=2, T=4, U=2, V=5)
    logits, p = _inputs(shape, seed=9)
    want, want_g = _loss_and_grad(logits, p, reduction="none", implementation="xla")
    got, got_g = _loss_and_grad(logits, p, reduction="none", implementation="pallas",
                                interpret=True)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(got_g, want_g, atol=1e-5)

    def unsupported(*args, **kwargs):
        raise NotImplementedError("shape not supported")

    monkeypatch.setattr(pallas_tpu, "rnnt_loss", unsupported)
    with pytest.raises(NotImplementedError, match="implementation='xla'"):
        rnnt_loss(logits, p.labels, p.logit_lengths, p.label_lengths, implementation="pallas",
                  interpret=True)
