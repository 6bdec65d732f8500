"""Cascade (ASR transcript -> text NLU) against the end-to-end SLU heads, on the same test audio.

    cascade_vs_e2e("runs/slurp", "runs/nlu", split="test")

For every utterance of the E2E (transducer_slu) run's `split`, three predictions of intent and
slots are scored against the same references (the E2E split's transcript, intent and entities:
what `jaxslu eval` of the E2E run scores against):

  * e2e       the E2E run's own intent and slot heads, on its decoded audio;
  * cascade   the E2E run's ASR hypothesis (its transcript) labelled by the text NLU run;
  * gold_text the text NLU run on the reference transcripts: the NLU ceiling (WER 0).

Scores come from `jaxslu.text.metrics.summary`, the code the SLU evaluator reports with: corpus
WER/CER of the transcript each run reads, intent accuracy, and SLURP's SLU-F1 family (span, word
and char F1), which compares (type, value text) pairs, so slots found on hypothesis words are
scored against the reference entities' text like the E2E slot head's are.

Choices that were open:
- Labels are compared by NAME (each run has its own vocabulary and ids). A reference intent or
  slot type the NLU run was not trained on cannot be predicted by it and counts as wrong (the
  slot as a missed entity); how many such references there are is reported (`unknown_labels`,
  also for the E2E run's vocabulary). Spoken SLURP keeps SLURP's raw `intent` field, which for
  ~1.5% of sentences is the action alone ("query", "music"; "query" and "set" name several
  scenario_action pairs, so no name mapping can repair them): those references are unknown to a
  slurp_nlu run. `intent_accuracy_known_to_both` scores only references both runs know.
- E2E predictions: the run's `predictions_<split>.jsonl` when it is current (its report's step is
  the latest checkpoint's, it was written after that checkpoint and with its report, and its ids
  and reference texts are the split's), otherwise the split is decoded with the run
  (`TransducerSLUEvaluator.records_of`, the evaluator's own decoding). `limit` keeps the first N
  utterances by id (the evaluator's record order), with either source.
- NLU predictions: `NluPredictor.predict_texts` (what `jaxslu nlu` runs) on each distinct text
  once (a sentence spoken by several speakers has one reference text), so identical inputs get
  identical labels. An input with no tokens (an empty hypothesis) gets no intent and no slots
  (wrong), counted as `empty_inputs`. Where the NLU run has an open-set threshold
  (`open_set.json`) an utterance it rejects gets the out-of-scope label (wrong, counted).
- Seen text: the spoken test sentences are SLURP devel's hash-split test part, absent from both
  runs' SLURP training parts, but SLURP prompts were drawn from HWU64, so some test texts occur
  in slurp_nlu's HWU64 training part (and SLURP repeats some sentences under other ids). The
  result counts the utterances whose normalized reference text is in each run's training split
  and repeats every figure on the utterances neither run has seen (`unseen`).
"""
from __future__ import annotations

import collections
import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from jaxslu.data.labels import Vocabularies
from jaxslu.text import metrics as M
from jaxslu.text.normalize import normalize_text

log = logging.getLogger("jaxslu")

__all__ = ["KINDS", "CascadeError", "cascade_vs_e2e", "score_predictions", "run_records",
           "unknown_labels", "SubsetSource"]

KINDS = ("e2e", "cascade", "gold_text")
E2E_TASK, NLU_TASK = "transducer_slu", "nlu"
# predictions_<split>.jsonl is written right after report_<split>.json by `evaluate_workdir`
PREDICTIONS_WINDOW_S = 300.0
METRIC_KEYS = ("intent_accuracy", "slu_f1", "span_f1", "word_f1", "char_f1", "slu_precision",
               "slu_recall", "wer", "cer")


class CascadeError(ValueError):
    """The runs or the split cannot be compared (the message says why and what to do)."""


# ------------------------------------------------------------------------------------------------
# Scoring (pure: records in, figures out)
# ------------------------------------------------------------------------------------------------


