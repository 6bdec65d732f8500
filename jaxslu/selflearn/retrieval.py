"""The rewrite retriever: a dual encoder over (failed request -> successful rephrase) pairs.

Method (dense passage retrieval applied to query rewriting). A failed request (its ASR text) and
the successful request the same user rephrased it into are a positive pair; every other target of
the same global batch is a negative ("in-batch negatives"). A query encoder and a target encoder
(two Transformer text encoders, or one shared with `shared=True`) mean-pool their token states,
project them and L2-normalize, so the similarity is a dot product (cosine) that an exact top-k
over an index of successful requests ranks (`jaxslu.selflearn.rewriting.RewriteIndex`).

Pieces, one per registry (docs/DESIGN.md, "Adding a task"):
  * `rewrite_pairs` (DATASETS): `<path>/<split>.jsonl`, one `{"query", "target", "user"}`
    object per line; a bad line is an error naming file:line and the field.
  * `rewrite_retrieval` (TASKS): assets = the project's sentencepiece tokenizer trained on the
    training queries and targets (`tokenizer.model`, the NLU task's wrapper); a batch is
    `query_tokens` [B, L], `target_tokens` [B, L] (0 = padding, L a bucket of
    `data.label_buckets`), `target_id` [B] (a 31-bit hash of the normalized target text, -1 on
    padding rows: two rows with the same target are not each other's negatives), `index`,
    `weight`. In-batch negatives need big batches (retrieval quality falls with fewer
    negatives): the task refuses `data.batch_size < 128` unless `task_options.allow_small_batch`
    is set (the tiny test config does).
  * `dual_encoder` (MODELS, `DualEncoderConfig`): `__call__` -> `{"query_emb", "target_emb"}`
    [B, P] unit vectors; `encode(tokens, side)` embeds one side for indexing and queries.
  * `in_batch_nce` (LOSSES): softmax cross-entropy of each query over all targets of the global
    batch (the batch is sharded over devices, the score matrix is global: under jit XLA gathers
    the targets), logits = cosine / temperature; padding rows are masked both as queries and as
    negatives, and duplicate targets (same `target_id`) are masked as negatives of each other.
  * `rewrite_retrieval` (EVALUATORS): recall@1 / recall@10 (and MRR) of each held-out query's
    target against an index of every distinct target of the training and evaluation splits.

`pairs_from_sessions` mines the pairs from the simulated assistant log (see its docstring) and
`write_pairs` writes them in the `rewrite_pairs` format.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxslu.data.pipeline import DataError, Skipped, bucket_for, pad_rows
from jaxslu.eval.run import LoadedRun
from jaxslu.layers.core import Dense
from jaxslu.nlu.models import TextEncoderConfig, TextTransformer, pool
from jaxslu.nlu.task import SentencePieceText
from jaxslu.registry import DATASETS, EVALUATORS, LOSSES, MODELS, TASKS
from jaxslu.task import Task
from jaxslu.text.normalize import normalize_text

log = logging.getLogger(__name__)

#: in-batch negatives below this batch size make a markedly worse retriever
MIN_BATCH_SIZE = 128
PAIR_FIELDS = ("query", "target", "user")
SUCCESS_SIGNALS = ("none", "thanks")


# --------------------------------------------------------------------------------------------
# Mining pairs from sessions
# --------------------------------------------------------------------------------------------


def _rephrase_index(turn: dict[str, Any], position: int) -> int | None:
    r = turn.get("rephrase_of")
    if r is None or isinstance(r, bool):
        return None
    r = int(r)
    return r if 0 <= r < position else None


def request_text(turn: dict[str, Any]) -> str:
    """The request a turn's ASR text states: its `rephrase_span` words when it has one (a
    correction's "no i said ..." prefix left out), else the whole text."""
    asr = (turn.get("asr") or "").strip()
    span = turn.get("rephrase_span")
    if span:
        words = asr.split()
        s, e = int(span[0]), int(span[1])
        if 0 <= s < e <= len(words):
            return " ".join(words[s:e])
    return asr


