"""RNN-T loss as Pallas TPU (Mosaic) kernels: fused log-softmax, anti-diagonal alpha/beta, gradient,
and the fused joint (output projection + online log-sum-exp over vocabulary tiles).

Stages and the gradient formula are described in `pallas_common`. TPU-specific choices:

* **Tiling.** Logit tiles are [bt, bu, bv] blocks of [B, T, U+1, V] (u on sublanes, v on lanes;
  bu a multiple of 8 or all of U+1, bv a multiple of 128 or all of V); per-node arrays
  ([B, T, U+1]: lse, log-probs, gradient coefficients) use [bt, bu] blocks, so bu is either all of
  U+1 or a multiple of 128. Grids are (B, T/bt, (U+1)/bu, V/bv); the V axis is innermost and
  "arbitrary" (running max/sum live in VMEM scratch across it), the others "parallel".
* **Ragged lengths** go in as scalar prefetch (`PrefetchScalarGridSpec`, SMEM). A tile whose first
  frame is >= T_b or first label position is > U_b does no work (`pl.when`), and its input
  index_map points at the block the previous grid step already fetched, so it costs no DMA either.
* **Recursion.** One grid step per 8 sequences (batch on sublanes, u on 128-padded lanes). Skewed
  blank/emit rows [D, 8, U1p] sit in VMEM, alpha rows are written to a VMEM scratch of the same
  shape, and `lax.fori_loop` walks the diagonals up to the largest T_b + U_b of the 8 rows (read
  from SMEM); the u-shifts are lane rotations (`pltpu.roll`) plus a lane mask. VMEM use is
  11 * D * 8 * U1p * 4 bytes (double-buffered in/out blocks plus the alpha scratch; 27 MiB for
  T=500, U=100), requested through `vmem_limit_bytes`; past 56 MiB (T + U ~ 1300 at U1p = 128)
  the call raises instead of failing to compile (a one-sequence-per-step variant would cut it 8x).
* **Fused joint.** Per (b, t-tile, u-tile) the hidden tile h = act(enc + pred) ([bt*bu, J]) is
  built once in VMEM at the first vocabulary tile and multiplied by each [J, bv] weight tile on the
  MXU (fp32 accumulation); the [B, T, U+1, V] logits are never written to HBM. The backward pass
  recomputes logits tile by tile in two kernels, like flash attention's dq / dkv split: one with
  V innermost accumulating dh = dlogits @ W^T (giving d_enc and d_pred partial sums per tile),
  one with V outermost accumulating d_W = h^T dlogits and d_bias over all (b, t, u) tiles.
* **VMEM.** The tiled kernels (log-softmax, gradient, fused joint) ask for a 48 MiB scoped-VMEM
  limit (`_TILE_VMEM`): a default [8, 128, 512] fp32 tile is 2 MiB, its double-buffered input and
  output blocks 8 MiB, and the fp32 temporaries of the tile come on top, close to v5e's default
  16 MiB scoped limit; 48 MiB fits every generation (64 MiB per core on v7x). Under
  implementation=None the API compiles these kernels ahead of time for the call's shapes and
  falls back to XLA when Mosaic rejects them (api.py), so a limit that is still too small costs
  speed, not a crash. Not compiled on a TPU from this repository yet (no TPU was available).
* `clamp` also applies to the fused joint: the backward kernels clip each recomputed
  d loss / d logits entry before the cotangent and the joint's chain rule.
* `interpret=True` runs the kernels with Pallas' generic interpreter (CPU tests); the kernels use
  no TPU-only primitive that it cannot run (`pltpu.roll` has a generic lowering). An
  `pltpu.InterpretParams` instance may be passed instead to use the TPU-simulating interpreter.
"""
from __future__ import annotations

import functools
import sys

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from jaxslu.kernels.rnnt import pallas_common as pc

