"""Tests of the gated residual FFN block: every implementation against the dense reference.

The dense reference itself is checked against an independent float64 NumPy implementation.
Tolerances:
  fp32 values: 2e-5 abs + 2e-5 rel. Implementations share the row math and differ only in matmul
    accumulation order (XLA blocks a [capacity, D] matmul differently from a [B*T, D] one); sums of
    D=128 / H=256 fp32 products of O(1) terms round at ~1e-6.
  bf16 values: 2e-2 abs + 1.6e-2 rel (two bf16 ulps). The intermediate casts to bf16 (LN output,
    activation) can round the other way after an fp32 accumulation-order difference, a one-ulp
    change that propagates through the second matmul.
  gradients: fp32 1e-4, bf16 6e-2, relative to the reference gradient's max magnitude.
  compiled on a GPU (JAXSLU_PALLAS_INTERPRET=0): fp32 matmuls of the Triton kernel and of XLA run
    as TF32 (10 mantissa bits, 2^-11 per operand): fp32 values 5e-3 abs + 5e-3 rel, gradients 1e-2
    (pallas_mode.DOT_TOL). The Pallas kernels run interpreted by default, compiled for real with
    JAXSLU_PALLAS_INTERPRET=0 on a device (tests/kernels/pallas_mode.py).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from jaxslu.kernels.gated_block import (GatedFFNParams, default_implementation, flops_per_row,
                                        gated_ffn, gated_ffn_dense)
from jaxslu.kernels.gated_block import api as gapi
from jaxslu.kernels.gated_block import pallas_gpu
from jaxslu.kernels.gated_block.pallas_gpu import gated_ffn_pallas_gpu
from jaxslu.kernels.gated_block.pallas_gpu import supports as supports_gpu
from jaxslu.kernels.gated_block.pallas_tpu import gated_ffn_pallas_tpu
from jaxslu.kernels.gated_block.specs import BENCH_SHAPE, TEST_SHAPE, make_gate, make_inputs
from jaxslu.kernels.gated_block.xla import bucket_capacity, gated_ffn_xla
from tests.kernels.pallas_mode import COMPILED, DOT_TOL, INTERPRET, interpret_only, pallas_backends

S = TEST_SHAPE  # B=2, T=64, D=128, H=256: N = 128 rows
N = S.B * S.T
PER_ROW = flops_per_row(S.D, S.H)
DENSITIES = (1.0, 0.5, 0.1, 0.0)
TOL = {jnp.float32: dict(atol=2e-5, rtol=2e-5), jnp.bfloat16: dict(atol=2e-2, rtol=1.6e-2)}
GRAD_TOL = {jnp.float32: 1e-4, jnp.bfloat16: 6e-2}
if COMPILED:  # TF32 (GPU) / bf16-pass (TPU) matmuls on both sides (module docstring)
    TOL[jnp.float32] = dict(atol=DOT_TOL["value_atol"], rtol=DOT_TOL["value_rtol"])
    GRAD_TOL[jnp.float32] = DOT_TOL["grad_atol"]
needs_tpu_kernel = pytest.mark.skipif("tpu" not in pallas_backends(),
                                      reason="TPU kernel: interpreted, or compiled on a TPU")
needs_gpu_kernel = pytest.mark.skipif("gpu" not in pallas_backends(),
                                      reason="GPU kernel: interpreted, or compiled on a GPU")
# TPU interpret mode proper (simulated HBM / VMEM copies) where interpreting, else compiled
TPU_INTERPRET = pltpu.InterpretParams() if INTERPRET else False
# Small row tiles so the N = 128 test rows span 8 tiles and tile skipping is exercised
# (16 is a multiple of the TPU sublane count 8 and a power of two for Triton).
TILE = 16


def assert_close(actual, expected, dtype):
    np.testing.assert_allclose(np.asarray(actual, np.float32), np.asarray(expected, np.float32),
                               **TOL[dtype])


def active_rows(gate) -> int:
    return int(np.count_nonzero(np.asarray(gate)))


def active_tiles(gate, tile: int) -> int:
    return int(np.asarray(gate).reshape(-1, tile).any(axis=1).sum())


def numpy_block(x, gate, p: GatedFFNParams):
    """Independent float64 NumPy implementation of y = x + gate * FFN(LN(x)) with tanh-GELU."""
    x = np.asarray(x, np.float64)
    q = {k: np.asarray(v, np.float64) for k, v in p._asdict().items()}
    mu = x.mean(-1, keepdims=True)
    h = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-6)
    h = h * q["ln_scale"] + q["ln_bias"]
    a = h @ q["w1"] + q["b1"]
    a = 0.5 * a * (1 + np.tanh(np.sqrt(2 / np.pi) * (a + 0.044715 * a ** 3)))
    return x + np.asarray(gate, np.float64)[..., None] * (a @ q["w2"] + q["b2"])


def test_dense_reference_matches_numpy_float64():
    x, gate, p = make_inputs(S, 0.5, "random")
    y, flops = gated_ffn_dense(x, gate, p)
    # 1e-4: fp32 rounding of LN, two matmuls (128 / 256 terms) and tanh vs float64.
    np.testing.assert_allclose(np.asarray(y), numpy_block(x, gate, p), atol=1e-4, rtol=1e-4)
    assert float(flops) == N * PER_ROW


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("pattern", ["random", "ragged"])
@pytest.mark.parametrize("density", DENSITIES)
def test_xla_forward_matches_dense(density, pattern, dtype):
    x, gate, p = make_inputs(S, density, pattern, dtype)
    count = active_rows(gate)
    capacity = max(count, 1) if count < N else N  # tight capacity: compaction really runs
    y_ref, _ = gated_ffn_dense(x, gate, p)
    y, flops = gated_ffn_xla(x, gate, p, capacity=capacity)
    assert y.dtype == dtype
    assert_close(y, y_ref, dtype)
    assert float(flops) == capacity * PER_ROW


def test_xla_inactive_frames_are_exactly_x():
    x, gate, p = make_inputs(S, 0.3, "ragged")
    y, _ = gated_ffn_xla(x, gate, p, capacity=64)
    off = np.asarray(gate) == 0
    np.testing.assert_array_equal(np.asarray(y)[off], np.asarray(x)[off])


def test_xla_under_jit_and_overflow_fallback():
    x, gate, p = make_inputs(S, 0.5, "random")
    count = active_rows(gate)
    y_ref, _ = gated_ffn_dense(x, gate, p)
    run = jax.jit(gated_ffn_xla, static_argnames=("activation", "capacity"))
    y, flops = run(x, gate, p, capacity=count)
    assert_close(y, y_ref, jnp.float32)
    assert float(flops) == count * PER_ROW
    # More active rows than capacity: exact dense fallback, all N rows counted.
    y, flops = run(x, gate, p, capacity=count - 5)
    assert_close(y, y_ref, jnp.float32)
    assert float(flops) == N * PER_ROW
    with pytest.raises(ValueError, match="static capacity"):
        jax.jit(gated_ffn_xla)(x, gate, p)


def test_xla_host_bucket_capacity():
    g = make_gate(S, 0.1, "random")
    assert bucket_capacity(g) == 128  # 10% of 128 rows -> one 128-row bucket (= N here)
    assert bucket_capacity(g, bucket_rows=8) == -(-active_rows(g) // 8) * 8
    assert bucket_capacity(jnp.zeros((2, 64))) == 0
    x, _, p = make_inputs(S, 0.0)
    y, flops = gated_ffn(x, jnp.zeros((2, 64)), p, implementation="xla")
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
    assert float(flops) == 0.0


def _grads(impl_fn, x, gate, p, ct):
    def loss(x_, g_, p_):
        return jnp.sum(impl_fn(x_, g_, p_)[0].astype(jnp.float32) * ct)
    return jax.grad(loss, argnums=(0, 1, 2))(x, gate, p)


def check_grads(got, want, gate, dtype):
    """x and params: all entries; gate: equal on active frames, zero on inactive frames."""
    tol = GRAD_TOL[dtype]
    gx, gg, gp = got
    wx, wg, wp = want
    for name, a, b in [("x", gx, wx)] + [(k, getattr(gp, k), getattr(wp, k)) for k in wp._fields]:
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        scale = max(np.abs(b).max(), 1e-6)
        assert np.abs(a - b).max() <= tol * scale, f"d/d{name}: {np.abs(a - b).max()} vs {scale}"
    on = np.asarray(gate) != 0
    a, b = np.asarray(gg, np.float32), np.asarray(wg, np.float32)
    scale = max(np.abs(b).max(), 1e-6)
    assert np.abs(a - b)[on].max(initial=0) <= tol * scale
    np.testing.assert_array_equal(a[~on], 0.0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("density", [0.5, 0.1])
def test_xla_gradients(density, dtype):
    x, gate, p = make_inputs(S, density, "ragged", dtype)
    ct = jax.random.normal(jax.random.key(1), x.shape)
    want = _grads(lambda *a: gated_ffn_dense(*a), x, gate, p, ct)
    got = _grads(lambda *a: gated_ffn_xla(*a, capacity=active_rows(gate)), x, gate, p, ct)
    check_grads(got, want, gate, dtype)


def test_dense_gate_gradient_is_ffn_on_every_frame():
    """The straight-through estimator's d y/d gate = FFN(LN(x)) on inactive frames too."""
    x, gate, p = make_inputs(S, 0.5, "random")
    ct = jax.random.normal(jax.random.key(1), x.shape)
    _, gg, _ = _grads(lambda *a: gated_ffn_dense(*a), x, gate, p, ct)
    f = numpy_block(x, np.ones(gate.shape), p) - np.asarray(x, np.float64)
    np.testing.assert_allclose(np.asarray(gg), (f * np.asarray(ct)).sum(-1), atol=1e-3, rtol=1e-4)