def _entity_pairs(entities: Sequence[Mapping[str, Any]] | None) -> list[dict[str, str]]:
    return [{"type": str(e["type"]), "value": str(e["value"])} for e in (entities or [])]


def run_records(references: Sequence[Mapping[str, Any]], e2e: Sequence[Mapping[str, Any]],
                cascade: Sequence[Mapping[str, Any]], gold: Sequence[Mapping[str, Any]], *,
                e2e_slots: bool = True) -> dict[str, list[dict]]:
    """The evaluator-format records (ref, hyp, intent_ref, intent_hyp, entities_ref,
    entities_hyp) of each kind, aligned with `references`.

    references[i]: {"id", "ref" (transcript), "intent_ref", "entities_ref": [{type, value}]};
    e2e[i]: {"hyp", "intent_hyp", "entities_hyp"} (label names); cascade[i], gold[i]: NLU rows
    {"intent": name or None, "slots": [{type, value}]} on e2e[i]["hyp"] and on the reference.
    `e2e_slots=False` (an E2E run without a slot head) leaves the e2e records without entities,
    so it gets no SLU-F1 rather than a zero.
    """
    n = len(references)
    if not (len(e2e) == len(cascade) == len(gold) == n):
        raise ValueError(f"{n} references but {len(e2e)} e2e, {len(cascade)} cascade and "
                         f"{len(gold)} gold_text predictions; pass one of each per utterance")
    out: dict[str, list[dict]] = {k: [] for k in KINDS}
    for ref, e, c, g in zip(references, e2e, cascade, gold):
        base = {"id": ref.get("id"), "ref": ref["ref"], "intent_ref": ref.get("intent_ref")}
        ents = _entity_pairs(ref.get("entities_ref"))
        rec = {**base, "hyp": e["hyp"], "intent_hyp": e.get("intent_hyp")}
        if e2e_slots:
            rec.update(entities_ref=ents, entities_hyp=_entity_pairs(e.get("entities_hyp")))
        out["e2e"].append(rec)
        out["cascade"].append({**base, "hyp": e["hyp"], "intent_hyp": c.get("intent"),
                               "entities_ref": ents,
                               "entities_hyp": _entity_pairs(c.get("slots"))})
        out["gold_text"].append({**base, "hyp": ref["ref"], "intent_hyp": g.get("intent"),
                                 "entities_ref": ents,
                                 "entities_hyp": _entity_pairs(g.get("slots"))})
    return out


def _figures(records: Sequence[Mapping[str, Any]], both_known: Sequence[bool]) -> dict[str, Any]:
    s = M.summary(records)
    out: dict[str, Any] = {"num_utterances": len(records)}
    out.update({k: s.get(k) for k in METRIC_KEYS})
    if "wer_detail" in s:
        out["wer_detail"] = s["wer_detail"]
    scored = [r for r, k in zip(records, both_known) if k and r.get("intent_ref") is not None]
    out["intent_accuracy_known_to_both"] = (
        M.intent_accuracy([r["intent_ref"] for r in scored], [r["intent_hyp"] for r in scored])
        if scored else None)
    out["num_intent_known_to_both"] = len(scored)
    return out


def unknown_labels(references: Sequence[Mapping[str, Any]], nlu_vocab: Vocabularies,
                   e2e_vocab: Vocabularies | None = None) -> dict[str, Any]:
    """How many reference intents / entities name a label a run's vocabulary lacks (by name)."""
    def count(vocab: Vocabularies) -> dict[str, Any]:
        intents, types = set(vocab.intents), set(vocab.entity_types)
        bad_i = collections.Counter(r["intent_ref"] for r in references
                                    if r.get("intent_ref") is not None
                                    and r["intent_ref"] not in intents)
        bad_t = collections.Counter(e["type"] for r in references
                                    for e in r.get("entities_ref") or [] if e["type"] not in types)
        return {"intent_references": sum(bad_i.values()), "intents": dict(sorted(bad_i.items())),
                "slot_references": sum(bad_t.values()), "slot_types": dict(sorted(bad_t.items()))}

    out = {"nlu": count(nlu_vocab)}
    if e2e_vocab is not None:
        out["e2e"] = count(e2e_vocab)
    return out


