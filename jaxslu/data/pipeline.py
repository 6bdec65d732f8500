"""The input pipeline: a data source -> padded, length-bucketed batches (docs/DESIGN.md).

Built on grain: `MapDataset.range(n)` of example indices, shuffled per epoch and repeated
(training) or in order (evaluation), sharded per process, mapped through `prepare` (read audio,
resample, tokenize, tag, check lengths) on a small grain read-thread pool, then batched here.

Design choices:
* Sharding is by position after shuffling: process p takes elements p, p+P, ... of the global
  (shuffled, repeated) stream, so each global epoch is split disjointly and deterministically and
  every process sees a fresh mix each epoch. Eval shards are p, p+P, ... of the source in order.
* Batching is done by our own iterator rather than grain's `batch`, because each batch is padded
  to a bucket chosen from its own longest row and bad examples are skipped *and counted*. The
  iterator's state is grain's (position of the next example, exact even with read threads and
  prefetch) plus the skip count, so a restored iterator yields exactly the same batches.
* Eval batches are fixed size and every process yields the same number of batches (that of the
  largest shard), padding with weight-0 rows, so multi-host evaluation steps stay in lockstep.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Callable, Iterator, Sequence

import grain
import numpy as np

from jaxslu.config import DataConfig
from jaxslu.data.batch import BATCH_SPEC, BLANK_ID, IGNORE_TAG, NO_INTENT
from jaxslu.data.labels import Vocabularies
from jaxslu.data.sources import ExampleReadError

log = logging.getLogger(__name__)


# Below this rate an example's declared sample rate is taken to be wrong rather than resampled.
MIN_SAMPLE_RATE = 4000


class DataError(ValueError):
    """An example does not fit the pipeline (too long, no audio, ...); names the example."""


@dataclasses.dataclass(frozen=True)
class _Skipped:
    """Marker for an example dropped under `skip_bad_examples` (carries the reason for logs)."""

    reason: str


def bucket_for(length: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket >= length, or None if none is large enough."""
    for b in buckets:
        if length <= b:
            return b
    return None


class _Preparer:
    """Turns a source index into padded-ready arrays (runs on grain's read threads)."""

    def __init__(self, source: Any, tokenizer: Any, vocab: Vocabularies, data_cfg: DataConfig,
                 sample_rate: int, frames_fn: Callable[[int], int] | None):
        self.source, self.tokenizer, self.vocab = source, tokenizer, vocab
        self.cfg, self.sample_rate, self.frames_fn = data_cfg, sample_rate, frames_fn
        self.max_samples = int(round(max(data_cfg.bucket_seconds) * sample_rate))
        self.max_tokens = max(data_cfg.label_buckets)

    def _bad(self, message: str) -> _Skipped:
        if self.cfg.skip_bad_examples:
            return _Skipped(message)
        raise DataError(message)

    def __call__(self, index: int) -> dict[str, Any] | _Skipped:
        index = int(index)
        try:
            ex = self.source[index]
        except ExampleReadError as e:
            if self.cfg.skip_bad_examples:
                return _Skipped(str(e))
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


