"""Pallas RNN-T kernels (TPU and GPU/Triton) in interpret mode against the pure-JAX reference.

Independent reference: values and gradients come from `reference.rnnt_loss_reference` by autodiff
(anti-diagonal scan + jax.grad), never from the analytic formula the kernels use. Tolerances:
* fp32: loss rtol 1e-5, gradients rtol 1e-4 + atol 2e-5. Both sides compute in fp32 on
  identical inputs and differ only in evaluation order (online vs one-shot log-sum-exp, analytic
  posteriors vs autodiff). A posterior is exp(alpha + beta - logZ) with each term a sum of
  O(100) nats on the 20x20 case: fp32 spacing at 100 is 7.6e-6, so the exponent carries ~1e-5
  absolute, i.e. relative, error (observed: up to 3.5e-5 relative). Any formula error is O(0.1).
* bf16 logits: both sides upcast the same bf16 numbers, so the loss keeps rtol 1e-5; the
  gradients are rounded to bf16 on return (relative step 2^-8), hence atol 1e-2 on O(1) entries.
FastEmit's reference is autodiff of the reference with emit_lp -> (1+l) emit_lp - l sg(emit_lp)
(value unchanged, label-emission gradient scaled by 1 + l); clamp's is the reference gradient
clipped to [-c, c] before multiplying by the per-sequence cotangent.

* fused joint on a GPU, compiled (JAXSLU_PALLAS_INTERPRET=0): the joint's fp32 dots run as TF32
  (pallas_gpu.py), so `pallas_mode.DOT_TOL` applies (loss rtol 2e-3, gradients atol 1e-2 x scale):
  TF32 rounds each operand to 10 mantissa bits (2^-11 relative), a J = 8..24-term logit is then
  off by up to ~5e-3, a ~20-node lattice sums those into the loss.

Shapes are tiny and the small tile sizes below make every kernel use several T/U/V tiles, partial
edge tiles and skipped (past-length) tiles (and, for the GPU fused backward, several frame
chunks). Jitted functions are cached per configuration to keep the interpret-mode compile count
(the dominant cost) low. By default the kernels run interpreted (CPU); with
JAXSLU_PALLAS_INTERPRET=0 on a GPU / TPU machine they are compiled for real (tests/kernels/
pallas_mode.py).
"""
from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxslu.kernels.rnnt import pallas_common as pc
from jaxslu.kernels.rnnt import pallas_gpu, pallas_tpu
from jaxslu.kernels.rnnt.reference import (alignment_log_likelihood, log_probs_blank_and_emit,
                                           rnnt_loss_reference)
from tests.kernels.pallas_mode import COMPILED, DOT_TOL, INTERPRET, interpret_only, pallas_backends

MODULES = {"tpu": pallas_tpu, "gpu": pallas_gpu}
# Small tiles so tiny test shapes still span several tiles (TPU: (8, 128)-aligned; GPU: powers of
# 2; block_t: frames per chunk of the GPU fused backward, 5 gives uneven chunks).
BLOCKS = {"tpu": (("block_t", 8), ("block_v", 128)),
          "gpu": (("block_u", 16), ("block_v", 16), ("block_t", 5))}
BACKENDS = pallas_backends()

# (B, T, U, V, logit_lengths, label_lengths, blank); ragged rows include label_length 0 and
# logit_length 1 (with labels: all emitted at the one frame).
CASES = {
    "2x5x3x7_full": (2, 5, 3, 7, [5, 5], [3, 3], 0),
    "3x8x4x16_ragged": (3, 8, 4, 16, [8, 1, 5], [4, 2, 0], 0),
    "3x20x20x150_tiled": (3, 20, 20, 150, [20, 5, 9], [20, 17, 3], 149),
}
ROW_WEIGHTS = np.array([1.0, 2.0, -0.5, 0.7], np.float32)  # per-sequence cotangents (incl. < 0)