def score_predictions(references: Sequence[Mapping[str, Any]], e2e: Sequence[Mapping[str, Any]],
                      cascade: Sequence[Mapping[str, Any]], gold: Sequence[Mapping[str, Any]], *,
                      nlu_vocab: Vocabularies, e2e_vocab: Vocabularies | None = None,
                      e2e_slots: bool = True, unseen: Sequence[bool] | None = None
                      ) -> dict[str, Any]:
    """{"runs": [{kind, intent_accuracy, slu_f1, wer, ...}], "unknown_labels": {...}} for
    predictions given as label names (see `run_records`); `unseen[i]` marks the utterances whose
    figures are repeated under each run's "unseen"."""
    recs = run_records(references, e2e, cascade, gold, e2e_slots=e2e_slots)
    nlu_i = set(nlu_vocab.intents)
    e2e_i = set(e2e_vocab.intents) if e2e_vocab is not None else nlu_i
    both = [r.get("intent_ref") in nlu_i and r.get("intent_ref") in e2e_i for r in references]
    runs = []
    for kind in KINDS:
        row = {"kind": kind, **_figures(recs[kind], both)}
        if unseen is not None:
            keep = [k for k, u in enumerate(unseen) if u]
            row["unseen"] = _figures([recs[kind][k] for k in keep], [both[k] for k in keep])
        runs.append(row)
    return {"runs": runs, "unknown_labels": unknown_labels(references, nlu_vocab, e2e_vocab),
            "records": recs}


# ------------------------------------------------------------------------------------------------
# Runs, splits, predictions
# ------------------------------------------------------------------------------------------------


def _run_config(workdir: Path, task: str, role: str):
    from jaxslu.config import ConfigError, read_config

    if not workdir.is_dir():
        raise CascadeError(f"{role} workdir {str(workdir)!r} does not exist")
    try:
        cfg = read_config(workdir / "config.json")
    except ConfigError as e:
        raise CascadeError(f"{role} workdir {str(workdir)!r}: {e}") from e
    if cfg.task != task:
        want = "an end-to-end SLU (transducer_slu) run, e.g. configs/spoken_slurp.py" \
            if task == E2E_TASK else "a text NLU (nlu) run, e.g. configs/slurp_nlu.py"
        raise CascadeError(f"{role} workdir {str(workdir)!r} holds a {cfg.task!r} run "
                           f"({cfg.name}); it must be {want}")
    if not (workdir / "labels.json").is_file():
        raise CascadeError(f"{role} workdir {str(workdir)!r} has no labels.json: is it a "
                           "workdir written by `jaxslu train`?")
    return cfg


def _latest_step(workdir: Path, role: str) -> int:
    ckpt = workdir / "checkpoints"
    steps = [int(p.name) for p in ckpt.iterdir() if p.is_dir() and p.name.isdigit()] \
        if ckpt.is_dir() else []
    if not steps:
        raise CascadeError(f"{role} workdir {str(workdir)!r} has no checkpoint; train it first "
                           "(jaxslu train --config ... --workdir ...)")
    return max(steps)


class SubsetSource:
    """Examples `indices` of a source, with the source interface (len, [i], text, metadata)."""

    def __init__(self, source, indices: Sequence[int]):
        self.source, self.indices = source, [int(i) for i in indices]
        self.name = getattr(source, "name", "subset")
        self.split = getattr(source, "split", "")

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return f"SubsetSource({self.source!r}, n={len(self)})"

    def __getitem__(self, i):
        return self.source[self.indices[int(i)]]

    def text(self, i: int) -> str:
        return self.source.text(self.indices[int(i)])

    def metadata(self, i: int) -> dict[str, Any]:
        return self.source.metadata(self.indices[int(i)])