@needs_tpu_kernel
@pytest.mark.parametrize("pattern", ["random", "ragged"])
@pytest.mark.parametrize("density", DENSITIES)
def test_pallas_tpu_interpret_forward(density, pattern):
    """TPU interpret mode (InterpretParams) simulates the HBM/VMEM block copies, so it checks that
    untouched tiles, the repeated last tile and the no-active-tile writeback all leave x intact
    (the generic interpreter, interpret=True, reads output blocks back and would hide those)."""
    x, gate, p = make_inputs(S, density, pattern)
    y_ref, _ = gated_ffn_dense(x, gate, p)
    y, rows = gated_ffn_pallas_tpu(x, gate, p, tile_rows=TILE, interpret=TPU_INTERPRET)
    assert_close(y, y_ref, jnp.float32)
    assert int(rows) == active_tiles(gate, TILE) * TILE


@needs_tpu_kernel
@pytest.mark.parametrize("density", [1.0, 0.5])
def test_pallas_tpu_bf16(density):
    x, gate, p = make_inputs(S, density, "ragged", jnp.bfloat16)
    y_ref, _ = gated_ffn_dense(x, gate, p)
    y, _ = gated_ffn_pallas_tpu(x, gate, p, tile_rows=TILE, interpret=TPU_INTERPRET)
    assert y.dtype == jnp.bfloat16
    assert_close(y, y_ref, jnp.bfloat16)


