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
  ([bu, J]) in registers and multiplies it by each [J, bv] weight tile (`dot`, fp32 accumulation,
  full fp32 precision for fp32 inputs). Backward: one program per (b, u-tile) loops over its
  frames and vocabulary tiles accumulating dh = dlogits @ W^T (d_pred in registers, d_enc partial
  sums per u-tile); one program per (v-tile, b) accumulates d_W = h^T dlogits and d_bias over its
  sequence's tiles. Per-sequence partial sums are added in XLA: deterministic, no atomics. J is
  padded to a power of two >= 16 (Triton's dot minimum) in the wrapper; the parameters are small.
* `interpret=True` runs the same kernels with Pallas' generic interpreter (CPU tests).
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


def _params(num_warps: int = 4) -> plgpu.CompilerParams:
    return plgpu.CompilerParams(num_warps=num_warps, num_stages=2)


def _tiles(U1: int, V: int, block_u: int, block_v: int) -> tuple[int, int]:
    for name, x in (("block_u", block_u), ("block_v", block_v)):
        if x < 16 or x & (x - 1):
            raise ValueError(f"{name}={x} must be a power of two >= 16 (Triton block sizes)")
    return min(block_u, max(16, pc.next_pow2(U1))), min(block_v, max(16, pc.next_pow2(V)))


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


def logprobs(logits, labels_ext, tl, ul, *, blank, interpret, block_u=32, block_v=128):
    """(lse, blank_lp, emit_lp), each [B, T, U+1] fp32, from logits [B, T, U+1, V]."""
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
    """(loss [B], soft, pb, pe [B, T, U+1]) from blank/emit log-probs [B, T, U+1]."""
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
        compiler_params=_params(),
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
         block_u=32, block_v=128):
    """d loss / d logits [B, T, U+1, V] (logits' dtype), times the loss cotangent g [B]."""
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
    """fp32-accumulating dot; full fp32 precision for fp32 operands (Triton would pick TF32)."""
    prec = jax.lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return jax.lax.dot_general(a, b, (contract, ((), ())), precision=prec,
                               preferred_element_type=jnp.float32)


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


def joint_logprobs(enc, pred, W, bias, labels_ext, tl, ul, *, blank, activation, interpret,
                   block_u=32, block_v=128):
    """(lse, blank_lp, emit_lp) [B, T, U+1] fp32 of the fused joint's logits."""
    B, T, _ = enc.shape
    U1, V = pred.shape[1], W.shape[1]
    bu, bv = _tiles(U1, V, block_u, block_v)
    nu, nk = pl.cdiv(U1, bu), pl.cdiv(V, bv)
    enc_p, pred_p, W_p, _ = _pad_joint(enc, pred, W)
    out = jax.ShapeDtypeStruct((B, T, U1), jnp.float32)
    return pl.pallas_call(
        functools.partial(_joint_fwd_kernel, bu=bu, bv=bv, U1=U1, V=V, blank=blank, nk=nk,
                          activation=activation),
        out_shape=(out, out, out),
        grid=(B, T, nu),
        compiler_params=_params(),
        interpret=interpret,
        name="rnnt_joint_logprobs_gpu",
    )(tl, ul, labels_ext, enc_p, pred_p, W_p, bias)


def _joint_dlogits(h, w, bias, k, bv, V, valid, lse, soft, pb, pe, lab, blank, g):
    x = _joint_logits(h, w, bias)
    v = k * bv + jnp.arange(bv, dtype=jnp.int32)[None, :]
    dl = pc.logits_grad(x, v, valid, lse, soft, pb, pe, lab[:, None], blank, g, None)
    return jnp.where(v < V, dl, 0.0)


def _joint_bwd_act_kernel(tl_ref, ul_ref, g_ref, lab_ref, enc_ref, pred_ref, w_ref, bias_ref,
                          lse_ref, soft_ref, pb_ref, pe_ref, denc_ref, dpred_ref, *,
                          bu, bv, T, U1, V, blank, nk, activation):
    """Program (b, u-tile): loops over its frames; d_pred in registers, d_enc partial per u-tile."""
    b, j = pl.program_id(0), pl.program_id(1)
    Jp = enc_ref.shape[-1]
    u = j * bu + jnp.arange(bu, dtype=jnp.int32)
    in_u = u < U1
    tl, ul = tl_ref[b], ul_ref[b]
    n_frames = jnp.where(j * bu <= ul, tl, 0)
    lab = plgpu.load(lab_ref.at[b, pl.ds(j * bu, bu)], mask=in_u, other=0)
    g = g_ref[b]

    def frame(t, dpred):
        h = _hidden(enc_ref, pred_ref, b, t, j, bu, U1, activation)
        lse, soft, pb, pe = _node_rows((lse_ref, soft_ref, pb_ref, pe_ref), b, t, j, bu, in_u)
        valid = u <= ul

        def vocab(k, dh):
            w, bias = _weight_tile(w_ref, bias_ref, k, bv, V)
            dl = _joint_dlogits(h, w, bias, k, bv, V, valid, lse, soft, pb, pe, lab, blank, g)
            return dh + _dot(dl.astype(w.dtype), w, ((1,), (1,)))

        dh = jax.lax.fori_loop(0, nk, vocab, jnp.zeros((bu, Jp), jnp.float32))
        dpre = dh * pc.activation_grad(activation, h)
        plgpu.store(denc_ref.at[b, j, pl.ds(t, 1), :], jnp.sum(dpre, axis=0, keepdims=True))
        return dpred + dpre

    dpred = jax.lax.fori_loop(0, n_frames, frame, jnp.zeros((bu, Jp), jnp.float32))
    plgpu.store(dpred_ref.at[b, pl.ds(j * bu, bu), :], dpred, mask=in_u[:, None])

    def zero_frame(t, c):
        plgpu.store(denc_ref.at[b, j, pl.ds(t, 1), :], jnp.zeros((1, Jp), jnp.float32))
        return c

    jax.lax.fori_loop(n_frames, T, zero_frame, 0)