def _references(source) -> list[dict[str, Any]]:
    """What the SLU evaluator scores against, per example of `source` (in source order)."""
    refs = []
    for i in range(len(source)):
        m = source.metadata(i)
        words = m["text"].split()
        refs.append({"id": m.get("id", str(i)), "ref": m["text"], "intent_ref": m.get("intent"),
                     "entities_ref": [{"type": e["type"],
                                       "value": " ".join(words[e["start"]:e["end"]])}
                                      for e in m.get("entities", [])],
                     "index": i})
    return refs


def _file_predictions(workdir: Path, split: str, step: int, refs: Sequence[Mapping[str, Any]],
                      decode: str) -> tuple[dict[str, dict] | None, str]:
    """(records by id, why) from predictions_<split>.jsonl when it is current, else (None, why)."""
    pred, report = workdir / f"predictions_{split}.jsonl", workdir / f"report_{split}.json"
    if not pred.is_file() or not report.is_file():
        return None, f"no {pred.name} with its {report.name}"
    try:
        rep = json.loads(report.read_text())
    except json.JSONDecodeError:
        return None, f"{report.name} is not JSON"
    if rep.get("step") != step:
        return None, f"{report.name} is of step {rep.get('step')}, the latest checkpoint {step}"
    if rep.get("decode", decode) != decode:
        return None, f"{report.name} was decoded with {rep.get('decode')!r}, the run's {decode!r}"
    ckpt = workdir / "checkpoints" / str(step)
    pm, rm = pred.stat().st_mtime, report.stat().st_mtime
    if pm < ckpt.stat().st_mtime:
        return None, f"{pred.name} is older than checkpoint {step}"
    if not rm - 1.0 <= pm <= rm + PREDICTIONS_WINDOW_S:
        return None, f"{pred.name} was not written with {report.name} (another evaluation?)"
    by_id: dict[str, dict] = {}
    with open(pred) as f:
        for line in f:
            if line.strip():
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    return None, f"{pred.name} has a line that is not JSON"
                by_id[str(r.get("id"))] = r
    if rep.get("num_examples") != len(by_id):
        return None, (f"{pred.name} holds {len(by_id)} records, {report.name} "
                      f"{rep.get('num_examples')}")
    for ref in refs:
        r = by_id.get(str(ref["id"]))
        if r is None or r.get("ref") != ref["ref"] or "hyp" not in r:
            return None, f"{pred.name} does not match the split's examples ({ref['id']!r})"
    return by_id, f"{pred.name} (report step {step})"


def _train_texts(task, cfg, role: str) -> set[str] | str:
    """Normalized training texts of a run, or why they could not be read."""
    try:
        src = task.open_source(cfg.data.train_split)
        return {normalize_text(src.text(i)) for i in range(len(src))}
    except Exception as e:  # noqa: BLE001 - the overlap count is informative, not required
        return f"{role} training split {cfg.data.train_split!r} not readable: {e}"


def _predict_nlu(predictor, texts: Sequence[str], oos_label: str) -> dict[str, dict]:
    """NLU rows for each distinct text (an input with no tokens gets no labels)."""
    run = predictor.run
    distinct = sorted(set(texts))
    nonempty = [t for t in distinct if run.task.encode(run.assets, t)[0]]
    rows = dict(zip(nonempty, predictor.predict_texts(nonempty))) if nonempty else {}
    for t in distinct:
        rows.setdefault(t, {"text": t, "intent": None, "slots": [], "empty": True})
    for row in rows.values():
        if row.get("in_scope") is False:  # below the run's open-set threshold
            row["intent"] = oos_label
    return rows


def _input_counts(rows: Mapping[str, dict], texts: Sequence[str]) -> dict[str, int]:
    return {"distinct_texts": len(set(texts)),
            "empty_inputs": sum(1 for t in texts if rows[t].get("empty")),
            "rejected_out_of_scope": sum(1 for t in texts if rows[t].get("in_scope") is False)}