def _roots(turns: Sequence[dict[str, Any]]) -> list[int]:
    """The first turn of each turn's request: `rephrase_of` followed back to a turn that
    rephrases nothing (works whether it names the request's first turn or the previous try)."""
    roots: list[int] = []
    for j, t in enumerate(turns):
        r = _rephrase_index(t, j)
        roots.append(j if r is None else roots[r])
    return roots


def pairs_from_sessions(sessions: Iterable[dict[str, Any]], max_gap: float = 45.0,
                        splits: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Rewrite pairs mined from sessions, in session and turn order.

    A pair is (query = the ASR text of a failed turn, target = the request text (`request_text`)
    of a later turn of the same session that rephrases it and whose own signal is "none" or
    "thanks", i.e. the user was satisfied). "Failed" is what the log shows: the turn's signal is
    neither "none" nor "thanks" (the user barged in, rephrased or abandoned). `rephrase_of` is
    the index (in `session["turns"]`) of the turn whose request a turn restates; every earlier
    failed try of the same request pairs with the satisfied one, so in a -> b -> c with only c
    satisfied, (b, c) and (a, c) are pairs. Consecutive tries must be at most `max_gap` seconds
    apart (a longer pause ends the chain there); the two texts must differ after
    normalization. `splits`: keep sessions of these splits only (None: all). Each pair is
    `{"query", "target", "user", "session", "split"}`.
    """
    out: list[dict[str, Any]] = []
    for s in sessions:
        if splits is not None and s.get("split") not in splits:
            continue
        turns = s.get("turns") or []
        roots = _roots(turns)
        for j, tj in enumerate(turns):
            if tj.get("signal") not in SUCCESS_SIGNALS or roots[j] == j:
                continue
            target = request_text(tj)
            if not normalize_text(target):
                continue
            later_t = float(tj.get("t", 0.0))
            for i in range(j - 1, -1, -1):
                if roots[i] != roots[j]:
                    continue
                ti = turns[i]
                if later_t - float(ti.get("t", 0.0)) > max_gap:
                    break
                later_t = float(ti.get("t", 0.0))
                query = (ti.get("asr") or "").strip()
                if (ti.get("signal") not in SUCCESS_SIGNALS and normalize_text(query)
                        and normalize_text(query) != normalize_text(target)):
                    out.append({"query": query, "target": target, "user": str(s.get("user", "")),
                                "session": s.get("session"), "split": s.get("split")})
    return out


def write_pairs(pairs: Iterable[dict[str, Any]], folder: str | Path,
                split_key: str = "split") -> dict[str, int]:
    """Write pairs as `<folder>/<split>.jsonl` (the `rewrite_pairs` format), split by each
    pair's `split_key`; returns {split: count}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    by_split: dict[str, list[dict[str, Any]]] = {}
    for p in pairs:
        by_split.setdefault(str(p.get(split_key) or "train"), []).append(p)
    for split, rows in by_split.items():
        tmp = folder / f".{split}.jsonl.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            for p in rows:
                f.write(json.dumps({k: p[k] for k in PAIR_FIELDS}) + "\n")
        tmp.replace(folder / f"{split}.jsonl")
    return {k: len(v) for k, v in by_split.items()}


# --------------------------------------------------------------------------------------------
# Data source
# --------------------------------------------------------------------------------------------


def target_key(text: str) -> int:
    """A 31-bit id of a normalized text (equal texts, equal ids; collisions ~ n^2 / 2^32)."""
    h = hashlib.sha1(normalize_text(text).encode("utf-8")).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


class PairSource:
    """A list of `{"id", "query", "target", "user"}` rows; grain random access by index."""

    def __init__(self, rows: list[dict[str, Any]], name: str):
        self.rows = rows
        self.name = name

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[int(i)]

    def metadata(self, i: int) -> dict[str, Any]:
        return self.rows[int(i)]

    def text(self, i: int) -> str:
        return self.rows[int(i)]["query"]

    def targets(self) -> list[str]:
        return [r["target"] for r in self.rows]

    def __repr__(self) -> str:
        return f"<{self.name}: {len(self.rows)} pairs>"


def read_pairs(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a pairs file; a bad line raises `DataError` naming file:line and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"rewrite pairs file {str(path)!r} not found; write one with "
                                "jaxslu.selflearn.retrieval.write_pairs or set "
                                "data.options.path to the folder holding <split>.jsonl")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not a JSON object ({e.msg}); each line is "
                                '{"query": str, "target": str, "user": str}') from e
            if not isinstance(d, dict):
                raise DataError(f"{where}: a JSON {type(d).__name__}, not an object with "
                                "query, target and user")
            for field in PAIR_FIELDS:
                if field not in d:
                    raise DataError(f"{where}: missing field {field!r} (a pair needs "
                                    f"{', '.join(PAIR_FIELDS)})")
                if not isinstance(d[field], str):
                    raise DataError(f"{where}: field {field!r} is a {type(d[field]).__name__}, "
                                    "not a string")
            for field in ("query", "target"):
                if not normalize_text(d[field]):
                    raise DataError(f"{where}: field {field!r} is empty")
            rows.append({"id": f"{path.stem}/{n}", "query": d["query"], "target": d["target"],
                         "user": d["user"]})
    return rows


