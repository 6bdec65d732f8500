"""Full-ranking evaluation: Recall@K and NDCG@K over all items, training interactions masked.

For each user with at least one held-out target interaction in the split (interaction types
`target_types` of the data set: MovieLens all, recipes cook-along) on an item the user has not
interacted with before, every item is scored (<rep_u, rep_i>) except the items the user already
interacted with, of any type, in the known splits (train for `valid`; train and valid for
`test`), and the top K (ties broken by item index) are compared with the held-out items:
  Recall@K = |top K ∩ test| / |test|;
  NDCG@K   = DCG / IDCG, binary relevance, DCG = sum over hits of 1 / log2(rank + 1) (rank
             from 1), IDCG = sum_{rank=1}^{min(|test|, K)} 1 / log2(rank + 1).
Both are averaged over the evaluated users. (KGAT's released code computes NDCG differently:
its IDCG comes from sorting the top-K hit list itself, so it is not the min(|test|, K) ideal;
numbers here are not comparable with the paper's NDCG.)

Report: `recall@K`, `ndcg@K`, `users_evaluated`, `num_items`, `k`; records: one per evaluated
user (user id, held-out items, top K, its recall and NDCG).
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from jaxslu.eval.run import LoadedRun
from jaxslu.parallel import mesh as mesh_lib
from jaxslu.recommendation.data import positives
from jaxslu.registry import EVALUATORS

KNOWN = {"valid": ("train",), "test": ("train", "valid"), "train": ()}


def recall_ndcg_at_k(ranked: Sequence[int], relevant: Iterable[int], k: int) -> tuple[float, float]:
    """Recall@k and NDCG@k (binary relevance) of one ranked list against a non-empty set."""
    relevant = set(relevant)
    if not relevant:
        raise ValueError("recall/NDCG need at least one relevant item")
    top = list(ranked)[:k]
    hits = [r for r, item in enumerate(top, start=1) if item in relevant]
    dcg = sum(1.0 / math.log2(r + 1) for r in hits)
    idcg = sum(1.0 / math.log2(r + 1) for r in range(1, min(len(relevant), k) + 1))
    return len(hits) / len(relevant), dcg / idcg


def top_k(scores: np.ndarray, masked: Sequence[Iterable[int]], k: int) -> np.ndarray:
    """[U, k] item indices of the highest scores per row, masked items excluded, ties by index."""
    s = np.array(scores, np.float64, copy=True)
    for row, items in enumerate(masked):
        idx = list(items)
        if idx:
            s[row, idx] = -np.inf
    order = np.argsort(-s, axis=1, kind="stable")
    return order[:, :k]


def _embed_all(model, batch):
    return model.embed_all(batch)


def embeddings(run: LoadedRun) -> tuple[np.ndarray, np.ndarray]:
    """(user reps [U, D], item reps [I, D]) of the loaded run, one forward over the whole CKG."""
    rows = max(1, mesh_lib.data_parallel_size(run.mesh))
    batch = {"index": np.arange(rows, dtype=np.int32), "weight": np.ones(rows, np.float32)}
    if run.task.uses_graph:
        batch["graph"] = run.task.graph_leaves()
    # Not run.apply: it pads every leaf to the data-parallel size, the replicated graph too.
    # Here the rows are already that size, so the batch goes straight to the mesh.
    import jax

    gbatch = mesh_lib.to_global_batch(batch, run.mesh, run.task.batch_partition())
    out, _, _ = jax.device_get(run.compiled(_embed_all)(run.params, gbatch))
    return np.asarray(out["users"], np.float32), np.asarray(out["items"], np.float32)


@EVALUATORS.register("recommendation")
class RankingEvaluator:
    def __init__(self, run: LoadedRun):
        self.run = run
        options = dict(run.cfg.eval.options)
        unknown = set(options) - {"k"}
        if unknown:
            raise ValueError(f"eval.options {sorted(unknown)} unknown for the recommendation "
                             "evaluator; it takes k")
        self.k = int(options.get("k", 20))
        if self.k < 1:
            raise ValueError(f"eval.options.k={self.k} must be >= 1")

    def evaluate(self, split: str) -> tuple[dict, list[dict]]:
        run = self.run
        if split not in KNOWN or split == "train":
            raise ValueError(f"the recommendation evaluator ranks held-out interactions: split "
                             f"'valid' or 'test', not {split!r}")
        source = run.task.open_source(split)
        data = source.data
        vocab = run.assets.vocab
        if list(vocab["users"]) != list(data.users) or list(vocab["items"]) != list(data.items):
            raise ValueError(f"the data set {data.name!r} read now has other users or items than "
                             f"the run in {run.workdir} was trained on (its {run.task.asset_files[0]}"
                             "); evaluate with the data options of its config")
        types = data.target_types
        known = positives(data, KNOWN[split])  # every interaction type is masked
        held = positives(data, (split,), types)
        users = [u for u in range(data.num_users) if held[u] - known[u]]
        user_reps, item_reps = embeddings(run)
        k = self.k
        records = []
        recalls, ndcgs = [], []
        for start in range(0, len(users), 512):
            chunk = users[start:start + 512]
            scores = user_reps[chunk] @ item_reps.T
            tops = top_k(scores, [known[u] for u in chunk], k)
            for u, top in zip(chunk, tops):
                rel = held[u] - known[u]
                rec, nd = recall_ndcg_at_k(top.tolist(), rel, k)
                recalls.append(rec)
                ndcgs.append(nd)
                records.append({"user": data.users[u],
                                "held_out": [data.items[i] for i in sorted(rel)],
                                "top": [data.items[i] for i in top.tolist()],
                                "recall": round(rec, 6), "ndcg": round(nd, 6)})
        report = {f"recall@{k}": float(np.mean(recalls)) if recalls else 0.0,
                  f"ndcg@{k}": float(np.mean(ndcgs)) if ndcgs else 0.0,
                  "users_evaluated": len(users), "num_items": data.num_items, "k": k,
                  "held_out_interactions": int(sum(len(held[u] - known[u]) for u in users)),
                  "target_types": list(types), "masked_splits": list(KNOWN[split])}
        return report, records
