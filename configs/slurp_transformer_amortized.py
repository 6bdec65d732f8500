"""Compute-cost amortized streaming Transformer-transducer on spoken SLURP (Xie et al., "Compute Cost Amortized Transformer for Streaming ASR", Interspeech 2022):
arbitrators switch each block's attention and FFN on or off per frame, trained jointly with the
`compute_cost` loss term (FLOPs-weighted gate activity / dense FLOPs).

    jaxslu train --config configs/slurp_transformer_amortized.py --workdir runs/slurp_tt_am

The compute weight is the weight of `compute_cost` in the objective; override it with
    --set "loss=rnnt + 0.3*ctc + 0.5*intent_ce + 0.5*slot_ce + 0.5*compute_cost"
and a compute budget (penalize only above a rate) with
    --set loss_options.compute_cost.target=0.4
Everything else as configs/slurp_transformer_dense.py. get_config("tiny") for tests.
"""
import dataclasses
from pathlib import Path

from jaxslu.config import load_config

COMPUTE_WEIGHT = 0.2


def with_compute_weight(cfg, weight: float):
    """The config with `weight * compute_cost` in the objective (replacing any previous weight)."""
    terms = [t.strip() for t in cfg.loss.split("+") if not t.strip().endswith("compute_cost")]
    return dataclasses.replace(cfg, loss=" + ".join(terms + [f"{weight:g}*compute_cost"]))


def get_config(variant: str = "default"):
    cfg = load_config(Path(__file__).with_name("slurp_transformer_dense.py"), variant)
    hidden = 8 if variant == "tiny" else 32
    encoder = dataclasses.replace(cfg.model.encoder, arbitrator_hidden=hidden, gate_init_bias=3.0,
                                  capacity_ratio=0.5)
    cfg = dataclasses.replace(cfg, name="slurp_transformer_amortized",
                              model=dataclasses.replace(cfg.model, encoder=encoder),
                              loss_options={**cfg.loss_options, "compute_cost": {"target": 0.0}})
    return with_compute_weight(cfg, COMPUTE_WEIGHT)
