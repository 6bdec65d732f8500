"""Decoding: batched, jit-able transducer greedy and beam search, and SLU evaluation decoding."""
from jaxslu.decoding.transducer import (beam_from_encoder, beam_search, decode_with_slu,
                                        greedy_decode, greedy_from_encoder, jit_decode_with_slu)

__all__ = ["beam_from_encoder", "beam_search", "decode_with_slu", "greedy_decode",
           "greedy_from_encoder", "jit_decode_with_slu"]
