"""Evaluation and inference of the NLU task, with open (in-scope / out-of-scope) classification.

Open classification: a calibrated threshold on the intent classifier's confidence (maximum
softmax probability, Hendrycks and Gimpel, "A Baseline for Detecting Misclassified and
Out-of-Distribution Examples in Neural Networks", ICLR 2017). The threshold is chosen on
validation data that holds known intents and out-of-scope examples (`eval.options.
calibration_split`, e.g. CLINC's "val+oos_val"): the one that maximizes the mean of in-scope
accuracy (right intent and accepted) and out-of-scope recall, so neither class dominates by its
size. Chosen over a learned boundary (ADB) because it needs no second training stage, works with
any classifier, and the validation split is a fair stand-in for unseen out-of-scope traffic.
Without a calibration split everything is in scope. The threshold is written to
`open_set.json` in the workdir; `jaxslu nlu` applies it.

A reference is out of scope when its intent is the task's `oos_label` or any intent the model
was not trained on.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxslu.eval import write_json
from jaxslu.eval.run import LoadedRun
from jaxslu.registry import EVALUATORS
from jaxslu.text import metrics as M

log = logging.getLogger("jaxslu")

OPEN_SET_FILE = "open_set.json"


def _predict(model, batch):
    out = model(batch, train=False)
    res = {}
    if "intent_logits" in out:
        probs = jax.nn.softmax(out["intent_logits"].astype(jnp.float32), -1)
        res["intent"] = jnp.argmax(probs, -1)
        res["intent_prob"] = jnp.max(probs, -1)
    if "domain_logits" in out:
        res["domain"] = jnp.argmax(out["domain_logits"], -1)
    if "slot_logits" in out:
        res["slot_tags"] = jnp.argmax(out["slot_logits"], -1)
    return res


class NluPredictor:
    """Labels for utterances of a loaded NLU run (batched, padded to the run's buckets)."""

    def __init__(self, run: LoadedRun, threshold: float | None = None):
        self.run = run
        self.threshold = threshold

    def predict_texts(self, texts: Sequence[str], context: dict | None = None) -> list[dict]:
        """Labels of `texts`; `context` (a context record, jaxslu/context/features.py) applies
        to every text of a run with a context input (None: unknown context, zeros)."""
        task, assets = self.run.task, self.run.assets
        bs = self.run.cfg.data.eval_batch_size
        ctx_vec = None
        if getattr(task, "context_dim", 0):
            ctx_vec = task.encode_context(assets, context, "--context")
        elif context:
            raise ValueError(f"{self.run.workdir} was trained without a context input "
                             "(task_options.context); drop --context")
        out_rows: list[dict] = []
        for start in range(0, len(texts), bs):
            chunk = texts[start:start + bs]
            rows, wots = [], []
            for k, t in enumerate(chunk):
                ids, wot, tags = task.encode(assets, t)
                rows.append({"tokens": np.asarray(ids, np.int32),
                             "slot_tags": np.asarray(tags, np.int32), "intent": -1,
                             "domain": -1, "index": start + k, "context": ctx_vec})
                wots.append(wot)
            batch = task.collate(rows, bs)
            out, _, _ = self.run.apply(_predict, batch)
            for k, t in enumerate(chunk):
                out_rows.append(self._decode(t, {key: v[k] for key, v in out.items()}, wots[k]))
        return out_rows

    def _decode(self, text: str, out: dict, wot: list[int]) -> dict:
        vocab = self.run.assets.vocab
        words = text.split()
        row: dict[str, Any] = {"text": text}
        if "domain" in out and vocab.domains:
            row["domain"] = vocab.domains[int(out["domain"])]
        if "intent" in out:
            row["intent"] = vocab.intents[int(out["intent"])]
            row["confidence"] = round(float(out["intent_prob"]), 4)
            row["in_scope"] = bool(self.threshold is None or
                                   float(out["intent_prob"]) >= self.threshold)
        slots = []
        if "slot_tags" in out and len(vocab.tags) > 1:
            real = [k for k, w in enumerate(wot) if w >= 0]
            tags = [int(out["slot_tags"][k]) for k in real]
            for e in vocab.decode_tags(tags, [wot[k] for k in real], words):
                slots.append({"type": e["type"], "value": " ".join(words[e["start"]:e["end"]]),
                              "start": e["start"], "end": e["end"]})
        row["slots"] = slots
        return row


def choose_threshold(confidence: np.ndarray, correct: np.ndarray, in_scope: np.ndarray
                     ) -> tuple[float, dict[str, float]]:
    """The confidence threshold maximizing (in-scope accuracy + out-of-scope recall) / 2 on
    calibration data; ties go to the lowest threshold. Returns (threshold, its figures)."""
    confidence = np.asarray(confidence, np.float64)
    if in_scope.all() or not in_scope.any():
        raise ValueError("open-set calibration needs both in-scope and out-of-scope examples in "
                         "eval.options.calibration_split")
    candidates = np.unique(np.concatenate([[0.0], confidence]))
    best = (-1.0, 0.0, {})
    for t in candidates:
        accept = confidence >= t
        acc = float(np.mean((correct & accept)[in_scope]))
        rec = float(np.mean((~accept)[~in_scope]))
        score = 0.5 * (acc + rec)
        if score > best[0] + 1e-12:
            best = (score, float(t), {"in_scope_accuracy": acc, "oos_recall": rec,
                                      "balanced": score})
    return best[1], best[2]


def load_threshold(workdir: Path) -> float | None:
    f = Path(workdir) / OPEN_SET_FILE
    if not f.is_file():
        return None
    return float(json.loads(f.read_text())["threshold"])


@EVALUATORS.register("nlu")
class NluEvaluator:
    def __init__(self, run: LoadedRun):
        self.run = run
        self.options = dict(run.cfg.eval.options)
        self._threshold: float | None = None
        self._calibrated = False

    def _records(self, split: str, threshold: float | None) -> list[dict]:
        run = self.run
        source = run.task.open_source(split)
        vocab = run.assets.vocab
        predictor = NluPredictor(run, threshold)
        records = []
        for batch in run.eval_batches(source):
            out, index, weight = run.apply(_predict, batch)
            for b, (idx, w) in enumerate(zip(index, weight)):
                if idx < 0 or w == 0:
                    continue
                meta = source.metadata(int(idx))
                _, wot, _ = run.task.encode(run.assets, meta["text"])
                row = predictor._decode(meta["text"], {k: v[b] for k, v in out.items()}, wot)
                ref_intent = meta.get("intent")
                in_scope_ref = ref_intent is not None and ref_intent in vocab.intents
                words = meta["text"].split()
                rec = {"id": meta.get("id", str(idx)), "speaker": meta.get("speaker") or None,
                       "meta": meta.get("meta") or {}, "text": meta["text"],
                       "intent_ref": ref_intent if in_scope_ref else None,
                       "intent_hyp": row.get("intent"), "confidence": row.get("confidence"),
                       "in_scope_ref": in_scope_ref, "in_scope_hyp": row.get("in_scope", True),
                       "domain_ref": (meta.get("meta") or {}).get("domain"),
                       "domain_hyp": row.get("domain"),
                       "entities_ref": [{"type": e["type"],
                                         "value": " ".join(words[e["start"]:e["end"]])}
                                        for e in meta.get("entities", [])],
                       "entities_hyp": [{"type": s["type"], "value": s["value"]}
                                        for s in row["slots"]]}
                if not in_scope_ref:
                    rec["oos_ref_label"] = ref_intent
                records.append(rec)
        records.sort(key=lambda r: r["id"])
        return records

    def threshold(self) -> float | None:
        if self._calibrated:
            return self._threshold
        self._calibrated = True
        split = self.options.get("calibration_split", "")
        if not split:
            return None
        recs = self._records(split, None)
        conf = np.array([r["confidence"] for r in recs])
        in_scope = np.array([r["in_scope_ref"] for r in recs])
        correct = np.array([r["intent_hyp"] == r["intent_ref"] for r in recs])
        t, figures = choose_threshold(conf, correct, in_scope)
        self._threshold = t
        if jax.process_index() == 0:
            write_json(self.run.workdir / OPEN_SET_FILE, {
                "threshold": t, "calibration_split": split, "step": self.run.step,
                "criterion": "max (in-scope accuracy + out-of-scope recall) / 2",
                "calibration": figures, "num_examples": len(recs)})
        log.info("open-set threshold %.4f on %s (%s)", t, split, figures)
        return t

    def evaluate(self, split: str) -> tuple[dict, list[dict]]:
        threshold = self.threshold()
        records = self._records(split, threshold)
        report: dict[str, Any] = {"num_examples": len(records)}
        known = [r for r in records if r["in_scope_ref"]]
        if known:
            report["intent_accuracy"] = M.intent_accuracy([r["intent_ref"] for r in known],
                                                          [r["intent_hyp"] for r in known])
            with_domain = [r for r in known if r["domain_ref"] is not None and
                           r["domain_hyp"] is not None]
            if with_domain:
                report["domain_accuracy"] = float(np.mean(
                    [r["domain_ref"] == r["domain_hyp"] for r in with_domain]))
            if any(r["entities_ref"] for r in known):
                f1 = M.slu_f1([r["entities_ref"] for r in known],
                              [r["entities_hyp"] for r in known])
                report["slot_f1"] = f1.span_f1  # exact type and value
                report.update({f"slot_{k}": v for k, v in f1.as_dict().items()})
        oos = [r for r in records if not r["in_scope_ref"]]
        if threshold is not None:
            report["open_set_threshold"] = threshold
            if known:
                report["in_scope_accuracy"] = float(np.mean(
                    [r["in_scope_hyp"] and r["intent_hyp"] == r["intent_ref"] for r in known]))
                report["in_scope_recall"] = float(np.mean([r["in_scope_hyp"] for r in known]))
            if oos:
                tp = sum(not r["in_scope_hyp"] for r in oos)
                flagged = sum(not r["in_scope_hyp"] for r in records)
                report["oos_recall"] = tp / len(oos)
                report["oos_precision"] = tp / flagged if flagged else 0.0
                p, r_ = report["oos_precision"], report["oos_recall"]
                report["oos_f1"] = 2 * p * r_ / (p + r_) if p + r_ else 0.0
        report["num_in_scope"] = len(known)
        report["num_out_of_scope"] = len(oos)
        return report, records


def read_lines(path: str | None) -> Iterable[tuple[int, str | None, str | None]]:
    """(line number, text, error) for each line of FILE (or stdin): an empty or non-UTF-8 line
    gives an error naming it instead of text."""
    import sys

    stream = open(path, "rb") if path else sys.stdin.buffer
    try:
        for n, raw in enumerate(stream, 1):
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                yield n, None, f"line {n} is not UTF-8 ({e.reason} at byte {e.start}); re-encode the input as UTF-8"
                continue
            if not text.strip():
                yield n, None, f"line {n} is empty; give one utterance per line"
                continue
            from jaxslu.text.normalize import normalize_text

            normalized = normalize_text(text)
            if not normalized:
                yield n, None, f"line {n} has no words after normalization ({text!r})"
                continue
            yield n, normalized, None
    finally:
        if path:
            stream.close()
