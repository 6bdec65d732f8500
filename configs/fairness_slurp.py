"""Fairness experiments on spoken SLURP: a base end-to-end SLU transducer on many synthetic
speakers (48 speakers over 8 accents, each sentence spoken by 3 of them, so every speaker has
utterances in every split), then fine-tunings toward the cohort it serves worst
(scripts/fairness_experiment.py; docs/fairness.md):

    jaxslu train --config configs/fairness_slurp.py --workdir runs/fairness/base --eval
    jaxslu cohorts --workdir runs/fairness/base --split test --method geo
    jaxslu fisher --workdir runs/fairness/base

Variants (each a fine-tuning; the script sets train.init_from to the base run and the cohort's
speakers / regions found by `jaxslu cohorts`):
  finetune      the worst cohort's training utterances only (data.sample_weights, others 0)
  ewc           the same + lambda/2 sum F (theta - theta*)^2 (loss term `ewc`, Fisher of the base)
  oversample    all training data, the worst cohort's utterances weighted up (data.sample_weights)
  cohort_input  all training data, cohort membership as a learned embedding added to the encoder
                input (model.num_cohorts, task option cohort_input)
  tiny          a few utterances and steps, for tests
"""
import dataclasses
from pathlib import Path

from jaxslu.config import ExperimentConfig, TrainConfig, load_config

FINETUNE_STEPS = 30


def get_config(variant: str = "default") -> ExperimentConfig:
    base = load_config(Path(__file__).with_name("spoken_slurp.py"),
                       "tiny" if variant == "tiny" else "default")
    options = dict(base.data.options)
    if variant != "tiny":
        options.update(num_speakers=48, speakers_per_sentence=3)
    model = base.model
    data = dataclasses.replace(base.data, options=options, eval_splits=("test",))
    if variant != "tiny":
        # Smaller and faster than spoken_slurp's model: the base and four fine-tunings must fit
        # the 2-core CPU budget of one session (docs/fairness.md).
        model = dataclasses.replace(
            model, encoder=dataclasses.replace(model.encoder, num_layers=3, dim=128,
                                               subsampling=8),
            predictor=dataclasses.replace(model.predictor, hidden=128), joint_dim=128,
            ctc_head=False)
        # Few shapes: on a CPU every (audio, label) bucket pair compiles the step anew.
        data = dataclasses.replace(data, bucket_seconds=(4.5, 8.0), label_buckets=(48, 96),
                                   skip_bad_examples=True)
    tokenizer = (base.tokenizer if variant == "tiny"
                 else dataclasses.replace(base.tokenizer, vocab_size=128))
    # No CTC: at 8x subsampling (12.5 frames/s) CTC cannot align fast speakers' transcripts.
    loss = base.loss if variant == "tiny" else "rnnt + 0.5*intent_ce + 0.5*slot_ce"
    cfg = dataclasses.replace(
        base, name=f"fairness_slurp_{variant}", model=model, data=data, tokenizer=tokenizer,
        loss=loss,
        train=(base.train if variant == "tiny" else
               TrainConfig(steps=1500, log_every=50, checkpoint_every=150)))
    if variant in ("default", "tiny"):
        return cfg
    tune = dataclasses.replace(cfg.optim, learning_rate=3e-4, warmup_steps=10)
    steps = TrainConfig(steps=FINETUNE_STEPS, log_every=5, checkpoint_every=15)
    # One (audio, label) bucket: each fine-tuning compiles its step once (the padding costs
    # less than the extra compilations on a CPU).
    one = dataclasses.replace(cfg.data, bucket_seconds=(8.0,), label_buckets=(96,))
    cfg = dataclasses.replace(cfg, optim=tune, train=steps, data=one)
    if variant == "finetune":
        return cfg
    if variant == "ewc":
        return dataclasses.replace(cfg, loss=cfg.loss + " + 1.0*ewc",
                                   loss_options={**cfg.loss_options, "ewc": {"fisher": ""}})
    if variant == "oversample":
        return cfg
    if variant == "cohort_input":
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_cohorts=1))
    raise ValueError(f"unknown variant {variant!r} of fairness_slurp: use default, finetune, ewc, "
                     "oversample, cohort_input or tiny")
