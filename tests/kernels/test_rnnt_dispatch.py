"""Safe dispatch (implementation=None) and one behaviour for every RNN-T implementation.

Dispatch: on CPU None means XLA with no compile check. To exercise the TPU / GPU branch here,
`api._auto_candidate` is replaced so None tries the Pallas TPU kernel in interpret mode, and
`api._aot_compile` is either the real ahead-of-time compile (interpret mode compiles on CPU) or an
injected failure (what a Triton / Mosaic compile error looks like to the dispatcher).

Agreement: XLA, the autodiff reference, the Pallas kernels (TPU and GPU flavours, interpreted;
compiled on a device with JAXSLU_PALLAS_INTERPRET=0) and their fused counterparts get the same
invalid inputs. Concrete: each raises the same ValueError before any kernel runs. Traced (jit):
a zero-frame sequence gives +inf, out-of-range lengths / labels NaN, each with an exactly zero
gradient, and the valid sequences of the batch are unaffected (kernels/rnnt/validity.py).
Tolerances: the valid row agrees to rtol 1e-5 (value) / atol 2e-5 (gradient), fp32 on both sides
in a different evaluation order (as in test_rnnt_pallas.py); compiled on an accelerator the fused
comparisons use pallas_mode.DOT_TOL (the joint's dots run as TF32 / bf16 passes there).
"""
from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxslu.kernels.rnnt import api, pallas_gpu, pallas_tpu
from jaxslu.kernels.rnnt import fused_rnnt_loss, rnnt_loss
from tests.kernels.pallas_mode import COMPILED, DOT_TOL, INTERPRET

B, T, U, V, J = 5, 5, 3, 7, 8


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    logits = jnp.asarray(rng.normal(0, 1.5, size=(B, T, U + 1, V)).astype(np.float32))
    labels = rng.integers(1, V, size=(B, U)).astype(np.int32)
    tl = np.array([T, 3, T, 4, T], np.int32)
    ul = np.array([U, 2, 1, U, 0], np.int32)
    return logits, labels, tl, ul


def _joint(seed=0):
    rng = np.random.default_rng(seed + 1)
    f = lambda *s: jnp.asarray(rng.normal(size=s).astype(np.float32))  # noqa: E731
    return f(B, T, J), f(B, U + 1, J), f(J, V) * 0.5, f(V) * 0.1


# Row 0 valid; the others each break one rule (concrete: ValueError; traced: see module docstring).
INVALID = {
    "zero_frames": (1, "tl", 0, "no frames", np.inf),
    "label_above_V": (2, "label", V + 3, "outside", np.nan),
    "negative_label": (4, "label", -2, "outside", np.nan),
    "too_many_frames": (3, "tl", T + 2, "exceed T", np.nan),
    "label_length_above_U": (4, "ul", U + 1, "label_lengths", np.nan),
}


def _broken(name):
    logits, labels, tl, ul = _problem()
    row, what, value, _, _ = INVALID[name]
    labels, tl, ul = labels.copy(), tl.copy(), ul.copy()
    if what == "tl":
        tl[row] = value
    elif what == "ul":
        ul[row] = value
    else:
        ul[row] = max(ul[row], 1)
        labels[row, 0] = value
    return logits, labels, tl, ul


def _all_broken():
    """One batch with row 0 valid and every invalid kind in rows 1..4."""
    logits, labels, tl, ul = _problem()
    labels, tl, ul = labels.copy(), tl.copy(), ul.copy()
    tl[1] = 0
    labels[2, 0] = V + 3
    tl[3] = T + 2
    ul[4] = U + 1
    return logits, labels, tl, ul, np.array([0.0, np.inf, np.nan, np.nan, np.nan])


def _unfused(impl):
    if impl == "pallas_gpu_module":
        return lambda x, *i: pallas_gpu.rnnt_loss(x, *i, interpret=INTERPRET)
    kw = dict(implementation=impl, reduction="none")
    if impl == "pallas":
        kw["interpret"] = INTERPRET
    return lambda x, *i: rnnt_loss(x, *i, **kw)


