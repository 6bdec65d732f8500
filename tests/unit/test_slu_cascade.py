"""Cascade vs end-to-end SLU scoring (jaxslu/slu/cascade.py) on hand-made predictions: labels
matched by name across two vocabularies, references the NLU run cannot know counted as wrong,
identical inputs giving identical cascade and gold_text figures, and the clear errors. The real
runs (tiny E2E + tiny NLU training) are in tests/integration/test_slu_cascade.py."""
from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path

import pytest

from jaxslu.config import load_config, save_config
from jaxslu.data.labels import Vocabularies
from jaxslu.slu import cascade as C
from jaxslu.text import metrics as M

ROOT = Path(__file__).resolve().parents[2]


def _vocab(intents, types_=("time",)):
    tags = ["O"] + [f"{p}-{t}" for t in sorted(types_) for p in ("B", "I")]
    return Vocabularies(list(intents), tags, [])


def _ref(i, text, intent, entities=()):
    return {"id": f"u{i}", "ref": text, "intent_ref": intent,
            "entities_ref": [{"type": t, "value": v} for t, v in entities]}


def _run(result, kind):
    return next(r for r in result["runs"] if r["kind"] == kind)


def test_labels_are_matched_by_name_not_id():
    # The two runs order their intents differently: id 0 is alarm_set for the E2E run and
    # weather_query for the NLU run.
    e2e_vocab = _vocab(["alarm_set", "weather_query"])
    nlu_vocab = _vocab(["weather_query", "play_music", "alarm_set"])
    refs = [_ref(0, "wake me at five am", "alarm_set", [("time", "five am")]),
            _ref(1, "is it raining", "weather_query")]
    e2e_ids, nlu_ids = [0, 1], [2, 0]  # both right, by each run's own ids
    e2e = [{"hyp": r["ref"], "intent_hyp": e2e_vocab.intents[k],
            "entities_hyp": r["entities_ref"]} for r, k in zip(refs, e2e_ids)]
    nlu = [{"intent": nlu_vocab.intents[k], "slots": r["entities_ref"]}
           for r, k in zip(refs, nlu_ids)]
    res = C.score_predictions(refs, e2e, nlu, nlu, nlu_vocab=nlu_vocab, e2e_vocab=e2e_vocab)
    for kind in C.KINDS:
        assert _run(res, kind)["intent_accuracy"] == 1.0
        assert _run(res, kind)["slu_f1"] == 1.0
    # The same ids read as names of the OTHER vocabulary would be wrong: ids are not compared.
    swapped = [{"intent": nlu_vocab.intents[k], "slots": []} for k in e2e_ids]
    res = C.score_predictions(refs, e2e, swapped, swapped, nlu_vocab=nlu_vocab,
                              e2e_vocab=e2e_vocab)
    assert _run(res, "cascade")["intent_accuracy"] == 0.0
    assert res["unknown_labels"]["nlu"]["intent_references"] == 0


def test_labels_unknown_to_the_nlu_run_count_as_wrong_and_are_reported():
    e2e_vocab = _vocab(["alarm_set", "query"], ("time", "place_name"))
    nlu_vocab = _vocab(["alarm_set", "weather_query"], ("time",))
    refs = [_ref(0, "wake me at five", "alarm_set", [("time", "five")]),
            _ref(1, "weather in paris", "query", [("place_name", "paris")]),
            _ref(2, "is it cold", "query")]
    e2e = [{"hyp": r["ref"], "intent_hyp": r["intent_ref"], "entities_hyp": r["entities_ref"]}
           for r in refs]
    # The NLU run says weather_query for the "query" references: right in meaning, but "query"
    # is no intent of its vocabulary, so it is wrong by name; it cannot tag place_name either.
    nlu = [{"intent": "alarm_set", "slots": [{"type": "time", "value": "five"}]},
           {"intent": "weather_query", "slots": []}, {"intent": "weather_query", "slots": []}]
    res = C.score_predictions(refs, e2e, nlu, nlu, nlu_vocab=nlu_vocab, e2e_vocab=e2e_vocab)
    unk = res["unknown_labels"]
    assert unk["nlu"] == {"intent_references": 2, "intents": {"query": 2},
                          "slot_references": 1, "slot_types": {"place_name": 1}}
    assert unk["e2e"]["intent_references"] == 0 and unk["e2e"]["slot_references"] == 0
    gold = _run(res, "gold_text")
    assert gold["intent_accuracy"] == pytest.approx(1 / 3)  # the unknown ones stay in the count
    assert gold["intent_accuracy_known_to_both"] == 1.0 and gold["num_intent_known_to_both"] == 1
    # The missed place_name is a false negative of the project's SLU-F1 (1 TP, 1 FN).
    want = M.slu_f1([r["entities_ref"] for r in refs], [n["slots"] for n in nlu])
    assert gold["slu_f1"] == pytest.approx(want.slu_f1) and gold["slu_f1"] < 1.0
    assert _run(res, "e2e")["intent_accuracy"] == 1.0 and _run(res, "e2e")["slu_f1"] == 1.0


