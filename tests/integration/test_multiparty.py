"""Multi-party streaming ASR end to end: scripts/multiparty_experiment.py on the tiny variants
(meetings mixed from the bundled FSDD recordings): the two-channel SURT model trained for 80
steps (its loss must fall), evaluated, streamed, and written to a results JSON with provenance
and a docs table. The single-channel baseline is the same code with channels=1 (the unit tests
run it through the loss terms and the metrics); its training is left to the full experiment to
keep CI short."""
from __future__ import annotations

import json
from pathlib import Path

import jax

from tests.script_loader import load_script


def test_multiparty_experiment_tiny(tmp_path):
    mod = load_script("scripts/multiparty_experiment.py")
    out = tmp_path / "multiparty.json"
    rc = mod.main(["--root", str(tmp_path / "runs"), "--variant-prefix", "tiny_",
                   "--set", "train.steps=80", "--set", "train.log_every=10",
                   "--set", "train.checkpoint_every=80", "--set", "optim.learning_rate=5e-3",
                   "--kinds", "sts", "--stream", "2", "--chunk-frames", "16", "--out", str(out), "--no-doc"],
                  devices=jax.devices()[:1])
    assert rc == 0
    d = json.loads(out.read_text())
    assert {"command", "commit", "machine", "versions"} <= set(d)
    assert [r["kind"] for r in d["runs"]] == ["sts"] and d["sts_vs_baseline"] is None
    for r in d["runs"]:
        assert r["step"] == 80 and r["num_examples"] == 4
        assert 0 <= r["turn_count_accuracy"] <= 1 and r["wer"] >= 0
        assert r["streaming"]["identical"] == r["streaming"]["num_meetings"] == 2
        log = [json.loads(x) for x in (Path(r["workdir"]) / "metrics.jsonl").read_text()
               .splitlines() if x.strip()]
        losses = [m["train/loss/surt_rnnt"] for m in log if "train/loss/surt_rnnt" in m]
        assert losses[-1] < 0.7 * losses[0], losses  # it learns
    assert d["runs"][0]["channels"] == 2
    table = mod.render(d)
    assert "| sts | 2 |" in table
