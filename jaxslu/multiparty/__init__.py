"""Multi-party streaming ASR: the separator-transducer-segmenter (SURT with turn tokens).

  simulate.py  meetings simulated from a spoken corpus (2-4 speakers, overlaps, reference turns)
  model.py     the SURT model (`surt`; channels=1: the single-channel baseline)
  losses.py    loss terms `surt_rnnt` (permutation invariant, FastEmit), `speech_activity`,
               `eot_latency` (end-of-turn late penalty)
  task.py      dataset `meetings`, task `multiparty` (word vocabulary, channel references)
  evaluate.py  timed greedy decoding (offline and streaming), cpWER / ORC-WER, turn counting,
               <sot>/<eot> latency; evaluator `multiparty`

Config: configs/multiparty.py; experiment: scripts/multiparty_experiment.py; docs/multiparty.md.
"""
from jaxslu.multiparty import evaluate, losses, model, task  # noqa: F401  (registrations)