def make_case(name: str, dtype=jnp.float32, seed: int = 0):
    B, T, U, V, tl, ul, blank = CASES[name]
    rng = np.random.default_rng(seed)
    logits = jnp.asarray(rng.normal(0.0, 2.0, size=(B, T, U + 1, V)).astype(np.float32)).astype(dtype)
    labels = rng.integers(0, V - 1, size=(B, U))
    labels = np.where(labels >= blank, labels + 1, labels).astype(np.int32)  # never the blank
    return logits, jnp.asarray(labels), jnp.asarray(tl, jnp.int32), jnp.asarray(ul, jnp.int32), blank


def reference_loss(logits, labels, tl, ul, blank, fastemit_lambda=0.0):
    if fastemit_lambda == 0.0:
        return rnnt_loss_reference(logits, labels, tl, ul, blank=blank)
    blank_lp, emit_lp = log_probs_blank_and_emit(logits, labels, blank)
    lam = fastemit_lambda
    emit_lp = (1.0 + lam) * emit_lp - lam * jax.lax.stop_gradient(emit_lp)
    return -alignment_log_likelihood(blank_lp, emit_lp, tl, ul)


@functools.lru_cache(maxsize=None)
def kernel_value_and_grad(backend: str, blank: int, lam: float, clamp: float | None, public: bool = False,
                          interpret=INTERPRET):
    """Jitted value-and-grad of sum_b w_b loss_b: the small-tile losses, or (public=True) the
    public entry point with its default tiles."""
    mod = MODULES[backend]
    loss, _ = mod.loss_functions(blank, lam, clamp, interpret, "tanh", BLOCKS[backend])

    def f(logits, labels, tl, ul, w):
        if public:
            losses = mod.rnnt_loss(logits, labels, tl, ul, blank=blank, fastemit_lambda=lam,
                                   clamp=clamp, interpret=interpret)
        else:
            losses = loss(logits, pc.extend_labels(labels, logits.shape[-1]), tl, ul)
        return jnp.sum(losses * w), losses

    return jax.jit(jax.value_and_grad(f, has_aux=True))


@functools.lru_cache(maxsize=None)
def reference_value_and_grad(blank: int, lam: float):
    def f(logits, labels, tl, ul, w):
        losses = reference_loss(logits, labels, tl, ul, blank, lam)
        return jnp.sum(losses * w), losses

    return jax.jit(jax.value_and_grad(f, has_aux=True))


