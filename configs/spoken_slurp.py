"""End-to-end SLU transducer on spoken SLURP: the SLURP devel sentences spoken by synthetic
speakers with distinct English accents (eSpeak NG), with scenario/action/intent and slot labels.

    jaxslu train --config configs/spoken_slurp.py --workdir runs/slurp --eval

The corpus is rendered on first use into the cache (~/.cache/jaxslu or $JAXSLU_CACHE; see
`jaxslu synth-slurp`). The report gives WER, intent accuracy and SLU-F1 per accent and per speaker.
get_config("tiny"): a few utterances and steps, for tests.
"""
import dataclasses

from jaxslu.config import (DataConfig, EvalConfig, ExperimentConfig, FrontendConfig, OptimConfig,
                           TokenizerConfig, TrainConfig)
from jaxslu.models.transducer import EncoderConfig, PredictorConfig, TransducerConfig


def get_config(variant: str = "default") -> ExperimentConfig:
    model = TransducerConfig(
        encoder=EncoderConfig(kind="conformer", num_layers=4, dim=144, heads=4, ff_mult=4,
                              conv_kernel=15, dropout=0.1, causal=False),
        predictor=PredictorConfig(embed_dim=128, hidden=160, layers=1),
        joint_dim=160, ctc_head=True, intent_head=True, slot_head=True)
    cfg = ExperimentConfig(
        name="spoken_slurp",
        model=model,
        loss="rnnt + 0.3*ctc + 0.5*intent_ce + 0.5*slot_ce",
        data=DataConfig(dataset="spoken_slurp",
                        options={"num_speakers": 16, "utterances": None, "seed": 0},
                        eval_splits=("test",), batch_size=16, eval_batch_size=32,
                        bucket_seconds=(2.5, 4.5, 7.5), label_buckets=(24, 48, 96)),
        frontend=FrontendConfig(num_mels=80),
        tokenizer=TokenizerConfig(kind="unigram", vocab_size=256),
        optim=OptimConfig(learning_rate=1.5e-3, warmup_steps=500),
        train=TrainConfig(steps=6000, log_every=100, checkpoint_every=1000),
        eval=EvalConfig(decode="greedy"),
    )
    if variant == "tiny":
        cfg = dataclasses.replace(
            cfg,
            model=dataclasses.replace(
                model, encoder=dataclasses.replace(model.encoder, num_layers=1, dim=32, heads=2,
                                                   conv_kernel=5),
                predictor=PredictorConfig(embed_dim=16, hidden=32, layers=1), joint_dim=32),
            data=dataclasses.replace(cfg.data, options={"num_speakers": 4, "utterances": 40,
                                                        "seed": 0},
                                     batch_size=4, eval_batch_size=8,
                                     bucket_seconds=(4.0, 10.0), label_buckets=(32, 96)),
            frontend=dataclasses.replace(cfg.frontend, num_mels=32),
            tokenizer=TokenizerConfig(kind="unigram", vocab_size=64),
            train=TrainConfig(steps=3, log_every=1, checkpoint_every=3))
    elif variant != "default":
        raise ValueError(f"unknown variant {variant!r} of spoken_slurp: use 'default' or 'tiny'")
    return cfg