def collate(rows: Sequence[dict[str, Any]], batch_size: int, audio_buckets: Sequence[int],
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


class BatchIterator(Iterator[dict[str, np.ndarray]]):
    """Iterator over batches with exact, JSON-serializable `get_state()` / `set_state()`.

    `skipped` counts examples dropped under `data.skip_bad_examples` (restored with the state).
    """

    def __init__(self, stream: "Batches"):
        self._stream = stream
        self._it = iter(stream._dataset)
        self.skipped = 0
        self._emitted = 0

    def __next__(self) -> dict[str, np.ndarray]:
        s = self._stream
        rows: list[dict[str, Any]] = []
        run_of_skips = 0
        while len(rows) < s.local_batch_size:
            try:
                item = next(self._it)
            except StopIteration:
                break
            if isinstance(item, _Skipped):
                self.skipped += 1
                run_of_skips += 1
                if self.skipped <= 10 or self.skipped % 1000 == 0:  # bounded log volume
                    log.warning("skipped bad example (%d so far): %s", self.skipped, item.reason)
                if s.train and run_of_skips > s.shard_size:
                    raise DataError(f"every example of {s.source!r} was skipped as bad; see the "
                                    "warnings above and fix data.bucket_seconds / label_buckets")
                continue
            run_of_skips = 0
            rows.append(item)
        if not rows and (s.train or self._emitted >= s.num_batches):
            raise StopIteration
        self._emitted += 1
        return collate(rows, s.local_batch_size, s.audio_buckets, s.label_buckets)

    def get_state(self) -> dict[str, Any]:
        return {"grain": self._it.get_state(), "skipped": self.skipped, "emitted": self._emitted}

    def set_state(self, state: dict[str, Any]) -> None:
        missing = {"grain", "skipped", "emitted"} - set(state)
        if missing:
            raise ValueError(f"data iterator state lacks {sorted(missing)}; it must come from "
                             "BatchIterator.get_state() of the same pipeline")
        self._it.set_state(state["grain"])
        self.skipped = int(state["skipped"])
        self._emitted = int(state["emitted"])


class Batches:
    """The iterable `make_batches` returns; each `iter()` starts from the beginning."""

    def __init__(self, source: Any, *, tokenizer: Any, vocab: Vocabularies, data_cfg: DataConfig,
                 sample_rate: int, train: bool, seed: int, process_index: int,
                 process_count: int, frames_fn: Callable[[int], int] | None):
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        global_bs = data_cfg.batch_size if train else data_cfg.eval_batch_size
        name = "data.batch_size" if train else "data.eval_batch_size"
        if global_bs % process_count or global_bs < process_count:
            raise ValueError(f"{name}={global_bs} is not a positive multiple of the process count "
                             f"{process_count}; set it to a multiple of {process_count}")
        if not data_cfg.bucket_seconds or not data_cfg.label_buckets:
            raise ValueError("data.bucket_seconds and data.label_buckets must be non-empty")
        self.source, self.train = source, train
        self.local_batch_size = global_bs // process_count
        self.audio_buckets = sorted({int(round(s * sample_rate)) for s in data_cfg.bucket_seconds})
        self.label_buckets = sorted(set(data_cfg.label_buckets))
        n = len(source)
        # Largest shard (process 0's); eval yields this many batches on every process.
        self.shard_size = len(range(0, n, process_count))
        self.num_batches = max(1, math.ceil(self.shard_size / self.local_batch_size))
        ds = grain.MapDataset.range(n)
        if train:
            ds = ds.shuffle(seed=seed).repeat(None, reseed_each_epoch=True)
        ds = ds[process_index::process_count]
        ds = ds.map(_Preparer(source, tokenizer, vocab, data_cfg, sample_rate, frames_fn))
        read = grain.ReadOptions(num_threads=data_cfg.num_threads,
                                 prefetch_buffer_size=data_cfg.prefetch * self.local_batch_size)
        self._dataset = ds.to_iter_dataset(read)
        self._last: BatchIterator | None = None

    def __iter__(self) -> BatchIterator:
        self._last = BatchIterator(self)
        return self._last

    def __len__(self) -> int:
        if self.train:
            raise TypeError("a training stream repeats forever and has no length")
        return self.num_batches

    @property
    def skipped(self) -> int:
        """Examples skipped so far by the most recent iterator."""
        return self._last.skipped if self._last is not None else 0


def make_batches(source: Any, *, tokenizer: Any, vocab: Vocabularies, data_cfg: DataConfig,
                 sample_rate: int, train: bool, seed: int, process_index: int = 0,
                 process_count: int = 1,
                 frames_fn: Callable[[int], int] | None = None) -> Batches:
    """Batches of `source` for this process (see the module docstring and docs/DESIGN.md).

    Train: shuffled with `seed` (reshuffled each epoch), repeated forever, local batch
    `data_cfg.batch_size // process_count`. Eval: one pass in order over this process's shard,
    local batch `data_cfg.eval_batch_size // process_count`, padded with weight-0 rows.
    Every process must pass the same `seed` (the shards are cut from one shuffled stream).
    """
    return Batches(source, tokenizer=tokenizer, vocab=vocab, data_cfg=data_cfg,
                   sample_rate=sample_rate, train=train, seed=seed, process_index=process_index,
                   process_count=process_count, frames_fn=frames_fn)
