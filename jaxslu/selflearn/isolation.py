"""Failure-point isolation: from a turn and its context, the earliest irrecoverable failure.

Classes (`simulator.FAILURES`): correct, false_wake, asr_error, nlu_error, entity_error,
result_error. An example is one turn of a session with what the assistant can observe:
  * words: [CLS] the turn's recognized words [SEP] the system's interpretation (intent name
    split at "_", then the slot values) [SEP] the next turn's words [SEP] (segments 0..3); a word
    of the next turn also in this turn, or of this turn also in the next, is flagged;
  * numbers: ASR confidence and NLU confidence of this turn and of the next one, whether there
    is a next turn, the log gap to it, whether the next turn's intent equals this one's, the
    share of words the two turns share, and the user's signal after the turn (one-hot).
The model encodes the words (`dialogue.DialogueEncoder`), adds a projection of the numbers to
the [CLS] state and classifies it (loss `failure_ce`, cross-entropy over the classes).
Report: accuracy, macro F1, per-class precision / recall / F1 and the confusion matrix.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxslu.eval.run import LoadedRun
from jaxslu.layers.core import Dense, activation, dropout
from jaxslu.nlu.models import TextEncoderConfig
from jaxslu.registry import DATASETS, EVALUATORS, LOSSES, MODELS, TASKS
from jaxslu.selflearn import dialogue as D
from jaxslu.selflearn.simulator import FAILURES, SIGNALS

ASSET_FILE = "isolation_words.json"
NUM_FEATURES = 9 + len(SIGNALS)


def _interp_words(nlu: dict) -> list[str]:
    words = nlu["intent"].split("_")
    for s in nlu["slots"]:
        words += s["value"].split()
    return words


def turn_examples(sessions) -> list[dict[str, Any]]:
    out = []
    for s in sessions:
        turns = s["turns"]
        for i, t in enumerate(turns):
            nxt = turns[i + 1] if i + 1 < len(turns) else None
            words = t["asr"].split()
            nwords = nxt["asr"].split() if nxt else []
            shared = len(set(words) & set(nwords)) / max(1, len(set(words) | set(nwords)))
            feats = [t["asr_conf"], t["nlu"]["conf"],
                     nxt["asr_conf"] if nxt else 0.0, nxt["nlu"]["conf"] if nxt else 0.0,
                     float(nxt is not None),
                     math.log1p(max(0.0, nxt["t"] - t["t"])) / 6.0 if nxt else 0.0,
                     float(bool(nxt) and nxt["nlu"]["intent"] == t["nlu"]["intent"]),
                     shared, len(words) / 20.0]
            feats += [float(t["signal"] == sig) for sig in SIGNALS]
            out.append({"id": f"{s['session']}/{i}", "words": words,
                        "interp": _interp_words(t["nlu"]), "next": nwords,
                        "features": feats, "failure": t["failure"]})
    return out


@DATASETS.register("selflearn_turns")
def selflearn_turns(split: str = "train", *, path: str = "") -> D.RecordSource:
    """Failure-isolation examples of a session log (splits of `dialogue.sessions_of`)."""
    return D.RecordSource("selflearn_turns", split, turn_examples(D.sessions_of(path, split)))


def encode(example: dict, assets: D.WordAssets, max_len: int) -> dict[str, np.ndarray]:
    cur, nxt = example["words"], example["next"]
    cur_set, nxt_set = set(cur), set(nxt)
    tokens, segments, feats = [D.CLS], [0], [0]
    for seg, (words, other) in enumerate(((cur, nxt_set), (example["interp"], set()),
                                          (nxt, cur_set)), 1):
        tokens += assets.ids(words) + [D.SEP]
        segments += [seg] * (len(words) + 1)
        feats += [1 + (w in other) for w in words] + [0]
    tokens, segments, feats = tokens[:max_len], segments[:max_len], feats[:max_len]
    label = FAILURES.index(example["failure"]) if example["failure"] in FAILURES else -1
    return {"tokens": np.asarray(tokens, np.int32), "segments": np.asarray(segments, np.int32),
            "feats": np.asarray(feats, np.int32), "length": np.int32(len(tokens)),
            "features": np.asarray(example["features"], np.float32), "label": np.int32(label)}


@TASKS.register("failure_isolation")
class FailureIsolationTask(D.DialogueTask):
    default_evaluator = "failure_isolation"
    asset_file = ASSET_FILE
    labels = FAILURES
    extra_spec = {"features": (np.float32, (NUM_FEATURES,), 0.0), "label": (np.int32, (), -1)}

    def words_of(self, example):
        return example["words"] + example["interp"] + example["next"]

    def label_of(self, example):
        return example["failure"]

    def constants(self, params, assets):
        """`class_weights` [K]: (n / (K * n_k)) ** 0.5 over the training examples (the square
        root of inverse frequency, mean-normalized over the classes present), read by
        `failure_ce(balanced=True)` so the rare failure points are not ignored."""
        counts = np.asarray(assets.label_counts or [1] * len(FAILURES), np.float64)
        present = counts > 0
        w = np.where(present, np.sqrt(counts.sum() / (present.sum() * np.maximum(counts, 1))),
                     0.0)
        w = w / w[present].mean()
        return {"class_weights": jnp.asarray(w, jnp.float32)}

    def encode(self, example, assets):
        return encode(example, assets, self.max_len)

    def model_kwargs(self, assets) -> dict[str, Any]:
        return {"vocab_size": len(assets.words) + D.RESERVED, "num_classes": len(FAILURES),
                "num_features": NUM_FEATURES}


@dataclasses.dataclass(frozen=True)
class IsolationConfig:
    name: str = "failure_classifier"
    encoder: TextEncoderConfig = TextEncoderConfig(num_layers=2, dim=128, heads=4)
    head_dropout: float = 0.1


@MODELS.register("failure_classifier", config=IsolationConfig)
class FailureClassifier(nnx.Module):
    def __init__(self, cfg: IsolationConfig, *, vocab_size: int, num_classes: int,
                 num_features: int, rngs: nnx.Rngs):
        self.cfg = cfg
        d = cfg.encoder.dim
        self.encoder = D.DialogueEncoder(cfg.encoder, vocab_size, 4, 3, rngs=rngs)
        self.numbers = Dense(num_features, d, rngs=rngs, axes=(None, "embed"))
        self.hidden = Dense(d, d, rngs=rngs, axes=("embed", "mlp"))
        self.out = Dense(d, num_classes, rngs=rngs, axes=("mlp", None))

    def __call__(self, batch, *, train: bool = False, rngs=None):
        h = self.encoder(batch["tokens"], batch["segments"], batch["feats"], batch["length"],
                         train=train, rngs=rngs)
        x = h[:, 0] + self.numbers(batch["features"].astype(h.dtype))
        x = activation("gelu")(self.hidden(dropout(x, self.cfg.head_dropout, train=train,
                                                   rngs=rngs)))
        return {"logits": self.out(x).astype(jnp.float32)}


def class_ce_value(logits, label, weight, class_weights=None):
    w = weight.astype(jnp.float32) * (label >= 0)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    tgt = jnp.maximum(label, 0)
    nll = -jnp.take_along_axis(logp, tgt[:, None], -1)[:, 0]
    if class_weights is not None:
        w = w * jnp.asarray(class_weights, jnp.float32)[tgt]
    denom = jnp.maximum(jnp.sum(w), 1e-6)
    acc = (jnp.argmax(logits, -1) == label).astype(jnp.float32)
    return jnp.sum(nll * w) / denom, {"accuracy": jnp.sum(acc * w) / denom}


@LOSSES.register("failure_ce")
def failure_ce(*, balanced: bool = False):
    """Cross-entropy over the failure classes (`outputs["logits"]`, `batch["label"]`);
    `balanced`: examples weighted by the task's `class_weights` constant (square-root inverse
    class frequency of the training data)."""
    def term(batch, outputs, params):
        weights = None
        if balanced:
            task_constants = outputs.get("constants", {}).get("task", {})
            if "class_weights" not in task_constants:
                raise ValueError("failure_ce(balanced=True) needs the failure_isolation task's "
                                 "class_weights constant")
            weights = task_constants["class_weights"]
        return class_ce_value(outputs["logits"], batch["label"], batch["weight"], weights)
    return term


def classification_report(true: list[str], pred: list[str], classes=FAILURES) -> dict[str, Any]:
    per = {}
    for c in classes:
        tp = sum(t == c and p == c for t, p in zip(true, pred))
        fp = sum(t != c and p == c for t, p in zip(true, pred))
        fn = sum(t == c and p != c for t, p in zip(true, pred))
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        per[c] = {"precision": prec, "recall": rec, "support": tp + fn,
                  "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0}
    present = [c for c in classes if per[c]["support"]]
    return {"examples": len(true),
            "accuracy": float(np.mean([t == p for t, p in zip(true, pred)])) if true else 0.0,
            "macro_f1": float(np.mean([per[c]["f1"] for c in present])) if present else 0.0,
            "per_class_f1": {c: per[c]["f1"] for c in classes}, "per_class": per,
            "confusion": {c: {d: sum(t == c and p == d for t, p in zip(true, pred))
                              for d in classes} for c in classes}}


@EVALUATORS.register("failure_isolation")
class FailureIsolationEvaluator:
    def __init__(self, run: LoadedRun):
        self.run = run

        def fn(model, batch):
            return {"pred": jnp.argmax(model(batch, train=False)["logits"], -1)}

        self._fn = fn

    def evaluate(self, split: str):
        run = self.run
        source = run.task.open_source(split)
        records = []
        for batch in run.eval_batches(source):
            out, index, weight = run.apply(self._fn, batch)
            for b in np.flatnonzero(weight > 0):
                ex = source.metadata(int(index[b]))
                records.append({"id": ex["id"], "failure": ex["failure"],
                                "prediction": FAILURES[int(out["pred"][b])]})
        report = {"split": split, **classification_report([r["failure"] for r in records],
                                                          [r["prediction"] for r in records])}
        return report, records
