"""Convolutional time subsampling: stride-2 Conv2d layers over (time, mel), then a projection.

`factor` in {2, 4, 8} gives log2(factor) Conv2d(3x3, stride 2) + ReLU layers. In time each layer
pads 2 frames in total: both on the left when `causal` (output frame t then sees input frames
2t-2..2t only, so a causal encoder never looks ahead), one each side otherwise. Either way a
length L becomes ceil(L / 2) per layer (`subsampled_length`). Frames at or beyond a row's length
are zeroed before every convolution, so a row's valid outputs do not depend on how much padding
the batch added after it.

Each convolution is computed either by `lax.conv_general_dilated` or as one matrix product over
the nine strided 3x3 patches ("patches": im2col). Both give the same values (the same products,
summed in a different order). `conv_impl="auto"` picks patches on CPU, where XLA's convolution
(its backward especially) runs 3-4x slower than the matrix product at 64-144 channels, and the
convolution elsewhere (cuDNN / the TPU convolution units, and no 9x patch tensor in memory).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxslu.layers.core import Dense, length_mask, param

SUPPORTED_FACTORS = (2, 4, 8)
CONV_IMPLS = ("auto", "conv", "patches")


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
                 causal: bool = False, conv_impl: str = "auto", rngs: nnx.Rngs):
        if conv_impl not in CONV_IMPLS:
            raise ValueError(f"subsampling conv_impl={conv_impl!r}: use one of {CONV_IMPLS}")
        n = _num_layers(factor)
        channels = channels or dim
        self.factor = factor
        self.causal = causal
        self.conv_impl = conv_impl
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
        impl = self.conv_impl
        if impl == "auto":
            impl = "patches" if jax.default_backend() == "cpu" else "conv"
        for kernel, bias in zip(self.kernels, self.biases):
            x = jnp.where(length_mask(lengths, x.shape[1])[:, :, None, None], x, 0.0)
            x = conv3x3_stride2(x, kernel[...], time_pad, impl)
            x = jax.nn.relu(x + bias[...])
            lengths = (lengths + 1) // 2
        b, t, m, c = x.shape
        x = self.out(x.reshape(b, t, m * c))
        return x, lengths


def conv3x3_stride2(x: jax.Array, kernel: jax.Array, time_pad: tuple[int, int],
                    impl: str = "conv") -> jax.Array:
    """x [B, T, M, C] (NHWC) * kernel [3, 3, C, O] (HWIO), stride 2 in both axes, `time_pad`
    frames of zeros before/after in time and one mel bin each side: [B, T', M', O] with
    T' = (T + sum(time_pad) - 3) // 2 + 1 and M' = (M - 1) // 2 + 1."""
    if impl == "conv":
        return jax.lax.conv_general_dilated(x, kernel, window_strides=(2, 2),
                                            padding=(time_pad, (1, 1)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if impl != "patches":
        raise ValueError(f"conv impl {impl!r}: use 'conv' or 'patches'")
    b, t, m, c = x.shape
    t_out = (t + sum(time_pad) - 3) // 2 + 1
    m_out = (m - 1) // 2 + 1
    xp = jnp.pad(x, ((0, 0), time_pad, (1, 1), (0, 0)))
    taps = [jax.lax.slice(xp, (0, i, j, 0), (b, i + 2 * t_out - 1, j + 2 * m_out - 1, c),
                          (1, 2, 2, 1)) for i in range(3) for j in range(3)]
    patches = jnp.concatenate(taps, axis=-1)  # [B, T', M', 9C], tap-major like the kernel
    return patches @ kernel.reshape(9 * c, kernel.shape[-1])
