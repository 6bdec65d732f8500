"""The spoken SLU corpus end to end on a few utterances: corpus synthesis into a fresh cache
(unseen test speakers), tokenizer, transducer with intent and slot heads, and the three held-out
reports with the per-accent and per-speaker breakdowns. Three steps cannot learn; this checks
that every piece meets. Marked slow: 2.5 min on 2 CPU cores shared with another training (the
spoken_slurp tiny test covers the same code path in the default suite)."""
import json
from pathlib import Path

import jax
import pytest

from jaxslu.config import load_config
from jaxslu.eval import evaluate_workdir
from jaxslu.train.loop import train

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_spoken_nlu_tiny_trains_and_reports_unseen_speakers(tmp_path):
    cfg = load_config(ROOT / "configs" / "spoken_nlu.py", "tiny",
                      [f"data.options.cache_dir={tmp_path / 'cache'}"])
    result = train(cfg, tmp_path / "run", progress=False, devices=jax.devices()[:1])
    assert int(result.state.step) == 3
    for key in ("loss/rnnt", "loss/ctc", "loss/intent_ce", "loss/slot_ce"):
        assert key in result.last_metrics
    reports = evaluate_workdir(tmp_path / "run")
    assert set(reports) == {"dev", "slurp_test", "hwu64_test"}
    labels = json.loads((tmp_path / "run" / "labels.json").read_text())
    train_speakers = set(labels.get("speakers", []))
    for split, report in reports.items():
        assert report["num_examples"] == 6
        assert {"wer", "intent_accuracy", "slu_f1"} <= set(report)
        assert report["per_accent"] and report["per_speaker"]
        assert not set(report["per_speaker"]) & train_speakers  # unseen speakers only
        rows = [json.loads(x) for x in (tmp_path / "run" / f"predictions_{split}.jsonl")
                .read_text().splitlines()]
        assert all(r["accent"] and r["meta"]["gender"] for r in rows)