NEG = pc.NEG
# Largest VMEM request of the recursion kernel: below the 64 MiB per TensorCore of v7x (v5e/v6e
# have 128 MiB), leaving room for Mosaic's own buffers.
_VMEM_CAP = 56 << 20
# Scoped-VMEM limit of the tiled (log-softmax, gradient, fused joint) kernels. At the default
# [8, 128, 512] tile one fp32 logit block is 2 MiB: double-buffered input and output blocks are
# 8 MiB, and Mosaic keeps a few fp32 temporaries of the tile's size (the exp, the masks, the
# gradient) next to them, close to v5e's default scoped limit of 16 MiB. 48 MiB is within every
# generation's VMEM (64 MiB per core on v7x) and leaves the compiler room instead of failing.
_TILE_VMEM = 48 << 20


def _tiles(T: int, U1: int, V: int, block_t: int, block_u: int, block_v: int) -> tuple[int, int, int]:
    """(bt, bu, bv): a block is the whole axis when it fits, else the (8, 128)-aligned block size."""
    for name, x, m in (("block_t", block_t, 8), ("block_u", block_u, 128), ("block_v", block_v, 128)):
        if x <= 0 or x % m:
            raise ValueError(f"{name}={x} must be a positive multiple of {m} (TPU block tiling)")
    bt = T if T <= block_t else block_t
    bu = U1 if U1 <= block_u else block_u
    bv = V if V <= block_v else block_v
    return bt, bu, bv


def _skip_index(i, j, k, tl, ul, bt: int, bu: int, nk: int):
    """Block indices for (t-tile i, u-tile j, v-tile k): skipped tiles repeat the last fetched one."""
    i_last = (tl - 1) // bt
    j_last = ul // bu
    skip_t = i > i_last
    skip = skip_t | (j > j_last)
    ii = jnp.where(skip_t, i_last, i)
    jj = jnp.where(skip, j_last, j)
    kk = jnp.where(skip, nk - 1, k)
    return ii, jj, kk


def _node_valid(i, j, bt, bu, tl, ul):
    t = i * bt + jax.lax.broadcasted_iota(jnp.int32, (bt, bu), 0)
    u = j * bu + jax.lax.broadcasted_iota(jnp.int32, (bt, bu), 1)
    return (t < tl) & (u <= ul)


# ------------------------------------------------------------------------------------------------
# Stage 1: log-softmax (materialized logits).

def _lse_tile_kernel(x_of, lse_ref, blank_ref, emit_ref, m_scr, s_scr, bl_scr, em_scr, lab, *,
                     bt, bu, bv, V, blank, nk, active):
    """Shared body of the log-softmax kernels: `x_of()` yields the [bt, bu, bv] fp32 logit tile."""
    k = pl.program_id(3)

    @pl.when(k == 0)
    def _init():
        m_scr[...] = jnp.full((bt, bu), NEG, jnp.float32)
        s_scr[...] = jnp.zeros((bt, bu), jnp.float32)
        bl_scr[...] = jnp.zeros((bt, bu), jnp.float32)
        em_scr[...] = jnp.zeros((bt, bu), jnp.float32)

    @pl.when(active)
    def _accumulate():
        x = x_of()
        v = k * bv + jax.lax.broadcasted_iota(jnp.int32, (bt, bu, bv), 2)
        m, s, bl, em = pc.online_lse_update(x, v, V, blank, lab()[None], m_scr[...], s_scr[...],
                                            bl_scr[...], em_scr[...])
        m_scr[...], s_scr[...], bl_scr[...], em_scr[...] = m, s, bl, em

    @pl.when(k == nk - 1)
    def _finish():
        lse = m_scr[...] + jnp.log(s_scr[...])
        lse_ref[...] = jnp.where(active, lse, 0.0)
        blank_ref[...] = jnp.where(active, bl_scr[...] - lse, NEG)
        emit_ref[...] = jnp.where(active, em_scr[...] - lse, NEG)


def _logprobs_kernel(tl_ref, ul_ref, lab_ref, x_ref, lse_ref, blank_ref, emit_ref, *scratch,
                     bt, bu, bv, V, blank, nk):
    b, i, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    active = (i * bt < tl_ref[b]) & (j * bu <= ul_ref[b])
    _lse_tile_kernel(lambda: x_ref[...].astype(jnp.float32), lse_ref, blank_ref, emit_ref, *scratch,
                     lambda: lab_ref[...], bt=bt, bu=bu, bv=bv, V=V, blank=blank, nk=nk, active=active)


