"""Incremental user embeddings (jaxslu/personalization) on the simulated assistant log or
MovieLens-100K.

    jaxslu train --config configs/user_embeddings.py --workdir runs/ue_log --eval
    jaxslu train --config configs/user_embeddings.py --variant movielens \\
        --set data.options.path=/path/to/ml-100k --workdir runs/ue_ml --eval

Variants: "log" (default: the simulated assistant log, 2,000 users, test users held out),
"movielens" (next-item prediction, leave-one-out), each with a suffix selecting the model:
"+no_history" (the same network without the histories), "+sasrec" (SASRec-style baseline);
e.g. get_config("movielens+sasrec"). "tiny": seconds, for tests (a small simulated log).
"""
import dataclasses

from jaxslu.config import DataConfig, ExperimentConfig, OptimConfig, TrainConfig
from jaxslu.personalization.models import SasRecConfig, UserEmbeddingConfig


def get_config(variant: str = "log") -> ExperimentConfig:
    base, _, model = variant.partition("+")
    if base in ("log", "default", "tiny"):
        tiny = base == "tiny"
        cfg = ExperimentConfig(
            name="user_embeddings_log",
            task="user_embeddings",
            task_options={"max_events": 256, "max_words": 16,
                          "event_buckets": [32, 64, 128, 256]},
            model=UserEmbeddingConfig(dim=64, heads=2, slots=8, window=10, dropout=0.1),
            loss="sequence_ce",
            data=DataConfig(dataset="assistant_log",
                            options={"num_users": 60 if tiny else 2000, "sim_seed": 0,
                                     "sim_options": {"max_events": 250}},
                            batch_size=8 if tiny else 16, eval_batch_size=16,
                            eval_splits=("test",)),
            optim=OptimConfig(learning_rate=2e-3, warmup_steps=20 if tiny else 100,
                              weight_decay=0.01),
            train=TrainConfig(steps=30 if tiny else 800, log_every=10 if tiny else 100,
                              checkpoint_every=0 if tiny else 200),
            seed=0)
        if tiny:
            cfg = dataclasses.replace(cfg, name="user_embeddings_tiny",
                                      model=UserEmbeddingConfig(dim=32, heads=2, slots=4,
                                                                window=5, dropout=0.0))
    elif base == "movielens":
        cfg = ExperimentConfig(
            name="user_embeddings_movielens",
            task="user_embeddings",
            task_options={"max_events": 100, "max_words": 1, "exclude_seen": True,
                          "event_buckets": [32, 64, 100]},
            model=UserEmbeddingConfig(dim=64, heads=2, slots=8, window=10, event_text=False,
                                      dropout=0.2),
            loss="sequence_ce",
            data=DataConfig(dataset="movielens_seq", options={"path": ""}, batch_size=32,
                            eval_batch_size=64, eval_splits=("dev", "test")),
            optim=OptimConfig(learning_rate=1e-3, warmup_steps=100, weight_decay=0.01),
            train=TrainConfig(steps=1000, log_every=100, checkpoint_every=250),
            seed=0)
    else:
        raise ValueError(f"unknown variant {variant!r} of user_embeddings: use log, movielens "
                         "or tiny, optionally with +no_history or +sasrec")
    if model == "no_history":
        cfg = dataclasses.replace(cfg, name=cfg.name + "_no_history",
                                  model=dataclasses.replace(cfg.model, history=False))
    elif model == "sasrec":
        cfg = dataclasses.replace(cfg, name=cfg.name + "_sasrec", model=SasRecConfig(
            dim=cfg.model.dim, heads=cfg.model.heads, num_layers=2,
            max_len=max(cfg.task_options.get("event_buckets", [512])),
            dropout=cfg.model.dropout))
    elif model:
        raise ValueError(f"unknown model suffix +{model}: use +no_history or +sasrec")
    return cfg
