"""Personalization: incremental user embeddings (request + long-term and short-term histories).

  data.py       sources: `assistant_log` (simulated, users held out), `movielens_seq`
  simulator.py  the simulated assistant log (users with latent tastes and habits)
  memory.py     the incrementally mergeable long-term state (equal to a full recompute)
  models.py     `user_embedding` (+ its no-history variant) and the `sasrec` baseline
  losses.py     `sequence_ce`
  task.py       `user_embeddings` task; evaluate.py its evaluator
"""
from jaxslu.personalization import data, evaluate, losses, models, task  # noqa: F401
