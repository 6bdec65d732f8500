"""Failure-point isolation (the earliest irrecoverable failure of a turn) on a simulated log.

    jaxslu selflearn simulate --system runs/selflearn_system --out runs/selflearn/log
    jaxslu train --config configs/selflearn_isolation.py --workdir runs/selflearn/isolation \
        --set data.options.path=runs/selflearn/log --eval

Train on the log's train days, evaluate on its held-out days (other sessions, later in time).
get_config("tiny"): seconds, for tests.
"""
import dataclasses

from jaxslu.config import DataConfig, EvalConfig, ExperimentConfig, OptimConfig, TrainConfig
from jaxslu.nlu.models import TextEncoderConfig
from jaxslu.selflearn.isolation import IsolationConfig


def get_config(variant: str = "default") -> ExperimentConfig:
    cfg = ExperimentConfig(
        name="selflearn_isolation",
        task="failure_isolation",
        task_options={"max_len": 96, "min_word_count": 2},
        model=IsolationConfig(encoder=TextEncoderConfig(num_layers=2, dim=128, heads=4,
                                                        ff_mult=4, dropout=0.1)),
        loss="failure_ce",
        loss_options={"failure_ce": {"balanced": True}},
        data=DataConfig(dataset="selflearn_turns",
                        options={"path": "runs/selflearn/log"},
                        train_split="train", eval_splits=("heldout",), batch_size=64,
                        eval_batch_size=256),
        optim=OptimConfig(learning_rate=1e-3, warmup_steps=200, weight_decay=0.01),
        train=TrainConfig(steps=1000, log_every=100, checkpoint_every=500),
        eval=EvalConfig(),
        seed=0,
    )
    if variant == "tiny":
        cfg = dataclasses.replace(
            cfg, name="selflearn_isolation_tiny",
            model=IsolationConfig(encoder=TextEncoderConfig(num_layers=1, dim=32, heads=2,
                                                            ff_mult=2, dropout=0.0)),
            data=dataclasses.replace(cfg.data, batch_size=16, eval_batch_size=64),
            train=TrainConfig(steps=60, log_every=20, checkpoint_every=60))
    elif variant != "default":
        raise ValueError(f"unknown variant {variant!r} of selflearn_isolation: 'default' or 'tiny'")
    return cfg
