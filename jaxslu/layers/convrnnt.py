"""ConvRNN-T front end (Radfar et al., "ConvRNN-T: Convolutional Augmented Recurrent Neural Network Transducers for Streaming Speech Recognition", Interspeech 2022): causal local and global CNNs whose
outputs, concatenated on the feature axis, feed the transducer's LSTM encoder.

    log-mel [B, F, M] --stack s frames--> [B, F/s, M, s]
        local CNN : 2-D convs over (time, mel), causal in time, stride `local_freq_stride` in mel
        global CNN: Dense(M*s -> G), then residual blocks
                    LN -> pointwise (G->E) -> causal depthwise conv (kernel k, dilation 2^i) ->
                    swish -> pointwise (E->G) -> causal squeeze-and-excitation -> + residual
        concat(flatten(local), global) -> LN -> Dense(-> dim)           [B, F/s, dim]

Design choices:
  * Time reduction by stacking: the s = `factor` feature frames of each output frame become the
    input channels of the first 2-D conv (and the input of the global CNN), so both CNNs run at
    the encoder frame rate (s times cheaper than at 10 ms) and the time-frequency structure is
    kept for the local CNN. Output length ceil(F / s), as `subsampled_length`. Output frame t sees
    feature frames up to s*t + s - 1: streaming chunks are whole multiples of s frames.
  * Causal squeeze-and-excitation (the open choice): the squeeze at frame t is the CUMULATIVE mean
    of the block output over valid frames 0..t (not the whole-utterance mean of the public
    re-implementations), so no frame depends on the future; streaming carries the running sum and
    count. Padded frames never enter the mean.
  * A LayerNorm at the input of every global block (the blocks are residual; the norm keeps the
    residual stream's scale stable without batch statistics, which jaxslu models do not hold).
  * Offline and streamed computation share one code path: every causal convolution reads its
    left context from a cache (zeros at the start, which is exactly causal zero padding), and the
    offline call is one chunk holding the whole utterance. Frames at or past a row's length are
    zeroed before every convolution, so padding never leaks into valid frames.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxslu.layers.core import Dense, LayerNorm, length_mask, param

FrontendState = dict[str, Any]


def _zeros(key, shape, dtype):
    return jnp.zeros(shape, dtype)


def causal_depthwise(x: jax.Array, cache: jax.Array, kernel: jax.Array, bias: jax.Array,
                     dilation: int) -> tuple[jax.Array, jax.Array]:
    """Causal dilated depthwise conv of x [B, T, C] with left context cache [B, (k-1)*d, C];
    kernel [k, 1, C]. Returns (y [B, T, C], new cache = the last (k-1)*d input frames)."""
    cat = jnp.concatenate([cache, x], axis=1)
    y = jax.lax.conv_general_dilated(
        cat, kernel, window_strides=(1,), padding=((0, 0),), rhs_dilation=(dilation,),
        dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=x.shape[-1])
    return y + bias, cat[:, cat.shape[1] - cache.shape[1]:]


class GlobalBlock(nnx.Module):
    """One residual block of the global CNN (see the module docstring)."""

    def __init__(self, channels: int, expansion: int, kernel: int, dilation: int,
                 se_reduction: int, *, rngs: nnx.Rngs):
        inner = channels * expansion
        self.norm = LayerNorm(channels, rngs=rngs)
        self.pointwise_in = Dense(channels, inner, rngs=rngs, axes=("embed", "mlp"))
        self.depthwise = param(rngs, nnx.initializers.lecun_normal(in_axis=0, out_axis=2),
                               (kernel, 1, inner), (None, None, "conv_out"))
        self.depthwise_bias = param(rngs, _zeros, (inner,), ("conv_out",))
        self.pointwise_out = Dense(inner, channels, rngs=rngs, axes=("mlp", "embed"))
        squeeze = max(1, channels // se_reduction)
        self.se_down = Dense(channels, squeeze, rngs=rngs, axes=("embed", None))
        self.se_up = Dense(squeeze, channels, rngs=rngs, axes=(None, "embed"))
        self.kernel, self.dilation, self.inner, self.channels = kernel, dilation, inner, channels

    def init_state(self, batch: int) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(depthwise cache [B, (k-1)*d, E], SE running sum [B, G], SE valid count [B])."""
        return (jnp.zeros((batch, (self.kernel - 1) * self.dilation, self.inner), jnp.float32),
                jnp.zeros((batch, self.channels), jnp.float32), jnp.zeros((batch,), jnp.float32))

    def __call__(self, x: jax.Array, valid: jax.Array, state):
        cache, se_sum, se_count = state
        validf = valid.astype(jnp.float32)[..., None]
        h = self.pointwise_in(self.norm(x)) * validf
        h, cache = causal_depthwise(h, cache, self.depthwise[...], self.depthwise_bias[...],
                                    self.dilation)
        y = self.pointwise_out(jax.nn.swish(h))
        csum = se_sum[:, None, :] + jnp.cumsum(y * validf, axis=1)
        ccount = se_count[:, None] + jnp.cumsum(validf[..., 0], axis=1)
        mean = csum / jnp.maximum(ccount, 1.0)[..., None]
        excite = jax.nn.sigmoid(self.se_up(jax.nn.swish(self.se_down(mean))))
        return x + y * excite, (cache, csum[:, -1], ccount[:, -1])


