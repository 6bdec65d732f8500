"""Online rewriting: retrieve rewrites of a request from successful requests, rank, rewrite or not.

Method. At run time each request's ASR text is embedded by the dual encoder's query side
(`jaxslu.selflearn.retrieval`) and searched, exactly, in two indexes of successful requests
(turns the user followed with no negative signal, "none" or "thanks"):

  * the global index: every user's distinct successful requests with their counts;
  * a personal index per user: that user's own successful history with its counts.

A ranker scores every candidate and picks the best one, or none (`RewriteRanker`):
  * a candidate model, P(judge(candidate, turn)): logistic regression on (query, candidate)
    features: dual-encoder score, its gap to the best and the rank, fuzzy string similarity
    (words and characters), log candidate count and distinct users, length ratio, metadata (the
    candidate's intent equal to the query's NLU intent, its slot values found in the query, the
    query's NLU and ASR confidence) and traffic statistics (`TrafficStats`: how often the
    candidate was the satisfied rephrase of this very query, how often the candidate text
    itself was followed by friction);
  * a defect model, P(the request as it is fails): logistic regression on the request's
    features (NLU and ASR confidence, length, the best retrieval score, and how often this text
    was followed by friction or satisfaction in the training traffic);
  * the "none" decision: rewrite when the expected gain p_candidate - (1 - p_defect), served
    with the rewrite minus served without it, reaches a threshold. Thresholding the candidate's
    probability alone cannot tell a request that is already served (where a correct paraphrase
    gains nothing and a wrong one is a loss) from a failing one; the gain can.

Combining the layers (how the global layer keeps the personal one from over-indexing):
  1. Admission: a personal candidate that is not already among the global top-k enters the
     candidate list only if its dual-encoder score is within `personal_margin` of the best
     global candidate's, i.e. it must be plausible under the global model too; a user's
     history alone never brings in a far-away request.
  2. Features: the personal ranker sees every global feature of a candidate plus the personal
     ones (in the user's history, personal count, the share of the global count that is this
     user's, whether it came in through the personal layer only, this user's own
     query -> candidate rephrases) and the defect model this user's own friction with the
     query, so a personal match counts only as much as the training traffic showed it
     predicts correctness.
  3. Leave-session-out fitting: the rankers are fitted on the training traffic, whose successes
     also built the indexes and the statistics, so every count a turn's own session
     contributed is removed while fitting (and a candidate that exists only because of that
     session is dropped). Otherwise the user's own successful rephrase of the very turn would
     sit in the personal index and the ranker would trust personal history far more than it
     deserves on new traffic.
The global-only rewriter and the global + personal one are two rankers (`ranker`,
`personal_ranker`) with their own features and thresholds, fitted on the same traffic.

Fitting: logistic regressions on standardized features with an L2 penalty, by Newton's method
in float64 numpy (deterministic: no sampling, no minibatches). Labels: judge(candidate, turn)
for candidates, `not turn["success"]` for the defect model. The turns of the training traffic
are split by a hash of their session into a fit part (the regressions) and a validation part
(`val_fraction`); the threshold is the one that minimizes defects on the validation part (a
turn's defect: not judge(best candidate) if rewritten, else not its success), ties going to
fewer rewrites, placed midway between the last rewritten validation turn's gain and the next
lower one (`choose_threshold`).

Fuzzy string similarity: a normalized Levenshtein ratio 1 - d(a, b) / max(|a|, |b|), on words and
on characters (the project's own bit-parallel edit distance, pure Python).

Search: `RewriteIndex.search` computes the score matrix of unit vectors and `jax.lax.top_k`. With
several devices the index rows are split over a one-axis mesh ("rows"); each shard takes its
local top-k inside `jax.shard_map`, and the k x devices candidates are merged by a second top-k.
Index rows are padded to a power-of-two count per shard (padding scores -inf) and query batches
to a power of two, so a handful of shapes is compiled.

Turns are the simulator's turn dicts plus "user" and "session" (added by `flatten_sessions`);
`turn["asr"]` is the request, `turn["nlu"]["conf"]` and `turn["asr_conf"]` are features.
`experiment` runs the whole evaluation (indexes, fitting, defect reduction, latency).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import time
from collections import Counter, defaultdict
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxslu.selflearn.retrieval import request_text
from jaxslu.text.normalize import normalize_text

SUCCESS_SIGNALS = ("none", "thanks")
Judge = Callable[[str, dict[str, Any]], bool]
#: normalize_text with a cache: the same request texts come back again and again
_norm = functools.lru_cache(maxsize=1 << 18)(normalize_text)


# --------------------------------------------------------------------------------------------
# Traffic helpers
# --------------------------------------------------------------------------------------------


def flatten_sessions(sessions: Iterable[dict[str, Any]],
                     splits: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The turns of `sessions` (of `splits`, None: all) in order, each a copy with "user",
    "session", "split" and "position" (its index in the session) added."""
    out = []
    for s in sessions:
        if splits is not None and s.get("split") not in splits:
            continue
        for k, t in enumerate(s.get("turns") or []):
            out.append(dict(t, user=str(s.get("user", "")), session=s.get("session"),
                            split=s.get("split"), position=k))
    return out


