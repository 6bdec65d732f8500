"""Featurization and collation of the audio transducer / SLU task (the batch of docs/DESIGN.md).

`AudioPreparer` turns a source index into arrays (read audio, resample, tokenize, tag, check
lengths); `collate_audio` pads rows to the smallest audio bucket and label bucket that hold the
batch's longest row. `make_audio_batches` wires both into the generic `jaxslu.data.pipeline`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import numpy as np

from jaxslu.config import DataConfig
from jaxslu.data.batch import BATCH_SPEC, BLANK_ID, IGNORE_TAG, NO_INTENT
from jaxslu.data.labels import Vocabularies
from jaxslu.data.pipeline import Batches, DataError, Skipped, bucket_for, make_batches
from jaxslu.data.sources import ExampleReadError

# Below this rate an example's declared sample rate is taken to be wrong rather than resampled.
MIN_SAMPLE_RATE = 4000


class AudioPreparer:
    """Turns a source index into padded-ready arrays (runs on grain's read threads)."""

    def __init__(self, source: Any, tokenizer: Any, vocab: Vocabularies, data_cfg: DataConfig,
                 sample_rate: int, frames_fn: Callable[[int], int] | None, *,
                 augment: bool = False):
        from jaxslu.audio.perturb import augment_enabled, check_augment_config

        self.source, self.tokenizer, self.vocab = source, tokenizer, vocab
        self.cfg, self.sample_rate, self.frames_fn = data_cfg, sample_rate, frames_fn
        self.max_samples = int(round(max(data_cfg.bucket_seconds) * sample_rate))
        self.max_tokens = max(data_cfg.label_buckets)
        check_augment_config(data_cfg.augment)
        # Training with data.augment on: the pipeline hands each call a seeded Generator.
        self.wants_rng = bool(augment and augment_enabled(data_cfg.augment))

    def _bad(self, message: str) -> Skipped:
        if self.cfg.skip_bad_examples:
            return Skipped(message)
        raise DataError(message)

    def __call__(self, index: int, rng: np.random.Generator | None = None
                 ) -> dict[str, Any] | Skipped:
        """The row of example `index`; with `rng`, its waveform is augmented (data.augment)."""
        index = int(index)
        try:
            ex = self.source[index]
        except ExampleReadError as e:
            if self.cfg.skip_bad_examples:
                return Skipped(str(e))
            raise
        eid = ex["id"]
        if ex["audio"] is None:
            raise DataError(f"example {eid!r} has no audio: dataset {self.source!r} is text-only; "
                            "use a spoken dataset (fsdd, spoken_slurp, manifest, tfds) for batches")
        from jaxslu.audio.io import resample

        audio = np.asarray(ex["audio"], np.float32)
        sr = int(ex["sample_rate"])
        if sr < MIN_SAMPLE_RATE:
            return self._bad(
                f"example {eid!r} says its audio is sampled at {sr} Hz, below {MIN_SAMPLE_RATE} Hz "
                "where speech is unintelligible: the source's sample rate is probably wrong (check "
                "the manifest's/TFDS record's sample_rate field), or set "
                "data.skip_bad_examples=True to skip it")
        if not np.isfinite(audio).all():
            return self._bad(
                f"example {eid!r} has NaN or infinite audio samples; fix or drop the recording, or "
                "set data.skip_bad_examples=True to skip it")
        if sr != self.sample_rate:
            audio = resample(audio, sr, self.sample_rate)
        if rng is not None and self.wants_rng:
            from jaxslu.audio.perturb import perturb

            audio, _ = perturb(audio, self.sample_rate, rng, self.cfg.augment,
                               max_samples=self.max_samples)
        n = len(audio)
        if n > self.max_samples:
            return self._bad(
                f"example {eid!r} has {n / self.sample_rate:.2f} s of audio, longer than the "
                f"largest bucket {max(self.cfg.bucket_seconds)} s; add a larger value to "
                "data.bucket_seconds or set data.skip_bad_examples=True to skip it")
        ids, word_of_token = self.tokenizer.encode_words(ex["text"].split())
        ids = np.asarray(ids, np.int32)
        if ids.size and ids.min() < 1:
            raise DataError(f"example {eid!r}: the tokenizer returned id {int(ids.min())}; ids "
                            f"must be >= 1 ({BLANK_ID} is the blank/padding id)")
        u = len(ids)
        if u > self.max_tokens:
            return self._bad(
                f"example {eid!r} has {u} tokens, more than the largest label bucket "
                f"{self.max_tokens}; add a larger value to data.label_buckets or set "
                "data.skip_bad_examples=True to skip it")
        if self.frames_fn is not None:
            frames = int(self.frames_fn(n))
            if u > frames:
                return self._bad(
                    f"example {eid!r} has {u} tokens but its {n} samples give only {frames} "
                    "encoder frames; use a finer frame rate (less subsampling) or coarser tokens, "
                    "or set data.skip_bad_examples=True to skip it")
        tags = self.vocab.tag_ids(ex["entities"], list(word_of_token), u)
        return {"audio": audio, "tokens": ids, "slot_tags": np.asarray(tags, np.int32),
                "intent": self.vocab.intent_id(ex["intent"]),
                "speaker": self.vocab.speaker_id(ex["speaker"]), "index": index}


def collate_audio(rows: Sequence[dict[str, Any]], batch_size: int, audio_buckets: Sequence[int],
                  label_buckets: Sequence[int]) -> dict[str, np.ndarray]:
    """Pad `rows` to `batch_size` rows, the smallest audio bucket and label bucket that fit.

    Padding rows: audio_lengths 1, token_lengths 0, intent/speaker/index -1, slot tags -1,
    weight 0 (see docs/DESIGN.md).
    """
    longest = max((len(r["audio"]) for r in rows), default=1)
    n = bucket_for(longest, audio_buckets)
    u = bucket_for(max((len(r["tokens"]) for r in rows), default=0), label_buckets)
    if n is None or u is None:  # prepare() rejects these; reaching here is a bug
        raise AssertionError("row longer than the largest bucket reached collate")
    b = batch_size
    out = {
        "audio": np.zeros((b, n), np.float32),
        "audio_lengths": np.ones((b,), np.int32),
        "tokens": np.full((b, u), BLANK_ID, np.int32),
        "token_lengths": np.zeros((b,), np.int32),
        "intent": np.full((b,), NO_INTENT, np.int32),
        "slot_tags": np.full((b, u), IGNORE_TAG, np.int32),
        "speaker": np.full((b,), -1, np.int32),
        "index": np.full((b,), -1, np.int32),
        "weight": np.zeros((b,), np.float32),
    }
    for k, r in enumerate(rows):
        na, nt = len(r["audio"]), len(r["tokens"])
        out["audio"][k, :na] = r["audio"]
        out["audio_lengths"][k] = max(na, 1)
        out["tokens"][k, :nt] = r["tokens"]
        out["token_lengths"][k] = nt
        out["slot_tags"][k, :nt] = r["slot_tags"]
        out["intent"][k] = r["intent"]
        out["speaker"][k] = r["speaker"]
        out["index"][k] = r["index"]
        out["weight"][k] = 1.0
    assert {k: (str(v.dtype), v.ndim) for k, v in out.items()} == BATCH_SPEC
    return out


def audio_buckets(data_cfg: DataConfig, sample_rate: int) -> list[int]:
    if not data_cfg.bucket_seconds or not data_cfg.label_buckets:
        raise ValueError("data.bucket_seconds and data.label_buckets must be non-empty")
    return sorted({int(round(s * sample_rate)) for s in data_cfg.bucket_seconds})


def make_audio_batches(source: Any, *, tokenizer: Any, vocab: Vocabularies, data_cfg: DataConfig,
                       sample_rate: int, train: bool, seed: int, process_index: int = 0,
                       process_count: int = 1,
                       frames_fn: Callable[[int], int] | None = None) -> Batches:
    """Audio batches of `source` for this process (the generic pipeline with the audio task's
    prepare and collate). `frames_fn(num_samples)` -> how many tokens an utterance can carry: a
    longer transcript is an error naming the example (or skipped under data.skip_bad_examples)."""
    buckets = audio_buckets(data_cfg, sample_rate)
    prepare = AudioPreparer(source, tokenizer, vocab, data_cfg, sample_rate, frames_fn,
                            augment=train)
    collate = functools.partial(collate_audio, audio_buckets=buckets,
                                label_buckets=sorted(set(data_cfg.label_buckets)))
    return make_batches(source, prepare=prepare, collate=collate, data_cfg=data_cfg, train=train,
                        seed=seed, process_index=process_index, process_count=process_count)
