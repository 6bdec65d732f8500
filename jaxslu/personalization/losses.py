"""Loss terms of the personalization family."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxslu.registry import LOSSES


def sequence_ce_value(logits, label, scored, weight, label_smoothing: float = 0.0):
    """Mean cross-entropy over scored positions with a known label (label >= 0) of real rows:
    logits [B, T, K], label [B, T], scored [B, T], weight [B]."""
    logits = logits.astype(jnp.float32)
    valid = (label >= 0).astype(jnp.float32) * scored.astype(jnp.float32) \
        * weight.astype(jnp.float32)[:, None]
    logp = jax.nn.log_softmax(logits, axis=-1)
    tgt = jnp.maximum(label, 0)
    nll = -jnp.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(logp, axis=-1)
    denom = jnp.maximum(jnp.sum(valid), 1.0)
    acc = (jnp.argmax(logits, -1) == label).astype(jnp.float32)
    return jnp.sum(nll * valid) / denom, {"accuracy": jnp.sum(acc * valid) / denom}


@LOSSES.register("sequence_ce")
def sequence_ce(*, label_smoothing: float = 0.0):
    """Next-event cross-entropy at every scored position (`outputs["logits"]` [B, T, K])."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"loss_options.sequence_ce.label_smoothing={label_smoothing} must be "
                         "in [0, 1)")

    def term(batch, outputs, params):
        return sequence_ce_value(outputs["logits"], batch["label"], batch["scored"],
                                 batch["weight"], label_smoothing)

    return term
