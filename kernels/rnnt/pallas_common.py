"""Backend-independent pieces of the Pallas RNN-T loss: input checks, skewing, the custom VJPs.

Both Pallas backends (`pallas_tpu.py`, `pallas_gpu.py`) split the loss into the same three stages
and differ only in how each stage is tiled and lowered:

1. **log-softmax** over V (or, fused, the joint's output projection plus the log-softmax), keeping
   only what the recursion and the gradient read: `lse[b,t,u]` (log of the softmax denominator),
   `blank_lp[b,t,u]` and `emit_lp[b,t,u] = log p(labels[u] | t, u)`, each [B, T, U+1] fp32;
2. **recursion**: alpha forward, then beta backward, one anti-diagonal `d = t + u` per step (every
   step is a vector operation over u, no intra-step dependency). The beta pass already has
   alpha, beta and the log-probs of a node at hand, so it emits the three per-node gradient
   coefficients directly instead of alpha/beta (which the gradient stage would only turn into the
   same three numbers);
3. **gradient** over V tiles: with `P = exp(logits - lse)` (the softmax) and `logZ = -loss`,

       d loss / d logits[b,t,u,v] = P[v] * soft[t,u] - pb[t,u] [v == blank] - pe[t,u] [v == y_u]

   where, writing `beta[T_b, U_b] := 0` for the final blank,
       gamma[t,u] = exp(alpha[t,u] + beta[t,u] - logZ)                     (node occupancy)
       pb[t,u]    = exp(alpha[t,u] + blank_lp[t,u] + beta[t+1,u] - logZ)   (blank posterior)
       pe[t,u]    = (1+lambda) exp(alpha[t,u] + emit_lp[t,u] + beta[t,u+1] - logZ)
       soft[t,u]  = gamma[t,u] + lambda * exp(alpha + emit_lp + beta[t,u+1] - logZ)
   Derivation: d loss / d blank_lp[t,u] = -pb, d loss / d emit_lp[t,u] = -pe (FastEmit scales the
   label-emission term by 1 + lambda), and through log-softmax
   d/d logits[v] = g[v] - P[v] * sum_k g[k]; since beta[t,u] = logaddexp(blank_lp + beta[t+1,u],
   emit_lp + beta[t,u+1]), -sum_k g[k] = pb + pe = gamma (+ lambda's share) = soft.
   FastEmit (Yu et al. 2021) therefore leaves the loss value unchanged and equals autodiff of the
   loss with `emit_lp` replaced by `(1+lambda) emit_lp - lambda stop_gradient(emit_lp)`, which is
   how the tests check it (this is also what NeMo's FastEmit RNN-T kernels compute).
   `clamp` (torchaudio's convention) clips each d loss / d logits entry to [-clamp, clamp] before it
   is multiplied by the incoming cotangent of the per-sequence loss.

Open choices, decided here:
* Anti-diagonal recursion instead of row-by-row: a row recursion needs a prefix log-sum-exp over u
  inside each row, which in fp32 loses precision (cumulative emit sums of thousands of nats). The
  skew `x[b, t, u] -> xs[b, d = t + u, u]` is a gather of [B, T, U+1] numbers (no V factor) done in
  XLA around the recursion kernel (`skew` / `unskew`).
* `NEG = -1e30` instead of -inf (as in reference.py): sums of two or three NEGs stay finite in
  fp32, so masking never produces inf - inf = NaN.
* Lengths and labels are validated eagerly when concrete (a clear error); under `jit` they are
  traced, and the kernels run on in-range copies (`validity.sanitize`) whose loss is then replaced
  per sequence: +inf for a zero-frame sequence, NaN for out-of-range lengths or labels, gradient
  zero (`validity.apply_status`, the behaviour every implementation shares).
"""
from __future__ import annotations

import functools

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxslu.kernels.rnnt import validity

NEG = -1e30

ACTIVATIONS = ("tanh", "relu")


def activation(name: str, x: jax.Array) -> jax.Array:
    """The joint activation (fp32 in, fp32 out)."""
    if name == "tanh":
        return jnp.tanh(x)
    if name == "relu":
        return jnp.maximum(x, 0.0)
    raise ValueError(f"activation={name!r} is not supported by the Pallas fused joint; use one of {ACTIVATIONS}")