def logprobs(logits, labels_ext, tl, ul, *, blank, interpret, block_t=8, block_u=128, block_v=512):
    """(lse, blank_lp, emit_lp), each [B, T, U+1] fp32, from logits [B, T, U+1, V]."""
    B, T, U1, V = logits.shape
    bt, bu, bv = _tiles(T, U1, V, block_t, block_u, block_v)
    nt, nu, nk = pl.cdiv(T, bt), pl.cdiv(U1, bu), pl.cdiv(V, bv)

    def x_map(b, i, j, k, tl_ref, ul_ref):
        ii, jj, kk = _skip_index(i, j, k, tl_ref[b], ul_ref[b], bt, bu, nk)
        return b, ii, jj, kk

    node = pl.BlockSpec((None, bt, bu), lambda b, i, j, k, *_: (b, i, j))
    kernel = functools.partial(_logprobs_kernel, bt=bt, bu=bu, bv=bv, V=V, blank=blank, nk=nk)
    out = jax.ShapeDtypeStruct((B, T, U1), jnp.float32)
    return pl.pallas_call(
        kernel,
        out_shape=(out, out, out),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(B, nt, nu, nk),
            in_specs=[pl.BlockSpec((None, bu, 1), lambda b, i, j, k, *_: (b, j, 0)),
                      pl.BlockSpec((None, bt, bu, bv), x_map)],
            out_specs=(node, node, node),
            scratch_shapes=[pltpu.VMEM((bt, bu), jnp.float32)] * 4),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"),
            vmem_limit_bytes=_TILE_VMEM),
        interpret=interpret,
        name="rnnt_logprobs",
    )(tl, ul, labels_ext[:, :, None], logits)


# ------------------------------------------------------------------------------------------------
# Stage 2: alpha/beta recursion over anti-diagonals, emitting the gradient coefficients.

def _recursion_kernel(tl_ref, ul_ref, tlv_ref, ulv_ref, blank_ref, emit_ref,
                      ll_ref, soft_ref, pb_ref, pe_ref, alpha_scr, *, R, U1p, D, lam):
    base = pl.program_id(0) * R
    dmax = tl_ref[base] + ul_ref[base]
    for r in range(1, R):
        dmax = jnp.maximum(dmax, tl_ref[base + r] + ul_ref[base + r])
    lane = jax.lax.broadcasted_iota(jnp.int32, (R, U1p), 1)
    first, last = lane == 0, lane == U1p - 1

    def store_out(d, soft, pb, pe):
        soft_ref[d] = soft
        pb_ref[d] = pb
        pe_ref[d] = pe

    def store_alpha(d, x):
        alpha_scr[d] = x

    ll = pc.recursion_body(
        load_blank=lambda d: blank_ref[d], load_emit=lambda d: emit_ref[d],
        load_alpha=lambda d: alpha_scr[d], store_alpha=store_alpha, store_out=store_out,
        shift_right=lambda x: jnp.where(first, NEG, pltpu.roll(x, 1, 1)),
        shift_left=lambda x: jnp.where(last, NEG, pltpu.roll(x, U1p - 1, 1)),
        lane=lane, tl=tlv_ref[...], ul=ulv_ref[...], dmax=dmax, D=D, lam=lam)
    ll_ref[...] = ll