def _joint_bwd_weight_kernel(tl_ref, ul_ref, g_ref, lab_ref, enc_ref, pred_ref, w_ref, bias_ref,
                             lse_ref, soft_ref, pb_ref, pe_ref, dw_ref, dbias_ref, *,
                             bu, bv, U1, V, blank, activation):
    """Program (v-tile k, b): d_W[:, k] and d_bias[k] summed over sequence b's active tiles."""
    k, b = pl.program_id(0), pl.program_id(1)
    Jp = enc_ref.shape[-1]
    tl, ul = tl_ref[b], ul_ref[b]
    g = g_ref[b]
    w, bias = _weight_tile(w_ref, bias_ref, k, bv, V)

    def frame(t, acc):
        def utile(j, acc):
            dw, db = acc
            u = j * bu + jnp.arange(bu, dtype=jnp.int32)
            in_u = u < U1
            lab = plgpu.load(lab_ref.at[b, pl.ds(j * bu, bu)], mask=in_u, other=0)
            h = _hidden(enc_ref, pred_ref, b, t, j, bu, U1, activation)
            lse, soft, pb, pe = _node_rows((lse_ref, soft_ref, pb_ref, pe_ref), b, t, j, bu, in_u)
            dl = _joint_dlogits(h, w, bias, k, bv, V, u <= ul, lse, soft, pb, pe, lab, blank, g)
            return dw + _dot(h, dl, ((0,), (0,))), db + jnp.sum(dl, axis=0)

        return jax.lax.fori_loop(0, ul // bu + 1, utile, acc)

    dw, db = jax.lax.fori_loop(0, tl, frame, (jnp.zeros((Jp, bv), jnp.float32),
                                              jnp.zeros((bv,), jnp.float32)))
    plgpu.store(dw_ref.at[b, :, pl.ds(k * bv, bv)], dw)
    plgpu.store(dbias_ref.at[b, pl.ds(k * bv, bv)], db)


def joint_grad(enc, pred, W, bias, lse, soft, pb, pe, labels_ext, tl, ul, g, *, blank, activation,
               interpret, block_u=32, block_v=128):
    """(d_enc, d_pred, d_W, d_bias) in fp32 for the fused joint, times the loss cotangent g [B]."""
    B, T, J = enc.shape
    U1, V = pred.shape[1], W.shape[1]
    bu, bv = _tiles(U1, V, block_u, block_v)
    nu, nk = pl.cdiv(U1, bu), pl.cdiv(V, bv)
    enc_p, pred_p, W_p, Jp = _pad_joint(enc, pred, W)
    args = (tl, ul, g, labels_ext, enc_p, pred_p, W_p, bias, lse, soft, pb, pe)
    common = dict(bu=bu, bv=bv, U1=U1, V=V, blank=blank, activation=activation)
    denc, dpred = pl.pallas_call(
        functools.partial(_joint_bwd_act_kernel, T=T, nk=nk, **common),
        out_shape=(jax.ShapeDtypeStruct((B, nu, T, Jp), jnp.float32),
                   jax.ShapeDtypeStruct((B, U1, Jp), jnp.float32)),
        grid=(B, nu),
        compiler_params=_params(),
        interpret=interpret,
        name="rnnt_joint_bwd_act_gpu",
    )(*args)
    dw, dbias = pl.pallas_call(
        functools.partial(_joint_bwd_weight_kernel, **common),
        out_shape=(jax.ShapeDtypeStruct((B, Jp, nk * bv), jnp.float32),
                   jax.ShapeDtypeStruct((B, nk * bv), jnp.float32)),
        grid=(nk, B),
        compiler_params=_params(),
        interpret=interpret,
        name="rnnt_joint_bwd_weight_gpu",
    )(*args)
    return denc.sum(1)[..., :J], dpred[..., :J], dw.sum(0)[:J, :V], dbias.sum(0)[:V]


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
                    blank: int = 0, fastemit_lambda: float = 0.0, activation: str = "tanh",
                    interpret=False) -> jax.Array:
    """Per-sequence RNN-T loss [B] fp32 with the joint fused in: logits = act(enc + pred) @ W + b.

    encoder [B, T, J], predictor [B, U+1, J], weight [J, V], bias [V]; differentiable w.r.t. all
    four (gradients in their dtypes). The [B, T, U+1, V] logits are never materialized.
    """
    return pc.checked_fused_rnnt_loss(loss_functions, "pallas_gpu.fused_rnnt_loss", encoder, predictor,
                                      weight, bias, labels, logit_lengths, label_lengths,
                                      blank=blank, fastemit_lambda=fastemit_lambda,
                                      activation=activation, interpret=interpret)
