"""The text NLU task end to end, with no audio anywhere: a short real training on the SLURP-style
mix (HWU64 + SLURP devel), evaluation with domain / intent / slot figures and per-example
records, an interrupted-and-resumed run equal to an uninterrupted one, CLINC150 open-set
calibration, and `jaxslu nlu` on good and bad input lines."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxslu.config import load_config
from jaxslu.eval import evaluate_workdir
from jaxslu.train.loop import train

ROOT = Path(__file__).resolve().parents[2]
ONE = jax.devices()[:1]


def _cfg(*overrides, name="slurp_nlu.py", variant="tiny"):
    return load_config(ROOT / "configs" / name, variant, list(overrides))


def test_nlu_trains_and_reports_without_audio(nlu_run):
    wd, cfg, result = nlu_run
    assert int(result.state.step) == 600
    assert not (wd / "tokenizer.model").read_bytes() == b""
    labels = json.loads((wd / "labels.json").read_text())
    assert len(labels["intents"]) >= 60 and len(labels["domains"]) == 18
    reports = evaluate_workdir(wd)
    from jaxslu.nlu.data import slurp_nlu
    for split in ("slurp_test", "hwu64_test"):
        n = len(slurp_nlu(split))
        r = reports[split]
        assert r["num_examples"] == n and r["task"] == "nlu"
        # Far above chance (1/64 intents, 1/18 domains) after 600 small steps.
        print(split, {k: r[k] for k in ("intent_accuracy", "domain_accuracy", "slot_f1")})
        assert r["intent_accuracy"] > 0.5, r
        assert r["domain_accuracy"] > 0.6, r
        assert 0.0 < r["slot_f1"] <= 1.0
        recs = [json.loads(x) for x in (wd / f"predictions_{split}.jsonl").read_text().splitlines()]
        assert len(recs) == n and len({x["id"] for x in recs}) == n
        assert {"id", "text", "intent_ref", "intent_hyp", "domain_ref", "domain_hyp", "confidence",
                "entities_ref", "entities_hyp", "meta"} <= set(recs[0])
        acc = np.mean([x["intent_ref"] == x["intent_hyp"] for x in recs])
        assert abs(acc - r["intent_accuracy"]) < 1e-9


def test_nlu_resume_equals_uninterrupted(tmp_path):
    cfg = _cfg("train.steps=6", "train.checkpoint_every=3", "train.log_every=3")
    full = train(cfg, tmp_path / "full", progress=False, devices=ONE)
    train(cfg, tmp_path / "resumed", progress=False, devices=ONE, stop_after=3)
    rest = train(cfg, tmp_path / "resumed", progress=False, devices=ONE)
    assert int(rest.state.step) == 6 and rest.steps_run == 3
    for a, b in zip(jax.tree.leaves(full.state.params), jax.tree.leaves(rest.state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)


def test_clinc_open_set_threshold_is_calibrated_and_applied(tmp_path):
    cfg = _cfg("train.steps=30", name="clinc_oos.py")
    train(cfg, tmp_path, progress=False, devices=ONE)
    report = evaluate_workdir(tmp_path)["test+oos_test"]
    calib = json.loads((tmp_path / "open_set.json").read_text())
    assert calib["calibration_split"] == "val+oos_val"
    assert report["open_set_threshold"] == calib["threshold"]
    assert report["num_out_of_scope"] == 1000 and report["num_in_scope"] == 4500
    for k in ("in_scope_accuracy", "oos_recall", "oos_precision", "intent_accuracy"):
        assert 0.0 <= report[k] <= 1.0
    # Rejecting below the threshold can only lose in-scope answers, never add right ones; the
    # recorded records agree with the report.
    assert report["in_scope_accuracy"] <= report["intent_accuracy"]
    recs = [json.loads(x) for x in
            (tmp_path / "predictions_test+oos_test.jsonl").read_text().splitlines()]
    flagged = [r for r in recs if not r["in_scope_ref"]]
    assert abs(np.mean([not r["in_scope_hyp"] for r in flagged]) - report["oos_recall"]) < 1e-9
    assert all((r["confidence"] >= calib["threshold"]) == r["in_scope_hyp"] for r in recs)


def test_nlu_command_labels_lines_and_names_bad_ones(nlu_run, tmp_path):
    wd, _, _ = nlu_run
    f = tmp_path / "in.txt"
    f.write_bytes(b"wake me up at seven am tomorrow\n\nplay some jazz in the kitchen\n"
                  b"caf\xe9 latte\n")
    out = subprocess.run([sys.executable, "-m", "jaxslu.cli", "nlu", "--workdir", str(wd), str(f)],
                         capture_output=True, text=True, timeout=300)
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert out.returncode == 1, out.stderr
    assert [x.get("line") for x in lines if "error" in x] == [2, 4]
    assert "empty" in lines[1]["error"] and "UTF-8" in lines[3]["error"]
    good = [x for x in lines if "error" not in x]
    assert [x["text"] for x in good] == ["wake me up at seven am tomorrow",
                                         "play some jazz in the kitchen"]
    for x in good:
        assert set(x) == {"text", "domain", "intent", "confidence", "in_scope", "slots"}
        assert 0.0 <= x["confidence"] <= 1.0 and x["in_scope"] is True
        words = x["text"].split()
        for s in x["slots"]:
            assert 0 <= s["start"] < s["end"] <= len(words)
            assert s["value"] == " ".join(words[s["start"]:s["end"]])


def test_bert_encoder_run_starts_from_the_checkpoint(tmp_path):
    """The pretrained-encoder path on a tiny BERT checkpoint in the common layout (written by
    the BERT tests' helpers): a fresh run's encoder equals the checkpoint's weights, the workdir
    keeps the tokenizer and architecture, evaluation and `jaxslu nlu` read them back."""
    from flax import nnx

    from jaxslu.nlu.bert import load_pretrained
    from jaxslu.train.warm_start import flat_params
    from tests.unit.test_bert import TINY, _tiny_tensors, _write_checkpoint

    ckpt = _write_checkpoint(tmp_path / "ckpt", _tiny_tensors(TINY))
    cfg = _cfg(f"task_options.pretrained={ckpt}", "task_options.max_tokens=20",
               "data.label_buckets=(8,20)", "train.steps=0", "data.batch_size=8",
               "data.eval_batch_size=16", variant="minilm")
    wd = tmp_path / "run"
    result = train(cfg, wd, progress=False, devices=ONE)
    flat = flat_params(jax.device_get(result.state.params))
    _, ref, _ = nnx.split(load_pretrained(ckpt), nnx.Param, ...)
    ref = flat_params(ref)
    for k, v in ref.items():
        np.testing.assert_array_equal(flat[f"encoder/bert/{k}"], np.asarray(v), err_msg=k)
    assert {"tokenizer.json", "encoder_config.json", "labels.json"} <= {p.name for p in wd.iterdir()}
    too_long = _cfg(f"task_options.pretrained={ckpt}", "task_options.max_tokens=40",
                    "train.steps=1", variant="minilm")
    with pytest.raises(ValueError, match="exceeds the pretrained encoder's 24 positions"):
        train(too_long, tmp_path / "bad", progress=False, devices=ONE)


def test_context_input_trains_and_reaches_the_intent_head(tmp_path):
    """configs/context_nlu.py (tiny): the context path is trained (its output layer leaves zero),
    the evaluation reads every example's context, and the same text under two contexts gets
    different intent scores."""
    from jaxslu.eval.run import LoadedRun

    cfg = _cfg("train.steps=30", "train.checkpoint_every=30", name="context_nlu.py")
    result = train(cfg, tmp_path / "ctx", progress=False, devices=ONE)
    from jaxslu.train.warm_start import flat_params

    flat = flat_params(result.state.params)
    assert np.abs(np.asarray(flat["context/fuse_out/kernel"])).max() > 0
    reports = evaluate_workdir(tmp_path / "ctx")
    assert reports["ambiguous_test"]["num_examples"] == 7 * 2 * 4
    assert reports["ambiguous_seen"]["num_examples"] == 7 * 4 * 4
    recs = [json.loads(x) for x in
            (tmp_path / "ctx" / "predictions_ambiguous_test.jsonl").read_text().splitlines()]
    assert all("context" in r["meta"] for r in recs)
    run = LoadedRun.from_workdir(tmp_path / "ctx", devices=ONE)
    task, assets = run.task, run.assets
    ids, _, tags = task.encode(assets, "what is the temperature")
    rows = [{"tokens": np.asarray(ids, np.int32), "slot_tags": np.asarray(tags, np.int32),
             "intent": -1, "domain": -1, "index": k,
             "context": assets.context.encode(ctx)}
            for k, ctx in enumerate([{"device_states": ["oven_on"]}, {"device_states": []}])]
    batch = task.collate(rows, cfg.data.eval_batch_size)
    logits, _, _ = run.apply(lambda m, b: m(b, train=False)["intent_logits"], batch)
    assert np.abs(np.asarray(logits[0]) - np.asarray(logits[1])).max() > 1e-4

    from jaxslu.context import ContextError
    from jaxslu.nlu.evaluate import NluPredictor

    pred = NluPredictor(run)
    rows = pred.predict_texts(["what is the temperature"] * 2, {"device_states": ["oven_on"]})
    assert rows[0]["intent"] in assets.vocab.intents and rows[0] == rows[1]
    with pytest.raises(ContextError, match="--context: hour"):
        pred.predict_texts(["stop"], {"hour": 99})
    f = tmp_path / "lines.txt"
    f.write_text("stop\n")
    ok = subprocess.run([sys.executable, "-m", "jaxslu.cli", "nlu", "--workdir",
                         str(tmp_path / "ctx"), "--context", '{"device_states": ["tv_on"]}',
                         str(f)], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout.splitlines()[0])["intent"] in assets.vocab.intents
    bad = subprocess.run([sys.executable, "-m", "jaxslu.cli", "nlu", "--workdir",
                          str(tmp_path / "ctx"), "--context", "{oven", str(f)],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "is not JSON" in bad.stderr and not bad.stdout
