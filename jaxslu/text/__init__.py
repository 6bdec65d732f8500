"""Text: normalization, tokenizers (char / sentencepiece unigram / BPE) and evaluation metrics."""
from jaxslu.text.metrics import (DEFAULT_METRICS, PRF, ErrorRate, SluF1, breakdown, cer,
                                 edit_distance, edit_ops, entity_values, intent_accuracy, slu_f1,
                                 wer)
from jaxslu.text.normalize import normalize_text
from jaxslu.text.tokenizer import BLANK_ID, KINDS, UNK_ID, WORD_BOUNDARY, Tokenizer

__all__ = [
    "normalize_text", "Tokenizer", "BLANK_ID", "UNK_ID", "KINDS", "WORD_BOUNDARY",
    "edit_distance", "edit_ops", "ErrorRate", "wer", "cer", "intent_accuracy", "PRF", "SluF1",
    "slu_f1", "entity_values", "breakdown", "DEFAULT_METRICS",
]
