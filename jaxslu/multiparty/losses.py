"""Loss terms of the SURT model, each composed from the config:

    loss = "surt_rnnt + 0.5*speech_activity + eot_latency"
    loss_options = {"surt_rnnt": {"fastemit_lambda": 0.005},
                    "eot_latency": {"alpha": 0.1, "buffer": 4}}

* `surt_rnnt`: the transducer NLL of every output channel against every reference stream
  (C x C pairs, the fused loss: no [B, T, U+1, V] tensor), summed over channels under each
  channel-to-reference permutation; the cheapest permutation is the one trained (permutation
  invariant training). FastEmit (Yu et al. 2021) is its `fastemit_lambda` option, honoured by every
  RNN-T implementation (the label-emission gradient scaled by 1 + lambda, value unchanged).
* `speech_activity`: per channel and encoder frame, binary cross-entropy of the activity logit
  against "a turn of the reference stream assigned to this channel is active" (batch `activity`
  [B, C, T]), under the same permutation.
* `eot_latency`: the end-pointer late penalty (Li et al., ICASSP 2020, applied to <eot>): in the
  assigned channel's lattice, the log-probability of emitting the k-th <eot> at frame t is reduced
  by max(0, alpha * (t - t_end_k - buffer)) (t_end_k: the frame where turn k ends, batch
  `eot_frame` [B, C, U], -1 at other tokens). The term is NLL_penalized - NLL (>= 0), so
  `surt_rnnt + eot_latency` is exactly the penalized lattice's NLL and a weight w interpolates.

The permutation is scored from `surt_rnnt`'s pairwise NLL; the other terms recompute it under
stop_gradient (`channel_assignment`), so every term trains the same assignment.
"""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from jaxslu.registry import LOSSES


