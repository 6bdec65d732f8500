"""Multi-party streaming ASR on simulated meetings of real speech (jaxslu/multiparty,
docs/multiparty.md): the separator-transducer-segmenter against a single-channel transducer.

    python scripts/multiparty_experiment.py           # both models, results/multiparty.json
    jaxslu train --config configs/multiparty.py --workdir runs/multiparty/sts --eval
    jaxslu train --config configs/multiparty.py --variant baseline --workdir runs/multiparty/baseline --eval

Data: meetings of 2-4 speakers (2-4 turns of 1-3 words each, meeting overlap target 0-40%, at
most two speakers at once) mixed from the bundled FSDD recordings (real speech, 8 kHz): training
meetings from the standard training recordings, test meetings from the test recordings
(recordings 0-4 of every speaker and digit), deterministic from the seed.

Variants: "sts" (default; 2 output channels, loss "surt_rnnt + 0.5*speech_activity +
eot_latency" with FastEmit), "baseline" (1 channel: the same network without the separation,
one reference stream, the same loss terms), "tiny" / "tiny_baseline" (a few steps, for tests).
Everything is causal with frontend.normalize="none", so the models stream.
"""
import dataclasses

from jaxslu.config import (DataConfig, EvalConfig, ExperimentConfig, FrontendConfig, OptimConfig,
                           TrainConfig)
from jaxslu.models.transducer import EncoderConfig, PredictorConfig
from jaxslu.multiparty.model import SurtConfig

SAMPLE_RATE = 8000


def get_config(variant: str = "sts") -> ExperimentConfig:
    if variant not in ("sts", "default", "baseline", "tiny", "tiny_baseline"):
        raise ValueError(f"unknown variant {variant!r} of multiparty: use 'sts', 'baseline', "
                         "'tiny' or 'tiny_baseline'")
    channels = 1 if variant.endswith("baseline") else 2
    model = SurtConfig(
        encoder=EncoderConfig(kind="lstm", num_layers=2, dim=128, dropout=0.1, causal=True,
                              subsampling=4, subsampling_channels=32),
        predictor=PredictorConfig(embed_dim=32, hidden=64, layers=1),
        joint_dim=96, channels=channels, separator_layers=1)
    cfg = ExperimentConfig(
        name="multiparty_" + ("baseline" if channels == 1 else "sts"),
        task="multiparty",
        model=model,
        loss="surt_rnnt + 0.5*speech_activity + eot_latency",
        loss_options={"surt_rnnt": {"fastemit_lambda": 0.005},
                      "eot_latency": {"alpha": 0.05, "buffer": 4}},
        data=DataConfig(dataset="meetings",
                        options={"source": "fsdd", "sample_rate": SAMPLE_RATE,
                                 "num_meetings": {"train": 6000, "test": 300}, "seed": 0},
                        batch_size=16, eval_batch_size=32, bucket_seconds=(4.0, 6.0, 9.0),
                        label_buckets=(16, 32)),
        frontend=FrontendConfig(sample_rate=SAMPLE_RATE, num_mels=40, fmax=3800.0,
                                normalize="none", freq_mask_width=6, time_masks=2),
        optim=OptimConfig(learning_rate=2e-3, warmup_steps=200, weight_decay=1e-2),
        train=TrainConfig(steps=1500, log_every=50, checkpoint_every=250),
        eval=EvalConfig(decode="greedy"),
        seed=0,
    )
    if variant.startswith("tiny"):
        cfg = dataclasses.replace(
            cfg,
            model=dataclasses.replace(
                model, encoder=dataclasses.replace(model.encoder, num_layers=1, dim=32,
                                                   subsampling_channels=8),
                predictor=PredictorConfig(embed_dim=8, hidden=16, layers=1), joint_dim=16),
            data=dataclasses.replace(
                cfg.data, batch_size=4, eval_batch_size=4, bucket_seconds=(9.0,),
                options={**cfg.data.options, "num_meetings": {"train": 16, "test": 4}}),
            frontend=dataclasses.replace(cfg.frontend, num_mels=16),
            optim=dataclasses.replace(cfg.optim, warmup_steps=2),
            train=TrainConfig(steps=4, log_every=2, checkpoint_every=4))
    return cfg
