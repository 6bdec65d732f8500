"""Loss terms of the discovery family.

`pairwise_margin`: a margin loss on pairs of labeled utterances in the batch (Hadsell, Chopra and
LeCun, "Dimensionality Reduction by Learning an Invariant Mapping", CVPR 2006, on cosine
distances): with d_ij = 1 - cos(e_i, e_j) over the L2-normalized `embedding`,

    positive pair (same intent):       relu(d_ij - positive_margin)^2
    negative pair (different intents): relu(negative_margin - d_ij)^2

so same-intent utterances come within `positive_margin` and different intents stay at least
`negative_margin` apart. Mining (`mining`):
  * "hard" (default): batch-hard (Hermans, Beyer and Leibe, "In Defense of the Triplet Loss for
    Person Re-Identification", 2017): each anchor keeps its farthest positive and its nearest
    negative; the term is the mean over anchors of the two squared hinges;
  * "all": every pair, the mean over the pairs that violate their margin (active pairs), so the
    many easy negatives do not dilute the gradient.
Rows with `intent` < 0 or weight 0 are in no pair. The batch must hold several rows per intent
(the discovery task's grouped batches do).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxslu.registry import LOSSES


def pair_masks(labels: jax.Array, weight: jax.Array):
    valid = (labels >= 0) & (weight > 0)
    both = valid[:, None] & valid[None, :]
    eye = jnp.eye(labels.shape[0], dtype=bool)
    same = (labels[:, None] == labels[None, :]) & both & ~eye
    diff = (labels[:, None] != labels[None, :]) & both
    return same, diff


@LOSSES.register("pairwise_margin")
def pairwise_margin(*, positive_margin: float = 0.2, negative_margin: float = 0.6,
                    mining: str = "hard", embedding_key: str = "embedding",
                    label_key: str = "intent"):
    if mining not in ("hard", "all"):
        raise ValueError(f"pairwise_margin mining={mining!r}: use 'hard' or 'all'")
    if not 0.0 <= positive_margin < negative_margin:
        raise ValueError(f"pairwise_margin needs 0 <= positive_margin ({positive_margin}) < "
                         f"negative_margin ({negative_margin})")

    def term(batch, outputs, params):
        e = outputs[embedding_key].astype(jnp.float32)
        same, diff = pair_masks(batch[label_key], batch["weight"])
        d = 1.0 - e @ e.T
        pos = jnp.square(jax.nn.relu(d - positive_margin))
        neg = jnp.square(jax.nn.relu(negative_margin - d))
        if mining == "hard":
            has_pos = jnp.any(same, axis=1)
            has_neg = jnp.any(diff, axis=1)
            hard_pos = jnp.max(jnp.where(same, pos, 0.0), axis=1)
            hard_neg = jnp.max(jnp.where(diff, neg, 0.0), axis=1)
            value = (jnp.sum(hard_pos) / jnp.maximum(jnp.sum(has_pos), 1)
                     + jnp.sum(hard_neg) / jnp.maximum(jnp.sum(has_neg), 1))
        else:
            act_pos = same & (pos > 0)
            act_neg = diff & (neg > 0)
            value = (jnp.sum(jnp.where(act_pos, pos, 0.0)) / jnp.maximum(jnp.sum(act_pos), 1)
                     + jnp.sum(jnp.where(act_neg, neg, 0.0)) / jnp.maximum(jnp.sum(act_neg), 1))
        n_same = jnp.maximum(jnp.sum(same), 1)
        n_diff = jnp.maximum(jnp.sum(diff), 1)
        metrics = {"positive_distance": jnp.sum(jnp.where(same, d, 0.0)) / n_same,
                   "negative_distance": jnp.sum(jnp.where(diff, d, 0.0)) / n_diff,
                   "active_negatives": jnp.sum(diff & (neg > 0)) / n_diff}
        return value, metrics

    return term
