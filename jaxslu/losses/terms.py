"""Built-in loss terms: transducer (RNN-T, plain or fused with the joint), CTC, intent and slot
cross-entropy. Each factory takes the term's options from `loss_options[<name>]` in the config
and returns `term(batch, outputs, params) -> (scalar, metrics)`.

Normalization: every term averages over the real examples of the batch (`batch["weight"]`), so
padding rows contribute nothing and the value does not depend on how a batch was padded.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxslu.registry import LOSSES

_ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu, "gelu": jax.nn.gelu, "swish": jax.nn.swish}


def _weighted_mean(values, weight):
    weight = weight.astype(jnp.float32)
    return jnp.sum(values * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def joint_logits(outputs: dict[str, Any], activation: str = "tanh") -> jax.Array:
    """Materialize the joint's logits [B, T, U+1, V] (fp32) from the transducer's outputs.

    Computed in fp32 whatever the outputs' dtype, like the fused loss's joint (kernels/rnnt/fused.py
    casts its inputs up), so fused=True and fused=False see the same logits.
    """
    act = _ACTIVATIONS[activation]
    f32 = jnp.float32
    hidden = act(outputs["encoder"].astype(f32)[:, :, None, :]
                 + outputs["predictor"].astype(f32)[:, None, :, :])
    return hidden @ outputs["joint_weight"].astype(f32) + outputs["joint_bias"].astype(f32)


@LOSSES.register("rnnt")
def rnnt(*, implementation: str | None = None, fused: bool = False, fastemit_lambda: float = 0.0,
         clamp: float | None = None, normalize: str = "sequence", activation: str = "tanh",
         blank: int = 0):
    """RNN-T negative log-likelihood.

    implementation: None (best for the backend, safe: see jaxslu.kernels.rnnt.api), "xla",
      "pallas", or "reference" (the pure-JAX autodiff definition; slow, for checking). Every
      option is honoured by every implementation or refused here: "reference" has no gradient
      clamp, so clamp with it raises.
    fused: compute the joint's output layer inside the loss (never materializes [B,T,U+1,V]);
      fastemit_lambda and clamp apply to it exactly as to the unfused loss.
    normalize: "sequence" (mean over utterances) or "token" (sum over utterances divided by the
      number of target tokens plus one per utterance).
    Padding rows (batch weight 0) contribute exactly 0, whatever their loss; a real row whose
    traced lengths or labels are invalid gives a non-finite value (+inf for zero frames, NaN
    otherwise), so the train step's finiteness check skips the update.
    """
    if normalize not in ("sequence", "token"):
        raise ValueError(f"rnnt option normalize={normalize!r}: use 'sequence' or 'token'")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"rnnt option activation={activation!r}: use one of {sorted(_ACTIVATIONS)}")
    if implementation not in (None, "xla", "pallas", "reference"):
        raise ValueError(f"rnnt option implementation={implementation!r}: use None, 'xla', "
                         "'pallas' or 'reference'")
    if implementation == "reference" and clamp is not None:
        raise ValueError("rnnt: implementation='reference' cannot apply clamp (it differentiates "
                         "the definition by autodiff); use 'xla' or 'pallas', or drop clamp")

    def term(batch, outputs, params):
        labels = batch["tokens"]
        label_lengths = batch["token_lengths"]
        logit_lengths = outputs["encoder_lengths"]
        if fused:
            from jaxslu.losses.rnnt import fused_rnnt_loss
            per_seq = fused_rnnt_loss(
                outputs["encoder"], outputs["predictor"], outputs["joint_weight"],
                outputs["joint_bias"], labels, logit_lengths, label_lengths, blank=blank,
                reduction="none", fastemit_lambda=fastemit_lambda, clamp=clamp,
                activation=activation, implementation=implementation)
        else:
            from jaxslu.losses.rnnt import rnnt_loss
            per_seq = rnnt_loss(joint_logits(outputs, activation), labels, logit_lengths,
                                label_lengths, blank=blank, reduction="none",
                                fastemit_lambda=fastemit_lambda, clamp=clamp,
                                implementation=implementation)
        w = batch["weight"].astype(jnp.float32)
        per_seq = jnp.where(w > 0, per_seq, 0.0)  # padding rows: never inf * 0 = NaN
        if normalize == "sequence":
            value = _weighted_mean(per_seq, w)
        else:
            value = jnp.sum(per_seq * w) / jnp.maximum(
                jnp.sum((label_lengths + 1) * w), 1.0)
        per_token = jnp.sum(per_seq * w) / jnp.maximum(jnp.sum((label_lengths + 1) * w), 1.0)
        return value, {"nll_per_token": per_token}

    return term


@LOSSES.register("ctc")
def ctc(*, blank: int = 0):
    """CTC on the encoder's CTC head (optax.ctc_loss), mean over utterances."""

    def term(batch, outputs, params):
        logits = outputs["ctc_logits"].astype(jnp.float32)
        T = logits.shape[1]
        U = batch["tokens"].shape[1]
        logit_pad = (jnp.arange(T)[None] >= outputs["encoder_lengths"][:, None]).astype(jnp.float32)
        label_pad = (jnp.arange(U)[None] >= batch["token_lengths"][:, None]).astype(jnp.float32)
        per_seq = optax.ctc_loss(logits, logit_pad, batch["tokens"], label_pad, blank_id=blank)
        return _weighted_mean(per_seq, batch["weight"]), {}

    return term


