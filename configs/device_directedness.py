"""Device-directedness: acoustic, semantic and fused classifiers of "was this said to the
assistant?" on the features of a trained E2E SLU run (jaxslu/directedness, docs/device_directedness.md).

    python scripts/directedness_experiment.py --e2e runs/spoken_nlu --nlu runs/slurp_nlu
    jaxslu train --config configs/device_directedness.py --variant acoustic \\
        --set data.options.path=runs/directedness/features --workdir runs/directedness/acoustic --eval

data.options.path is the features folder that scripts/directedness_experiment.py writes (default
runs/directedness/features, relative to where the command runs).

Variants: "fused" (default: both feature sets), "acoustic" (pooled encoder states and duration),
"semantic" (ASR hypothesis words, its likelihood, intent confidences); "tiny" (a few steps, for
tests). Every variant is the same logistic regression (model.hidden=0), so the comparison is
about the inputs alone: 600 full-batch-sized steps of batch 256 with AdamW and weight decay.
"""
import dataclasses

from jaxslu.config import DataConfig, EvalConfig, ExperimentConfig, OptimConfig, TrainConfig
from jaxslu.directedness.task import DirectednessConfig

FEATURES = "runs/directedness/features"


def get_config(variant: str = "fused") -> ExperimentConfig:
    inputs = {"fused": "both", "default": "both", "acoustic": "acoustic", "semantic": "semantic",
              "tiny": "both"}.get(variant)
    if inputs is None:
        raise ValueError(f"unknown variant {variant!r} of device_directedness: use 'fused', "
                         "'acoustic', 'semantic' or 'tiny'")
    kind = "fused" if inputs == "both" else inputs
    cfg = ExperimentConfig(
        name=f"device_directedness_{kind}",
        task="directedness",
        model=DirectednessConfig(inputs=inputs, hidden=0, dropout=0.1),
        loss="directed_bce",
        data=DataConfig(dataset="directedness_features", options={"path": FEATURES},
                        train_split="train", eval_splits=("test",), batch_size=256,
                        eval_batch_size=512),
        optim=OptimConfig(learning_rate=1e-2, warmup_steps=50, weight_decay=0.05),
        train=TrainConfig(steps=600, log_every=100, checkpoint_every=600),
        eval=EvalConfig(),
        seed=0,
    )
    if variant == "tiny":
        cfg = dataclasses.replace(cfg, name="device_directedness_tiny",
                                  data=dataclasses.replace(cfg.data, batch_size=8,
                                                           eval_batch_size=16),
                                  train=TrainConfig(steps=20, log_every=10, checkpoint_every=20))
    return cfg