def recursion(blank_lp, emit_lp, tl, ul, lam, *, interpret):
    """(loss [B], soft, pb, pe [B, T, U+1]) from blank/emit log-probs [B, T, U+1]."""
    B, T, U1 = blank_lp.shape
    R = 8 if B >= 8 else B
    Bp = pc.round_up(B, R)
    U1p = pc.round_up(U1, 128)
    D = T + U1 - 1
    pad = Bp - B
    # padding rows: one frame, no labels (a valid, trivial sequence)
    tl_p = jnp.pad(tl, (0, pad), constant_values=1)
    ul_p = jnp.pad(ul, (0, pad))
    bs = jnp.pad(pc.skew(blank_lp, U1p), ((0, 0), (0, pad), (0, 0)), constant_values=NEG)
    es = jnp.pad(pc.skew(emit_lp, U1p), ((0, 0), (0, pad), (0, 0)), constant_values=NEG)
    # 2 inputs + 3 outputs double-buffered, plus the alpha scratch, all [D, R, U1p] fp32
    vmem = 11 * D * R * U1p * 4
    if vmem > _VMEM_CAP:
        raise ValueError(
            f"pallas_tpu recursion: T + U = {D + 1} (T={T}, U={U1 - 1}) needs {vmem >> 20} MiB of VMEM "
            f"(cap {_VMEM_CAP >> 20} MiB); use the XLA implementation or shorter sequences")
    rows = pl.BlockSpec((D, R, U1p), lambda i, *_: (0, i, 0))
    col = pl.BlockSpec((R, 1), lambda i, *_: (i, 0))
    skewed = jax.ShapeDtypeStruct((D, Bp, U1p), jnp.float32)
    ll, soft, pb, pe = pl.pallas_call(
        functools.partial(_recursion_kernel, R=R, U1p=U1p, D=D, lam=float(lam)),
        out_shape=(jax.ShapeDtypeStruct((Bp, 1), jnp.float32), skewed, skewed, skewed),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2, grid=(Bp // R,),
            in_specs=[col, col, rows, rows],
            out_specs=(col, rows, rows, rows),
            scratch_shapes=[pltpu.VMEM((D, R, U1p), jnp.float32)]),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",),
                                             vmem_limit_bytes=max(vmem + (4 << 20), 32 << 20)),
        interpret=interpret,
        name="rnnt_recursion",
    )(tl_p, ul_p, tl_p[:, None], ul_p[:, None], bs, es)
    un = lambda x: pc.unskew(x[:, :B], T, U1)  # noqa: E731
    return -ll[:B, 0], un(soft), un(pb), un(pe)


# ------------------------------------------------------------------------------------------------
# Stage 3: gradient w.r.t. materialized logits.

def _grad_kernel(tl_ref, ul_ref, g_ref, lab_ref, x_ref, lse_ref, soft_ref, pb_ref, pe_ref, out_ref, *,
                 bt, bu, bv, blank, clamp):
    b, i, j, k = (pl.program_id(n) for n in range(4))
    tl, ul = tl_ref[b], ul_ref[b]
    active = (i * bt < tl) & (j * bu <= ul)

    @pl.when(active)
    def _compute():
        x = x_ref[...].astype(jnp.float32)
        v = k * bv + jax.lax.broadcasted_iota(jnp.int32, (bt, bu, bv), 2)
        valid = _node_valid(i, j, bt, bu, tl, ul)
        grad = pc.logits_grad(x, v, valid, lse_ref[...], soft_ref[...], pb_ref[...], pe_ref[...],
                              lab_ref[...][None], blank, g_ref[b], clamp)
        out_ref[...] = grad.astype(out_ref.dtype)

    @pl.when(jnp.logical_not(active))
    def _zero():
        out_ref[...] = jnp.zeros(out_ref.shape, out_ref.dtype)


def grad(logits, lse, soft, pb, pe, labels_ext, tl, ul, g, clamp, *, blank, interpret,
         block_t=8, block_u=128, block_v=512):
    """d loss / d logits [B, T, U+1, V] (logits' dtype), times the loss cotangent g [B]."""
    B, T, U1, V = logits.shape
    bt, bu, bv = _tiles(T, U1, V, block_t, block_u, block_v)
    nt, nu, nk = pl.cdiv(T, bt), pl.cdiv(U1, bu), pl.cdiv(V, bv)

    def x_map(b, i, j, k, tl_ref, ul_ref, g_ref):
        ii, jj, kk = _skip_index(i, j, k, tl_ref[b], ul_ref[b], bt, bu, nk)
        return b, ii, jj, kk

    def node_map(b, i, j, k, tl_ref, ul_ref, g_ref):
        ii, jj, _ = _skip_index(i, j, k, tl_ref[b], ul_ref[b], bt, bu, nk)
        return b, ii, jj

    node = pl.BlockSpec((None, bt, bu), node_map)
    kernel = functools.partial(_grad_kernel, bt=bt, bu=bu, bv=bv, blank=blank, clamp=clamp)
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct(logits.shape, logits.dtype),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=3,
            grid=(B, nt, nu, nk),
            in_specs=[pl.BlockSpec((None, bu, 1), lambda b, i, j, k, *_: (b, j, 0)),
                      pl.BlockSpec((None, bt, bu, bv), x_map), node, node, node, node],
            out_specs=pl.BlockSpec((None, bt, bu, bv), lambda b, i, j, k, *_: (b, i, j, k))),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "parallel"),
            vmem_limit_bytes=_TILE_VMEM),
        interpret=interpret,
        name="rnnt_grad",
    )(tl, ul, g, labels_ext[:, :, None], logits, lse, soft, pb, pe)