def run_both(backend, case, dtype=jnp.float32, lam=0.0, clamp=None, public=False,
             interpret=INTERPRET):
    logits, labels, tl, ul, blank = make_case(case, dtype)
    w = jnp.asarray(ROW_WEIGHTS[: logits.shape[0]])
    (_, loss), g = kernel_value_and_grad(backend, blank, lam, clamp, public, interpret)(
        logits, labels, tl, ul, w)
    (_, loss_r), g_r = reference_value_and_grad(blank, lam)(logits, labels, tl, ul, jnp.ones_like(w))
    g_r = g_r.astype(jnp.float32)
    if clamp is not None:
        g_r = jnp.clip(g_r, -clamp, clamp)
    g_r = g_r * w[:, None, None, None]  # rows are independent: d(sum w_b loss_b) = w_b d loss_b
    return (np.asarray(loss), np.asarray(loss_r), np.asarray(g.astype(jnp.float32)), np.asarray(g_r), g.dtype)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_and_grad_match_reference(backend, case):
    loss, loss_r, g, g_r, _ = run_both(backend, case)
    np.testing.assert_allclose(loss, loss_r, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g, g_r, rtol=1e-4, atol=2e-5)
    assert np.abs(g_r).max() > 0.1  # the comparison is not vacuous


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_logits_through_public_entry(backend):
    """bf16 logits via the public `rnnt_loss` (default tiles); gradient returned in bf16."""
    loss, loss_r, g, g_r, gdtype = run_both(backend, "3x8x4x16_ragged", dtype=jnp.bfloat16, public=True)
    assert gdtype == jnp.bfloat16
    np.testing.assert_allclose(loss, loss_r, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(g, g_r, atol=1e-2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fastemit_and_clamp(backend):
    """FastEmit (lambda=0.5) and clamp (0.05) together, one compile: the reference gradient is the
    FastEmit one clipped; the value must equal the plain loss's."""
    lam, clamp = 0.5, 0.05
    loss, loss_r, g, g_r, _ = run_both(backend, "3x8x4x16_ragged", lam=lam, clamp=clamp)
    plain_loss, _, plain_g, plain_g_r, _ = run_both(backend, "3x8x4x16_ragged")  # cached compile
    np.testing.assert_allclose(loss, plain_loss, rtol=1e-6)  # the value is unchanged
    np.testing.assert_allclose(loss, loss_r, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g, g_r, rtol=1e-4, atol=2e-5)
    w = ROW_WEIGHTS[:3, None, None, None]
    assert np.all(np.abs(g) <= clamp * np.abs(w) + 1e-6)  # |clip| <= c, times |w_b|
    # both features are active on this input: FastEmit changes entries the clamp leaves alone,
    # and the clamp cuts entries of the plain gradient
    unclipped = np.abs(plain_g_r) < 0.5 * clamp * np.abs(w)
    assert np.abs(g - plain_g)[unclipped].max() > 1e-3
    assert (np.abs(plain_g) > clamp * np.abs(w) + 1e-3).any()


# ------------------------------------------------------------------------------------------------
# Fused joint.

FUSED = {  # (B, T, U, V, J, logit_lengths, label_lengths, blank, activation, fastemit, clamp)
    "tanh": (3, 12, 5, 40, 24, [12, 1, 7], [5, 3, 0], 0, "tanh", 0.0, None),
    # clamp 0.02 cuts the one-hot (blank / label) entries of d loss / d logits, not the softmax
    # part (~1/V): the fused backward must clip inside, before the joint's chain rule
    "relu_fastemit_clamp": (2, 9, 4, 150, 8, [9, 4], [2, 4], 7, "relu", 0.3, 0.02),
}


def make_fused(name: str, seed: int = 1):
    B, T, U, V, J, tl, ul, blank, act, lam, _ = FUSED[name]
    rng = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(rng.normal(size=s).astype(np.float32))  # noqa: E731
    params = (f(B, T, J), f(B, U + 1, J), f(J, V) * 0.5, f(V))
    labels = rng.integers(0, V - 1, size=(B, U))
    labels = np.where(labels >= blank, labels + 1, labels).astype(np.int32)
    return params, jnp.asarray(labels), jnp.asarray(tl, jnp.int32), jnp.asarray(ul, jnp.int32), blank, act, lam


@functools.lru_cache(maxsize=None)
def fused_value_and_grad(backend, blank, act, lam, clamp=None, interpret=INTERPRET):
    _, fused = MODULES[backend].loss_functions(blank, lam, clamp, interpret, act, BLOCKS[backend])

    def f(enc, pred, W, bias, labels, tl, ul, w):
        losses = fused(enc, pred, W, bias, pc.extend_labels(labels, W.shape[1]), tl, ul)
        return jnp.sum(losses * w), losses

    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True))


def fused_reference(params, labels, tl, ul, blank, act, lam, clamp, w):
    """(losses, grads) of sum_b w_b loss_b through the materialized joint and the autodiff
    reference; with clamp, d loss_b / d logits is clipped before w_b and the joint's VJP."""
    def joint(enc, pred, W, bias):
        return pc.activation(act, enc[:, :, None, :] + pred[:, None, :, :]) @ W + bias

    def run(*p):
        x, joint_vjp = jax.vjp(joint, *p)
        losses, loss_vjp = jax.vjp(lambda x_: reference_loss(x_, labels, tl, ul, blank, lam), x)
        # rows are independent: a ones cotangent gives each row its own d loss_b / d logits
        (dx,) = loss_vjp(jnp.ones_like(losses))
        if clamp is not None:
            dx = jnp.clip(dx, -clamp, clamp)
        return losses, joint_vjp(dx * w[:, None, None, None])

    return jax.jit(run)(*params)