def test_slots_on_hypothesis_words_are_scored_against_reference_text():
    nlu_vocab = _vocab(["alarm_set"])
    refs = [_ref(0, "wake me at five am", "alarm_set", [("time", "five am")])]
    e2e = [{"hyp": "wake me at fife am", "intent_hyp": "alarm_set",
            "entities_hyp": [{"type": "time", "value": "fife am"}]}]
    cascade = [{"intent": "alarm_set", "slots": [{"type": "time", "value": "fife am"}]}]
    gold = [{"intent": "alarm_set", "slots": [{"type": "time", "value": "five am"}]}]
    res = C.score_predictions(refs, e2e, cascade, gold, nlu_vocab=nlu_vocab)
    partial = M.slu_f1([[("time", "five am")]], [[("time", "fife am")]])
    assert _run(res, "cascade")["slu_f1"] == pytest.approx(partial.slu_f1)
    assert 0 < partial.slu_f1 < 1 and _run(res, "cascade")["span_f1"] == 0.0
    assert _run(res, "e2e")["slu_f1"] == _run(res, "cascade")["slu_f1"]
    assert _run(res, "gold_text")["slu_f1"] == 1.0
    assert _run(res, "cascade")["wer"] == pytest.approx(0.2)  # 1 of 5 words
    assert _run(res, "gold_text")["wer"] == 0.0 and _run(res, "gold_text")["cer"] == 0.0


def _stub_predictor(calls):
    """An NluPredictor stand-in: intent from the first word, a slot on the last word; no tokens
    for an empty text."""
    def predict_texts(texts):
        calls.append(list(texts))
        return [{"text": t, "intent": f"{t.split()[0]}_intent", "in_scope": True,
                 "slots": [{"type": "time", "value": t.split()[-1]}]} for t in texts]

    task = types.SimpleNamespace(encode=lambda assets, t: (t.split(), None, None))
    run = types.SimpleNamespace(task=task, assets=None)
    return types.SimpleNamespace(run=run, predict_texts=predict_texts)


def test_identical_inputs_give_identical_cascade_and_gold_figures():
    refs = [_ref(0, "wake up at five", "wake_intent", [("time", "five")]),
            _ref(1, "set it at six", "set_intent", [("time", "six")]),
            _ref(2, "wake up at five", "wake_intent", [("time", "up")])]
    hyps = [r["ref"] for r in refs]
    calls = []
    rows = C._predict_nlu(_stub_predictor(calls), hyps + hyps, "oos")
    assert calls == [sorted(set(hyps))]  # each distinct text labelled once
    e2e = [{"hyp": h, "intent_hyp": None, "entities_hyp": []} for h in hyps]
    res = C.score_predictions(refs, e2e, [rows[h] for h in hyps], [rows[r["ref"]] for r in refs],
                              nlu_vocab=_vocab(["wake_intent", "set_intent"]))
    cas, gold = _run(res, "cascade"), _run(res, "gold_text")
    assert cas == {**gold, "kind": "cascade"}
    assert cas["wer"] == 0.0 and 0 < cas["slu_f1"] < 1


def test_empty_hypotheses_get_no_labels_and_are_counted():
    calls = []
    rows = C._predict_nlu(_stub_predictor(calls), ["", "wake up", ""], "oos")
    assert rows[""]["intent"] is None and rows[""]["slots"] == []
    assert C._input_counts(rows, ["", "wake up", ""])["empty_inputs"] == 2
    assert calls == [["wake up"]]


def test_out_of_scope_rejections_get_the_oos_label():
    def predict_texts(texts):
        return [{"text": t, "intent": "alarm_set", "in_scope": False, "slots": []} for t in texts]

    pred = _stub_predictor([])
    pred.predict_texts = predict_texts
    rows = C._predict_nlu(pred, ["wake up"], "oos")
    assert rows["wake up"]["intent"] == "oos"
    assert C._input_counts(rows, ["wake up"])["rejected_out_of_scope"] == 1


