"""Streaming Transformer-transducer on spoken SLURP with sliding-window attention: the paper's
baseline for saving compute (Xie et al., "Compute Cost Amortized Transformer for Streaming ASR", Interspeech 2022). Frame t attends to frames t-window+1 .. t only, so
attention costs O(window) instead of O(t) per frame; the FFN always runs.

    jaxslu train --config configs/slurp_transformer_sliding.py --workdir runs/slurp_tt_sliding \
        [--set model.encoder.window=16]

Everything else as configs/slurp_transformer_dense.py. get_config("tiny") for tests.
"""
import dataclasses
from pathlib import Path

from jaxslu.config import load_config


def get_config(variant: str = "default"):
    cfg = load_config(Path(__file__).with_name("slurp_transformer_dense.py"), variant)
    window = 8 if variant == "tiny" else 32  # 32 frames of 40 ms = 1.28 s of context
    encoder = dataclasses.replace(cfg.model.encoder, attention="sliding", window=window)
    return dataclasses.replace(cfg, name="slurp_transformer_sliding",
                               model=dataclasses.replace(cfg.model, encoder=encoder))