def _weighted_mean(values, weight):
    weight = weight.astype(jnp.float32)
    return jnp.sum(values * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def permutations(channels: int) -> np.ndarray:
    """All channel -> reference permutations [P, C] (identity first)."""
    return np.asarray(list(itertools.permutations(range(channels))), np.int32)


def pairwise_nll(batch, outputs, *, fastemit_lambda: float = 0.0, implementation=None,
                 activation: str = "tanh") -> jax.Array:
    """NLL of output channel c against reference stream r for every (c, r): [B, C, C] fp32.

    Padding rows (weight 0) give 0."""
    from jaxslu.losses.rnnt import fused_rnnt_loss

    enc, pred = outputs["encoder"], outputs["predictor"]  # [B, C, T, J], [B, C, U+1, J]
    b, c, t, j = enc.shape
    tokens, lengths = batch["tokens"], batch["token_lengths"]  # [B, C, U], [B, C]
    u = tokens.shape[-1]
    enc_p = jnp.broadcast_to(enc[:, :, None], (b, c, c, t, j)).reshape(b * c * c, t, j)
    pred_p = jnp.broadcast_to(pred[:, None], (b, c, c, u + 1, j)).reshape(b * c * c, u + 1, j)
    tok_p = jnp.broadcast_to(tokens[:, None], (b, c, c, u)).reshape(b * c * c, u)
    len_p = jnp.broadcast_to(lengths[:, None], (b, c, c)).reshape(b * c * c)
    frames = jnp.repeat(outputs["encoder_lengths"], c * c)
    nll = fused_rnnt_loss(enc_p, pred_p, outputs["joint_weight"], outputs["joint_bias"], tok_p,
                          frames, len_p, reduction="none", fastemit_lambda=fastemit_lambda,
                          activation=activation, implementation=implementation)
    nll = nll.reshape(b, c, c)
    return jnp.where(batch["weight"][:, None, None] > 0, nll, 0.0)


def permutation_costs(nll: jax.Array) -> jax.Array:
    """[B, P]: sum over channels c of nll[b, c, perm[c]] for every permutation."""
    perms = permutations(nll.shape[1])
    c = np.arange(nll.shape[1])
    return jnp.sum(nll[:, c[None, :], perms], axis=-1)


def channel_assignment(batch, outputs, **kwargs) -> jax.Array:
    """The trained permutation of each row [B, C] (reference stream of each output channel),
    argmin of the pairwise NLL's permutation costs, under stop_gradient."""
    c = outputs["encoder"].shape[1]
    b = outputs["encoder"].shape[0]
    if c == 1:
        return jnp.zeros((b, 1), jnp.int32)
    costs = permutation_costs(jax.lax.stop_gradient(pairwise_nll(batch, outputs, **kwargs)))
    return jnp.asarray(permutations(c))[jnp.argmin(costs, axis=1)]


def _gather_ref(x: jax.Array, perm: jax.Array) -> jax.Array:
    """x [B, C_ref, ...] reordered to output channels: out[b, c] = x[b, perm[b, c]]."""
    idx = perm.reshape(perm.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, jnp.broadcast_to(idx, perm.shape + x.shape[2:]), axis=1)


@LOSSES.register("surt_rnnt")
def surt_rnnt(*, fastemit_lambda: float = 0.0, implementation: str | None = None,
              activation: str = "tanh", normalize: str = "token"):
    """Permutation-invariant transducer loss over the output channels (see the module doc).

    normalize: "token" (sum over rows and channels / (tokens + 1 per stream)) or "sequence"
    (mean over rows of the summed channel NLL)."""
    if normalize not in ("token", "sequence"):
        raise ValueError(f"surt_rnnt option normalize={normalize!r}: use 'token' or 'sequence'")

    def term(batch, outputs, params):
        nll = pairwise_nll(batch, outputs, fastemit_lambda=fastemit_lambda,
                           implementation=implementation, activation=activation)
        costs = permutation_costs(nll)  # [B, P]
        best = jnp.argmin(jax.lax.stop_gradient(costs), axis=1)
        chosen = jnp.take_along_axis(costs, best[:, None], axis=1)[:, 0]
        w = batch["weight"].astype(jnp.float32)
        streams = jnp.sum(batch["token_lengths"] + 1, axis=1).astype(jnp.float32)
        per_token = jnp.sum(chosen * w) / jnp.maximum(jnp.sum(streams * w), 1.0)
        value = per_token if normalize == "token" else _weighted_mean(chosen, w)
        metrics = {"nll_per_token": per_token}
        if costs.shape[1] > 1:
            metrics["permuted_fraction"] = _weighted_mean((best != 0).astype(jnp.float32), w)
        return value, metrics

    return term


@LOSSES.register("speech_activity")
def speech_activity(*, implementation: str | None = None, activation: str = "tanh"):
    """Per-channel speech-activity BCE under the trained permutation (see the module doc)."""

    def term(batch, outputs, params):
        logits = outputs["activity_logits"].astype(jnp.float32)  # [B, C, T]
        perm = channel_assignment(batch, outputs, implementation=implementation,
                                  activation=activation)
        target = _gather_ref(batch["activity"].astype(jnp.float32), perm)
        t = logits.shape[-1]
        valid = (jnp.arange(t)[None, :] < outputs["encoder_lengths"][:, None]).astype(jnp.float32)
        mask = jnp.broadcast_to(
            valid[:, None, :] * batch["weight"].astype(jnp.float32)[:, None, None], logits.shape)
        bce = jnp.maximum(logits, 0) - logits * target + jnp.log1p(jnp.exp(-jnp.abs(logits)))
        denom = jnp.maximum(jnp.sum(mask), 1.0)
        acc = jnp.sum(mask * ((logits > 0) == (target > 0.5))) / denom
        return jnp.sum(bce * mask) / denom, {"frame_accuracy": acc}

    return term


def eot_penalty(eot_frame: jax.Array, num_frames: int, alpha: float, buffer: float) -> jax.Array:
    """[B, T, U+1]: the late penalty on emitting label u at frame t (0 where the label is not
    an <eot>, i.e. eot_frame[b, u] < 0; the last column, no label, is 0)."""
    t = jnp.arange(num_frames, dtype=jnp.float32)[None, :, None]
    end = eot_frame.astype(jnp.float32)[:, None, :]
    pen = jnp.where(end >= 0, jnp.maximum(0.0, alpha * (t - end - buffer)), 0.0)
    return jnp.concatenate([pen, jnp.zeros(pen.shape[:2] + (1,), pen.dtype)], axis=-1)


def penalized_nll(logits, labels, logit_lengths, label_lengths, penalty):
    """(NLL with emit log-probs reduced by `penalty` [B, T, U+1], plain NLL), each [B], by the
    autodiff lattice recursion (jaxslu.kernels.rnnt.reference)."""
    from jaxslu.kernels.rnnt.reference import alignment_log_likelihood, log_probs_blank_and_emit

    labels = labels.astype(jnp.int32)
    blank_lp, emit_lp = log_probs_blank_and_emit(logits, labels)
    ll_pen = alignment_log_likelihood(blank_lp, emit_lp - penalty, logit_lengths, label_lengths)
    ll = alignment_log_likelihood(blank_lp, emit_lp, logit_lengths, label_lengths)
    return -ll_pen, -ll


@LOSSES.register("eot_latency")
def eot_latency(*, alpha: float = 0.1, buffer: float = 4.0, implementation: str | None = None,
                activation: str = "tanh"):
    """End-of-turn late penalty (see the module doc): alpha per encoder frame of delay beyond
    `buffer` frames after the turn's end. Value: mean over real rows of the summed channel
    NLL_penalized - NLL, normalized like surt_rnnt's "token" (per token + 1 per stream)."""
    if alpha < 0 or buffer < 0:
        raise ValueError(f"eot_latency: alpha={alpha} and buffer={buffer} must be >= 0")

    def term(batch, outputs, params):
        from jaxslu.losses.terms import joint_logits

        perm = channel_assignment(batch, outputs, implementation=implementation,
                                  activation=activation)
        enc, pred = outputs["encoder"], outputs["predictor"]
        b, c, t, j = enc.shape
        tokens = _gather_ref(batch["tokens"], perm)
        lengths = _gather_ref(batch["token_lengths"], perm)
        ends = _gather_ref(batch["eot_frame"], perm)
        pred = _gather_ref(pred, perm)
        u = tokens.shape[-1]
        logits = joint_logits({"encoder": enc.reshape(b * c, t, j),
                               "predictor": pred.reshape(b * c, u + 1, j),
                               "joint_weight": outputs["joint_weight"],
                               "joint_bias": outputs["joint_bias"]}, activation)
        frames = jnp.maximum(jnp.repeat(outputs["encoder_lengths"], c), 1)  # padding rows
        pen = eot_penalty(ends.reshape(b * c, u), t, alpha, buffer)
        nll_pen, nll = penalized_nll(logits, tokens.reshape(b * c, u), frames,
                                     lengths.reshape(b * c), pen)
        w = jnp.repeat(batch["weight"].astype(jnp.float32), c)
        diff = jnp.where(w > 0, nll_pen - nll, 0.0)
        streams = (lengths.reshape(b * c) + 1).astype(jnp.float32)
        value = jnp.sum(diff * w) / jnp.maximum(jnp.sum(streams * w), 1.0)
        return value, {"penalty_per_stream": _weighted_mean(diff, w)}

    return term
