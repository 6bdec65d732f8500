"""Contrastive KGAT on MovieLens-100K with RecBole's Freebase knowledge graph.

    jaxslu train --config configs/kgat_movielens.py --workdir runs/kgat_ml --eval \
        --set data.options.path=/path/to/recbole-1.2.1-py3-none-any.whl

The data set is read where you have it (never bundled: its terms forbid redistribution):
`data.options.path` (the RecBole wheel or its atomic files), else $JAXSLU_MOVIELENS, else an
installed `recbole` package. Implicit feedback, per-user time-ordered 80/20 split with the last
10% of train as validation (jaxslu/recommendation/data.py).

get_config(variant): "contrastive_kgat" (default: KGAT + graph InfoNCE between two views with
edge and node dropout), "kgat" (no contrast), "bpr_mf" (matrix factorization, no graph), "tiny"
(seconds, for tests; contrastive KGAT with small sizes). scripts/recommendation_experiment.py
trains the three kinds with the same split and seed.
"""
import dataclasses

from jaxslu.config import DataConfig, EvalConfig, ExperimentConfig, OptimConfig, TrainConfig
from jaxslu.recommendation.models import BprMfConfig, KgatConfig

VARIANTS = ("contrastive_kgat", "kgat", "bpr_mf", "tiny")


def base(name: str, dataset: str, options: dict, *, steps: int, batch_size: int,
         checkpoint_every: int) -> ExperimentConfig:
    return ExperimentConfig(
        name=name,
        task="kgat",
        model=KgatConfig(dim=64, layer_dims=(64, 32), message_dropout=0.1, contrastive=True,
                         edge_dropout=0.2, node_dropout=0.1, temperature=0.2),
        loss="bpr + 0.1*transr + 0.05*graph_infonce",
        loss_options={"bpr": {"l2": 1e-5}, "transr": {"l2": 1e-5}},
        data=DataConfig(dataset=dataset, options=options, train_split="train",
                        eval_splits=("valid", "test"), batch_size=batch_size,
                        eval_batch_size=batch_size, num_threads=0, prefetch=0),
        optim=OptimConfig(learning_rate=5e-3, warmup_steps=20, decay="cosine",
                          weight_decay=0.0, clip_norm=5.0),
        train=TrainConfig(steps=steps, log_every=10, checkpoint_every=checkpoint_every,
                          keep_checkpoints=100),
        eval=EvalConfig(options={"k": 20}),
        seed=0,
    )


def variant_of(cfg: ExperimentConfig, variant: str, tiny: dict) -> ExperimentConfig:
    if variant == "contrastive_kgat":
        return cfg
    if variant == "kgat":
        return dataclasses.replace(cfg, name=cfg.name.replace("contrastive_kgat", "kgat"),
                                   model=dataclasses.replace(cfg.model, contrastive=False),
                                   loss="bpr + 0.1*transr")
    if variant == "bpr_mf":
        return dataclasses.replace(cfg, name=cfg.name.replace("contrastive_kgat", "bpr_mf"),
                                   model=BprMfConfig(dim=cfg.model.dim), loss="bpr",
                                   loss_options={"bpr": {"l2": 1e-5}})
    if variant == "tiny":
        return dataclasses.replace(
            cfg, name=cfg.name.replace("contrastive_kgat", "tiny"),
            model=dataclasses.replace(cfg.model, dim=16, layer_dims=(16, 8)),
            data=dataclasses.replace(cfg.data, batch_size=64, eval_batch_size=64,
                                     options={**cfg.data.options, **tiny}),
            optim=dataclasses.replace(cfg.optim, learning_rate=1e-2, warmup_steps=10),
            train=TrainConfig(steps=150, log_every=50, checkpoint_every=150))
    raise ValueError(f"unknown variant {variant!r}: use one of {VARIANTS}")


def get_config(variant: str = "contrastive_kgat") -> ExperimentConfig:
    cfg = base("kgat_movielens_contrastive_kgat", "movielens_kg", {"path": None},
               steps=300, batch_size=4096, checkpoint_every=50)
    return variant_of(cfg, variant, tiny={})