# ------------------------------------------------------------------------------------------------
# Fused joint: logits = act(enc + pred) @ W + bias, tile by tile.

def _hidden(enc_ref, pred_ref, activation, bt, bu):
    """act(enc[t] + pred[u]) for the tile, as [bt*bu, J] fp32 rows (row = t_local * bu + u_local)."""
    pre = enc_ref[...].astype(jnp.float32)[:, None, :] + pred_ref[...].astype(jnp.float32)[None, :, :]
    h = pc.activation(activation, pre)
    return h.reshape(bt * bu, h.shape[-1])


def _joint_logits(h, w_ref, bias_ref, bt, bu):
    """[bt, bu, bv] fp32 logits from hidden rows [bt*bu, J] (MXU in the weight's dtype)."""
    x = jnp.dot(h.astype(w_ref.dtype), w_ref[...], preferred_element_type=jnp.float32)
    x = x + bias_ref[...].astype(jnp.float32)
    return x.reshape(bt, bu, x.shape[-1])


def _joint_fwd_kernel(tl_ref, ul_ref, lab_ref, enc_ref, pred_ref, w_ref, bias_ref,
                      lse_ref, blank_ref, emit_ref, h_scr, *scratch, bt, bu, bv, V, blank, nk, activation):
    b, i, j, k = (pl.program_id(n) for n in range(4))
    active = (i * bt < tl_ref[b]) & (j * bu <= ul_ref[b])

    @pl.when(active & (k == 0))
    def _build_hidden():
        h_scr[...] = _hidden(enc_ref, pred_ref, activation, bt, bu)

    _lse_tile_kernel(lambda: _joint_logits(h_scr[...], w_ref, bias_ref, bt, bu), lse_ref, blank_ref,
                     emit_ref, *scratch, lambda: lab_ref[...], bt=bt, bu=bu, bv=bv, V=V, blank=blank,
                     nk=nk, active=active)


def _joint_tiles(T, U1, J, V, block_t, block_u, block_v):
    """Tile sizes for the fused joint; T and U+1 are padded to them (enc/pred are small).

    bu is all of U+1 (rounded up to 8, so the [bt, bu, J] -> [bt*bu, J] collapse is layout-free)
    when that fits in block_u, else block_u (a multiple of 128: per-node blocks have u on lanes).
    """
    for name, x, m in (("block_t", block_t, 8), ("block_u", block_u, 128), ("block_v", block_v, 128)):
        if x <= 0 or x % m:
            raise ValueError(f"{name}={x} must be a positive multiple of {m} (TPU block tiling)")
    bt = min(block_t, pc.round_up(T, 8))
    bu = pc.round_up(U1, 8) if pc.round_up(U1, 8) <= block_u else block_u
    bv = V if V <= block_v else block_v
    return bt, bu, bv, pc.round_up(T, bt), pc.round_up(U1, bu)


def _joint_specs(bt, bu, bv, J, nk, *, v_outer: bool):
    """BlockSpecs for (labels, enc, pred, W, bias, per-node arrays) over the (b, i, j, k) grid; with
    v_outer the grid is (k, b, i, j). Skipped tiles re-point at the previously fetched blocks."""
    def order(f):
        if v_outer:
            return lambda k, b, i, j, *refs: f(b, i, j, k, *refs)
        return f

    def skip(b, i, j, k, tl_ref, ul_ref, *_):
        return _skip_index(i, j, k, tl_ref[b], ul_ref[b], bt, bu, nk)

    def enc_map(b, i, j, k, *refs):
        ii, _, _ = skip(b, i, j, k, *refs)
        return b, ii, 0

    def pred_map(b, i, j, k, *refs):
        _, jj, _ = skip(b, i, j, k, *refs)
        return b, jj, 0

    def w_map(b, i, j, k, *refs):
        if v_outer:
            return 0, k
        _, _, kk = skip(b, i, j, k, *refs)
        return 0, kk

    def node_map(b, i, j, k, *refs):
        ii, jj, _ = skip(b, i, j, k, *refs)
        return b, ii, jj

    return dict(
        lab=pl.BlockSpec((None, bu, 1), order(pred_map)),
        enc=pl.BlockSpec((None, bt, J), order(enc_map)),
        pred=pl.BlockSpec((None, bu, J), order(pred_map)),
        w=pl.BlockSpec((J, bv), order(w_map)),
        bias=pl.BlockSpec((1, bv), order(w_map)),
        node=pl.BlockSpec((None, bt, bu), order(node_map)),
    )