GPU_CASES = [(d, pat, jnp.float32) for d in DENSITIES for pat in ("random", "ragged")] + [
    (d, "ragged", jnp.bfloat16) for d in (1.0, 0.5)]


@needs_gpu_kernel
@pytest.mark.parametrize("density,pattern,dtype", GPU_CASES)
def test_pallas_gpu_interpret_forward(density, pattern, dtype):
    x, gate, p = make_inputs(S, density, pattern, dtype)
    y_ref, _ = gated_ffn_dense(x, gate, p)
    # block_h=64 < H=256: the H-chunk loop runs 4 times.
    y, rows = gated_ffn_pallas_gpu(x, gate, p, tile_rows=TILE, block_h=64, interpret=INTERPRET)
    assert y.dtype == dtype
    assert_close(y, y_ref, dtype)
    assert int(rows) == active_tiles(gate, TILE) * TILE


def test_pallas_gpu_rejects_bad_tiling_and_sizes_for_an_h100():
    x, gate, p = make_inputs(S, 0.5)
    with pytest.raises(ValueError, match="tile_rows a power of two"):
        gated_ffn_pallas_gpu(x, gate, p, tile_rows=24, interpret=True)
    assert supports_gpu(128, 256) and not supports_gpu(96, 256) and not supports_gpu(128, 40)
    assert supports_gpu(128, 96)  # block_h = 32 divides H = 96
    # the default config fits an H100 / H200 (227 KiB shared memory, 64 K registers per SM):
    # pipelined W1 + W2 slices <= 128 KiB, [tile_rows, D] fp32 values <= 64 registers per thread
    for d, h in ((128, 512), (256, 1024), (512, 2048), (1024, 4096)):
        for dtype in (jnp.float32, jnp.bfloat16):
            cfg = pallas_gpu.config(d, h, dtype)
            if cfg["block_h"]:
                smem = cfg["num_stages"] * 2 * d * cfg["block_h"] * jnp.dtype(dtype).itemsize
                assert smem <= 128 << 10, (d, h, dtype, cfg)
            assert cfg["tile_rows"] * d // (32 * cfg["num_warps"]) <= 64
            assert cfg["num_stages"] == 2
    assert pallas_gpu.config(256, 1024)["block_h"] == 32  # was 64 x 3 stages = 384 KiB
    assert not supports_gpu(1024, 4096, jnp.float32)  # no block_h >= 16 fits: XLA


