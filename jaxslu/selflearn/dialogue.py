"""What the dialogue-level tasks share (rephrase detection, failure isolation): the simulated
log as example sources, a word vocabulary asset and a segment-aware Transformer encoder.

Sources read a session log (`jaxslu selflearn simulate --out DIR`, see `simulator.py`) given by
the data option `path` (a folder holding sessions.jsonl.gz, or the file). Splits: "train" (the
log's train days, less a 5% hash-chosen part of its sessions), "dev" (that part), "heldout" (the
log's last days), "all". Words are the recognizer's hypotheses (what the assistant sees).

The encoder embeds, per position, the word, its segment (0: [CLS] and the turn in question, 1..:
the turns after it) and a small categorical feature (the task's: e.g. "this word is also in the
current turn", a time-gap bucket), then pre-LN Transformer blocks (those of the NLU encoder).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxslu.data.pipeline import DataError, bucket_for, pad_rows
from jaxslu.layers.core import Embed, LayerNorm, dropout
from jaxslu.nlu.models import TextEncoderConfig, TransformerBlock
from jaxslu.task import Task

PAD, UNK, CLS, SEP = 0, 1, 2, 3
RESERVED = 4
SPLITS = ("train", "dev", "heldout", "all")


@functools.lru_cache(maxsize=4)
def _cached_sessions(path: str, mtime: float) -> tuple[dict, ...]:
    from jaxslu.selflearn.simulator import read_sessions

    del mtime
    return tuple(read_sessions(path))


def log_file(path: str) -> Path:
    if not path:
        raise ValueError("the self-learning sources need data.options.path: a session log "
                         "(a folder written by `jaxslu selflearn simulate --out DIR`, or its "
                         "sessions.jsonl.gz)")
    p = Path(path)
    if p.is_dir():
        p = p / "sessions.jsonl.gz"
    if not p.is_file():
        raise FileNotFoundError(f"session log {str(p)!r} not found; write one with `jaxslu "
                                "selflearn simulate --out DIR`")
    return p


def sessions_of(path: str, split: str) -> list[dict]:
    """The log's sessions of `split` (see the module docstring)."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} unknown for a session log; use one of {SPLITS}")
    p = log_file(path)
    sessions = _cached_sessions(str(p.resolve()), p.stat().st_mtime)
    if split == "all":
        return list(sessions)
    if split == "heldout":
        return [s for s in sessions if s["split"] == "heldout"]
    dev = lambda s: int(hashlib.sha1(s["session"].encode()).hexdigest()[:8], 16) % 20 == 0
    return [s for s in sessions if s["split"] == "train" and dev(s) == (split == "dev")]


class RecordSource:
    """A grain-compatible source of prepared example dicts (`metadata(i)` is the record)."""

    def __init__(self, name: str, split: str, records: list[dict]):
        self.name, self.split, self.records = name, split, records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        return self.records[int(i)]

    def metadata(self, i: int) -> dict:
        return self.records[int(i)]

    def __repr__(self) -> str:
        return f"{self.name}[{self.split}] ({len(self.records)} examples)"


@dataclasses.dataclass
class WordAssets:
    words: list[str]  # id = position + RESERVED
    labels: list[str] = dataclasses.field(default_factory=list)
    label_counts: list[int] = dataclasses.field(default_factory=list)  # training examples

    def __post_init__(self):
        self.word_id = {w: i + RESERVED for i, w in enumerate(self.words)}

    def ids(self, words: Sequence[str]) -> list[int]:
        return [self.word_id.get(w, UNK) for w in words]


def build_word_assets(source, words_of: Callable[[dict], Sequence[str]], min_count: int,
                      labels: Sequence[str] = (),
                      label_of: Callable[[dict], str] | None = None) -> WordAssets:
    counts: Counter = Counter()
    label_counts: Counter = Counter()
    for i in range(len(source)):
        ex = source.metadata(i)
        counts.update(words_of(ex))
        if label_of is not None:
            label_counts[label_of(ex)] += 1
    if not counts:
        raise DataError(f"training source {source!r} has no words")
    return WordAssets(sorted(w for w, c in counts.items() if c >= min_count), list(labels),
                      [label_counts[x] for x in labels] if label_of else [])


def save_word_assets(assets: WordAssets, workdir: Path, name: str) -> None:
    tmp = Path(workdir) / f".{name}.tmp{os.getpid()}"
    tmp.write_text(json.dumps({"words": assets.words, "labels": assets.labels,
                               "label_counts": assets.label_counts}))
    tmp.replace(Path(workdir) / name)