def joint_logprobs(enc, pred, W, bias, labels_ext, tl, ul, *, blank, activation, interpret,
                   block_t=8, block_u=128, block_v=512):
    """(lse, blank_lp, emit_lp) [B, T, U+1] fp32 of the fused joint's logits."""
    B, T, J = enc.shape
    U1, V = pred.shape[1], W.shape[1]
    bt, bu, bv, Tp, U1p = _joint_tiles(T, U1, J, V, block_t, block_u, block_v)
    nt, nu, nk = Tp // bt, U1p // bu, pl.cdiv(V, bv)
    enc_p = jnp.pad(enc, ((0, 0), (0, Tp - T), (0, 0)))
    pred_p = jnp.pad(pred, ((0, 0), (0, U1p - U1), (0, 0)))
    lab_p = jnp.pad(labels_ext, ((0, 0), (0, U1p - U1)))[:, :, None]
    sp = _joint_specs(bt, bu, bv, J, nk, v_outer=False)
    out = jax.ShapeDtypeStruct((B, Tp, U1p), jnp.float32)
    kernel = functools.partial(_joint_fwd_kernel, bt=bt, bu=bu, bv=bv, V=V, blank=blank, nk=nk,
                               activation=activation)
    lse, bl, em = pl.pallas_call(
        kernel,
        out_shape=(out, out, out),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(B, nt, nu, nk),
            in_specs=[sp["lab"], sp["enc"], sp["pred"], sp["w"], sp["bias"]],
            out_specs=(pl.BlockSpec((None, bt, bu), lambda b, i, j, k, *_: (b, i, j)),) * 3,
            scratch_shapes=[pltpu.VMEM((bt * bu, J), jnp.float32)]
            + [pltpu.VMEM((bt, bu), jnp.float32)] * 4),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"),
            vmem_limit_bytes=_TILE_VMEM),
        interpret=interpret,
        name="rnnt_joint_logprobs",
    )(tl, ul, lab_p, enc_p, pred_p, W, bias[None, :])
    return lse[:, :T, :U1], bl[:, :T, :U1], em[:, :T, :U1]


def _joint_dlogits(h, w_ref, bias_ref, lab_ref, lse_ref, soft_ref, pb_ref, pe_ref, valid, g, *,
                   bt, bu, bv, V, blank, k, clamp):
    """[bt*bu, bv] fp32 d loss / d logits of one fused tile (recomputing the logits), clipped to
    [-clamp, clamp] before the cotangent g when clamp is set."""
    x = _joint_logits(h, w_ref, bias_ref, bt, bu)
    v = k * bv + jax.lax.broadcasted_iota(jnp.int32, (bt, bu, bv), 2)
    dl = pc.logits_grad(x, v, valid, lse_ref[...], soft_ref[...], pb_ref[...], pe_ref[...],
                        lab_ref[...][None], blank, g, clamp)
    dl = jnp.where(v < V, dl, 0.0)
    return dl.reshape(bt * bu, bv)


