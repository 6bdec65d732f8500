"""Contextual rephrase detection (span prediction) on a simulated session log.

    jaxslu selflearn simulate --system runs/selflearn_system --out runs/selflearn/log
    jaxslu train --config configs/selflearn_rephrase.py --workdir runs/selflearn/rephrase \
        --set data.options.path=runs/selflearn/log --eval

Train on the log's train days, evaluate on its held-out days (other sessions, later in time).
get_config("tiny"): seconds, for tests.
"""
import dataclasses

from jaxslu.config import DataConfig, EvalConfig, ExperimentConfig, OptimConfig, TrainConfig
from jaxslu.nlu.models import TextEncoderConfig
from jaxslu.selflearn.rephrase import SpanConfig


def get_config(variant: str = "default") -> ExperimentConfig:
    cfg = ExperimentConfig(
        name="selflearn_rephrase",
        task="rephrase_detection",
        task_options={"max_len": 96, "min_word_count": 2, "max_span": 40},
        model=SpanConfig(encoder=TextEncoderConfig(num_layers=2, dim=128, heads=4, ff_mult=4,
                                                   dropout=0.1)),
        loss="span_ce",
        data=DataConfig(dataset="selflearn_rephrase",
                        options={"path": "runs/selflearn/log", "max_gap": 45.0,
                                 "max_candidates": 3},
                        train_split="train", eval_splits=("heldout",), batch_size=64,
                        eval_batch_size=256),
        optim=OptimConfig(learning_rate=1e-3, warmup_steps=200, weight_decay=0.01),
        train=TrainConfig(steps=1000, log_every=100, checkpoint_every=500),
        eval=EvalConfig(),
        seed=0,
    )
    if variant == "tiny":
        cfg = dataclasses.replace(
            cfg, name="selflearn_rephrase_tiny",
            model=SpanConfig(encoder=TextEncoderConfig(num_layers=1, dim=32, heads=2, ff_mult=2,
                                                       dropout=0.0)),
            data=dataclasses.replace(cfg.data, batch_size=16, eval_batch_size=64),
            train=TrainConfig(steps=60, log_every=20, checkpoint_every=60))
    elif variant != "default":
        raise ValueError(f"unknown variant {variant!r} of selflearn_rephrase: 'default' or 'tiny'")
    return cfg