def load_word_assets(workdir: Path, name: str) -> WordAssets | None:
    p = Path(workdir) / name
    if not p.is_file():
        return None
    d = json.loads(p.read_text())
    return WordAssets(d["words"], d.get("labels", []), d.get("label_counts", []))


class DialogueEncoder(nnx.Module):
    """tokens, segments, feats [B, L] (0 = padding token), lengths [B] -> states [B, L, dim]."""

    def __init__(self, cfg: TextEncoderConfig, vocab_size: int, num_segments: int,
                 num_feats: int, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = Embed(vocab_size, cfg.dim, rngs=rngs)
        small = {"stddev": 0.02, "axes": (None, "embed")}
        self.segment = Embed(num_segments, cfg.dim, rngs=rngs, **small)
        self.feat = Embed(num_feats, cfg.dim, rngs=rngs, **small)
        self.layers = nnx.List([TransformerBlock(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.norm = LayerNorm(cfg.dim, rngs=rngs)

    def __call__(self, tokens, segments, feats, lengths, *, train: bool = False, rngs=None):
        x = self.embed(tokens) * jnp.sqrt(jnp.float32(self.cfg.dim))
        x = x + self.segment(segments) + self.feat(feats)
        x = dropout(x, self.cfg.dropout, train=train, rngs=rngs)
        for layer in self.layers:
            x = layer(x, jnp.maximum(lengths, 1), train=train, rngs=rngs)
        return self.norm(x)


def gap_bucket(seconds: float) -> int:
    """1..6 for gaps [0, 2), [2, 5), [5, 10), [10, 20), [20, 45), >= 45 seconds."""
    for k, hi in enumerate((2.0, 5.0, 10.0, 20.0, 45.0), 1):
        if seconds < hi:
            return k
    return 6


class DialogueTask(Task):
    """A task over log examples encoded as (tokens, segments, feats) rows plus the subclass's
    fields: the word vocabulary asset, the options, featurization and bucketed collation.

    Subclasses set `asset_file`, `extra_options`, `extra_spec` ({field: (dtype, shape, pad)})
    and define `words_of(example)` and `encode(example, assets)`."""

    asset_file = ""
    extra_options: frozenset[str] = frozenset()
    extra_spec: dict[str, tuple] = {}
    labels: tuple[str, ...] = ()

    def __init__(self, cfg):
        super().__init__(cfg)
        self.asset_files = (self.asset_file,)
        allowed = {"max_len", "min_word_count", "length_buckets"} | set(self.extra_options)
        unknown = set(self.options) - allowed
        if unknown:
            raise ValueError(f"task_options {sorted(unknown)} unknown for {cfg.task}; it takes "
                             f"{', '.join(sorted(allowed))}")
        self.max_len = int(self.options.get("max_len", 96))
        self.min_word_count = int(self.options.get("min_word_count", 2))
        self.buckets = sorted({int(b) for b in self.options.get("length_buckets",
                                                                 [32, 64, self.max_len])})
        if self.buckets[-1] < self.max_len:
            raise ValueError(f"task_options.length_buckets={self.buckets} must reach "
                             f"max_len={self.max_len}")

    def words_of(self, example: dict) -> Sequence[str]:
        raise NotImplementedError

    def encode(self, example: dict, assets: WordAssets) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def load_assets(self, workdir: Path):
        return load_word_assets(workdir, self.asset_file)

    def label_of(self, example: dict) -> str | None:
        return None

    def build_assets(self, source, scratch: Path):
        return build_word_assets(source, self.words_of, self.min_word_count, self.labels,
                                 self.label_of if self.labels else None)

    def save_assets(self, assets, workdir: Path) -> None:
        save_word_assets(assets, workdir, self.asset_file)

    def prepare_fn(self, source, assets, *, train: bool, model=None, objective=None):
        def prepare(index: int):
            out = self.encode(source.metadata(int(index)), assets)
            out["index"] = int(index)
            return out

        return prepare

    def pad_values(self):
        return {"tokens": 0, "segments": 0, "feats": 0}

    def collate(self, rows, batch_size: int):
        n = max((int(r["length"]) for r in rows), default=1)
        L = bucket_for(max(n, 1), self.buckets) or self.buckets[-1]
        return pad_rows(rows, batch_size, {
            "tokens": (np.int32, (L,), 0), "segments": (np.int32, (L,), 0),
            "feats": (np.int32, (L,), 0), "length": (np.int32, (), 0),
            "index": (np.int32, (), -1), **self.extra_spec})