@DATASETS.register("rewrite_pairs")
def rewrite_pairs(split: str, *, path: str = "") -> PairSource:
    """`<path>/<split>.jsonl` of `{"query", "target", "user"}` lines (module docstring)."""
    if not path:
        raise ValueError("dataset rewrite_pairs needs data.options.path: the folder with "
                         "<split>.jsonl files (jaxslu.selflearn.retrieval.write_pairs)")
    return PairSource(read_pairs(Path(path) / f"{split}.jsonl"), f"rewrite_pairs/{split}")


# --------------------------------------------------------------------------------------------
# Task
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RetrievalAssets:
    tokenizer: SentencePieceText


@TASKS.register("rewrite_retrieval")
class RewriteRetrievalTask(Task):
    """Task options: max_tokens (32: longer texts are truncated), allow_small_batch (False: a
    `data.batch_size` below 128 is refused, see the module docstring)."""

    default_evaluator = "rewrite_retrieval"
    asset_files = ("tokenizer.model",)
    OPTIONS = {"max_tokens", "allow_small_batch"}

    def __init__(self, cfg):
        super().__init__(cfg)
        unknown = set(self.options) - self.OPTIONS
        if unknown:
            raise ValueError(f"task_options {sorted(unknown)} unknown for the rewrite_retrieval "
                             f"task; it takes {', '.join(sorted(self.OPTIONS))}")
        self.max_tokens = int(self.options.get("max_tokens", 32))
        self.allow_small_batch = bool(self.options.get("allow_small_batch", False))
        if max(cfg.data.label_buckets) < self.max_tokens:
            raise ValueError(f"data.label_buckets={cfg.data.label_buckets} must reach "
                             f"task_options.max_tokens={self.max_tokens}")
        check_batch_size(cfg.data.batch_size, self.allow_small_batch, warn=False)

    # -- assets -----------------------------------------------------------------------------

    def load_assets(self, workdir: Path) -> RetrievalAssets | None:
        p = Path(workdir) / "tokenizer.model"
        if not p.exists():
            return None
        from jaxslu.text.tokenizer import Tokenizer

        return RetrievalAssets(SentencePieceText(Tokenizer.load(p)))

    def build_assets(self, source, scratch: Path) -> RetrievalAssets:
        from jaxslu.text.tokenizer import Tokenizer

        scratch.mkdir(parents=True, exist_ok=True)
        if len(source) == 0:
            raise DataError(f"training source {source!r} has no pairs")
        texts = []
        for i in range(len(source)):
            m = source.metadata(i)
            texts.extend((m["query"], m["target"]))
        tok = self.cfg.tokenizer
        tokenizer = Tokenizer.train(texts, kind=tok.kind, vocab_size=tok.vocab_size,
                                    model_path=scratch / "tokenizer.model",
                                    lowercase=tok.lowercase)
        return RetrievalAssets(SentencePieceText(tokenizer))

    def save_assets(self, assets: RetrievalAssets, workdir: Path) -> None:
        assets.tokenizer.tokenizer.save(Path(workdir) / "tokenizer.model")

    def model_kwargs(self, assets: RetrievalAssets) -> dict[str, Any]:
        return {"vocab_size": assets.tokenizer.vocab_size}

    def check(self, model, objective) -> None:
        check_batch_size(self.cfg.data.batch_size, self.allow_small_batch)

    # -- batches ----------------------------------------------------------------------------

    def encode_text(self, assets: RetrievalAssets, text: str) -> np.ndarray:
        """Token ids of one text (normalized, truncated to max_tokens; ids >= 1)."""
        words = normalize_text(text, lowercase=assets.tokenizer.tokenizer.lowercase).split()
        ids, _ = assets.tokenizer.encode_words(words, self.max_tokens)
        return np.asarray(ids, np.int32)

    def token_batch(self, assets: RetrievalAssets, texts: Sequence[str],
                    rows: int | None = None) -> np.ndarray:
        """[rows, L] padded token ids of `texts` (L the smallest label bucket that holds them;
        rows beyond the texts are all padding)."""
        ids = [self.encode_text(assets, t) for t in texts]
        length = bucket_for(max([len(x) for x in ids] + [1]), sorted(set(
            self.cfg.data.label_buckets)))
        out = np.zeros((rows or len(ids), length), np.int32)
        for k, x in enumerate(ids):
            out[k, :len(x)] = x
        return out

    def prepare_fn(self, source, assets: RetrievalAssets, *, train: bool, model=None,
                   objective=None):
        skip = self.cfg.data.skip_bad_examples

        def prepare(index: int):
            index = int(index)
            m = source.metadata(index)
            q = self.encode_text(assets, m["query"])
            t = self.encode_text(assets, m["target"])
            if len(q) == 0 or len(t) == 0:
                msg = (f"pair {m.get('id', index)!r} of {source!r} encodes to no tokens; drop it "
                       "or set data.skip_bad_examples=True")
                if skip:
                    return Skipped(msg)
                raise DataError(msg)
            return {"query_tokens": q, "target_tokens": t, "target_id": target_key(m["target"]),
                    "index": index}

        return prepare

    def pad_values(self):
        return {"query_tokens": 0, "target_tokens": 0}

    def collate(self, rows, batch_size: int):
        length = max([len(r["query_tokens"]) for r in rows]
                     + [len(r["target_tokens"]) for r in rows] + [1])
        bucket = bucket_for(length, sorted(set(self.cfg.data.label_buckets)))
        if bucket is None:
            raise AssertionError("text longer than the largest label bucket reached collate")
        return pad_rows(rows, batch_size, {
            "query_tokens": (np.int32, (bucket,), 0), "target_tokens": (np.int32, (bucket,), 0),
            "target_id": (np.int32, (), -1), "index": (np.int32, (), -1)})


