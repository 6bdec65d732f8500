"""RNN-T loss as Pallas GPU kernels (Triton lowering): fused log-softmax, anti-diagonal alpha/beta,
gradient, and the fused joint (output projection + online log-sum-exp over vocabulary tiles).

Stages and the gradient formula are described in `pallas_common`.

**Why Triton and not Mosaic GPU.** In jax 0.10.2 the Triton lowering (`jax.experimental.pallas
.triton`) runs on every CUDA GPU from Ampere on (and ROCm), expresses these kernels directly
(masked loads/stores, block-level reductions, `dot` for the joint) and its lowering runs on a CPU
host, so the tests also check that every kernel lowers. Mosaic GPU targets Hopper/Blackwell only
and is built around warpgroup-level TMA/WGMMA pipelines, which pay off for large matmuls; here the
log-softmax, recursion and gradient stages are bandwidth/latency bound and the joint's matmuls are
small ([bu, J] x [J, bv]), so Mosaic GPU would narrow the hardware range for no real gain.

Triton-specific choices:
* **Programs and tiles.** Logit stages run one program per (b, t, u-tile) over a [bu, bv] tile
  (block sizes powers of two), looping over the vocabulary tiles inside the program
  (`lax.fori_loop`) with the running max/sum in registers. Loads/stores are masked
  (`plgpu.load/store(mask=...)`), so no input is padded or copied.
* **Ragged lengths** are read from the length arrays (the GPU equivalent of scalar prefetch: a
  scalar load per program). Programs whose frame is >= T_b or whose first label position is > U_b
  skip the vocabulary loop entirely (`pl.when`) and only store the fill values.
* **Recursion.** One program per sequence walks the anti-diagonals up to its own T_b + U_b; a
  diagonal is a [1, U1p] vector over u (U1p = next power of two of U+1). The +-1 shifts in u go
  through a small global-memory row (store at offset 1, load at offset 0 or 2, with
  `debug_barrier` (__syncthreads) around it) instead of a register shuffle, which Triton lacks.
* **Fused joint.** Forward: one program per (b, t, u-tile) builds h = act(enc[t] + pred[u-tile])
  ([bu, Jp]) in registers and multiplies it by each [Jp, bv] weight tile (`dot`, fp32
  accumulation). Backward: one program per (b, u-tile, frame chunk) loops over its frames and
  vocabulary tiles accumulating dh = dlogits @ W^T (d_enc rows per frame and u-tile, d_pred
  partial sums per frame chunk); one program per (v-tile, b, frame chunk) accumulates
  d_W = h^T dlogits and d_bias. Partial sums are added in XLA: deterministic, no atomics. J is
  padded to a power of two >= 16 (Triton's dot minimum) in the wrapper; the parameters are small.
* `interpret=True` runs the same kernels with Pallas' generic interpreter (CPU tests).

**Sizing for real hardware** (H100 / H200, sm_90: 132 SMs; per SM 228 KiB of shared memory, of
which one program may use at most 227 KiB, and 64 K 32-bit registers, at most 255 per thread).
Triton software-pipelines every load inside a loop whose result feeds a `dot` into shared memory,
`num_stages` copies deep, and keeps loop-carried values and `dot` accumulators in registers; a
config that exceeds either budget fails to compile ("out of resource: shared memory") or spills
to local memory. The sizes below follow jax's own Pallas Triton ops (ops/gpu/attention.py: 4
warps, or 8 for head dims > 64, 2 stages; layer_norm.py: 4 KiB-64 KiB row blocks, <= 8 warps) and
tokamax's heuristics for its Triton flash attention (tiles 16..64 on a side, block_q * block_k *
block_d <= 64^3 elements, 4 warps, 2 stages, 1 stage on sm_80 for wide rows):
* logit stages: [32, 128] fp32 tiles (16 KiB; 32 values per thread at 4 warps), 2 stages;
* joint (`joint_config`): bv chosen so the pipelined [Jp, bv] weight tile stays within 64 KiB
  over its 2 stages and a [Jp, bv] fp32 accumulator (d_W) within 8 K elements (32 registers per
  thread at 8 warps); bu = 32 (forward) / 16 (backward, which carries h, dh and d_pred, three
  [bu, Jp] fp32 values, 48 registers per thread at Jp = 256 and 8 warps). Jp > 512 (J > 512) is
  not taken (NotImplementedError -> XLA under implementation=None): its [16, Jp] rows alone would
  need ~100 registers per thread. (The previous [Jp, 128] fp32 weight tile was 128 KiB per stage,
  256 KiB over 2 stages at J = 256: more than an H100 has.)
* backward grid: the two backward kernels also split the frames into chunks so that they launch
  about `_TARGET_PROGRAMS` (1024, ~8 per SM) programs; one program per (b, u-tile) gave only
  B * nu (e.g. 16 * 2 = 32 of 132 SMs busy, each walking all T frames).
* precision: fp32 `dot`s use the default precision, which Triton runs as TF32 on tensor cores
  (10-bit mantissa, unit roundoff 2^-11 per operand, fp32 accumulation), the same as XLA's own
  fp32 matmuls on the GPU; `jax_default_matmul_precision="highest"` still selects IEEE fp32 on CUDA
  cores (>10x slower on an H100). The joint logits then carry ~1e-3 relative error; the kernel
  tests state the tolerances they use on a GPU for it (tests/kernels/test_rnnt_pallas.py). bf16
  operands use bf16 tensor cores with fp32 accumulation. The logit stages and the recursion have
  no dot and compute in fp32 throughout.
Checked without a GPU: `benchmarks/triton_resources.py` compiles each kernel's Triton IR (as jax
lowers it for CUDA) for sm_90 with the `triton` package and ptxas and records shared memory,
registers and spills (results/benchmarks/triton_resources_sm90.json). At (16, 200, 50, 1000),
J = 256 fp32 the previous joint kernels used 164-214 KiB of shared memory and spilled 19-65 KB of
registers per thread; now the forward and the activation backward fit with no spill, and the
weight backward still reaches 255 registers with a spill of ~170 B (fp32) / ~380 B (bf16): the
first dot's [Jp, bv] weight operand is held in registers in the MMA operand layout with the
whole K = Jp at once; splitting K into 64-wide chunks is the next step for that kernel.
None of this has been run by Triton on a GPU from this repository yet (no GPU was available;
`scripts/device_check.py` is the check to run there): under implementation=None the API compiles
the kernels ahead of time for the call's shapes and falls back to XLA if Triton rejects them.
"""
from __future__ import annotations

