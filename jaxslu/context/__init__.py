"""Context as input (METHODS.md 2.3): device state, device type, time of day and the user's
recent activity, encoded as a vector the NLU models take beside the text.

  features.py  the context record, its validation and `ContextSchema` (record -> vector)
  data.py      the `context_nlu` dataset: context-dependent ambiguous requests with ground
               truth, mixed into the SLURP-style NLU data with random contexts

The NLU task reads `meta["context"]` when `task_options.context` is "input" (or feeds zeros of
the same size with "blind", the without-context baseline of the same architecture); the model
fuses it with the pooled text (jaxslu/nlu/models.py). configs/context_nlu.py and
scripts/context_experiment.py run the comparison (docs/context.md).
"""
from jaxslu.context import data, features, spoken  # noqa: F401  (registers the datasets)
from jaxslu.context.features import ContextError, ContextSchema, check_context

__all__ = ["ContextError", "ContextSchema", "check_context", "data", "features"]
