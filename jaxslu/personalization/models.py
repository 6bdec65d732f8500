"""Models of the personalization family: incremental user embeddings and its baselines.

Batch (one row = one user's event sequence in time order, every position a prediction):
  label [B, T] int32      the event's label (an interpretation, or an item), -1 padding
  tokens [B, T, W] int32  the request's word ids (0 padding; W = 1 and all 0 without text)
  feats [B, T, F] int32   the request's categorical features (hour, weekday, user attributes),
                          ids into one shared table (0 = unknown)
  scored [B, T] float32   1 where the position counts for loss and metrics

`user_embedding` (Incremental user embeddings, ICASSP 2022, as METHODS.md 3.3 describes it): at
position t the request r_t (bag of words + features) meets two histories of the events before t,
each event e_i = label embedding + its features (+ its request's words):
  * long-term: M slots of softmax attention pooling over every event older than the short-term
    window (`jaxslu.personalization.memory`: incrementally mergeable, equal to a full recompute);
  * short-term: the last `window` events, with recency embeddings.
Attention between them, conditioned on the request: the long-term slots read the short-term
events (queries: slot + request); the request then pools the window and the updated slots
(query: request), and a gate mixes the two pools into the ad hoc user profile u_t. The label is
scored by MLP([r, u, r * u]) against the (tied) label embeddings.
`history=False` is the same network with u_t = 0 (the no-history baseline).

`sasrec` (SASRec-style baseline, Kang and McAuley 2018): causal self-attention over the shifted
event sequence (learned positions), its state at t combined with the same request encoder.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxslu.layers.core import Dense, Embed, LayerNorm, dropout, param
from jaxslu.personalization import memory
from jaxslu.registry import MODELS

_NEG = -1e9


@dataclasses.dataclass(frozen=True)
class UserEmbeddingConfig:
    name: str = "user_embedding"
    dim: int = 64
    heads: int = 2
    slots: int = 8           # M long-term memory slots
    window: int = 10         # short-term window (events)
    history: bool = True     # False: the no-history baseline
    use_long: bool = True
    use_short: bool = True
    event_text: bool = True  # past events carry their request's words
    dropout: float = 0.1


@dataclasses.dataclass(frozen=True)
class SasRecConfig:
    name: str = "sasrec"
    dim: int = 64
    heads: int = 2
    num_layers: int = 2
    max_len: int = 512
    dropout: float = 0.2


class CrossAttention(nnx.Module):
    """Multi-head attention of queries [..., Nq, D] over keys [..., Nk, D] (mask [..., Nk])."""

    def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
        if dim % heads:
            raise ValueError(f"model.dim={dim} must be divisible by model.heads={heads}")
        self.heads = heads
        self.query = Dense(dim, dim, rngs=rngs, axes=("embed", "heads"))
        self.key = Dense(dim, dim, rngs=rngs, axes=("embed", "heads"))
        self.value = Dense(dim, dim, rngs=rngs, axes=("embed", "heads"))
        self.out = Dense(dim, dim, rngs=rngs, axes=("heads", "embed"))

    def __call__(self, q, kv_in, mask, *, kv=None):
        """kv: (keys, values) already projected by this module's key/value (then `kv_in` is
        unused)."""
        h = self.heads
        d = q.shape[-1]
        split = lambda y: y.reshape(y.shape[:-1] + (h, d // h))
        keys, values = kv if kv is not None else (self.key(kv_in), self.value(kv_in))
        qh, kh, vh = split(self.query(q)), split(keys), split(values)
        s = jnp.einsum("...qhd,...khd->...hqk", qh, kh) / jnp.sqrt(jnp.float32(d // h))
        m = mask.astype(bool)[..., None, None, :]
        s = jnp.where(m, s, _NEG)
        p = jnp.where(m, jax.nn.softmax(s, axis=-1), 0.0)  # no key: zero context
        ctx = jnp.einsum("...hqk,...khd->...qhd", p, vh)
        return self.out(ctx.reshape(ctx.shape[:-2] + (d,)))


class RequestEncoder(nnx.Module):
    """Bag of the request's words + its categorical features -> [.., D]."""

    def __init__(self, dim: int, vocab_size: int, num_feats: int, *, rngs: nnx.Rngs):
        # small initial embeddings: Adam moves each entry by ~lr per step, so unit-scale
        # tables would take hundreds of steps to leave their random start
        self.words = Embed(max(vocab_size, 1), dim, rngs=rngs, stddev=0.05)
        self.feats = Embed(max(num_feats, 1), dim, rngs=rngs, stddev=0.05)
        self.proj = Dense(2 * dim, dim, rngs=rngs, axes=("mlp", "embed"))
        self.norm = LayerNorm(dim, rngs=rngs)

    def bag(self, tokens):
        m = (tokens > 0).astype(jnp.float32)[..., None]
        e = self.words(tokens) * m
        return jnp.sum(e, axis=-2) / jnp.maximum(jnp.sum(m, axis=-2), 1.0)

    def feature_sum(self, feats):
        m = (feats > 0).astype(jnp.float32)[..., None]
        return jnp.sum(self.feats(feats) * m, axis=-2)

    def __call__(self, tokens, feats):
        x = jnp.concatenate([self.bag(tokens), self.feature_sum(feats)], axis=-1)
        return self.norm(jax.nn.gelu(self.proj(x)))


