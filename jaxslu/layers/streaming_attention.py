"""Streaming Transformer-transducer encoder layers: causal, chunked and sliding-window attention
with a key/value cache, and the (optionally compute-cost amortized) Transformer block.

Attention modes (`AttentionSpec.mode`), as a visibility rule between a query at frame q and a key
at frame k (absolute encoder-frame indices):
  * "causal":  k <= q (unbounded left context; the streaming cache holds `max_frames` frames).
  * "chunked": frames are grouped in chunks of `chunk` frames; a query sees every frame of its own
    chunk (including later frames of that chunk: up to chunk-1 frames of look-ahead) and of the
    `left_chunks` chunks before it. Streaming chunks must then be a multiple of `chunk` frames.
  * "sliding": q - window < k <= q (the paper's sliding-window baseline).
The same rule (`AttentionSpec.visible`) masks the offline forward and the streamed one, which is
what makes chunk-by-chunk encoding equal to whole-utterance encoding. Keys at or beyond a row's
length are never visible. Positions are rotary (as in `jaxslu.layers.attention`): scores depend
only on q - k, and a cached key keeps the rotation of its absolute frame index.

The block is pre-LN, `x += g_a * Attn(LN(x)); x += g_f * FFN(LN(x))`, where the gates are 1 for a
dense block and per-frame arbitrator decisions for an amortized one (see
`jaxslu.layers.amortized`). The FFN is `jaxslu.kernels.gated_block.gated_ffn` (GELU): in training
and for dense blocks its "dense" implementation (full straight-through gate gradient); for gated
blocks at inference the default one (XLA compaction on CPU, Pallas on TPU/GPU), so switched-off
frames are not computed.

Skipped frames and attention (open choice): a frame whose attention gate is off still provides
its key and value to the other frames (the K/V projections run on every frame and are counted as
fixed cost); what is skipped is its own query side (query and output projections, its row of
scores and the context). Rationale: the gate says the frame's own representation needs no update
from context, not that the frame is useless as context for others, and keeping K/V makes the key
set independent of the gates, so the attention of active frames does not change when gates of
others flip. At inference the query side is compacted like the FFN: the active query rows are
gathered (static capacity, exact dense fallback on overflow), attend to their own utterance's
keys, and are scattered back; an off frame's attention output is 0 and is not computed.
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxslu.kernels.gated_block import flops_per_row, gated_ffn
from jaxslu.kernels.gated_block.xla import bucket_capacity
from jaxslu.layers.amortized import Arbitrator, GateActivity, component_record
from jaxslu.layers.attention import rotary
from jaxslu.layers.core import Dense, LayerNorm, dropout, length_mask, param

ATTENTION_MODES = ("causal", "chunked", "sliding")
_NEG = -1e30


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
    """Which keys a query may see (see the module docstring)."""

    mode: str = "causal"
    chunk: int = 8  # "chunked": frames per attention chunk
    left_chunks: int = 2  # "chunked": chunks of left context
    window: int = 16  # "sliding": frames seen, the query's own included

    def __post_init__(self):
        if self.mode not in ATTENTION_MODES:
            raise ValueError(f"attention mode {self.mode!r}: use one of {ATTENTION_MODES}")
        if self.chunk < 1 or self.left_chunks < 0 or self.window < 1:
            raise ValueError(f"attention chunk={self.chunk} (>= 1), left_chunks={self.left_chunks} "
                             f"(>= 0) and window={self.window} (>= 1) are out of range")

    def visible(self, q_pos: jax.Array, k_pos: jax.Array) -> jax.Array:
        """Broadcasting bool: may the query at q_pos see the key at k_pos (k_pos < 0: empty)."""
        ok = k_pos >= 0
        if self.mode == "causal":
            return ok & (k_pos <= q_pos)
        if self.mode == "sliding":
            return ok & (k_pos <= q_pos) & (k_pos > q_pos - self.window)
        qc, kc = q_pos // self.chunk, k_pos // self.chunk
        return ok & (kc <= qc) & (kc >= qc - self.left_chunks)

    def cache_frames(self, max_frames: int) -> int:
        """Key/value frames a stream must keep (for "causal": all, up to `max_frames`)."""
        if self.mode == "causal":
            return max_frames
        if self.mode == "sliding":
            return self.window - 1
        return self.left_chunks * self.chunk

    def check_stream_chunk(self, frames: int) -> None:
        """Streaming chunks of `frames` encoder frames must cover whole attention chunks."""
        if self.mode == "chunked" and frames % self.chunk:
            raise ValueError(f"streaming chunk of {frames} encoder frames is not a multiple of the "
                             f"attention chunk ({self.chunk}); chunked attention needs the whole "
                             "attention chunk before it can emit its frames")


class KVCache(NamedTuple):
    keys: jax.Array  # [B, C, H, Dh], rotated at their absolute positions
    values: jax.Array  # [B, C, H, Dh]
    positions: jax.Array  # int32 [B, C]; -1 = empty slot or padded frame


class StreamingSelfAttention(nnx.Module):
    """Multi-head self-attention under an `AttentionSpec`, offline or chunk by chunk."""

    def __init__(self, dim: int, heads: int, spec: AttentionSpec, *, dropout_rate: float = 0.0,
                 rngs: nnx.Rngs):
        if dim % heads or (dim // heads) % 2:
            raise ValueError(f"encoder dim={dim} must be divisible by heads={heads} with an even "
                             "head dim (rotary positions rotate pairs of channels)")
        self.heads = heads
        self.dim = dim
        self.spec = spec
        self.dropout_rate = dropout_rate
        self.query = Dense(dim, dim, rngs=rngs, axes=("embed", "heads"))
        self.key = Dense(dim, dim, rngs=rngs, axes=("embed", "heads"))
        self.value = Dense(dim, dim, rngs=rngs, axes=("embed", "heads"))
        self.out = Dense(dim, dim, rngs=rngs, axes=("heads", "embed"))

    def _split(self, y: jax.Array) -> jax.Array:
        b, t, d = y.shape
        return y.reshape(b, t, self.heads, d // self.heads)

    def keys_values(self, h: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """h [B, T, D] at frame indices positions [T] -> rotated keys and values [B, T, H, Dh]."""
        return rotary(self._split(self.key(h)), positions), self._split(self.value(h))

    def attend(self, h: jax.Array, positions: jax.Array, keys: jax.Array, values: jax.Array,
               key_positions: jax.Array, *, gate: jax.Array | None = None,
               capacity: int | None = None, train: bool = False,
               rngs: nnx.Rngs | None = None) -> tuple[jax.Array, jax.Array]:
        """Queries from h [B, T, D] at positions [T] over keys/values [B, K, H, Dh] at
        key_positions [B, K] -> (output [B, T, D], visible keys per query int32 [B, T]).

        gate [B, T] (inference only): compute the query side only for frames with gate != 0,
        at most `capacity` of them (static; more active frames fall back to computing every
        frame, so the result is always exact); the output of an off frame is 0."""
        b, t, d = h.shape
        mask = self.spec.visible(positions[None, :, None], key_positions[:, None, :])  # [B, T, K]
        visible = jnp.sum(mask, axis=-1).astype(jnp.int32)
        scale = 1.0 / jnp.sqrt(jnp.float32(d // self.heads))

        def dense(_):
            q = rotary(self._split(self.query(h)), positions)
            scores = jnp.einsum("bqhd,bkhd->bhqk", q, keys) * scale
            scores = jnp.where(mask[:, None], scores, _NEG)
            probs = dropout(jax.nn.softmax(scores, axis=-1), self.dropout_rate, train=train,
                            rngs=rngs)
            out = self.out(jnp.einsum("bhqk,bkhd->bqhd", probs, values).reshape(b, t, d))
            return out if gate is None else out * (gate != 0)[..., None]

        n = b * t
        if gate is None or capacity is None or capacity >= n:
            return dense(None), visible

        def compact(_):
            # Gather the active query rows; each row attends to its own utterance's keys.
            idx = jnp.nonzero(gate.reshape(n) != 0, size=capacity, fill_value=n)[0]
            row_b, row_t = jnp.minimum(idx // t, b - 1), idx % t
            rows = h.reshape(n, d).at[idx].get(mode="fill", fill_value=0)
            q = rotary(self._split(self.query(rows)[None]), positions[row_t])[0]  # [C, H, Dh]
            scores = jnp.einsum("chd,ckhd->chk", q, keys[row_b]) * scale
            scores = jnp.where(mask.reshape(n, -1).at[idx].get(mode="fill", fill_value=False)
                               [:, None, :], scores, _NEG)
            ctx = jnp.einsum("chk,ckhd->chd", jax.nn.softmax(scores, axis=-1), values[row_b])
            out = self.out(ctx.reshape(capacity, d))
            return jnp.zeros((n, d), out.dtype).at[idx].set(out, mode="drop").reshape(b, t, d)

        count = jnp.sum(gate != 0)
        return jax.lax.cond(count <= capacity, compact, dense, None), visible

    def __call__(self, h: jax.Array, lengths: jax.Array, *, gate: jax.Array | None = None,
                 capacity: int | None = None, train: bool = False,
                 rngs: nnx.Rngs | None = None) -> tuple[jax.Array, jax.Array]:
        """Whole-utterance attention: h [B, T, D], lengths [B] -> (out, visible keys [B, T])."""
        t = h.shape[1]
        pos = jnp.arange(t, dtype=jnp.int32)
        keys, values = self.keys_values(h, pos)
        key_pos = jnp.where(length_mask(lengths, t), pos[None, :], -1)
        return self.attend(h, pos, keys, values, key_pos, gate=gate, capacity=capacity,
                           train=train, rngs=rngs)

    def init_cache(self, batch: int, frames: int) -> KVCache:
        dh = self.dim // self.heads
        z = jnp.zeros((batch, frames, self.heads, dh), jnp.float32)
        return KVCache(z, z, jnp.full((batch, frames), -1, jnp.int32))

    def step(self, h: jax.Array, offset: jax.Array, valid: jax.Array, cache: KVCache, *,
             gate: jax.Array | None = None,
             capacity: int | None = None) -> tuple[jax.Array, jax.Array, KVCache]:
        """One streaming chunk h [B, S, D] starting at frame `offset` (scalar), valid [B, S] ->
        (out [B, S, D], visible keys [B, S], cache with this chunk's keys appended). Every frame
        adds its key and value, whatever its gate (see the module docstring)."""
        s = h.shape[1]
        pos = offset + jnp.arange(s, dtype=jnp.int32)
        k, v = self.keys_values(h, pos)
        kp = jnp.where(valid, pos[None, :], -1)
        keys = jnp.concatenate([cache.keys, k], axis=1)
        values = jnp.concatenate([cache.values, v], axis=1)
        key_pos = jnp.concatenate([cache.positions, kp], axis=1)
        out, visible = self.attend(h, pos, keys, values, key_pos, gate=gate, capacity=capacity)
        c = cache.positions.shape[1]
        new = KVCache(keys[:, keys.shape[1] - c:], values[:, values.shape[1] - c:],
                      key_pos[:, key_pos.shape[1] - c:])
        return out, visible, new


def _zeros(key, shape, dtype):
    return jnp.zeros(shape, dtype)


def _ones(key, shape, dtype):
    return jnp.ones(shape, dtype)


class TransformerBlock(nnx.Module):
    """Pre-LN Transformer block, dense (`arbitrator_hidden=0`) or compute-cost amortized.

    capacity_ratio: for gated blocks at inference, the static row capacity of the compacting
    FFN kernel and of the compacted attention queries as a fraction of the B*T frames (needed
    under jit; more active frames than that fall back to an exact dense computation). 0 = pick
    the capacity from the concrete gates (eager calls only).
    """

    def __init__(self, dim: int, heads: int, spec: AttentionSpec, *, ff_mult: int = 4,
                 dropout_rate: float = 0.1, arbitrator_hidden: int = 0,
                 gate_init_bias: float = 3.0, gate_temperature: float = 1.0,
                 capacity_ratio: float = 0.5, rngs: nnx.Rngs):
        if not 0.0 <= capacity_ratio <= 1.0:
            raise ValueError(f"capacity_ratio={capacity_ratio} must be in [0, 1]")
        hidden = dim * ff_mult
        self.dim, self.hidden = dim, hidden
        self.attn_norm = LayerNorm(dim, rngs=rngs)
        self.attn = StreamingSelfAttention(dim, heads, spec, dropout_rate=dropout_rate, rngs=rngs)
        init = nnx.initializers.lecun_normal()
        self.ffn_ln_scale = param(rngs, _ones, (dim,), ("embed",))
        self.ffn_ln_bias = param(rngs, _zeros, (dim,), ("embed",))
        self.ffn_w1 = param(rngs, init, (dim, hidden), ("embed", "mlp"))
        self.ffn_b1 = param(rngs, _zeros, (hidden,), ("mlp",))
        self.ffn_w2 = param(rngs, init, (hidden, dim), ("mlp", "embed"))
        self.ffn_b2 = param(rngs, _zeros, (dim,), ("embed",))
        gated = arbitrator_hidden > 0
        make = lambda: Arbitrator(dim, arbitrator_hidden, init_bias=gate_init_bias,
                                  temperature=gate_temperature, rngs=rngs)
        self.attn_gate = make() if gated else None
        self.ffn_gate = make() if gated else None
        self.dropout_rate = dropout_rate
        self.capacity_ratio = capacity_ratio

    @property
    def gated(self) -> bool:
        return self.attn_gate is not None

    def _ffn_params(self) -> dict[str, jax.Array]:
        return {"ln_scale": self.ffn_ln_scale[...], "ln_bias": self.ffn_ln_bias[...],
                "w1": self.ffn_w1[...], "b1": self.ffn_b1[...], "w2": self.ffn_w2[...],
                "b2": self.ffn_b2[...]}

    def _capacity(self, gate: jax.Array) -> int:
        """Static row capacity of the skipping kernels at inference (see the class docstring)."""
        if self.capacity_ratio > 0:
            return max(1, math.ceil(self.capacity_ratio * gate.size))
        return max(1, bucket_capacity(gate))

    def _forward(self, x, valid, attention, *, train: bool, rngs: nnx.Rngs | None):
        """Shared body; `attention(h, gate, capacity) -> (out, visible keys)` is the offline or
        streamed attention (gate None: every frame's query side is computed)."""
        b, t, d = x.shape
        validf = valid.astype(jnp.float32)
        ones = jnp.ones((b, t), jnp.float32)
        skip = self.gated and not train  # inference with gates: off frames are not computed
        g_attn = self.attn_gate(x, train=train, rngs=rngs) if self.gated else ones
        g = g_attn * validf
        a, visible = (attention(self.attn_norm(x), g, self._capacity(g)) if skip
                      else attention(self.attn_norm(x), None, None))
        x = x + g[..., None] * dropout(a, self.dropout_rate, train=train, rngs=rngs)
        g_ffn = self.ffn_gate(x, train=train, rngs=rngs) if self.gated else ones
        if skip:
            g = g_ffn * validf
            y, _ = gated_ffn(x, g, self._ffn_params(), activation="gelu",
                             capacity=self._capacity(g))
        else:
            y, _ = gated_ffn(x, g_ffn * validf, self._ffn_params(), activation="gelu",
                             implementation="dense")
        # Dropout on the FFN branch only (the kernel has none); y itself when not training.
        x = x + dropout(y - x, self.dropout_rate, train=train, rngs=rngs) if train else y
        d2 = d * d
        attn_flops = 4 * d2 + 4 * d * visible.astype(jnp.float32)  # q, out proj; scores, context
        fixed = 4 * d2 + (self.attn_gate.flops_per_frame() + self.ffn_gate.flops_per_frame()
                          if self.gated else 0)
        self.gate_activity = GateActivity({
            "attention": component_record(g_attn, attn_flops, valid),
            "ffn": component_record(g_ffn, flops_per_row(d, self.hidden), valid),
            "fixed": component_record(ones, fixed, valid)})
        return x

    def __call__(self, x: jax.Array, lengths: jax.Array, *, train: bool = False,
                 rngs: nnx.Rngs | None = None) -> jax.Array:
        valid = length_mask(lengths, x.shape[1])
        return self._forward(
            x, valid, lambda h, gate, capacity: self.attn(h, lengths, gate=gate,
                                                          capacity=capacity, train=train,
                                                          rngs=rngs),
            train=train, rngs=rngs)

    def step(self, x: jax.Array, offset: jax.Array, valid: jax.Array,
             cache: KVCache) -> tuple[jax.Array, KVCache]:
        """Streaming inference on one chunk x [B, S, D] (see `StreamingSelfAttention.step`)."""
        box = {}

        def attention(h, gate, capacity):
            out, visible, box["cache"] = self.attn.step(h, offset, valid, cache, gate=gate,
                                                        capacity=capacity)
            return out, visible

        y = self._forward(x, valid, attention, train=False, rngs=None)
        return y, box["cache"]


class StreamingTransformerEncoder(nnx.Module):
    """A stack of `TransformerBlock`s and a final LayerNorm, offline or chunk by chunk."""

    def __init__(self, dim: int, num_layers: int, heads: int, spec: AttentionSpec, *,
                 ff_mult: int = 4, dropout_rate: float = 0.1, arbitrator_hidden: int = 0,
                 gate_init_bias: float = 3.0, gate_temperature: float = 1.0,
                 capacity_ratio: float = 0.5, rngs: nnx.Rngs):
        self.spec = spec
        self.blocks = nnx.List([
            TransformerBlock(dim, heads, spec, ff_mult=ff_mult, dropout_rate=dropout_rate,
                             arbitrator_hidden=arbitrator_hidden, gate_init_bias=gate_init_bias,
                             gate_temperature=gate_temperature,
                             capacity_ratio=capacity_ratio, rngs=rngs)
            for _ in range(num_layers)])
        self.final_norm = LayerNorm(dim, rngs=rngs)

    def __call__(self, x: jax.Array, lengths: jax.Array, *, train: bool = False,
                 rngs: nnx.Rngs | None = None) -> jax.Array:
        for block in self.blocks:
            x = block(x, lengths, train=train, rngs=rngs)
        return self.final_norm(x)

    def init_cache(self, batch: int, max_frames: int) -> tuple[KVCache, ...]:
        frames = self.spec.cache_frames(max_frames)
        return tuple(block.attn.init_cache(batch, frames) for block in self.blocks)

    def step(self, x: jax.Array, offset: jax.Array, valid: jax.Array,
             caches: tuple[KVCache, ...]) -> tuple[jax.Array, tuple[KVCache, ...]]:
        new = []
        for block, cache in zip(self.blocks, caches):
            x, cache = block.step(x, offset, valid, cache)
            new.append(cache)
        return self.final_norm(x), tuple(new)
