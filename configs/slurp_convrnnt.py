"""ConvRNN-T on spoken SLURP (Radfar et al., "ConvRNN-T: Convolutional Augmented Recurrent Neural Network Transducers for Streaming Speech Recognition", Interspeech 2022): causal local CNN (2-D over time x mel) and causal
global CNN (dilated depthwise residual blocks with causal squeeze-and-excitation), concatenated
and fed to a residual LSTM encoder; streamable (jaxslu.decoding.streaming).

    jaxslu train --config configs/slurp_convrnnt.py --workdir runs/slurp_convrnnt --eval

Same data, objective, predictor and heads as configs/spoken_slurp.py, with
`frontend.normalize="none"` so the model can be streamed. Sized to be close in encoder parameters
to the 6-layer dense Transformer (slurp_transformer_dense) and the spoken_slurp Conformer.
get_config("tiny"): a few utterances and steps, for tests.
"""
import dataclasses
from pathlib import Path

from jaxslu.config import load_config
from jaxslu.models.streaming import StreamingEncoderConfig, StreamingTransducerConfig


def get_config(variant: str = "default"):
    if variant not in ("default", "tiny"):
        raise ValueError(f"unknown variant {variant!r} of slurp_convrnnt: use 'default' or 'tiny'")
    base = load_config(Path(__file__).with_name("spoken_slurp.py"), variant)
    if variant == "tiny":
        encoder = StreamingEncoderConfig(kind="convrnnt", num_layers=1, dim=32,
                                         local_channels=(8, 8, 4, 4), local_kernel=(3, 3),
                                         global_channels=16, global_blocks=3, dropout=0.1)
    else:
        encoder = StreamingEncoderConfig(kind="convrnnt", num_layers=2, dim=192,
                                         local_channels=(100, 100, 64, 64), local_kernel=(5, 5),
                                         local_freq_stride=2, global_channels=160,
                                         global_blocks=6, global_expansion=2, global_kernel=3,
                                         dropout=0.1)
    m = base.model
    model = StreamingTransducerConfig(encoder=encoder, predictor=m.predictor,
                                      joint_dim=m.joint_dim, joint_activation=m.joint_activation,
                                      ctc_head=m.ctc_head, intent_head=m.intent_head,
                                      slot_head=m.slot_head)
    return dataclasses.replace(base, name="slurp_convrnnt", model=model,
                               frontend=dataclasses.replace(base.frontend, normalize="none"))
