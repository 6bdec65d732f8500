"""Spoken SLURP end to end on a few synthesized utterances: corpus synthesis into a fresh cache,
sentencepiece tokenizer, transducer with intent and slot heads, evaluation report with SLU-F1
and the per-accent breakdown. Three steps cannot learn; this checks that every piece meets."""
import json
from pathlib import Path

import jax

from jaxslu.config import load_config
from jaxslu.eval import evaluate_workdir
from jaxslu.train.loop import train

ROOT = Path(__file__).resolve().parents[2]


def test_spoken_slurp_tiny_trains_and_reports_per_accent(tmp_path):
    cfg = load_config(ROOT / "configs" / "spoken_slurp.py", "tiny",
                      [f"data.options.cache_dir={tmp_path / 'cache'}"])
    result = train(cfg, tmp_path / "run", progress=False, devices=jax.devices()[:1])
    assert int(result.state.step) == 3
    for key in ("loss/rnnt", "loss/ctc", "loss/intent_ce", "loss/slot_ce"):
        assert key in result.last_metrics
    report = evaluate_workdir(tmp_path / "run")["test"]
    assert report["num_examples"] >= 1
    assert {"wer", "cer", "intent_accuracy", "slu_f1", "span_f1"} <= set(report)
    assert report["per_accent"] and report["per_speaker"]
    assert sum(m["num_examples"] for m in report["per_accent"].values()) == report["num_examples"]
    rows = [json.loads(x) for x in (tmp_path / "run" / "predictions_test.jsonl").read_text()
            .splitlines()]
    assert all("entities_ref" in r and "entities_hyp" in r and r["accent"] for r in rows)
    tokenizer = json.loads((tmp_path / "run" / "tokenizer.model").read_text())
    assert tokenizer["kind"] == "unigram"