def activation_grad(name: str, post: jax.Array) -> jax.Array:
    """d act(pre) / d pre, written in terms of the output `post = act(pre)` so kernels keep one
    [rows, J] tile (tanh' = 1 - tanh^2; relu' = [pre > 0] = [post > 0])."""
    if name == "tanh":
        return 1.0 - post * post
    return (post > 0).astype(post.dtype)


def logaddexp(a: jax.Array, b: jax.Array) -> jax.Array:
    """log(exp(a) + exp(b)) written with max/exp/log1p only (ops every Pallas lowering has)."""
    m = jnp.maximum(a, b)
    return m + jnp.log1p(jnp.exp(-jnp.abs(a - b)))


def round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def check_inputs(B: int, T: int, U1: int, V: int, labels, logit_lengths, label_lengths, blank: int,
                 where: str) -> validity.Sanitized:
    """Validate shapes/dtypes (and values, when concrete) of the non-differentiable inputs; return
    their in-range copies and the per-sequence status (`validity.sanitize`)."""
    labels = jnp.asarray(labels)
    logit_lengths = jnp.asarray(logit_lengths)
    label_lengths = jnp.asarray(label_lengths)
    if labels.shape != (B, U1 - 1):
        raise ValueError(f"{where}: labels must have shape [B, U] = {(B, U1 - 1)} to match the "
                         f"logits/predictor's U+1 = {U1}, got {labels.shape}")
    for name, x in (("labels", labels), ("logit_lengths", logit_lengths), ("label_lengths", label_lengths)):
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise TypeError(f"{where}: {name} must be an integer array, got {x.dtype}")
    for name, x in (("logit_lengths", logit_lengths), ("label_lengths", label_lengths)):
        if x.shape != (B,):
            raise ValueError(f"{where}: {name} must have shape [B] = ({B},), got {x.shape}")
    if not 0 <= blank < V:
        raise ValueError(f"{where}: blank={blank} must index the vocabulary [0, {V})")
    if not validity.is_traced(logit_lengths):
        ll = np.asarray(logit_lengths)
        if ll.size and (ll.min() < 1 or ll.max() > T):
            raise ValueError(f"{where}: logit_lengths must lie in [1, T={T}], got {ll.tolist()}; "
                             "every sequence needs at least one frame")
    if not validity.is_traced(label_lengths):
        ul = np.asarray(label_lengths)
        if ul.size and (ul.min() < 0 or ul.max() > U1 - 1):
            raise ValueError(f"{where}: label_lengths must lie in [0, U={U1 - 1}], got {ul.tolist()}")
    if not validity.is_traced(labels) and labels.size:
        lab = np.asarray(labels)
        ul = None if validity.is_traced(label_lengths) else np.asarray(label_lengths)
        valid = lab if ul is None else lab[np.arange(U1 - 1)[None, :] < ul[:, None]]
        if valid.size and (valid.min() < 0 or valid.max() >= V):
            raise ValueError(f"{where}: labels must lie in [0, V={V}), got values in "
                             f"[{valid.min()}, {valid.max()}]")
    return validity.sanitize(labels, logit_lengths, label_lengths, T, U1 - 1, V)


def extend_labels(labels: jax.Array, V: int) -> jax.Array:
    """[B, U] -> [B, U+1] int32: a dummy label for column U (never read), every label in [0, V)."""
    B = labels.shape[0]
    lab = jnp.concatenate([labels, jnp.zeros((B, 1), jnp.int32)], axis=1)
    return jnp.clip(lab, 0, V - 1)


def skew(x: jax.Array, U1p: int, fill: float = NEG) -> jax.Array:
    """[B, T, U1] -> [D = T + U1 - 1, B, U1p]: xs[d, b, u] = x[b, d - u, u] (fill outside)."""
    B, T, U1 = x.shape
    D = T + U1 - 1
    d = jnp.arange(D)[:, None]
    u = jnp.arange(U1p)[None, :]
    t = d - u
    ok = (t >= 0) & (t < T) & (u < U1)
    vals = x[:, jnp.clip(t, 0, T - 1), jnp.clip(u, 0, U1 - 1)]  # [B, D, U1p]
    return jnp.where(ok[None], vals, fill).transpose(1, 0, 2).astype(jnp.float32)


def unskew(xs: jax.Array, T: int, U1: int) -> jax.Array:
    """[D, B, U1p] -> [B, T, U1]: the inverse of `skew`."""
    t = jnp.arange(T)[:, None]
    u = jnp.arange(U1)[None, :]
    return xs[t + u, :, u].transpose(2, 0, 1)