def test_api_pallas_gradients():
    """custom_vjp: Pallas (TPU kernel, interpret) forward, XLA-compaction backward."""
    x, gate, p = make_inputs(S, 0.3, "ragged")
    ct = jax.random.normal(jax.random.key(1), x.shape)
    want = _grads(lambda *a: gated_ffn_dense(*a), x, gate, p, ct)
    got = _grads(lambda *a: gated_ffn(*a, implementation="pallas", interpret=INTERPRET,
                                      capacity=active_rows(gate)), x, gate, p, ct)
    check_grads(got, want, gate, jnp.float32)


def test_api_pallas_gradients_under_jit_without_capacity():
    """Under jit with capacity=None the backward cannot size a bucket and runs all B*T rows,
    which also makes the gate gradient the full dense (straight-through) one."""
    x, gate, p = make_inputs(S, 0.1, "random")
    ct = jax.random.normal(jax.random.key(1), x.shape)
    want = _grads(lambda *a: gated_ffn_dense(*a), x, gate, p, ct)
    got = jax.jit(lambda *a: _grads(lambda *b: gated_ffn(*b, implementation="pallas",
                                                         interpret=INTERPRET), *a, ct))(x, gate, p)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(a - b).max() <= GRAD_TOL[jnp.float32] * np.abs(b).max()


def test_api_dispatch_and_flops():
    x, gate, p = make_inputs(S, 0.1, "random")
    count = active_rows(gate)
    assert default_implementation("cpu") == "xla"
    assert default_implementation("tpu") == default_implementation("gpu") == "pallas"
    as_dict = p._asdict()  # params as a plain dict work too
    y_ref, f_dense = gated_ffn(x, gate, as_dict, implementation="dense")
    assert float(f_dense) == N * PER_ROW
    y, flops = gated_ffn(x, gate, as_dict, capacity=count)  # None -> XLA compaction on CPU
    assert_close(y, y_ref, jnp.float32)
    assert float(flops) == count * PER_ROW
    # Pallas on CPU: TPU kernel (128-row tiles, one tile here since N = 128); compiled on a GPU:
    # the Triton kernel's tile rows.
    tile = 128 if INTERPRET or jax.default_backend() == "tpu" else pallas_gpu.config(S.D, S.H)[
        "tile_rows"]
    y, flops = gated_ffn(x, gate, p, implementation="pallas", interpret=INTERPRET)
    assert_close(y, y_ref, jnp.float32)
    assert float(flops) == active_tiles(gate, tile) * tile * PER_ROW


def test_api_other_activations():
    x, gate, p = make_inputs(S, 0.5, "ragged")
    for act in ("relu", "silu"):
        y_ref, _ = gated_ffn(x, gate, p, activation=act, implementation="dense")
        y, _ = gated_ffn(x, gate, p, activation=act, implementation="xla", capacity=64)
        assert_close(y, y_ref, jnp.float32)


def test_api_rejects_bad_input():
    x, gate, p = make_inputs(S, 0.5)
    if jax.default_backend() == "cpu":
        with pytest.raises(ValueError, match="needs a TPU or GPU backend"):
            gated_ffn(x, gate, p, implementation="pallas")
    with pytest.raises(ValueError, match="implementation must be one of"):
        gated_ffn(x, gate, p, implementation="triton")
    with pytest.raises(ValueError, match="gate must be"):
        gated_ffn(x, gate[:, :10], p)
    with pytest.raises(ValueError, match="x must be"):
        gated_ffn(x[0], gate, p)
    with pytest.raises(ValueError, match="params.w2 must have shape"):
        gated_ffn(x, gate, p._replace(w2=p.w2[:10]))
    with pytest.raises(ValueError, match="missing"):
        gated_ffn(x, gate, {"w1": p.w1})
    with pytest.raises(ValueError, match="activation must be one of"):
        gated_ffn(x, gate, p, activation="tanh")
    with pytest.raises(ValueError, match="capacity must be"):
        gated_ffn(x, gate, p, implementation="xla", capacity=-1)