def success_entries(sessions: Iterable[dict[str, Any]], *, per_user: bool = False,
                    splits: Sequence[str] | None = ("train",)) -> list[dict[str, Any]]:
    """Distinct successful requests: turns whose signal is "none" or "thanks", keyed by their
    normalized request text (`retrieval.request_text`: the ASR text, or its rephrase span)
    and by user when `per_user`.

    Each entry: {"text" (the most frequent surface form), "intent", "slots" (the system's most
    frequent reading of it, `turn["nlu"]`), "count", "user" ("" for the global list),
    "users" (distinct users), "sessions" ({session: count}, for leave-session-out fitting)}.
    Sorted by count (descending), then text.
    """
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for s in sessions:
        if splits is not None and s.get("split") not in splits:
            continue
        user = str(s.get("user", ""))
        for t in s.get("turns") or []:
            if t.get("signal") not in SUCCESS_SIGNALS:
                continue
            raw = request_text(t)
            key = normalize_text(raw)
            if not key:
                continue
            g = groups.setdefault((user if per_user else "", key), {
                "surface": Counter(), "reading": Counter(), "readings": {}, "count": 0,
                "users": set(), "sessions": Counter()})
            g["surface"][raw] += 1
            nlu = t.get("nlu") or {}
            slots = [{"type": x.get("type"), "value": x.get("value")}
                     for x in (nlu.get("slots") or [])]
            rk = repr((nlu.get("intent"), slots))
            g["reading"][rk] += 1
            g["readings"].setdefault(rk, (nlu.get("intent"), slots))
            g["count"] += 1
            g["users"].add(user)
            g["sessions"][s.get("session")] += 1
    out = []
    for (user, key), g in groups.items():
        surface = sorted(g["surface"].items(), key=lambda x: (-x[1], x[0]))[0][0]
        rk = sorted(g["reading"].items(), key=lambda x: (-x[1], x[0]))[0][0]
        intent, slots = g["readings"][rk]
        out.append({"text": surface, "intent": intent, "slots": slots, "count": g["count"],
                    "user": user, "users": len(g["users"]), "sessions": dict(g["sessions"])})
    out.sort(key=lambda e: (-e["count"], normalize_text(e["text"]), e["user"]))
    return out


# --------------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------------


class TextEncoder(Protocol):
    def encode(self, texts: Sequence[str], side: str) -> np.ndarray:
        """[N, P] float32 unit vectors of `texts` on `side` ("query" or "target")."""
        ...


def _pow2(n: int, minimum: int = 1) -> int:
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


class RunEncoder:
    """A trained `dual_encoder` run as a `TextEncoder`: the run's tokenizer and `model.encode`,
    jitted once per side and padded shape (rows padded to a power of two)."""

    def __init__(self, run: Any, batch_size: int = 256):
        from jaxslu.eval.run import LoadedRun

        if isinstance(run, (str, Path)):
            run = LoadedRun.from_workdir(run)
        self.run = run
        self.batch_size = int(batch_size)
        graphdef, rest = run.graphdef, run.rest

        def encode(params, tokens, side):
            from flax import nnx

            return nnx.merge(graphdef, params, rest).encode(tokens, side)

        self._fn = jax.jit(encode, static_argnums=2)

    def encode(self, texts: Sequence[str], side: str) -> np.ndarray:
        task, assets = self.run.task, self.run.assets
        out = []
        for s in range(0, len(texts), self.batch_size):
            chunk = list(texts[s:s + self.batch_size])
            tokens = task.token_batch(assets, chunk, rows=_pow2(len(chunk)))
            out.append(np.asarray(self._fn(self.run.params, tokens, side))[:len(chunk)])
        if not out:
            return np.zeros((0, self.run.cfg.model.proj_dim), np.float32)
        return np.concatenate(out).astype(np.float32)


def as_encoder(run_or_encoder: Any) -> TextEncoder:
    """A `TextEncoder` from a LoadedRun, a workdir path, or anything with `encode`."""
    from jaxslu.eval.run import LoadedRun

    if isinstance(run_or_encoder, (LoadedRun, str, Path)):
        return RunEncoder(run_or_encoder)
    if not hasattr(run_or_encoder, "encode"):
        raise TypeError(f"{type(run_or_encoder).__name__} is neither a LoadedRun, a workdir nor "
                        "an encoder with encode(texts, side)")
    return run_or_encoder


# --------------------------------------------------------------------------------------------
# The index
# --------------------------------------------------------------------------------------------


def _slot_words(entry: dict[str, Any]) -> list[list[str]]:
    return [normalize_text(str(s.get("value") or "")).split() for s in entry.get("slots") or []]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@partial(jax.jit, static_argnums=3)
def _topk_single(q, emb, valid, k):
    s = jnp.where(valid[None, :], q @ emb.T, -jnp.inf)
    return jax.lax.top_k(s, k)


def _sharded_topk(mesh: Mesh, k_local: int, k: int):
    def local(q, emb, valid):
        s = jnp.where(valid[None, :], q @ emb.T, -jnp.inf)
        v, i = jax.lax.top_k(s, k_local)
        return v, i + jax.lax.axis_index("rows") * emb.shape[0]

    shard = jax.shard_map(local, mesh=mesh, in_specs=(P(), P("rows", None), P("rows")),
                          out_specs=(P(None, "rows"), P(None, "rows")))

    def search(q, emb, valid):
        v, i = shard(q, emb, valid)  # [Q, k_local * shards]: every shard's local top-k
        top, pos = jax.lax.top_k(v, k)
        return top, jnp.take_along_axis(i, pos, axis=1)

    return jax.jit(search)


