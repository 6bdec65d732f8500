"""Fusion of a side-input vector (the request's context) with a pooled utterance vector.

`ContextFusion(dim, context_dim)`: u' = u + W2 gelu(W1 [u; gelu(Wc c)]), c [B, C] the context
vector (jaxslu/context/features.py), u [B, D] the pooled utterance. The fusion is nonlinear in
(u, c), so a context can change what an utterance means rather than only shift a prior over
intents. W2 starts at zero, so a model starts as the model without the context. Used by the text
NLU model (jaxslu/nlu/models.py) and by the transducer's intent head (jaxslu/models/heads.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxslu.layers.core import Dense


class ContextFusion(nnx.Module):
    def __init__(self, dim: int, context_dim: int, *, rngs: nnx.Rngs):
        if context_dim < 1:
            raise ValueError(f"ContextFusion: context_dim={context_dim} must be >= 1")
        self.context_dim = int(context_dim)
        self.context_proj = Dense(self.context_dim, dim, rngs=rngs, axes=(None, "embed"))
        self.fuse_in = Dense(2 * dim, dim, rngs=rngs, axes=("embed", "mlp"))
        self.fuse_out = Dense(dim, dim, rngs=rngs, axes=("mlp", "embed"),
                              kernel_init=nnx.initializers.zeros)

    def __call__(self, pooled: jax.Array, context: jax.Array | None) -> jax.Array:
        if context is None:
            raise ValueError(f"the model takes a context input ({self.context_dim} features) "
                             "but the batch has no 'context'; set task_options.context "
                             "('input', or 'blind' for zeros)")
        if context.shape != (pooled.shape[0], self.context_dim):
            raise ValueError(f"context has shape {tuple(context.shape)}; the model expects "
                             f"[{pooled.shape[0]}, {self.context_dim}] (the run's context.json "
                             "schema)")
        ctx = jax.nn.gelu(self.context_proj(context.astype(pooled.dtype)))
        hidden = jax.nn.gelu(self.fuse_in(jnp.concatenate([pooled, ctx], axis=-1)))
        return pooled + self.fuse_out(hidden)