class LabelHead(nnx.Module):
    """MLP([r, u, r * u]) scored against the label embeddings (tied) + a bias."""

    def __init__(self, dim: int, num_labels: int, *, rngs: nnx.Rngs):
        self.hidden = Dense(3 * dim, 2 * dim, rngs=rngs, axes=("embed", "mlp"))
        self.out = Dense(2 * dim, dim, rngs=rngs, axes=("mlp", "embed"))
        self.norm = LayerNorm(dim, rngs=rngs)
        self.bias = param(rngs, nnx.initializers.zeros, (num_labels,), ("vocab",))

    def __call__(self, r, u, table, *, train, rngs, rate):
        x = jnp.concatenate([r, u, r * u], axis=-1)
        h = self.norm(self.out(dropout(jax.nn.gelu(self.hidden(x)), rate, train=train,
                                       rngs=rngs)))
        # h is layer-normed (entries ~ 1) and the table starts small (std 0.05): initial
        # logits have std ~ 0.05 sqrt(D)
        return h @ table.T + self.bias[...]


@MODELS.register("user_embedding", config=UserEmbeddingConfig)
class UserEmbeddingModel(nnx.Module):
    """Request + long-term (incremental) and short-term histories -> label logits."""

    def __init__(self, cfg: UserEmbeddingConfig, *, num_labels: int, vocab_size: int,
                 num_feats: int, rngs: nnx.Rngs):
        d = cfg.dim
        self.cfg = cfg
        self.num_labels = num_labels
        self.request = RequestEncoder(d, vocab_size, num_feats, rngs=rngs)
        # label table: row 0 is "no event"; rows 1.. are the labels (tied with the output)
        self.labels = Embed(num_labels + 1, d, rngs=rngs, stddev=0.05)
        self.head = LabelHead(d, num_labels, rngs=rngs)
        if cfg.history:
            self.event_norm = LayerNorm(d, rngs=rngs)
            self.event_text = Dense(d, d, rngs=rngs, axes=("embed", "mlp")) if cfg.event_text \
                else None
            self.queries = param(rngs, nnx.initializers.normal(1.0), (cfg.slots, d),
                                 (None, "embed"))
            self.lt_key = Dense(d, d, rngs=rngs, axes=("embed", "heads"))
            self.lt_value = Dense(d, d, rngs=rngs, axes=("embed", "heads"))
            self.recency = param(rngs, nnx.initializers.normal(0.02), (cfg.window, d),
                                 (None, "embed"))
            self.long_reads_short = CrossAttention(d, cfg.heads, rngs=rngs)
            self.pool_short = CrossAttention(d, cfg.heads, rngs=rngs)
            self.pool_long = CrossAttention(d, cfg.heads, rngs=rngs)
            self.gate = Dense(3 * d, d, rngs=rngs, axes=("embed", "mlp"))
            self.profile_norm = LayerNorm(d, rngs=rngs)

    # -- pieces used both by training (all positions) and by serving (incremental) ----------

    def table(self):
        return self.labels.embedding[...][1:]

    def events(self, label, tokens, feats):
        """Event embeddings [..., D] of past events (label -1: padding)."""
        e = self.labels(jnp.maximum(label + 1, 0)) + self.request.feature_sum(feats)
        if self.event_text is not None:
            e = e + self.event_text(self.request.bag(tokens))
        return self.event_norm(e)

    def slot_scores(self, e):
        """Long-term scores [..., M] and values [..., D] of event embeddings [..., D]."""
        d = e.shape[-1]
        s = self.lt_key(e) @ self.queries[...].T / jnp.sqrt(jnp.float32(d))
        return s, self.lt_value(e)

    def profile(self, r, long_mem, long_has, short_kv, short_mask):
        """r [..., D], long_mem [..., M, D], long_has [...], short_kv: {module name: (keys,
        values) [..., W, D]} of the short-term window as each attention projects it, short_mask
        [..., W] -> the ad hoc user profile [..., D].

        The long-term slots read the short-term window (queries: slot + request); the request
        then pools the window and the updated slots; a gate mixes the two pools."""
        cfg = self.cfg
        slot_mask = jnp.broadcast_to(long_has[..., None], long_mem.shape[:-1])
        if not cfg.use_long:
            slot_mask = jnp.zeros_like(slot_mask)
        if not cfg.use_short:
            short_mask = jnp.zeros_like(short_mask)
        long2 = long_mem + self.long_reads_short(long_mem + r[..., None, :], None, short_mask,
                                                 kv=short_kv["long_reads_short"])
        q = r[..., None, :]
        ps = self.pool_short(q, None, short_mask, kv=short_kv["pool_short"])[..., 0, :]
        pl = self.pool_long(q, long2, slot_mask)[..., 0, :]
        g = jax.nn.sigmoid(self.gate(jnp.concatenate([r, ps, pl], axis=-1)))
        return self.profile_norm(g * ps + (1.0 - g) * pl)

    WINDOW_READERS = ("long_reads_short", "pool_short")

    def window_kv(self, short):
        """Keys and values of a short-term window [..., W, D] (event + recency) per reader."""
        x = short + self.recency[...]
        return {n: (getattr(self, n).key(x), getattr(self, n).value(x))
                for n in self.WINDOW_READERS}

    def window_kv_gathered(self, e, idx):
        """The same for every position's window at once: keys and values are linear in the
        event embeddings, so project the T events once and gather the windows (idx [T, W])
        instead of projecting T * W window entries."""
        out = {}
        for n in self.WINDOW_READERS:
            mod = getattr(self, n)
            rec = self.recency[...]
            k = jnp.take(mod.key(e), idx, axis=1) + rec @ mod.key.kernel[...]
            v = jnp.take(mod.value(e), idx, axis=1) + rec @ mod.value.kernel[...]
            out[n] = (k, v)
        return out

    # -- training / batch evaluation: every position of every sequence ----------------------

    def __call__(self, batch, *, train: bool = False, rngs=None):
        cfg = self.cfg
        label, tokens, feats = batch["label"], batch["tokens"], batch["feats"]
        r = self.request(tokens, feats)  # [B, T, D]
        r = dropout(r, cfg.dropout, train=train, rngs=rngs)
        if cfg.history:
            valid = label >= 0
            e = self.events(label, tokens, feats)                # [B, T, D]
            e = dropout(e, cfg.dropout, train=train, rngs=rngs)
            s, v = self.slot_scores(e)
            long_mem, long_has = memory.prefix_memory(s, v, valid, cfg.window)
            T, W = label.shape[1], cfg.window
            idx = jnp.arange(T)[:, None] - W + jnp.arange(W)[None, :]  # [T, W]: t-W .. t-1
            ok = idx >= 0
            short_kv = self.window_kv_gathered(e, jnp.clip(idx, 0))  # [B, T, W, D] each
            short_mask = ok[None] & jnp.take(valid, jnp.clip(idx, 0), axis=1)
            u = self.profile(r, long_mem, long_has, short_kv, short_mask)
        else:
            u = jnp.zeros_like(r)
        logits = self.head(r, u, self.table(), train=train, rngs=rngs, rate=cfg.dropout)
        return {"logits": logits, "profile": u, "request": r}

    # -- serving: one request against a stored state ---------------------------------------

    def init_state(self, batch: tuple[int, ...] = ()):
        d = self.labels.embedding.shape[-1]
        return {"long": memory.empty_state(self.cfg.slots, d, batch),
                "short": jnp.zeros(batch + (self.cfg.window, d)),
                "short_mask": jnp.zeros(batch + (self.cfg.window,), bool)}

    def observe(self, state, label, tokens, feats):
        """Append one event per row (label [...], tokens [..., W], feats [..., F]) to the state:
        the event that leaves the short-term window merges into the long-term state (O(M D),
        whatever the history length)."""
        e = self.events(label, tokens, feats)
        leaving, leaving_ok = state["short"][..., 0, :], state["short_mask"][..., 0]
        s, v = self.slot_scores(leaving)
        long = memory.merge(state["long"], s[..., None, :], v[..., None, :], leaving_ok[..., None])
        short = jnp.concatenate([state["short"][..., 1:, :], e[..., None, :]], axis=-2)
        mask = jnp.concatenate([state["short_mask"][..., 1:], jnp.ones_like(leaving_ok)[..., None]],
                               axis=-1)
        return {"long": long, "short": short, "short_mask": mask}

    def merge_window(self, long_state, events_e, mask=None):
        """Merge a window of event embeddings [..., n, D] into a long-term state."""
        s, v = self.slot_scores(events_e)
        return memory.merge(long_state, s, v, mask)

    def predict(self, state, tokens, feats):
        """Label logits of one request per row against a serving state."""
        r = self.request(tokens, feats)
        # the stored short window holds raw event embeddings, oldest first; recency as in training
        long_mem = memory.read(state["long"])
        u = self.profile(r, long_mem, state["long"].count > 0, self.window_kv(state["short"]),
                         state["short_mask"])
        return self.head(r, u, self.table(), train=False, rngs=None, rate=0.0)


