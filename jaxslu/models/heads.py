"""SLU heads on top of the transducer: utterance intent and per-token BIO slot tags.

Both read the encoder output projected to the joint dim ([B, T, J], the same array the joint
uses), so evaluation needs nothing beyond what `Transducer.encode` returns.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxslu.layers.core import Dense, length_mask
from jaxslu.layers.fusion import ContextFusion

_NEG = -1e30


class IntentHead(nnx.Module):
    """Masked additive-attention pooling over encoder frames, then a 2-layer MLP -> intents.

    Attention pooling (rather than mean pooling) lets the head pick the frames that carry the
    intent; frames at or beyond a row's length get zero weight, so padding never changes it.

    With `context_dim` > 0 the pooled vector is fused with the request's context vector
    (`ContextFusion`, jaxslu/layers/fusion.py) before the MLP, so the context can change which
    intent the same audio means; the fusion's output layer starts at zero.
    """

    def __init__(self, dim: int, num_intents: int, *, context_dim: int = 0, rngs: nnx.Rngs):
        self.score_hidden = Dense(dim, dim, rngs=rngs, axes=("embed", "mlp"))
        self.score = Dense(dim, 1, rngs=rngs, axes=("mlp", None), use_bias=False)
        self.hidden = Dense(dim, dim, rngs=rngs, axes=("embed", "mlp"))
        self.out = Dense(dim, num_intents, rngs=rngs, axes=("mlp", None))
        self.context = ContextFusion(dim, context_dim, rngs=rngs) if context_dim else None

    def __call__(self, enc: jax.Array, lengths: jax.Array,
                 context: jax.Array | None = None) -> jax.Array:
        scores = self.score(jnp.tanh(self.score_hidden(enc)))[..., 0]  # [B, T]
        scores = jnp.where(length_mask(lengths, enc.shape[1]), scores, _NEG)
        weights = jax.nn.softmax(scores, axis=-1)
        pooled = jnp.einsum("bt,btd->bd", weights, enc)
        if self.context is not None:
            pooled = self.context(pooled, context)
        return self.out(jax.nn.gelu(self.hidden(pooled)))


class SlotHead(nnx.Module):
    """BIO tag per output token from label-side states plus attention over the encoder.

    Query = the prediction network's state after token u (it has read the transcript up to and
    including u); it attends over the valid encoder frames (single head, scaled dot product), and
    [state, context] goes through a 2-layer MLP to tag logits. Tagging the transcript's tokens
    makes slot values spans of the decoded transcript, which is what SLURP's span-and-value SLU-F1
    scores, and reuses the transducer's label states instead of a second decoder.
    """

    def __init__(self, dim: int, num_tags: int, *, rngs: nnx.Rngs):
        self.query = Dense(dim, dim, rngs=rngs, axes=("embed", "mlp"))
        self.key = Dense(dim, dim, rngs=rngs, axes=("embed", "mlp"))
        self.hidden = Dense(2 * dim, dim, rngs=rngs, axes=("embed", "mlp"))
        self.out = Dense(dim, num_tags, rngs=rngs, axes=("mlp", None))

    def __call__(self, label_states: jax.Array, enc: jax.Array,
                 enc_lengths: jax.Array) -> jax.Array:
        q = self.query(label_states)  # [B, U, J]
        k = self.key(enc)  # [B, T, J]
        scores = jnp.einsum("bud,btd->but", q, k) / jnp.sqrt(jnp.float32(q.shape[-1]))
        scores = jnp.where(length_mask(enc_lengths, enc.shape[1])[:, None, :], scores, _NEG)
        context = jnp.einsum("but,btd->bud", jax.nn.softmax(scores, axis=-1), enc)
        h = jax.nn.gelu(self.hidden(jnp.concatenate([label_states, context], axis=-1)))
        return self.out(h)