class ConvRNNTFrontend(nnx.Module):
    """log-mel [B, F, M] -> [B, ceil(F/factor), dim] (same call signature as ConvSubsampling)."""

    def __init__(self, num_mels: int, dim: int, *, factor: int = 4,
                 local_channels: tuple[int, ...] = (100, 100, 64, 64),
                 local_kernel: tuple[int, int] = (5, 5), local_freq_stride: int = 2,
                 global_channels: int = 256, global_blocks: int = 6, global_expansion: int = 2,
                 global_kernel: int = 3, se_reduction: int = 8, rngs: nnx.Rngs):
        kt, kf = local_kernel
        if factor < 1 or kt < 1 or kf < 1 or local_freq_stride < 1 or not local_channels:
            raise ValueError(f"ConvRNN-T front end: factor={factor}, local_kernel={local_kernel}, "
                             f"local_freq_stride={local_freq_stride} must be >= 1 and "
                             f"local_channels={local_channels} non-empty")
        if global_blocks < 0 or global_channels < 1 or global_kernel < 1:
            raise ValueError(f"ConvRNN-T global CNN: global_blocks={global_blocks} (>= 0), "
                             f"global_channels={global_channels}, global_kernel={global_kernel} "
                             "(>= 1)")
        self.factor = factor
        self.local_kernel = (kt, kf)
        self.freq_stride = local_freq_stride
        kernels, biases, shapes = [], [], []
        cin, mels = factor, num_mels
        for cout in local_channels:
            shapes.append((mels, cin))
            kernels.append(param(rngs, nnx.initializers.he_normal(in_axis=(0, 1, 2), out_axis=3),
                                 (kt, kf, cin, cout), (None, None, "conv_in", "conv_out")))
            biases.append(param(rngs, _zeros, (cout,), ("conv_out",)))
            mels = (mels + 2 * ((kf - 1) // 2) - kf) // local_freq_stride + 1
            if mels < 1:
                raise ValueError(f"ConvRNN-T local CNN: {len(local_channels)} layers of frequency "
                                 f"stride {local_freq_stride} leave no mel bins of {num_mels}; use "
                                 "fewer layers or a smaller local_freq_stride")
            cin = cout
        self.local_shapes = tuple(shapes)  # (mel bins, channels) at each local layer's input
        self.local_kernels = nnx.List(kernels)
        self.local_biases = nnx.List(biases)
        self.global_in = Dense(num_mels * factor, global_channels, rngs=rngs,
                               axes=("conv_in", "embed"))
        self.global_blocks = nnx.List([
            GlobalBlock(global_channels, global_expansion, global_kernel, 2 ** i, se_reduction,
                        rngs=rngs) for i in range(global_blocks)])
        concat = mels * cin + global_channels
        self.out_norm = LayerNorm(concat, rngs=rngs, axis=None)
        self.out = Dense(concat, dim, rngs=rngs, axes=(None, "embed"))

    # ---- streaming state ----------------------------------------------------------------------

    def init_state(self, batch: int) -> FrontendState:
        """Zero left context for every causal convolution (= causal zero padding)."""
        kt = self.local_kernel[0]
        return {"local": tuple(jnp.zeros((batch, kt - 1, m, c), jnp.float32)
                               for m, c in self.local_shapes),
                "global": tuple(block.init_state(batch) for block in self.global_blocks)}

    # ---- forward ------------------------------------------------------------------------------

    def stack(self, feats: jax.Array) -> jax.Array:
        """[B, F, M] -> [B, ceil(F/s), M, s]: each output frame's s feature frames as channels."""
        b, f, m = feats.shape
        pad = -f % self.factor
        x = jnp.pad(feats, ((0, 0), (0, pad), (0, 0)))
        return x.reshape(b, (f + pad) // self.factor, self.factor, m).transpose(0, 1, 3, 2)

    def forward(self, feats: jax.Array, valid: jax.Array,
                state: FrontendState) -> tuple[jax.Array, FrontendState]:
        """One chunk of features [B, F, M] (F a multiple of `factor` unless it is the whole
        utterance; feature frames past a row's end must be zero, as log_mel and the streaming
        decoder make them) with valid output frames [B, ceil(F/s)] -> ([B, ceil(F/s), dim], new
        state)."""
        x = self.stack(feats)
        b, t, m, s = x.shape
        vmask = valid[:, :, None, None]
        kt, kf = self.local_kernel
        pf = (kf - 1) // 2
        y = x
        local_caches = []
        for kernel, bias, cache in zip(self.local_kernels, self.local_biases, state["local"]):
            y = jnp.where(vmask, y, 0.0)
            cat = jnp.concatenate([cache, y], axis=1)
            local_caches.append(cat[:, cat.shape[1] - cache.shape[1]:])
            y = jax.lax.conv_general_dilated(
                cat, kernel[...], window_strides=(1, self.freq_stride),
                padding=((0, 0), (pf, pf)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
            y = jax.nn.relu(y + bias[...])
        local = y.reshape(b, t, -1)
        g = self.global_in(jnp.where(vmask, x, 0.0).reshape(b, t, m * s))
        global_states = []
        for block, st in zip(self.global_blocks, state["global"]):
            g, st = block(g, valid, st)
            global_states.append(st)
        out = self.out(self.out_norm(jnp.concatenate([local, g], axis=-1)))
        return out, {"local": tuple(local_caches), "global": tuple(global_states)}

    def __call__(self, feats: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Whole utterances: feats [B, F, M], frame lengths [B] -> (x [B, T, dim], lengths [B])."""
        out_lengths = -(-lengths // self.factor)
        t = -(-feats.shape[1] // self.factor)
        feats = jnp.where(length_mask(lengths, feats.shape[1])[..., None], feats, 0.0)
        x, _ = self.forward(feats, length_mask(out_lengths, t), self.init_state(feats.shape[0]))
        return x, out_lengths
