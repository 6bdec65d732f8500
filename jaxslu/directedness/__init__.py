"""Device-directedness (METHODS.md 2.2): was an utterance addressed to the assistant?

  corpus.py    requests to the assistant (the spoken SLU corpus) and speech between people
               (conversational templates, conversational delivery), the same synthetic voices
  features.py  acoustic (pooled encoder states) and semantic (ASR hypothesis, its likelihood,
               intent confidences) features from a trained E2E SLU transducer (+ a text NLU run)
  task.py      the `directedness` task, `directedness_features` dataset,
               `directedness_classifier` model (inputs acoustic / semantic / both),
               `directed_bce` loss term and the EER evaluator

configs/device_directedness.py and scripts/directedness_experiment.py run the comparison
(docs/device_directedness.md).
"""
from jaxslu.directedness import task as _task  # noqa: F401  (registers task, model, loss, data)
