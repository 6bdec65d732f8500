"""End-to-end SLU transducer on the spoken SLU corpus: HWU64 train + SLURP devel (the `slurp_nlu`
text mix) spoken by 48 synthetic training speakers, evaluated on 16 test speakers never heard in
training (every accent on both sides), with noise and reverberation rendered into the audio.

    jaxslu synth-nlu                 # optional: render the corpus first (resumable, ~22k clips)
    jaxslu train --config configs/spoken_nlu.py --workdir runs/spoken_nlu --eval

The corpus is rendered on first use into the cache (~/.cache/jaxslu or $JAXSLU_CACHE; see
`jaxslu synth-nlu` and jaxslu/audio/spoken_nlu.py). The reports ("dev", "slurp_test",
"hwu64_test") give WER, intent accuracy and SLU-F1 per accent and per (unseen) speaker.

Sizing (measured; see the numbers below):
- Buckets come from a pilot of the corpus's own utterances: duration percentiles 5/50/95/99 %
  = 0.84/1.67/3.38/4.32 s, longest utterance 8.68 s (all of the 400 longest sentences rendered
  with the speakers the corpus gives them); a random batch of 16 has a longest row of
  2.5/3.5/4.9/6.0 s (5/50/95/99 %), so buckets 3/4/5.5/10 s take 23/59/16/2 % of the batches
  (4.1 s padded on average). Unigram-256 tokens per utterance: median 12, 99 % 37, max 80; the
  longest of a batch of 16: median 29, 99 % 57.
- Time reduction 4 (25 encoder frames/s), not 8: the ctc term needs at least as many frames as
  tokens, and at 8x (12.5 frames/s) fast speakers saying many tokens do not fit (a pilot of 20
  steps skipped 'hwu64-train-15-trn018': 26 tokens, 23 frames). At 4x the worst utterance of the
  corpus (all 7492 with >= 2.3 tokens per word or >= 30 tokens, rendered) uses 0.78 of its frames.
- Cost: the subsampling convolutions dominated (144 channels: 6.1-7.2 s/step at 8x); 64 channels
  at 4x measured 3.5-4.1 s/step with XLA's convolution (batch 16, the 4 s bucket, another job
  sharing the 2 CPU cores). On CPU the subsampling now runs as one matrix product over the 3x3
  patches (jaxslu/layers/subsampling.py, conv_impl="auto"): 3.0-3.2x faster forward + backward
  at these shapes (results/benchmarks/subsampling_conv_cpu.json), which brings the step to about
  half. The run's own time is in its workdir (train_time.json) and in the report.
- Budget: 2000 steps of batch 16 (~1.5 passes over the 20710 training utterances), about 1.2 h of
  training on 2 idle cores plus ~12 min of compiles (one program per audio x label bucket met).
get_config("tiny"): 6 sentences per split, 8 + 8 speakers, a few steps, for tests.
"""
import dataclasses

from jaxslu.config import (DataConfig, EvalConfig, ExperimentConfig, FrontendConfig, OptimConfig,
                           TokenizerConfig, TrainConfig)
from jaxslu.models.transducer import EncoderConfig, PredictorConfig, TransducerConfig


def get_config(variant: str = "default") -> ExperimentConfig:
    model = TransducerConfig(
        encoder=EncoderConfig(kind="conformer", num_layers=4, dim=144, heads=4, ff_mult=4,
                              conv_kernel=15, dropout=0.1, causal=False, subsampling=4,
                              subsampling_channels=64),
        predictor=PredictorConfig(embed_dim=128, hidden=160, layers=1),
        joint_dim=160, ctc_head=True, intent_head=True, slot_head=True)
    cfg = ExperimentConfig(
        name="spoken_nlu",
        model=model,
        loss="rnnt + 0.3*ctc + 0.5*intent_ce + 0.5*slot_ce",
        data=DataConfig(dataset="spoken_nlu",
                        options={"num_train_speakers": 48, "num_test_speakers": 16,
                                 "speakers_per_sentence": 2, "seed": 0},
                        train_split="train", eval_splits=("dev", "slurp_test", "hwu64_test"),
                        batch_size=16, eval_batch_size=32,
                        bucket_seconds=(3.0, 4.0, 5.5, 10.0), label_buckets=(24, 40, 64, 96)),
        frontend=FrontendConfig(num_mels=80),
        tokenizer=TokenizerConfig(kind="unigram", vocab_size=256),
        optim=OptimConfig(learning_rate=1.5e-3, warmup_steps=400),
        train=TrainConfig(steps=2000, log_every=50, checkpoint_every=250),
        eval=EvalConfig(decode="greedy"),
    )
    if variant == "tiny":
        cfg = dataclasses.replace(
            cfg,
            model=dataclasses.replace(
                model, encoder=dataclasses.replace(model.encoder, num_layers=1, dim=32, heads=2,
                                                   conv_kernel=5, subsampling_channels=0),
                predictor=PredictorConfig(embed_dim=16, hidden=32, layers=1), joint_dim=32),
            data=dataclasses.replace(cfg.data, options={"num_train_speakers": 8,
                                                        "num_test_speakers": 8,
                                                        "speakers_per_sentence": 2, "seed": 0,
                                                        "limit_per_split": 6},
                                     batch_size=4, eval_batch_size=8,
                                     bucket_seconds=(4.0, 10.0), label_buckets=(32, 96)),
            frontend=dataclasses.replace(cfg.frontend, num_mels=32),
            tokenizer=TokenizerConfig(kind="unigram", vocab_size=64),
            optim=dataclasses.replace(cfg.optim, warmup_steps=2),
            train=TrainConfig(steps=3, log_every=1, checkpoint_every=3))
    elif variant != "default":
        raise ValueError(f"unknown variant {variant!r} of spoken_nlu: use 'default' or 'tiny'")
    return cfg
