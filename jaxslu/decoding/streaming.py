"""Streaming transducer inference: chunk-by-chunk encoding with carried state and per-chunk greedy
decoding that carries the prediction network's state.

    decoder = StreamingDecoder(model, chunk_frames=16)      # 16 log-mel frames = 160 ms chunks
    result = decoder.decode(audio, audio_lengths)           # numpy in, numpy out
    result.tokens, result.lengths, result.real_time_factor, result.chunk_latencies

The host loop is what a streaming server runs: for every chunk of audio it calls one jitted
step (compiled once; every chunk has the same shape) that
  1. computes the chunk's log-mel frames. Frame t covers samples [t*hop, t*hop + W) (no
     centering, see jaxslu.audio.frontend), so chunk j's L frames need samples
     [j*L*hop, (j*L + L - 1)*hop + W): the chunk's L*hop new samples plus W - hop samples (15 ms
     at 25/10 ms) of the next chunk, the framing look-ahead inherent to any windowed frontend;
  2. encodes them with `model.encode_chunk` (convolution caches, LSTM states, attention key/value
     caches carried in the state);
  3. runs greedy transducer decoding over the chunk's encoder frames, carrying the prediction
     network's output and state and emitting up to `max_symbols_per_frame` tokens per frame
     (same rule as `jaxslu.decoding.transducer.greedy_from_encoder`).
For a causal model with `frontend.normalize="none"` (utterance normalization needs the whole
utterance, so it is refused here) the streamed transcript equals the full-utterance one.

The model must provide `stream_init(batch)`, `stream_chunk_check(frames)` and
`encode_chunk(feats, num_valid, state)` (jaxslu.models.streaming.StreamingTransducer).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxslu.audio.frontend import hop_samples, log_mel, num_frames, window_samples
from jaxslu.decoding.transducer import greedy_frames


@dataclasses.dataclass
class StreamingResult:
    tokens: np.ndarray  # int32 [B, L], 0-padded
    lengths: np.ndarray  # int32 [B]
    chunk_latencies: list[float]  # wall seconds of each chunk's step (after compilation)
    audio_seconds: float  # duration of the longest row
    compile_seconds: float

    @property
    def real_time_factor(self) -> float:
        """Processing time / audio time (< 1: faster than real time)."""
        return float(sum(self.chunk_latencies)) / max(self.audio_seconds, 1e-9)

    def transcripts(self) -> list[list[int]]:
        return [self.tokens[b, : self.lengths[b]].tolist() for b in range(len(self.lengths))]


def greedy_chunk(model, enc: jax.Array, valid: jax.Array, pred: jax.Array, pred_state: Any,
                 max_symbols_per_frame: int) -> tuple[jax.Array, jax.Array, jax.Array, Any]:
    """Greedy decoding of one chunk's encoder frames enc [B, S, J] (valid [B, S]) from the carried
    prediction-network output `pred` [B, J] and state. Returns (tokens [B, S*max_symbols] 0-padded,
    counts [B], pred, pred_state): the offline search (`greedy_frames`) run on one chunk, so the
    streamed transcript is the offline one by construction of the carried state."""
    return greedy_frames(model, enc, valid, pred, pred_state,
                         max_symbols_per_frame=max_symbols_per_frame,
                         max_len=enc.shape[1] * max_symbols_per_frame)


class StreamingDecoder:
    """Chunk-by-chunk greedy decoding of a streaming transducer (see the module docstring).

    chunk_frames: log-mel frames per chunk (a multiple of the encoder subsampling, and for
    chunked attention of subsampling * attention chunk). Latency of a chunk = its duration
    (chunk_frames * hop) + framing look-ahead (window - hop) + compute.
    """

    def __init__(self, model: nnx.Module, *, chunk_frames: int, max_symbols_per_frame: int = 3):
        if not hasattr(model, "encode_chunk"):
            raise TypeError(f"{type(model).__name__} has no encode_chunk: streaming needs a "
                            "StreamingTransducer (model name 'streaming_transducer')")
        if model.frontend_cfg.normalize != "none":
            raise ValueError(f"frontend.normalize={model.frontend_cfg.normalize!r} uses statistics "
                             "of the whole utterance and cannot be streamed; train and decode "
                             "with frontend.normalize='none'")
        if max_symbols_per_frame < 1:
            raise ValueError(f"max_symbols_per_frame={max_symbols_per_frame} must be >= 1")
        model.stream_chunk_check(chunk_frames)
        self.model = model
        self.chunk_frames = chunk_frames
        self.max_symbols = max_symbols_per_frame
        fe = model.frontend_cfg
        self.hop, self.window = hop_samples(fe), window_samples(fe)
        self.segment = (chunk_frames - 1) * self.hop + self.window  # samples read per chunk
        graphdef, state = nnx.split(model)
        self._state = state
        fe_cfg, max_sym = fe, max_symbols_per_frame

        def step(params, segment, num_valid, enc_state, dec_state):
            m = nnx.merge(graphdef, params)
            b = segment.shape[0]
            feats, _ = log_mel(segment, jnp.full((b,), segment.shape[1], jnp.int32), fe_cfg)
            feats = jnp.where(jnp.arange(feats.shape[1])[None, :, None] < num_valid[:, None, None],
                              feats, 0.0)
            enc, valid, enc_state = m.encode_chunk(feats, num_valid, enc_state)
            pred, pred_state = dec_state
            tokens, counts, pred, pred_state = greedy_chunk(m, enc, valid, pred, pred_state,
                                                            max_sym)
            return tokens, counts, enc_state, (pred, pred_state)

        self._step = jax.jit(step)

    def init_states(self, batch: int):
        m = self.model
        pred, pred_state = m.predictor_step(jnp.zeros((batch,), jnp.int32), m.predictor_init(batch))
        return m.stream_init(batch), (pred, pred_state)

    def decode(self, audio: np.ndarray, audio_lengths: np.ndarray) -> StreamingResult:
        """Decode a padded batch audio [B, N] (16 kHz float) with lengths [B] chunk by chunk."""
        audio = np.asarray(audio, np.float32)
        audio_lengths = np.asarray(audio_lengths, np.int64)
        if audio.ndim != 2 or audio_lengths.shape != audio.shape[:1]:
            raise ValueError(f"audio must be [batch, samples] with lengths [batch]; got shapes "
                             f"{audio.shape} and {audio_lengths.shape}")
        b = audio.shape[0]
        audio = np.where(np.arange(audio.shape[1])[None, :] < audio_lengths[:, None], audio, 0.0)
        frames = num_frames(audio_lengths, self.model.frontend_cfg).astype(np.int64)
        L = self.chunk_frames
        chunks = max(1, -(-int(frames.max()) // L))
        enc_cfg = self.model.cfg.encoder
        enc_frames = chunks * L // enc_cfg.subsampling
        if (enc_cfg.kind == "transformer" and enc_cfg.attention == "causal"
                and enc_frames > enc_cfg.max_stream_frames):
            raise ValueError(f"{enc_frames} encoder frames exceed model.encoder.max_stream_frames="
                             f"{enc_cfg.max_stream_frames} (the causal attention cache); raise it "
                             "or use chunked/sliding attention")
        need = (chunks - 1) * L * self.hop + self.segment
        audio = np.pad(audio, ((0, 0), (0, max(0, need - audio.shape[1]))))
        enc_state, dec_state = self.init_states(b)
        pieces, counts_all, latencies = [], [], []
        compile_seconds = 0.0
        for j in range(chunks):
            start = j * L * self.hop
            segment = jnp.asarray(audio[:, start:start + self.segment])
            num_valid = jnp.asarray(np.clip(frames - j * L, 0, L).astype(np.int32))
            t0 = time.perf_counter()
            tokens, counts, enc_state, dec_state = self._step(self._state, segment, num_valid,
                                                              enc_state, dec_state)
            jax.block_until_ready(tokens)
            dt = time.perf_counter() - t0
            if j == 0:  # the first call compiles; time it again for the latency figures
                compile_seconds = dt
                t0 = time.perf_counter()
                jax.block_until_ready(self._step(self._state, segment, num_valid,
                                                 *self.init_states(b)))
                dt = time.perf_counter() - t0
            latencies.append(dt)
            pieces.append(np.asarray(tokens))
            counts_all.append(np.asarray(counts))
        lengths = np.sum(counts_all, axis=0).astype(np.int32)
        out = np.zeros((b, max(1, int(lengths.max()))), np.int32)
        for r in range(b):
            row = np.concatenate([p[r, : c[r]] for p, c in zip(pieces, counts_all)])
            out[r, : len(row)] = row
        sr = self.model.frontend_cfg.sample_rate
        return StreamingResult(out, lengths, latencies, float(audio_lengths.max()) / sr,
                               compile_seconds)
