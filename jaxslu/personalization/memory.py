"""The long-term user state: attention pooling of a whole history that is updated incrementally.

M learned queries attend over every past event of a user; slot m of the long-term memory is

    L_m = sum_i softmax_i(s_mi) v_i,      s_mi = <q_m, W_k e_i> / sqrt(d),   v_i = W_v e_i

over all events i older than the short-term window. Softmax pooling is exactly mergeable (the
online-softmax identity that flash attention also rests on): keep per slot the running maximum
score `mx`, the normaliser `den = sum_i exp(s_mi - mx)` and the numerator `num = sum_i exp(s_mi -
mx) v_i`; merging a window of n new events is

    mx' = max(mx, max_i s_mi);  den' = den e^(mx - mx') + sum_i e^(s_mi - mx');
    num' = num e^(mx - mx') + sum_i e^(s_mi - mx') v_i

which costs O(n M d), independent of how many events the state already holds, and equals the
full recompute over the concatenated history up to float rounding (tested within 1e-5).

`full_memory` is that full recompute; `merge` the incremental update; `read` the memory of a
state; `prefix_memory` the memory of every prefix of a sequence at once (training: position t
sees the events before t - window).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

NEG = -1e30  # a finite "minus infinity": keeps exp(mx - mx') defined when a slot is empty


class LongTermState(NamedTuple):
    mx: jax.Array   # [..., M] running max score
    den: jax.Array  # [..., M] sum of exp(score - mx)
    num: jax.Array  # [..., M, D] sum of exp(score - mx) * value
    count: jax.Array  # [...] int32 number of events merged


def empty_state(num_slots: int, dim: int, batch: tuple[int, ...] = (),
                dtype=jnp.float32) -> LongTermState:
    return LongTermState(jnp.full(batch + (num_slots,), NEG, dtype),
                         jnp.zeros(batch + (num_slots,), dtype),
                         jnp.zeros(batch + (num_slots, dim), dtype),
                         jnp.zeros(batch, jnp.int32))


def merge(state: LongTermState, scores: jax.Array, values: jax.Array,
          mask: jax.Array | None = None) -> LongTermState:
    """Merge n events (scores [..., n, M], values [..., n, D], mask [..., n]: 1 real, 0 padding)
    into `state`."""
    if mask is None:
        mask = jnp.ones(scores.shape[:-1], bool)
    mask = mask.astype(bool)
    s = jnp.where(mask[..., None], scores, NEG)
    new_mx = jnp.maximum(state.mx, jnp.max(s, axis=-2))
    keep = jnp.exp(state.mx - new_mx)
    w = jnp.where(mask[..., None], jnp.exp(s - new_mx[..., None, :]), 0.0)  # [..., n, M]
    den = state.den * keep + jnp.sum(w, axis=-2)
    num = state.num * keep[..., None] + jnp.einsum("...nm,...nd->...md", w, values)
    return LongTermState(new_mx, den, num, state.count + jnp.sum(mask, axis=-1).astype(jnp.int32))


def read(state: LongTermState) -> jax.Array:
    """The memory [..., M, D] of a state (zeros for a state that holds no event)."""
    den = state.den[..., None]
    return jnp.where(den > 0, state.num / jnp.where(den > 0, den, 1.0), 0.0)


def full_memory(scores: jax.Array, values: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """The memory over a whole history at once (scores [..., N, M], values [..., N, D]): the
    full recompute that the incremental state must equal."""
    if mask is None:
        mask = jnp.ones(scores.shape[:-1], bool)
    mask = mask.astype(bool)[..., None]
    s = jnp.where(mask, scores, NEG)
    p = jnp.where(mask, jax.nn.softmax(s, axis=-2), 0.0)
    any_real = jnp.any(mask, axis=-2)  # [..., 1]
    mem = jnp.einsum("...nm,...nd->...md", p, values)
    return jnp.where(any_real[..., None], mem, 0.0)


def _combine(a, b):
    """The merge of two partial states (a earlier, b later): associative."""
    mx = jnp.maximum(a[0], b[0])
    ka, kb = jnp.exp(a[0] - mx), jnp.exp(b[0] - mx)
    return mx, a[1] * ka + b[1] * kb, a[2] * ka[..., None] + b[2] * kb[..., None]


def prefix_memory(scores: jax.Array, values: jax.Array, valid: jax.Array,
                  window: int) -> tuple[jax.Array, jax.Array]:
    """For every position t of a sequence, the memory over the real events i < t - window.

    scores [B, T, M], values [B, T, D], valid [B, T] -> (memory [B, T, M, D], has [B, T] bool).
    The training path: a parallel prefix scan (`jax.lax.associative_scan`) of the same merge the
    incremental state applies, O(T log T M D); `prefix_memory_dense` is the O(T^2 M D) masked
    attention it equals.
    """
    B, T, M = scores.shape
    ok = valid.astype(bool)[..., None]
    mx = jnp.where(ok, scores, NEG)
    den = ok.astype(scores.dtype) * jnp.ones_like(scores)
    num = jnp.where(ok[..., None], values[:, :, None, :], 0.0) * jnp.ones((1, 1, M, 1),
                                                                          values.dtype)
    mx, den, num = jax.lax.associative_scan(_combine, (mx, den, num), axis=1)
    # position t sees the prefix ending at event t - window - 1
    shift = window + 1
    pad = lambda x, v: jnp.concatenate(
        [jnp.full((B, min(shift, T)) + x.shape[2:], v, x.dtype), x[:, :max(T - shift, 0)]],
        axis=1)
    den = pad(den, 0.0)
    num = pad(num, 0.0)
    has = den[..., 0] > 0
    mem = jnp.where(den[..., None] > 0, num / jnp.where(den > 0, den, 1.0)[..., None], 0.0)
    return mem, has


def prefix_memory_dense(scores: jax.Array, values: jax.Array, valid: jax.Array,
                        window: int) -> tuple[jax.Array, jax.Array]:
    """`prefix_memory` as dense masked attention per position (the reference it is tested
    against)."""
    T = scores.shape[1]
    t = jnp.arange(T)
    older = t[None, :] < (t[:, None] - window)             # [T(target), T(source)]
    mask = older[None] & valid[:, None, :].astype(bool)    # [B, T, T]
    s = jnp.where(mask[..., None], scores[:, None, :, :], NEG)  # [B, T, T, M]
    mx = jnp.max(s, axis=2, keepdims=True)
    w = jnp.where(mask[..., None], jnp.exp(s - mx), 0.0)
    den = jnp.sum(w, axis=2)                                # [B, T, M]
    num = jnp.einsum("btim,bid->btmd", w, values)
    has = jnp.any(mask, axis=-1)
    mem = jnp.where(den[..., None] > 0, num / jnp.where(den > 0, den, 1.0)[..., None], 0.0)
    return mem, has
