"""Context as input to the E2E SLU transducer, end to end: scripts/context_experiment.py --model
e2e on the tiny variants (a few dozen clips of the spoken context benchmark rendered with eSpeak
NG): both models train, evaluate on the three test splits, and land in a results JSON with
provenance; the with-context run's schema and context input reach the saved run."""
from __future__ import annotations

import json

import jax

from tests.script_loader import load_script


def test_context_slu_experiment_tiny(tmp_path):
    mod = load_script("scripts/context_experiment.py")
    out = tmp_path / "context_slu.json"
    rc = mod.main(["--model", "e2e", "--variant-suffix", "tiny", "--root", str(tmp_path / "runs"),
                   "--out", str(out), "--no-doc"], devices=jax.devices()[:1])
    assert rc == 0
    d = json.loads(out.read_text())
    assert {"command", "commit", "machine", "versions"} <= set(d)
    assert [r["kind"] for r in d["runs"]] == ["with_context", "without_context"]
    assert d["ordinary_split"] == "ordinary_test"
    for r in d["runs"]:
        assert r["step"] == 4 and 0.0 <= r["accuracy"] <= 1.0
        assert set(r["wer"]) == {"ambiguous_seen", "ambiguous_test", "ordinary_test"}
    assert [r["context_mode"] for r in d["runs"]] == ["input", "blind"]
    schema = json.loads((tmp_path / "runs" / "with_context" / "context.json").read_text())
    assert "oven_on" in schema["device_states"]
    assert "| with_context |" in mod.render(d)
