"""CLINC150 (full) intent classification with out-of-scope detection (Larson et al., "An
Evaluation Dataset for Intent Classification and Out-of-Scope Prediction", EMNLP 2019).

Train on the 150 in-scope intents (+ their 10 domains); the out-of-scope threshold on the intent
confidence is calibrated on "val+oos_val" (jaxslu/nlu/evaluate.py) and applied to
"test+oos_test": in-scope accuracy and out-of-scope recall are reported.

    jaxslu train --config configs/clinc_oos.py --workdir runs/clinc --eval
get_config("minilm"): the all-MiniLM-L6-v2 encoder fine-tuned; "tiny": seconds, for tests.
"""
import dataclasses

from jaxslu.config import (DataConfig, EvalConfig, ExperimentConfig, OptimConfig, TokenizerConfig,
                           TrainConfig)
from jaxslu.nlu.models import NluConfig, TextEncoderConfig


def get_config(variant: str = "default") -> ExperimentConfig:
    cfg = ExperimentConfig(
        name="clinc_oos",
        task="nlu",
        task_options={"max_tokens": 40, "oos_label": "oos"},
        model=NluConfig(encoder=TextEncoderConfig(kind="transformer", num_layers=2, dim=128,
                                                  heads=4, ff_mult=4, dropout=0.1),
                        pooling="mean", head_dropout=0.1, slot_head=False),
        loss="intent_ce + 0.5*domain_ce",
        loss_options={"intent_ce": {"label_smoothing": 0.1}},
        data=DataConfig(dataset="clinc150", train_split="train", eval_splits=("test+oos_test",),
                        batch_size=32, eval_batch_size=128, label_buckets=(16, 24, 40)),
        tokenizer=TokenizerConfig(kind="unigram", vocab_size=2000),
        optim=OptimConfig(learning_rate=1e-3, warmup_steps=200, weight_decay=0.05),
        train=TrainConfig(steps=1500, log_every=100, checkpoint_every=500),
        eval=EvalConfig(options={"calibration_split": "val+oos_val"}),
        seed=0,
    )
    if variant == "minilm":
        cfg = dataclasses.replace(
            cfg, name="clinc_oos_minilm",
            task_options={"max_tokens": 40, "oos_label": "oos", "pretrained": "all-MiniLM-L6-v2"},
            model=NluConfig(encoder=TextEncoderConfig(kind="bert", dropout=0.1), pooling="mean",
                            head_dropout=0.1, slot_head=False),
            optim=OptimConfig(learning_rate=1e-4, warmup_steps=100, weight_decay=0.01),
            data=dataclasses.replace(cfg.data, batch_size=32),
            train=TrainConfig(steps=800, log_every=50, checkpoint_every=200))
    elif variant == "tiny":
        cfg = dataclasses.replace(
            cfg, name="clinc_oos_tiny",
            model=NluConfig(encoder=TextEncoderConfig(num_layers=1, dim=32, heads=2, ff_mult=2),
                            slot_head=False),
            data=dataclasses.replace(cfg.data, batch_size=16, eval_batch_size=64),
            tokenizer=TokenizerConfig(kind="unigram", vocab_size=300),
            train=TrainConfig(steps=20, log_every=10, checkpoint_every=10))
    elif variant != "default":
        raise ValueError(f"unknown variant {variant!r} of clinc_oos: use 'default', 'minilm' or "
                         "'tiny'")
    return cfg
