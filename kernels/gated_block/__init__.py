"""Gated residual feed-forward block (compute-cost amortized Transformer, Xie et al., "Compute Cost Amortized Transformer for Streaming ASR", Interspeech 2022).

`gated_ffn(x, gate, params, ...) -> (y, executed_flops)`: y = x + gate * FFN(LN(x)) where frames
with gate == 0 are skipped (XLA compaction on CPU, tile-skipping Pallas kernels on TPU / GPU), not
multiplied by zero. See api.py for dispatch and the gate-gradient choice, docs/gated_block.md for
measurements.
"""
from jaxslu.kernels.gated_block.api import default_implementation, gated_ffn
from jaxslu.kernels.gated_block.reference import GatedFFNParams, flops_per_row, gated_ffn_dense

__all__ = ["GatedFFNParams", "default_implementation", "flops_per_row", "gated_ffn",
           "gated_ffn_dense"]
