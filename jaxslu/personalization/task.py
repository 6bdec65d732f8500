"""The `user_embeddings` task: predict each request's label from the request and the user's
history (the events before it).

Assets (`personalization.json` in the workdir, built from the training source): the labels (the
source's catalogue when it has one, e.g. every MovieLens item, else the training labels), the
request words (seen at least `min_word_count` times in training) and the categorical features.
Unknown words and features map to 0 (ignored); a label outside the vocabulary is scored as a
miss (label -2: no loss, never predicted correctly) and enters histories as "unknown event".

Task options: max_events (256: longer histories keep their latest events; scored positions must
fit), max_words (16 per request), min_word_count (2), exclude_seen (False: for next-item
prediction, items already in the user's history are not ranked).

Batch: label [B, T], tokens [B, T, W], feats [B, T, F], scored [B, T], index [B], weight [B]
(see `jaxslu.personalization.models`). T is a bucket of `event_buckets` (task option, default
32, 64, 128, 256, 512).
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from jaxslu.data.pipeline import DataError, Skipped, bucket_for, pad_rows
from jaxslu.registry import TASKS
from jaxslu.task import Task

ASSET_FILE = "personalization.json"
UNKNOWN_LABEL = -2


@dataclasses.dataclass
class PersonalizationAssets:
    labels: list[str]
    words: list[str]   # id = position + 1 (0 = padding/unknown)
    feats: list[str]   # id = position + 1

    def __post_init__(self):
        self.label_id = {x: i for i, x in enumerate(self.labels)}
        self.word_id = {x: i + 1 for i, x in enumerate(self.words)}
        self.feat_id = {x: i + 1 for i, x in enumerate(self.feats)}

    def to_json(self) -> dict[str, Any]:
        return {"labels": self.labels, "words": self.words, "feats": self.feats}


@TASKS.register("user_embeddings")
class UserEmbeddingTask(Task):
    default_evaluator = "user_embeddings"
    asset_files = (ASSET_FILE,)
    OPTIONS = {"max_events", "max_words", "min_word_count", "exclude_seen", "event_buckets"}

    def __init__(self, cfg):
        super().__init__(cfg)
        unknown = set(self.options) - self.OPTIONS
        if unknown:
            raise ValueError(f"task_options {sorted(unknown)} unknown for the user_embeddings "
                             f"task; it takes {', '.join(sorted(self.OPTIONS))}")
        self.max_events = int(self.options.get("max_events", 256))
        self.max_words = int(self.options.get("max_words", 16))
        self.min_word_count = int(self.options.get("min_word_count", 2))
        self.exclude_seen = bool(self.options.get("exclude_seen", False))
        self.buckets = sorted(set(int(b) for b in self.options.get(
            "event_buckets", (32, 64, 128, 256, 512))))
        if self.buckets[-1] < self.max_events:
            raise ValueError(f"task_options.event_buckets={self.buckets} must reach "
                             f"max_events={self.max_events}")

    # -- assets -----------------------------------------------------------------------------

    def load_assets(self, workdir: Path):
        p = Path(workdir) / ASSET_FILE
        if not p.exists():
            return None
        d = json.loads(p.read_text())
        return PersonalizationAssets(d["labels"], d["words"], d["feats"])

    def build_assets(self, source, scratch: Path):
        labels: Counter = Counter()
        words: Counter = Counter()
        feats: set[str] = set()
        for i in range(len(source)):
            for e in source.metadata(i)["events"]:
                labels[e["label"]] += 1
                words.update(e["text"].split())
                feats.update(e["feats"])
        if not labels:
            raise DataError(f"training source {source!r} has no events")
        catalogue = list(getattr(source, "catalogue", []) or [])
        label_list = catalogue if catalogue else sorted(labels)
        missing = [x for x in labels if x not in set(label_list)]
        if missing:
            raise DataError(f"{source!r}: labels {missing[:5]} are not in its catalogue")
        return PersonalizationAssets(label_list,
                                     sorted(w for w, c in words.items()
                                            if c >= self.min_word_count),
                                     sorted(feats))

    def save_assets(self, assets, workdir: Path) -> None:
        tmp = Path(workdir) / f".{ASSET_FILE}.tmp{os.getpid()}"
        tmp.write_text(json.dumps(assets.to_json()))
        tmp.replace(Path(workdir) / ASSET_FILE)

    def model_kwargs(self, assets) -> dict[str, Any]:
        return {"num_labels": len(assets.labels), "vocab_size": len(assets.words) + 1,
                "num_feats": len(assets.feats) + 1}

    # -- batches ----------------------------------------------------------------------------

    def encode_row(self, row: dict[str, Any], assets: PersonalizationAssets) -> dict[str, Any]:
        events = row["events"]
        start = max(0, len(events) - self.max_events)
        score_from = int(row.get("score_from", 0))
        if score_from < start:
            if score_from == 0:
                score_from = start  # training rows: only the kept window is predicted
            else:
                raise DataError(f"user {row.get('id')!r}: scored positions start at "
                                f"{score_from} but only the last {self.max_events} events are "
                                "kept; raise task_options.max_events")
        events = events[start:]
        n = len(events)
        label = np.full((n,), -1, np.int32)
        tokens = np.zeros((n, self.max_words), np.int32)
        nf = max((len(e["feats"]) for e in events), default=1) or 1
        feats = np.zeros((n, nf), np.int32)
        for t, e in enumerate(events):
            label[t] = assets.label_id.get(e["label"], UNKNOWN_LABEL)
            ids = [assets.word_id.get(w, 0) for w in e["text"].split()][:self.max_words]
            tokens[t, :len(ids)] = ids
            fs = [assets.feat_id.get(f, 0) for f in e["feats"]]
            feats[t, :len(fs)] = fs
        scored = np.zeros((n,), np.float32)
        scored[score_from - start:] = 1.0
        return {"label": label, "tokens": tokens, "feats": feats, "scored": scored}

    def prepare_fn(self, source, assets, *, train: bool, model=None, objective=None):
        skip = self.cfg.data.skip_bad_examples

        def prepare(index: int):
            index = int(index)
            row = source.metadata(index)
            if not row.get("events"):
                msg = (f"user {row.get('id', index)!r} of {source!r} has no events; drop it or "
                       "set data.skip_bad_examples=True")
                if skip:
                    return Skipped(msg)
                raise DataError(msg)
            out = self.encode_row(row, assets)
            out["index"] = index
            return out

        return prepare

    def pad_values(self):
        return {"label": -1, "tokens": 0, "feats": 0, "scored": 0.0}

    def collate(self, rows, batch_size: int):
        n = max((len(r["label"]) for r in rows), default=1)
        T = bucket_for(max(n, 1), self.buckets)
        if T is None:
            raise AssertionError("history longer than the largest event bucket reached collate")
        nf = max((r["feats"].shape[1] for r in rows), default=1)
        return pad_rows(rows, batch_size, {
            "label": (np.int32, (T,), -1), "tokens": (np.int32, (T, self.max_words), 0),
            "feats": (np.int32, (T, nf), 0), "scored": (np.float32, (T,), 0.0),
            "index": (np.int32, (), -1)})
