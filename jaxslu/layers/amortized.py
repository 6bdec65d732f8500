"""Compute-cost amortization (Xie et al., "Compute Cost Amortized Transformer for Streaming ASR", Interspeech 2022): arbitrators that switch sub-components per frame.

An arbitrator is a small MLP on a sub-component's input that emits one logit per frame; the gate
multiplies the sub-component's residual branch (`x + gate * branch(x)`), so a gate of 0 means the
branch contributes nothing and need not be computed.

Design choices (open in the paper, fixed here):
  * Relaxation: binary hard Gumbel-softmax with straight-through gradients. With two classes
    (on, off) and logits (l, 0), Gumbel-softmax equals `sigmoid((l + L) / tau)` with L ~ Logistic(0,
    1) (the difference of two Gumbels), so one logit per frame suffices. The forward value is the
    hard decision `1[l + L > 0]` (exactly 0.0 or 1.0: written as `soft - stop_gradient(soft) +
    hard`, whose forward is `0 + hard` with no rounding), the gradient is that of `soft`.
    At inference (`train=False` or no `rngs`) the gate is the deterministic `1[l > 0]`.
  * Each sub-component has its own arbitrator looking at that sub-component's input (the attention
    gate sees the block input, the feed-forward gate the residual stream after attention), i.e.
    the "optionally intermediate outputs" variant: the FFN decision knows what attention did.
  * Arbitrator biases start at `init_bias` (default 3: P(on) = 0.95), so training starts from an
    almost dense model and the compute cost term pushes gates off.
  * Activity is recorded as a typed `GateActivity` intermediate (a subclass of `nnx.Intermediate`,
    popped by the train step and read by the `compute_cost` loss term through
    `jaxslu.losses.intermediates_of`). Its value is a dict (not a tuple, which `intermediates_of`
    would splice) with one entry per gated component, `{"gate", "flops", "valid"}` arrays [B, T]:
    the (straight-through) gate, the FLOPs the component costs on that frame when it runs, and the
    frame validity (1 inside the row's length); plus `"fixed"`: FLOPs per frame that no gate can
    skip (key/value projections, the arbitrators themselves).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxslu.layers.core import Dense, stream_key


class GateActivity(nnx.Intermediate):
    """Per-frame gate values, masks and FLOPs of the gated sub-components of one block."""


def hard_gumbel_gate(logits: jax.Array, *, key: jax.Array | None = None,
                     temperature: float = 1.0) -> jax.Array:
    """Hard 0/1 gates with straight-through gradients of the binary Gumbel-softmax relaxation.

    logits [...]: the arbitrator's "on" logit. key: a PRNG key for the logistic noise, None for
    the deterministic decision (inference). The returned values are exactly 0.0 or 1.0; their
    gradient with respect to `logits` is that of `sigmoid((logits + noise) / temperature)`.
    """
    if temperature <= 0:
        raise ValueError(f"gate temperature={temperature} must be > 0")
    z = logits if key is None else logits + jax.random.logistic(key, logits.shape, logits.dtype)
    soft = jax.nn.sigmoid(z / temperature)
    hard = (z > 0).astype(soft.dtype)
    return soft - jax.lax.stop_gradient(soft) + hard


class Arbitrator(nnx.Module):
    """Frame-wise on/off decision: Dense(D, hidden) -> swish -> Dense(hidden, 1) -> hard gate."""

    def __init__(self, dim: int, hidden: int, *, init_bias: float = 3.0,
                 temperature: float = 1.0, rngs: nnx.Rngs):
        if hidden < 1:
            raise ValueError(f"arbitrator hidden size {hidden} must be >= 1")
        self.hidden_layer = Dense(dim, hidden, rngs=rngs, axes=("embed", None))
        self.out = Dense(hidden, 1, rngs=rngs, axes=(None, None),
                         kernel_init=nnx.initializers.normal(1e-2))
        self.out.bias = nnx.Param(jnp.full((1,), init_bias, jnp.float32), logical_axes=(None,))
        self.temperature = temperature
        self.dim, self.hidden = dim, hidden

    def logits(self, x: jax.Array) -> jax.Array:
        """x [B, T, D] -> on-logit [B, T]."""
        return self.out(jax.nn.swish(self.hidden_layer(x)))[..., 0]

    def __call__(self, x: jax.Array, *, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
        """Hard gates [B, T]: noisy straight-through samples when training with `rngs` (the
        noise key comes from the `dropout` stream, so gates need no extra RNG stream), the
        deterministic decision otherwise."""
        key = stream_key(rngs, "dropout") if (train and rngs is not None) else None
        return hard_gumbel_gate(self.logits(x), key=key, temperature=self.temperature)

    def flops_per_frame(self) -> int:
        """Multiply-add FLOPs of one decision."""
        return 2 * (self.dim * self.hidden + self.hidden)


def component_record(gate: jax.Array, flops: jax.Array, valid: jax.Array) -> dict[str, jax.Array]:
    """One component's entry of a GateActivity value (all [B, T] float32, gate masked by valid)."""
    valid = valid.astype(jnp.float32)
    return {"gate": gate.astype(jnp.float32) * valid,
            "flops": jnp.broadcast_to(jnp.asarray(flops, jnp.float32), valid.shape),
            "valid": valid}


def executed_and_dense_flops(activities: list[dict[str, Any]],
                             weight: jax.Array | None = None) -> dict[str, jax.Array]:
    """Sum the recorded activity: executed and dense FLOPs, gated only and including fixed costs.

    activities: GateActivity values (see the module docstring). weight [B]: per-row weight (0 for
    padding rows); None counts every row. Returns scalars `gated_executed`, `gated_dense`,
    `fixed`, and per-component `rate/<name>` (fraction of valid frames switched on) and
    `executed/<name>`, `dense/<name>` FLOPs.
    """
    out: dict[str, jax.Array] = {"gated_executed": jnp.float32(0), "gated_dense": jnp.float32(0),
                                 "fixed": jnp.float32(0)}
    on: dict[str, jax.Array] = {}
    frames: dict[str, jax.Array] = {}
    for act in activities:
        for name, rec in act.items():
            if name == "fixed":
                continue
            w = rec["valid"] if weight is None else rec["valid"] * weight[:, None]
            ex = jnp.sum(rec["gate"] * rec["flops"] * w)
            de = jnp.sum(rec["flops"] * w)
            out["gated_executed"] += ex
            out["gated_dense"] += de
            out[f"executed/{name}"] = out.get(f"executed/{name}", 0.0) + ex
            out[f"dense/{name}"] = out.get(f"dense/{name}", 0.0) + de
            on[name] = on.get(name, 0.0) + jnp.sum(rec["gate"] * w)
            frames[name] = frames.get(name, 0.0) + jnp.sum(w)
        if "fixed" in act:
            rec = act["fixed"]
            w = rec["valid"] if weight is None else rec["valid"] * weight[:, None]
            out["fixed"] += jnp.sum(rec["flops"] * w)
    for name in on:
        out[f"rate/{name}"] = on[name] / jnp.maximum(frames[name], 1.0)
    return out
