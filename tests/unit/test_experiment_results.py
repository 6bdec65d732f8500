"""scripts/amortized_experiment.py: the run plan (warm-started Transformer variants, equal step
budgets) and the results it writes (the issue's JSON fields, relative compute and WER)."""
import json

import pytest

from tests.script_loader import load_script


@pytest.fixture(scope="module")
def exp():
    return load_script("scripts/amortized_experiment.py")


def _steps(spec):
    return [int(o.split("=")[1]) for o in spec["overrides"] if o.startswith("train.steps=")][-1]


@pytest.mark.parametrize("scale", ["small", "full"])
def test_run_plan(exp, scale, tmp_path):
    specs = {s["name"]: s for s in exp.run_specs([0.5, 2.0, 8.0], scale)}
    sc = exp.SCALES[scale]
    assert {"tt_dense", "tt_sliding", "tt_amortized_w0.5", "tt_amortized_w8", "convrnnt",
            "lstm_rnnt", "conformer"} <= set(specs)
    for name in ("tt_dense", "tt_sliding", "tt_amortized_w2"):
        assert specs[name]["init_from"] == "tt_dense_base"
        assert _steps(specs[name]) == sc["finetune_steps"]
    total = _steps(specs["tt_dense_base"]) + _steps(specs["tt_dense"])
    for name in ("convrnnt", "lstm_rnnt", "conformer"):
        assert "init_from" not in specs[name] and _steps(specs[name]) == total
    cfg = exp.load_run_config(specs["tt_amortized_w2"], quick=False, workdir=tmp_path)
    assert cfg.loss.endswith("2*compute_cost") and cfg.train.init_from == str(
        tmp_path / "tt_dense_base")
    assert cfg.model.encoder.arbitrator_hidden > 0


def _result(name, kind, wer, executed, weight=0.0):
    flops = None if executed is None else {
        "executed": executed, "executed/attention": executed * 0.25,
        "dense/attention": 25.0, "executed/ffn": executed * 0.5, "dense/ffn": 50.0}
    return {"name": name, "kind": kind, "compute_weight": weight, "wer": wer, "cer": wer / 2,
            "intent_accuracy": 0.5, "params": 10, "gflops_per_audio_second": 0.1,
            "block_flops": flops, "steps": 6, "init_from": None}


def test_results_files(exp, tmp_path):
    results = [_result("tt_dense", "dense", 0.40, 100.0),
               _result("tt_amortized_w2", "amortized", 0.42, 40.0, 2.0),
               _result("conformer", "encoder", 0.38, None)]
    tables = exp.write_results(results, quick=False, out_dir=tmp_path, scale="small")
    rows = {r["name"]: r for r in json.loads((tmp_path / "amortized_compute.json").read_text())}
    am = rows["tt_amortized_w2"]
    assert am["relative_compute"] == pytest.approx(0.4)
    assert am["relative_wer_change"] == pytest.approx(0.05)
    assert am["compute_weight"] == 2.0 and am["kind"] == "amortized" and am["scale"] == "small"
    assert am["component_compute"] == pytest.approx({"attention": 0.4, "ffn": 0.4})
    encoders = {r["name"]: r for r in json.loads((tmp_path / "encoders.json").read_text())}
    assert set(encoders) == {"tt_dense", "conformer"}
    assert {"params", "gflops_per_audio_second", "wer"} <= set(encoders["conformer"])
    assert "| tt_amortized_w2 | amortized | 2 | 0.400 | 60.0% |" in tables


def test_paired_bootstrap(exp):
    base = {f"u{i}": (i % 3, 5) for i in range(40)}
    assert exp.paired_bootstrap(base, base) == (0.0, 0.0)
    worse = {k: (e + 1, n) for k, (e, n) in base.items()}
    lo, hi = exp.paired_bootstrap(base, worse)
    assert 0.5 < lo <= hi  # 40 extra errors on 40 base errors: +100%, every resample > 0


def test_seed_runs(exp, tmp_path):
    specs = {s["name"]: s for s in exp.run_specs([2.0, 8.0, 32.0], "small", seed=1)}
    assert "tt_dense_base" in specs and "seed=1" not in specs["tt_dense_base"]["overrides"]
    am = specs["tt_amortized_w8_s1"]
    assert am["init_from"] == "tt_dense_base" and am["overrides"][-1] == "seed=1"
    assert exp.load_run_config(am, quick=False, workdir=tmp_path).seed == 1


def test_quick_plan_loads(exp, tmp_path):
    """--quick keeps the plan's structure (warm starts, weights, seeds) on the tiny variants."""
    for spec in exp.run_specs([2.0, 8.0, 32.0], "small", seed=1):
        cfg = exp.load_run_config(spec, quick=True, workdir=tmp_path)
        assert cfg.train.steps == 60
        assert (cfg.train.init_from is not None) == bool(spec.get("init_from"))
        assert cfg.seed == (0 if spec["kind"] == "base" else 1)
