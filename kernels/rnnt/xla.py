"""RNN-T loss in plain XLA: exact, memory-lean, with an analytic gradient (jax.custom_vjp).

Conventions are torchaudio's `rnnt_loss` (see reference.py): logits [B, T, U+1, V], labels [B, U]
padded with anything past `label_lengths`, the loss of sequence b is -log P(y_b | x_b) summed over
all monotonic alignments of T_b blanks and U_b labels, the last step being a blank at
(T_b - 1, U_b). U_b > T_b is allowed (several labels per frame).

Forward
  1. Log-softmax statistics over V (fused max and exp-sum reductions, see `logsumexp_fp32`): only
     the log-normalizer lse [B, T, U+1] and the two log-probs the lattice reads (blank and next
     label, two gathers) are kept; no [B, T, U+1, V] intermediate.
  2. The alpha recursion in log space (fp32), one anti-diagonal t + u = d per `lax.scan` step, on
     a "skewed" copy of the two [B, T, U+1] log-prob arrays ([D, B, U+1], D = T + U), so each step
     is a couple of vector ops over [B, U+1] and reads one contiguous row. Each diagonal is
     renormalized with an exact integer offset (see `lattice_forward`) so fp32 keeps its precision
     on long utterances. The alternative, a scan
     over T with a log-cumsum-exp over U, needs a log-depth associative scan per step and
     subtracts large cumulative sums (losing fp32 precision for long label sequences); the lattice
     is a few percent of the total time either way (the V-sized passes dominate), so the exact
     wavefront was kept.
Backward (only under differentiation, in the custom_vjp forward rule)
  3. The beta recursion, again by anti-diagonals (reverse scan), with each sequence's own end
     (ragged lengths are exact: cells outside t < T_b, u <= U_b are -inf and get zero gradient).
  4. Posteriors of the two transitions out of each cell,
        blank_post[t,u] = exp(alpha[t,u] + blank[t,u] + beta[t+1,u] - ll)
        emit_post[t,u]  = exp(alpha[t,u] + emit[t,u]  + beta[t,u+1] - ll)
     saved as [B, T, U+1] each. Softmax is NOT saved: the backward recomputes it from the saved
     logits in the same fused elementwise pass that writes the gradient, so peak memory is the
     logits plus their gradient plus O(B*T*U) (torchaudio's function-merging gradient):
        d loss_b / d logits[b,t,u,v] = softmax[v] * (blank_post + (1+lam) emit_post)
                                       - blank_post [v == blank] - (1+lam) emit_post [v == label_u]

FastEmit (Yu et al. 2021) follows the warp-transducer / NeMo convention: the loss value is
unchanged and the label-emission terms of the gradient are scaled by (1 + lambda).
clamp: the per-sequence gradient is clipped to [-clamp, clamp] (both sides) before it is scaled
by the upstream cotangent, as torchaudio does on CPU.

Infeasible or underflowing lattices: a sequence with logit_lengths < 1, or whose every alignment
has probability 0 in fp32 (e.g. -inf logits on the only path), gets loss +inf and an all-zero
gradient (never NaN). NaN inputs propagate (they are not silently masked).

Indexing never flattens [B, T, U+1, V] into one int32 index: every gather and iota is per axis, so
tensors beyond 2^31 elements are fine. bf16 logits are computed on in fp32 (never a full fp32 copy:
the log-sum-exp converts slice by slice, the backward converts inside its fused pass) and their
gradient is returned in bf16.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

_F32 = jnp.float32
_NEG_INF = float("-inf")


def _logaddexp(a: jax.Array, b: jax.Array) -> jax.Array:
    """log(exp(a) + exp(b)) that maps (-inf, -inf) to -inf without NaN (no autodiff needed)."""
    m = jnp.maximum(a, b)
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    return m + jnp.log(jnp.exp(a - m_safe) + jnp.exp(b - m_safe))


def skew(x: jax.Array) -> jax.Array:
    """[B, T, U1] -> [D, B, U1]: out[d, b, u] = x[b, d - u, u], -inf if d - u is outside [0, T)."""
    B, T, U1 = x.shape
    d = jnp.arange(T + U1 - 1)[:, None]
    u = jnp.arange(U1)[None, :]
    t = d - u
    vals = x[:, jnp.clip(t, 0, T - 1), u]  # [B, D, U1]
    vals = jnp.where(((t >= 0) & (t < T))[None], vals, _NEG_INF)
    return jnp.transpose(vals, (1, 0, 2))


def unskew(y: jax.Array, T: int) -> jax.Array:
    """Inverse of `skew`: [D, B, U1] -> [B, T, U1]."""
    U1 = y.shape[2]
    t = jnp.arange(T)[:, None]
    u = jnp.arange(U1)[None, :]
    return jnp.transpose(y[t + u, :, u], (2, 0, 1))  # advanced dims first: [T, U1, B]


# Rows of [U+1, V] per step when a non-fp32 log-sum-exp is computed in slices (~4 MB fp32 each).
_LSE_SLICE_ELEMENTS = 1 << 20


def _as_bits(x: jax.Array) -> jax.Array:
    """bf16 -> its uint16 bit pattern (free bitcast); other dtypes unchanged."""
    return lax.bitcast_convert_type(x, jnp.uint16) if x.dtype == jnp.bfloat16 else x


def _to_f32(x: jax.Array) -> jax.Array:
    """Exact fp32 value of `_as_bits` output: a bf16 is the top half of an fp32's bits.

    Integer ops, so XLA:CPU's bf16 -> fp32 normalization (which hoisted a convert of the whole
    array out of the loop) never sees a bf16 array inside the loop.
    """
    if x.dtype == jnp.uint16:
        return lax.bitcast_convert_type(x.astype(jnp.uint32) << 16, _F32)
    return x.astype(_F32)


def logsumexp_fp32(x: jax.Array) -> jax.Array:
    """fp32 log-sum-exp over the last axis of [B, T, U+1, V] without an fp32 copy of x.

    fp32 input: one max pass and one exp-sum pass, both fused reductions. Other dtypes (bf16):
    XLA:CPU upcasts bf16 arithmetic, and the fp32 convert shared by the two reductions was
    materialized as a full fp32 copy (2x the bf16 logits). So the [B*T] rows are processed in
    equal slices of at most `_LSE_SLICE_ELEMENTS` (lax.map over the uint16 bit patterns,
    see `_to_f32`), which bounds that copy to one slice. (A
    one-pass variadic (max, sum) reduction avoids the copy too but ran 10x slower on XLA:CPU.)
    """
    if x.dtype == _F32:
        return jax.nn.logsumexp(x, axis=-1)
    B, T, U1, V = x.shape
    budget = max(1, _LSE_SLICE_ELEMENTS // (U1 * V))
    # The largest divisor of B*T within budget: equal slices, so no remainder slice (whose
    # slicing made another full copy) and the reshape below is free.
    rows = max(r for r in range(1, min(budget, B * T) + 1) if (B * T) % r == 0)
    bits = _as_bits(x).reshape(B * T // rows, rows, U1, V)  # merges leading axes only
    out = lax.map(lambda r: jax.nn.logsumexp(_to_f32(r), axis=-1), bits)
    return out.reshape(B, T, U1)


def blank_and_emit_log_probs(logits: jax.Array, labels: jax.Array, blank: int):
    """Log-softmax statistics over V in fp32: (lse, blank_lp, emit_lp), each [B, T, U+1].

    emit_lp[b, t, u] = log p(labels[b, u] | t, u); its last column (u = U) reads label 0 and is
    never used by the lattice. Only reductions and two gathers touch the V axis.
    """
    B, T, U1, _ = logits.shape
    lse = logsumexp_fp32(logits)
    blank_logit = logits[..., blank].astype(_F32)
    lab = jnp.concatenate([labels, jnp.zeros((B, 1), jnp.int32)], axis=1)
    idx = jnp.broadcast_to(lab[:, None, :, None], (B, T, U1, 1))
    label_logit = jnp.take_along_axis(logits, idx, axis=-1)[..., 0].astype(_F32)
    return lse, blank_logit - lse, label_logit - lse


def sanitize_labels(labels: jax.Array, label_lengths: jax.Array) -> jax.Array:
    """int32 labels with the padding past label_lengths (which may hold anything) set to 0."""
    U = labels.shape[1]
    keep = jnp.arange(U)[None, :] < label_lengths[:, None]
    return jnp.where(keep, labels.astype(jnp.int32), 0)


# Lattice offsets are integers counting this quantum (2^-10 nats): exact sums in int32 up to
# 2^21 nats of |log P|, far beyond any real utterance.
_QUANTUM = 1.0 / 1024.0


def _renormalize(raw: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Split a diagonal [B, U1] into (raw - q * quantum, q): q int32 ~ max / quantum per row.

    Keeps every stored lattice value within ~1 nat of 0, so fp32 rounding stays ~1e-7 absolute;
    the magnitude lives in the exact integer offset q (0 where a row is all -inf).
    """
    c = jnp.max(raw, axis=1)
    q = jnp.round(jnp.where(jnp.isfinite(c), c, 0.0) / _QUANTUM).astype(jnp.int32)
    return raw - (q.astype(_F32) * _QUANTUM)[:, None], q


