"""Evaluation of the `user_embeddings` task.

Every scored position is ranked on the device against all labels (full ranking; with the task
option `exclude_seen`, the items already in that user's history before the position are not
ranked). Report: `accuracy` (top-1), `recall@10` (the target among the top 10: with one target
per position this is HR@10), `ndcg@10` (1 / log2(rank + 1) for a target at 1-based rank <= 10,
else 0), `positions`, `users`, and the accuracy per `kind` and for ambiguous / unambiguous
requests when the source's events carry that metadata (the simulated assistant log). Ties rank
the target first among equals (rank = number of strictly higher scores).

Records (`predictions_<split>.jsonl`): one line per scored position: user, position, label,
prediction, rank (1-based), and the event's metadata.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxslu.eval.run import LoadedRun
from jaxslu.registry import EVALUATORS


def rank_outputs(logits, label, exclude_seen: bool):
    """logits [B, T, K], label [B, T] -> (rank [B, T] 0-based, pred [B, T])."""
    logits = logits.astype(jnp.float32)
    K = logits.shape[-1]
    if exclude_seen:
        oh = jax.nn.one_hot(jnp.where(label >= 0, label, -1), K, dtype=jnp.int32)
        before = (jnp.cumsum(oh, axis=1) - oh) > 0
        logits = jnp.where(before, -jnp.inf, logits)
    tgt = jnp.take_along_axis(logits, jnp.maximum(label, 0)[..., None], axis=-1)
    rank = jnp.sum(logits > tgt, axis=-1)
    rank = jnp.where(label >= 0, rank, K)  # unknown label: a miss
    return rank, jnp.argmax(logits, axis=-1)


def ranking_metrics(ranks: np.ndarray, k: int = 10) -> dict[str, float]:
    """accuracy, recall@k, ndcg@k from 0-based ranks of the single target."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        return {"accuracy": 0.0, f"recall@{k}": 0.0, f"ndcg@{k}": 0.0}
    hit = ranks < k
    return {"accuracy": float(np.mean(ranks == 0)), f"recall@{k}": float(np.mean(hit)),
            f"ndcg@{k}": float(np.mean(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)))}


@EVALUATORS.register("user_embeddings")
class UserEmbeddingEvaluator:
    def __init__(self, run: LoadedRun):
        self.run = run
        exclude = bool(run.task.exclude_seen)

        def fn(model, batch):
            out = model(batch, train=False)
            rank, pred = rank_outputs(out["logits"], batch["label"], exclude)
            return {"rank": rank, "pred": pred, "scored": batch["scored"]}

        self._fn = fn

    def evaluate(self, split: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        run = self.run
        source = run.task.open_source(split)
        labels = run.assets.labels
        records = []
        for batch in run.eval_batches(source):
            out, index, weight = run.apply(self._fn, batch)
            for k in np.flatnonzero(weight > 0):
                row = source.metadata(int(index[k]))
                events = row["events"]
                offset = max(0, len(events) - run.task.max_events)
                for t in np.flatnonzero(out["scored"][k] > 0):
                    e = events[offset + int(t)]
                    pred = labels[int(out["pred"][k, t])]
                    records.append({"user": row["id"], "position": offset + int(t),
                                    "label": e["label"], "prediction": pred,
                                    "rank": int(out["rank"][k, t]) + 1, **e.get("meta", {})})
        ranks = np.asarray([r["rank"] - 1 for r in records])
        report: dict[str, Any] = {"split": split, "positions": len(records),
                                  "users": len({r["user"] for r in records}),
                                  **ranking_metrics(ranks)}
        for key in ("kind", "ambiguous"):
            groups: dict[str, list[int]] = defaultdict(list)
            for r in records:
                if key in r:
                    groups[str(r[key]).lower()].append(r["rank"] == 1)
            if groups:
                report[f"accuracy_by_{key}"] = {g: {"accuracy": float(np.mean(v)), "n": len(v)}
                                                for g, v in sorted(groups.items())}
        return report, records