# ------------------------------------------------------------------------------------------------
# custom VJPs shared by both backends.

class Backend(NamedTuple):
    """The kernels of one backend (each already bound to its tile sizes and `interpret`).

    logprobs(logits, labels_ext, T_len, U_len) -> (lse, blank_lp, emit_lp)          [B, T, U1] each
    recursion(blank_lp, emit_lp, T_len, U_len, lam) -> (loss [B], soft, pb, pe)     coefficients [B, T, U1]
    grad(logits, lse, soft, pb, pe, labels_ext, T_len, U_len, g, clamp) -> dlogits  [B, T, U1, V] fp32
    joint_logprobs(enc, pred, W, bias, labels_ext, T_len, U_len) -> (lse, blank_lp, emit_lp)
    joint_grad(enc, pred, W, bias, lse, soft, pb, pe, labels_ext, T_len, U_len, g, clamp)
        -> (d_enc, d_pred, d_W, d_bias)
    """
    logprobs: Callable
    recursion: Callable
    grad: Callable
    joint_logprobs: Callable
    joint_grad: Callable


def build_loss_functions(stages, blank: int, fastemit_lambda: float, clamp: float | None,
                         interpret, activation: str = "tanh",
                         blocks: tuple[tuple[str, int], ...] = ()):
    """(loss(logits, labels_ext, T_len, U_len), fused(enc, pred, W, bias, labels_ext, T_len, U_len))
    from a backend module's five stage functions (`stages.logprobs`, `recursion`, `grad`,
    `joint_logprobs`, `joint_grad`), shared by the TPU and GPU modules.

    blocks overrides tile sizes, e.g. (("block_v", 128),) (keys: the stage functions' block_*
    arguments); the public entry points use the defaults. Exposed for tuning and for tests that
    need several tiles on tiny shapes.
    """
    kw = dict(blocks)
    backend = Backend(
        logprobs=functools.partial(stages.logprobs, blank=blank, interpret=interpret, **kw),
        recursion=functools.partial(stages.recursion, interpret=interpret),
        grad=functools.partial(stages.grad, blank=blank, interpret=interpret, **kw),
        joint_logprobs=functools.partial(stages.joint_logprobs, blank=blank,
                                         activation=activation, interpret=interpret, **kw),
        joint_grad=functools.partial(stages.joint_grad, blank=blank, activation=activation,
                                     interpret=interpret, **kw),
    )
    return (make_rnnt_loss(backend, fastemit_lambda, clamp),
            make_fused_rnnt_loss(backend, fastemit_lambda, clamp))


def checked_rnnt_loss(loss_functions, where: str, logits, labels, logit_lengths, label_lengths, *,
                      blank: int, fastemit_lambda: float, clamp: float | None, interpret):
    """The public `rnnt_loss` of a backend module: check inputs, pick the cached loss, call it."""
    B, T, U1, V = check_logits(logits, where)
    inp = check_inputs(B, T, U1, V, labels, logit_lengths, label_lengths, blank, where)
    clamp = None if clamp is None or clamp <= 0 else float(clamp)
    fn, _ = loss_functions(int(blank), float(fastemit_lambda), clamp, interpret)
    per_seq = fn(logits, extend_labels(inp.labels, V), inp.logit_lengths, inp.label_lengths)
    return validity.apply_status(per_seq, inp)


def checked_fused_rnnt_loss(loss_functions, where: str, encoder, predictor, weight, bias, labels,
                            logit_lengths, label_lengths, *, blank: int, fastemit_lambda: float,
                            clamp: float | None, activation: str, interpret):
    """The public `fused_rnnt_loss` of a backend module: check inputs, pick, call."""
    B, T, U1, J, V = check_joint(encoder, predictor, weight, bias, activation, where)
    inp = check_inputs(B, T, U1, V, labels, logit_lengths, label_lengths, blank, where)
    clamp = None if clamp is None or clamp <= 0 else float(clamp)
    _, fn = loss_functions(int(blank), float(fastemit_lambda), clamp, interpret, activation)
    per_seq = fn(encoder, predictor, weight, bias, extend_labels(inp.labels, V),
                 inp.logit_lengths, inp.label_lengths)
    return validity.apply_status(per_seq, inp)