def check_batch_size(batch_size: int, allow_small_batch: bool, warn: bool = True) -> None:
    """Refuse a batch too small for in-batch negatives (unless explicitly allowed; then warn
    when `warn`)."""
    if batch_size >= MIN_BATCH_SIZE:
        return
    if not allow_small_batch:
        raise ValueError(f"data.batch_size={batch_size}: the in-batch-negative retriever needs a "
                         f"global batch of at least {MIN_BATCH_SIZE} (fewer negatives make a "
                         "markedly worse retriever); raise it, or set "
                         "task_options.allow_small_batch=True for a smoke test")
    if warn:
        log.warning("data.batch_size=%d < %d with allow_small_batch: the retriever will be "
                    "weaker", batch_size, MIN_BATCH_SIZE)


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DualEncoderConfig:
    name: str = "dual_encoder"
    encoder: TextEncoderConfig = TextEncoderConfig(num_layers=2, dim=128, heads=4, ff_mult=4,
                                                   dropout=0.1)
    shared: bool = False  # one encoder (and projection) for both sides
    proj_dim: int = 128


@MODELS.register("dual_encoder", config=DualEncoderConfig)
class DualEncoder(nnx.Module):
    """Query / target Transformer encoders -> mean pooling -> projection -> unit vectors."""

    SIDES = ("query", "target")

    def __init__(self, cfg: DualEncoderConfig, *, vocab_size: int, rngs: nnx.Rngs):
        if cfg.encoder.kind != "transformer":
            raise ValueError(f"model.encoder.kind={cfg.encoder.kind!r}: the dual encoder uses "
                             "'transformer' (trained from scratch)")
        if cfg.proj_dim < 1:
            raise ValueError("model.proj_dim must be positive")
        self.cfg = cfg
        self.query_encoder = TextTransformer(cfg.encoder, vocab_size, rngs=rngs)
        self.query_proj = Dense(cfg.encoder.dim, cfg.proj_dim, rngs=rngs, axes=("embed", None))
        if cfg.shared:
            self.target_encoder = None
            self.target_proj = None
        else:
            self.target_encoder = TextTransformer(cfg.encoder, vocab_size, rngs=rngs)
            self.target_proj = Dense(cfg.encoder.dim, cfg.proj_dim, rngs=rngs,
                                     axes=("embed", None))

    def encode(self, tokens: jax.Array, side: str, *, train: bool = False,
               rngs: nnx.Rngs | None = None) -> jax.Array:
        """tokens [B, L] (0 = padding) of one side ("query" or "target") -> [B, P] unit
        vectors (an all-padding row gives a finite vector: it is treated as length 1)."""
        if side not in self.SIDES:
            raise ValueError(f"side={side!r}: use 'query' or 'target'")
        if side == "target" and not self.cfg.shared:
            encoder, proj = self.target_encoder, self.target_proj
        else:
            encoder, proj = self.query_encoder, self.query_proj
        lengths = jnp.maximum(jnp.sum(tokens > 0, axis=-1).astype(jnp.int32), 1)
        states = encoder(tokens, lengths, train=train, rngs=rngs)
        v = proj(pool(states, lengths, "mean"))
        return l2_normalize(v)

    def __call__(self, batch, *, train: bool = False, rngs=None) -> dict[str, jax.Array]:
        return {"query_emb": self.encode(batch["query_tokens"], "query", train=train, rngs=rngs),
                "target_emb": self.encode(batch["target_tokens"], "target", train=train,
                                          rngs=rngs)}


