"""Streaming encoders plugged into the transducer: ConvRNN-T and the (compute-cost amortized)
streaming Transformer-transducer, registered as model "streaming_transducer".

    model=StreamingTransducerConfig(encoder=StreamingEncoderConfig(kind="convrnnt", ...))
    model=StreamingTransducerConfig(encoder=StreamingEncoderConfig(kind="transformer",
                                    attention="chunked", arbitrator_hidden=16, ...))

How it plugs in (no edit of jaxslu/models/transducer.py): `StreamingTransducer` subclasses
`Transducer` and reuses everything but the encoder. The base constructor has no encoder hook, so
it is called with a placeholder encoder config (a 1-layer LSTM with 1 cell) and the placeholder
modules are then replaced: `self.subsampling` by the ConvRNN-T front end (same call signature as
ConvSubsampling) for kind "convrnnt", and `self.encoder` by the LSTM stack (convrnnt) or the
streaming Transformer. The replaced modules are dropped at construction, so they hold no
parameters of the finished model (the cost is a throwaway initialization of the placeholder
LSTM, and for convrnnt of the placeholder subsampling). `jaxslu/models/__init__.py` does not
import this module: importing a config that names it (or reading a saved config.json) does.

Encoders (all causal: no frame depends on later audio beyond its own stream chunk):
  * "convrnnt": causal local + global CNN front end (jaxslu.layers.convrnnt) -> residual LSTM
    stack (the transducer's LSTMEncoder). Time reduction by stacking `subsampling` frames.
  * "transformer": causal ConvSubsampling -> Transformer blocks with "causal", "chunked" or
    "sliding" attention (jaxslu.layers.streaming_attention); `arbitrator_hidden > 0` makes every
    block compute-cost amortized (per-frame gates on attention and FFN, jaxslu.layers.amortized).

Streaming: `stream_init(batch)` and `encode_chunk(feats, num_valid, state)` encode log-mel
chunks with carried state (convolution caches, LSTM states, attention key/value caches); see
jaxslu/decoding/streaming.py for the audio-to-transcript loop.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxslu.config import FrontendConfig
from jaxslu.layers.convrnnt import ConvRNNTFrontend
from jaxslu.layers.streaming_attention import (ATTENTION_MODES, AttentionSpec,
                                               StreamingTransformerEncoder)
from jaxslu.models.transducer import (EncoderConfig, LSTMEncoder, Transducer, TransducerConfig,
                                      check_encoder_basics)
from jaxslu.registry import MODELS

StreamState = dict[str, Any]
ENCODER_KINDS = ("transformer", "convrnnt")


@dataclasses.dataclass(frozen=True)
class StreamingEncoderConfig:
    kind: str = "transformer"  # "transformer" or "convrnnt"
    num_layers: int = 4  # Transformer blocks or LSTM layers
    dim: int = 144
    dropout: float = 0.1
    subsampling: int = 4  # time reduction: 2, 4 or 8
    subsampling_channels: int = 0  # transformer: conv channels of the subsampling; 0 -> dim
    causal: bool = True  # always causal; the field is read by the base model's subsampling
    # -- transformer --
    heads: int = 4
    ff_mult: int = 4
    attention: str = "causal"  # "causal", "chunked" or "sliding"
    chunk_frames: int = 8  # chunked: encoder frames per attention chunk
    left_chunks: int = 2  # chunked: chunks of left context
    window: int = 16  # sliding: frames seen (own frame included)
    max_stream_frames: int = 2048  # causal attention: key/value cache frames when streaming
    arbitrator_hidden: int = 0  # > 0: compute-cost amortized blocks with arbitrators this wide
    gate_init_bias: float = 3.0  # initial on-logit of the arbitrators (3 -> P(on) = 0.95)
    gate_temperature: float = 1.0
    capacity_ratio: float = 0.5  # inference: rows the skipping FFN / attention compute (of B*T)
    # -- convrnnt --
    lstm_hidden: int = 0  # LSTM cells per layer; 0 -> dim (else projected back to dim)
    local_channels: tuple[int, ...] = (100, 100, 64, 64)
    local_kernel: tuple[int, int] = (5, 5)  # (time, mel)
    local_freq_stride: int = 2
    global_channels: int = 256
    global_blocks: int = 6
    global_expansion: int = 2
    global_kernel: int = 3
    se_reduction: int = 8

    def __post_init__(self):
        if self.kind not in ENCODER_KINDS:
            raise ValueError(f"model.encoder.kind={self.kind!r}: use one of {ENCODER_KINDS}")
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"model.encoder.attention={self.attention!r}: use one of "
                             f"{ATTENTION_MODES}")
        check_encoder_basics(self)
        if not self.causal:
            raise ValueError("model.encoder.causal=False: streaming encoders are always causal")
        if len(self.local_kernel) != 2:
            raise ValueError(f"model.encoder.local_kernel={self.local_kernel}: give (time, mel)")
        self.attention_spec()  # validates chunk_frames / left_chunks / window

    @property
    def amortized(self) -> bool:
        return self.arbitrator_hidden > 0

    def attention_spec(self) -> AttentionSpec:
        return AttentionSpec(self.attention, self.chunk_frames, self.left_chunks, self.window)


@dataclasses.dataclass(frozen=True)
class StreamingTransducerConfig(TransducerConfig):
    name: str = "streaming_transducer"
    encoder: StreamingEncoderConfig = StreamingEncoderConfig()


@MODELS.register("streaming_transducer", config=StreamingTransducerConfig)
class StreamingTransducer(Transducer):
    """Transducer with a streaming encoder (ConvRNN-T or streaming/amortized Transformer).

    Same outputs and decoding methods as `Transducer` (docs/DESIGN.md), plus `stream_init` and
    `encode_chunk` for chunk-by-chunk encoding.
    """

    def __init__(self, cfg: StreamingTransducerConfig, *, frontend_cfg: FrontendConfig,
                 vocab_size: int, num_intents: int = 0, num_slot_tags: int = 0, rngs: nnx.Rngs):
        enc = cfg.encoder
        if not isinstance(enc, StreamingEncoderConfig):
            raise TypeError(f"model.encoder is a {type(enc).__name__}; the streaming transducer "
                            "takes a StreamingEncoderConfig (jaxslu.models.streaming)")
        if cfg.num_cohorts:
            raise ValueError("model.num_cohorts > 0 is not supported by the streaming transducer "
                             "(its chunked encoder has no cohort input); use model 'transducer'")
        placeholder = EncoderConfig(kind="lstm", num_layers=1, dim=enc.dim, dropout=enc.dropout,
                                    causal=True, subsampling=enc.subsampling,
                                    subsampling_channels=enc.subsampling_channels, lstm_hidden=1)
        super().__init__(dataclasses.replace(cfg, encoder=placeholder), frontend_cfg=frontend_cfg,
                         vocab_size=vocab_size, num_intents=num_intents,
                         num_slot_tags=num_slot_tags, rngs=rngs)
        self.cfg = cfg
        if enc.kind == "convrnnt":
            self.subsampling = ConvRNNTFrontend(
                frontend_cfg.num_mels, enc.dim, factor=enc.subsampling,
                local_channels=tuple(enc.local_channels), local_kernel=tuple(enc.local_kernel),
                local_freq_stride=enc.local_freq_stride, global_channels=enc.global_channels,
                global_blocks=enc.global_blocks, global_expansion=enc.global_expansion,
                global_kernel=enc.global_kernel, se_reduction=enc.se_reduction, rngs=rngs)
            self.encoder = LSTMEncoder(
                EncoderConfig(kind="lstm", num_layers=enc.num_layers, dim=enc.dim,
                              dropout=enc.dropout, causal=True, subsampling=enc.subsampling,
                              lstm_hidden=enc.lstm_hidden), rngs=rngs)
        else:
            self.encoder = StreamingTransformerEncoder(
                enc.dim, enc.num_layers, enc.heads, enc.attention_spec(), ff_mult=enc.ff_mult,
                dropout_rate=enc.dropout, arbitrator_hidden=enc.arbitrator_hidden,
                gate_init_bias=enc.gate_init_bias, gate_temperature=enc.gate_temperature,
                capacity_ratio=enc.capacity_ratio, rngs=rngs)

    # ---- streaming ---------------------------------------------------------------------------

    def stream_chunk_check(self, feature_frames: int) -> None:
        """Raise if chunks of `feature_frames` log-mel frames cannot be streamed exactly."""
        s = self.cfg.encoder.subsampling
        if feature_frames < 1 or feature_frames % s:
            raise ValueError(f"streaming chunk of {feature_frames} feature frames must be a "
                             f"positive multiple of the encoder subsampling ({s})")
        if self.cfg.encoder.kind == "transformer":
            self.encoder.spec.check_stream_chunk(feature_frames // s)

    def stream_init(self, batch: int) -> StreamState:
        """State before the first chunk: zero caches (= causal zero padding), zero LSTM states."""
        enc = self.cfg.encoder
        state: StreamState = {"feat_frames": jnp.zeros((batch,), jnp.int32),
                              "offset": jnp.zeros((), jnp.int32)}
        if enc.kind == "convrnnt":
            state["front"] = self.subsampling.init_state(batch)
            state["lstm"] = tuple(lstm.init_state(batch) for lstm in self.encoder.lstms)
        else:
            caches = []
            mels = self.frontend_cfg.num_mels
            for kernel in self.subsampling.kernels:
                caches.append(jnp.zeros((batch, 2, mels, kernel.shape[2]), jnp.float32))
                mels = (mels + 1) // 2
            state["front"] = tuple(caches)
            state["attn"] = self.encoder.init_cache(batch, enc.max_stream_frames)
        return state

    def _subsample_chunk(self, feats, total, offset, caches):
        """The causal ConvSubsampling on one chunk, with 2 frames of left context per layer."""
        sub = self.subsampling
        x = feats[..., None]
        new = []
        for kernel, bias, cache in zip(sub.kernels, sub.biases, caches):
            valid = (offset + jnp.arange(x.shape[1]))[None, :] < total[:, None]
            x = jnp.where(valid[:, :, None, None], x, 0.0)
            cat = jnp.concatenate([cache, x], axis=1)
            new.append(cat[:, cat.shape[1] - 2:])
            x = jax.lax.conv_general_dilated(
                cat, kernel[...], window_strides=(2, 2), padding=((0, 0), (1, 1)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"))
            x = jax.nn.relu(x + bias[...])
            total, offset = (total + 1) // 2, offset // 2
        b, t, m, c = x.shape
        return sub.out(x.reshape(b, t, m * c)), tuple(new)

    def encode_chunk(self, feats: jax.Array, num_valid: jax.Array,
                     state: StreamState) -> tuple[jax.Array, jax.Array, StreamState]:
        """Encode the next chunk of log-mel frames.

        feats [B, L, M] (L a multiple of the subsampling, see `stream_chunk_check`; frames past a
        row's end zero), num_valid int [B]: real frames of this chunk per row (L until the row's
        last chunk). Returns (encoder output [B, L/s, J] zero at invalid frames, valid [B, L/s]
        bool, new state). Concatenating the valid frames of all chunks gives `encode_features`
        of the whole utterance (up to float rounding).
        """
        enc = self.cfg.encoder
        length = feats.shape[1]
        steps, total, enc_total, enc_offset, valid = chunk_positions(state, num_valid, length,
                                                                     enc.subsampling)
        new: StreamState = {"feat_frames": total, "offset": state["offset"] + length}
        if enc.kind == "convrnnt":
            x, new["front"] = self.subsampling.forward(feats, valid, state["front"])
            count = jnp.clip(enc_total - enc_offset, 0, steps)
            x, new["lstm"] = self.encoder.stream(x, count, state["lstm"])
        else:
            x, new["front"] = self._subsample_chunk(feats, total, state["offset"], state["front"])
            x, new["attn"] = self.encoder.step(x, enc_offset, valid, state["attn"])
        out = self.encoder_proj(x)
        return jnp.where(valid[..., None], out, 0.0), valid, new


def chunk_positions(state: StreamState, num_valid: jax.Array, length: int, subsampling: int):
    """Bookkeeping of a streamed chunk of `length` feature frames: (encoder steps in it, feature
    frames seen so far [B], encoder frames so far [B], encoder offset of the chunk, valid
    [B, steps] encoder frames)."""
    steps = length // subsampling
    total = state["feat_frames"] + num_valid.astype(jnp.int32)
    enc_total = -(-total // subsampling)
    enc_offset = state["offset"] // subsampling
    valid = (enc_offset + jnp.arange(steps))[None, :] < enc_total[:, None]
    return steps, total, enc_total, enc_offset, valid


def encoder_param_count(model: Transducer) -> int:
    """Parameters of the encoder side (front end / subsampling, encoder, projection to J)."""
    total = 0
    for module in (model.subsampling, model.encoder, model.encoder_proj):
        total += sum(int(x.size) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
    return total


def jaxpr_flops(closed_jaxpr: Any) -> float:
    """Multiply-add FLOPs (2 per MAC) of the matmuls and convolutions in a (closed) jaxpr.

    Scan bodies count `length` times (XLA's own cost analysis counts a loop body once, which
    undercounts recurrent encoders); of a `cond` the costliest branch counts; elementwise ops,
    reductions and softmax are left out (small next to the matmuls at these sizes).
    """
    jaxpr = getattr(closed_jaxpr, "jaxpr", closed_jaxpr)
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            k = 1
            for d in contract:
                k *= lhs[d]
            total += 2.0 * k * _size(eqn.outvars[0].aval.shape)
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial)
            taps = 1
            for d in spec[1:]:
                taps *= rhs[d]
            total += 2.0 * taps * _size(eqn.outvars[0].aval.shape)
        elif name == "cond":
            total += max(jaxpr_flops(b) for b in eqn.params["branches"])
        else:
            inner = [v for v in eqn.params.values() if hasattr(v, "eqns") or hasattr(v, "jaxpr")]
            times = float(eqn.params.get("length", 1)) if name == "scan" else 1.0
            total += times * sum(jaxpr_flops(v) for v in inner)
    return total


def _size(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def encoder_flops_per_second(model: Transducer, seconds: float = 4.0) -> float:
    """Matmul/convolution FLOPs of `encode` (log-mel frontend to the projection to J) for one
    utterance of `seconds`, per second of audio (`jaxpr_flops`: static count, every gate on)."""
    n = int(seconds * model.frontend_cfg.sample_rate)
    graphdef, state = nnx.split(model)

    def run(state, audio, lengths):
        return nnx.merge(graphdef, state).encode(audio, lengths)[0]

    closed = jax.make_jaxpr(run)(state, jax.ShapeDtypeStruct((1, n), jnp.float32),
                                 jax.ShapeDtypeStruct((1,), jnp.int32))
    return jaxpr_flops(closed) / seconds