def make_rnnt_loss(backend: Backend, fastemit_lambda: float, clamp: float | None):
    """The differentiable loss(logits, labels_ext, T_len, U_len) -> [B] for one backend/config."""

    def forward(logits, labels_ext, tl, ul):
        lse, blank_lp, emit_lp = backend.logprobs(logits, labels_ext, tl, ul)
        loss, soft, pb, pe = backend.recursion(blank_lp, emit_lp, tl, ul, fastemit_lambda)
        return loss, (logits, lse, soft, pb, pe, labels_ext, tl, ul)

    @jax.custom_vjp
    def loss_fn(logits, labels_ext, tl, ul):
        return forward(logits, labels_ext, tl, ul)[0]

    def bwd(res, g):
        logits, lse, soft, pb, pe, labels_ext, tl, ul = res
        dlogits = backend.grad(logits, lse, soft, pb, pe, labels_ext, tl, ul, g.astype(jnp.float32), clamp)
        return dlogits.astype(logits.dtype), None, None, None

    loss_fn.defvjp(forward, bwd)
    return loss_fn


def make_fused_rnnt_loss(backend: Backend, fastemit_lambda: float, clamp: float | None):
    """The differentiable loss(enc, pred, W, bias, labels_ext, T_len, U_len) -> [B]; clamp clips
    each d loss / d logits entry (recomputed tile by tile inside joint_grad) before the cotangent
    and the joint's chain rule, exactly as the unfused loss clips its logits' gradient."""

    def forward(enc, pred, W, bias, labels_ext, tl, ul):
        lse, blank_lp, emit_lp = backend.joint_logprobs(enc, pred, W, bias, labels_ext, tl, ul)
        loss, soft, pb, pe = backend.recursion(blank_lp, emit_lp, tl, ul, fastemit_lambda)
        return loss, (enc, pred, W, bias, lse, soft, pb, pe, labels_ext, tl, ul)

    @jax.custom_vjp
    def loss_fn(enc, pred, W, bias, labels_ext, tl, ul):
        return forward(enc, pred, W, bias, labels_ext, tl, ul)[0]

    def bwd(res, g):
        enc, pred, W, bias, lse, soft, pb, pe, labels_ext, tl, ul = res
        d_enc, d_pred, d_W, d_bias = backend.joint_grad(
            enc, pred, W, bias, lse, soft, pb, pe, labels_ext, tl, ul, g.astype(jnp.float32), clamp)
        return (d_enc.astype(enc.dtype), d_pred.astype(pred.dtype), d_W.astype(W.dtype),
                d_bias.astype(bias.dtype), None, None, None)

    loss_fn.defvjp(forward, bwd)
    return loss_fn


def check_logits(logits, where: str) -> tuple[int, int, int, int]:
    if logits.ndim != 4:
        raise ValueError(f"{where}: logits must be [B, T, U+1, V], got shape {logits.shape}")
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"{where}: logits must be floating point (fp32 or bf16), got {logits.dtype}")
    return logits.shape


def check_joint(encoder, predictor, weight, bias, activation_name: str, where: str):
    if encoder.ndim != 3 or predictor.ndim != 3:
        raise ValueError(f"{where}: encoder must be [B, T, J] and predictor [B, U+1, J], got "
                         f"{encoder.shape} and {predictor.shape}")
    B, T, J = encoder.shape
    if predictor.shape[0] != B or predictor.shape[2] != J:
        raise ValueError(f"{where}: predictor {predictor.shape} must be [B={B}, U+1, J={J}]")
    if weight.ndim != 2 or weight.shape[0] != J:
        raise ValueError(f"{where}: weight must be [J={J}, V], got {weight.shape}")
    V = weight.shape[1]
    if bias.shape != (V,):
        raise ValueError(f"{where}: bias must be [V={V}], got {bias.shape}")
    if activation_name not in ACTIVATIONS:
        raise ValueError(f"{where}: activation={activation_name!r} is not supported; use one of {ACTIVATIONS}")
    return B, T, predictor.shape[1], J, V



# ------------------------------------------------------------------------------------------------
# In-kernel building blocks (operate on values; the backends supply the memory accesses).

def online_lse_update(x, v, V: int, blank: int, lab, m, s, bl, em):
    """One vocabulary tile of the online log-sum-exp, also picking the blank and label logits.

    x [..., bv] fp32 logits of the tile, v [..., bv] their vocabulary ids, lab [..., 1] (broadcast)
    label ids; m, s, bl, em [...] running max, scaled sum, blank logit, label logit.
    Ids >= V (the padded tail of the last tile) are masked out.
    """
    x = jnp.where(v < V, x, NEG)
    m_new = jnp.maximum(m, jnp.max(x, axis=-1))
    s_new = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(x - m_new[..., None]), axis=-1)
    bl_new = bl + jnp.sum(jnp.where(v == blank, x, 0.0), axis=-1)
    em_new = em + jnp.sum(jnp.where(v == lab, x, 0.0), axis=-1)
    return m_new, s_new, bl_new, em_new


