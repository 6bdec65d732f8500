"""End-to-end SLU transducer on bundled FSDD (real spoken digits, 5 speakers).

Transcript = the digit word, intent = the digit. Standard split: recordings 0-4 of every digit and
speaker are the test set, 5-49 the training set. `jaxslu demo` trains this config.

    jaxslu train --config configs/fsdd_slu.py --workdir runs/fsdd
    get_config("ci"): a small model trained for a few hundred steps (the CI training test and the
      Colab quickstart); get_config("tiny"): a seconds-long variant for unit tests.
"""
from jaxslu.config import (DataConfig, EvalConfig, ExperimentConfig, FrontendConfig, OptimConfig,
                           TokenizerConfig, TrainConfig)
from jaxslu.models.transducer import EncoderConfig, PredictorConfig, TransducerConfig


def get_config(variant: str = "default") -> ExperimentConfig:
    model = TransducerConfig(
        encoder=EncoderConfig(kind="conformer", num_layers=2, dim=96, heads=4, ff_mult=4,
                              conv_kernel=15, dropout=0.1, causal=False,
                              subsampling=2),
        predictor=PredictorConfig(embed_dim=64, hidden=96, layers=1),
        joint_dim=96, ctc_head=True, intent_head=True, slot_head=False)
    cfg = ExperimentConfig(
        name="fsdd_slu",
        model=model,
        loss="rnnt + 0.3*ctc + 0.5*intent_ce",
        data=DataConfig(dataset="fsdd", batch_size=32, eval_batch_size=64,
                        bucket_seconds=(0.8, 1.2, 2.4), label_buckets=(8,)),
        frontend=FrontendConfig(num_mels=64, freq_mask_width=10, time_masks=2),
        tokenizer=TokenizerConfig(kind="char", vocab_size=32),
        optim=OptimConfig(learning_rate=2e-3, warmup_steps=150, weight_decay=1e-2),
        train=TrainConfig(steps=1200, log_every=50, checkpoint_every=400),
        eval=EvalConfig(decode="greedy"),
        seed=0,
    )
    if variant == "tiny":
        import dataclasses
        cfg = dataclasses.replace(
            cfg,
            model=dataclasses.replace(model, encoder=dataclasses.replace(
                model.encoder, num_layers=1, dim=32, heads=2, conv_kernel=5),
                predictor=PredictorConfig(embed_dim=16, hidden=32, layers=1), joint_dim=32),
            data=dataclasses.replace(cfg.data, batch_size=16, bucket_seconds=(0.8, 2.4)),
            frontend=dataclasses.replace(cfg.frontend, num_mels=32),
            train=TrainConfig(steps=20, log_every=10, checkpoint_every=10))
    elif variant == "ci":
        import dataclasses
        cfg = dataclasses.replace(
            cfg,
            name="fsdd_slu_ci",
            model=dataclasses.replace(model, encoder=dataclasses.replace(
                model.encoder, num_layers=2, dim=64, heads=4, conv_kernel=7),
                predictor=PredictorConfig(embed_dim=32, hidden=64, layers=1), joint_dim=64),
            data=dataclasses.replace(cfg.data, batch_size=16),
            frontend=dataclasses.replace(cfg.frontend, num_mels=40),
            optim=dataclasses.replace(cfg.optim, learning_rate=3e-3, warmup_steps=50),
            train=TrainConfig(steps=300, log_every=50, checkpoint_every=300))
    elif variant != "default":
        raise ValueError(f"unknown variant {variant!r} of fsdd_slu: use 'default', 'ci' or 'tiny'")
    return cfg
