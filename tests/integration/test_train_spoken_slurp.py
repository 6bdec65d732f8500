"""Spoken SLURP end to end on a few synthesized utterances: corpus synthesis into a fresh cache,
sentencepiece tokenizer, transducer with intent and slot heads, evaluation report with SLU-F1
and the per-accent breakdown. Three steps cannot learn; this checks that every piece meets."""
import json
from pathlib import Path


from jaxslu.eval import evaluate_workdir

ROOT = Path(__file__).resolve().parents[2]


def test_spoken_slurp_tiny_trains_and_reports_per_accent(tiny_spoken_slurp_run):
    run, result = tiny_spoken_slurp_run
    assert int(result.state.step) == 3
    for key in ("loss/rnnt", "loss/ctc", "loss/intent_ce", "loss/slot_ce"):
        assert key in result.last_metrics
    report = evaluate_workdir(run)["test"]
    assert report["num_examples"] >= 1
    assert {"wer", "cer", "intent_accuracy", "slu_f1", "span_f1"} <= set(report)
    assert report["per_accent"] and report["per_speaker"]
    assert sum(m["num_examples"] for m in report["per_accent"].values()) == report["num_examples"]
    rows = [json.loads(x) for x in (run / "predictions_test.jsonl").read_text()
            .splitlines()]
    assert all("entities_ref" in r and "entities_hyp" in r and r["accent"] for r in rows)
    tokenizer = json.loads((run / "tokenizer.model").read_text())
    assert tokenizer["kind"] == "unigram"
