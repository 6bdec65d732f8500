"""Clustering, threshold calibration and the discovery metrics (numpy / scipy / scikit-learn).

* `linkage(emb)`: average-linkage agglomerative clustering on cosine distances (scipy), cut at a
  distance threshold by `cut(Z, t)`; average linkage is used because the mean distance between
  two clusters does not grow with their sizes, so a threshold chosen on a few hundred held-out
  utterances transfers to a pool of thousands.
* `calibrate_threshold(emb, labels)`: the cut that best reproduces a known partition (ARI),
  over the merge heights of the tree itself.
* `open_threshold(pos, neg)`: the score threshold with the best balanced accuracy between
  scores that must be accepted and scores that must be rejected.
* Metrics: NMI, ARI, clustering accuracy with the Hungarian matching (`cluster_metrics`), the
  open-classification accuracy and macro-F1 (`open_metrics`), in percent.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

OPEN = "<open>"


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def linkage(emb: np.ndarray):
    from scipy.cluster.hierarchy import linkage as _linkage

    if len(emb) < 2:
        return None
    return _linkage(normalize(emb), method="average", metric="cosine")


def cut(Z, t: float, n: int) -> np.ndarray:
    """Cluster ids 0.. of the n leaves of `Z` cut at cosine distance `t`."""
    from scipy.cluster.hierarchy import fcluster

    if Z is None:
        return np.zeros((n,), np.int64)
    ids = fcluster(Z, t=t, criterion="distance")
    _, dense = np.unique(ids, return_inverse=True)
    return dense.astype(np.int64)


def calibrate_threshold(emb: np.ndarray, labels: Sequence, max_candidates: int = 200
                        ) -> tuple[float, list[tuple[float, float, int]]]:
    """(t, curve): the cosine-distance cut of the average-linkage tree of `emb` with the best
    ARI against `labels`; `curve` = [(t, ari, clusters)] over the candidate cuts."""
    from sklearn.metrics import adjusted_rand_score

    labels = np.asarray(labels)
    if len(set(labels.tolist())) < 2:
        raise ValueError("threshold calibration needs utterances of at least two intents")
    Z = linkage(emb)
    heights = np.unique(Z[:, 2])
    mids = (heights[:-1] + heights[1:]) / 2 if len(heights) > 1 else heights
    if len(mids) > max_candidates:
        mids = np.quantile(mids, np.linspace(0, 1, max_candidates))
    curve = []
    for t in mids:
        ids = cut(Z, float(t), len(emb))
        curve.append((float(t), float(adjusted_rand_score(labels, ids)), int(ids.max() + 1)))
    best = max(curve, key=lambda c: (c[1], -c[0]))
    return best[0], curve


def open_threshold(accept: np.ndarray, reject: np.ndarray) -> tuple[float, float]:
    """(threshold, balanced accuracy): scores >= threshold are accepted."""
    accept, reject = np.asarray(accept, np.float64), np.asarray(reject, np.float64)
    if not len(accept) or not len(reject):
        raise ValueError("open-threshold calibration needs scores to accept and to reject")
    cands = np.unique(np.concatenate([accept, reject]))
    cands = np.concatenate([cands, [cands[-1] + 1e-6]])
    acc_sorted, rej_sorted = np.sort(accept), np.sort(reject)
    tpr = 1.0 - np.searchsorted(acc_sorted, cands, side="left") / len(accept)
    tnr = np.searchsorted(rej_sorted, cands, side="left") / len(reject)
    bal = (tpr + tnr) / 2
    k = int(np.argmax(bal))
    return float(cands[k]), float(bal[k])


def clustering_accuracy(y_true: Sequence, y_pred: Sequence) -> float:
    """Best one-to-one matching of clusters to classes (Hungarian), fraction correct."""
    from scipy.optimize import linear_sum_assignment

    _, t = np.unique(np.asarray(y_true), return_inverse=True)
    _, p = np.unique(np.asarray(y_pred), return_inverse=True)
    w = np.zeros((p.max() + 1, t.max() + 1), np.int64)
    np.add.at(w, (p, t), 1)
    r, c = linear_sum_assignment(-w)
    return float(w[r, c].sum()) / len(t)


def cluster_metrics(y_true: Sequence, y_pred: Sequence) -> dict[str, float]:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    if not len(y_true):
        return {"nmi": None, "ari": None, "acc": None, "n": 0}
    return {"nmi": round(100 * float(normalized_mutual_info_score(y_true, y_pred)), 2),
            "ari": round(100 * float(adjusted_rand_score(y_true, y_pred)), 2),
            "acc": round(100 * clustering_accuracy(y_true, y_pred), 2), "n": len(y_true)}


def open_metrics(y_true: Sequence[str], y_pred: Sequence[str]) -> dict[str, float]:
    """Accuracy and macro-F1 over the known intents plus the open class (TEXTOIR's open intent
    detection figures), and the F1 of the open class and the known ones apart."""
    from sklearn.metrics import f1_score

    y_true, y_pred = list(y_true), list(y_pred)
    labels = sorted(set(y_true) | set(y_pred))
    f1 = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    per = dict(zip(labels, f1))
    known = [per[x] for x in labels if x != OPEN]
    return {"accuracy": round(100 * float(np.mean([a == b for a, b in zip(y_true, y_pred)])), 2),
            "macro_f1": round(100 * float(np.mean(f1)), 2),
            "f1_open": round(100 * float(per.get(OPEN, 0.0)), 2),
            "f1_known": round(100 * float(np.mean(known)), 2) if known else None}


def merge_small(ids: np.ndarray, emb: np.ndarray, min_size: int,
                anchors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Clusters smaller than `min_size` dissolved: each of their points joins the nearest (by
    cosine) centroid among the kept clusters and the `anchors` (known-intent centroids).
    Returns (ids of kept clusters 0.. or -1 - a for anchor a, centroids of kept clusters)."""
    emb = normalize(emb)
    ids = np.asarray(ids)
    sizes = np.bincount(ids) if len(ids) else np.zeros(0, np.int64)
    keep = [c for c in range(len(sizes)) if sizes[c] >= min_size]
    remap = {c: j for j, c in enumerate(keep)}
    cents = (normalize(np.stack([emb[ids == c].mean(0) for c in keep])) if keep
             else np.zeros((0, emb.shape[1])))
    out = np.array([remap.get(int(c), -10**9) for c in ids], np.int64)
    loose = np.where(out == -10**9)[0]
    if len(loose):
        cand = cents if anchors is None or not len(anchors) else np.concatenate(
            [cents, normalize(anchors)])
        if not len(cand):
            raise ValueError("every cluster is smaller than the minimum size and there is no "
                             "known intent to fall back to")
        best = np.argmax(emb[loose] @ cand.T, axis=1)
        out[loose] = np.where(best < len(cents), best, -1 - (best - len(cents)))
    return out, cents
