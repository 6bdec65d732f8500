"""Context as input to the end-to-end SLU transducer: the intent head reads the device state,
device type, time of day and recent domain beside the audio (jaxslu/context, docs/context.md).

Data: `spoken_context` = the context benchmark spoken by the synthetic eSpeak NG panel (48
training speakers; every test split by 16 speakers never heard in training): the HWU64 / SLURP
requests of the 18 intents the ambiguous families can mean, each with a random context, plus 60
examples of each of the seven families' four training phrases ("what is the temperature": the
oven while it is on, the weather otherwise); tested on those phrases in new contexts
(`ambiguous_seen`), on two phrases per family never heard in training (`ambiguous_test`) and on
ordinary requests (`ordinary_test`).

    python scripts/context_experiment.py --model e2e   # both variants, results/context_slu.json
    jaxslu train --config configs/context_slu.py --workdir runs/context_slu/with_context --eval

Variants: "default" (= "with_context": task_options.context="input"), "without_context" (the
same transducer fed zeros in place of the context: task_options.context="blind"), "tiny" and
"tiny_without_context" (seconds, for tests). Loss: rnnt + 0.3*ctc + intent_ce; the context feeds
the intent head only (jaxslu/models/heads.py), so the transcript is the same model's either way.

Sizing: training utterances are short (median 1.1 s, 95 % 2.7 s, longest 7.8 s), so buckets of
1.5/2.5/4/8 s; a 3-layer Conformer of width 144 at 4x time reduction (25 frames/s).
"""
import dataclasses

from jaxslu.config import (DataConfig, EvalConfig, ExperimentConfig, FrontendConfig, OptimConfig,
                           TokenizerConfig, TrainConfig)
from jaxslu.models.transducer import EncoderConfig, PredictorConfig, TransducerConfig


def get_config(variant: str = "default") -> ExperimentConfig:
    blind = variant.endswith("without_context")
    base = variant.removesuffix("without_context").rstrip("_") or "default"
    if variant == "with_context":
        base = "default"
    model = TransducerConfig(
        encoder=EncoderConfig(kind="conformer", num_layers=3, dim=144, heads=4, ff_mult=4,
                              conv_kernel=15, dropout=0.1, causal=False, subsampling=4,
                              subsampling_channels=64),
        predictor=PredictorConfig(embed_dim=128, hidden=160, layers=1),
        joint_dim=160, ctc_head=True, intent_head=True, slot_head=False)
    cfg = ExperimentConfig(
        name="context_slu" + ("_without_context" if blind else ""),
        task="transducer_slu",
        task_options={"context": "blind" if blind else "input"},
        model=model,
        loss="rnnt + 0.3*ctc + intent_ce",
        data=DataConfig(dataset="spoken_context",
                        options={"per_phrase": 60, "test_per_phrase": 15, "seed": 0},
                        train_split="train",
                        eval_splits=("ambiguous_seen", "ambiguous_test", "ordinary_test"),
                        batch_size=16, eval_batch_size=32,
                        bucket_seconds=(1.5, 2.5, 4.0, 8.0), label_buckets=(16, 32, 64)),
        frontend=FrontendConfig(num_mels=80),
        tokenizer=TokenizerConfig(kind="unigram", vocab_size=256),
        optim=OptimConfig(learning_rate=1.5e-3, warmup_steps=300),
        train=TrainConfig(steps=1500, log_every=50, checkpoint_every=250),
        eval=EvalConfig(decode="greedy"),
        seed=0,
    )
    if base == "tiny":
        cfg = dataclasses.replace(
            cfg, name=cfg.name + "_tiny",
            model=dataclasses.replace(
                model, encoder=dataclasses.replace(model.encoder, num_layers=1, dim=32, heads=2,
                                                   conv_kernel=5, subsampling_channels=0),
                predictor=PredictorConfig(embed_dim=16, hidden=32, layers=1), joint_dim=32),
            data=dataclasses.replace(cfg.data, options={"per_phrase": 10, "test_per_phrase": 1,
                                                        "num_train_speakers": 8,
                                                        "num_test_speakers": 8, "seed": 0,
                                                        "limit_per_split": 24},
                                     batch_size=4, eval_batch_size=8,
                                     bucket_seconds=(3.0, 8.0), label_buckets=(32, 64)),
            frontend=dataclasses.replace(cfg.frontend, num_mels=32),
            tokenizer=TokenizerConfig(kind="unigram", vocab_size=64),
            optim=dataclasses.replace(cfg.optim, warmup_steps=2),
            train=TrainConfig(steps=4, log_every=2, checkpoint_every=4))
    elif base != "default":
        raise ValueError(f"unknown variant {variant!r} of context_slu: use 'default' "
                         "('with_context'), 'without_context', 'tiny' or 'tiny_without_context'")
    return cfg
