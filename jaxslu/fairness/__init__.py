"""Fairness: find the cohorts a model fails, mitigate without hurting the rest, and fair speaker
verification (docs/fairness.md).

  cohorts.py       cohort discovery from an evaluation's per-example records: geographic
                   (recursive lat/lon splits maximizing the WER gap) and embedding (k-means
                   "virtual regions"), bootstrap intervals, paired bootstrap, plots
  ewc.py           the `ewc` loss term and the empirical diagonal Fisher of a base run
                   (oversampling is `data.sample_weights` in the pipeline; cohort membership as a
                   model input is `model.num_cohorts` + task option `cohort_input`)
  speakers.py      the synthetic speaker panel (accents x gender variants) for verification
  verification.py  `speaker_verification` task, `ecapa` model, `aam_softmax`, `arw` and
                   `pairwise_arw` terms, evaluator
  sv_metrics.py    EER and minDCF in numpy
"""
from jaxslu.fairness import ewc  # noqa: F401
from jaxslu.fairness import verification  # noqa: F401