def l2_normalize(v: jax.Array, eps: float = 1e-6) -> jax.Array:
    v32 = v.astype(jnp.float32)
    return (v32 * jax.lax.rsqrt(jnp.sum(v32 * v32, axis=-1, keepdims=True) + eps)).astype(v.dtype)


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------

_MASKED = -1e9  # a finite "minus infinity": masked logits get exactly zero probability


def in_batch_nce_value(query_emb, target_emb, weight, target_id=None,
                       temperature: float = 0.05) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean over real rows of -log softmax_j(q_i . t_j / temperature)[i].

    query_emb, target_emb [B, P] (any float dtype; computed in float32), weight [B] (0: a padding
    row, neither a query nor a negative), target_id [B] (rows j != i with target_id[j] ==
    target_id[i] are not negatives of query i; None: all targets distinct). Metrics: accuracy
    (the own target scores highest among the unmasked ones), negatives (mean count per query).
    """
    q = query_emb.astype(jnp.float32)
    t = target_emb.astype(jnp.float32)
    w = weight.astype(jnp.float32)
    B = q.shape[0]
    logits = (q @ t.T) / jnp.float32(temperature)
    eye = jnp.eye(B, dtype=bool)
    allowed = (w > 0)[None, :] | eye
    if target_id is not None:
        same = (target_id[:, None] == target_id[None, :]) & ~eye
        allowed = allowed & ~same
    logits = jnp.where(allowed, logits, _MASKED)
    logp = jnp.diagonal(logits) - jax.nn.logsumexp(logits, axis=-1)
    denom = jnp.maximum(jnp.sum(w), 1.0)
    loss = -jnp.sum(w * logp) / denom
    best = jnp.argmax(logits, axis=-1) == jnp.arange(B)
    negatives = jnp.sum(allowed, axis=-1) - 1
    return loss, {"accuracy": jnp.sum(w * best) / denom,
                  "negatives": jnp.sum(w * negatives) / denom}


@LOSSES.register("in_batch_nce")
def in_batch_nce(*, temperature: float = 0.05):
    """Contrastive loss with in-batch negatives over the global batch (`in_batch_nce_value`)."""
    if not temperature > 0:
        raise ValueError(f"loss_options.in_batch_nce.temperature={temperature} must be > 0")

    def term(batch, outputs, params):
        return in_batch_nce_value(outputs["query_emb"], outputs["target_emb"], batch["weight"],
                                  batch.get("target_id"), temperature)

    return term


# --------------------------------------------------------------------------------------------
# Evaluator
# --------------------------------------------------------------------------------------------


def rank_of_gold(query_emb: np.ndarray, index_emb: np.ndarray, gold: np.ndarray,
                 chunk: int = 1024) -> np.ndarray:
    """0-based rank of index row `gold[i]` for query i (the number of strictly higher scores,
    so ties rank the gold first)."""
    ranks = np.empty((len(query_emb),), np.int64)
    for s in range(0, len(query_emb), chunk):
        scores = query_emb[s:s + chunk] @ index_emb.T
        g = scores[np.arange(len(scores)), gold[s:s + chunk]]
        ranks[s:s + chunk] = np.sum(scores > g[:, None], axis=1)
    return ranks


def _encode_fn(side: str):
    def fn(model, batch):
        return {"emb": model.encode(batch[f"{side}_tokens"], side)}
    fn.__name__ = f"encode_{side}"
    return fn


_ENCODE = {side: _encode_fn(side) for side in DualEncoder.SIDES}


def encode_texts(run: LoadedRun, texts: Sequence[str], side: str) -> np.ndarray:
    """[N, P] embeddings of `texts` on one side, through the run's eval batches."""
    rows = [{"id": str(k), "query": t, "target": t, "user": ""} for k, t in enumerate(texts)]
    source = PairSource(rows, f"texts/{side}")
    out = None
    for batch in run.eval_batches(source):
        res, index, weight = run.apply(_ENCODE[side], batch)
        emb = np.asarray(res["emb"], np.float32)
        if out is None:
            out = np.zeros((len(texts), emb.shape[1]), np.float32)
        real = weight > 0
        out[index[real]] = emb[real]
    return out if out is not None else np.zeros((0, 0), np.float32)


