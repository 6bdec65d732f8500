"""Device-directedness features from a real (tiny) E2E run and a real text NLU run: the tiny
spoken SLURP transducer and the small NLU run of tests/integration/conftest.py, on a manifest
of that corpus's audio with planted labels; then the classifier task trains on them and the
evaluator reports an EER. Shapes, names, labels and the hypothesis likelihood are checked; the
tiny run cannot tell the classes apart, which is not the point here."""
from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from jaxslu.config import load_config
from jaxslu.directedness.features import HASH_DIMS, extract_features
from jaxslu.eval import evaluate_workdir
from jaxslu.task import get_task
from jaxslu.train.loop import train

ROOT = Path(__file__).resolve().parents[2]


def test_features_from_real_runs_then_classifier(tiny_spoken_slurp_run, nlu_run, tmp_path):
    e2e, _ = tiny_spoken_slurp_run
    nlu_wd, _, _ = nlu_run
    from jaxslu.config import read_config

    e2e_cfg = read_config(e2e / "config.json")
    source = get_task(e2e_cfg).open_source("train")
    lines = []
    for i in range(len(source)):
        m = source.metadata(i)
        split = "train" if i % 3 else "test"
        lines.append({"id": f"u{i}", "path": str(source._records[i]["audio_path"]),
                      "text": m["text"], "intent": None, "speaker": m["speaker"],
                      "split": split, "directed": i % 2, "delivery": "plain"
                      if i % 2 == 0 else "command"})
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = extract_features(e2e, manifest, tmp_path / "features", nlu_workdir=nlu_wd)
    info = json.loads((out / "features.json").read_text())
    j = e2e_cfg.model.joint_dim
    assert len(info["names"]["acoustic"]) == 2 * j + 1
    assert len(info["names"]["semantic"]) == HASH_DIMS + 4 + 2
    n_test = sum(x["split"] == "test" for x in lines)
    assert info["num_examples"] == {"train": len(lines) - n_test, "test": n_test}
    z = np.load(out / "test.npz")
    assert z["acoustic"].shape == (n_test, 2 * j + 1)
    assert z["semantic"].shape == (n_test, HASH_DIMS + 6)
    assert np.isfinite(z["acoustic"]).all() and np.isfinite(z["semantic"]).all()
    want = [x["directed"] for x in lines if x["split"] == "test"]
    assert sorted(z["label"].tolist()) == sorted(want)
    loglik = z["semantic"][:, HASH_DIMS + 1]
    assert (loglik <= 1e-4).all()  # a log-probability per token
    assert ((z["semantic"][:, HASH_DIMS + 4] > 0) & (z["semantic"][:, HASH_DIMS + 4] <= 1)).all()
    cfg = load_config(ROOT / "configs" / "device_directedness.py", "tiny",
                      [f"data.options.path={out}"])
    train(cfg, tmp_path / "clf", progress=False, devices=jax.devices()[:1])
    r = evaluate_workdir(tmp_path / "clf")["test"]
    assert r["num_examples"] == n_test and 0.0 <= r["eer"] <= 1.0