class RewriteIndex:
    """Entries (successful requests) and their unit embeddings as a (sharded) jax array.

    `search(queries, k)` -> (scores [Q, k], rows [Q, k]) numpy, exact top-k by dot product,
    best first; k is capped at the index size. `entries[row]` is the entry of a result.
    """

    def __init__(self, entries: Sequence[dict[str, Any]], embeddings: Any,
                 encoder: TextEncoder | None = None, devices: Sequence[Any] | None = None):
        emb = _unit(np.asarray(embeddings))
        if emb.ndim != 2 or len(emb) != len(entries):
            raise ValueError(f"{len(entries)} entries but embeddings of shape {emb.shape}")
        self.entries = list(entries)
        self.encoder = encoder
        self.devices = list(devices) if devices is not None else list(jax.devices())
        self.size, self.dim = emb.shape
        #: normalized text and slot-value words of each row (what the ranker compares)
        self.norms = [normalize_text(e["text"]) for e in self.entries]
        self.slot_words = [_slot_words(e) for e in self.entries]
        self.row_of: dict[str, int] = {}
        for r, key in enumerate(self.norms):
            self.row_of.setdefault(key, r)
        shards = len(self.devices)
        self.rows_per_shard = _pow2(math.ceil(max(self.size, 1) / shards), 8)
        padded = np.zeros((self.rows_per_shard * shards, self.dim), np.float32)
        padded[:self.size] = emb
        valid = np.arange(len(padded)) < self.size
        if shards > 1:
            self.mesh = Mesh(np.asarray(self.devices), ("rows",))
            self.embeddings = jax.device_put(padded, NamedSharding(self.mesh, P("rows", None)))
            self.valid = jax.device_put(valid, NamedSharding(self.mesh, P("rows")))
        else:
            self.mesh = None
            self.embeddings = jax.device_put(padded, self.devices[0])
            self.valid = jax.device_put(valid, self.devices[0])
        self._fns: dict[int, Callable] = {}
        self._host: np.ndarray | None = None

    @classmethod
    def build(cls, run_or_encoder: Any, entries: Sequence[dict[str, Any]], *,
              devices: Sequence[Any] | None = None) -> "RewriteIndex":
        """Embed the entries' texts with the target side of the encoder (a LoadedRun of a
        `dual_encoder` run, its workdir, or any `TextEncoder`) and index them."""
        encoder = as_encoder(run_or_encoder)
        texts = [e["text"] for e in entries]
        emb = encoder.encode(texts, "target") if texts else np.zeros((0, 1), np.float32)
        return cls(entries, emb, encoder, devices)

    def subset(self, entries: Sequence[dict[str, Any]],
               devices: Sequence[Any] | None = None) -> "RewriteIndex":
        """An index of `entries` reusing this index's embeddings for texts it holds (others
        are embedded with its encoder); e.g. a user's personal index from the global one."""
        rows = [self.row_of.get(normalize_text(e["text"])) for e in entries]
        emb = np.zeros((len(entries), self.dim), np.float32)
        have = [k for k, r in enumerate(rows) if r is not None]
        if have:
            emb[have] = self.host_embeddings()[[rows[k] for k in have]]
        missing = [k for k, r in enumerate(rows) if r is None]
        if missing:
            if self.encoder is None:
                raise ValueError(f"{len(missing)} texts are not in the index and it has no "
                                 "encoder to embed them")
            emb[missing] = self.encoder.encode([entries[k]["text"] for k in missing], "target")
        return RewriteIndex(entries, emb, self.encoder, devices or self.devices[:1])

    def host_embeddings(self) -> np.ndarray:
        """[size, dim] numpy copy of the embeddings (fetched once)."""
        if self._host is None:
            self._host = np.asarray(jax.device_get(self.embeddings))[:self.size]
        return self._host

    def _fn(self, k: int) -> Callable:
        if k not in self._fns:
            if self.mesh is None:
                self._fns[k] = lambda q, e, v: _topk_single(q, e, v, k)
            else:
                self._fns[k] = _sharded_topk(self.mesh, min(k, self.rows_per_shard), k)
        return self._fns[k]

    def search_device(self, query_emb: np.ndarray, k: int) -> tuple[jax.Array, jax.Array]:
        """The device arrays of `search_vectors` (padded query rows included)."""
        q = np.asarray(query_emb, np.float32)
        rows = _pow2(len(q))
        if rows != len(q):
            q = np.concatenate([q, np.zeros((rows - len(q), q.shape[1]), np.float32)])
        return self._fn(k)(q, self.embeddings, self.valid)

    def search_vectors(self, query_emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of unit query vectors [Q, P]: (scores, rows), each [Q, min(k, size)]."""
        n = len(query_emb)
        k = min(int(k), self.size)
        if n == 0 or k <= 0:
            return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
        scores, rows = jax.device_get(jax.block_until_ready(self.search_device(query_emb, k)))
        return np.asarray(scores)[:n], np.asarray(rows)[:n].astype(np.int64)

    def search(self, queries: Sequence[str] | np.ndarray, k: int
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of query texts (embedded with the encoder's query side) or query vectors."""
        if isinstance(queries, np.ndarray) or isinstance(queries, jax.Array):
            return self.search_vectors(np.asarray(queries), k)
        if self.encoder is None:
            raise ValueError("this index has no encoder: pass query vectors")
        q = self.encoder.encode(list(queries), "query")
        return self.search_vectors(q, k)

    def __len__(self) -> int:
        return self.size


def personal_indexes(global_index: RewriteIndex, entries: Iterable[dict[str, Any]]
                     ) -> dict[str, RewriteIndex]:
    """user -> index of that user's entries (`success_entries(..., per_user=True)`), embedded
    through the global index (single device: personal indexes are small)."""
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in entries:
        by_user[str(e["user"])].append(e)
    return {u: global_index.subset(es) for u, es in sorted(by_user.items())}


# --------------------------------------------------------------------------------------------
# String similarity
# --------------------------------------------------------------------------------------------


def levenshtein(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Edit distance (substitution, insertion, deletion cost 1) of two sequences of hashable
    items, bit-parallel (Myers / Hyyro): one column of the dynamic-programming table per item
    of `b`, held as bit vectors of the vertical differences (Python ints of len(a) bits), so
    the cost is O(len(b)) big-integer operations instead of O(len(a) * len(b)) steps."""
    m = len(a)
    if m == 0:
        return len(b)
    peq: dict[Any, int] = {}
    for i, x in enumerate(a):
        peq[x] = peq.get(x, 0) | (1 << i)
    full = (1 << m) - 1
    top = 1 << (m - 1)
    pv, mv, score = full, 0, m
    for y in b:
        eq = peq.get(y, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | (~(xh | pv) & full)
        mh = pv & xh
        if ph & top:
            score += 1
        elif mh & top:
            score -= 1
        ph = ((ph << 1) | 1) & full
        mh = (mh << 1) & full
        pv = mh | (~(xv | ph) & full)
        mv = ph & xv
    return score


def similarity(a: Sequence[Any], b: Sequence[Any]) -> float:
    """1 - levenshtein / max length, in [0, 1]; 1.0 for two empty sequences."""
    n = max(len(a), len(b))
    return 1.0 if n == 0 else 1.0 - levenshtein(a, b) / n


# --------------------------------------------------------------------------------------------
# Traffic statistics (metadata features)
# --------------------------------------------------------------------------------------------


class TrafficStats:
    """Counts from the training traffic that the ranker reads as metadata, each kept per session
    so that a turn of the same traffic can leave its own session out (`count(..., session)`).

    Keys: ("ok" | "fail", text) how often a request text (normalized ASR) was followed by a
    satisfied signal ("none", "thanks") or not; ("user_ok" | "user_fail", user, text) the same
    for one user; ("pair", query, target) how often `target` was the satisfied rephrase of
    `query` (`retrieval.pairs_from_sessions`); ("user_pair", user, query, target).
    """

    def __init__(self) -> None:
        self._counts: dict[tuple, list[Any]] = {}

    def add(self, key: tuple, session: Any, n: int = 1) -> None:
        slot = self._counts.setdefault(key, [0, Counter()])
        slot[0] += n
        slot[1][session] += n

    def count(self, key: tuple, session: Any = None) -> int:
        """The count of `key`, without the contribution of `session` (None: all)."""
        slot = self._counts.get(key)
        if slot is None:
            return 0
        return slot[0] - (slot[1].get(session, 0) if session is not None else 0)

    @classmethod
    def from_sessions(cls, sessions: Iterable[dict[str, Any]], *,
                      splits: Sequence[str] | None = ("train",),
                      max_gap: float = 45.0) -> "TrafficStats":
        from jaxslu.selflearn.retrieval import pairs_from_sessions

        stats = cls()
        for s in sessions:
            if splits is not None and s.get("split") not in splits:
                continue
            user, sid = str(s.get("user", "")), s.get("session")
            for t in s.get("turns") or []:
                key = _norm(t.get("asr") or "")
                if not key:
                    continue
                kind = "ok" if t.get("signal") in SUCCESS_SIGNALS else "fail"
                stats.add((kind, key), sid)
                stats.add(("user_" + kind, user, key), sid)
            for p in pairs_from_sessions([s], max_gap=max_gap):
                q, tgt = _norm(p["query"]), _norm(p["target"])
                stats.add(("pair", q, tgt), sid)
                stats.add(("user_pair", user, q, tgt), sid)
        return stats


# --------------------------------------------------------------------------------------------
# Ranker
# --------------------------------------------------------------------------------------------

#: features of a (query, candidate) pair, for P(judge(candidate, turn))
GLOBAL_FEATURES = ("score", "score_gap", "inv_rank", "word_sim", "char_sim", "log_count",
                   "log_users", "log_len_ratio", "abs_log_len_ratio", "intent_match",
                   "slot_overlap", "nlu_conf", "asr_conf", "log_pair_count", "cand_fail_rate")
PERSONAL_FEATURES = GLOBAL_FEATURES + ("in_personal", "log_personal_count", "personal_share",
                                       "personal_only", "log_user_pair_count")
#: features of a turn, for P(the request as it is fails)
TURN_FEATURES = ("nlu_conf", "asr_conf", "log_words", "q_log_ok", "q_log_fail", "q_fail_rate",
                 "best_score", "has_candidates")
PERSONAL_TURN_FEATURES = TURN_FEATURES + ("q_user_log_ok", "q_user_log_fail")


class Ranker:
    """L2-regularized logistic regression over named features.

    `fit(X, y)`: features standardized (fit mean / std), Newton's method in float64 on
    sum(log-loss) + l2/2 * |w|^2 (the bias is not penalized): deterministic.
    """

    def __init__(self, features: Sequence[str], *, l2: float = 1.0):
        self.features = tuple(features)
        self.l2 = float(l2)
        self.mean = np.zeros(len(self.features))
        self.std = np.ones(len(self.features))
        self.weights = np.zeros(len(self.features))
        self.bias = 0.0

    def fit(self, X: np.ndarray, y: np.ndarray, *, max_iter: int = 100,
            tol: float = 1e-9) -> "Ranker":
        X = np.asarray(X, np.float64)
        y = np.asarray(y, np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.features) or len(X) != len(y):
            raise ValueError(f"X {X.shape} / y {y.shape} do not fit {len(self.features)} "
                             "features")
        if len(X) == 0:
            return self
        self.mean = X.mean(axis=0)
        std = X.std(axis=0)
        self.std = np.where(std > 1e-12, std, 1.0)
        Z = np.concatenate([(X - self.mean) / self.std, np.ones((len(X), 1))], axis=1)
        d = Z.shape[1]
        reg = np.full(d, self.l2)
        reg[-1] = 1e-8  # the bias: (almost) no penalty, kept for a well-posed Hessian
        theta = np.zeros(d)
        for _ in range(max_iter):
            p = 1.0 / (1.0 + np.exp(-(Z @ theta)))
            grad = Z.T @ (p - y) + reg * theta
            hess = (Z * (p * (1 - p))[:, None]).T @ Z + np.diag(reg)
            step = np.linalg.solve(hess, grad)
            theta -= step
            if np.max(np.abs(step)) < tol:
                break
        self.weights, self.bias = theta[:-1], float(theta[-1])
        return self

    def logits(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, np.float64).reshape(-1, len(self.features))
        return ((X - self.mean) / self.std) @ self.weights + self.bias

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits(X)))

    def to_json(self) -> dict[str, Any]:
        return {"features": list(self.features), "l2": self.l2, "mean": self.mean.tolist(),
                "std": self.std.tolist(), "weights": self.weights.tolist(), "bias": self.bias}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Ranker":
        r = cls(d["features"], l2=d["l2"])
        r.mean, r.std = np.asarray(d["mean"]), np.asarray(d["std"])
        r.weights, r.bias = np.asarray(d["weights"]), float(d["bias"])
        return r


def choose_threshold(scores: Sequence[float], best_correct: Sequence[bool],
                     success: Sequence[bool]) -> float:
    """The threshold minimizing defects over turns: a turn is rewritten when its score >=
    threshold (defect: not best_correct), else keeps its outcome (defect: not success). Turns
    without candidates score -inf. Among the best thresholds, the fewest rewrites; the
    threshold is placed midway between the last rewritten turn's score and the next lower one
    (a margin on both sides). "Never rewrite" is a candidate (above every finite score)."""
    p = np.asarray(scores, np.float64)
    ok = np.asarray(best_correct, bool)
    succ = np.asarray(success, bool)
    base = float(np.sum(~succ))
    order = np.argsort(-p, kind="stable")
    # Rewriting the top-m turns changes defects by sum over them of (not ok) - (not succ).
    delta = np.cumsum((~ok[order]).astype(np.float64) - (~succ[order]).astype(np.float64))
    finite = p[np.isfinite(p)]
    best_defects = base
    best_t = float(finite.max()) + 1.0 if len(finite) else np.inf
    for m in range(len(order)):
        t = p[order[m]]
        if not np.isfinite(t):
            break
        nxt = p[order[m + 1]] if m + 1 < len(order) else -np.inf
        if nxt == t:
            continue  # a threshold takes every turn of equal score
        if base + delta[m] < best_defects - 1e-12:
            best_defects = base + delta[m]
            best_t = float((t + nxt) / 2) if np.isfinite(nxt) else float(t)
    return best_t


@dataclasses.dataclass
class RewriteRanker:
    """The decision of one layer setting (global, or global + personal).

    `candidate`: P(judge(candidate, turn)) from (query, candidate) features, picks the best
    candidate; `defect`: P(the request as it is fails) from turn features. The turn is rewritten
    when the expected gain p_candidate - (1 - p_defect) (served with the rewrite minus served
    without it) is >= `threshold`, chosen on validation traffic (`choose_threshold`).
    """

    candidate: Ranker
    defect: Ranker
    threshold: float = 0.0

    @property
    def personal(self) -> bool:
        return "in_personal" in self.candidate.features

    def to_json(self) -> dict[str, Any]:
        return {"candidate": self.candidate.to_json(), "defect": self.defect.to_json(),
                "threshold": self.threshold}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "RewriteRanker":
        return cls(Ranker.from_json(d["candidate"]), Ranker.from_json(d["defect"]),
                   float(d["threshold"]))


# --------------------------------------------------------------------------------------------
# The online rewriter
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Candidate:
    text: str
    norm: str                  # normalized text
    slot_words: list[list[str]]  # the entry's slot values as words
    entry: dict[str, Any]      # the global entry (or the personal one when not in global)
    score: float               # dual-encoder score with the query
    rank: int                  # 0-based rank in the global list (k_global: not in it)
    count: int                 # global count (leave-session-out when fitting)
    personal_count: int = 0
    personal_only: bool = False


def _split_of(turn: dict[str, Any], val_fraction: float) -> str:
    key = f"{turn.get('user')}|{turn.get('session')}"
    h = int.from_bytes(hashlib.sha1(("rewrite-val:" + key).encode()).digest()[:4], "little")
    return "val" if h / 2 ** 32 < val_fraction else "fit"


class OnlineRewriter:
    """Global + personal retrieval, ranking and the rewrite-or-not decision (module docstring).

    `rewrite(turns, personal=True) -> [str | None]`; `evaluate(turns, judge, personal)` ->
    defect counts and reduction; `fit(...)` builds both rankers from training traffic.
    `stats` (TrafficStats of the training traffic) feeds the metadata features; without it
    they are 0.
    """

    def __init__(self, global_index: RewriteIndex,
                 personal_indexes: dict[str, RewriteIndex] | None = None,
                 ranker: RewriteRanker | None = None,
                 personal_ranker: RewriteRanker | None = None, *, stats: TrafficStats | None = None,
                 k_global: int = 10, k_personal: int = 5, personal_margin: float = 0.1,
                 encoder: TextEncoder | None = None):
        self.global_index = global_index
        self.personal_indexes = dict(personal_indexes or {})
        self.ranker = ranker
        self.personal_ranker = personal_ranker
        self.stats = stats
        self.k_global = int(k_global)
        self.k_personal = int(k_personal)
        self.personal_margin = float(personal_margin)
        self.encoder = encoder or global_index.encoder
        if self.encoder is None:
            raise ValueError("OnlineRewriter needs an encoder (the global index has none)")

    # -- candidates and features ------------------------------------------------------------

    def encode_queries(self, turns: Sequence[dict[str, Any]]) -> np.ndarray:
        texts = [(t.get("asr") or "") for t in turns]
        return self.encoder.encode(texts, "query") if texts else np.zeros((0, 1), np.float32)

    def candidates(self, turns: Sequence[dict[str, Any]], personal: bool,
                   query_emb: np.ndarray | None = None,
                   leave_session_out: bool = False) -> list[list[Candidate]]:
        """Candidate rewrites of every turn (see the module docstring for the admission rule);
        the turn's own text is never a candidate. `leave_session_out`: counts exclude the
        turn's own session and candidates only it produced are dropped (fitting)."""
        if query_emb is None:
            query_emb = self.encode_queries(turns)
        gi = self.global_index
        g_scores, g_rows = gi.search_vectors(query_emb, self.k_global)
        p_hits: dict[int, list[tuple[float, int, RewriteIndex]]] = {}
        if personal:
            by_user: dict[str, list[int]] = defaultdict(list)
            for i, t in enumerate(turns):
                if str(t.get("user", "")) in self.personal_indexes:
                    by_user[str(t.get("user", ""))].append(i)
            for user, idx in by_user.items():
                pindex = self.personal_indexes[user]
                s, r = pindex.search_vectors(query_emb[idx], self.k_personal)
                for row, i in enumerate(idx):
                    p_hits[i] = [(float(a), int(b), pindex) for a, b in zip(s[row], r[row])]
        out = []
        for i, turn in enumerate(turns):
            query = _norm(turn.get("asr") or "")
            if not query:
                out.append([])
                continue
            session = turn.get("session") if leave_session_out else None
            cands: dict[str, Candidate] = {}
            best = float(g_scores[i, 0]) if g_scores.shape[1] else -np.inf
            for rank, (s, r) in enumerate(zip(g_scores[i], g_rows[i])):
                e, key = gi.entries[int(r)], gi.norms[int(r)]
                if key == query or key in cands:
                    continue
                count = int(e.get("count", 1)) - int((e.get("sessions") or {}).get(session, 0))
                if count <= 0:
                    continue
                cands[key] = Candidate(e["text"], key, gi.slot_words[int(r)], e, float(s), rank,
                                       count)
            for s, r, pindex in p_hits.get(i, []):
                e, key = pindex.entries[r], pindex.norms[r]
                if key == query:
                    continue
                pcount = int(e.get("count", 1)) - int((e.get("sessions") or {}).get(session, 0))
                if pcount <= 0:
                    continue
                if key in cands:
                    cands[key].personal_count = pcount
                    continue
                if s < best - self.personal_margin:
                    continue  # not plausible under the global model: not admitted
                grow = gi.row_of.get(key)
                ge = gi.entries[grow] if grow is not None else e
                count = int(ge.get("count", 1)) - int((ge.get("sessions") or {}).get(session, 0))
                cands[key] = Candidate(e["text"], key, pindex.slot_words[r], ge, s,
                                       self.k_global, max(count, pcount), pcount,
                                       personal_only=True)
            out.append(list(cands.values()))
        return out

    def features(self, turn: dict[str, Any], cands: Sequence[Candidate], names: Sequence[str],
                 leave_session_out: bool = False) -> np.ndarray:
        """[len(cands), len(names)] features of a turn's candidates."""
        q = _norm(turn.get("asr") or "")
        qw = q.split()
        qset = set(qw)
        nlu = turn.get("nlu") or {}
        user = str(turn.get("user", ""))
        session = turn.get("session") if leave_session_out else None
        stats = self.stats
        best = max((c.score for c in cands), default=0.0)
        want = set(names)
        rows = []
        for c in cands:
            t, tw, slots = c.norm, c.norm.split(), c.slot_words
            lr = math.log(max(len(tw), 1) / max(len(qw), 1))
            f = {"score": c.score, "score_gap": best - c.score, "inv_rank": 1.0 / (1.0 + c.rank),
                 "log_count": math.log1p(max(c.count, 0)),
                 "log_users": math.log1p(int(c.entry.get("users", 1))),
                 "log_len_ratio": lr, "abs_log_len_ratio": abs(lr),
                 "intent_match": float(c.entry.get("intent") is not None
                                       and c.entry.get("intent") == nlu.get("intent")),
                 "slot_overlap": float(np.mean([all(w in qset for w in s) for s in slots if s])
                                       if any(slots) else 0.0),
                 "nlu_conf": float(nlu.get("conf", 0.0) or 0.0),
                 "asr_conf": float(turn.get("asr_conf", 0.0) or 0.0),
                 "in_personal": float(c.personal_count > 0),
                 "log_personal_count": math.log1p(c.personal_count),
                 "personal_share": c.personal_count / max(c.count, 1),
                 "personal_only": float(c.personal_only),
                 "log_pair_count": 0.0, "cand_fail_rate": 0.0, "log_user_pair_count": 0.0}
            if "word_sim" in want:
                f["word_sim"] = similarity(qw, tw)
            if "char_sim" in want:
                f["char_sim"] = similarity(q, t)
            if stats is not None:
                f["log_pair_count"] = math.log1p(stats.count(("pair", q, t), session))
                ok = stats.count(("ok", t), session)
                fail = stats.count(("fail", t), session)
                f["cand_fail_rate"] = (fail + 0.5) / (ok + fail + 1.0)
                if "log_user_pair_count" in want:
                    f["log_user_pair_count"] = math.log1p(
                        stats.count(("user_pair", user, q, t), session))
            rows.append([f[n] for n in names])
        return np.asarray(rows, np.float64).reshape(len(cands), len(names))

    def turn_features(self, turn: dict[str, Any], cands: Sequence[Candidate],
                      names: Sequence[str], leave_session_out: bool = False) -> np.ndarray:
        """[1, len(names)] features of the request itself (for the defect model)."""
        q = _norm(turn.get("asr") or "")
        nlu = turn.get("nlu") or {}
        user = str(turn.get("user", ""))
        session = turn.get("session") if leave_session_out else None
        f = {"nlu_conf": float(nlu.get("conf", 0.0) or 0.0),
             "asr_conf": float(turn.get("asr_conf", 0.0) or 0.0),
             "log_words": math.log1p(len(q.split())),
             "best_score": max((c.score for c in cands), default=0.0),
             "has_candidates": float(bool(cands)),
             "q_log_ok": 0.0, "q_log_fail": 0.0, "q_fail_rate": 0.5, "q_user_log_ok": 0.0,
             "q_user_log_fail": 0.0}
        if self.stats is not None:
            ok = self.stats.count(("ok", q), session)
            fail = self.stats.count(("fail", q), session)
            f.update(q_log_ok=math.log1p(ok), q_log_fail=math.log1p(fail),
                     q_fail_rate=(fail + 0.5) / (ok + fail + 1.0),
                     q_user_log_ok=math.log1p(self.stats.count(("user_ok", user, q), session)),
                     q_user_log_fail=math.log1p(self.stats.count(("user_fail", user, q),
                                                                 session)))
        return np.asarray([[f[n] for n in names]], np.float64)

    def _ranker(self, personal: bool) -> RewriteRanker:
        r = self.personal_ranker if personal else self.ranker
        if r is None:
            raise ValueError(f"no {'personal' if personal else 'global'} ranker: fit one with "
                             "OnlineRewriter.fit or pass it")
        return r

    def score(self, turn: dict[str, Any], cands: Sequence[Candidate], ranker: RewriteRanker,
              leave_session_out: bool = False) -> tuple[Candidate | None, float]:
        """(the best candidate or None, its expected gain; -inf without candidates)."""
        if not cands:
            return None, -np.inf
        p = ranker.candidate.predict_proba(self.features(turn, cands, ranker.candidate.features,
                                                         leave_session_out))
        k = int(np.argmax(p))
        p_defect = float(ranker.defect.predict_proba(self.turn_features(
            turn, cands, ranker.defect.features, leave_session_out))[0])
        return cands[k], float(p[k]) - (1.0 - p_defect)

    def decide(self, turn: dict[str, Any], cands: Sequence[Candidate], ranker: RewriteRanker
               ) -> tuple[str | None, float]:
        """(rewrite or None, the expected gain of the best candidate)."""
        best, gain = self.score(turn, cands, ranker)
        return (best.text if best is not None and gain >= ranker.threshold else None), gain

    # -- serving ----------------------------------------------------------------------------

    def rewrite(self, turns: Sequence[dict[str, Any]], personal: bool = True
                ) -> list[str | None]:
        """The rewrite of each turn's request, or None (keep the request as it is)."""
        ranker = self._ranker(personal)
        cands = self.candidates(turns, personal)
        return [self.decide(t, c, ranker)[0] for t, c in zip(turns, cands)]

    def evaluate(self, turns: Sequence[dict[str, Any]], judge: Judge,
                 personal: bool = True) -> dict[str, Any]:
        """Defects before and after rewriting. A turn's defect before is `not success`; after,
        `not judge(rewrite, turn)` if rewritten, else `not success`. wins: defects fixed by a
        rewrite; losses: successes a rewrite broke."""
        rewrites = self.rewrite(turns, personal)
        if hasattr(judge, "prefetch"):
            judge.prefetch({r for r in rewrites if r is not None})
        return defect_report(turns, rewrites, judge)

    # -- fitting ----------------------------------------------------------------------------

    @classmethod
    def fit(cls, global_index: RewriteIndex, personal_indexes: dict[str, RewriteIndex] | None,
            turns: Sequence[dict[str, Any]], judge: Judge, *, stats: TrafficStats | None = None,
            val_fraction: float = 0.2, l2: float = 1.0, k_global: int = 10, k_personal: int = 5,
            personal_margin: float = 0.1, encoder: TextEncoder | None = None
            ) -> "OnlineRewriter":
        """Fit the global ranker and (with personal indexes) the personal one on training
        traffic (module docstring: candidate labels judge(candidate, turn), defect labels
        `not turn["success"]`, leave-session-out, split by session hash into fit / validation,
        threshold chosen on validation)."""
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction={val_fraction} must be in (0, 1)")
        self = cls(global_index, personal_indexes, None, None, stats=stats, k_global=k_global,
                   k_personal=k_personal, personal_margin=personal_margin, encoder=encoder)
        turns = [t for t in turns if _norm(t.get("asr") or "")]
        parts = [_split_of(t, val_fraction) for t in turns]
        q = self.encode_queries(turns)
        cache: dict[tuple[int, str], bool] = {}

        def label(i: int, text: str) -> bool:
            key = (i, _norm(text))
            if key not in cache:
                cache[key] = bool(judge(text, turns[i]))
            return cache[key]

        modes = [False] + ([True] if self.personal_indexes else [])
        for personal in modes:
            cnames = PERSONAL_FEATURES if personal else GLOBAL_FEATURES
            tnames = PERSONAL_TURN_FEATURES if personal else TURN_FEATURES
            cands = self.candidates(turns, personal, q, leave_session_out=True)
            if hasattr(judge, "prefetch"):  # e.g. the simulator's judge: one batch of texts
                judge.prefetch({x.text for c in cands for x in c})
            X, y, T, d = [], [], [], []
            for i, (t, c) in enumerate(zip(turns, cands)):
                if parts[i] != "fit":
                    continue
                T.append(self.turn_features(t, c, tnames, True))
                d.append(not t.get("success"))
                if c:
                    X.append(self.features(t, c, cnames, True))
                    y.extend(label(i, x.text) for x in c)
            candidate = Ranker(cnames, l2=l2)
            if X:
                candidate.fit(np.concatenate(X), np.asarray(y, np.float64))
            defect = Ranker(tnames, l2=l2)
            if T:
                defect.fit(np.concatenate(T), np.asarray(d, np.float64))
            ranker = RewriteRanker(candidate, defect)
            gains, best_ok, succ = [], [], []
            for i, (t, c) in enumerate(zip(turns, cands)):
                if parts[i] != "val":
                    continue
                best, gain = self.score(t, c, ranker, leave_session_out=True)
                gains.append(gain)
                best_ok.append(best is not None and label(i, best.text))
                succ.append(bool(t.get("success")))
            ranker.threshold = choose_threshold(gains, best_ok, succ)
            if personal:
                self.personal_ranker = ranker
            else:
                self.ranker = ranker
        return self


def defect_report(turns: Sequence[dict[str, Any]], rewrites: Sequence[str | None],
                  judge: Judge) -> dict[str, Any]:
    """The arithmetic of `OnlineRewriter.evaluate` for given rewrites."""
    if len(turns) != len(rewrites):
        raise ValueError(f"{len(turns)} turns but {len(rewrites)} rewrites")
    before = after = rewritten = wins = losses = 0
    for t, rw in zip(turns, rewrites):
        ok_before = bool(t["success"])
        before += not ok_before
        if rw is None:
            after += not ok_before
            continue
        rewritten += 1
        ok = bool(judge(rw, t))
        after += not ok
        wins += ok and not ok_before
        losses += ok_before and not ok
    return {"turns": len(turns), "defects_before": before, "defects_after": after,
            "defect_reduction": (before - after) / before if before else 0.0,
            "rewritten": rewritten, "wins": wins, "losses": losses}


# --------------------------------------------------------------------------------------------
# Latency
# --------------------------------------------------------------------------------------------


def latency(rewriter: OnlineRewriter, turns: Sequence[dict[str, Any]], *,
            entries: Sequence[dict[str, Any]] | None = None, queries: int = 200,
            warmup: int = 10, personal: bool = True) -> dict[str, Any]:
    """Index build time (when `entries` are given: embedding them and placing the index, on the
    rewriter's encoder and devices) and per-query latency of single requests: encode + search
    (global and personal, `jax.block_until_ready` on the device results) + rank, over
    `queries` (>= 100) requests cycled from `turns` after `warmup` untimed ones. Milliseconds.
    """
    if queries < 100:
        raise ValueError(f"queries={queries}: use at least 100 for a p99")
    if not turns:
        raise ValueError("latency needs turns")
    out: dict[str, Any] = {"backend": jax.default_backend(), "devices": len(
        rewriter.global_index.devices), "index_size": len(rewriter.global_index)}
    if entries is not None:
        t0 = time.perf_counter()
        index = RewriteIndex.build(rewriter.encoder, entries,
                                   devices=rewriter.global_index.devices)
        jax.block_until_ready((index.embeddings, index.valid))
        out["build_seconds"] = time.perf_counter() - t0
        out["built_entries"] = len(entries)
    ranker = rewriter._ranker(personal)
    stages: dict[str, list[float]] = {"encode": [], "search": [], "rank": [], "total": []}
    for n in range(warmup + queries):
        turn = turns[n % len(turns)]
        t0 = time.perf_counter()
        q = rewriter.encode_queries([turn])
        q = np.asarray(jax.block_until_ready(q))
        t1 = time.perf_counter()
        cands = rewriter.candidates([turn], personal, q)  # searches block on their results
        t2 = time.perf_counter()
        rewriter.decide(turn, cands[0], ranker)
        t3 = time.perf_counter()
        if n >= warmup:
            for k, v in (("encode", t1 - t0), ("search", t2 - t1), ("rank", t3 - t2),
                         ("total", t3 - t0)):
                stages[k].append(1000.0 * v)
    for k, v in stages.items():
        out[f"{k}_p50_ms"] = float(np.percentile(v, 50))
        out[f"{k}_p99_ms"] = float(np.percentile(v, 99))
    out["queries"] = queries
    return out


# --------------------------------------------------------------------------------------------
# The experiment
# --------------------------------------------------------------------------------------------


def experiment(train_sessions: Sequence[dict[str, Any]], fit_turns: Sequence[dict[str, Any]],
               test_turns: Sequence[dict[str, Any]], retriever: Any, judge: Judge, *,
               max_fit_turns: int = 20000, seed: int = 0, latency_queries: int = 200,
               devices: Sequence[Any] | None = None, **fit_options: Any) -> dict[str, Any]:
    """Online rewriting evaluated end to end.

    Indexes and statistics from `train_sessions` (global: `success_entries`, personal: per
    user), rankers fitted on `fit_turns` (training traffic, at most `max_fit_turns` drawn with
    `seed`), defect reduction on `test_turns` (held-out traffic) without and with the personal
    layer, and CPU latency. `retriever`: a `dual_encoder` run (LoadedRun or workdir) or any
    `TextEncoder`. Turns need "user" and "session" (e.g. `flatten_sessions`).
    """
    t0 = time.perf_counter()
    encoder = as_encoder(retriever)
    entries = success_entries(train_sessions, splits=None)
    t = time.perf_counter()
    index = RewriteIndex.build(encoder, entries, devices=devices)
    jax.block_until_ready(index.embeddings)
    build = time.perf_counter() - t
    personal = personal_indexes(index, success_entries(train_sessions, per_user=True,
                                                       splits=None))
    stats = TrafficStats.from_sessions(train_sessions, splits=None)
    fit_turns = list(fit_turns)
    if len(fit_turns) > max_fit_turns:
        pick = np.random.default_rng(seed).choice(len(fit_turns), max_fit_turns, replace=False)
        fit_turns = [fit_turns[i] for i in sorted(pick)]
    t = time.perf_counter()
    rewriter = OnlineRewriter.fit(index, personal, fit_turns, judge, stats=stats,
                                  encoder=encoder, **fit_options)
    fit_seconds = time.perf_counter() - t
    report: dict[str, Any] = {
        "index": {"global_entries": len(index), "users": len(personal),
                  "personal_entries": sum(len(p) for p in personal.values()),
                  "build_seconds": build},
        "fit": {"turns": len(fit_turns), "seconds": fit_seconds,
                "global_threshold": rewriter.ranker.threshold,
                "personal_threshold": rewriter.personal_ranker.threshold
                if rewriter.personal_ranker else None},
        "global": rewriter.evaluate(test_turns, judge, personal=False)}
    if rewriter.personal_ranker is not None:
        report["global_personal"] = rewriter.evaluate(test_turns, judge, personal=True)
        before = report["global"]["defects_after"]
        report["personal_extra_reduction"] = (
            (before - report["global_personal"]["defects_after"]) / before if before else 0.0)
    if latency_queries and test_turns:
        report["latency"] = latency(rewriter, list(test_turns)[:1000], entries=entries,
                                    queries=latency_queries,
                                    personal=rewriter.personal_ranker is not None)
    report["rankers"] = {"global": rewriter.ranker.to_json(),
                         "personal": rewriter.personal_ranker.to_json()
                         if rewriter.personal_ranker else None}
    report["seconds"] = time.perf_counter() - t0
    return report