def check_fused(backend, name, interpret=INTERPRET):
    params, labels, tl, ul, blank, act, lam = make_fused(name)
    clamp = FUSED[name][-1]
    w = jnp.asarray(ROW_WEIGHTS[: labels.shape[0]])
    (_, loss), grads = fused_value_and_grad(backend, blank, act, lam, clamp, interpret)(
        *params, labels, tl, ul, w)
    loss_r, grads_r = fused_reference(params, labels, tl, ul, blank, act, lam, clamp, w)
    dot_tol = COMPILED  # compiled on the accelerator: its dot precision (pallas_mode.DOT_TOL)
    np.testing.assert_allclose(loss, loss_r, rtol=DOT_TOL["loss_rtol"] if dot_tol else 1e-5,
                               atol=1e-4)
    for name_, a, b in zip(("encoder", "predictor", "weight", "bias"), grads, grads_r):
        scale = float(jnp.abs(b).max())
        assert scale > 1e-2, name_
        # sums over T*U*V products: fp32 rounding grows with the reduction length, so relative
        atol = (DOT_TOL["grad_atol"] if dot_tol else 2e-5) * max(1.0, scale)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, err_msg=name_)
    if clamp is not None:  # the clamp is active: the unclamped gradients are far from these
        _, unclamped = fused_reference(params, labels, tl, ul, blank, act, lam, None, w)
        assert max(float(jnp.abs(a - b).max() / jnp.abs(b).max())
                   for a, b in zip(grads, unclamped)) > 0.05


@pytest.mark.parametrize("name", sorted(FUSED))
@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_matches_reference_on_materialized_logits(backend, name):
    check_fused(backend, name)


@interpret_only
def test_tpu_kernels_under_tpu_simulating_interpreter():
    """`pltpu.InterpretParams()` simulates TPU memory: scratch/outputs start as NaN and reads out of
    bounds raise, so a kernel that reads a buffer before writing it, or overruns an edge tile,
    fails here even where the generic interpreter happens to give the right numbers."""
    from jax.experimental.pallas import tpu as pltpu

    ip = pltpu.InterpretParams(uninitialized_memory="nan", out_of_bounds_reads="raise")
    loss, loss_r, g, g_r, _ = run_both("tpu", "3x20x20x150_tiled", interpret=ip)
    np.testing.assert_allclose(loss, loss_r, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g, g_r, rtol=1e-4, atol=2e-5)
    check_fused("tpu", "relu_fastemit_clamp", interpret=ip)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_bf16_params(backend):
    """bf16 encoder/predictor/weight/bias: fp32 compute, gradients returned in bf16."""
    params, labels, tl, ul, blank, act, lam = make_fused("tanh")
    params = tuple(p.astype(jnp.bfloat16) for p in params)
    mod = MODULES[backend]
    losses, grads = jax.jit(jax.value_and_grad(
        lambda *p: jnp.sum(mod.fused_rnnt_loss(*p, labels, tl, ul, blank=blank, activation=act,
                                               interpret=INTERPRET)), argnums=(0, 1, 2, 3)))(*params)

    def ref(*p):
        p = [x.astype(jnp.float32) for x in p]
        x = jnp.tanh(p[0][:, :, None, :] + p[1][:, None, :, :]) @ p[2].astype(jnp.bfloat16).astype(jnp.float32) + p[3]
        return jnp.sum(rnnt_loss_reference(x, labels, tl, ul, blank=blank))

    losses_r, grads_r = jax.value_and_grad(ref, argnums=(0, 1, 2, 3))(*params)
    # the kernel feeds the MXU/dot bf16 hidden activations; the reference keeps them in fp32
    np.testing.assert_allclose(float(losses), float(losses_r), rtol=1e-2)
    for a, b in zip(grads, grads_r):
        assert a.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(a.astype(jnp.float32)), np.asarray(b),
                                   atol=3e-2 * float(jnp.abs(b).max()))


# ------------------------------------------------------------------------------------------------
# Argument checking.

