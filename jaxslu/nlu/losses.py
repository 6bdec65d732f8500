"""Loss terms of the NLU family. `intent_ce` and `slot_ce` are the shared terms of
`jaxslu.losses.terms` (same batch keys: `intent`, `slot_tags`; same outputs: `intent_logits`,
`slot_logits`); `domain_ce` is the domain (scenario) classifier's."""
from __future__ import annotations

from jaxslu.losses.terms import utterance_ce
from jaxslu.registry import LOSSES


@LOSSES.register("domain_ce")
def domain_ce(*, label_smoothing: float = 0.0):
    """Domain cross-entropy over examples that have a domain (domain >= 0)."""
    return utterance_ce("domain_logits", "domain", label_smoothing)