import functools
import sys

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from jaxslu.kernels.rnnt import pallas_common as pc

NEG = pc.NEG

# Launch about this many programs in each backward kernel of the fused joint: ~8 per SM of a
# 132-SM H100 / H200, so a wave of 1-2 resident programs per SM never leaves SMs idle at the tail.
_TARGET_PROGRAMS = 1024
# Cap on the fp32 partial sums the chunked backward writes (summed in XLA afterwards).
_PARTIAL_BYTES = 256 << 20
# The fused joint takes J padded to at most this (see the module docstring).
MAX_JOINT_DIM = 512
# Shared memory the pipelined weight tile of the joint may use over its stages (of 227 KiB).
_W_TILE_SMEM = 64 << 10
# Elements of a [Jp, bv] fp32 accumulator: 32 registers per thread at 8 warps.
_ACC_ELEMENTS = 8192
_STAGES = 2


def _params(num_warps: int = 4, num_stages: int = _STAGES) -> plgpu.CompilerParams:
    return plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def _check_pow2(**blocks):
    for name, x in blocks.items():
        if x is not None and (x < 16 or x & (x - 1)):
            raise ValueError(f"{name}={x} must be a power of two >= 16 (Triton block sizes)")


def _tiles(U1: int, V: int, block_u: int, block_v: int) -> tuple[int, int]:
    _check_pow2(block_u=block_u, block_v=block_v)
    return min(block_u, max(16, pc.next_pow2(U1))), min(block_v, max(16, pc.next_pow2(V)))


def joint_config(Jp: int, w_itemsize: int) -> dict:
    """Tile sizes of the fused joint's kernels for a padded joint dim Jp (see the module docstring).

    Returns dict(bu_fwd, bu_bwd, bv, warps_fwd, warps_bwd). Raises NotImplementedError when no
    tile fits (Jp > MAX_JOINT_DIM).
    """
    if Jp > MAX_JOINT_DIM:
        raise NotImplementedError(
            f"pallas_gpu fused joint: J padded to {Jp} > {MAX_JOINT_DIM}: its [16, J] rows and "
            f"[J, 16] weight tiles do not fit the register file of a Triton program; use the XLA "
            "fused loss (implementation='xla' or None)")
    bv = 128
    while bv > 16 and (_STAGES * Jp * bv * w_itemsize > _W_TILE_SMEM or Jp * bv > _ACC_ELEMENTS):
        bv //= 2
    return dict(bu_fwd=32 if Jp <= 256 else 16, bu_bwd=16, bv=bv, warps_fwd=4, warps_bwd=8)


