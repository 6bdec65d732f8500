"""The online-rewriting retriever (jaxslu/selflearn/retrieval.py): a dual encoder trained with
in-batch negatives on (failed request -> successful rephrase) pairs mined from the simulated
assistant log.

    # pairs: jaxslu.selflearn.retrieval.write_pairs(pairs_from_sessions(sessions), "runs/pairs")
    jaxslu train --config configs/selflearn_rewrite.py --set data.options.path=runs/pairs \\
        --workdir runs/selflearn_rewrite --eval

get_config("default"): global batch 128 (the least the task accepts: in-batch negatives get worse
with smaller batches), two 2-layer dim-128 Transformer encoders (feed-forward 2x), texts cut at
24 tokens (1.4% of the mined texts are longer), 800 steps: 0.55-1.0 s/step on 2 CPU cores, i.e.
8-13 minutes (measured 726 s with another training sharing the cores; held-out recall@1 0.18,
recall@10 0.52 against 5,787 targets). get_config("tiny"): seconds, for tests; its small
batch needs `task_options.allow_small_batch=True`.
"""
import dataclasses

from jaxslu.config import DataConfig, ExperimentConfig, OptimConfig, TokenizerConfig, TrainConfig
from jaxslu.nlu.models import TextEncoderConfig
# importing the module registers the task, model, loss term, data source and evaluator
from jaxslu.selflearn.retrieval import MIN_BATCH_SIZE, DualEncoderConfig


def get_config(variant: str = "default") -> ExperimentConfig:
    cfg = ExperimentConfig(
        name="selflearn_rewrite",
        task="rewrite_retrieval",
        task_options={"max_tokens": 24},
        model=DualEncoderConfig(encoder=TextEncoderConfig(kind="transformer", num_layers=2,
                                                          dim=128, heads=4, ff_mult=2,
                                                          dropout=0.1),
                                shared=False, proj_dim=128),
        loss="in_batch_nce",
        loss_options={"in_batch_nce": {"temperature": 0.05}},
        data=DataConfig(dataset="rewrite_pairs", options={"path": ""}, train_split="train",
                        eval_splits=("heldout",), batch_size=MIN_BATCH_SIZE, eval_batch_size=256,
                        label_buckets=(12, 16, 24)),
        tokenizer=TokenizerConfig(kind="unigram", vocab_size=2000),
        optim=OptimConfig(learning_rate=1e-3, warmup_steps=100, weight_decay=0.01),
        train=TrainConfig(steps=800, log_every=100, checkpoint_every=400),
        seed=0)
    if variant == "tiny":
        cfg = dataclasses.replace(
            cfg, name="selflearn_rewrite_tiny",
            task_options={"max_tokens": 16, "allow_small_batch": True},
            model=DualEncoderConfig(encoder=TextEncoderConfig(num_layers=1, dim=32, heads=2,
                                                              ff_mult=2, dropout=0.0),
                                    shared=True, proj_dim=32),
            loss_options={"in_batch_nce": {"temperature": 0.1}},
            data=dataclasses.replace(cfg.data, batch_size=32, eval_batch_size=64,
                                     label_buckets=(8, 16)),
            tokenizer=TokenizerConfig(kind="unigram", vocab_size=200),
            optim=OptimConfig(learning_rate=3e-3, warmup_steps=10, weight_decay=0.0),
            train=TrainConfig(steps=120, log_every=40, checkpoint_every=0))
    elif variant != "default":
        raise ValueError(f"unknown variant {variant!r} of selflearn_rewrite: 'default' or 'tiny'")
    if cfg.data.batch_size < MIN_BATCH_SIZE and not cfg.task_options.get("allow_small_batch"):
        raise ValueError(f"{cfg.name}: data.batch_size={cfg.data.batch_size} < {MIN_BATCH_SIZE} "
                         "needs task_options.allow_small_batch=True")
    return cfg