@EVALUATORS.register("rewrite_retrieval")
class RewriteRetrievalEvaluator:
    """recall@1, recall@10, MRR of each query's target among all distinct targets of the
    training split and the evaluation splits (the chance level of recall@10 is reported)."""

    def __init__(self, run: LoadedRun):
        self.run = run

    def index_texts(self, split: str) -> list[str]:
        task = self.run.task
        splits = [self.run.cfg.data.train_split, *self.run.cfg.data.eval_splits, split]
        texts: dict[str, str] = {}
        for s in dict.fromkeys(splits):
            try:
                source = task.open_source(s)
            except FileNotFoundError:
                if s == split:
                    raise
                continue
            for t in source.targets():
                texts.setdefault(normalize_text(t), t)
        return list(texts.values())

    def evaluate(self, split: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        run = self.run
        source = run.task.open_source(split)
        index_texts = self.index_texts(split)
        position = {normalize_text(t): k for k, t in enumerate(index_texts)}
        index_emb = encode_texts(run, index_texts, "target")
        queries = [source.metadata(i) for i in range(len(source))]
        query_emb = encode_texts(run, [m["query"] for m in queries], "query")
        gold = np.asarray([position[normalize_text(m["target"])] for m in queries], np.int64)
        ranks = rank_of_gold(query_emb, index_emb, gold) if len(queries) else np.zeros((0,), int)
        top = np.argmax(query_emb @ index_emb.T, axis=1) if len(queries) else []
        records = [{"id": m["id"], "user": m["user"], "query": m["query"], "target": m["target"],
                    "prediction": index_texts[int(p)], "rank": int(r) + 1}
                   for m, p, r in zip(queries, top, ranks)]
        n = max(len(ranks), 1)
        report = {"queries": len(queries), "index_size": len(index_texts),
                  "recall@1": float(np.sum(ranks < 1) / n),
                  "recall@10": float(np.sum(ranks < 10) / n),
                  "mrr": float(np.sum(1.0 / (ranks + 1.0)) / n),
                  "chance_recall@10": min(1.0, 10.0 / max(len(index_texts), 1))}
        return report, records