def cascade_vs_e2e(e2e_workdir: str | Path, nlu_workdir: str | Path, *, split: str,
                   limit: int | None = None, reuse_predictions: bool = True, devices=None,
                   return_records: bool = False) -> dict[str, Any]:
    """Score e2e, cascade and gold_text on the spoken utterances of the E2E run's `split` (see
    the module docstring). Returns {"runs": [...], "e2e_workdir", "nlu_workdir", "split",
    "num_utterances", "unknown_labels", "e2e", "nlu" (each run's config name, step, ...),
    "inputs", "seen_in_training"}; with `return_records` also the per-utterance "records".

    Raises CascadeError for a missing workdir or one of another task, runs whose intent
    vocabularies share no name, or a split the E2E run has no data for.
    """
    import jax

    from jaxslu.eval.run import LoadedRun
    from jaxslu.nlu.evaluate import NluPredictor, load_threshold
    from jaxslu.task import get_task

    e2e_dir, nlu_dir = Path(e2e_workdir), Path(nlu_workdir)
    e2e_cfg = _run_config(e2e_dir, E2E_TASK, "E2E")
    nlu_cfg = _run_config(nlu_dir, NLU_TASK, "NLU")
    e2e_vocab = Vocabularies.load(e2e_dir / "labels.json")
    nlu_vocab = Vocabularies.load(nlu_dir / "labels.json")
    if not e2e_vocab.intents:
        raise CascadeError(f"E2E run {str(e2e_dir)!r} has no intents (no intent head): nothing "
                           "to compare a text NLU run with")
    shared = set(e2e_vocab.intents) & set(nlu_vocab.intents)
    if not shared:
        raise CascadeError(
            f"the E2E run's {len(e2e_vocab.intents)} intents (e.g. {e2e_vocab.intents[:3]}) and "
            f"the NLU run's {len(nlu_vocab.intents)} (e.g. {nlu_vocab.intents[:3]}) share no "
            "name: they are labelled for different corpora")
    if limit is not None and (isinstance(limit, bool) or int(limit) < 1):
        raise CascadeError(f"limit must be a positive number of utterances, got {limit!r}")
    step = _latest_step(e2e_dir, "E2E")
    _latest_step(nlu_dir, "NLU")

    e2e_task = get_task(e2e_cfg)
    try:
        source = e2e_task.open_source(split)
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise CascadeError(f"the E2E run ({e2e_cfg.data.dataset}, {str(e2e_dir)!r}) has no data "
                           f"for split {split!r}: {e}") from e
    if len(source) == 0:
        raise CascadeError(f"the E2E run has no data for split {split!r}")
    order = sorted(range(len(source)), key=lambda i: str(source.metadata(i).get("id", i)))
    if limit is not None:
        order = order[:int(limit)]
    subset = SubsetSource(source, order)
    refs = _references(subset)

    devices = jax.devices()[:1] if devices is None else devices
    by_id, why = (_file_predictions(e2e_dir, split, step, refs, e2e_cfg.eval.decode)
                  if reuse_predictions else (None, "reuse_predictions=False"))
    e2e_info: dict[str, Any] = {"workdir": str(e2e_dir), "config_name": e2e_cfg.name,
                                "step": step, "task": e2e_cfg.task,
                                "dataset": e2e_cfg.data.dataset,
                                "decode": e2e_cfg.eval.decode}
    if by_id is not None:
        e2e_info["predictions"] = {"source": "file", "detail": why}
    else:
        from jaxslu.slu.evaluate import TransducerSLUEvaluator

        log.info("decoding %d utterances of %s with the E2E run (%s)", len(subset), split, why)
        run = LoadedRun.from_workdir(e2e_dir, devices=devices)
        if run.step != step:
            raise CascadeError(f"E2E checkpoint step {run.step} is not the latest ({step})")
        recs = TransducerSLUEvaluator(run).records_of(subset, split)
        by_id = {str(r["id"]): r for r in recs}
        e2e_info["predictions"] = {"source": "decoded", "detail": f"decoded ({why})"}
        missing = [r["id"] for r in refs if str(r["id"]) not in by_id]
        if missing:  # skipped as bad input (data.skip_bad_examples)
            raise CascadeError(f"the E2E run produced no prediction for {len(missing)} "
                               f"utterance(s), e.g. {missing[:3]}")
    e2e_rows = [by_id[str(r["id"])] for r in refs]
    e2e_slots = len(e2e_vocab.tags) > 1 and all("entities_hyp" in r for r in e2e_rows)

    nlu_run = LoadedRun.from_workdir(nlu_dir, devices=devices)
    threshold = load_threshold(nlu_dir)
    predictor = NluPredictor(nlu_run, threshold)
    hyps = [r["hyp"] for r in e2e_rows]
    gold_texts = [r["ref"] for r in refs]
    rows = _predict_nlu(predictor, hyps + gold_texts, nlu_run.task.oos_label)
    counts = {"cascade": _input_counts(rows, hyps), "gold_text": _input_counts(rows, gold_texts)}
    cascade = [rows[t] for t in hyps]
    gold = [rows[t] for t in gold_texts]

    e2e_train = _train_texts(e2e_task, e2e_cfg, "E2E")
    nlu_train = _train_texts(nlu_run.task, nlu_cfg, "NLU")
    keys = [normalize_text(t) for t in gold_texts]
    seen: dict[str, Any] = {}
    unseen = None
    for role, texts in (("e2e", e2e_train), ("nlu", nlu_train)):
        seen[role] = (sum(k in texts for k in keys) if isinstance(texts, set)
                      else {"error": texts})
    if isinstance(e2e_train, set) and isinstance(nlu_train, set):
        unseen = [k not in e2e_train and k not in nlu_train for k in keys]
        seen["unseen_by_both"] = sum(unseen)

    scored = score_predictions(refs, e2e_rows, cascade, gold, nlu_vocab=nlu_vocab,
                               e2e_vocab=e2e_vocab, e2e_slots=e2e_slots, unseen=unseen)
    nlu_info = {"workdir": str(nlu_dir), "config_name": nlu_cfg.name, "step": nlu_run.step,
                "task": nlu_cfg.task, "dataset": nlu_cfg.data.dataset,
                "open_set_threshold": threshold}
    asr = {"config_name": e2e_cfg.name, "step": step}
    nlu = {"config_name": nlu_cfg.name, "step": nlu_run.step}
    models = {"e2e": {"e2e": asr}, "cascade": {"asr": asr, "nlu": nlu},
              "gold_text": {"nlu": nlu}}
    inputs = {"e2e": "audio", "cascade": "E2E run's ASR hypothesis",
              "gold_text": "reference transcript"}
    for row in scored["runs"]:
        row["input"] = inputs[row["kind"]]
        row["models"] = models[row["kind"]]
    out: dict[str, Any] = {
        "runs": scored["runs"], "e2e_workdir": str(e2e_dir), "nlu_workdir": str(nlu_dir),
        "split": split, "num_utterances": len(refs), "limit": limit,
        "num_sentences": len(set(gold_texts)),
        "unknown_labels": scored["unknown_labels"], "shared_intents": len(shared),
        "e2e": e2e_info, "nlu": nlu_info, "nlu_inputs": counts,
        "seen_in_training": seen,
        "references": f"the E2E run's {split!r} split ({e2e_cfg.data.dataset}): transcript, "
                      "intent and entity texts, as `jaxslu eval` scores the E2E run",
    }
    if return_records:
        recs = scored["records"]
        out["records"] = [{"id": r["id"], "ref": r["ref"], "hyp": recs["e2e"][k]["hyp"],
                           "intent_ref": r["intent_ref"], "entities_ref": r["entities_ref"],
                           **{f"intent_{kind}": recs[kind][k]["intent_hyp"] for kind in KINDS},
                           **{f"entities_{kind}": recs[kind][k].get("entities_hyp")
                              for kind in KINDS},
                           **({"unseen": unseen[k]} if unseen is not None else {})}
                          for k, r in enumerate(refs)]
    return out
