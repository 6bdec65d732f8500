"""Cascade vs end-to-end SLU on real (tiny) runs: the tiny spoken SLURP transducer (3 steps, its
corpus synthesized into a fresh cache) and a small text NLU run (600 steps; both from
tests/integration/conftest.py), compared on the
E2E run's test audio by `cascade_vs_e2e` and `scripts/slu_cascade.py`: decoded when the run has
no current predictions, read from predictions_test.jsonl once `jaxslu eval` wrote it (the same
figures), gold_text's WER 0, and the result's schema and provenance."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jax
import pytest

from jaxslu.eval import evaluate_workdir
from jaxslu.slu.cascade import KINDS, cascade_vs_e2e

ROOT = Path(__file__).resolve().parents[2]
ONE = jax.devices()[:1]


@pytest.fixture(scope="module")
def runs(tiny_spoken_slurp_run, nlu_run, tmp_path_factory):
    """Copies of the session's tiny spoken SLURP run and small NLU run (this module evaluates
    the E2E copy, which changes what is in its workdir)."""
    import shutil

    tmp = tmp_path_factory.mktemp("cascade")
    e2e, nlu = tmp / "e2e", tmp / "nlu"
    shutil.copytree(tiny_spoken_slurp_run[0], e2e)
    shutil.copytree(nlu_run[0], nlu)
    for stale in e2e.glob("*_test.json*"):  # start without predictions: the decoded path first
        stale.unlink()
    return e2e, nlu


def _figures(result):
    return {r["kind"]: {k: r[k] for k in ("intent_accuracy", "slu_f1", "wer", "cer")}
            for r in result["runs"]}


def test_cascade_vs_e2e_on_tiny_runs(runs, tmp_path):
    e2e, nlu = runs
    decoded = cascade_vs_e2e(e2e, nlu, split="test", return_records=True)
    assert decoded["e2e"]["predictions"]["source"] == "decoded"
    assert [r["kind"] for r in decoded["runs"]] == list(KINDS)
    n = decoded["num_utterances"]
    assert n >= 1 and decoded["split"] == "test" and len(decoded["records"]) == n
    assert decoded["e2e"]["config_name"] == "spoken_slurp" and decoded["e2e"]["step"] == 3
    assert decoded["nlu"]["config_name"] == "slurp_nlu_tiny" and decoded["nlu"]["step"] == 600
    for r in decoded["runs"]:
        assert r["num_utterances"] == n
        assert 0.0 <= r["intent_accuracy"] <= 1.0 and 0.0 <= r["slu_f1"] <= 1.0
        assert r["wer"] >= 0.0 and r["models"]
    gold = next(r for r in decoded["runs"] if r["kind"] == "gold_text")
    cascade = next(r for r in decoded["runs"] if r["kind"] == "cascade")
    e2e_row = next(r for r in decoded["runs"] if r["kind"] == "e2e")
    assert gold["wer"] == 0.0 and gold["cer"] == 0.0
    assert cascade["wer"] == e2e_row["wer"]  # the cascade reads the E2E run's transcripts
    assert cascade["models"]["asr"]["step"] == 3 and cascade["models"]["nlu"]["step"] == 600
    unk = decoded["unknown_labels"]
    assert {"intent_references", "intents", "slot_references", "slot_types"} <= set(unk["nlu"])
    assert decoded["seen_in_training"]["e2e"] == 0  # the hash split keeps test sentences out

    # Once `jaxslu eval` wrote current predictions, they are read instead: the same figures,
    # and the e2e ones are the evaluator's report.
    report = evaluate_workdir(e2e)["test"]
    from_file = cascade_vs_e2e(e2e, nlu, split="test")
    assert from_file["e2e"]["predictions"]["source"] == "file"
    assert _figures(from_file) == _figures(decoded)
    for key in ("intent_accuracy", "slu_f1", "wer"):
        assert _figures(from_file)["e2e"][key] == pytest.approx(report[key])

    # The script: provenance, the run list, --limit.
    path = ROOT / "scripts" / "slu_cascade.py"
    spec = importlib.util.spec_from_file_location("slu_cascade", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    main = script.main

    out = tmp_path / "cascade.json"
    assert main(["--e2e", str(e2e), "--nlu", str(nlu), "--limit", "1", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    for key in ("runs", "e2e_workdir", "nlu_workdir", "split", "num_utterances",
                "unknown_labels", "command", "commit", "machine", "versions"):
        assert key in d, key
    assert d["num_utterances"] == 1 and d["command"].startswith("python scripts/slu_cascade.py")
    assert {r["kind"] for r in d["runs"]} == set(KINDS)
    assert main(["--e2e", str(nlu), "--nlu", str(nlu), "--out", str(out)]) == 2
