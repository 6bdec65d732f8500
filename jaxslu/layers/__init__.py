"""Neural-network layers for jaxslu models; every parameter carries `logical_axes` metadata."""
from jaxslu.layers.attention import MultiHeadSelfAttention, attention_mask, rotary
from jaxslu.layers.conformer import ConformerBlock, ConvModule, FeedForward
from jaxslu.layers.core import (Dense, Embed, LayerNorm, activation, dropout, length_mask, param,
                                stream_key)
from jaxslu.layers.lstm import LSTM, LSTMState
from jaxslu.layers.subsampling import ConvSubsampling, subsampled_length

__all__ = [
    "ConformerBlock", "ConvModule", "ConvSubsampling", "Dense", "Embed", "FeedForward", "LSTM",
    "LSTMState", "LayerNorm", "MultiHeadSelfAttention", "activation", "attention_mask", "dropout",
    "length_mask", "param", "rotary", "stream_key", "subsampled_length",
]
