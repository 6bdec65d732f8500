"""Streaming: chunk-by-chunk encoding equals whole-utterance encoding, and the streamed greedy
transcript equals the full-utterance one, for ConvRNN-T and the streaming Transformer (causal,
chunked, sliding window, amortized); causality of the Transformer encoder; input errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxslu.audio.frontend import log_mel
from jaxslu.config import FrontendConfig
from jaxslu.decoding.streaming import StreamingDecoder
from jaxslu.decoding.transducer import greedy_decode
from jaxslu.models.streaming import (StreamingEncoderConfig, StreamingTransducer,
                                     StreamingTransducerConfig)
from jaxslu.models.transducer import PredictorConfig

FE = FrontendConfig(num_mels=16, normalize="none")

ENCODERS = {
    "convrnnt": dict(kind="convrnnt", num_layers=1, dim=16, local_channels=(4, 4),
                     local_kernel=(3, 3), global_channels=8, global_blocks=3),
    "causal": dict(kind="transformer", num_layers=2, dim=16, heads=2, ff_mult=2,
                   attention="causal"),
    "chunked_amortized": dict(kind="transformer", num_layers=2, dim=16, heads=2, ff_mult=2,
                              attention="chunked", chunk_frames=2, left_chunks=1,
                              arbitrator_hidden=4, gate_init_bias=0.0),
    "sliding": dict(kind="transformer", num_layers=2, dim=16, heads=2, ff_mult=2,
                    attention="sliding", window=3),
}


def make_model(name, frontend=FE):
    enc = StreamingEncoderConfig(dropout=0.0, **ENCODERS[name])
    cfg = StreamingTransducerConfig(encoder=enc, predictor=PredictorConfig(embed_dim=8, hidden=8),
                                    joint_dim=8)
    model = StreamingTransducer(cfg, frontend_cfg=frontend, vocab_size=6, rngs=nnx.Rngs(0))
    # Make blank less likely so that the random model emits tokens in most frames: the carried
    # prediction-network state then matters across chunk boundaries.
    model.joint_output.bias[...] = jnp.array([-1.0, 0, 0, 0, 0, 0])
    return model


def audio_batch():
    rng = np.random.default_rng(0)
    audio = rng.normal(0, 0.1, (2, 6000)).astype(np.float32)
    return audio, np.array([6000, 3700])


@pytest.mark.parametrize("name,chunk", [("convrnnt", 8), ("causal", 12),
                                        ("chunked_amortized", 8), ("sliding", 4)])
def test_streamed_equals_offline(name, chunk):
    model = make_model(name)
    audio, lengths = audio_batch()
    graphdef, state = nnx.split(model)

    @jax.jit
    def offline(state, audio, lengths):
        m = nnx.merge(graphdef, state)
        enc, enc_len = m.encode(audio, lengths)
        tokens, tok_len = greedy_decode(m, audio, lengths)
        return enc, enc_len, tokens, tok_len

    enc, enc_len, tokens, tok_len = jax.device_get(offline(state, audio, lengths))

    # 1. Encoder: chunk by chunk on the log-mel frames (rounding tolerance: same fp32 ops).
    feats, frames = log_mel(jnp.asarray(audio), jnp.asarray(lengths), FE)
    n = -(-feats.shape[1] // chunk)
    feats = jnp.pad(feats, ((0, 0), (0, n * chunk - feats.shape[1]), (0, 0)))
    step = jax.jit(lambda st, f, v, s: nnx.merge(graphdef, st).encode_chunk(f, v, s))
    stream_state, outs, valids = model.stream_init(2), [], []
    for j in range(n):
        o, v, stream_state = step(state, feats[:, j * chunk:(j + 1) * chunk],
                                  jnp.clip(frames - j * chunk, 0, chunk), stream_state)
        outs.append(o)
        valids.append(v)
    streamed = np.concatenate(outs, axis=1)[:, :enc.shape[1]]
    valid = np.concatenate(valids, axis=1)[:, :enc.shape[1]]
    np.testing.assert_array_equal(valid.sum(1), enc_len)
    np.testing.assert_allclose(streamed, enc, atol=2e-5)

    # 2. Transcripts: audio chunks -> features -> encoder -> greedy, carrying every state.
    result = StreamingDecoder(model, chunk_frames=chunk).decode(audio, lengths)
    full = [tokens[b, :tok_len[b]].tolist() for b in range(2)]
    assert min(len(t) for t in full) >= 3  # non-trivial transcripts
    assert result.transcripts() == full
    assert len(result.chunk_latencies) == -(-int(frames.max()) // chunk)
    assert result.real_time_factor > 0


@pytest.mark.parametrize("attention,horizon,arbitrator", [
    ("causal", 5, 0), ("sliding", 5, 0), ("chunked", 4, 0), ("causal", 5, 4)])
def test_transformer_encoder_is_causal(attention, horizon, arbitrator):
    """Changing features from frame 20 on (encoder frame 5) leaves earlier encoder frames alone;
    with chunked attention (chunks of 2 encoder frames) frame 4 shares a chunk with frame 5.
    The last case is an amortized (gated) encoder at inference."""
    enc = StreamingEncoderConfig(kind="transformer", num_layers=2, dim=16, heads=2, ff_mult=2,
                                 attention=attention, window=3, chunk_frames=2, left_chunks=1,
                                 arbitrator_hidden=arbitrator, gate_init_bias=0.0, dropout=0.0)
    cfg = StreamingTransducerConfig(encoder=enc, predictor=PredictorConfig(embed_dim=8, hidden=8),
                                    joint_dim=8)
    model = StreamingTransducer(cfg, frontend_cfg=FE, vocab_size=6, rngs=nnx.Rngs(1))
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda st, f, l: nnx.merge(graphdef, st).encode_features(f, l)[0])
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(1, 48, 16)).astype(np.float32)
    changed = feats.copy()
    changed[:, 20:] += 1.0
    a = np.asarray(run(state, feats, jnp.array([48])))
    b = np.asarray(run(state, changed, jnp.array([48])))
    np.testing.assert_allclose(b[:, :horizon], a[:, :horizon], atol=1e-5)
    assert np.abs(b[:, horizon:] - a[:, horizon:]).max() > 1e-3


def test_streaming_input_errors():
    utt = make_model("causal", frontend=FrontendConfig(num_mels=16, normalize="utterance"))
    with pytest.raises(ValueError, match="normalize"):
        StreamingDecoder(utt, chunk_frames=8)
    with pytest.raises(ValueError, match="multiple of the encoder subsampling"):
        StreamingDecoder(make_model("causal"), chunk_frames=6)
    with pytest.raises(ValueError, match="attention chunk"):
        StreamingDecoder(make_model("chunked_amortized"), chunk_frames=4)
    dec = StreamingDecoder(make_model("causal"), chunk_frames=8)
    with pytest.raises(ValueError, match="batch, samples"):
        dec.decode(np.zeros(100, np.float32), np.array([100]))
    small = StreamingEncoderConfig(kind="transformer", num_layers=1, dim=16, heads=2,
                                   max_stream_frames=4)
    cfg = StreamingTransducerConfig(encoder=small, predictor=PredictorConfig(embed_dim=8,
                                                                             hidden=8),
                                    joint_dim=8)
    model = StreamingTransducer(cfg, frontend_cfg=FE, vocab_size=6, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="max_stream_frames"):
        StreamingDecoder(model, chunk_frames=8).decode(*audio_batch())
    with pytest.raises(TypeError, match="encode_chunk"):
        StreamingDecoder(object(), chunk_frames=8)