@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_inputs_raise_clear_errors(backend):
    mod = MODULES[backend]
    logits, labels, tl, ul, _ = make_case("2x5x3x7_full")
    with pytest.raises(ValueError, match="logit_lengths must lie in"):
        mod.rnnt_loss(logits, labels, jnp.array([0, 5]), ul, interpret=INTERPRET)
    with pytest.raises(ValueError, match="label_lengths must lie in"):
        mod.rnnt_loss(logits, labels, tl, jnp.array([4, 1]), interpret=INTERPRET)
    with pytest.raises(ValueError, match="labels must have shape"):
        mod.rnnt_loss(logits, labels[:, :2], tl, ul, interpret=INTERPRET)
    with pytest.raises(ValueError, match="logits must be"):
        mod.rnnt_loss(logits[0], labels, tl, ul, interpret=INTERPRET)
    with pytest.raises(ValueError, match="labels must lie in"):
        mod.rnnt_loss(logits, labels.at[0, 0].set(99), tl, ul, interpret=INTERPRET)
    with pytest.raises(TypeError, match="integer"):
        mod.rnnt_loss(logits, labels, tl.astype(jnp.float32), ul, interpret=INTERPRET)
    enc, pred, W = jnp.zeros((2, 5, 8)), jnp.zeros((2, 4, 8)), jnp.zeros((8, 7))
    with pytest.raises(ValueError, match="activation"):
        mod.fused_rnnt_loss(enc, pred, W, jnp.zeros(7), labels, tl, ul, activation="gelu", interpret=INTERPRET)
    with pytest.raises(ValueError, match="bias must be"):
        mod.fused_rnnt_loss(enc, pred, W, jnp.zeros(6), labels, tl, ul, interpret=INTERPRET)


# ------------------------------------------------------------------------------------------------
# The real (non-interpret) lowerings: Mosaic TPU and Triton kernels lower on this CPU host.

@contextlib.contextmanager
def _lowering_target(platform: str):
    if platform != "tpu":
        yield
        return
    # Mosaic's lowering asks for the TPU generation; an abstract device supplies it off-TPU.
    from jax._src.mesh import AbstractDevice, AbstractMesh
    mesh = AbstractMesh((1,), ("x",), abstract_device=AbstractDevice("TPU v5 lite", 1, "tpu"))
    with jax.sharding.use_abstract_mesh(mesh):
        yield


@interpret_only  # compiled runs (JAXSLU_PALLAS_INTERPRET=0) check far more than the lowering
@pytest.mark.parametrize("backend,platform", [("tpu", "tpu"), ("gpu", "cuda")])
def test_kernels_lower_for_hardware(backend, platform):
    mod = MODULES[backend]
    B, T, U, V, J = 8, 24, 10, 300, 32
    labels = jnp.ones((B, U), jnp.int32)
    tl, ul = jnp.full((B,), T, jnp.int32), jnp.full((B,), U, jnp.int32)
    loss_grad = jax.jit(jax.grad(lambda x: mod.rnnt_loss(x, labels, tl, ul, fastemit_lambda=0.1,
                                                         clamp=1.0).sum()))
    fused_grad = jax.jit(jax.grad(lambda *p: mod.fused_rnnt_loss(*p, labels, tl, ul).sum(),
                                  argnums=(0, 1, 2, 3)))
    sds = jax.ShapeDtypeStruct
    with _lowering_target(platform):
        text = loss_grad.trace(sds((B, T, U + 1, V), jnp.bfloat16)).lower(
            lowering_platforms=(platform,)).as_text()
        assert text.count("rnnt_") >= 3  # log-softmax, recursion, gradient kernels
        text = fused_grad.trace(sds((B, T, J), jnp.float32), sds((B, U + 1, J), jnp.float32),
                                sds((J, V), jnp.float32), sds((V,), jnp.float32)).lower(
            lowering_platforms=(platform,)).as_text()
        assert text.count("rnnt_joint") >= 3  # forward, backward (activations), backward (weights)
