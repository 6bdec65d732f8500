"""RNN-T loss against an independent brute-force enumerator of all alignments (numpy, float64).

The enumerator lists every alignment of T_b blanks and U_b labels explicitly (the last step is
the blank out of (T_b - 1, U_b)), sums their probabilities, and derives the gradient path by path
with no autodiff and no recursion: for a path with probability p_path,
    d log p_path / d logits[t, u, :] = sum over the path's steps at (t, u) of (onehot(k) - softmax)
and d(-log P)/d logits = -sum_path (p_path / P) d log p_path / d logits. FastEmit scales the label
steps' term by (1 + lambda). The enumerator is itself checked by central finite differences.

Tolerances: fp32 implementation vs float64 enumerator; the loss is a sum of ~10 fp32 log terms
(rtol 1e-5), gradients are differences of probabilities in [0, 1] (atol 2e-6 is ~20 fp32 ulps).
"""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxslu.kernels.rnnt import rnnt_loss


def _log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def brute_force(logits, labels, T_b, U_b, blank=0, fastemit_lambda=0.0):
    """(loss, gradient) of one sequence by enumerating alignments; logits [T, U+1, V] float64."""
    grad = np.zeros_like(logits)
    if T_b < 1:
        return np.inf, grad
    lp = _log_softmax(logits)
    sm = np.exp(lp)
    n = T_b + U_b - 1  # steps before the final blank
    paths = []
    for label_steps in itertools.combinations(range(n), U_b):
        t = u = 0
        steps = []  # (t, u, emitted class, is_label)
        for i in range(n):
            if i in label_steps:
                steps.append((t, u, labels[u], True))
                u += 1
            else:
                steps.append((t, u, blank, False))
                t += 1
        steps.append((t, u, blank, False))
        assert (t, u) == (T_b - 1, U_b)
        paths.append((sum(lp[s[0], s[1], s[2]] for s in steps), steps))
    logps = np.array([p for p, _ in paths])
    ll = np.logaddexp.reduce(logps)
    for logp, steps in paths:
        w = np.exp(logp - ll)
        for t, u, k, is_label in steps:
            d = -sm[t, u].copy()
            d[k] += 1.0
            grad[t, u] -= w * d * ((1.0 + fastemit_lambda) if is_label else 1.0)
    return -ll, grad


def _case(seed, B, T, U, V, logit_lengths, label_lengths):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(B, T, U + 1, V)).astype(np.float32)
    labels = rng.integers(1, V, size=(B, U)).astype(np.int32)
    pad = np.arange(U)[None] >= np.asarray(label_lengths)[:, None]
    labels = np.where(pad, rng.integers(-3, V + 3, size=(B, U)), labels).astype(np.int32)
    return logits, labels, np.asarray(logit_lengths, np.int32), np.asarray(label_lengths, np.int32)


def test_enumerator_gradient_matches_finite_differences():
    logits, labels, _, _ = _case(1, 1, 3, 2, 4, [3], [2])
    x = logits[0].astype(np.float64)
    _, grad = brute_force(x, labels[0], 3, 2)
    eps = 1e-6
    fd = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        fd[idx] = (brute_force(xp, labels[0], 3, 2)[0]
                   - brute_force(xm, labels[0], 3, 2)[0]) / (2 * eps)
    np.testing.assert_allclose(grad, fd, atol=1e-7)


# Ragged batches covering label_length 0, logit_length 1, U_b > T_b and full-size rows.
CASES = [
    (0, 4, 4, 3, 5, [4, 1, 2, 3], [3, 0, 3, 1]),
    (1, 3, 3, 4, 3, [1, 3, 2], [4, 0, 2]),
    (2, 2, 5, 2, 6, [5, 5], [0, 2]),
]


@pytest.mark.parametrize("fastemit_lambda", [0.0, 0.5])
@pytest.mark.parametrize("case", CASES)
def test_xla_matches_brute_force(case, fastemit_lambda):
    logits, labels, tl, ul = _case(*case)
    loss, grad = jax.value_and_grad(lambda x: jnp.sum(rnnt_loss(
        x, labels, tl, ul, reduction="none", fastemit_lambda=fastemit_lambda)))(jnp.asarray(logits))
    per_seq = rnnt_loss(jnp.asarray(logits), labels, tl, ul, reduction="none",
                        fastemit_lambda=fastemit_lambda)
    for b in range(logits.shape[0]):
        want_loss, want_grad = brute_force(logits[b].astype(np.float64), labels[b], tl[b], ul[b],
                                           fastemit_lambda=fastemit_lambda)
        np.testing.assert_allclose(per_seq[b], want_loss, rtol=1e-5)
        np.testing.assert_allclose(grad[b], want_grad, atol=2e-6)


