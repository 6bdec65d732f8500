"""Pure-JAX reference RNN-T loss: the definition every faster implementation is tested against.

Conventions follow torchaudio's `rnnt_loss`:
  logits        [B, T, U+1, V]  (any float dtype; computed in fp32)
  labels        [B, U] int32, padded with anything past `label_lengths`
  logit_lengths [B] int32, 1 <= logit_lengths[b] <= T
  label_lengths [B] int32, 0 <= label_lengths[b] <= U

The loss of sequence b is -log P(y_b | x_b), the log of the sum over all monotonic alignments of
T_b blanks and U_b labels, computed with the forward (alpha) recursion in log space:

  alpha[0, 0] = 0
  alpha[t, u] = logaddexp(alpha[t-1, u] + blank[t-1, u], alpha[t, u-1] + emit[t, u-1])
  loss        = -(alpha[T_b-1, U_b] + blank[T_b-1, U_b])

evaluated one anti-diagonal (t + u = d) at a time, so each step is a vector operation over u.
Gradients come from autodiff through that recursion: slow and memory hungry, but independent of
the analytic gradients of the fast implementations, which is what a reference is for.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# A finite stand-in for -inf: keeps autodiff through logaddexp free of inf - inf = NaN.
NEG = -1e30


def log_probs_blank_and_emit(logits, labels, blank: int = 0):
    """Log-softmax over V, keeping only what the recursion reads: blank and next-label log-probs.

    Returns (blank_lp, emit_lp), each [B, T, U+1] fp32; emit_lp[:, :, u] = log p(labels[u] | t, u)
    (its last column, u = U, is never read).
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    blank_lp = logp[..., blank]
    B, T, U1, _ = logp.shape
    lab = jnp.concatenate([labels, jnp.zeros((B, 1), labels.dtype)], axis=1)  # [B, U+1]
    lab = jnp.broadcast_to(lab[:, None, :, None], (B, T, U1, 1))
    emit_lp = jnp.take_along_axis(logp, lab.astype(jnp.int32), axis=-1)[..., 0]
    return blank_lp, emit_lp


def alignment_log_likelihood(blank_lp, emit_lp, logit_lengths, label_lengths):
    """log P(y|x) [B] from blank/emit log-probs [B, T, U+1] by the anti-diagonal alpha recursion."""
    B, T, U1 = blank_lp.shape
    u = jnp.arange(U1)
    num_diag = T + U1 - 1

    def at(x, d):  # x[:, d - u, u] for every u, NEG where d - u is outside [0, T)
        t = d - u
        valid = (t >= 0) & (t < T)
        vals = x[:, jnp.clip(t, 0, T - 1), u]
        return jnp.where(valid[None, :], vals, NEG)

    alpha0 = jnp.where(u[None, :] == 0, 0.0, NEG) * jnp.ones((B, 1), jnp.float32)

    def step(alpha_prev, d):
        # from (t-1, u) with a blank: blank at (d-1-u, u); from (t, u-1) with label u-1:
        # emit at (d-u, u-1), i.e. the previous diagonal shifted by one in u.
        from_blank = alpha_prev + at(blank_lp, d - 1)
        emit_prev = at(emit_lp, d - 1)  # emit at (d-1-(u-1), u-1) seen from column u-1
        from_emit = jnp.concatenate(
            [jnp.full((B, 1), NEG, jnp.float32), (alpha_prev + emit_prev)[:, :-1]], axis=1)
        alpha = jnp.logaddexp(from_blank, from_emit)
        t = d - u
        alpha = jnp.where(((t >= 0) & (t < T))[None, :], alpha, NEG)
        return alpha, alpha

    _, alphas = jax.lax.scan(step, alpha0, jnp.arange(1, num_diag))
    alphas = jnp.concatenate([alpha0[None], alphas], axis=0)  # [D, B, U+1]
    b = jnp.arange(B)
    t_last = logit_lengths - 1
    alpha_end = alphas[t_last + label_lengths, b, label_lengths]
    return alpha_end + blank_lp[b, t_last, label_lengths]


def rnnt_loss_reference(logits, labels, logit_lengths, label_lengths, *, blank: int = 0,
                        fastemit_lambda: float = 0.0):
    """Per-sequence RNN-T negative log-likelihood [B] (fp32), differentiable by autodiff.

    Expects valid inputs (1 <= logit_lengths <= T, labels in [0, V) at real positions): use
    `api.rnnt_loss(..., implementation="reference")` for the checked, masked entry point.
    fastemit_lambda: FastEmit by its definition (Yu et al. 2021, as NeMo implements it): the loss
    value is unchanged and autodiff sees emit_lp -> (1 + l) emit_lp - l stop_gradient(emit_lp),
    which scales every label-emission term of the gradient by 1 + l. (No gradient clamp: clipping
    d loss_b / d logits before the cotangent is applied has no autodiff definition.)
    """
    labels = labels.astype(jnp.int32)
    logit_lengths = logit_lengths.astype(jnp.int32)
    label_lengths = label_lengths.astype(jnp.int32)
    blank_lp, emit_lp = log_probs_blank_and_emit(logits, labels, blank)
    if fastemit_lambda:
        lam = float(fastemit_lambda)
        emit_lp = (1.0 + lam) * emit_lp - lam * jax.lax.stop_gradient(emit_lp)
    return -alignment_log_likelihood(blank_lp, emit_lp, logit_lengths, label_lengths)
