"""Loss terms of the NLU family. `intent_ce` and `slot_ce` are the shared terms of
`jaxslu.losses.terms` (same batch keys: `intent`, `slot_tags`; same outputs: `intent_logits`,
`slot_logits`); `domain_ce` is the domain (scenario) classifier's."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxslu.registry import LOSSES


@LOSSES.register("domain_ce")
def domain_ce(*, label_smoothing: float = 0.0):
    """Domain cross-entropy over examples that have a domain (domain >= 0)."""

    def term(batch, outputs, params):
        logits = outputs["domain_logits"].astype(jnp.float32)
        target = batch["domain"]
        valid = (target >= 0).astype(jnp.float32) * batch["weight"].astype(jnp.float32)
        onehot = jax.nn.one_hot(jnp.maximum(target, 0), logits.shape[-1])
        if label_smoothing:
            onehot = optax.smooth_labels(onehot, label_smoothing)
        ce = optax.softmax_cross_entropy(logits, onehot)
        acc = (jnp.argmax(logits, -1) == target).astype(jnp.float32)
        denom = jnp.maximum(jnp.sum(valid), 1.0)
        return jnp.sum(ce * valid) / denom, {"accuracy": jnp.sum(acc * valid) / denom}

    return term
