"""The batch contract between the data pipeline and the train step (see docs/DESIGN.md)."""
from __future__ import annotations

BLANK_ID = 0  # transducer blank; also the token padding value
IGNORE_TAG = -1  # slot tag at padding positions
NO_INTENT = -1

# key -> (numpy dtype, rank)
BATCH_SPEC = {
    "audio": ("float32", 2),
    "audio_lengths": ("int32", 1),
    "tokens": ("int32", 2),
    "token_lengths": ("int32", 1),
    "intent": ("int32", 1),
    "slot_tags": ("int32", 2),
    "speaker": ("int32", 1),
    "index": ("int32", 1),
    "weight": ("float32", 1),
}
