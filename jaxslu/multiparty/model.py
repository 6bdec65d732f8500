"""The separator-transducer-segmenter (SURT with turn tokens; Sklyar et al., Interspeech 2022).

    mixture audio -> log-mel -> causal ConvSubsampling -> x [B, T, D]
      -> separator: residual causal LSTM stack -> masks m_c = sigmoid(W_c h) [B, C, T, D]
      -> channel c input x * m_c; every channel through the same causal LSTM encoder (tied
         parameters: channels are folded into the batch) -> projection to J -> enc [B, C, T, J]
      -> per channel: the transducer's prediction network and joint (tied), emitting words plus
         <sot> / <eot>, and a speech-activity logit per frame (activity head, tied).

`channels=1` is the single-channel baseline: the same network without a separation (one stream
holding every turn in start order). Everything is causal: `stream_init` / `encode_chunk` encode
chunk by chunk with carried state (subsampling caches, separator and encoder LSTM states) and give
the offline encoder output (tested), so a mixture is decoded while it is being spoken.

Outputs of `__call__` (what jaxslu/multiparty/losses.py reads): encoder [B, C, T, J],
encoder_lengths [B], predictor [B, C, U+1, J] (over each reference channel's tokens, batch
`tokens` [B, C, U], `token_lengths` [B, C]), joint_weight / joint_bias, activity_logits [B, C, T].
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jaxslu.config import FrontendConfig
from jaxslu.layers.core import Dense, LayerNorm, dropout, length_mask
from jaxslu.layers.lstm import LSTM
from jaxslu.models.transducer import EncoderConfig, Transducer, TransducerConfig
from jaxslu.registry import MODELS


@dataclasses.dataclass(frozen=True)
class SurtConfig(TransducerConfig):
    name: str = "surt"
    encoder: EncoderConfig = EncoderConfig(kind="lstm", num_layers=2, dim=128, causal=True,
                                           subsampling=4)
    channels: int = 2  # output channels (2: SURT; 1: the single-channel baseline)
    separator_layers: int = 1  # residual causal LSTM layers of the mask estimator
    activity_head: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.channels < 1:
            raise ValueError(f"model.channels={self.channels} must be >= 1")
        if self.separator_layers < 0:
            raise ValueError(f"model.separator_layers={self.separator_layers} must be >= 0")
        if self.encoder.kind != "lstm" or not self.encoder.causal:
            raise ValueError("the SURT model streams: use model.encoder=EncoderConfig(kind='lstm', "
                             "causal=True, ...)")
        if self.intent_head or self.slot_head or self.num_cohorts:
            raise ValueError("the SURT model has no intent, slot or cohort heads")


@MODELS.register("surt", config=SurtConfig)
class Surt(Transducer):
    def __init__(self, cfg: SurtConfig, *, frontend_cfg: FrontendConfig, vocab_size: int,
                 rngs: nnx.Rngs):
        super().__init__(cfg, frontend_cfg=frontend_cfg, vocab_size=vocab_size, rngs=rngs)
        d = cfg.encoder.dim
        self.sep_norms = nnx.List([LayerNorm(d, rngs=rngs) for _ in range(cfg.separator_layers)])
        self.sep_lstms = nnx.List([LSTM(d, d, rngs=rngs) for _ in range(cfg.separator_layers)])
        # Masks start near 0.5 everywhere with small channel differences (init from the rngs).
        self.sep_out = Dense(d, cfg.channels * d, rngs=rngs, axes=("embed", None))
        self.activity = (Dense(cfg.joint_dim, 1, rngs=rngs, axes=("joint", None))
                         if cfg.activity_head else None)

    @property
    def channels(self) -> int:
        return self.cfg.channels

    # ---- encoder -----------------------------------------------------------------------------

    def _masks(self, h: jax.Array) -> jax.Array:
        b, t, d = h.shape
        m = jax.nn.sigmoid(self.sep_out(h)).reshape(b, t, self.channels, d)
        return jnp.moveaxis(m, 2, 1)  # [B, C, T, D]

    def separate(self, x: jax.Array, lengths: jax.Array) -> jax.Array:
        """x [B, T, D] -> channel inputs [B, C, T, D] (x times each channel's mask)."""
        h = x
        for norm, lstm in zip(self.sep_norms, self.sep_lstms):
            y, _ = lstm(norm(h), lengths)
            h = h + y
        return x[:, None] * self._masks(h)

    def _channel_encoder(self, xs: jax.Array, lengths: jax.Array, *, train: bool, rngs):
        b, c, t, d = xs.shape
        flat = xs.reshape(b * c, t, d)
        enc = self.encoder(flat, jnp.repeat(lengths, c), train=train, rngs=rngs)
        enc = self.encoder_proj(enc).reshape(b, c, t, -1)
        return jnp.where(length_mask(lengths, t)[:, None, :, None], enc, 0.0)

    def encode_features(self, feats, frame_lengths, *, train: bool = False, rngs=None,
                        cohort=None):
        """Features [B, F, M] -> (channel encoder outputs [B, C, T, J], lengths [B])."""
        x, lengths = self.subsampling(feats, frame_lengths)
        x = dropout(x, self.cfg.encoder.dropout, train=train, rngs=rngs)
        return self._channel_encoder(self.separate(x, lengths), lengths, train=train,
                                     rngs=rngs), lengths

    def activity_logits(self, enc: jax.Array) -> jax.Array:
        if self.activity is None:
            raise ValueError("this model has no activity head (model.activity_head=False)")
        return self.activity(enc)[..., 0]

    # ---- training forward --------------------------------------------------------------------

    def __call__(self, batch: Mapping[str, jax.Array], *, train: bool = False,
                 rngs: nnx.Rngs | None = None) -> dict[str, Any]:
        tokens, token_lengths = batch["tokens"], batch["token_lengths"]
        if tokens.ndim != 3 or tokens.shape[1] != self.channels:
            raise ValueError(f"batch tokens must be [batch, channels={self.channels}, U] (one "
                             f"reference stream per output channel), got {tokens.shape}")
        enc, lengths = self.encode(batch["audio"], batch["audio_lengths"], train=train, rngs=rngs)
        b, c, u = tokens.shape
        pred = self.predict(tokens.reshape(b * c, u), token_lengths.reshape(b * c), train=train,
                            rngs=rngs).reshape(b, c, u + 1, -1)
        out: dict[str, Any] = {
            "encoder": enc, "encoder_lengths": lengths.astype(jnp.int32), "predictor": pred,
            "joint_weight": self.joint_output.kernel[...],
            "joint_bias": self.joint_output.bias[...]}
        if self.activity is not None:
            out["activity_logits"] = self.activity_logits(enc)
        return out

    # ---- streaming ---------------------------------------------------------------------------

    def stream_init(self, batch: int) -> dict[str, Any]:
        """State before the first chunk (zero caches = causal zero padding, zero LSTM states)."""
        caches, mels = [], self.frontend_cfg.num_mels
        for kernel in self.subsampling.kernels:
            caches.append(jnp.zeros((batch, 2, mels, kernel.shape[2]), jnp.float32))
            mels = (mels + 1) // 2
        return {"feat_frames": jnp.zeros((batch,), jnp.int32), "offset": jnp.zeros((), jnp.int32),
                "front": tuple(caches),
                "sep": tuple(lstm.init_state(batch) for lstm in self.sep_lstms),
                "enc": tuple(lstm.init_state(batch * self.channels)
                             for lstm in self.encoder.lstms)}

    def stream_chunk_check(self, feature_frames: int) -> None:
        s = self.cfg.encoder.subsampling
        if feature_frames < 1 or feature_frames % s:
            raise ValueError(f"streaming chunk of {feature_frames} feature frames must be a "
                             f"positive multiple of the encoder subsampling ({s})")

    def encode_chunk(self, feats: jax.Array, num_valid: jax.Array, state: dict[str, Any]):
        """Encode the next chunk of log-mel frames feats [B, L, M] (L a multiple of the
        subsampling; `num_valid` [B] real frames in it). Returns (enc [B, C, L/s, J] zero at
        invalid frames, valid [B, L/s], new state); the valid frames of all chunks concatenated
        are `encode_features` of the whole mixture (up to float rounding)."""
        from jaxslu.models.streaming import StreamingTransducer, chunk_positions

        b, length, _ = feats.shape
        steps, total, enc_total, enc_offset, valid = chunk_positions(
            state, num_valid, length, self.cfg.encoder.subsampling)
        x, front = StreamingTransducer._subsample_chunk(self, feats, total, state["offset"],
                                                        state["front"])
        count = jnp.clip(enc_total - enc_offset, 0, steps)
        h, sep_states = x, []
        for norm, lstm, st in zip(self.sep_norms, self.sep_lstms, state["sep"]):
            y, st = lstm(norm(h), count, initial_state=st)
            h = h + y
            sep_states.append(st)
        xs = x[:, None] * self._masks(h)
        c = self.channels
        flat = xs.reshape(b * c, steps, -1)
        count_c = jnp.repeat(count, c)
        flat, enc_states = self.encoder.stream(flat, count_c, state["enc"])
        enc = self.encoder_proj(flat).reshape(b, c, steps, -1)
        enc = jnp.where(valid[:, None, :, None], enc, 0.0)
        new = {"feat_frames": total, "offset": state["offset"] + length, "front": front,
               "sep": tuple(sep_states), "enc": enc_states}
        return enc, valid, new