@interpret_only  # compiled runs (JAXSLU_PALLAS_INTERPRET=0) check far more than the lowering
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kernels_lower_for_tpu_and_gpu(dtype):
    """No TPU/GPU here, but lowering runs the Mosaic (TPU) and Triton (GPU) kernel compilers'
    front ends, which reject unsupported ops, block shapes and layouts, at the benchmark shape."""
    x, gate, p = make_inputs(BENCH_SHAPE, 0.5, dtype=dtype)
    for fn, platform, marker in ((gated_ffn_pallas_tpu, "tpu", "tpu_custom_call"),
                                 (gated_ffn_pallas_gpu, "cuda", "triton")):
        lowered = jax.jit(lambda *a, fn=fn: fn(*a)[0]).trace(x, gate, p).lower(
            lowering_platforms=(platform,))
        assert marker in lowered.as_text().lower()


# ------------------------------------------------------------------------------------------------
# implementation=None dispatch: `_auto_candidate` replaced so CPU tries the Triton kernel
# (interpreted); `_aot_compile` real (it compiles on CPU) or an injected failure.

@pytest.fixture
def auto_gpu_kernel(monkeypatch):
    gapi.clear_dispatch_cache()
    monkeypatch.setattr(gapi, "_auto_candidate", lambda backend: ("gpu", True))
    yield
    gapi.clear_dispatch_cache()


@interpret_only
def test_dispatch_uses_the_kernel_when_it_compiles(auto_gpu_kernel, monkeypatch):
    compiles = []
    real = gapi._aot_compile
    monkeypatch.setattr(gapi, "_aot_compile", lambda fn, args: (compiles.append(1), real(fn, args)))
    x, gate, p = make_inputs(S, 0.1, "ragged")
    y, flops = gated_ffn(x, gate, p)
    tile = pallas_gpu.config(S.D, S.H)["tile_rows"]
    assert float(flops) == active_tiles(gate, tile) * tile * PER_ROW  # the kernel's count
    assert_close(y, gated_ffn_dense(x, gate, p)[0], jnp.float32)
    gated_ffn(x, gate, p)
    assert compiles == [1] and list(gapi.dispatch_verdicts().values()) == [None]


@interpret_only
def test_dispatch_falls_back_to_xla_on_a_failing_compile(auto_gpu_kernel, monkeypatch):
    def failing(fn, args):
        raise RuntimeError("triton: out of resource: shared memory")

    monkeypatch.setattr(gapi, "_aot_compile", failing)
    x, gate, p = make_inputs(S, 0.1, "ragged")
    with pytest.warns(gapi.PallasFallbackWarning, match="out of resource"):
        y, flops = gated_ffn(x, gate, p)
    assert float(flops) == bucket_capacity(gate) * PER_ROW  # XLA compaction ran
    assert_close(y, gated_ffn_dense(x, gate, p)[0], jnp.float32)
    # traced gate and no capacity: fine for Pallas, so the fallback must not raise either (it
    # computes every row); the cached verdict means no second warning
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", gapi.PallasFallbackWarning)
        y2, flops2 = jax.jit(lambda *a: gated_ffn(*a))(x, gate, p)
    assert float(flops2) == N * PER_ROW
    assert_close(y2, y, jnp.float32)


@interpret_only
def test_dispatch_refuses_shapes_the_triton_kernel_cannot_tile(auto_gpu_kernel, monkeypatch):
    monkeypatch.setattr(gapi, "_aot_compile", lambda *a: pytest.fail("no compile expected"))
    shape = dataclasses.replace(S, D=96)
    x, gate, p = make_inputs(shape, 0.5, "ragged")
    with pytest.warns(gapi.PallasFallbackWarning, match="cannot tile"):
        y, _ = gated_ffn(x, gate, p)
    assert_close(y, gated_ffn_dense(x, gate, p)[0], jnp.float32)
