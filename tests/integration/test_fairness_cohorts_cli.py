"""Fairness on a real (tiny) spoken-SLURP run: the tiny config's workdir (config, tokenizer,
labels, a checkpoint), evaluated, then both cohort methods through the CLI (geo from the
speakers' homes, embedding from the run's own pooled encoder states); and the mitigations meeting
in one fine-tuning from that run: the base's Fisher (`jaxslu fisher`), the `ewc` term,
oversampling one speaker (data.sample_weights) and cohort input (model.num_cohorts + the
cohort_input task option), trained for real for a few steps.

The checkpoint holds the step-0 parameters (the trainer's initialization, saved as `train` saves
a step): three training steps cannot learn either, and compiling the training step would take
minutes on two shared cores, while this checks only that the pieces meet (records -> cohorts,
the encoder embeddings, the JSON schema, the plots). The split scored is "train" (32 of the 40
utterances, all 4 speakers), so both methods have several speakers to group."""
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxslu import cli
from jaxslu.config import load_config, save_config
from jaxslu.eval import LoadedRun, evaluate_workdir
from jaxslu.fairness import cohorts as C
from jaxslu.task import get_task
from jaxslu.train.checkpoint import Checkpointer
from jaxslu.train.loop import make_trainer, prepare_assets, without_launch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("fairness")
    mp = pytest.MonkeyPatch()
    mp.setenv("JAXSLU_COMPILATION_CACHE", "0")
    cfg = load_config(ROOT / "configs" / "spoken_slurp.py", "tiny",
                      [f"data.options.cache_dir={tmp_path / 'cache'}"])
    work = tmp_path / "run"
    work.mkdir()
    save_config(without_launch(cfg), work / "config.json")
    task = get_task(cfg)
    assets = prepare_assets(task, work, task.open_source(cfg.data.train_split))
    state = make_trainer(cfg, task.model_kwargs(assets), jax.devices()[:1], task=task,
                         assets=assets).init_state()
    ckpt = Checkpointer(work / "checkpoints", keep=1)
    ckpt.save(0, state, None, {"step": 0})
    ckpt.wait()
    ckpt.close()
    yield cfg, work, tmp_path
    mp.undo()


def test_cohorts_cli_on_a_tiny_spoken_slurp_run(tiny_run, capsys):
    cfg, work, tmp_path = tiny_run
    out = tmp_path / "results"
    split = "train"
    evaluate_workdir(work, splits=[split], run=LoadedRun.from_workdir(
        work, devices=jax.devices()[:1]))
    records = C.read_records(work, split)
    speakers = {r["speaker"] for r in records}
    assert len(speakers) >= 3

    for method in ("geo", "embedding"):
        assert cli.main(["cohorts", "--workdir", str(work), "--split", split, "--method", method,
                         "--out", str(out), "--bootstrap", "200"]) == 0
        assert "relative gap" in capsys.readouterr().out
    doc = json.loads((out / "cohorts.json").read_text())
    assert [m["method"] for m in doc["methods"]] == ["geo", "embedding"]
    for m in doc["methods"]:
        assert {"method", "cohorts", "relative_gap", "bottom_share"} <= set(m)
        assert sum(c["utterances"] for c in m["cohorts"]) == len(records)
        assert {s for c in m["cohorts"] for s in c["speakers"]} == speakers
        for c in m["cohorts"]:
            assert {"name", "speakers", "utterances", "wer"} <= set(c)
        assert 0 < m["bottom_share"] <= 1
        assert set(m["plots"]) == {"map", "wer"}
        for name in m["plots"].values():
            assert (out / name).read_bytes()[:4] == b"\x89PNG"
            assert (work / name).is_file()
    geo, emb = doc["methods"]
    assert all(c["bounds"] for c in geo["cohorts"])
    assert emb["params"]["embeddings"] == "encoder"
    assert emb["params"]["dim"] == cfg.model.joint_dim
    assert emb["params"]["k"] == min(4, len(speakers)) == len(emb["cohorts"])
    # an unseen speaker's home falls in exactly one geo cohort
    assert 0 <= C.assign_region(geo["cohorts"], 51.5, -0.1) < len(geo["cohorts"])


def test_fisher_then_ewc_oversampling_and_cohort_input_fine_tune(tiny_run):
    from jaxslu.fairness.ewc import read_fisher
    from jaxslu.train.loop import train
    from jaxslu.train.warm_start import flat_params, load_source_params

    cfg, work, tmp_path = tiny_run
    assert cli.main(["fisher", "--workdir", str(work), "--examples", "6"]) == 0
    fisher, count = read_fisher(work / "fisher.npz")
    assert count == 6
    base, _ = load_source_params(work)
    assert set(fisher) == set(base)
    assert all(np.all(v >= 0) for v in fisher.values())
    assert sum(float(v.sum()) for v in fisher.values()) > 0

    regions = '{"regions": [[-1000, 50, -1000, 1000], [50, 1000, -1000, 1000]]}'
    ft = load_config(ROOT / "configs" / "spoken_slurp.py", "tiny", [
        f"data.options.cache_dir={tmp_path / 'cache'}", f"train.init_from={work}",
        f"loss={cfg.loss} + 10*ewc", f"loss_options.ewc.fisher={work / 'fisher.npz'}",
        'data.sample_weights={"key": "speaker", "weights": {"spk000": 5}}',
        f"task_options.cohort_input={regions}", "model.num_cohorts=2", "train.steps=2",
        "train.checkpoint_every=2"])
    res = train(ft, tmp_path / "ft", progress=False, devices=jax.devices()[:1])
    assert int(res.state.step) == 2
    assert np.isfinite(res.last_metrics["loss/ewc"]) and res.last_metrics["loss/ewc"] >= 0
    consts = res.state.constants["ewc"]
    # the anchors are the base run's parameters (the warm start), the cohort embedding is not
    # anchored (the base has none)
    anchors = {k: np.asarray(v) for k, v in consts["anchor"].items()}
    assert set(anchors) == set(base)
    for k in list(anchors)[:5]:
        np.testing.assert_array_equal(anchors[k], np.asarray(base[k]))
    tuned = flat_params(res.state.params)
    assert "cohort_embed/embedding" in tuned and "cohort_embed/embedding" not in anchors
    assert np.abs(np.asarray(tuned["cohort_embed/embedding"])).sum() > 0  # it trained
