"""Context as input: joint text NLU that reads the device state, device type, time of day and
the user's recent domain beside the text (jaxslu/context, docs/context.md).

Data: `context_nlu` = the SLURP-style NLU mix (HWU64 train + SLURP devel's train part) with a
random context per example, plus seven families of context-dependent ambiguous requests ("what
is the temperature": the oven while it is on, the weather otherwise), 120 examples of each of
four paraphrases per family in training (about a quarter of the training set); tested on those
paraphrases in new contexts (`ambiguous_seen`) and on two other paraphrases (`ambiguous_test`).

    python scripts/context_experiment.py            # both variants, results/context.json
    jaxslu train --config configs/context_nlu.py --workdir runs/context/with_context --eval

Variants: "default" (= "with_context": task_options.context="input"), "without_context" (the
same model fed zeros in place of the context: task_options.context="blind"), "tiny" and
"tiny_without_context" (seconds, for tests). The model and schedule are those of
configs/slurp_nlu.py's default (a 2-layer Transformer from scratch, 1500 steps of batch 32).
"""
import dataclasses

from jaxslu.config import (DataConfig, EvalConfig, ExperimentConfig, OptimConfig, TokenizerConfig,
                           TrainConfig)
from jaxslu.nlu.models import NluConfig, TextEncoderConfig


def get_config(variant: str = "default") -> ExperimentConfig:
    blind = variant.endswith("without_context")
    base = variant.removesuffix("without_context").rstrip("_") or "default"
    if variant == "with_context":
        base = "default"
    cfg = ExperimentConfig(
        name="context_nlu" + ("_without_context" if blind else ""),
        task="nlu",
        task_options={"max_tokens": 48, "context": "blind" if blind else "input"},
        model=NluConfig(encoder=TextEncoderConfig(kind="transformer", num_layers=2, dim=128,
                                                  heads=4, ff_mult=4, dropout=0.1),
                        pooling="mean", head_dropout=0.1),
        loss="intent_ce + 0.5*domain_ce + slot_ce",
        loss_options={"intent_ce": {"label_smoothing": 0.1}},
        data=DataConfig(dataset="context_nlu", options={"per_phrase": 120, "test_per_phrase": 30,
                                                        "seed": 0},
                        train_split="train",
                        eval_splits=("ambiguous_seen", "ambiguous_test", "slurp_test"),
                        batch_size=32, eval_batch_size=128, label_buckets=(16, 24, 32, 48)),
        tokenizer=TokenizerConfig(kind="unigram", vocab_size=2000),
        optim=OptimConfig(learning_rate=1e-3, warmup_steps=200, weight_decay=0.05),
        train=TrainConfig(steps=1500, log_every=100, checkpoint_every=500),
        eval=EvalConfig(),
        seed=0,
    )
    if base == "tiny":
        cfg = dataclasses.replace(
            cfg, name=cfg.name + "_tiny",
            model=NluConfig(encoder=TextEncoderConfig(num_layers=1, dim=32, heads=2, ff_mult=2)),
            data=dataclasses.replace(cfg.data, options={"per_phrase": 8, "test_per_phrase": 4,
                                                        "seed": 0},
                                     batch_size=16, eval_batch_size=32),
            tokenizer=TokenizerConfig(kind="unigram", vocab_size=300),
            train=TrainConfig(steps=20, log_every=10, checkpoint_every=10))
    elif base != "default":
        raise ValueError(f"unknown variant {variant!r} of context_nlu: use 'default' "
                         "('with_context'), 'without_context', 'tiny' or 'tiny_without_context'")
    return cfg
