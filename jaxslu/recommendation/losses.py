"""Loss terms of the recommendation family, combined by the config's loss line, e.g.
`loss="bpr + 0.1*transr + 0.05*graph_infonce"`.

All three compute in fp32 whatever the outputs' dtype and average over the batch's real rows
(`batch["weight"]`), so padding rows contribute nothing.

  * `bpr`: -log sigmoid(<u, i+> - <u, i->) (Rendle et al. 2009), plus `l2` * (|u|^2 + |i+|^2 +
    |i-|^2) / 2 per row (KGAT's regularizer on the batch's representations).
  * `transr`: KGAT's knowledge-graph term, -log sigmoid(g(h, r, t') - g(h, r, t)) with
    g = ||W_r e_h + e_r - W_r e_t||^2 (the model's `kg_pos_score`, `kg_neg_score`), plus
    `l2` * kg_l2.
  * `graph_infonce`: InfoNCE between the two augmented views (SGL, Wu et al. SIGIR 2021): for
    the batch's users (and, separately, its positive items) the cosine similarity of a row's
    view-1 and view-2 representations over `temperature`, against the view-2 representations of
    the batch's other rows (in-batch negatives); rows that are the same node as the anchor are
    not negatives; loss = mean over real rows of -log softmax, users + items.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxslu.registry import LOSSES


def _wmean(values, weight):
    weight = weight.astype(jnp.float32)
    return jnp.sum(values * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def _need(outputs, keys, term, hint):
    missing = [k for k in keys if k not in outputs]
    if missing:
        raise KeyError(f"loss term {term!r} needs model outputs {missing}; {hint}")


@LOSSES.register("bpr")
def bpr(*, l2: float = 0.0):
    """BPR on (user, positive item, sampled negative item)."""
    if l2 < 0:
        raise ValueError(f"bpr option l2={l2} must be >= 0")

    def term(batch, outputs, params):
        _need(outputs, ("user", "pos_item", "neg_item"), "bpr",
              "use the kgat or bpr_mf model")
        f32 = jnp.float32
        u, p, n = (outputs[k].astype(f32) for k in ("user", "pos_item", "neg_item"))
        diff = jnp.sum(u * p, -1) - jnp.sum(u * n, -1)
        w = batch["weight"]
        loss = _wmean(jax.nn.softplus(-diff), w)
        metrics = {"accuracy": _wmean((diff > 0).astype(f32), w)}
        if l2:
            reg = 0.5 * (jnp.sum(u * u, -1) + jnp.sum(p * p, -1) + jnp.sum(n * n, -1))
            reg = _wmean(reg, w)
            metrics["l2"] = reg
            loss = loss + l2 * reg
        return loss, metrics

    return term


@LOSSES.register("transr")
def transr(*, l2: float = 0.0):
    """KGAT's TransR term on (h, r, t, t')."""
    if l2 < 0:
        raise ValueError(f"transr option l2={l2} must be >= 0")

    def term(batch, outputs, params):
        _need(outputs, ("kg_pos_score", "kg_neg_score"), "transr",
              "use the kgat model (bpr_mf has no knowledge graph)")
        f32 = jnp.float32
        pos, neg = outputs["kg_pos_score"].astype(f32), outputs["kg_neg_score"].astype(f32)
        w = batch["weight"]
        loss = _wmean(jax.nn.softplus(-(neg - pos)), w)
        metrics = {"accuracy": _wmean((neg > pos).astype(f32), w)}
        if l2 and "kg_l2" in outputs:
            reg = _wmean(outputs["kg_l2"].astype(f32), w)
            metrics["l2"] = reg
            loss = loss + l2 * reg
        return loss, metrics

    return term


def info_nce(a, b, ids, weight, temperature):
    """Mean over real rows of -log softmax_j(cos(a_i, b_j) / T)[i]; j over real rows whose node
    differs from row i's (and j = i)."""
    f32 = jnp.float32
    a = a.astype(f32)
    b = b.astype(f32)
    a = a * jax.lax.rsqrt(jnp.maximum(jnp.sum(a * a, -1, keepdims=True), 1e-12))
    b = b * jax.lax.rsqrt(jnp.maximum(jnp.sum(b * b, -1, keepdims=True), 1e-12))
    logits = (a @ b.T) / temperature
    real = weight > 0
    n = a.shape[0]
    eye = jnp.eye(n, dtype=bool)
    # The diagonal always stays (a padding row's own value is finite, then zeroed below: no NaN
    # reaches the gradient through jnp.where).
    allowed = (real[None, :] & (ids[:, None] != ids[None, :])) | eye
    logits = jnp.where(allowed, logits, -jnp.inf)
    lse = jax.nn.logsumexp(logits, axis=-1)
    per_row = lse - jnp.diagonal(logits)
    per_row = jnp.where(real, per_row, 0.0)
    return _wmean(per_row, weight), _wmean((jnp.argmax(logits, -1) == jnp.arange(n)).astype(f32),
                                           weight)


@LOSSES.register("graph_infonce")
def graph_infonce(*, temperature: float | None = None, users: bool = True, items: bool = True):
    """InfoNCE between the two augmented views of the batch's users and positive items.
    temperature: None -> the model's `model.temperature` (its output `temperature`)."""
    if temperature is not None and temperature <= 0:
        raise ValueError(f"graph_infonce option temperature={temperature} must be > 0")
    if not (users or items):
        raise ValueError("graph_infonce: users and items are both off; nothing to contrast")

    def term(batch, outputs, params):
        _need(outputs, ("view1_user", "view2_user", "view1_item", "view2_item"),
              "graph_infonce", "use the kgat model with model.contrastive=True")
        w = batch["weight"]
        t = temperature if temperature is not None else float(outputs.get("temperature", 0.2))
        if t <= 0:
            raise ValueError(f"graph_infonce: temperature {t} must be > 0 (model.temperature)")
        loss = jnp.zeros((), jnp.float32)
        metrics = {}
        if users:
            lu, au = info_nce(outputs["view1_user"], outputs["view2_user"], batch["user"], w, t)
            loss = loss + lu
            metrics.update(user=lu, user_accuracy=au)
        if items:
            li, ai = info_nce(outputs["view1_item"], outputs["view2_item"], batch["pos_item"],
                              w, t)
            loss = loss + li
            metrics.update(item=li, item_accuracy=ai)
        return loss, metrics

    return term
