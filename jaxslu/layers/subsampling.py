"""Convolutional time subsampling: stride-2 Conv2d layers over (time, mel), then a projection.

`factor` in {2, 4, 8} gives log2(factor) Conv2d(3x3, stride 2) + ReLU layers. In time each layer
pads 2 frames in total: both on the left when `causal` (output frame t then sees input frames
2t-2..2t only, so a causal encoder never looks ahead), one each side otherwise. Either way a
length L becomes ceil(L / 2) per layer (`subsampled_length`). Frames at or beyond a row's length
are zeroed before every convolution, so a row's valid outputs do not depend on how much padding
the batch added after it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxslu.layers.core import Dense, length_mask, param

SUPPORTED_FACTORS = (2, 4, 8)


def subsampled_length(length, factor: int):
    """Valid frames after subsampling by `factor` (works on python ints and int arrays)."""
    for _ in range(_num_layers(factor)):
        length = (length + 1) // 2
    return length


def _num_layers(factor: int) -> int:
    if factor not in SUPPORTED_FACTORS:
        raise ValueError(f"encoder subsampling={factor} is not supported; use one of "
                         f"{SUPPORTED_FACTORS}")
    return {2: 1, 4: 2, 8: 3}[factor]


class ConvSubsampling(nnx.Module):
    """[B, T, M] features -> [B, ceil(T/factor), dim] (see the module docstring)."""

    def __init__(self, num_mels: int, dim: int, *, factor: int = 4, channels: int | None = None,
                 causal: bool = False, rngs: nnx.Rngs):
        n = _num_layers(factor)
        channels = channels or dim
        self.factor = factor
        self.causal = causal
        kernels = []
        cin = 1
        for _ in range(n):
            kernels.append(param(rngs, nnx.initializers.he_normal(in_axis=(0, 1, 2), out_axis=3),
                                 (3, 3, cin, channels), (None, None, "conv_in", "conv_out")))
            cin = channels
        self.kernels = nnx.List(kernels)
        self.biases = nnx.List([param(rngs, lambda k, s, d: jnp.zeros(s, d), (channels,),
                                      ("conv_out",)) for _ in range(n)])
        mels = num_mels
        for _ in range(n):
            mels = (mels + 1) // 2
        self.out = Dense(channels * mels, dim, rngs=rngs, axes=("conv_out", "embed"))

    def __call__(self, feats: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = feats[..., None]  # [B, T, M, 1] (NHWC)
        time_pad = (2, 0) if self.causal else (1, 1)
        for kernel, bias in zip(self.kernels, self.biases):
            x = jnp.where(length_mask(lengths, x.shape[1])[:, :, None, None], x, 0.0)
            x = jax.lax.conv_general_dilated(
                x, kernel[...], window_strides=(2, 2), padding=(time_pad, (1, 1)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"))
            x = jax.nn.relu(x + bias[...])
            lengths = (lengths + 1) // 2
        b, t, m, c = x.shape
        x = self.out(x.reshape(b, t, m * c))
        return x, lengths