def _frame_chunks(T: int, parallel: int, slot_bytes: int, block_t: int | None) -> tuple[int, int]:
    """(frames per chunk, chunks) so that parallel * chunks ~ _TARGET_PROGRAMS and the partial sums
    (chunks * slot_bytes) stay under _PARTIAL_BYTES; block_t forces the chunk length."""
    if block_t is None:
        want = -(-_TARGET_PROGRAMS // max(1, parallel))
        want = min(want, max(1, _PARTIAL_BYTES // max(1, slot_bytes)), T)
        block_t = -(-T // max(1, want))
    if block_t < 1:
        raise ValueError(f"block_t={block_t} must be >= 1 (frames per backward chunk)")
    block_t = min(block_t, T)
    return block_t, -(-T // block_t)


def _row_mask(b, t, j, bu, U1, tl_ref, ul_ref):
    """(u ids [bu], in-array mask [bu], node-valid mask [bu], active) of the (b, t, u-tile) program."""
    u = j * bu + jnp.arange(bu, dtype=jnp.int32)
    tl, ul = tl_ref[b], ul_ref[b]
    active = (t < tl) & (j * bu <= ul)
    return u, u < U1, (t < tl) & (u <= ul), active


# ------------------------------------------------------------------------------------------------
# Stage 1: log-softmax.

def _store_rows(refs_vals, b, t, j, bu, in_u):
    for ref, val in refs_vals:
        plgpu.store(ref.at[b, t, pl.ds(j * bu, bu)], val, mask=in_u)


def _lse_loop(tile_of, nk, bu, bv, V, blank, lab):
    """Online log-sum-exp over the nk vocabulary tiles; returns (lse, blank logit, label logit)."""
    def body(k, carry):
        v = k * bv + jnp.arange(bv, dtype=jnp.int32)[None, :]
        return pc.online_lse_update(tile_of(k), v, V, blank, lab[:, None], *carry)

    init = (jnp.full((bu,), NEG, jnp.float32), jnp.zeros((bu,), jnp.float32),
            jnp.zeros((bu,), jnp.float32), jnp.zeros((bu,), jnp.float32))
    m, s, bl, em = jax.lax.fori_loop(0, nk, body, init)
    return m + jnp.log(s), bl, em


def _logprobs_kernel(tl_ref, ul_ref, lab_ref, x_ref, lse_ref, blank_ref, emit_ref, *, bu, bv, U1, V,
                     blank, nk):
    b, t, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    u, in_u, _, active = _row_mask(b, t, j, bu, U1, tl_ref, ul_ref)

    @pl.when(active)
    def _compute():
        lab = plgpu.load(lab_ref.at[b, pl.ds(j * bu, bu)], mask=in_u, other=0)

        def tile(k):
            v = k * bv + jnp.arange(bv, dtype=jnp.int32)
            m = in_u[:, None] & (v < V)[None, :]
            x = plgpu.load(x_ref.at[b, t, pl.ds(j * bu, bu), pl.ds(k * bv, bv)], mask=m, other=NEG)
            return x.astype(jnp.float32)

        lse, bl, em = _lse_loop(tile, nk, bu, bv, V, blank, lab)
        _store_rows(((lse_ref, lse), (blank_ref, bl - lse), (emit_ref, em - lse)), b, t, j, bu, in_u)

    @pl.when(jnp.logical_not(active))
    def _fill():
        fill = jnp.full((bu,), NEG, jnp.float32)
        _store_rows(((lse_ref, jnp.zeros((bu,), jnp.float32)), (blank_ref, fill), (emit_ref, fill)),
                    b, t, j, bu, in_u)


def logprobs(logits, labels_ext, tl, ul, *, blank, interpret, block_u=32, block_v=128,
             block_t=None):
    """(lse, blank_lp, emit_lp), each [B, T, U+1] fp32, from logits [B, T, U+1, V].

    [32, 128] tiles: 16 KiB of fp32 logits per tile, 32 values per thread at 4 warps; the two
    pipeline stages of the tile loads take 32 KiB of shared memory. (block_t is unused here.)
    """
    del block_t
    B, T, U1, V = logits.shape
    bu, bv = _tiles(U1, V, block_u, block_v)
    nu, nk = pl.cdiv(U1, bu), pl.cdiv(V, bv)
    out = jax.ShapeDtypeStruct((B, T, U1), jnp.float32)
    return pl.pallas_call(
        functools.partial(_logprobs_kernel, bu=bu, bv=bv, U1=U1, V=V, blank=blank, nk=nk),
        out_shape=(out, out, out),
        grid=(B, T, nu),
        compiler_params=_params(),
        interpret=interpret,
        name="rnnt_logprobs_gpu",
    )(tl, ul, labels_ext, logits)


# ------------------------------------------------------------------------------------------------
# Stage 2: recursion.

def _recursion_kernel(tl_ref, ul_ref, blank_ref, emit_ref, ll_ref, soft_ref, pb_ref, pe_ref,
                      alpha_ref, tmp_ref, *, U1p, D, lam, barrier):
    b = pl.program_id(0)
    tl, ul = tl_ref[b], ul_ref[b]
    lane = jnp.arange(U1p, dtype=jnp.int32)[None, :]
    row = lambda ref, d: ref.at[b, pl.ds(d, 1), :]  # noqa: E731
    # tmp row: [NEG, x_0 .. x_{U1p-1}, NEG]; loading at offset 0 / 2 shifts right / left.
    neg = jnp.full((1, U1p), NEG, jnp.float32)
    plgpu.store(tmp_ref.at[pl.ds(b, 1), pl.ds(0, U1p)], neg)
    plgpu.store(tmp_ref.at[pl.ds(b, 1), pl.ds(2, U1p)], neg)

    def sync():
        if barrier:  # the interpreter runs a program sequentially and has no barrier primitive
            plgpu.debug_barrier()

    def shift(x, offset):
        sync()
        plgpu.store(tmp_ref.at[pl.ds(b, 1), pl.ds(1, U1p)], x)
        sync()
        return plgpu.load(tmp_ref.at[pl.ds(b, 1), pl.ds(offset, U1p)])

    def store_out(d, soft, pb, pe):
        plgpu.store(row(soft_ref, d), soft)
        plgpu.store(row(pb_ref, d), pb)
        plgpu.store(row(pe_ref, d), pe)

    def load_alpha(d):
        return plgpu.load(row(alpha_ref, d))

    def store_alpha(d, x):
        plgpu.store(row(alpha_ref, d), x)

    ll = pc.recursion_body(
        load_blank=lambda d: plgpu.load(row(blank_ref, d)),
        load_emit=lambda d: plgpu.load(row(emit_ref, d)),
        load_alpha=load_alpha, store_alpha=store_alpha, store_out=store_out,
        shift_right=lambda x: shift(x, 0), shift_left=lambda x: shift(x, 2),
        lane=lane, tl=jnp.full((1, 1), tl, jnp.int32), ul=jnp.full((1, 1), ul, jnp.int32),
        dmax=tl + ul, D=D, lam=lam)
    plgpu.store(ll_ref.at[pl.ds(b, 1), :], ll)


def recursion(blank_lp, emit_lp, tl, ul, lam, *, interpret):
    """(loss [B], soft, pb, pe [B, T, U+1]) from blank/emit log-probs [B, T, U+1].

    One program per sequence (the diagonals are sequential); one lattice cell per thread, so
    U1p / 32 warps (1..4): fewer warps make the two barriers around each shift cheaper.
    """
    B, T, U1 = blank_lp.shape
    U1p = pc.next_pow2(U1)
    D = T + U1 - 1
    bs = pc.skew(blank_lp, U1p).transpose(1, 0, 2)  # [B, D, U1p]: one sequence's rows contiguous
    es = pc.skew(emit_lp, U1p).transpose(1, 0, 2)
    skewed = jax.ShapeDtypeStruct((B, D, U1p), jnp.float32)
    ll, soft, pb, pe, _, _ = pl.pallas_call(
        functools.partial(_recursion_kernel, U1p=U1p, D=D, lam=float(lam), barrier=not interpret),
        out_shape=(jax.ShapeDtypeStruct((B, 1), jnp.float32), skewed, skewed, skewed, skewed,
                   jax.ShapeDtypeStruct((B, U1p + 2), jnp.float32)),
        grid=(B,),
        compiler_params=_params(num_warps=max(1, min(4, U1p // 32))),
        interpret=interpret,
        name="rnnt_recursion_gpu",
    )(tl, ul, bs, es)
    un = lambda x: pc.unskew(x.transpose(1, 0, 2), T, U1)  # noqa: E731
    return -ll[:, 0], un(soft), un(pb), un(pe)


# ------------------------------------------------------------------------------------------------
# Stage 3: gradient w.r.t. materialized logits.

def _node_rows(refs, b, t, j, bu, in_u):
    return [plgpu.load(r.at[b, t, pl.ds(j * bu, bu)], mask=in_u, other=0.0) for r in refs]


def _grad_kernel(tl_ref, ul_ref, g_ref, lab_ref, x_ref, lse_ref, soft_ref, pb_ref, pe_ref, out_ref, *,
                 bu, bv, U1, V, blank, nk, clamp):
    b, t, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    u, in_u, valid, active = _row_mask(b, t, j, bu, U1, tl_ref, ul_ref)

    def tile_ref(k):
        return out_ref.at[b, t, pl.ds(j * bu, bu), pl.ds(k * bv, bv)]

    def mask(k):
        v = k * bv + jnp.arange(bv, dtype=jnp.int32)
        return v[None, :], in_u[:, None] & (v < V)[None, :]

    @pl.when(active)
    def _compute():
        lab = plgpu.load(lab_ref.at[b, pl.ds(j * bu, bu)], mask=in_u, other=0)
        lse, soft, pb, pe = _node_rows((lse_ref, soft_ref, pb_ref, pe_ref), b, t, j, bu, in_u)
        g = g_ref[b]

        def body(k, c):
            v, m = mask(k)
            x = plgpu.load(x_ref.at[b, t, pl.ds(j * bu, bu), pl.ds(k * bv, bv)], mask=m, other=0.0)
            grad = pc.logits_grad(x.astype(jnp.float32), v, valid, lse, soft, pb, pe, lab[:, None],
                                  blank, g, clamp)
            plgpu.store(tile_ref(k), grad.astype(out_ref.dtype), mask=m)
            return c

        jax.lax.fori_loop(0, nk, body, 0)

    @pl.when(jnp.logical_not(active))
    def _zero():
        def body(k, c):
            plgpu.store(tile_ref(k), jnp.zeros((bu, bv), out_ref.dtype), mask=mask(k)[1])
            return c

        jax.lax.fori_loop(0, nk, body, 0)


def grad(logits, lse, soft, pb, pe, labels_ext, tl, ul, g, clamp, *, blank, interpret,
         block_u=32, block_v=128, block_t=None):
    """d loss / d logits [B, T, U+1, V] (logits' dtype), times the loss cotangent g [B]; the same
    [32, 128] tiles as `logprobs`, one program per (b, t, u-tile): B * T * nu programs."""
    del block_t
    B, T, U1, V = logits.shape
    bu, bv = _tiles(U1, V, block_u, block_v)
    nu, nk = pl.cdiv(U1, bu), pl.cdiv(V, bv)
    return pl.pallas_call(
        functools.partial(_grad_kernel, bu=bu, bv=bv, U1=U1, V=V, blank=blank, nk=nk, clamp=clamp),
        out_shape=jax.ShapeDtypeStruct(logits.shape, logits.dtype),
        grid=(B, T, nu),
        compiler_params=_params(),
        interpret=interpret,
        name="rnnt_grad_gpu",
    )(tl, ul, g, labels_ext, logits, lse, soft, pb, pe)


# ------------------------------------------------------------------------------------------------
# Fused joint.

def _dot(a, b, contract=((1,), (0,))):
    """fp32-accumulating dot at the default precision: TF32 tensor cores for fp32 operands (unless
    jax_default_matmul_precision asks for more), bf16 tensor cores for bf16 ones. Not HIGHEST:
    that lowers to IEEE fp32 FMAs on CUDA cores, >10x slower on an H100 (module docstring)."""
    return jax.lax.dot_general(a, b, (contract, ((), ())), preferred_element_type=jnp.float32)


def _hidden(enc_ref, pred_ref, b, t, j, bu, U1, activation):
    """act(enc[b, t] + pred[b, u-tile]) as [bu, Jp] fp32 (J was padded with zeros)."""
    u = j * bu + jnp.arange(bu, dtype=jnp.int32)
    e = plgpu.load(enc_ref.at[b, pl.ds(t, 1), :]).astype(jnp.float32)  # [1, Jp]
    p = plgpu.load(pred_ref.at[b, pl.ds(j * bu, bu), :], mask=(u < U1)[:, None], other=0.0)
    return pc.activation(activation, e + p.astype(jnp.float32))


def _weight_tile(w_ref, bias_ref, k, bv, V):
    v = k * bv + jnp.arange(bv, dtype=jnp.int32)
    w = plgpu.load(w_ref.at[:, pl.ds(k * bv, bv)], mask=(v < V)[None, :], other=0.0)
    bias = plgpu.load(bias_ref.at[pl.ds(k * bv, bv)], mask=v < V, other=0.0)
    return w, bias.astype(jnp.float32)


def _joint_logits(h, w, bias):
    return _dot(h.astype(w.dtype), w) + bias[None, :]


def _joint_fwd_kernel(tl_ref, ul_ref, lab_ref, enc_ref, pred_ref, w_ref, bias_ref,
                      lse_ref, blank_ref, emit_ref, *, bu, bv, U1, V, blank, nk, activation):
    b, t, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    u, in_u, _, active = _row_mask(b, t, j, bu, U1, tl_ref, ul_ref)

    @pl.when(active)
    def _compute():
        lab = plgpu.load(lab_ref.at[b, pl.ds(j * bu, bu)], mask=in_u, other=0)
        h = _hidden(enc_ref, pred_ref, b, t, j, bu, U1, activation)
        lse, bl, em = _lse_loop(lambda k: _joint_logits(h, *_weight_tile(w_ref, bias_ref, k, bv, V)),
                                nk, bu, bv, V, blank, lab)
        _store_rows(((lse_ref, lse), (blank_ref, bl - lse), (emit_ref, em - lse)), b, t, j, bu, in_u)

    @pl.when(jnp.logical_not(active))
    def _fill():
        fill = jnp.full((bu,), NEG, jnp.float32)
        _store_rows(((lse_ref, jnp.zeros((bu,), jnp.float32)), (blank_ref, fill), (emit_ref, fill)),
                    b, t, j, bu, in_u)


def _pad_joint(enc, pred, W):
    J = enc.shape[-1]
    Jp = max(16, pc.next_pow2(J))
    padj = lambda x: jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, Jp - J)])  # noqa: E731
    return padj(enc), padj(pred), jnp.pad(W, ((0, Jp - J), (0, 0))), Jp


def _joint_blocks(J: int, W, V: int, block_u, block_v) -> tuple[int, int, int, dict]:
    """(Jp, bu_fwd, bu_bwd, bv, config) with explicit block_u / block_v overriding the config."""
    _check_pow2(block_u=block_u, block_v=block_v)
    Jp = max(16, pc.next_pow2(J))
    cfg = joint_config(Jp, jnp.dtype(W.dtype).itemsize)
    cap_v = max(16, pc.next_pow2(V))
    bv = min(block_v or cfg["bv"], cap_v)
    return Jp, block_u or cfg["bu_fwd"], block_u or cfg["bu_bwd"], bv, cfg


def joint_logprobs(enc, pred, W, bias, labels_ext, tl, ul, *, blank, activation, interpret,
                   block_u=None, block_v=None, block_t=None):
    """(lse, blank_lp, emit_lp) [B, T, U+1] fp32 of the fused joint's logits (B * T * nu programs)."""
    del block_t
    B, T, J = enc.shape
    U1, V = pred.shape[1], W.shape[1]
    _, bu, _, bv, cfg = _joint_blocks(J, W, V, block_u, block_v)
    bu = min(bu, max(16, pc.next_pow2(U1)))
    nu, nk = pl.cdiv(U1, bu), pl.cdiv(V, bv)
    enc_p, pred_p, W_p, _ = _pad_joint(enc, pred, W)
    out = jax.ShapeDtypeStruct((B, T, U1), jnp.float32)
    return pl.pallas_call(
        functools.partial(_joint_fwd_kernel, bu=bu, bv=bv, U1=U1, V=V, blank=blank, nk=nk,
                          activation=activation),
        out_shape=(out, out, out),
        grid=(B, T, nu),
        compiler_params=_params(num_warps=cfg["warps_fwd"]),
        interpret=interpret,
        name="rnnt_joint_logprobs_gpu",
    )(tl, ul, labels_ext, enc_p, pred_p, W_p, bias)


def _joint_dlogits(h, w, bias, k, bv, V, valid, lse, soft, pb, pe, lab, blank, g, clamp):
    x = _joint_logits(h, w, bias)
    v = k * bv + jnp.arange(bv, dtype=jnp.int32)[None, :]
    dl = pc.logits_grad(x, v, valid, lse, soft, pb, pe, lab[:, None], blank, g, clamp)
    return jnp.where(v < V, dl, 0.0)


def _joint_bwd_act_kernel(tl_ref, ul_ref, g_ref, lab_ref, enc_ref, pred_ref, w_ref, bias_ref,
                          lse_ref, soft_ref, pb_ref, pe_ref, denc_ref, dpred_ref, *,
                          bu, bv, bt, T, U1, V, blank, nk, activation, clamp):
    """Program (b, u-tile j, frame chunk i): frames [i*bt, (i+1)*bt); d_pred partial of the chunk in
    registers, d_enc rows per (u-tile, frame)."""
    b, j, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    Jp = enc_ref.shape[-1]
    u = j * bu + jnp.arange(bu, dtype=jnp.int32)
    in_u = u < U1
    tl, ul = tl_ref[b], ul_ref[b]
    t0 = i * bt
    t_end = jnp.where(j * bu <= ul, jnp.minimum(t0 + bt, tl), t0)  # frames this program computes
    t_end = jnp.maximum(t_end, t0)
    lab = plgpu.load(lab_ref.at[b, pl.ds(j * bu, bu)], mask=in_u, other=0)
    g = g_ref[b]

    def frame(t, dpred):
        h = _hidden(enc_ref, pred_ref, b, t, j, bu, U1, activation)
        lse, soft, pb, pe = _node_rows((lse_ref, soft_ref, pb_ref, pe_ref), b, t, j, bu, in_u)
        valid = u <= ul

        def vocab(k, dh):
            w, bias = _weight_tile(w_ref, bias_ref, k, bv, V)
            dl = _joint_dlogits(h, w, bias, k, bv, V, valid, lse, soft, pb, pe, lab, blank, g,
                                clamp)
            return dh + _dot(dl.astype(w.dtype), w, ((1,), (1,)))

        dh = jax.lax.fori_loop(0, nk, vocab, jnp.zeros((bu, Jp), jnp.float32))
        dpre = dh * pc.activation_grad(activation, h)
        plgpu.store(denc_ref.at[b, j, pl.ds(t, 1), :], jnp.sum(dpre, axis=0, keepdims=True))
        return dpred + dpre

    dpred = jax.lax.fori_loop(t0, t_end, frame, jnp.zeros((bu, Jp), jnp.float32))
    plgpu.store(dpred_ref.at[b, i, pl.ds(j * bu, bu), :], dpred, mask=in_u[:, None])

    def zero_frame(t, c):
        plgpu.store(denc_ref.at[b, j, pl.ds(t, 1), :], jnp.zeros((1, Jp), jnp.float32))
        return c

    jax.lax.fori_loop(t_end, jnp.minimum(t0 + bt, T), zero_frame, 0)


def _joint_bwd_weight_kernel(tl_ref, ul_ref, g_ref, lab_ref, enc_ref, pred_ref, w_ref, bias_ref,
                             lse_ref, soft_ref, pb_ref, pe_ref, dw_ref, dbias_ref, *,
                             bu, bv, bt, nt, U1, V, blank, activation, clamp):
    """Program (v-tile k, b, frame chunk i): d_W[:, k] and d_bias[k] over sequence b's active
    tiles in frames [i*bt, (i+1)*bt), written to partial slot b * nt + i."""
    k, b, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    Jp = enc_ref.shape[-1]
    tl, ul = tl_ref[b], ul_ref[b]
    g = g_ref[b]
    w, bias = _weight_tile(w_ref, bias_ref, k, bv, V)
    t0 = i * bt
    t_end = jnp.maximum(jnp.minimum(t0 + bt, tl), t0)

    def frame(t, acc):
        def utile(j, acc):
            dw, db = acc
            u = j * bu + jnp.arange(bu, dtype=jnp.int32)
            in_u = u < U1
            lab = plgpu.load(lab_ref.at[b, pl.ds(j * bu, bu)], mask=in_u, other=0)
            h = _hidden(enc_ref, pred_ref, b, t, j, bu, U1, activation)
            lse, soft, pb, pe = _node_rows((lse_ref, soft_ref, pb_ref, pe_ref), b, t, j, bu, in_u)
            dl = _joint_dlogits(h, w, bias, k, bv, V, u <= ul, lse, soft, pb, pe, lab, blank, g,
                                clamp)
            return dw + _dot(h, dl, ((0,), (0,))), db + jnp.sum(dl, axis=0)

        return jax.lax.fori_loop(0, ul // bu + 1, utile, acc)

    dw, db = jax.lax.fori_loop(t0, t_end, frame, (jnp.zeros((Jp, bv), jnp.float32),
                                                  jnp.zeros((bv,), jnp.float32)))
    slot = b * nt + i
    plgpu.store(dw_ref.at[slot, :, pl.ds(k * bv, bv)], dw)
    plgpu.store(dbias_ref.at[slot, pl.ds(k * bv, bv)], db)


def joint_grad(enc, pred, W, bias, lse, soft, pb, pe, labels_ext, tl, ul, g, clamp=None, *, blank,
               activation, interpret, block_u=None, block_v=None, block_t=None):
    """(d_enc, d_pred, d_W, d_bias) in fp32 for the fused joint, times the loss cotangent g [B]
    (each d loss / d logits entry clipped to [-clamp, clamp] first when clamp is set).

    block_t: frames per backward chunk (None: enough chunks for ~_TARGET_PROGRAMS programs per
    kernel, see `_frame_chunks`).
    """
    B, T, J = enc.shape
    U1, V = pred.shape[1], W.shape[1]
    Jp, _, bu, bv, cfg = _joint_blocks(J, W, V, block_u, block_v)
    bu = min(bu, max(16, pc.next_pow2(U1)))
    nu, nk = pl.cdiv(U1, bu), pl.cdiv(V, bv)
    enc_p, pred_p, W_p, _ = _pad_joint(enc, pred, W)
    args = (tl, ul, g, labels_ext, enc_p, pred_p, W_p, bias, lse, soft, pb, pe)
    common = dict(bu=bu, bv=bv, U1=U1, V=V, blank=blank, activation=activation, clamp=clamp)

    bt, nt = _frame_chunks(T, B * nu, B * U1 * Jp * 4, block_t)
    denc, dpred = pl.pallas_call(
        functools.partial(_joint_bwd_act_kernel, T=T, nk=nk, bt=bt, **common),
        out_shape=(jax.ShapeDtypeStruct((B, nu, T, Jp), jnp.float32),
                   jax.ShapeDtypeStruct((B, nt, U1, Jp), jnp.float32)),
        grid=(B, nu, nt),
        compiler_params=_params(num_warps=cfg["warps_bwd"]),
        interpret=interpret,
        name="rnnt_joint_bwd_act_gpu",
    )(*args)

    btw, ntw = _frame_chunks(T, nk * B, B * Jp * nk * bv * 4, block_t)
    dw, dbias = pl.pallas_call(
        functools.partial(_joint_bwd_weight_kernel, bt=btw, nt=ntw, **common),
        out_shape=(jax.ShapeDtypeStruct((B * ntw, Jp, nk * bv), jnp.float32),
                   jax.ShapeDtypeStruct((B * ntw, nk * bv), jnp.float32)),
        grid=(nk, B, ntw),
        compiler_params=_params(num_warps=cfg["warps_bwd"]),
        interpret=interpret,
        name="rnnt_joint_bwd_weight_gpu",
    )(*args)
    return (denc.sum(1)[..., :J], dpred.sum(1)[..., :J], dw.sum(0)[:J, :V], dbias.sum(0)[:V])


# ------------------------------------------------------------------------------------------------
# Public entry points.

@functools.lru_cache(maxsize=None)
def loss_functions(blank: int, fastemit_lambda: float, clamp: float | None, interpret,
                   activation: str = "tanh", blocks: tuple[tuple[str, int], ...] = ()):
    """This backend's differentiable (loss, fused) pair, cached per configuration (see
    `pallas_common.build_loss_functions`)."""
    return pc.build_loss_functions(sys.modules[__name__], blank, fastemit_lambda, clamp,
                                   interpret, activation, blocks)


def rnnt_loss(logits, labels, logit_lengths, label_lengths, *, blank: int = 0,
              fastemit_lambda: float = 0.0, clamp: float | None = None, interpret=False) -> jax.Array:
    """Per-sequence RNN-T loss [B] fp32 from logits [B, T, U+1, V] (fp32 or bf16; computed in fp32).

    Differentiable w.r.t. logits (custom VJP with the analytic gradient, returned in logits' dtype).
    fastemit_lambda scales the label-emission gradient terms by 1 + lambda (value unchanged);
    clamp > 0 clips each gradient entry to [-clamp, clamp]. interpret=True runs on CPU.
    """
    return pc.checked_rnnt_loss(loss_functions, "pallas_gpu.rnnt_loss", logits, labels, logit_lengths,
                                label_lengths, blank=blank, fastemit_lambda=fastemit_lambda,
                                clamp=clamp, interpret=interpret)


def fused_rnnt_loss(encoder, predictor, weight, bias, labels, logit_lengths, label_lengths, *,
                    blank: int = 0, fastemit_lambda: float = 0.0, clamp: float | None = None,
                    activation: str = "tanh", interpret=False) -> jax.Array:
    """Per-sequence RNN-T loss [B] fp32 with the joint fused in: logits = act(enc + pred) @ W + b.

    encoder [B, T, J], predictor [B, U+1, J], weight [J, V], bias [V]; differentiable w.r.t. all
    four (gradients in their dtypes). The [B, T, U+1, V] logits are never materialized; clamp > 0
    clips each d loss / d logits entry (recomputed in the backward kernels) to [-clamp, clamp].
    J > MAX_JOINT_DIM raises NotImplementedError (see `joint_config`).
    """
    joint_config(max(16, pc.next_pow2(jnp.shape(encoder)[-1])), jnp.dtype(weight.dtype).itemsize)
    return pc.checked_fused_rnnt_loss(loss_functions, "pallas_gpu.fused_rnnt_loss", encoder, predictor,
                                      weight, bias, labels, logit_lengths, label_lengths,
                                      blank=blank, fastemit_lambda=fastemit_lambda, clamp=clamp,
                                      activation=activation, interpret=interpret)
