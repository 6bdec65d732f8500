"""Trained runs shared across integration modules (each trained once per test session).

`tiny_spoken_slurp_run`: configs/spoken_slurp.py "tiny" (3 steps, its corpus synthesized into a
fresh cache); `nlu_run`: a small text NLU run of configs/slurp_nlu.py (600 steps). The spoken
SLURP, NLU and cascade tests read them; tests that change a run work on their own copy.
"""
from pathlib import Path

import jax
import pytest

from jaxslu.config import load_config
from jaxslu.train.loop import train

ROOT = Path(__file__).resolve().parents[2]
ONE = jax.devices()[:1]


@pytest.fixture(scope="session")
def tiny_spoken_slurp_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("spoken_slurp_tiny")
    cfg = load_config(ROOT / "configs" / "spoken_slurp.py", "tiny",
                      [f"data.options.cache_dir={tmp / 'cache'}"])
    result = train(cfg, tmp / "run", progress=False, devices=ONE)
    return tmp / "run", result


@pytest.fixture(scope="session")
def nlu_run(tmp_path_factory):
    """A short real training: 600 steps of a small Transformer (under a minute on 2 cores)."""
    wd = tmp_path_factory.mktemp("nlu")
    cfg = load_config(ROOT / "configs" / "slurp_nlu.py", "tiny",
                      ["train.steps=600", "train.checkpoint_every=600", "train.log_every=100",
                       "model.encoder.dim=64", "model.encoder.num_layers=2",
                       "model.encoder.heads=4", "data.batch_size=32",
                       "optim.learning_rate=3e-3", "optim.warmup_steps=50"])
    result = train(cfg, wd, progress=False, devices=ONE)
    return wd, cfg, result