def lattice_forward(blank_lp, emit_lp, logit_lengths, label_lengths):
    """Alpha recursion: returns (log-likelihood [B] fp32, state for `lattice_posteriors`).

    alpha[d] = alphas[d] + offsets[d] * quantum: each diagonal is renormalized (`_renormalize`) and
    its offset accumulated exactly in int32. A plain fp32 alpha reaches |log P| (~1e4 nats for a
    2000-frame utterance), where one fp32 ulp is 1e-3, and the posteriors exp(alpha + beta - ll)
    inherit that as relative error (torchaudio's gradients are off by 1.7e-2 there vs float64).
    With exact offsets only the fp32 log-softmax's rounding remains (measured against float64:
    2e-5 at T=200, 7e-4 at T=2000; results/benchmarks/rnnt_loss_cpu.json).
    log-likelihood is -inf for infeasible sequences (logit_lengths < 1).
    """
    B, T, U1 = blank_lp.shape
    blank_s, emit_s = skew(blank_lp), skew(emit_lp)  # [D, B, U1]
    D = T + U1 - 1
    u = jnp.arange(U1)
    valid = (jnp.arange(1, D)[:, None] - u[None, :]) < T  # t = d - u < T on diagonals 1..D-1
    alpha0 = jnp.where(u[None, :] == 0, 0.0, _NEG_INF) * jnp.ones((B, 1), _F32)
    off0 = jnp.zeros((B,), jnp.int32)
    neg_col = jnp.full((B, 1), _NEG_INF, _F32)

    def step(carry, xs):
        alpha_prev, off = carry
        bl, em, ok = xs  # log-probs on the previous diagonal, validity of this one
        from_blank = alpha_prev + bl  # (t-1, u) -> (t, u)
        from_emit = jnp.concatenate([neg_col, (alpha_prev + em)[:, :-1]], axis=1)  # (t, u-1)
        raw = jnp.where(ok[None, :], _logaddexp(from_blank, from_emit), _NEG_INF)
        alpha, q = _renormalize(raw)
        return (alpha, off + q), (alpha, off + q)

    _, (rest, rest_off) = lax.scan(step, (alpha0, off0), (blank_s[:-1], emit_s[:-1], valid))
    alphas = jnp.concatenate([alpha0[None], rest], axis=0)  # [D, B, U1], relative to offsets
    offsets = jnp.concatenate([off0[None], rest_off], axis=0)  # [D, B] int32
    b = jnp.arange(B)
    t_last = jnp.clip(logit_lengths - 1, 0, T - 1)
    d_end = jnp.clip(t_last + label_lengths, 0, D - 1)
    ll_small = alphas[d_end, b, label_lengths] + blank_lp[b, t_last, label_lengths]
    ll_off = offsets[d_end, b]
    ll = ll_small + ll_off.astype(_F32) * _QUANTUM
    ll = jnp.where(logit_lengths >= 1, ll, _NEG_INF)
    return ll, (blank_s, emit_s, alphas, offsets, ll_small, ll_off)


