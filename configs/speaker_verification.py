"""Speaker verification (ECAPA-TDNN-lite, AAM-softmax) on the synthetic eSpeak NG speaker panel
+ FSDD, with fair adversarial reweighting.

    jaxslu train --config configs/speaker_verification.py --workdir runs/fairness/sv_default --eval
    jaxslu train --config configs/speaker_verification.py:arw --workdir runs/fairness/sv_arw --eval
    jaxslu train --config configs/speaker_verification.py:pairwise_arw \
        --workdir runs/fairness/sv_pairwise_arw --eval
    python scripts/fairness_sv_experiment.py  # all three: results/fairness/speaker_verification.json

Variants: "default" (baseline: aam_softmax), "arw" (adversarially reweighted AAM-softmax; the
adversary is a parameter group that maximizes), "pairwise_arw" (aam_softmax + a pair loss whose
pairs weigh the sum of their samples' adversarial weights, the adversary seeing k-means regions),
"pairwise" (the ablation: aam_softmax + the same pair loss with every weight 1, no adversary:
what pairwise_arw gains from the pair loss alone), "tiny" / "tiny_arw" / "tiny_pairwise_arw" /
"tiny_pairwise" (tests: a small panel and model, seconds to train).
All variants train on the same batches (same seed, same data) for the same number of steps.
"""
import dataclasses

from jaxslu.config import (DataConfig, EvalConfig, ExperimentConfig, FrontendConfig, OptimConfig,
                           TrainConfig)
from jaxslu.fairness.verification import EcapaConfig

AAM = {"margin": 0.2, "scale": 30.0}
ADVERSARY_GROUP = {"name": "adversary", "pattern": "^adversary/", "maximize": True,
                   "learning_rate": 1e-3, "weight_decay": 0.0}
VARIANTS = ("default", "arw", "pairwise_arw", "pairwise", "tiny", "tiny_arw",
            "tiny_pairwise_arw", "tiny_pairwise")
PAIR = {"scale": 10.0, "bias": 0.4}


def _adversarial(cfg: ExperimentConfig, kind: str) -> ExperimentConfig:
    if kind == "pairwise":  # no adversary: every pair weighs 2
        return dataclasses.replace(
            cfg, name=cfg.name + "_pairwise", loss="aam_softmax + pairwise_arw",
            loss_options={"aam_softmax": dict(AAM),
                          "pairwise_arw": {**PAIR, "adversarial": False}})
    optim = dataclasses.replace(cfg.optim, groups=(dict(ADVERSARY_GROUP),))
    if kind == "arw":
        return dataclasses.replace(
            cfg, name=cfg.name + "_arw", loss="arw", loss_options={"arw": dict(AAM)},
            model=dataclasses.replace(cfg.model, adversary_hidden=64), optim=optim)
    return dataclasses.replace(
        cfg, name=cfg.name + "_pairwise_arw", loss="aam_softmax + pairwise_arw",
        loss_options={"aam_softmax": dict(AAM),
                      "pairwise_arw": dict(PAIR)},
        model=dataclasses.replace(cfg.model, adversary_hidden=64, kmeans_regions=8),
        optim=optim)


def get_config(variant: str = "default") -> ExperimentConfig:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of speaker_verification; use one of "
                         f"{', '.join(VARIANTS)}")
    cfg = ExperimentConfig(
        name="speaker_verification",
        task="speaker_verification",
        task_options={"views": 2, "trials_per_cell": 400, "fsdd_trials": 1000, "trial_seed": 0},
        # ECAPA-TDNN-lite sized for 2 CPU cores: 96 channels, 20 ms frames after the first
        # convolution, 1.5 s training crops (measured: ~0.5 s per step of 64 utterances there)
        model=EcapaConfig(channels=96, dilations=(2, 3, 4), se_channels=48, mfa_channels=256,
                          attention_channels=32, embed_dim=192, frame_stride=2,
                          crop_seconds=1.5, feature_norm="level"),
        loss="aam_softmax",
        loss_options={"aam_softmax": dict(AAM)},
        data=DataConfig(dataset="speaker_panel",
                        options={"num_speakers": 192, "utterances_per_speaker": 20, "seed": 0,
                                 "noise_snr_db": [15.0, 35.0], "max_seconds": 4.0,
                                 "fsdd_train_per_speaker": 40},
                        train_split="train", eval_splits=("test", "fsdd_test"), batch_size=32,
                        eval_batch_size=64, bucket_seconds=(2.0, 4.0)),
        frontend=FrontendConfig(num_mels=64, normalize="none"),
        optim=OptimConfig(learning_rate=2e-3, warmup_steps=60, weight_decay=1e-2),
        train=TrainConfig(steps=600, log_every=50, checkpoint_every=200),
        eval=EvalConfig(),
        seed=0,
    )
    if variant.startswith("tiny"):
        cfg = dataclasses.replace(
            cfg, name="speaker_verification_tiny",
            task_options={"views": 2, "trials_per_cell": 20, "fsdd_trials": 100,
                          "trial_seed": 0},
            model=EcapaConfig(channels=32, dilations=(2, 3), se_channels=16, mfa_channels=64,
                              attention_channels=16, embed_dim=32, crop_seconds=1.0,
                              feature_norm="level"),
            data=dataclasses.replace(
                cfg.data, options={"num_speakers": 24, "utterances_per_speaker": 6, "seed": 0,
                                   "voices": ["en-us", "en-gb-scotland"],
                                   "noise_snr_db": [20.0, 30.0], "max_seconds": 2.0,
                                   "min_words": 4, "max_words": 7,
                                   "fsdd_train_per_speaker": 10},
                batch_size=8, eval_batch_size=32, bucket_seconds=(1.0, 2.5)),
            frontend=FrontendConfig(num_mels=40, normalize="none"),
            optim=dataclasses.replace(cfg.optim, learning_rate=3e-3, warmup_steps=5),
            train=TrainConfig(steps=30, log_every=10, checkpoint_every=30))
        variant = variant[len("tiny_"):] if variant != "tiny" else "default"
    if variant in ("arw", "pairwise_arw", "pairwise"):
        cfg = _adversarial(cfg, variant)
    return cfg
