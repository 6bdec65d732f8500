"""The discovery encoder: text -> L2-normalized embedding, plus a cosine classifier over the
intents it is trained on.

Encoders (`model.encoder.kind`):
  * "bert_top" (default): the top `trainable_layers` layers of a BERT-family checkpoint over the
    cached token states of its frozen bottom layers (`jaxslu.discovery.features`): batch
    `features` [B, L, H] float32 and `lengths` [B];
  * "bert": the whole checkpoint fine-tuned from token ids (`tokens` [B, L], `lengths`);
  * "transformer": the NLU family's Transformer from scratch on the project's sentencepiece
    tokenizer (`tokens`, `lengths`).
Head: mean pooling over real tokens, an optional linear projection (`proj_dim` > 0), L2
normalization -> `embedding` [B, D]; `intent_logits` = scale * cos(embedding, w_c) over the
training intents (NormFace-style cosine softmax, so the classifier and the pairwise margin loss
shape the same geometry the clustering reads).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxslu.layers.core import Dense, dropout, length_mask
from jaxslu.nlu.models import TextEncoderConfig, TextTransformer, pool
from jaxslu.registry import MODELS


@dataclasses.dataclass(frozen=True)
class DiscoveryModelConfig:
    name: str = "discovery_encoder"
    encoder: TextEncoderConfig = TextEncoderConfig(kind="bert_top", dropout=0.1)
    trainable_layers: int = 2  # bert_top: how many top layers of the checkpoint are trained
    proj_dim: int = 0          # > 0: a linear projection of the pooled vector to this size
    scale: float = 16.0        # cosine-softmax scale of intent_logits


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


@MODELS.register("discovery_encoder", config=DiscoveryModelConfig)
class DiscoveryEncoder(nnx.Module):
    def __init__(self, cfg: DiscoveryModelConfig, *, num_classes: int, vocab_size: int = 0,
                 bert_config: Any = None, rngs: nnx.Rngs):
        self.cfg = cfg
        kind = cfg.encoder.kind
        if kind in ("bert_top", "bert"):
            if bert_config is None:
                raise ValueError(f"model.encoder.kind={kind!r} needs a pretrained checkpoint: "
                                 "set task_options.pretrained (e.g. 'all-MiniLM-L6-v2')")
            d = bert_config.hidden_size
            if kind == "bert_top":
                from jaxslu.nlu.bert import BertLayer

                n = cfg.trainable_layers
                if not 0 <= n <= bert_config.num_layers:
                    raise ValueError(f"model.trainable_layers={n} outside 0.."
                                     f"{bert_config.num_layers} (the checkpoint's layers)")
                self.layers = nnx.List([BertLayer(bert_config, rngs=rngs) for _ in range(n)])
            else:
                from jaxslu.nlu.models import BertAdapter

                self.encoder = BertAdapter(bert_config, cfg.encoder.dropout, rngs=rngs)
        elif kind == "transformer":
            if vocab_size < 1:
                raise ValueError("the from-scratch encoder needs the tokenizer's vocab_size")
            self.encoder = TextTransformer(cfg.encoder, vocab_size, rngs=rngs)
            d = cfg.encoder.dim
        else:
            raise ValueError(f"model.encoder.kind={kind!r}: use 'bert_top', 'bert' or "
                             "'transformer'")
        self.proj = Dense(d, cfg.proj_dim, rngs=rngs, axes=("embed", None)) if cfg.proj_dim else None
        out = cfg.proj_dim or d
        self.classes = (nnx.Param(jax.random.normal(rngs.params(), (num_classes, out)) * 0.02)
                        if num_classes else None)

    def __call__(self, batch, *, train: bool = False, rngs=None) -> dict[str, jax.Array]:
        lengths = jnp.maximum(batch["lengths"], 1)
        if self.cfg.encoder.kind == "bert_top":
            from jaxslu.nlu.bert import attention_bias

            x = batch["features"].astype(jnp.float32)
            bias = attention_bias(length_mask(lengths, x.shape[1]))
            for layer in self.layers:
                x = layer(x, bias, train=train, rngs=rngs, dropout_rate=self.cfg.encoder.dropout)
            states = x
        else:
            states = self.encoder(batch["tokens"], lengths, train=train, rngs=rngs)
        pooled = pool(states.astype(jnp.float32), lengths, "mean")
        if self.proj is not None:
            pooled = self.proj(dropout(pooled, self.cfg.encoder.dropout, train=train, rngs=rngs))
        emb = l2_normalize(pooled)
        out = {"embedding": emb}
        if self.classes is not None:
            w = l2_normalize(self.classes[...])
            out["intent_logits"] = self.cfg.scale * emb @ w.T
        return out