def test_infeasible_and_underflowing_give_inf_and_zero_grad():
    """Zero frames (traced: concrete lengths < 1 raise) and an all -inf path: +inf, zero grad."""
    logits, labels, _, _ = _case(3, 3, 3, 2, 4, [3, 3, 3], [2, 2, 1])
    logits[2, :, :, 0] = -np.inf  # row 2: blank impossible everywhere -> no alignment
    tl = np.array([0, 3, 3], np.int32)  # row 0: no frames -> infeasible
    ul = np.array([2, 2, 1], np.int32)
    with pytest.raises(ValueError, match="no frames"):
        rnnt_loss(jnp.asarray(logits), labels, tl, ul)

    @jax.jit
    def run(x, tl):
        per_seq = rnnt_loss(x, labels, tl, ul, reduction="none")
        # the +inf losses are in the sum: their rows must still get an exactly zero gradient
        return per_seq, jax.grad(lambda y: jnp.sum(rnnt_loss(y, labels, tl, ul,
                                                             reduction="none")))(x)

    per_seq, grad = run(jnp.asarray(logits), tl)
    assert np.isposinf(per_seq[0]) and np.isposinf(per_seq[2]) and np.isfinite(per_seq[1])
    assert not np.isnan(np.asarray(grad)).any()
    assert np.all(np.asarray(grad[0]) == 0) and np.all(np.asarray(grad[2]) == 0)
    want_loss, want_grad = brute_force(logits[1].astype(np.float64), labels[1], 3, 2)
    np.testing.assert_allclose(per_seq[1], want_loss, rtol=1e-5)
    np.testing.assert_allclose(grad[1], want_grad, atol=2e-6)


def _float64_lattice(logits, labels, blank=0):
    """(loss, gradient) of one full-length sequence by row-wise float64 alpha/beta recursions.

    Too many alignments to enumerate at this size; the recursions are the textbook ones, in
    float64, independent of the fp32 wavefront code under test.
    """
    z = logits.astype(np.float64)
    T, U1, _ = z.shape
    lp = _log_softmax(z)
    bl = lp[:, :, blank]
    em = np.full((T, U1), -np.inf)
    em[:, :-1] = lp[:, np.arange(U1 - 1), labels]
    alpha = np.full((T, U1), -np.inf)
    for t in range(T):
        for u in range(U1):
            terms = [0.0] if t == u == 0 else []
            if t:
                terms.append(alpha[t - 1, u] + bl[t - 1, u])
            if u:
                terms.append(alpha[t, u - 1] + em[t, u - 1])
            alpha[t, u] = np.logaddexp.reduce(terms)
    ll = alpha[-1, -1] + bl[-1, -1]
    beta = np.full((T + 1, U1 + 1), -np.inf)
    beta[T, U1 - 1] = 0.0  # after the final blank
    for t in range(T - 1, -1, -1):
        for u in range(U1 - 1, -1, -1):
            beta[t, u] = np.logaddexp(beta[t + 1, u] + bl[t, u], beta[t, u + 1] + em[t, u])
    blank_post = np.exp(alpha + bl + beta[1:, :U1] - ll)
    emit_post = np.exp(alpha + em + beta[:T, 1:] - ll)
    grad = np.exp(lp) * (blank_post + emit_post)[..., None]
    grad[:, :, blank] -= blank_post
    grad[:, np.arange(U1 - 1), labels] -= emit_post[:, :-1]
    return -ll, grad


def test_long_lattice_keeps_fp32_posteriors_accurate():
    """|log P| ~ 1e3 nats. A plain fp32 lattice (alpha ~ -1e3, one ulp = 6e-5) gave gradient
    errors of 6e-4 here (measured by disabling the renormalization); with per-diagonal
    renormalization and exact integer offsets it is 3e-5, what the fp32 log-softmax leaves."""
    T, U, V = 300, 40, 6
    logits, labels, tl, ul = _case(4, 1, T, U, V, [T], [U])
    logits = logits * 4.0
    loss, grad = jax.value_and_grad(lambda x: rnnt_loss(x, labels, tl, ul, reduction="sum"))(
        jnp.asarray(logits))
    want_loss, want_grad = _float64_lattice(logits[0], labels[0])
    assert want_loss > 900
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    np.testing.assert_allclose(grad[0], want_grad, atol=1e-4)
