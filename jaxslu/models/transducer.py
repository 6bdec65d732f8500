"""The RNN-T / SLU transducer: frontend -> subsampling -> encoder, prediction network, joint, and
optional CTC, intent and slot heads (the model contract is in docs/DESIGN.md).

Design choices:
  * The model computes its own features (log-mel + utterance normalization, SpecAugment when
    training with an `augment` RNG stream), so a batch carries raw audio and decoding needs only
    audio.
  * Encoders: "conformer" (Conformer blocks with rotary attention, LayerNorm conv module; `causal`
    masks attention to the past and left-pads convolutions and subsampling) or "lstm" (residual
    pre-LN stack of uni-directional LSTMs; there `causal` only decides the subsampling's padding:
    without it each subsampling layer looks one frame ahead). A truly streaming model also needs
    `frontend.normalize="none"`: utterance normalization uses statistics of the whole utterance.
  * Every consumer of the encoder (joint, CTC, intent and slot heads) reads the same encoder output
    projected to the joint dim J, which is what `encode` returns: evaluation and decoding need
    nothing else.
  * Prediction network: embedding of blank-prefixed labels (blank id 0 doubles as the start
    symbol), LSTM layers, projection to J. Its output at position u has read tokens[:u].
  * Slot head input: the predictor output at positions 1..U (the state after reading token u).
  * The model holds only `nnx.Param`s; dropout and SpecAugment keys come from the call's `rngs`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jaxslu.audio.augment import spec_augment
from jaxslu.audio.frontend import log_mel, normalize_utterance, num_frames
from jaxslu.config import FrontendConfig
from jaxslu.layers.conformer import ConformerBlock
from jaxslu.layers.core import (Dense, Embed, LayerNorm, activation, dropout, length_mask,
                                stream_key)
from jaxslu.layers.lstm import LSTM, LSTMState
from jaxslu.layers.subsampling import SUPPORTED_FACTORS, ConvSubsampling, subsampled_length
from jaxslu.models.heads import IntentHead, SlotHead
from jaxslu.registry import MODELS

PredictorState = tuple[LSTMState, ...]


def check_encoder_basics(cfg) -> None:
    """Checks every encoder config shares (subsampling, sizes, dropout), with the field named."""
    if cfg.subsampling not in SUPPORTED_FACTORS:
        raise ValueError(f"model.encoder.subsampling={cfg.subsampling}: use one of "
                         f"{SUPPORTED_FACTORS}")
    if cfg.num_layers < 1 or cfg.dim < 1:
        raise ValueError("model.encoder.num_layers and .dim must be positive")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"model.encoder.dropout={cfg.dropout} must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    kind: str = "conformer"  # "conformer" or "lstm"
    num_layers: int = 2
    dim: int = 144
    heads: int = 4  # conformer attention heads
    ff_mult: int = 4  # conformer feed-forward expansion
    conv_kernel: int = 15  # conformer depthwise kernel (odd unless causal)
    dropout: float = 0.1
    causal: bool = False  # no look-ahead in the encoder (see the module docstring on normalize)
    subsampling: int = 4  # time reduction: 2, 4 or 8
    subsampling_channels: int = 0  # conv channels of the subsampling; 0 -> dim
    lstm_hidden: int = 0  # lstm encoder cells per layer; 0 -> dim (else projected back to dim)

    def __post_init__(self):
        if self.kind not in ("conformer", "lstm"):
            raise ValueError(f"model.encoder.kind={self.kind!r}: use 'conformer' or 'lstm'")
        check_encoder_basics(self)


@dataclasses.dataclass(frozen=True)
class PredictorConfig:
    embed_dim: int = 64
    hidden: int = 128
    layers: int = 1
    dropout: float = 0.1

    def __post_init__(self):
        if self.layers < 1 or self.hidden < 1 or self.embed_dim < 1:
            raise ValueError("model.predictor.embed_dim, .hidden and .layers must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.predictor.dropout={self.dropout} must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class TransducerConfig:
    name: str = "transducer"
    encoder: EncoderConfig = EncoderConfig()
    predictor: PredictorConfig = PredictorConfig()
    joint_dim: int = 128
    joint_activation: str = "tanh"  # must match the rnnt loss term's `activation` option
    ctc_head: bool = False
    intent_head: bool = False
    slot_head: bool = False
    # Cohort membership as an input (fairness): a learned embedding per cohort, zero-initialized
    # (so a warm-started model starts as its base), added to the encoder input after
    # subsampling. The batch carries `cohort` int32 [B] (-1: no cohort, no embedding added).
    num_cohorts: int = 0

    def __post_init__(self):
        activation(self.joint_activation)  # raises on an unknown name
        if self.joint_dim < 1:
            raise ValueError(f"model.joint_dim={self.joint_dim} must be positive")
        if self.num_cohorts < 0:
            raise ValueError(f"model.num_cohorts={self.num_cohorts} must be >= 0")


class ConformerEncoder(nnx.Module):
    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
        self.blocks = nnx.List([
            ConformerBlock(cfg.dim, cfg.heads, ff_mult=cfg.ff_mult, conv_kernel=cfg.conv_kernel,
                           dropout_rate=cfg.dropout, causal=cfg.causal, rngs=rngs)
            for _ in range(cfg.num_layers)])

    def __call__(self, x, lengths, *, train: bool, rngs: nnx.Rngs | None):
        for block in self.blocks:
            x = block(x, lengths, train=train, rngs=rngs)
        return x


class LSTMEncoder(nnx.Module):
    """x = x + dropout(LSTM(LN(x))) per layer, final LN."""

    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
        hidden = cfg.lstm_hidden or cfg.dim
        self.norms = nnx.List([LayerNorm(cfg.dim, rngs=rngs) for _ in range(cfg.num_layers)])
        self.lstms = nnx.List([
            LSTM(cfg.dim, hidden, projection=cfg.dim if hidden != cfg.dim else None, rngs=rngs)
            for _ in range(cfg.num_layers)])
        self.final_norm = LayerNorm(cfg.dim, rngs=rngs)
        self.dropout_rate = cfg.dropout

    def __call__(self, x, lengths, *, train: bool, rngs: nnx.Rngs | None):
        for norm, lstm in zip(self.norms, self.lstms):
            y, _ = lstm(norm(x), lengths)
            x = x + dropout(y, self.dropout_rate, train=train, rngs=rngs)
        return self.final_norm(x)

    def stream(self, x, count, states):
        """One chunk with carried LSTM states (inference): x [B, L, D], `count` [B] valid frames
        in it -> (output [B, L, D], new states); chunks concatenated = `__call__`."""
        new = []
        for norm, lstm, st in zip(self.norms, self.lstms, states):
            y, st = lstm(norm(x), count, initial_state=st)
            x = x + y
            new.append(st)
        return self.final_norm(x), tuple(new)


class Predictor(nnx.Module):
    """Prediction network: Embed(blank-prefixed labels) -> LSTM layers -> Dense to J."""

    def __init__(self, cfg: PredictorConfig, vocab_size: int, joint_dim: int, *, rngs: nnx.Rngs):
        self.embed = Embed(vocab_size, cfg.embed_dim, rngs=rngs)
        dims = [cfg.embed_dim] + [cfg.hidden] * (cfg.layers - 1)
        self.lstms = nnx.List([LSTM(d, cfg.hidden, rngs=rngs) for d in dims])
        self.proj = Dense(cfg.hidden, joint_dim, rngs=rngs, axes=("embed", "joint"))
        self.dropout_rate = cfg.dropout

    def __call__(self, labels, lengths, *, train: bool, rngs: nnx.Rngs | None):
        x = dropout(self.embed(labels), self.dropout_rate, train=train, rngs=rngs)
        for lstm in self.lstms:
            x, _ = lstm(x, lengths)
            x = dropout(x, self.dropout_rate, train=train, rngs=rngs)
        return self.proj(x)

    def init_state(self, batch: int) -> PredictorState:
        return tuple(lstm.init_state(batch) for lstm in self.lstms)

    def step(self, tokens, state: PredictorState):
        x = self.embed(tokens)
        new_state = []
        for lstm, s in zip(self.lstms, state):
            x, s = lstm.step(x, s)
            new_state.append(s)
        return self.proj(x), tuple(new_state)


@MODELS.register("transducer", config=TransducerConfig)
class Transducer(nnx.Module):
    """RNN-T with SLU heads. `model(batch, train=..., rngs=...)` -> outputs (docs/DESIGN.md).

    `ctc`, `intent` and `slots` are the heads' modules, None when the config turns a head off.
    """

    def __init__(self, cfg: TransducerConfig, *, frontend_cfg: FrontendConfig, vocab_size: int,
                 num_intents: int = 0, num_slot_tags: int = 0, context_dim: int = 0,
                 rngs: nnx.Rngs):
        if vocab_size < 2:
            raise ValueError(f"vocab_size={vocab_size}: a transducer needs blank (0) plus at "
                             "least one token")
        if cfg.intent_head and num_intents < 1:
            raise ValueError(f"model.intent_head=True but num_intents={num_intents}: the data has "
                             "no intents; set model.intent_head=False")
        if cfg.slot_head and num_slot_tags < 1:
            raise ValueError(f"model.slot_head=True but num_slot_tags={num_slot_tags}: the data "
                             "has no slot tags; set model.slot_head=False")
        if frontend_cfg.normalize not in ("utterance", "none"):
            raise ValueError(f"frontend.normalize={frontend_cfg.normalize!r}: use 'utterance' or "
                             "'none'")
        enc, J = cfg.encoder, cfg.joint_dim
        self.cfg = cfg
        self.frontend_cfg = frontend_cfg
        self.vocab_size = vocab_size
        self.subsampling = ConvSubsampling(
            frontend_cfg.num_mels, enc.dim, factor=enc.subsampling,
            channels=enc.subsampling_channels or None, causal=enc.causal, rngs=rngs)
        self.encoder = (ConformerEncoder(enc, rngs=rngs) if enc.kind == "conformer"
                        else LSTMEncoder(enc, rngs=rngs))
        self.encoder_proj = Dense(enc.dim, J, rngs=rngs, axes=("embed", "joint"))
        self.predictor = Predictor(cfg.predictor, vocab_size, J, rngs=rngs)
        self.joint_output = Dense(J, vocab_size, rngs=rngs, axes=("joint", "vocab"))
        self.ctc = (Dense(J, vocab_size, rngs=rngs, axes=("joint", "vocab")) if cfg.ctc_head
                    else None)
        if context_dim and not cfg.intent_head:
            raise ValueError(f"context_dim={context_dim}: the context feeds the intent head; set "
                             "model.intent_head=True (or drop task_options.context)")
        self.intent = (IntentHead(J, num_intents, context_dim=context_dim, rngs=rngs)
                       if cfg.intent_head else None)
        self.slots = SlotHead(J, num_slot_tags, rngs=rngs) if cfg.slot_head else None
        self.cohort_embed = (Embed(cfg.num_cohorts, enc.dim, rngs=rngs, axes=(None, "embed"),
                                   stddev=0.0) if cfg.num_cohorts else None)

    # ---- lengths -----------------------------------------------------------------------------

    def output_frames(self, num_samples: int) -> int:
        """Encoder frames for `num_samples` of audio (python int; the data pipeline's check)."""
        return int(subsampled_length(int(num_frames(int(num_samples), self.frontend_cfg)),
                                     self.cfg.encoder.subsampling))

    # ---- encoder side ------------------------------------------------------------------------

    def features(self, audio: jax.Array, audio_lengths: jax.Array, *, train: bool = False,
                 rngs: nnx.Rngs | None = None) -> tuple[jax.Array, jax.Array]:
        """Log-mel features [B, F, M] (normalized per utterance; SpecAugment when training)."""
        if audio.ndim != 2:
            raise ValueError(f"audio must be [batch, samples], got shape {audio.shape}")
        fcfg = self.frontend_cfg
        warp, key = None, None
        if train and rngs is not None:
            key = stream_key(rngs, "augment")
            if fcfg.vtlp != 0:  # VTLP: a warp factor per row (the key is split only then)
                if not 0.0 < fcfg.vtlp < 0.5:
                    raise ValueError(f"frontend.vtlp={fcfg.vtlp} must lie in (0, 0.5) or be 0 "
                                     "(e.g. 0.1: warp factors in [0.9, 1.1])")
                key, k_warp = jax.random.split(key)
                warp = jax.random.uniform(k_warp, (audio.shape[0],), minval=1.0 - fcfg.vtlp,
                                          maxval=1.0 + fcfg.vtlp)
        feats, lengths = log_mel(audio, audio_lengths, fcfg, warp)
        if fcfg.normalize == "utterance":
            feats = normalize_utterance(feats, lengths)
        if key is not None:
            feats = spec_augment(key, feats, lengths, fcfg)
        return feats, lengths

    def cohort_input(self, x: jax.Array, cohort: jax.Array | None) -> jax.Array:
        """x [B, T, D] plus the cohort embedding of each row (none for cohort -1)."""
        if self.cohort_embed is None:
            return x
        if cohort is None:
            raise ValueError(f"model.num_cohorts={self.cfg.num_cohorts}: this model reads the "
                             "cohort of each utterance; the batch needs `cohort` (int32 [B], set "
                             "by the task option cohort_input)")
        cohort = jnp.asarray(cohort, jnp.int32)
        e = self.cohort_embed(jnp.clip(cohort, 0, self.cfg.num_cohorts - 1))
        return x + jnp.where((cohort >= 0)[:, None], e, 0.0)[:, None, :].astype(x.dtype)

    def encode_features(self, feats: jax.Array, frame_lengths: jax.Array, *, train: bool = False,
                        rngs: nnx.Rngs | None = None,
                        cohort: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Features [B, F, M] -> (encoder output projected to J [B, T, J], lengths [B])."""
        x, lengths = self.subsampling(feats, frame_lengths)
        x = self.cohort_input(x, cohort)
        x = dropout(x, self.cfg.encoder.dropout, train=train, rngs=rngs)
        x = self.encoder(x, lengths, train=train, rngs=rngs)
        enc = self.encoder_proj(x)
        return jnp.where(length_mask(lengths, enc.shape[1])[..., None], enc, 0.0), lengths

    def encode(self, audio: jax.Array, audio_lengths: jax.Array, *, train: bool = False,
               rngs: nnx.Rngs | None = None,
               cohort: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Audio [B, N] -> (encoder output [B, T, J], zero at padded frames; lengths int32 [B]).
        `cohort` [B]: the rows' cohorts, for a model with model.num_cohorts > 0."""
        feats, lengths = self.features(audio, audio_lengths, train=train, rngs=rngs)
        return self.encode_features(feats, lengths, train=train, rngs=rngs, cohort=cohort)

    # ---- label side and joint ----------------------------------------------------------------

    def predict(self, tokens: jax.Array, token_lengths: jax.Array, *, train: bool = False,
                rngs: nnx.Rngs | None = None) -> jax.Array:
        """Tokens [B, U] -> prediction-network output [B, U+1, J] over blank-prefixed labels."""
        labels = jnp.concatenate([jnp.zeros((tokens.shape[0], 1), tokens.dtype), tokens], axis=1)
        return self.predictor(labels, token_lengths + 1, train=train, rngs=rngs)

    def predictor_init(self, batch: int) -> PredictorState:
        """Zero state of the prediction network for `batch` rows (before the start symbol)."""
        return self.predictor.init_state(batch)

    def predictor_step(self, tokens: jax.Array, state: PredictorState):
        """Read one token per row: tokens [B] -> (output [B, J], new state).

        Start from `predictor_init(B)` and feed blank (0) first: the start symbol."""
        return self.predictor.step(tokens, state)

    def joint(self, enc: jax.Array, pred: jax.Array) -> jax.Array:
        """Logits act(enc + pred) @ W + b for broadcastable enc [..., J] and pred [..., J]."""
        hidden = activation(self.cfg.joint_activation)(enc + pred)
        return self.joint_output(hidden)

    # ---- SLU ---------------------------------------------------------------------------------

    def intent_from_encoder(self, enc: jax.Array, lengths: jax.Array,
                            context: jax.Array | None = None) -> jax.Array:
        """Intent logits [B, num_intents] from the encoder output [B, T, J]; `context` [B, C]:
        the requests' context vectors, for a model with a context input (task_options.context)."""
        if self.intent is None:
            raise ValueError("this model has no intent head (model.intent_head=False)")
        return self.intent(enc, lengths, context)

    def slots_from_tokens(self, tokens: jax.Array, token_lengths: jax.Array, enc: jax.Array,
                          enc_lengths: jax.Array) -> jax.Array:
        """Slot-tag logits [B, U, num_slot_tags] for a token sequence (reference or hypothesis)."""
        if self.slots is None:
            raise ValueError("this model has no slot head (model.slot_head=False)")
        pred = self.predict(tokens, token_lengths)
        return self.slots(pred[:, 1:], enc, enc_lengths)

    # ---- training forward --------------------------------------------------------------------

    def __call__(self, batch: Mapping[str, jax.Array], *, train: bool = False,
                 rngs: nnx.Rngs | None = None) -> dict[str, Any]:
        missing = [k for k in ("audio", "audio_lengths", "tokens", "token_lengths")
                   if k not in batch]
        if missing:
            raise KeyError(f"batch is missing {missing}; a transducer batch needs audio, "
                           "audio_lengths, tokens and token_lengths (see jaxslu.data.batch)")
        enc, enc_lengths = self.encode(batch["audio"], batch["audio_lengths"], train=train,
                                       rngs=rngs, cohort=batch.get("cohort"))
        pred = self.predict(batch["tokens"], batch["token_lengths"], train=train, rngs=rngs)
        out: dict[str, Any] = {
            "encoder": enc, "encoder_lengths": enc_lengths.astype(jnp.int32), "predictor": pred,
            "joint_weight": self.joint_output.kernel[...],
            "joint_bias": self.joint_output.bias[...],
        }
        if self.ctc is not None:
            out["ctc_logits"] = self.ctc(enc)
        if self.intent is not None:
            out["intent_logits"] = self.intent(enc, enc_lengths, batch.get("context"))
        if self.slots is not None:
            out["slot_logits"] = self.slots(pred[:, 1:], enc, enc_lengths)
        return out
