"""KGAT (Wang et al., "KGAT: Knowledge Graph Attention Network for Recommendation", KDD 2019)
in Flax NNX, with contrastive views, and the BPR-MF baseline.

Graph: the collaborative knowledge graph travels with each batch (`batch["graph"]`: int32
`head`, `relation`, `tail`, replicated on every device, sorted by relation; see
jaxslu/recommendation/data.py). An edge (h, r, t) is a message from t to h.

KGAT, per step:
  * attention (shared by every layer, from the layer-0 embeddings e):
      pi(h, r, t) = (W_r e_t)^T tanh(W_r e_h + e_r),
    softmax over each head's edges (segment max / segment sum over `head`, numerically stable);
    W_r is applied once per distinct (node, relation) of the graph, then gathered per edge (no
    [E, d, k] gather, no per-edge matrix product).
    As in KGAT (which refreshes its attentive adjacency from the TransR-trained embeddings
    outside the CF gradient) the CF / contrastive losses do not differentiate through the
    attention unless `attention_grad=True`; the TransR term trains e, e_r and W_r.
  * layer l: e_N = sum_t pi(h,r,t) e_t^(l);  e^(l+1) = LeakyReLU(W1 (e + e_N)) +
    LeakyReLU(W2 (e * e_N)) (bi-interaction aggregator), message dropout;
  * representation: [e^(0), norm(e^(1)), ..., norm(e^(L))] concatenated (L2-normalized layer
    outputs, as KGAT); score y(u, i) = <rep_u, rep_i>.
Contrastive views (`contrastive=True`): two more propagations of the same layers with random
edge dropout and node dropout (a dropped node loses all its edges; keys from `rngs.augment`),
softmax re-normalized over the kept edges; their representations of the batch's users and
positive items feed the graph InfoNCE term.

Outputs: `user`, `pos_item`, `neg_item` [B, D] (representations of the batch rows),
`view1_user`, `view2_user`, `view1_item`, `view2_item` [B, D] (contrastive views),
`kg_pos_score`, `kg_neg_score` [B] (TransR g(h, r, t), g(h, r, t')), `kg_l2` [B] (half the
squared norms of e_h, e_r, e_t, e_t': KGAT's regularizer).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxslu.layers.core import stream_key
from jaxslu.registry import MODELS


@dataclasses.dataclass(frozen=True)
class KgatConfig:
    name: str = "kgat"
    dim: int = 64                       # entity / user embedding size (and relation size)
    layer_dims: tuple[int, ...] = (64, 32, 16)
    message_dropout: float = 0.1
    contrastive: bool = True            # compute the two augmented views
    edge_dropout: float = 0.2           # views: fraction of edges dropped
    node_dropout: float = 0.1           # views: fraction of nodes dropped (with their edges)
    temperature: float = 0.2            # InfoNCE temperature (graph_infonce's default)
    attention_grad: bool = False        # differentiate the CF/contrastive losses through pi
    leaky_slope: float = 0.01
    init_scale: float = 0.1


@dataclasses.dataclass(frozen=True)
class BprMfConfig:
    name: str = "bpr_mf"
    dim: int = 64
    init_scale: float = 0.1
    uses_graph: bool = False  # the task leaves the CKG out of its batches


def _normal(scale):
    return nnx.initializers.normal(scale)


def segment_softmax(logits: jax.Array, segments: jax.Array, num_segments: int,
                    mask: jax.Array | None = None) -> jax.Array:
    """Softmax of `logits` [E] within each segment (edges of one head); masked-out entries get 0.
    Stable: the segment maximum is subtracted (and not differentiated; it cancels)."""
    logits = logits.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, -jnp.inf)
    m = jax.ops.segment_max(logits, segments, num_segments=num_segments)
    m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
    ex = jnp.exp(logits - m[segments])
    if mask is not None:
        ex = jnp.where(mask, ex, 0.0)
    total = jax.ops.segment_sum(ex, segments, num_segments=num_segments)
    return ex / jnp.maximum(total[segments], 1e-30)


class BiInteraction(nnx.Module):
    """LeakyReLU(W1 (e + e_N)) + LeakyReLU(W2 (e * e_N))."""

    def __init__(self, d_in: int, d_out: int, slope: float, *, rngs: nnx.Rngs):
        init = nnx.initializers.xavier_uniform()
        self.w1 = nnx.Param(init(rngs.params(), (d_in, d_out)), logical_axes=("embed", "mlp"))
        self.b1 = nnx.Param(jnp.zeros((d_out,)), logical_axes=("mlp",))
        self.w2 = nnx.Param(init(rngs.params(), (d_in, d_out)), logical_axes=("embed", "mlp"))
        self.b2 = nnx.Param(jnp.zeros((d_out,)), logical_axes=("mlp",))
        self.slope = slope

    def __call__(self, ego, neigh):
        act = lambda x: jax.nn.leaky_relu(x, self.slope)
        return (act((ego + neigh) @ self.w1[...] + self.b1[...])
                + act((ego * neigh) @ self.w2[...] + self.b2[...]))


def _l2_normalize(x, eps=1e-12):
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), eps))


@MODELS.register("kgat", config=KgatConfig)
class Kgat(nnx.Module):
    """See the module docstring. Constructor sizes come from the task's assets."""

    def __init__(self, cfg: KgatConfig, *, num_users: int, num_items: int, num_entities: int,
                 num_relations: int, relation_offsets: Sequence[int],
                 projection_offsets: Sequence[int], rngs: nnx.Rngs):
        if cfg.dim < 1 or not cfg.layer_dims or min(cfg.layer_dims) < 1:
            raise ValueError(f"model.dim={cfg.dim} and model.layer_dims={cfg.layer_dims} must be "
                             "positive (at least one layer)")
        for name in ("message_dropout", "edge_dropout", "node_dropout"):
            if not 0.0 <= getattr(cfg, name) < 1.0:
                raise ValueError(f"model.{name}={getattr(cfg, name)} must be in [0, 1)")
        if len(relation_offsets) != num_relations + 1:
            raise ValueError(f"relation_offsets has {len(relation_offsets)} entries for "
                             f"{num_relations} relations (needs num_relations + 1)")
        self.cfg = cfg
        self.num_users, self.num_items, self.num_entities = num_users, num_items, num_entities
        self.num_nodes = num_entities + num_users
        self.num_relations = num_relations
        self.relation_offsets = tuple(int(x) for x in relation_offsets)
        self.projection_offsets = tuple(int(x) for x in projection_offsets)
        if len(self.projection_offsets) != num_relations + 1:
            raise ValueError(f"projection_offsets has {len(self.projection_offsets)} entries for "
                             f"{num_relations} relations (needs num_relations + 1)")
        d = cfg.dim
        self.node_embedding = nnx.Param(_normal(cfg.init_scale)(rngs.params(), (self.num_nodes, d)),
                                        logical_axes=("nodes", "embed"))
        self.relation_embedding = nnx.Param(
            _normal(cfg.init_scale)(rngs.params(), (num_relations, d)),
            logical_axes=("relations", "embed"))
        self.transr = nnx.Param(nnx.initializers.xavier_uniform(batch_axis=(0,))(
            rngs.params(), (num_relations, d, d)), logical_axes=("relations", "embed", None))
        dims = (d,) + tuple(cfg.layer_dims)
        self.layers = nnx.List([BiInteraction(dims[k], dims[k + 1], cfg.leaky_slope, rngs=rngs)
                                for k in range(len(cfg.layer_dims))])

    @property
    def rep_dim(self) -> int:
        return self.cfg.dim + sum(self.cfg.layer_dims)

    # -- graph ------------------------------------------------------------------------------

    def attention_logits(self, ego, graph) -> jax.Array:
        """pi(h, r, t) for every edge. W_r is applied once per distinct (node, relation) of the
        graph (`graph["proj_node"]`, grouped by relation), then gathered per edge."""
        W, er = self.transr[...], self.relation_embedding[...]
        nodes = graph["proj_node"]
        parts = []
        for r in range(self.num_relations):
            a, b = self.projection_offsets[r], self.projection_offsets[r + 1]
            if a < b:
                parts.append(jnp.take(ego, nodes[a:b], axis=0) @ W[r])
        if not parts:
            return jnp.zeros((0,), ego.dtype)
        proj = jnp.concatenate(parts)
        eh = jnp.take(proj, graph["head_pos"], axis=0)
        et = jnp.take(proj, graph["tail_pos"], axis=0)
        e_r = jnp.take(er, graph["relation"], axis=0)
        return jnp.sum(et * jnp.tanh(eh + e_r), -1)

    def _check_graph(self, graph):
        n = int(graph["head"].shape[0])
        if n != self.relation_offsets[-1] or int(graph["proj_node"].shape[0]) != \
                self.projection_offsets[-1]:
            raise ValueError(f"the batch's graph has {n} edges / {graph['proj_node'].shape[0]} "
                             f"projected nodes but the model was built for "
                             f"{self.relation_offsets[-1]} / {self.projection_offsets[-1]} "
                             "(relation and projection offsets from the assets)")

    def propagate(self, ego, head, tail, att, *, train: bool, rngs):
        """Layers over the CKG with edge weights `att` [E] (the attention, re-normalized over
        the kept edges for a view); returns [num_nodes, rep_dim] representations."""
        reps = [ego]
        x = ego
        for layer in self.layers:
            neigh = jax.ops.segment_sum(att[:, None] * jnp.take(x, tail, axis=0), head,
                                        num_segments=self.num_nodes)
            x = layer(x, neigh)
            if train and rngs is not None and self.cfg.message_dropout > 0:
                keep = jax.random.bernoulli(stream_key(rngs, "dropout"),
                                            1.0 - self.cfg.message_dropout, x.shape)
                x = jnp.where(keep, x / (1.0 - self.cfg.message_dropout), 0.0)
            reps.append(_l2_normalize(x))
        return jnp.concatenate(reps, -1)

    def attention(self, ego, graph, mask=None):
        logits = self.attention_logits(ego, graph)
        if not self.cfg.attention_grad:
            logits = jax.lax.stop_gradient(logits)
        return segment_softmax(logits, graph["head"], self.num_nodes, mask)

    def view_mask(self, graph, key):
        """Edge dropout and node dropout (a dropped node's edges all go)."""
        k1, k2 = jax.random.split(key)
        head, tail = graph["head"], graph["tail"]
        keep = jax.random.bernoulli(k1, 1.0 - self.cfg.edge_dropout, head.shape)
        node = jax.random.bernoulli(k2, 1.0 - self.cfg.node_dropout, (self.num_nodes,))
        return keep & node[head] & node[tail]

    def embed_all(self, batch) -> dict[str, jax.Array]:
        """Representations of every user [U, D] and item [I, D] (evaluation, no dropout)."""
        graph = batch["graph"]
        self._check_graph(graph)
        ego = self.node_embedding[...]
        reps = self.propagate(ego, graph["head"], graph["tail"], self.attention(ego, graph),
                              train=False, rngs=None)
        return {"users": reps[self.num_entities:], "items": reps[:self.num_items]}

    # -- training ---------------------------------------------------------------------------

    def __call__(self, batch, *, train: bool = False, rngs=None) -> dict[str, jax.Array]:
        graph = batch["graph"]
        self._check_graph(graph)
        head, tail = graph["head"], graph["tail"]
        ego = self.node_embedding[...]
        logits = self.attention_logits(ego, graph)
        if not self.cfg.attention_grad:
            logits = jax.lax.stop_gradient(logits)
        att = segment_softmax(logits, head, self.num_nodes)
        reps = self.propagate(ego, head, tail, att, train=train, rngs=rngs)
        users = batch["user"] + self.num_entities
        out = {"user": jnp.take(reps, users, axis=0),
               "pos_item": jnp.take(reps, batch["pos_item"], axis=0),
               "neg_item": jnp.take(reps, batch["neg_item"], axis=0)}
        if self.cfg.contrastive:
            key = (stream_key(rngs, "augment") if (train and rngs is not None)
                   else jax.random.key(0))
            for v, k in enumerate(jax.random.split(key, 2), start=1):
                mask = self.view_mask(graph, k)
                att_v = segment_softmax(logits, head, self.num_nodes, mask)
                reps_v = self.propagate(ego, head, tail, att_v, train=False, rngs=None)
                out[f"view{v}_user"] = jnp.take(reps_v, users, axis=0)
                out[f"view{v}_item"] = jnp.take(reps_v, batch["pos_item"], axis=0)
            out["temperature"] = self.cfg.temperature  # graph_infonce's default
        if "kg_head" in batch:
            out.update(self.transr_scores(ego, batch))
        return out

    def transr_scores(self, ego, batch) -> dict[str, jax.Array]:
        """g(h, r, t) = ||W_r e_h + e_r - W_r e_t||^2 for the batch's KG triples and corrupted
        tails; kg_l2 = (|e_h|^2 + |e_r|^2 + |e_t|^2 + |e_t'|^2) / 2 per row."""
        r = batch["kg_relation"]
        W = jnp.take(self.transr[...], r, axis=0)  # [B, d, d]
        er = jnp.take(self.relation_embedding[...], r, axis=0)
        eh, et, en = (jnp.take(ego, batch[k], axis=0) for k in ("kg_head", "kg_tail",
                                                                 "kg_neg_tail"))
        proj = lambda e: jnp.einsum("bd,bdk->bk", e, W)
        ph, pt, pn = proj(eh), proj(et), proj(en)
        pos = jnp.sum(jnp.square(ph + er - pt), -1)
        neg = jnp.sum(jnp.square(ph + er - pn), -1)
        l2 = 0.5 * sum(jnp.sum(jnp.square(x), -1) for x in (eh, er, et, en))
        return {"kg_pos_score": pos, "kg_neg_score": neg, "kg_l2": l2}


