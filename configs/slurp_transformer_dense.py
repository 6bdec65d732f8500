"""Streaming Transformer-transducer on spoken SLURP, dense causal attention (Xie et al., "Compute Cost Amortized Transformer for Streaming ASR", Interspeech 2022;
reference point for compute): every frame runs attention over all past frames and the FFN.

    jaxslu train --config configs/slurp_transformer_dense.py --workdir runs/slurp_tt_dense --eval

Same data, objective, predictor and heads as configs/spoken_slurp.py; the encoder is a causal
ConvSubsampling + Transformer blocks (jaxslu.models.streaming), and the frontend skips utterance
normalization (`normalize="none"`) so the model can be streamed (jaxslu.decoding.streaming).
get_config("tiny"): a few utterances and steps, for tests.
"""
import dataclasses
from pathlib import Path

from jaxslu.config import load_config
from jaxslu.models.streaming import StreamingEncoderConfig, StreamingTransducerConfig


def get_config(variant: str = "default"):
    if variant not in ("default", "tiny"):
        raise ValueError(f"unknown variant {variant!r} of slurp_transformer_dense: use 'default' "
                         "or 'tiny'")
    base = load_config(Path(__file__).with_name("spoken_slurp.py"), variant)
    if variant == "tiny":
        encoder = StreamingEncoderConfig(kind="transformer", num_layers=2, dim=32, heads=2,
                                         ff_mult=2, attention="causal", dropout=0.1)
    else:
        encoder = StreamingEncoderConfig(kind="transformer", num_layers=6, dim=144, heads=4,
                                         ff_mult=4, attention="causal", dropout=0.1)
    m = base.model
    model = StreamingTransducerConfig(encoder=encoder, predictor=m.predictor,
                                      joint_dim=m.joint_dim, joint_activation=m.joint_activation,
                                      ctc_head=m.ctc_head, intent_head=m.intent_head,
                                      slot_head=m.slot_head)
    return dataclasses.replace(base, name="slurp_transformer_dense", model=model,
                               frontend=dataclasses.replace(base.frontend, normalize="none"))
