"""Multi-head self-attention with rotary position embeddings (RoPE), padding and causal masks.

Positions: rotary embeddings (Su et al., 2021) rotate queries and keys by their frame index, so
attention scores depend only on relative offsets. Chosen over Transformer-XL style relative
positions because it adds no parameters, no [T, T, D] position tensors and no extra matmuls,
works unchanged with a causal mask and extrapolates to utterance lengths not seen in training.

Masks: keys at or beyond a row's length are excluded (so padding never changes valid frames);
with `causal`, query t sees keys <= t only. Every query keeps at least key 0 (lengths >= 1), so
no softmax row is empty.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxslu.layers.core import Dense, dropout, length_mask

_NEG = -1e30


def rotary(x: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
    """Apply RoPE to x [B, T, H, Dh] (Dh even) at integer positions [T] (half-split layout)."""
    dh = x.shape[-1]
    if dh % 2:
        raise ValueError(f"rotary embeddings need an even head dim, got {dh}; pick dim/heads even")
    half = dh // 2
    freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[:, None] * freqs[None, :]  # [T, half]
    cos = jnp.cos(angles)[None, :, None, :]
    sin = jnp.sin(angles)[None, :, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def attention_mask(lengths: jax.Array, size: int, causal: bool) -> jax.Array:
    """[B, 1, T, T] bool: may query t attend to key s."""
    mask = length_mask(lengths, size)[:, None, None, :]
    if causal:
        mask = mask & jnp.tril(jnp.ones((size, size), bool))[None, None]
    return mask


class MultiHeadSelfAttention(nnx.Module):
    """x [B, T, D] -> [B, T, D].

    q/k/v kernels [D, D] with axes ("embed", "heads"), output kernel ("heads", "embed").
    """

    def __init__(self, dim: int, heads: int, *, dropout_rate: float = 0.0, rngs: nnx.Rngs):
        if dim % heads or (dim // heads) % 2:
            raise ValueError(f"encoder dim={dim} must be divisible by heads={heads} with an even "
                             "head dim (rotary positions rotate pairs of channels)")
        self.heads = heads
        self.dropout_rate = dropout_rate
        self.query = Dense(dim, dim, rngs=rngs, axes=("embed", "heads"))
        self.key = Dense(dim, dim, rngs=rngs, axes=("embed", "heads"))
        self.value = Dense(dim, dim, rngs=rngs, axes=("embed", "heads"))
        self.out = Dense(dim, dim, rngs=rngs, axes=("heads", "embed"))

    def __call__(self, x: jax.Array, lengths: jax.Array, *, causal: bool = False,
                 train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
        b, t, d = x.shape
        h = self.heads
        split = lambda y: y.reshape(b, t, h, d // h)
        pos = jnp.arange(t)
        q = rotary(split(self.query(x)), pos)
        k = rotary(split(self.key(x)), pos)
        v = split(self.value(x))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.float32(d // h))
        scores = jnp.where(attention_mask(lengths, t, causal), scores, _NEG)
        probs = jax.nn.softmax(scores, axis=-1)
        probs = dropout(probs, self.dropout_rate, train=train, rngs=rngs)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, d)
        return self.out(ctx)
