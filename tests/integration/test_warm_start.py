"""Warm start (`train.init_from`): a new run starts from another run's parameters where path and
shape match, keeps its own initialization elsewhere, reuses the source's tokenizer, and refuses
a shape mismatch by name."""
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxslu.config import load_config
from jaxslu.train import warm_start
from jaxslu.train.loop import train

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "fsdd_slu.py"
ONE_DEVICE = jax.devices()[:1]


def _cfg(*overrides):
    return load_config(CONFIG, "tiny", ["train.steps=2", "train.log_every=1",
                                        "train.checkpoint_every=2", *overrides])


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 2-step run without the CTC head: the warm-started model below has one more head."""
    workdir = tmp_path_factory.mktemp("source")
    result = train(_cfg("model.ctc_head=False", "loss=rnnt + 0.5*intent_ce"), workdir,
                   progress=False, devices=ONE_DEVICE)
    return workdir, warm_start.flat_params(jax.device_get(result.state.params))


def test_warm_start_loads_shared_params_and_keeps_new_ones(source, tmp_path):
    src_dir, src = source
    cfg = _cfg(f"train.init_from={src_dir}", "train.steps=1")
    init = train(_cfg("train.steps=0"), tmp_path / "fresh", progress=False, devices=ONE_DEVICE)
    init_flat = warm_start.flat_params(jax.device_get(init.state.params))
    new_only = sorted(set(init_flat) - set(src))
    assert new_only and all("ctc" in k for k in new_only), new_only

    from jaxslu.task import get_task
    from jaxslu.train.loop import make_trainer, prepare_assets
    (tmp_path / "warm").mkdir()
    task = get_task(cfg)
    warm_start.copy_assets(src_dir, tmp_path / "warm", task.asset_files)
    assets = prepare_assets(task, tmp_path / "warm")
    state = make_trainer(cfg, task.model_kwargs(assets), ONE_DEVICE).init_state()
    params, info = warm_start.warm_start_params(state.params, src_dir)
    flat = warm_start.flat_params(jax.device_get(params))
    assert info["loaded"] == len(src) and info["kept_at_init"] == new_only
    for k, v in src.items():
        np.testing.assert_array_equal(flat[k], v)
    for k in new_only:  # same seed, same init as the fresh run
        np.testing.assert_array_equal(flat[k], init_flat[k])
    assert ((tmp_path / "warm" / "tokenizer.model").read_bytes()
            == (src_dir / "tokenizer.model").read_bytes())

    # Through the training loop: one step from the loaded weights, then a normal run whose
    # resume ignores init_from.
    result = train(cfg, tmp_path / "run", progress=False, devices=ONE_DEVICE)
    assert int(result.state.step) == 1 and np.isfinite(result.last_metrics["loss/total"])
    resumed = train(cfg, tmp_path / "run", progress=False, devices=ONE_DEVICE)
    assert resumed.steps_run == 0


def test_warm_start_shape_mismatch_is_named(source, tmp_path):
    src_dir, _ = source
    cfg = _cfg(f"train.init_from={src_dir}", "model.joint_dim=48")
    with pytest.raises(ValueError, match=r"train.init_from=.*parameter \S+ is float32\[32\] there "
                       r"but float32\[48\] in this model"):
        train(cfg, tmp_path, progress=False, devices=ONE_DEVICE)


def test_warm_start_from_a_folder_without_checkpoints(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        train(_cfg(f"train.init_from={tmp_path / 'empty'}"), tmp_path / "run", progress=False,
              devices=ONE_DEVICE)


def test_warm_start_from_a_run_without_checkpoint(source, tmp_path):
    src_dir, _ = source
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("tokenizer.model", "labels.json"):
        (bare / name).write_bytes((src_dir / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="no saved checkpoint"):
        train(_cfg(f"train.init_from={bare}"), tmp_path / "run", progress=False,
              devices=ONE_DEVICE)