def utterance_ce(logits_key: str, target_key: str, label_smoothing: float = 0.0):
    """Cross-entropy of one label per utterance (`outputs[logits_key]` [B, K] against
    `batch[target_key]` [B], -1 = no label), mean over the labelled real rows; with accuracy."""

    def term(batch, outputs, params):
        logits = outputs[logits_key].astype(jnp.float32)
        target = batch[target_key]
        valid = (target >= 0).astype(jnp.float32) * batch["weight"].astype(jnp.float32)
        onehot = jax.nn.one_hot(jnp.maximum(target, 0), logits.shape[-1])
        if label_smoothing:
            onehot = optax.smooth_labels(onehot, label_smoothing)
        ce = optax.softmax_cross_entropy(logits, onehot)
        acc = (jnp.argmax(logits, -1) == target).astype(jnp.float32)
        return _weighted_mean(ce, valid), {"accuracy": _weighted_mean(acc, valid)}

    return term


@LOSSES.register("intent_ce")
def intent_ce(*, label_smoothing: float = 0.0):
    """Intent cross-entropy over examples that have an intent (intent >= 0)."""
    return utterance_ce("intent_logits", "intent", label_smoothing)


@LOSSES.register("slot_ce")
def slot_ce(*, label_smoothing: float = 0.0):
    """Slot-tag (BIO over output tokens) cross-entropy, mean over real tokens."""

    def term(batch, outputs, params):
        logits = outputs["slot_logits"].astype(jnp.float32)
        tags = batch["slot_tags"]
        valid = (tags >= 0).astype(jnp.float32) * batch["weight"].astype(jnp.float32)[:, None]
        onehot = jax.nn.one_hot(jnp.maximum(tags, 0), logits.shape[-1])
        if label_smoothing:
            onehot = optax.smooth_labels(onehot, label_smoothing)
        ce = optax.softmax_cross_entropy(logits, onehot)
        acc = (jnp.argmax(logits, -1) == tags).astype(jnp.float32)
        denom = jnp.maximum(jnp.sum(valid), 1.0)
        return jnp.sum(ce * valid) / denom, {"tag_accuracy": jnp.sum(acc * valid) / denom}

    return term


@LOSSES.register("anchor_l2")
def anchor_l2(*, pattern: str = "", name: str = "anchor_l2"):
    """L2 distance to the parameters the run started from (L2-SP: Li, Grandvalet and Davoine,
    "Explicit Inductive Bias for Transfer Learning with Convolutional Networks", ICML 2018):
    sum over the matched parameters of (theta - theta_0)^2 / 2, theta_0 frozen at the start of
    the run (after a warm start or a pretrained encoder was loaded). `pattern`: a regular
    expression on parameter paths (default: all). The anchors are the term's constants; EWC is
    the same with Fisher weights.
    """
    import re

    from jaxslu.train.state import param_path

    pat = re.compile(pattern) if pattern else None

    def select(params):
        flat = jax.tree_util.tree_flatten_with_path(params)[0]
        return {param_path(p): v for p, v in flat if pat is None or pat.search(param_path(p))}

    def term(batch, outputs, params):
        anchors = outputs["constants"][name]
        current = select(params)
        total = sum(jnp.sum(jnp.square(current[k].astype(jnp.float32) - a.astype(jnp.float32)))
                    for k, a in anchors.items())
        return 0.5 * jnp.asarray(total, jnp.float32), {}

    def init_constants(params):
        chosen = select(params)
        if not chosen:
            raise ValueError(f"anchor_l2: pattern {pattern!r} matches no parameter")
        return chosen

    term.init_constants = init_constants
    return term