@MODELS.register("bpr_mf", config=BprMfConfig)
class BprMf(nnx.Module):
    """Matrix factorization trained with BPR (Rendle et al., UAI 2009): y(u, i) = <p_u, q_i>."""

    def __init__(self, cfg: BprMfConfig, *, num_users: int, num_items: int, rngs: nnx.Rngs,
                 **_graph_sizes):
        if cfg.dim < 1:
            raise ValueError(f"model.dim={cfg.dim} must be positive")
        self.cfg = cfg
        self.user_embedding = nnx.Param(_normal(cfg.init_scale)(rngs.params(), (num_users, cfg.dim)),
                                        logical_axes=("nodes", "embed"))
        self.item_embedding = nnx.Param(_normal(cfg.init_scale)(rngs.params(), (num_items, cfg.dim)),
                                        logical_axes=("nodes", "embed"))

    def embed_all(self, batch) -> dict[str, jax.Array]:
        return {"users": self.user_embedding[...], "items": self.item_embedding[...]}

    def __call__(self, batch, *, train: bool = False, rngs=None) -> dict[str, jax.Array]:
        P, Q = self.user_embedding[...], self.item_embedding[...]
        return {"user": jnp.take(P, batch["user"], axis=0),
                "pos_item": jnp.take(Q, batch["pos_item"], axis=0),
                "neg_item": jnp.take(Q, batch["neg_item"], axis=0)}
