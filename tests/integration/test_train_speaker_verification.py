"""Speaker verification end to end on the tiny config: a tiny speaker panel rendered once (24
eSpeak NG speakers x 6 utterances, + FSDD), a short REAL training through `jaxslu.train.loop.train`
(what `jaxslu train` calls) for the baseline and for ARW (adversary group maximizing), then
`evaluate_workdir` (what `--eval` calls): finite EER in [0, 0.5], minDCF, per-cohort figures, the
report schema and one record per trial."""
from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxslu.config import load_config
from jaxslu.eval import evaluate_workdir
from jaxslu.train.loop import train

ROOT = Path(__file__).resolve().parents[2]
ONE = jax.devices()[:1]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("sv_cache")  # one rendered panel for the whole module


def _cfg(variant, cache, *extra):
    return load_config(ROOT / "configs" / "speaker_verification.py", variant,
                       [f"data.options.cache_dir={cache}", *extra])


def _check_report(r, split):
    assert r["task"] == "speaker_verification" and r["split"] == split
    assert np.isfinite(r["eer"]) and 0.0 <= r["eer"] <= 0.5, r["eer"]
    assert set(r["min_dcf"]) == {"0.01", "0.05"}
    assert all(0.0 <= v <= 1.0 for v in r["min_dcf"].values())
    assert r["target_trials"] == r["nontarget_trials"] == r["trials"] // 2


def test_tiny_baseline_and_arw_train_and_report(cache, tmp_path):
    cfg = _cfg("tiny", cache)
    wd = tmp_path / "base"
    result = train(cfg, wd, progress=False, devices=ONE)
    assert int(result.state.step) == cfg.train.steps
    assert result.last_metrics["aam_softmax/accuracy"] >= 0.0
    assert (wd / "sv_speakers.json").is_file()
    reports = evaluate_workdir(wd)
    r = reports["test"]
    _check_report(r, "test")
    assert r["num_speakers"] == 8 and r["trials"] == 4 * 2 * 20  # 4 cells x (20 + 20)
    assert set(r["per_cohort"]) == {"gender", "accent"}
    assert set(r["per_cohort"]["gender"]) == {"female", "male"}
    assert set(r["per_cohort"]["accent"]) == {"general_american", "scottish"}
    for cohort in r["per_cohort"].values():
        for m in cohort.values():
            assert {"eer", "min_dcf", "trials"} <= set(m) and m["trials"] == 80
    gap = r["gender_gap"]
    assert gap["female_minus_male"] == pytest.approx(gap["female_eer"] - gap["male_eer"])
    assert r["accent_spread"]["max_minus_min"] >= 0.0
    recs = [json.loads(x) for x in (wd / "predictions_test.jsonl").read_text().splitlines()]
    assert len(recs) == r["trials"]
    assert all(x["target"] == (x["enroll_speaker"] == x["test_speaker"]) for x in recs)
    f = reports["fsdd_test"]
    _check_report(f, "fsdd_test")
    assert f["num_speakers"] == 5 and f["trials"] == 200
    # the same trial list for a second run (seeded), so runs are compared on equal trials
    wd2 = tmp_path / "arw"
    cfg2 = _cfg("tiny_arw", cache)
    res2 = train(cfg2, wd2, progress=False, devices=ONE)
    assert int(res2.state.step) == cfg2.train.steps
    lam_max = res2.last_metrics["arw/lambda_max"]
    assert 1.0 < lam_max and res2.last_metrics["arw/lambda_std"] > 0.0
    r2 = evaluate_workdir(wd2, splits=["test"])["test"]
    _check_report(r2, "test")
    assert r2["trial_list"]["sha256"] == r["trial_list"]["sha256"]
