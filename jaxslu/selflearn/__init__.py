"""Self-learning from interactions: a simulated assistant log, rephrase detection, rewrite
mining (absorbing Markov chain), online rewriting (dense retrieval + ranker) and failure-point
isolation.

  data.py        `selflearn_requests`: the request pool and the system NLU's training part
  confusions.py  recognizer-like word confusions from eSpeak NG phonemes
  simulator.py   the simulated assistant log (users, real NLU errors, reactions, ground truth)
  dialogue.py    log sources, word assets and the encoder of the dialogue-level tasks
  rephrase.py    `rephrase_detection` task: span prediction of the rephrase of a request
  isolation.py   `failure_isolation` task: the earliest irrecoverable failure of a turn
  mining.py      rewrite mining with an absorbing Markov chain
  retrieval.py   `rewrite_retrieval` task: the dual-encoder retriever (in-batch negatives)
  rewriting.py   online rewriting: index, exact top-k, ranker, global + personal layers
  pipeline.py    the `jaxslu selflearn` stages
"""
from jaxslu.selflearn import data, isolation, rephrase, retrieval  # noqa: F401
