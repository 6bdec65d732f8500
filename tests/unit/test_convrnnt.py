"""ConvRNN-T: the global block against an independent NumPy reference (causal dilated depthwise
conv and cumulative-mean squeeze-and-excitation), causality and padding invariance of the front end
and of the whole encoder, configuration errors."""
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxslu.config import FrontendConfig, load_config
from jaxslu.layers.convrnnt import ConvRNNTFrontend, GlobalBlock
from jaxslu.models.streaming import (StreamingEncoderConfig, StreamingTransducer,
                                     StreamingTransducerConfig)
from jaxslu.models.transducer import PredictorConfig

FE = FrontendConfig(num_mels=16, normalize="none")
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def tiny_model(seed=0):
    enc = StreamingEncoderConfig(kind="convrnnt", num_layers=2, dim=16, local_channels=(4, 4),
                                 local_kernel=(3, 3), global_channels=8, global_blocks=3,
                                 dropout=0.0)
    cfg = StreamingTransducerConfig(encoder=enc, predictor=PredictorConfig(embed_dim=8, hidden=8),
                                    joint_dim=8)
    return StreamingTransducer(cfg, frontend_cfg=FE, vocab_size=5, rngs=nnx.Rngs(seed))


def _np(v):
    return np.asarray(v[...], np.float64)


def test_global_block_matches_numpy_reference():
    """float64 NumPy: LN -> pointwise -> causal depthwise (dilation 4) -> swish -> pointwise ->
    SE with the cumulative mean over valid frames -> residual. fp32 vs fp64: tolerance 1e-4."""
    block = GlobalBlock(6, 2, 3, 4, 2, rngs=nnx.Rngs(1))
    rng = np.random.default_rng(0)
    b, t = 2, 11
    x = rng.normal(size=(b, t, 6)).astype(np.float32)
    lengths = np.array([11, 7])
    valid = np.arange(t)[None, :] < lengths[:, None]
    y, _ = block(jnp.asarray(x), jnp.asarray(valid), block.init_state(b))

    xd = x.astype(np.float64)
    mu = xd.mean(-1, keepdims=True)
    var = ((xd - mu) ** 2).mean(-1, keepdims=True)
    h = (xd - mu) / np.sqrt(var + 1e-5) * _np(block.norm.scale) + _np(block.norm.bias)
    h = (h @ _np(block.pointwise_in.kernel) + _np(block.pointwise_in.bias)) * valid[..., None]
    k = _np(block.depthwise)[:, 0, :]  # [K, E]
    conv = np.zeros_like(h)
    for tt in range(t):
        for i in range(3):
            src = tt - (2 - i) * 4  # kernel tap i reads frame t - (K-1-i)*dilation
            if src >= 0:
                conv[:, tt] += k[i] * h[:, src]
    conv += _np(block.depthwise_bias)
    sw = conv / (1 + np.exp(-conv))
    z = sw @ _np(block.pointwise_out.kernel) + _np(block.pointwise_out.bias)
    se = np.zeros_like(z)
    for bb in range(b):
        for tt in range(t):
            frames = [s for s in range(tt + 1) if valid[bb, s]]
            mean = z[bb, frames].mean(0) if frames else np.zeros(z.shape[-1])
            a = mean @ _np(block.se_down.kernel) + _np(block.se_down.bias)
            a = a / (1 + np.exp(-a))
            e = 1 / (1 + np.exp(-(a @ _np(block.se_up.kernel) + _np(block.se_up.bias))))
            se[bb, tt] = z[bb, tt] * e
    ref = xd + se
    np.testing.assert_allclose(np.asarray(y)[valid], ref[valid], atol=1e-4, rtol=1e-4)


def test_frontend_is_causal_and_padding_invariant():
    front = ConvRNNTFrontend(16, 12, factor=4, local_channels=(4, 4), local_kernel=(3, 5),
                             global_channels=8, global_blocks=3, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(1, 40, 16)).astype(np.float32)
    lengths = jnp.array([40])
    y, out_len = front(jnp.asarray(feats), lengths)
    assert y.shape == (1, 10, 12) and int(out_len[0]) == 10
    # Future input (feature frames >= 24, i.e. output frames >= 6) leaves outputs 0..5 unchanged.
    changed = feats.copy()
    changed[:, 24:] = rng.normal(size=(1, 16, 16))
    y2, _ = front(jnp.asarray(changed), lengths)
    np.testing.assert_allclose(np.asarray(y2)[:, :6], np.asarray(y)[:, :6], atol=1e-6)
    assert np.abs(np.asarray(y2)[:, 6:] - np.asarray(y)[:, 6:]).max() > 1e-3
    # A row's valid outputs do not depend on how much padding follows it.
    padded = np.concatenate([feats[:, :30], np.full((1, 18, 16), 7.0, np.float32)], axis=1)
    y3, l3 = front(jnp.asarray(padded), jnp.array([30]))
    y4, _ = front(jnp.asarray(feats[:, :32]), jnp.array([30]))
    assert int(l3[0]) == 8
    np.testing.assert_allclose(np.asarray(y3)[:, :8], np.asarray(y4)[:, :8], atol=1e-6)


def test_convrnnt_encoder_is_causal():
    model = tiny_model()
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(2, 48, 16)).astype(np.float32)
    lengths = jnp.array([48, 36])
    enc, enc_len = model.encode_features(jnp.asarray(feats), lengths)
    assert enc.shape == (2, 12, 8) and enc_len.tolist() == [12, 9]
    changed = feats.copy()
    changed[:, 20:] += rng.normal(size=(2, 28, 16)).astype(np.float32)
    enc2, _ = model.encode_features(jnp.asarray(changed), lengths)
    np.testing.assert_allclose(np.asarray(enc2)[:, :5], np.asarray(enc)[:, :5], atol=1e-5)
    assert np.abs(np.asarray(enc2)[:, 5:9] - np.asarray(enc)[:, 5:9]).max() > 1e-4


def test_convrnnt_config_and_model():
    cfg = load_config(CONFIGS / "slurp_convrnnt.py", "tiny")
    assert cfg.model.name == "streaming_transducer" and cfg.frontend.normalize == "none"
    model = tiny_model()
    # The placeholder modules of the base constructor are gone: the front end is ConvRNN-T's.
    assert isinstance(model.subsampling, ConvRNNTFrontend)
    assert model.output_frames(16000) == -(-98 // 4)
    out = model({"audio": jnp.zeros((1, 4000)), "audio_lengths": jnp.array([4000]),
                 "tokens": jnp.array([[1, 2]]), "token_lengths": jnp.array([2])})
    assert out["encoder"].shape[:2] == (1, model.output_frames(4000))


def test_bad_configs_are_clear_errors():
    with pytest.raises(ValueError, match="kind"):
        StreamingEncoderConfig(kind="rnn")
    with pytest.raises(ValueError, match="causal"):
        StreamingEncoderConfig(causal=False)
    with pytest.raises(ValueError, match="no mel bins"):
        ConvRNNTFrontend(8, 4, local_channels=(2, 2, 2, 2), local_kernel=(3, 4),
                         local_freq_stride=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="local_kernel"):
        StreamingEncoderConfig(local_kernel=(3,))
