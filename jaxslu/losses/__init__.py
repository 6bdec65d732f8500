"""Loss terms and their composition (see jaxslu/losses/base.py for the protocol).

`rnnt_loss` / `fused_rnnt_loss` are the transducer-loss entry points researchers call directly;
the registered terms (`rnnt`, `ctc`, `intent_ce`, `slot_ce`, ...) wrap them for configs.
"""
from jaxslu.losses.base import (LossTerm, Objective, build_objective, intermediates_of,
                                parse_objective)
from jaxslu.losses import terms as _terms  # noqa: F401  (registers the built-in terms)
from jaxslu.losses import compute_cost as _compute_cost  # noqa: F401  (registers compute_cost)


def __getattr__(name):
    # The fast transducer losses live in jaxslu.kernels.rnnt; import them on first use.
    if name in ("rnnt_loss", "fused_rnnt_loss"):
        from jaxslu.losses import rnnt as _rnnt
        return getattr(_rnnt, name)
    raise AttributeError(name)


__all__ = ["LossTerm", "Objective", "build_objective", "intermediates_of", "parse_objective",
           "rnnt_loss", "fused_rnnt_loss"]