def _fused(impl):
    if impl == "pallas_gpu_module":
        return lambda *a: pallas_gpu.fused_rnnt_loss(*a, interpret=INTERPRET)
    kw = dict(implementation=impl, reduction="none")
    if impl == "pallas":
        kw["interpret"] = INTERPRET
    return lambda *a: fused_rnnt_loss(*a, **kw)


# "pallas" through the API is the device's flavour (pallas_tpu, interpreted, on CPU); the GPU
# flavour is called through its module where the session interprets.
IMPLS = ["xla", "reference", "pallas"] + (["pallas_gpu_module"] if INTERPRET else [])


@pytest.mark.parametrize("name", sorted(INVALID))
def test_concrete_invalid_inputs_raise_everywhere(name):
    logits, labels, tl, ul = _broken(name)
    enc, pred, w, b = _joint()
    msg = INVALID[name][3]
    for impl in IMPLS:
        with pytest.raises(ValueError, match=msg if impl != "pallas_gpu_module" else None):
            _unfused(impl)(logits, labels, tl, ul)
        with pytest.raises(ValueError):
            _fused(impl)(enc, pred, w, b, labels, tl, ul)


@functools.lru_cache(maxsize=None)
def _traced_unfused(impl):
    def f(x, labels, tl, ul):
        losses = _unfused(impl)(x, labels, tl, ul)
        return jnp.sum(jnp.where(jnp.isfinite(losses), losses, 0.0)), losses
    return jax.jit(jax.value_and_grad(f, has_aux=True))


@functools.lru_cache(maxsize=None)
def _traced_fused(impl):
    def f(enc, pred, w, b, labels, tl, ul):
        losses = _fused(impl)(enc, pred, w, b, labels, tl, ul)
        return jnp.sum(jnp.where(jnp.isfinite(losses), losses, 0.0)), losses
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True))


def _check_status(losses):
    losses = np.asarray(losses)
    assert np.isfinite(losses[0])
    assert np.isposinf(losses[1])
    assert np.isnan(losses[2:]).all()
    return losses[0]


@pytest.mark.parametrize("impl", IMPLS)
def test_traced_invalid_inputs_agree_unfused(impl):
    """jit(value_and_grad): +inf / NaN per invalid row, zero gradient there, row 0 untouched."""
    logits, labels, tl, ul, _ = _all_broken()
    (_, losses), g = _traced_unfused(impl)(logits, labels, tl, ul)
    (_, ref_losses), ref_g = _traced_unfused("xla")(logits, labels, tl, ul)
    v0 = _check_status(losses)
    np.testing.assert_allclose(v0, float(ref_losses[0]), rtol=1e-5)
    g = np.asarray(g)
    assert np.all(g[1:] == 0) and np.isfinite(g).all()
    np.testing.assert_allclose(g[0], np.asarray(ref_g)[0], atol=2e-5)
    assert np.abs(g[0]).max() > 0.05


@pytest.mark.parametrize("impl", IMPLS)
def test_traced_invalid_inputs_agree_fused(impl):
    logits, labels, tl, ul, _ = _all_broken()
    params = _joint()
    (_, losses), grads = _traced_fused(impl)(*params, labels, tl, ul)
    (_, ref_losses), ref_grads = _traced_fused("xla")(*params, labels, tl, ul)
    dot = COMPILED  # on an accelerator the XLA fused reference itself uses TF32 / bf16 dots
    v0 = _check_status(losses)
    np.testing.assert_allclose(v0, float(ref_losses[0]), rtol=DOT_TOL["loss_rtol"] if dot else 1e-5)
    d_enc, d_pred = np.asarray(grads[0]), np.asarray(grads[1])
    assert np.all(d_enc[1:] == 0) and np.all(d_pred[1:] == 0)  # invalid rows: no gradient
    for a, b in zip(grads, ref_grads):
        a, b = np.asarray(a), np.asarray(b)
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b, atol=(DOT_TOL["grad_atol"] if dot else 2e-5)
                                   * max(1.0, np.abs(b).max()))