def _joint_bwd_act_kernel(tl_ref, ul_ref, g_ref, lab_ref, enc_ref, pred_ref, w_ref, bias_ref,
                          lse_ref, soft_ref, pb_ref, pe_ref, denc_ref, dpred_ref, h_scr, dh_scr, *,
                          bt, bu, bv, V, blank, nk, activation, clamp):
    """V innermost: dh = sum_k dlogits_k @ W_k^T, then d_enc / d_pred partial sums of the tile."""
    b, i, j, k = (pl.program_id(n) for n in range(4))
    tl, ul = tl_ref[b], ul_ref[b]
    active = (i * bt < tl) & (j * bu <= ul)

    @pl.when(active & (k == 0))
    def _init():
        h_scr[...] = _hidden(enc_ref, pred_ref, activation, bt, bu)
        dh_scr[...] = jnp.zeros(dh_scr.shape, jnp.float32)

    @pl.when(active)
    def _accumulate():
        dl = _joint_dlogits(h_scr[...], w_ref, bias_ref, lab_ref, lse_ref, soft_ref, pb_ref, pe_ref,
                            _node_valid(i, j, bt, bu, tl, ul), g_ref[b], bt=bt, bu=bu, bv=bv, V=V,
                            blank=blank, k=k, clamp=clamp)
        # the last vocabulary tile may overhang V: its padded weight columns hold garbage
        v = k * bv + jax.lax.broadcasted_iota(jnp.int32, (1, bv), 1)
        w = jnp.where(v < V, w_ref[...], jnp.zeros((), w_ref.dtype))
        dh_scr[...] += jax.lax.dot_general(dl.astype(w.dtype), w, (((1,), (1,)), ((), ())),
                                           preferred_element_type=jnp.float32)

    @pl.when(k == nk - 1)
    def _finish():
        h = h_scr[...]
        dpre = (dh_scr[...] * pc.activation_grad(activation, h)).reshape(bt, bu, h.shape[-1])
        denc_ref[...] = jnp.where(active, jnp.sum(dpre, axis=1), 0.0)
        dpred_ref[...] = jnp.where(active, jnp.sum(dpre, axis=0), 0.0)


def _joint_bwd_weight_kernel(tl_ref, ul_ref, g_ref, lab_ref, enc_ref, pred_ref, w_ref, bias_ref,
                             lse_ref, soft_ref, pb_ref, pe_ref, dw_ref, dbias_ref, *,
                             bt, bu, bv, V, blank, activation, clamp):
    """V outermost: d_W[:, k] += h^T dlogits_k and d_bias[k] += sum dlogits_k over all tiles."""
    k, b, i, j = (pl.program_id(n) for n in range(4))
    tl, ul = tl_ref[b], ul_ref[b]
    active = (i * bt < tl) & (j * bu <= ul)

    @pl.when((b == 0) & (i == 0) & (j == 0))
    def _init():
        dw_ref[...] = jnp.zeros(dw_ref.shape, jnp.float32)
        dbias_ref[...] = jnp.zeros(dbias_ref.shape, jnp.float32)

    @pl.when(active)
    def _accumulate():
        h = _hidden(enc_ref, pred_ref, activation, bt, bu)
        dl = _joint_dlogits(h, w_ref, bias_ref, lab_ref, lse_ref, soft_ref, pb_ref, pe_ref,
                            _node_valid(i, j, bt, bu, tl, ul), g_ref[b], bt=bt, bu=bu, bv=bv, V=V,
                            blank=blank, k=k, clamp=clamp)
        dw_ref[...] += jax.lax.dot_general(h, dl, (((0,), (0,)), ((), ())),
                                           preferred_element_type=jnp.float32)
        dbias_ref[...] += jnp.sum(dl, axis=0, keepdims=True)


