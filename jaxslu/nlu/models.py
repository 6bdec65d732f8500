"""Text NLU models: a shared text encoder with domain, intent and slot heads.

Encoders:
  * "transformer": a pre-LN Transformer trained from scratch on the project's sentencepiece
    tokenizer (rotary positions, padding masked, dropout from the call's rngs);
  * "bert": a BERT-family encoder (`jaxslu.nlu.bert.BertEncoder`) whose architecture comes from a
    checkpoint's config.json; the task loads the checkpoint's weights into a fresh run.

Heads on the encoder's token states H [B, L, D]: the utterance vector (mean of the real tokens,
or the first token with `pooling="first"`) feeds the intent and domain classifiers; every token
state feeds the BIO slot tagger. Outputs: `intent_logits` [B, I], `domain_logits` [B, S],
`slot_logits` [B, L, T], `embedding` [B, D] (the pooled vector, for open classification and
discovery), `token_states` [B, L, D].

Context input (`context_dim` > 0, from the task's context schema, jaxslu/context): the batch's
`context` [B, C] is projected to D, and a residual two-layer fusion of the pooled text and the
projected context, u' = u + W2 gelu(W1 [u; gelu(Wc c)]) (jaxslu/layers/fusion.py), replaces u
for the intent and domain heads, so the context can change which intent a text means (not only shift a prior). The slot
tagger reads the token states alone. `embedding` stays the text's pooled vector.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxslu.layers.attention import MultiHeadSelfAttention
from jaxslu.layers.core import Dense, Embed, LayerNorm, activation, dropout, length_mask
from jaxslu.layers.fusion import ContextFusion
from jaxslu.registry import MODELS


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
    kind: str = "transformer"  # "transformer" (from scratch) or "bert" (pretrained layout)
    num_layers: int = 4
    dim: int = 256
    heads: int = 4
    ff_mult: int = 4
    dropout: float = 0.1
    activation: str = "gelu"


@dataclasses.dataclass(frozen=True)
class NluConfig:
    name: str = "joint_nlu"
    encoder: TextEncoderConfig = TextEncoderConfig()
    pooling: str = "mean"  # "mean" over real tokens or "first" ([CLS])
    head_dropout: float = 0.1
    intent_head: bool = True
    domain_head: bool = True
    slot_head: bool = True


class TransformerBlock(nnx.Module):
    def __init__(self, cfg: TextEncoderConfig, *, rngs: nnx.Rngs):
        d = cfg.dim
        self.cfg = cfg
        self.norm1 = LayerNorm(d, rngs=rngs)
        self.attn = MultiHeadSelfAttention(d, cfg.heads, dropout_rate=cfg.dropout, rngs=rngs)
        self.norm2 = LayerNorm(d, rngs=rngs)
        self.ff1 = Dense(d, d * cfg.ff_mult, rngs=rngs, axes=("embed", "mlp"))
        self.ff2 = Dense(d * cfg.ff_mult, d, rngs=rngs, axes=("mlp", "embed"))

    def __call__(self, x, lengths, *, train: bool, rngs):
        rate = self.cfg.dropout
        h = self.attn(self.norm1(x), lengths, train=train, rngs=rngs)
        x = x + dropout(h, rate, train=train, rngs=rngs)
        h = self.ff2(dropout(activation(self.cfg.activation)(self.ff1(self.norm2(x))), rate,
                             train=train, rngs=rngs))
        return x + dropout(h, rate, train=train, rngs=rngs)


class TextTransformer(nnx.Module):
    """Token ids [B, L] (0 = padding) and lengths [B] -> token states [B, L, dim]."""

    def __init__(self, cfg: TextEncoderConfig, vocab_size: int, *, rngs: nnx.Rngs):
        if cfg.num_layers < 1 or cfg.dim < 1:
            raise ValueError("model.encoder.num_layers and .dim must be positive")
        self.cfg = cfg
        self.embed = Embed(vocab_size, cfg.dim, rngs=rngs)
        self.layers = nnx.List([TransformerBlock(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.norm = LayerNorm(cfg.dim, rngs=rngs)

    @property
    def dim(self) -> int:
        return self.cfg.dim

    def __call__(self, tokens, lengths, *, train: bool = False, rngs=None):
        x = self.embed(tokens) * jnp.sqrt(jnp.float32(self.cfg.dim))
        x = dropout(x, self.cfg.dropout, train=train, rngs=rngs)
        for layer in self.layers:
            x = layer(x, lengths, train=train, rngs=rngs)
        return self.norm(x)


class BertAdapter(nnx.Module):
    """The BERT encoder behind the (tokens, lengths) interface of the text encoders."""

    def __init__(self, bert_config: Any, dropout_rate: float, *, rngs: nnx.Rngs):
        from jaxslu.nlu.bert import BertEncoder

        self.bert = BertEncoder(bert_config, rngs=rngs)
        self.dropout_rate = dropout_rate
        self._dim = bert_config.hidden_size

    @property
    def dim(self) -> int:
        return self._dim

    def __call__(self, tokens, lengths, *, train: bool = False, rngs=None):
        mask = length_mask(lengths, tokens.shape[1]).astype(jnp.int32)
        return self.bert(tokens, mask, None, train=train, rngs=rngs,
                         dropout_rate=self.dropout_rate)


def pool(states: jax.Array, lengths: jax.Array, how: str) -> jax.Array:
    if how == "first":
        return states[:, 0]
    if how != "mean":
        raise ValueError(f"model.pooling={how!r}: use 'mean' or 'first'")
    mask = length_mask(lengths, states.shape[1]).astype(states.dtype)[..., None]
    return jnp.sum(states * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)


@MODELS.register("joint_nlu", config=NluConfig)
class JointNLU(nnx.Module):
    """Shared text encoder + domain / intent / slot heads (see the module docstring)."""

    def __init__(self, cfg: NluConfig, *, vocab_size: int, num_intents: int, num_domains: int,
                 num_slot_tags: int, bert_config: Any = None, context_dim: int = 0,
                 rngs: nnx.Rngs):
        self.cfg = cfg
        if cfg.encoder.kind == "transformer":
            self.encoder = TextTransformer(cfg.encoder, vocab_size, rngs=rngs)
        elif cfg.encoder.kind == "bert":
            if bert_config is None:
                raise ValueError("model.encoder.kind='bert' needs a checkpoint: set "
                                 "task_options.pretrained to a folder with config.json, "
                                 "model.safetensors and tokenizer.json")
            self.encoder = BertAdapter(bert_config, cfg.encoder.dropout, rngs=rngs)
        else:
            raise ValueError(f"model.encoder.kind={cfg.encoder.kind!r}: use 'transformer' or "
                             "'bert'")
        d = self.encoder.dim
        axes = ("embed", None)
        self.intent = (Dense(d, num_intents, rngs=rngs, axes=axes)
                       if cfg.intent_head and num_intents else None)
        self.domain = (Dense(d, num_domains, rngs=rngs, axes=axes)
                       if cfg.domain_head and num_domains else None)
        self.slots = (Dense(d, num_slot_tags, rngs=rngs, axes=axes)
                      if cfg.slot_head and num_slot_tags > 1 else None)
        self.context_dim = int(context_dim)
        self.context = (ContextFusion(d, self.context_dim, rngs=rngs) if self.context_dim
                        else None)

    def __call__(self, batch, *, train: bool = False, rngs=None) -> dict[str, jax.Array]:
        tokens, lengths = batch["tokens"], batch["token_lengths"]
        states = self.encoder(tokens, jnp.maximum(lengths, 1), train=train, rngs=rngs)
        pooled = pool(states, jnp.maximum(lengths, 1), self.cfg.pooling)
        out = {"token_states": states, "embedding": pooled}
        rate = self.cfg.head_dropout
        utterance = pooled
        if self.context is not None:
            utterance = self.context(pooled, batch.get("context"))
        if self.intent is not None:
            out["intent_logits"] = self.intent(dropout(utterance, rate, train=train, rngs=rngs))
        if self.domain is not None:
            out["domain_logits"] = self.domain(dropout(utterance, rate, train=train, rngs=rngs))
        if self.slots is not None:
            out["slot_logits"] = self.slots(dropout(states, rate, train=train, rngs=rngs))
        return out