def test_misaligned_predictions_are_an_error():
    refs = [_ref(0, "a b", "x")]
    with pytest.raises(ValueError, match="one of each per utterance"):
        C.score_predictions(refs, [], [], [], nlu_vocab=_vocab(["x"]))


# -- clear errors about the runs -----------------------------------------------------------------


def _workdir(path: Path, cfg, intents, step=1):
    path.mkdir(parents=True)
    save_config(cfg, path / "config.json")
    _vocab(intents).save(path / "labels.json")
    (path / "checkpoints" / str(step)).mkdir(parents=True)
    return path


@pytest.fixture
def configs(tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps({"id": "a", "path": "a.flac", "text": "wake me up",
                                    "intent": "alarm_set", "split": "train"}) + "\n")
    e2e = load_config(ROOT / "configs" / "spoken_slurp.py", "tiny")
    e2e = dataclasses.replace(e2e, data=dataclasses.replace(
        e2e.data, dataset="manifest", options={"path": str(manifest)}))
    nlu = load_config(ROOT / "configs" / "slurp_nlu.py", "tiny")
    return e2e, nlu


def test_missing_workdir_and_wrong_task_are_clear_errors(tmp_path, configs):
    e2e_cfg, nlu_cfg = configs
    nlu = _workdir(tmp_path / "nlu", nlu_cfg, ["alarm_set"])
    with pytest.raises(C.CascadeError, match="E2E workdir .* does not exist"):
        C.cascade_vs_e2e(tmp_path / "nowhere", nlu, split="test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(C.CascadeError, match="written by `jaxslu train`"):
        C.cascade_vs_e2e(tmp_path / "empty", nlu, split="test")
    e2e = _workdir(tmp_path / "e2e", e2e_cfg, ["alarm_set"])
    with pytest.raises(C.CascadeError, match="holds a 'nlu' run .* end-to-end SLU"):
        C.cascade_vs_e2e(nlu, nlu, split="test")
    with pytest.raises(C.CascadeError, match="holds a 'transducer_slu' run .* text NLU"):
        C.cascade_vs_e2e(e2e, e2e, split="test")


def test_runs_without_a_shared_intent_are_refused(tmp_path, configs):
    e2e_cfg, nlu_cfg = configs
    e2e = _workdir(tmp_path / "e2e", e2e_cfg, ["0", "1", "2"])
    nlu = _workdir(tmp_path / "nlu", nlu_cfg, ["alarm_set", "weather_query"])
    with pytest.raises(C.CascadeError, match="share no name"):
        C.cascade_vs_e2e(e2e, nlu, split="test")


def test_a_split_the_e2e_run_has_no_data_for_is_refused(tmp_path, configs):
    e2e_cfg, nlu_cfg = configs
    e2e = _workdir(tmp_path / "e2e", e2e_cfg, ["alarm_set"])
    nlu = _workdir(tmp_path / "nlu", nlu_cfg, ["alarm_set"])
    with pytest.raises(C.CascadeError, match="no data for split 'test'"):
        C.cascade_vs_e2e(e2e, nlu, split="test")
    with pytest.raises(C.CascadeError, match="limit must be a positive"):
        C.cascade_vs_e2e(e2e, nlu, split="train", limit=0)


def test_predictions_file_is_used_only_when_current(tmp_path):
    (tmp_path / "checkpoints" / "5").mkdir(parents=True)
    refs = [_ref(0, "wake me up", "alarm_set"), _ref(1, "is it cold", "weather_query")]
    recs = [{"id": r["id"], "ref": r["ref"], "hyp": "wake up", "intent_hyp": "alarm_set"}
            for r in refs]

    def write(step=5, decode="greedy", records=recs):
        (tmp_path / "report_test.json").write_text(json.dumps(
            {"step": step, "decode": decode, "num_examples": len(records)}))
        (tmp_path / "predictions_test.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in records))
        return C._file_predictions(tmp_path, "test", 5, refs, "greedy")

    by_id, why = write()
    assert by_id is not None and set(by_id) == {"u0", "u1"}, why
    assert write(step=4) == (None, "report_test.json is of step 4, the latest checkpoint 5")
    assert "decoded with 'beam'" in write(decode="beam")[1]
    stale = [dict(recs[0], ref="another text"), recs[1]]
    assert "does not match the split's examples ('u0')" in write(records=stale)[1]
    (tmp_path / "report_test.json").unlink()
    assert C._file_predictions(tmp_path, "test", 5, refs, "greedy")[0] is None