def joint_grad(enc, pred, W, bias, lse, soft, pb, pe, labels_ext, tl, ul, g, clamp=None, *, blank,
               activation, interpret, block_t=8, block_u=128, block_v=512):
    """(d_enc, d_pred, d_W, d_bias) in fp32 for the fused joint, times the loss cotangent g [B]
    (each d loss / d logits entry clipped to [-clamp, clamp] first when clamp is set)."""
    B, T, J = enc.shape
    U1, V = pred.shape[1], W.shape[1]
    bt, bu, bv, Tp, U1p = _joint_tiles(T, U1, J, V, block_t, block_u, block_v)
    nt, nu, nk = Tp // bt, U1p // bu, pl.cdiv(V, bv)
    pad_node = lambda x: jnp.pad(x, ((0, 0), (0, Tp - T), (0, U1p - U1)))  # noqa: E731
    args = (tl, ul, g, jnp.pad(labels_ext, ((0, 0), (0, U1p - U1)))[:, :, None],
            jnp.pad(enc, ((0, 0), (0, Tp - T), (0, 0))), jnp.pad(pred, ((0, 0), (0, U1p - U1), (0, 0))),
            W, bias[None, :], pad_node(lse), pad_node(soft), pad_node(pb), pad_node(pe))
    common = dict(bt=bt, bu=bu, bv=bv, V=V, blank=blank, activation=activation, clamp=clamp)

    sp = _joint_specs(bt, bu, bv, J, nk, v_outer=False)
    in_specs = [sp["lab"], sp["enc"], sp["pred"], sp["w"], sp["bias"]] + [sp["node"]] * 4
    denc, dpred = pl.pallas_call(
        functools.partial(_joint_bwd_act_kernel, nk=nk, **common),
        out_shape=(jax.ShapeDtypeStruct((B, nu, Tp, J), jnp.float32),
                   jax.ShapeDtypeStruct((B, nt, U1p, J), jnp.float32)),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=3, grid=(B, nt, nu, nk), in_specs=in_specs,
            out_specs=(pl.BlockSpec((None, None, bt, J), lambda b, i, j, k, *_: (b, j, i, 0)),
                       pl.BlockSpec((None, None, bu, J), lambda b, i, j, k, *_: (b, i, j, 0))),
            scratch_shapes=[pltpu.VMEM((bt * bu, J), jnp.float32)] * 2),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"),
            vmem_limit_bytes=_TILE_VMEM),
        interpret=interpret,
        name="rnnt_joint_bwd_act",
    )(*args)

    sp = _joint_specs(bt, bu, bv, J, nk, v_outer=True)
    in_specs = [sp["lab"], sp["enc"], sp["pred"], sp["w"], sp["bias"]] + [sp["node"]] * 4
    dw, dbias = pl.pallas_call(
        functools.partial(_joint_bwd_weight_kernel, **common),
        out_shape=(jax.ShapeDtypeStruct((J, V), jnp.float32), jax.ShapeDtypeStruct((1, V), jnp.float32)),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=3, grid=(nk, B, nt, nu), in_specs=in_specs,
            out_specs=(pl.BlockSpec((J, bv), lambda k, *_: (0, k)),
                       pl.BlockSpec((1, bv), lambda k, *_: (0, k)))),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "arbitrary", "arbitrary", "arbitrary"),
            vmem_limit_bytes=_TILE_VMEM),
        interpret=interpret,
        name="rnnt_joint_bwd_weight",
    )(*args)
    return denc.sum(1)[:, :T], dpred.sum(1)[:, :U1], dw, dbias[0]

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
    clamp > 0 clips each gradient entry to [-clamp, clamp]. interpret: True (generic Pallas
    interpreter, runs on CPU) or a `pltpu.InterpretParams`.
    """
    return pc.checked_rnnt_loss(loss_functions, "pallas_tpu.rnnt_loss", logits, labels, logit_lengths,
                                label_lengths, blank=blank, fastemit_lambda=fastemit_lambda,
                                clamp=clamp, interpret=interpret)


def fused_rnnt_loss(encoder, predictor, weight, bias, labels, logit_lengths, label_lengths, *,
                    blank: int = 0, fastemit_lambda: float = 0.0, clamp: float | None = None,
                    activation: str = "tanh", interpret=False) -> jax.Array:
    """Per-sequence RNN-T loss [B] fp32 with the joint fused in: logits = act(enc + pred) @ W + b.

    encoder [B, T, J], predictor [B, U+1, J], weight [J, V], bias [V]; differentiable w.r.t. all
    four (gradients in their dtypes). The [B, T, U+1, V] logits are never materialized; clamp > 0
    clips each d loss / d logits entry (recomputed in the backward kernels) to [-clamp, clamp].
    """
    return pc.checked_fused_rnnt_loss(loss_functions, "pallas_tpu.fused_rnnt_loss", encoder, predictor,
                                      weight, bias, labels, logit_lengths, label_lengths,
                                      blank=blank, fastemit_lambda=fastemit_lambda, clamp=clamp,
                                      activation=activation, interpret=interpret)
