"""Fused joint + RNN-T loss in plain XLA: never materializes the [B, T, U+1, V] logits.

    logits[b, t, u] = act(encoder[b, t] + predictor[b, u]) @ weight + bias

Forward: for each chunk of frames (`lax.scan` over T chunks), the hidden activations
h = act(enc + pred) [B, Tc, U+1, J] are built once and a `lax.scan` over vocabulary tiles of
`tile_v` columns keeps an online log-sum-exp (running max and rescaled sum) of the logits; the
blank and next-label logits come from two J-sized dot products (the label columns of `weight` are
gathered per (b, u)). The lattice (alpha, beta, posteriors) is the one in xla.py.

Backward: the gradient w.r.t. the logits splits into a dense softmax part and two one-hot parts,
        dlogits = softmax * k_soft - blank_post [v == blank] - (1+lam) emit_post [v == label]
with k_soft = blank_post + (1+lam) emit_post (times the cotangent). The one-hot parts go straight
to h, weight and bias through the blank column and the gathered label columns (a scatter-add into
the label columns of d_weight). The dense part is recomputed tile by tile:
softmax_tile = exp(h @ W_tile + b_tile - lse), accumulating dh += P_tile @ W_tile^T, and each
tile's d_weight / d_bias columns. dh then goes through the activation's VJP and is summed over u
(d_encoder) and over t (d_predictor).

Peak memory: a few [B, Tc, U+1, J] slabs plus one [B, Tc, U+1, tile_v] tile, plus O(B*T*U) for the
lattice. `t_chunk=None` picks Tc so that one slab holds about `_AUTO_CHUNK_ELEMENTS` elements
(chunking over T costs little: each chunk still runs full-size matmuls). The joint runs in fp32
(inputs cast up), gradients are returned in each input's dtype; matmuls use the backend's default
precision (TF32 tensor cores for fp32 on Ampere+ GPUs unless jax_default_matmul_precision says
otherwise, the same choice as the Pallas GPU kernel). `clamp` (torchaudio's gradient clip of
d loss / d logits, applied inside the fused computation) switches the backward to
`_backward_clamped`, which forms each logit-gradient tile in full because the clip does not
distribute over the dense and one-hot parts.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from jaxslu.kernels.rnnt import xla as _xla

_F32 = jnp.float32
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh, "relu": jax.nn.relu, "gelu": jax.nn.gelu, "swish": jax.nn.swish}
# Target size (elements) of one [B, Tc, U+1, max(J, tile_v)] slab when t_chunk is None.
_AUTO_CHUNK_ELEMENTS = 1 << 22
DEFAULT_TILE_V = 512


def _plan(B: int, T: int, U1: int, J: int, V: int, tile_v: int, t_chunk: int | None):
    tv = max(1, min(tile_v, V))
    n_tiles = -(-V // tv)
    if t_chunk is None:
        t_chunk = max(1, _AUTO_CHUNK_ELEMENTS // max(1, B * U1 * max(J, tv)))
    tc = max(1, min(t_chunk, T))
    n_chunks = -(-T // tc)
    return tv, n_tiles, tc, n_chunks


def _tiles(weight, bias, tv, n_tiles):
    """weight [J, V] -> [n_tiles, J, tv] (zero pad), bias [V] -> [n_tiles, tv] (-inf pad)."""
    J, V = weight.shape
    pad = n_tiles * tv - V
    w = jnp.pad(weight, ((0, 0), (0, pad))).reshape(J, n_tiles, tv).transpose(1, 0, 2)
    b = jnp.pad(bias, (0, pad), constant_values=float("-inf")).reshape(n_tiles, tv)
    return w, b


def _chunks(x, tc, n_chunks):
    """[B, T, ...] -> [n_chunks, B, tc, ...] (zero padded frames)."""
    B, T = x.shape[:2]
    x = jnp.pad(x, [(0, 0), (0, n_chunks * tc - T)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape((B, n_chunks, tc) + x.shape[2:]), 1, 0)


def _unchunk(x, T):
    """[n_chunks, B, tc, ...] -> [B, T, ...]."""
    n, B, tc = x.shape[:3]
    return jnp.moveaxis(x, 0, 1).reshape((B, n * tc) + x.shape[3:])[:, :T]


def _forward(encoder, predictor, weight, bias, labels, blank, activation, tile_v, t_chunk):
    """lse, blank_lp, emit_lp [B, T, U+1] from the joint, one frame chunk and V tile at a time."""
    act = ACTIVATIONS[activation]
    B, T, J = encoder.shape
    U1 = predictor.shape[1]
    V = weight.shape[1]
    tv, n_tiles, tc, n_chunks = _plan(B, T, U1, J, V, tile_v, t_chunk)
    w_tiles, b_tiles = _tiles(weight, bias, tv, n_tiles)
    lab = jnp.concatenate([labels, jnp.zeros((B, 1), jnp.int32)], axis=1)  # [B, U1]
    w_lab, b_lab = weight.T[lab], bias[lab]  # [B, U1, J], [B, U1]
    w_blank, b_blank = weight[:, blank], bias[blank]

    def chunk_step(_, enc_c):
        h = act(enc_c[:, :, None, :] + predictor[:, None, :, :])  # [B, tc, U1, J]

        def tile_step(carry, wb):
            m, s = carry
            z = jnp.einsum("btuj,jv->btuv", h, wb[0]) + wb[1]
            m_new = jnp.maximum(m, jnp.max(z, axis=-1))
            s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(z - m_new[..., None]), axis=-1)
            return (m_new, s), None

        init = (jnp.full(h.shape[:3], float("-inf"), _F32), jnp.zeros(h.shape[:3], _F32))
        (m, s), _ = lax.scan(tile_step, init, (w_tiles, b_tiles))
        lse = m + jnp.log(s)
        blank_logit = h @ w_blank + b_blank
        label_logit = jnp.einsum("btuj,buj->btu", h, w_lab) + b_lab[:, None, :]
        return None, (lse, blank_logit - lse, label_logit - lse)

    _, outs = lax.scan(chunk_step, None, _chunks(encoder, tc, n_chunks))
    return tuple(_unchunk(o, T) for o in outs)


def _backward(encoder, predictor, weight, bias, labels, lse, k_soft, k_blank, k_label, blank,
              activation, tile_v, t_chunk):
    """Gradients for (encoder, predictor, weight, bias) given per-cell coefficients [B, T, U+1].

    dlogits = softmax * k_soft + k_blank [v == blank] + k_label [v == label], never materialized.
    """
    act = ACTIVATIONS[activation]
    B, T, J = encoder.shape
    U1 = predictor.shape[1]
    V = weight.shape[1]
    tv, n_tiles, tc, n_chunks = _plan(B, T, U1, J, V, tile_v, t_chunk)
    w_tiles, b_tiles = _tiles(weight, bias, tv, n_tiles)
    lab = jnp.concatenate([labels, jnp.zeros((B, 1), jnp.int32)], axis=1)
    w_lab = weight.T[lab]  # [B, U1, J]
    w_blank = weight[:, blank]

    def chunk_step(carry, xs):
        dw_tiles, db_tiles, d_pred, dw_blank, dw_lab = carry
        enc_c, lse_c, ks_c, kb_c, kl_c = xs
        h, act_vjp = jax.vjp(act, enc_c[:, :, None, :] + predictor[:, None, :, :])
        dh = kb_c[..., None] * w_blank + kl_c[..., None] * w_lab[:, None]
        dw_blank = dw_blank + jnp.einsum("btuj,btu->j", h, kb_c)
        dw_lab = dw_lab + jnp.einsum("btuj,btu->buj", h, kl_c)

        def tile_step(dh, wb):
            w_t, b_t = wb
            p = jnp.exp(jnp.einsum("btuj,jv->btuv", h, w_t) + b_t - lse_c[..., None])
            p = p * ks_c[..., None]
            dh = dh + jnp.einsum("btuv,jv->btuj", p, w_t)
            return dh, (jnp.einsum("btuj,btuv->jv", h, p), jnp.sum(p, axis=(0, 1, 2)))

        dh, (dw_c, db_c) = lax.scan(tile_step, dh, (w_tiles, b_tiles))
        (dpre,) = act_vjp(dh)
        carry = (dw_tiles + dw_c, db_tiles + db_c, d_pred + jnp.sum(dpre, axis=1), dw_blank,
                 dw_lab)
        return carry, jnp.sum(dpre, axis=2)

    init = (jnp.zeros((n_tiles, J, tv), _F32), jnp.zeros((n_tiles, tv), _F32),
            jnp.zeros((B, U1, J), _F32), jnp.zeros((J,), _F32), jnp.zeros((B, U1, J), _F32))
    xs = tuple(_chunks(x, tc, n_chunks) for x in (encoder, lse, k_soft, k_blank, k_label))
    (dw_tiles, db_tiles, d_pred, dw_blank, dw_lab), d_enc = lax.scan(chunk_step, init, xs)
    d_weight = dw_tiles.transpose(1, 0, 2).reshape(J, n_tiles * tv)[:, :V]
    d_weight = d_weight.at[:, blank].add(dw_blank)
    d_weight = d_weight.T.at[lab.reshape(-1)].add(dw_lab.reshape(-1, J)).T
    d_bias = db_tiles.reshape(-1)[:V].at[blank].add(jnp.sum(k_blank))
    d_bias = d_bias.at[lab.reshape(-1)].add(jnp.sum(k_label, axis=1).reshape(-1))
    return _unchunk(d_enc, T), d_pred, d_weight, d_bias


def _backward_clamped(encoder, predictor, weight, bias, labels, lse, soft, pb, pe, g, blank,
                      activation, tile_v, t_chunk, clamp):
    """Gradients with torchaudio's clamp: each entry of d loss_b / d logits is clipped to
    [-clamp, clamp] before the cotangent g_b multiplies it, so the dense and one-hot parts can no
    longer be split (clipping is not linear). Each [B, Tc, U+1, tile_v] tile of
        dlogits = clip(softmax * soft - pb [v == blank] - pe [v == label], -c, c) * g
    is therefore formed in full (the one-hot terms by comparing the tile's vocabulary ids, no
    gather or scatter) and multiplied back into dh, d_weight and d_bias. Same memory bound as the
    unclamped path; slightly more elementwise work per tile.
    """
    act = ACTIVATIONS[activation]
    B, T, J = encoder.shape
    U1 = predictor.shape[1]
    V = weight.shape[1]
    tv, n_tiles, tc, n_chunks = _plan(B, T, U1, J, V, tile_v, t_chunk)
    w_tiles, b_tiles = _tiles(weight, bias, tv, n_tiles)
    lab = jnp.concatenate([labels, jnp.zeros((B, 1), jnp.int32)], axis=1)[:, None, :, None]
    g4 = g.astype(_F32)[:, None, None, None]

    def chunk_step(carry, xs):
        dw_tiles, db_tiles, d_pred = carry
        enc_c, lse_c, soft_c, pb_c, pe_c = xs
        h, act_vjp = jax.vjp(act, enc_c[:, :, None, :] + predictor[:, None, :, :])

        def tile_step(dh, wbk):
            w_t, b_t, k = wbk
            v = k * tv + lax.broadcasted_iota(jnp.int32, (1, 1, 1, tv), 3)
            p = jnp.exp(jnp.einsum("btuj,jv->btuv", h, w_t) + b_t - lse_c[..., None])
            dl = (p * soft_c[..., None] - jnp.where(v == blank, pb_c[..., None], 0.0)
                  - jnp.where(v == lab, pe_c[..., None], 0.0))
            dl = jnp.clip(dl, -clamp, clamp) * g4  # padded ids: p = 0, never blank/label
            dh = dh + jnp.einsum("btuv,jv->btuj", dl, w_t)
            return dh, (jnp.einsum("btuj,btuv->jv", h, dl), jnp.sum(dl, axis=(0, 1, 2)))

        dh, (dw_c, db_c) = lax.scan(tile_step, jnp.zeros(h.shape, _F32),
                                    (w_tiles, b_tiles, jnp.arange(n_tiles)))
        (dpre,) = act_vjp(dh)
        return (dw_tiles + dw_c, db_tiles + db_c, d_pred + jnp.sum(dpre, axis=1)), \
            jnp.sum(dpre, axis=2)

    init = (jnp.zeros((n_tiles, J, tv), _F32), jnp.zeros((n_tiles, tv), _F32),
            jnp.zeros((B, U1, J), _F32))
    xs = tuple(_chunks(x, tc, n_chunks) for x in (encoder, lse, soft, pb, pe))
    (dw_tiles, db_tiles, d_pred), d_enc = lax.scan(chunk_step, init, xs)
    d_weight = dw_tiles.transpose(1, 0, 2).reshape(J, n_tiles * tv)[:, :V]
    d_bias = db_tiles.reshape(-1)[:V]
    return _unchunk(d_enc, T), d_pred, d_weight, d_bias


def _loss_and_state(encoder, predictor, weight, bias, labels, logit_lengths, label_lengths, blank,
                    activation, tile_v, t_chunk):
    lse, blank_lp, emit_lp = _forward(encoder, predictor, weight, bias, labels, blank, activation,
                                      tile_v, t_chunk)
    ll, state = _xla.lattice_forward(blank_lp, emit_lp, logit_lengths, label_lengths)
    return -ll, lse, ll, state


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9, 10, 11, 12))
def _fused(encoder, predictor, weight, bias, labels, logit_lengths, label_lengths, blank,
           fastemit_lambda, activation, tile_v, t_chunk, clamp):
    return _loss_and_state(encoder, predictor, weight, bias, labels, logit_lengths, label_lengths,
                           blank, activation, tile_v, t_chunk)[0]


def _fused_fwd(encoder, predictor, weight, bias, labels, logit_lengths, label_lengths, blank,
               fastemit_lambda, activation, tile_v, t_chunk, clamp):
    loss, lse, ll, state = _loss_and_state(encoder, predictor, weight, bias, labels, logit_lengths,
                                           label_lengths, blank, activation, tile_v, t_chunk)
    blank_post, emit_post = _xla.lattice_posteriors(state, ll, logit_lengths, label_lengths,
                                                    encoder.shape[1])
    return loss, (encoder, predictor, weight, bias, labels, lse, blank_post, emit_post)


def _fused_bwd(blank, fastemit_lambda, activation, tile_v, t_chunk, clamp, res, g):
    encoder, predictor, weight, bias, labels, lse, blank_post, emit_post = res
    emit_w = (1.0 + fastemit_lambda) * emit_post
    if clamp is not None:
        grads = _backward_clamped(encoder, predictor, weight, bias, labels, lse,
                                  blank_post + emit_w, blank_post, emit_w, g, blank, activation,
                                  tile_v, t_chunk, clamp)
        return grads + (None, None, None)
    g = g.astype(_F32)[:, None, None]
    k_soft = (blank_post + emit_w) * g
    grads = _backward(encoder, predictor, weight, bias, labels, lse, k_soft, -blank_post * g,
                      -emit_w * g, blank, activation, tile_v, t_chunk)
    return grads + (None, None, None)


_fused.defvjp(_fused_fwd, _fused_bwd)


@functools.partial(jax.jit, static_argnames=("blank", "fastemit_lambda", "activation", "tile_v",
                                             "t_chunk", "clamp"))
def fused_rnnt_loss(encoder: jax.Array, predictor: jax.Array, weight: jax.Array, bias: jax.Array,
                    labels: jax.Array, logit_lengths: jax.Array, label_lengths: jax.Array, *,
                    blank: int = 0, fastemit_lambda: float = 0.0, activation: str = "tanh",
                    tile_v: int = DEFAULT_TILE_V, t_chunk: int | None = None,
                    clamp: float | None = None) -> jax.Array:
    """Per-sequence RNN-T loss [B] fp32 of the joint's logits, computed tile by tile.

    encoder [B, T, J], predictor [B, U+1, J], weight [J, V], bias [V]; gradients flow to all four
    (in their own dtypes). tile_v: vocabulary columns per tile; t_chunk: frames per chunk (None:
    automatic, see module docstring). clamp: clip each entry of d loss_b / d logits to
    [-clamp, clamp] before the cotangent multiplies it (as `xla.rnnt_loss` does on materialized
    logits; None: no clipping). No input checks: see api.fused_rnnt_loss.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r}: use one of {sorted(ACTIVATIONS)}")
    labels, logit_lengths, label_lengths = _xla._prepare(labels, logit_lengths, label_lengths)
    # Autodiff through astype returns each input's gradient in that input's dtype.
    f32 = [x.astype(_F32) for x in (encoder, predictor, weight, bias)]
    return _fused(*f32, labels, logit_lengths, label_lengths, int(blank), float(fastemit_lambda),
                  activation, int(tile_v), t_chunk, None if clamp is None else float(clamp))

