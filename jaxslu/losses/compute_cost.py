"""The `compute_cost` loss term of the compute-cost amortized Transformer (Xie et al., "Compute Cost Amortized Transformer for Streaming ASR", Interspeech 2022).

    relative = sum_{blocks, components, frames} gate * FLOPs(component, frame)
               / sum_{blocks, components, frames} FLOPs(component, frame)

over the valid frames of the real rows (`batch["weight"]`), from the `GateActivity`
intermediates the gated blocks record (jaxslu.layers.amortized). Only gateable FLOPs enter, so
the value is 0 with every gate off and 1 with every gate on; FLOPs no gate can skip (key/value
projections, the arbitrators) are logged as `fixed_fraction` but not penalized. The attention
FLOPs of a frame grow with the keys it sees, so skipping attention late in a long utterance saves
more than early on, and the term weights the gates accordingly.

With `target` > 0 the term is `max(relative - target, 0)`: compute is penalized only above the
target rate (a budget rather than a pressure towards zero). The gates are straight-through hard
samples, so the gradient reaches the arbitrators as `FLOPs / dense FLOPs` per gate.

Metrics: `relative_compute` (gated FLOPs executed / dense), `relative_compute_total` (including
the fixed cost in numerator and denominator), `rate/<component>` (fraction of valid frames whose
component ran) and `fixed_fraction`.
"""
from __future__ import annotations

import jax.numpy as jnp

from jaxslu.layers.amortized import GateActivity, executed_and_dense_flops
from jaxslu.losses.base import intermediates_of
from jaxslu.registry import LOSSES


@LOSSES.register("compute_cost")
def compute_cost(*, target: float = 0.0):
    """FLOPs-weighted gate activity normalized by the dense FLOPs (see the module docstring).

    target: rate in [0, 1) below which compute is free (0: always penalized).
    """
    if not 0.0 <= target < 1.0:
        raise ValueError(f"compute_cost option target={target} must be in [0, 1)")

    def term(batch, outputs, params):
        activities = intermediates_of(outputs, GateActivity)
        if not activities:
            raise ValueError("loss term compute_cost found no GateActivity intermediates: the "
                             "model has no gated blocks. Use a streaming_transducer with "
                             "model.encoder.arbitrator_hidden > 0, or drop compute_cost from "
                             "the loss")
        weight = batch.get("weight")
        sums = executed_and_dense_flops(activities, None if weight is None
                                        else jnp.asarray(weight, jnp.float32))
        dense = jnp.maximum(sums["gated_dense"], 1.0)
        relative = sums["gated_executed"] / dense
        value = jnp.maximum(relative - target, 0.0) if target > 0 else relative
        total_dense = jnp.maximum(sums["gated_dense"] + sums["fixed"], 1.0)
        metrics = {"relative_compute": relative,
                   "relative_compute_total": (sums["gated_executed"] + sums["fixed"]) / total_dense,
                   "fixed_fraction": sums["fixed"] / total_dense}
        metrics.update({k: v for k, v in sums.items() if k.startswith("rate/")})
        return value, metrics

    return term