def lattice_posteriors(state, ll, logit_lengths, label_lengths, T: int):
    """Beta recursion and transition posteriors (blank_post, emit_post), each [B, T, U+1] fp32.

    Beta is renormalized per diagonal like alpha; the exponent alpha + beta - ll of each posterior
    is assembled from small fp32 parts plus an exact integer sum of the offsets.
    Zero outside each sequence's lattice and for sequences with a non-finite log-likelihood.
    """
    blank_s, emit_s, alphas, offsets, ll_small, ll_off = state
    D, B, U1 = blank_s.shape
    d = jnp.arange(D)[:, None, None]
    u = jnp.arange(U1)[None, None, :]
    t = d - u
    Tb = logit_lengths[None, :, None]
    Ub = label_lengths[None, :, None]
    in_u = u <= Ub
    blank_m = jnp.where(in_u & (t < Tb - 1), blank_s, _NEG_INF)  # blank to (t+1, u)
    final = jnp.where((t == Tb - 1) & (u == Ub), blank_s, _NEG_INF)  # last blank, beta = 0 after
    emit_m = jnp.where((t < Tb) & (u < Ub), emit_s, _NEG_INF)  # label u to (t, u+1)
    neg_col = jnp.full((B, 1), _NEG_INF, _F32)

    def step(carry, xs):
        beta_next, off = carry  # diagonal d+1, relative to its offset
        bl, fin, em = xs
        # beta_next + bl is -inf wherever fin is finite, so max == logaddexp here; and the final
        # blank is the first finite cell of its sequence in this reverse sweep, so off == 0 there.
        blank_branch = jnp.maximum(beta_next + bl, fin)
        emit_branch = jnp.concatenate([beta_next[:, 1:], neg_col], axis=1) + em
        beta, q = _renormalize(_logaddexp(blank_branch, emit_branch))
        return (beta, off + q), (blank_branch, emit_branch, off)

    init = (jnp.full((B, U1), _NEG_INF, _F32), jnp.zeros((B,), jnp.int32))
    _, (blank_branch, emit_branch, next_off) = lax.scan(step, init, (blank_m, final, emit_m),
                                                       reverse=True)
    ok = jnp.isfinite(ll)
    big = (offsets + next_off - ll_off[None, :]).astype(_F32) * _QUANTUM  # exact int sum
    shift = (big - jnp.where(ok, ll_small, 0.0)[None, :])[:, :, None]
    ok = ok[None, :, None]
    blank_post = jnp.where(ok, jnp.exp(alphas + blank_branch + shift), 0.0)
    emit_post = jnp.where(ok, jnp.exp(alphas + emit_branch + shift), 0.0)
    return unskew(blank_post, T), unskew(emit_post, T)