class CausalBlock(nnx.Module):
    def __init__(self, dim: int, heads: int, rate: float, *, rngs: nnx.Rngs):
        self.norm1 = LayerNorm(dim, rngs=rngs)
        self.q = Dense(dim, dim, rngs=rngs, axes=("embed", "heads"))
        self.k = Dense(dim, dim, rngs=rngs, axes=("embed", "heads"))
        self.v = Dense(dim, dim, rngs=rngs, axes=("embed", "heads"))
        self.o = Dense(dim, dim, rngs=rngs, axes=("heads", "embed"))
        self.norm2 = LayerNorm(dim, rngs=rngs)
        self.ff1 = Dense(dim, 2 * dim, rngs=rngs, axes=("embed", "mlp"))
        self.ff2 = Dense(2 * dim, dim, rngs=rngs, axes=("mlp", "embed"))
        self.heads, self.rate = heads, rate

    def __call__(self, x, valid, *, train, rngs):
        b, t, d = x.shape
        h = self.heads
        y = self.norm1(x)
        split = lambda z: z.reshape(b, t, h, d // h)
        s = jnp.einsum("bqhd,bkhd->bhqk", split(self.q(y)), split(self.k(y)))
        s = s / jnp.sqrt(jnp.float32(d // h))
        mask = jnp.tril(jnp.ones((t, t), bool))[None, None] & valid[:, None, None, :]
        p = jnp.where(mask, jax.nn.softmax(jnp.where(mask, s, _NEG), axis=-1), 0.0)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", p, split(self.v(y))).reshape(b, t, d)
        x = x + dropout(self.o(ctx), self.rate, train=train, rngs=rngs)
        y = self.ff2(dropout(jax.nn.gelu(self.ff1(self.norm2(x))), self.rate, train=train,
                             rngs=rngs))
        return x + dropout(y, self.rate, train=train, rngs=rngs)


@MODELS.register("sasrec", config=SasRecConfig)
class SasRec(nnx.Module):
    """Causal self-attention over the events before t (+ the request at t) -> label logits."""

    def __init__(self, cfg: SasRecConfig, *, num_labels: int, vocab_size: int, num_feats: int,
                 rngs: nnx.Rngs):
        d = cfg.dim
        self.cfg = cfg
        self.request = RequestEncoder(d, vocab_size, num_feats, rngs=rngs)
        self.labels = Embed(num_labels + 2, d, rngs=rngs, stddev=0.05)  # 0 pad, 1 start, 2..
        self.positions = param(rngs, nnx.initializers.normal(0.02), (cfg.max_len, d),
                               (None, "embed"))
        self.blocks = nnx.List([CausalBlock(d, cfg.heads, cfg.dropout, rngs=rngs)
                                for _ in range(cfg.num_layers)])
        self.norm = LayerNorm(d, rngs=rngs)
        self.head = LabelHead(d, num_labels, rngs=rngs)

    def __call__(self, batch, *, train: bool = False, rngs=None):
        cfg = self.cfg
        label, tokens, feats = batch["label"], batch["tokens"], batch["feats"]
        B, T = label.shape
        if T > cfg.max_len:
            raise ValueError(f"sequence of {T} events exceeds model.max_len={cfg.max_len}; "
                             "raise model.max_len or lower task_options.max_events")
        prev = jnp.concatenate([jnp.ones((B, 1), jnp.int32), jnp.maximum(label[:, :-1] + 2, 0)],
                               axis=1)  # event t-1 at position t (start token at t = 0)
        valid = prev > 0
        x = self.labels(prev) + self.positions[...][:T]
        x = dropout(x, cfg.dropout, train=train, rngs=rngs)
        for blk in self.blocks:
            x = blk(x, valid, train=train, rngs=rngs)
        h = self.norm(x)
        r = dropout(self.request(tokens, feats), cfg.dropout, train=train, rngs=rngs)
        table = self.labels.embedding[...][2:]
        return {"logits": self.head(r, h, table, train=train, rngs=rngs, rate=cfg.dropout),
                "profile": h, "request": r}