def test_traced_row_equals_the_valid_row_alone():
    """The valid row's loss does not depend on the invalid rows beside it."""
    logits, labels, tl, ul, _ = _all_broken()
    alone = rnnt_loss(logits[:1], labels[:1], tl[:1], ul[:1], reduction="none",
                      implementation="xla")
    (_, losses), _ = _traced_unfused("xla")(logits, labels, tl, ul)
    np.testing.assert_allclose(losses[0], alone[0], rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# Dispatch.

@pytest.fixture
def auto_pallas(monkeypatch):
    """implementation=None tries the Pallas TPU kernel (interpreted) on this CPU."""
    api.clear_dispatch_cache()
    monkeypatch.setattr(api, "_auto_candidate", lambda backend: ("pallas_tpu", True))
    yield
    api.clear_dispatch_cache()


def _spy(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def wrapper(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def _small(seed=3):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(2, 4, 3, 5)).astype(np.float32))
    return x, np.array([[1, 2], [3, 4]], np.int32), np.array([4, 3], np.int32), np.array([2, 1], np.int32)


@pytest.mark.skipif(not INTERPRET or jax.default_backend() != "cpu", reason="CPU dispatch")
def test_cpu_default_is_xla_without_a_compile_check(monkeypatch):
    compiles = []
    monkeypatch.setattr(api, "_aot_compile", lambda *a: compiles.append(a))
    kernel = _spy(monkeypatch, pallas_tpu, "rnnt_loss")
    x, lab, tl, ul = _small()
    got = rnnt_loss(x, lab, tl, ul)
    np.testing.assert_allclose(got, rnnt_loss(x, lab, tl, ul, implementation="xla"), rtol=1e-6)
    assert not compiles and not kernel and not api.dispatch_verdicts()


@pytest.mark.skipif(not INTERPRET, reason="patches the dispatch to the interpreted TPU kernel")
def test_failing_compile_falls_back_to_xla_with_one_warning(auto_pallas, monkeypatch):
    compiles = []

    def failing(fn, args):
        compiles.append(args)
        raise RuntimeError("Triton: out of resource: shared memory, Required: 262144, "
                           "Hardware limit: 232448")

    monkeypatch.setattr(api, "_aot_compile", failing)
    kernel = _spy(monkeypatch, pallas_tpu, "rnnt_loss")
    x, lab, tl, ul = _small()
    want = rnnt_loss(x, lab, tl, ul, implementation="xla", reduction="none")
    with pytest.warns(api.PallasFallbackWarning, match="out of resource") as record:
        got = rnnt_loss(x, lab, tl, ul, reduction="none")
    assert sum(issubclass(w.category, api.PallasFallbackWarning) for w in record) == 1
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert len(compiles) == 1 and not kernel
    (reason,) = api.dispatch_verdicts().values()
    assert "out of resource" in reason
    # the verdict is cached: no second compile, no second warning, also when traced under jit
    with warnings.catch_warnings():
        warnings.simplefilter("error", api.PallasFallbackWarning)
        again = jax.jit(lambda x_: rnnt_loss(x_, lab, tl, ul, reduction="none"))(x)
    np.testing.assert_allclose(again, want, rtol=1e-6)
    assert len(compiles) == 1 and not kernel
    # a new signature, first seen while tracing: checked (and warned about) at trace time
    with pytest.warns(api.PallasFallbackWarning):
        g = jax.jit(jax.grad(lambda x_: rnnt_loss(x_[:1], lab[:1], tl[:1], ul[:1])))(x)
    assert len(compiles) == 2 and np.isfinite(np.asarray(g)).all() and not kernel


@pytest.mark.skipif(not INTERPRET, reason="patches the dispatch to the interpreted TPU kernel")
def test_successful_compile_uses_the_pallas_kernel(auto_pallas, monkeypatch):
    """The real ahead-of-time compile (Pallas TPU kernel, interpret mode) succeeds, so None runs
    the kernel, and the verdict is reused."""
    compiles = []
    real = api._aot_compile
    monkeypatch.setattr(api, "_aot_compile", lambda fn, args: (compiles.append(args), real(fn, args)))
    kernel = _spy(monkeypatch, pallas_tpu, "rnnt_loss")
    x, lab, tl, ul = _small()
    f = jax.jit(lambda x_: rnnt_loss(x_, lab, tl, ul, reduction="none"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", api.PallasFallbackWarning)
        got = f(x)
    assert len(compiles) == 1 and kernel
    assert list(api.dispatch_verdicts().values()) == [None]
    np.testing.assert_allclose(got, rnnt_loss(x, lab, tl, ul, implementation="xla",
                                              reduction="none"), rtol=1e-5)


@pytest.mark.skipif(not INTERPRET, reason="patches the dispatch to the interpreted TPU kernel")
def test_unsupported_option_falls_back_without_compiling(auto_pallas, monkeypatch):
    """The fused Pallas joint has tanh / relu only: gelu falls back (warned), 'pallas' raises."""
    compiles = []
    monkeypatch.setattr(api, "_aot_compile", lambda *a: compiles.append(a))
    x, lab, tl, ul = _small()
    enc = jnp.ones((2, 4, 6)) * 0.1
    pred = jnp.ones((2, 3, 6)) * 0.2
    w = jnp.asarray(np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32))
    b = jnp.zeros(5)
    with pytest.warns(api.PallasFallbackWarning, match="gelu"):
        got = fused_rnnt_loss(enc, pred, w, b, lab, tl, ul, activation="gelu")
    assert not compiles
    np.testing.assert_allclose(got, fused_rnnt_loss(enc, pred, w, b, lab, tl, ul,
                                                    activation="gelu", implementation="xla"),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="activation"):
        fused_rnnt_loss(enc, pred, w, b, lab, tl, ul, activation="gelu", implementation="pallas",
                        interpret=True)


def test_reference_refuses_clamp_and_honours_fastemit():
    x, lab, tl, ul = _small()
    with pytest.raises(ValueError, match="clamp"):
        rnnt_loss(x, lab, tl, ul, implementation="reference", clamp=0.5)

    @jax.jit
    def grads(x_):
        return [jax.grad(lambda y: rnnt_loss(y, lab, tl, ul, fastemit_lambda=lam,
                                             implementation=impl))(x_)
                for impl, lam in (("reference", 0.5), ("xla", 0.5), ("reference", 0.0))]

    g_ref, g_xla, g0 = grads(x)
    np.testing.assert_allclose(g_ref, g_xla, atol=2e-6)
    assert float(jnp.abs(g_ref - g0).max()) > 1e-3  # FastEmit is not dropped


def test_gpu_joint_config_fits_an_h100():
    """The Triton joint's tiles stay inside the budgets the module docstring derives."""
    for Jp in (16, 64, 128, 256, 512):
        for itemsize in (2, 4):
            cfg = pallas_gpu.joint_config(Jp, itemsize)
            bv = cfg["bv"]
            assert 16 <= bv <= 128 and bv & (bv - 1) == 0
            assert 2 * Jp * bv * itemsize <= 64 << 10  # pipelined weight tile, 2 stages
            assert Jp * bv <= 8192  # fp32 d_W accumulator: 32 registers / thread at 8 warps
            assert 3 * cfg["bu_bwd"] * Jp // (32 * cfg["warps_bwd"]) <= 96
    with pytest.raises(NotImplementedError, match="XLA"):
        pallas_gpu.joint_config(1024, 4)
    # the backward grid: ~1024 programs even for one long utterance
    bt, nt = pallas_gpu._frame_chunks(2000, 1 * 13, 201 * 256 * 4, None)
    assert 13 * nt >= 1000 and bt * nt >= 2000