def _prepare(labels, logit_lengths, label_lengths):
    logit_lengths = logit_lengths.astype(jnp.int32)
    label_lengths = label_lengths.astype(jnp.int32)
    return sanitize_labels(labels, label_lengths), logit_lengths, label_lengths


def _forward(logits, labels, logit_lengths, label_lengths, blank):
    lse, blank_lp, emit_lp = blank_and_emit_log_probs(logits, labels, blank)
    ll, state = lattice_forward(blank_lp, emit_lp, logit_lengths, label_lengths)
    return -ll, lse, ll, state


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _rnnt(logits, labels, logit_lengths, label_lengths, blank, fastemit_lambda, clamp):
    return _forward(logits, labels, logit_lengths, label_lengths, blank)[0]


def _rnnt_fwd(logits, labels, logit_lengths, label_lengths, blank, fastemit_lambda, clamp):
    loss, lse, ll, state = _forward(logits, labels, logit_lengths, label_lengths, blank)
    blank_post, emit_post = lattice_posteriors(state, ll, logit_lengths, label_lengths,
                                               logits.shape[1])
    return loss, (logits, labels, lse, blank_post, emit_post)


def _rnnt_bwd(blank, fastemit_lambda, clamp, res, g):
    logits, labels, lse, blank_post, emit_post = res
    B, _, U1, V = logits.shape
    emit_w = (1.0 + fastemit_lambda) * emit_post
    lab = jnp.concatenate([labels, jnp.zeros((B, 1), jnp.int32)], axis=1)[:, None, :, None]
    # One fused elementwise pass over [B, T, U+1, V]: softmax recomputed from the saved logits.
    v = lax.broadcasted_iota(jnp.int32, logits.shape, 3)
    p = jnp.exp(logits.astype(_F32) - lse[..., None])
    grad = (p * (blank_post + emit_w)[..., None]
            - jnp.where(v == blank, blank_post[..., None], 0.0)
            - jnp.where(v == lab, emit_w[..., None], 0.0))
    if clamp is not None:
        grad = jnp.clip(grad, -clamp, clamp)
    grad = (grad * g.astype(_F32)[:, None, None, None]).astype(logits.dtype)
    return grad, None, None, None


_rnnt.defvjp(_rnnt_fwd, _rnnt_bwd)


@functools.partial(jax.jit, static_argnames=("blank", "fastemit_lambda", "clamp"))
def rnnt_loss(logits: jax.Array, labels: jax.Array, logit_lengths: jax.Array,
              label_lengths: jax.Array, *, blank: int = 0, fastemit_lambda: float = 0.0,
              clamp: float | None = None) -> jax.Array:
    """Per-sequence RNN-T loss [B] fp32 (no reduction, no input checks: see api.rnnt_loss).

    Differentiable w.r.t. logits only (analytic gradient); lengths and labels are integer inputs.
    """
    labels, logit_lengths, label_lengths = _prepare(labels, logit_lengths, label_lengths)
    return _rnnt(logits, labels, logit_lengths, label_lengths, int(blank),
                 float(fastemit_lambda), None if clamp is None else float(clamp))
