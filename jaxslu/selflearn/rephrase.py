"""Contextual rephrase detection as span prediction over the dialogue.

An example is one directed turn of a session (the "current request") and the turns after it that
pass the time-gap threshold (task option `max_gap`, seconds from the current turn; at most
`max_candidates`): [CLS] current [SEP] candidate 1 [SEP] candidate 2 ... The model gives every
position a start and an end logit: the probability that the rephrase of the current request
starts / ends there (a rephrase restates the same request: "no i said play imagine dragons"
restates "play imagine dragon" from "play"). [CLS] is the "no rephrase" answer (start = end =
0), as in extractive QA with unanswerable questions. Position features: segment (0 current,
k candidate k), and for candidate words whether the word is also in the current turn and the
candidate's gap bucket.

Truth (from the simulator): the first candidate restating the current turn's request (the same
goal: `rephrase_of` points at the goal's first turn), its `rephrase_span`. Rephrases after a gap
over the threshold are not candidates: they count as misses in the recall (the threshold's price).

Decoding: the best span (start <= end < start + `max_span`, inside one candidate) against the
null score start[0] + end[0]; a rephrase is detected when the span scores higher. Report:
detection precision / recall / F1 (over every current turn, truth: a rephrase exists after it,
whatever its gap), span F1 (token overlap F1 of predicted and true spans, averaged over the
current turns that have a rephrase; a miss scores 0; SQuAD's F1 on positions), exact match.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxslu.eval.run import LoadedRun
from jaxslu.layers.core import Dense
from jaxslu.nlu.models import TextEncoderConfig
from jaxslu.registry import DATASETS, EVALUATORS, LOSSES, MODELS, TASKS
from jaxslu.selflearn import dialogue as D

ASSET_FILE = "rephrase_words.json"
NEG = -1e9


def rephrase_examples(sessions, *, max_gap: float = 45.0, max_candidates: int = 3
                      ) -> list[dict[str, Any]]:
    """One example per directed turn of each session (see the module docstring)."""
    out = []
    for s in sessions:
        turns = s["turns"]
        for i, cur in enumerate(turns):
            if not cur["directed"]:
                continue
            goal = i if cur["rephrase_of"] < 0 else cur["rephrase_of"]
            truth_j = next((j for j in range(i + 1, len(turns))
                            if turns[j]["rephrase_of"] == goal), -1)
            cands = [j for j in range(i + 1, len(turns))
                     if turns[j]["t"] - cur["t"] <= max_gap][:max_candidates]
            target = None
            if truth_j in cands and turns[truth_j]["rephrase_span"]:
                target = (cands.index(truth_j), *turns[truth_j]["rephrase_span"])
            out.append({"id": f"{s['session']}/{i}", "current": cur["asr"].split(),
                        "candidates": [turns[j]["asr"].split() for j in cands],
                        "gaps": [turns[j]["t"] - cur["t"] for j in cands],
                        "target": target, "has_rephrase": truth_j >= 0,
                        "failure": cur["failure"]})
    return out


@DATASETS.register("selflearn_rephrase")
def selflearn_rephrase(split: str = "train", *, path: str = "", max_gap: float = 45.0,
                       max_candidates: int = 3) -> D.RecordSource:
    """Rephrase-detection examples of a session log (splits of `dialogue.sessions_of`)."""
    return D.RecordSource("selflearn_rephrase", split, rephrase_examples(
        D.sessions_of(path, split), max_gap=max_gap, max_candidates=max_candidates))


def encode(example: dict, assets: D.WordAssets, max_len: int) -> dict[str, np.ndarray]:
    """Token ids, segments, features, and the target (start, end) positions (0, 0: none)."""
    cur = example["current"]
    tokens = [D.CLS] + assets.ids(cur) + [D.SEP]
    segments = [0] * len(tokens)
    feats = [0] * len(tokens)
    cur_set = set(cur)
    start = end = 0
    for k, (words, gap) in enumerate(zip(example["candidates"], example["gaps"])):
        offset = len(tokens)
        if offset + len(words) + 1 > max_len:
            break
        tokens += assets.ids(words) + [D.SEP]
        segments += [k + 1] * (len(words) + 1)
        g = D.gap_bucket(gap)
        feats += [g * 2 + (w in cur_set) for w in words] + [0]
        t = example["target"]
        if t is not None and t[0] == k:
            start, end = offset + t[1], offset + t[2] - 1
    tokens, segments, feats = tokens[:max_len], segments[:max_len], feats[:max_len]
    return {"tokens": np.asarray(tokens, np.int32), "segments": np.asarray(segments, np.int32),
            "feats": np.asarray(feats, np.int32), "length": np.int32(len(tokens)),
            "start": np.int32(start), "end": np.int32(end)}


@TASKS.register("rephrase_detection")
class RephraseTask(D.DialogueTask):
    default_evaluator = "rephrase_detection"
    asset_file = ASSET_FILE
    extra_options = frozenset({"max_span"})
    extra_spec = {"start": (np.int32, (), 0), "end": (np.int32, (), 0)}

    def __init__(self, cfg):
        super().__init__(cfg)
        self.max_span = int(self.options.get("max_span", 40))

    def words_of(self, example):
        return example["current"] + [w for c in example["candidates"] for w in c]

    def encode(self, example, assets):
        return encode(example, assets, self.max_len)

    def model_kwargs(self, assets) -> dict[str, Any]:
        return {"vocab_size": len(assets.words) + D.RESERVED, "num_segments": 8,
                "num_feats": 16}


@dataclasses.dataclass(frozen=True)
class SpanConfig:
    name: str = "rephrase_span"
    encoder: TextEncoderConfig = TextEncoderConfig(num_layers=2, dim=128, heads=4)


@MODELS.register("rephrase_span", config=SpanConfig)
class RephraseSpanModel(nnx.Module):
    """Dialogue encoder + start/end logits per position (padding at -1e9)."""

    def __init__(self, cfg: SpanConfig, *, vocab_size: int, num_segments: int, num_feats: int,
                 rngs: nnx.Rngs):
        self.cfg = cfg
        self.encoder = D.DialogueEncoder(cfg.encoder, vocab_size, num_segments, num_feats,
                                         rngs=rngs)
        self.head = Dense(cfg.encoder.dim, 2, rngs=rngs, axes=("embed", None))

    def __call__(self, batch, *, train: bool = False, rngs=None):
        h = self.encoder(batch["tokens"], batch["segments"], batch["feats"], batch["length"],
                         train=train, rngs=rngs)
        logits = self.head(h).astype(jnp.float32)
        valid = jnp.arange(h.shape[1])[None, :] < jnp.maximum(batch["length"], 1)[:, None]
        logits = jnp.where(valid[..., None], logits, NEG)
        return {"start_logits": logits[..., 0], "end_logits": logits[..., 1]}


def span_ce_value(start_logits, end_logits, start, end, weight):
    """Mean over real rows of (CE(start) + CE(end)) / 2; logits [B, L] (padding at -1e9)."""
    w = weight.astype(jnp.float32)
    def ce(logits, tgt):
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
        return -jnp.take_along_axis(logp, tgt[:, None], -1)[:, 0]
    nll = 0.5 * (ce(start_logits, start) + ce(end_logits, end))
    denom = jnp.maximum(jnp.sum(w), 1.0)
    hit = ((jnp.argmax(start_logits, -1) == start) & (jnp.argmax(end_logits, -1) == end))
    return jnp.sum(nll * w) / denom, {"exact": jnp.sum(hit.astype(jnp.float32) * w) / denom}


@LOSSES.register("span_ce")
def span_ce():
    """Start/end cross-entropy of the rephrase span ([CLS] = no rephrase)."""
    def term(batch, outputs, params):
        return span_ce_value(outputs["start_logits"], outputs["end_logits"], batch["start"],
                             batch["end"], batch["weight"])
    return term


def decode_spans(start_logits: np.ndarray, end_logits: np.ndarray, segments: np.ndarray,
                 lengths: np.ndarray, max_span: int, threshold: float = 0.0):
    """Per row (start, end) of the best span inside one candidate segment, or (0, 0) when the
    null score start[0] + end[0] (+ threshold) is not beaten."""
    out = []
    for b in range(start_logits.shape[0]):
        n = int(lengths[b])
        s, e, seg = start_logits[b, :n], end_logits[b, :n], segments[b, :n]
        best, arg = s[0] + e[0] + threshold, (0, 0)
        for i in range(1, n):
            if seg[i] == 0:
                continue
            hi = min(n, i + max_span)
            js = np.arange(i, hi)
            js = js[seg[i:hi] == seg[i]]
            if js.size == 0:
                continue
            k = int(np.argmax(e[js]))
            if s[i] + e[js[k]] > best:
                best, arg = s[i] + e[js[k]], (i, int(js[k]))
        out.append(arg)
    return out


def span_f1(pred: tuple[int, int], true: tuple[int, int]) -> float:
    """Position-overlap F1 of a predicted and a true span ((0, 0): none; none vs none is 0:
    only examples with a rephrase are scored)."""
    if pred == (0, 0) or true == (0, 0):
        return 0.0
    p = set(range(pred[0], pred[1] + 1))
    t = set(range(true[0], true[1] + 1))
    common = len(p & t)
    if not common:
        return 0.0
    prec, rec = common / len(p), common / len(t)
    return 2 * prec * rec / (prec + rec)


def detection_report(records: list[dict]) -> dict[str, Any]:
    tp = sum(r["detected"] and r["has_rephrase"] for r in records)
    fp = sum(r["detected"] and not r["has_rephrase"] for r in records)
    fn = sum(not r["detected"] and r["has_rephrase"] for r in records)
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    positives = [r for r in records if r["has_rephrase"]]
    return {"examples": len(records), "with_rephrase": len(positives),
            "precision": prec, "recall": rec,
            "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
            "span_f1": float(np.mean([r["span_f1"] for r in positives])) if positives else 0.0,
            "exact_match": (float(np.mean([r["pred"] == r["true"] != [0, 0]
                                           for r in positives])) if positives else 0.0),
            "beyond_gap": sum(r["has_rephrase"] and r["true"] == [0, 0] for r in records)}


@EVALUATORS.register("rephrase_detection")
class RephraseEvaluator:
    def __init__(self, run: LoadedRun):
        self.run = run
        self.threshold = float(dict(run.cfg.eval.options).get("null_threshold", 0.0))

        def fn(model, batch):
            out = model(batch, train=False)
            return {**out, "segments": batch["segments"], "length": batch["length"],
                    "start": batch["start"], "end": batch["end"]}

        self._fn = fn

    def evaluate(self, split: str):
        run = self.run
        source = run.task.open_source(split)
        records = []
        for batch in run.eval_batches(source):
            out, index, weight = run.apply(self._fn, batch)
            rows = np.flatnonzero(weight > 0)
            spans = decode_spans(out["start_logits"][rows], out["end_logits"][rows],
                                 out["segments"][rows], out["length"][rows],
                                 run.task.max_span, self.threshold)
            for b, span in zip(rows, spans):
                ex = source.metadata(int(index[b]))
                true = (int(out["start"][b]), int(out["end"][b]))
                records.append({"id": ex["id"], "has_rephrase": bool(ex["has_rephrase"]),
                                "detected": span != (0, 0), "pred": list(span),
                                "true": list(true), "failure": ex["failure"],
                                "span_f1": span_f1(span, true) if ex["has_rephrase"] else 0.0})
        report = {"split": split, **detection_report(records)}
        return report, records
