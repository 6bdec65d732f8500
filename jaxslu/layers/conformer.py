"""Conformer block (Gulati et al., 2020) without batch statistics.

    x = x + 1/2 FFN(x);  x = x + MHSA(x);  x = x + Conv(x);  x = x + 1/2 FFN(x);  y = LN(x)

Choices: the convolution module normalizes with LayerNorm, not BatchNorm, so the model holds no
batch statistics (train and eval behave the same, and per-row outputs do not depend on the rest of
the batch). Self-attention uses rotary positions (see `jaxslu.layers.attention`). With `causal`,
attention is masked to the past and the depthwise convolution is left-padded (kernel-1 frames of
history, no look-ahead), so frame t depends only on frames <= t. Padded frames are zeroed before
the depthwise convolution so that padding never leaks into valid frames.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxslu.layers.attention import MultiHeadSelfAttention
from jaxslu.layers.core import Dense, LayerNorm, dropout, length_mask, param


class FeedForward(nnx.Module):
    """LN -> Dense(D, ff_mult*D) -> swish -> dropout -> Dense(., D) -> dropout."""

    def __init__(self, dim: int, ff_mult: int, *, dropout_rate: float, rngs: nnx.Rngs):
        self.norm = LayerNorm(dim, rngs=rngs)
        self.up = Dense(dim, dim * ff_mult, rngs=rngs, axes=("embed", "mlp"))
        self.down = Dense(dim * ff_mult, dim, rngs=rngs, axes=("mlp", "embed"))
        self.dropout_rate = dropout_rate

    def __call__(self, x, *, train: bool, rngs: nnx.Rngs | None):
        y = dropout(jax.nn.swish(self.up(self.norm(x))), self.dropout_rate, train=train, rngs=rngs)
        return dropout(self.down(y), self.dropout_rate, train=train, rngs=rngs)


class ConvModule(nnx.Module):
    """LN -> pointwise (D->2D) -> GLU -> depthwise conv (K) -> LN -> swish -> pointwise ->
    dropout."""

    def __init__(self, dim: int, kernel_size: int, *, causal: bool, dropout_rate: float,
                 rngs: nnx.Rngs):
        if kernel_size < 1 or (not causal and kernel_size % 2 == 0):
            raise ValueError(f"conv_kernel={kernel_size}: use a positive odd size (a centred "
                             "non-causal kernel needs an odd size)")
        self.norm = LayerNorm(dim, rngs=rngs)
        self.pointwise_in = Dense(dim, 2 * dim, rngs=rngs, axes=("embed", "mlp"))
        self.depthwise = param(rngs, nnx.initializers.lecun_normal(in_axis=0, out_axis=2),
                               (kernel_size, 1, dim), (None, None, "conv_out"))
        self.depthwise_bias = param(rngs, lambda k, s, d: jnp.zeros(s, d), (dim,), ("conv_out",))
        self.conv_norm = LayerNorm(dim, rngs=rngs)
        self.pointwise_out = Dense(dim, dim, rngs=rngs, axes=("mlp", "embed"))
        self.kernel_size = kernel_size
        self.causal = causal
        self.dropout_rate = dropout_rate

    def __call__(self, x, lengths, *, train: bool, rngs: nnx.Rngs | None):
        y = jax.nn.glu(self.pointwise_in(self.norm(x)), axis=-1)
        y = jnp.where(length_mask(lengths, x.shape[1])[..., None], y, 0.0)
        k = self.kernel_size
        pad = (k - 1, 0) if self.causal else ((k - 1) // 2, (k - 1) // 2)
        y = jax.lax.conv_general_dilated(
            y, self.depthwise[...], window_strides=(1,), padding=(pad,),
            dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=x.shape[-1])
        y = jax.nn.swish(self.conv_norm(y + self.depthwise_bias[...]))
        return dropout(self.pointwise_out(y), self.dropout_rate, train=train, rngs=rngs)


class ConformerBlock(nnx.Module):
    """One Conformer block on x [B, T, D] with valid lengths [B]."""

    def __init__(self, dim: int, heads: int, *, ff_mult: int = 4, conv_kernel: int = 15,
                 dropout_rate: float = 0.1, causal: bool = False, rngs: nnx.Rngs):
        self.ff1 = FeedForward(dim, ff_mult, dropout_rate=dropout_rate, rngs=rngs)
        self.attn_norm = LayerNorm(dim, rngs=rngs)
        self.attn = MultiHeadSelfAttention(dim, heads, dropout_rate=dropout_rate, rngs=rngs)
        self.conv = ConvModule(dim, conv_kernel, causal=causal, dropout_rate=dropout_rate,
                               rngs=rngs)
        self.ff2 = FeedForward(dim, ff_mult, dropout_rate=dropout_rate, rngs=rngs)
        self.final_norm = LayerNorm(dim, rngs=rngs)
        self.causal = causal
        self.dropout_rate = dropout_rate

    def __call__(self, x, lengths, *, train: bool = False, rngs: nnx.Rngs | None = None):
        x = x + 0.5 * self.ff1(x, train=train, rngs=rngs)
        a = self.attn(self.attn_norm(x), lengths, causal=self.causal, train=train, rngs=rngs)
        x = x + dropout(a, self.dropout_rate, train=train, rngs=rngs)
        x = x + self.conv(x, lengths, train=train, rngs=rngs)
        x = x + 0.5 * self.ff2(x, train=train, rngs=rngs)
        return self.final_norm(x)