def logits_grad(x, v, valid, lse, soft, pb, pe, lab, blank: int, g, clamp: float | None):
    """d loss / d logits of one tile (see the module docstring), masked, clamped, times g.

    x [..., bv] fp32 logits; v [..., bv] ids; valid [...] node mask; lse/soft/pb/pe [...];
    lab [..., 1] label ids; g a scalar or [..., 1] cotangent of the loss.
    """
    p = jnp.exp(x - jnp.where(valid, lse, 0.0)[..., None])
    grad = p * soft[..., None] - jnp.where(v == blank, pb[..., None], 0.0) \
        - jnp.where(v == lab, pe[..., None], 0.0)
    grad = jnp.where(valid[..., None], grad, 0.0)
    if clamp is not None and clamp > 0:
        grad = jnp.clip(grad, -clamp, clamp)
    return grad * g


def recursion_body(*, load_blank, load_emit, load_alpha, store_alpha, store_out, shift_right,
                   shift_left, lane, tl, ul, dmax, D: int, lam: float):
    """Alpha then beta over anti-diagonals for R sequences at once; returns log P(y|x) [R, 1].

    load_*(d) -> [R, U1p] fp32 (skewed row d); store_alpha(d, x); store_out(d, soft, pb, pe);
    shift_right(x)[:, u] = x[:, u-1] (NEG at u = 0); shift_left(x)[:, u] = x[:, u+1] (NEG at the
    last lane); lane [R, U1p] int32 = u; tl, ul [R, 1] int32 lengths; dmax = max_r(T_r + U_r), the
    number of diagonals any row of this tile uses (the rest are skipped and written as zeros).
    """
    f32 = jnp.float32
    dend = tl - 1 + ul  # [R, 1] diagonal of the final node (T_b - 1, U_b)
    at_end_lane = lane == ul

    def valid_at(d):
        t = d - lane
        return (t >= 0) & (t < tl) & (lane <= ul)

    def take_ll(d, alpha, ll):
        hit = at_end_lane & (dend == d)
        val = jnp.sum(jnp.where(hit, alpha + load_blank(d), 0.0), axis=1, keepdims=True)
        return jnp.where(dend == d, val, ll)

    alpha0 = jnp.where(lane == 0, 0.0, NEG).astype(f32)
    store_alpha(0, alpha0)
    ll0 = take_ll(0, alpha0, jnp.full(tl.shape, NEG, f32))

    def alpha_step(d, carry):
        prev, ll = carry
        a = logaddexp(prev + load_blank(d - 1), shift_right(prev + load_emit(d - 1)))
        a = jnp.where(valid_at(d), a, NEG)
        store_alpha(d, a)
        return a, take_ll(d, a, ll)

    _, ll = jax.lax.fori_loop(1, dmax, alpha_step, (alpha0, ll0))

    def beta_step(i, beta_next):
        d = dmax - 1 - i
        bl, em, al = load_blank(d), load_emit(d), load_alpha(d)
        valid = valid_at(d)
        is_end = at_end_lane & (dend == d)
        bn_left = shift_left(beta_next)
        beta = jnp.where(valid, logaddexp(beta_next + bl, bn_left + em), NEG)
        beta = jnp.where(is_end, bl, beta)
        bn = jnp.where(is_end, 0.0, beta_next)
        pb = jnp.where(valid, jnp.exp(al + bl + bn - ll), 0.0)
        pe = jnp.where(valid & (lane < ul), jnp.exp(al + em + bn_left - ll), 0.0)
        gamma = jnp.where(valid, jnp.exp(al + beta - ll), 0.0)
        store_out(d, gamma + lam * pe, pb, (1.0 + lam) * pe)
        return beta

    jax.lax.fori_loop(0, dmax, beta_step, jnp.full(lane.shape, NEG, f32))

    zeros = jnp.zeros(lane.shape, f32)

    def zero_step(d, c):
        store_out(d, zeros, zeros, zeros)
        return c

    jax.lax.fori_loop(dmax, D, zero_step, 0)
    return ll
