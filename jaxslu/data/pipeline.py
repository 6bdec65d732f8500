"""The input pipeline: a data source -> batches, for any task (docs/DESIGN.md).

Built on grain: `MapDataset.range(n)` of example indices, shuffled per epoch and repeated
(training) or in order (evaluation), sharded per process, mapped through the task's `prepare`
(read, featurize, check one example) on a small grain read-thread pool, then batched here by the
task's `collate` (pad rows into a batch: audio buckets, token buckets, pairs, histories, graphs).
This module knows no task: what a row and a batch hold is the task's business.

Design choices:
* Sharding is by position after shuffling, in blocks of the local batch size b: process p of P
  takes elements [kPb + pb, kPb + (p+1)b) of the global (shuffled, repeated) stream for k = 0, 1,
  ..., so each global epoch is split disjointly and deterministically, and global batch k (the
  processes' local batches in process order, as `make_array_from_process_local_data` lays them
  out) is stream elements [kPb, (k+1)Pb) in order: the same rows in the same order for any
  process count (row i of a batch gets the same dropout/augmentation randomness on 1 or N
  hosts). Eval shards are the same blocks of the source in order.
* Batching is done by our own iterator rather than grain's `batch`, because each batch is padded
  to a bucket chosen from its own longest row and bad examples are skipped *and counted*. The
  iterator's state is grain's (position of the next example, exact even with read threads and
  prefetch) plus the skip count, so a restored iterator yields exactly the same batches.
* Eval batches are fixed size and every process yields the same number of batches (that of the
  largest shard), padding with weight-0 rows, so multi-host evaluation steps stay in lockstep.

The contract of the two task functions:
  prepare(index) -> row dict, or `Skipped(reason)` for a bad example under
    `data.skip_bad_examples` (otherwise it raises `DataError` naming the example);
    a prepare with a true attribute `wants_rng` is called in training as
    prepare(index, rng=numpy Generator) seeded by (seed, global stream position): random
    augmentation that is deterministic, identical on any process count, and resumable;
  collate(rows, batch_size) -> batch: a (possibly nested) dict of numpy arrays whose leaves have
    the batch as leading dimension (unless the task's `batch_partition` says a leaf is
    replicated), `batch_size` rows, the missing ones padding with `weight` 0, and an int32
    `index` leaf (source index, -1 for padding rows).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Callable, Iterator, Sequence

import grain
import numpy as np

from jaxslu.config import DataConfig

log = logging.getLogger(__name__)


class DataError(ValueError):
    """An example does not fit the pipeline (too long, no audio, ...); names the example."""


@dataclasses.dataclass(frozen=True)
class Skipped:
    """Marker for an example dropped under `skip_bad_examples` (carries the reason for logs)."""

    reason: str


def bucket_for(length: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket >= length, or None if none is large enough."""
    for b in buckets:
        if length <= b:
            return b
    return None


Prepare = Callable[[int], "dict[str, Any] | Skipped"]
Collate = Callable[[Sequence[dict[str, Any]], int], dict[str, Any]]


class BatchIterator(Iterator[dict[str, Any]]):
    """Iterator over batches with exact, JSON-serializable `get_state()` / `set_state()`.

    `skipped` counts examples dropped under `data.skip_bad_examples` (restored with the state).
    """

    def __init__(self, stream: "Batches"):
        self._stream = stream
        self._it = iter(stream._dataset)
        self.skipped = 0
        self._emitted = 0

    def __next__(self) -> dict[str, Any]:
        s = self._stream
        rows: list[dict[str, Any]] = []
        run_of_skips = 0
        while len(rows) < s.local_batch_size:
            try:
                item = next(self._it)
            except StopIteration:
                break
            if isinstance(item, Skipped):
                self.skipped += 1
                run_of_skips += 1
                if self.skipped <= 10 or self.skipped % 1000 == 0:  # bounded log volume
                    log.warning("skipped bad example (%d so far): %s", self.skipped, item.reason)
                if s.train and run_of_skips > s.shard_size:
                    raise DataError(f"every example of {s.source!r} was skipped as bad; see the "
                                    "warnings above and fix the data settings")
                continue
            run_of_skips = 0
            rows.append(item)
        if not rows and (s.train or self._emitted >= s.num_batches):
            raise StopIteration
        self._emitted += 1
        return s.collate(rows, s.local_batch_size)

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


class _BlockShard(grain.MapDataset):
    """Process `index` of `count`'s part of `parent`: consecutive blocks of `block` elements,
    block k*count + index for k = 0, 1, ... So global batch k (the local batches of all
    processes, in process order) is elements [k*block*count, (k+1)*block*count) of `parent`, in
    order: the same rows in the same order for any process count."""

    _MUTATES_ELEMENT_SPEC = False

    def __init__(self, parent: grain.MapDataset, block: int, index: int, count: int):
        super().__init__(parent)
        self._block, self._index, self._count = block, index, count
        full, rem = divmod(len(parent), block * count)
        self._length = full * block + min(block, max(0, rem - index * block))

    def __len__(self) -> int:
        return self._length

    def _parent_index(self, i: int) -> int:
        k, r = divmod(i, self._block)
        return (k * self._count + self._index) * self._block + r

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.slice(i)
        return self._parent[self._parent_index(i)]

    def _getitems(self, indices):
        return self._parent._getitems([self._parent_index(i) for i in indices])


class _WithRng:
    """prepare(index, rng=Generator) for a (stream position, index) element of the stream.

    The generator is seeded by (seed, position), so an example's augmentation depends only on
    the run's seed and where it sits in the global training stream: the same on 1 or N hosts,
    and the same again after a restore (the iterator state is the position).
    """

    _TAG = 0xA06

    def __init__(self, prepare: Prepare, seed: int):
        self.prepare, self.seed = prepare, int(seed)

    def __call__(self, element):
        pos, index = element
        return self.prepare(index, rng=np.random.default_rng([self.seed, self._TAG, int(pos)]))


class Batches:
    """The iterable `make_batches` returns; each `iter()` starts from the beginning."""

    def __init__(self, source: Any, *, prepare: Prepare, collate: Collate, data_cfg: DataConfig,
                 train: bool, seed: int, process_index: int = 0, process_count: int = 1):
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        global_bs = data_cfg.batch_size if train else data_cfg.eval_batch_size
        name = "data.batch_size" if train else "data.eval_batch_size"
        if global_bs % process_count or global_bs < process_count:
            raise ValueError(f"{name}={global_bs} is not a positive multiple of the process count "
                             f"{process_count}; set it to a multiple of {process_count}")
        self.source, self.train, self.collate = source, train, collate
        self.local_batch_size = global_bs // process_count
        n = len(source)
        # Largest shard (process 0's); eval yields this many batches on every process.
        self.shard_size = len(_BlockShard(grain.MapDataset.range(n), self.local_batch_size, 0,
                                          process_count))
        self.num_batches = max(1, math.ceil(self.shard_size / self.local_batch_size))
        ds = grain.MapDataset.range(n)
        if train and data_cfg.sample_weights:
            order = oversample_indices(source, data_cfg.sample_weights, seed)
            ds = grain.MapDataset.source(order)
        if train:
            ds = ds.shuffle(seed=seed).repeat(None, reseed_each_epoch=True)
            if getattr(prepare, "wants_rng", False):
                # (global stream position, index): the position seeds the example's randomness.
                ds = ds.map_with_index(lambda pos, i: (pos, i))
                prepare = _WithRng(prepare, seed)
        ds = _BlockShard(ds, self.local_batch_size, process_index, process_count)
        ds = ds.map(prepare)
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


def _field(meta: dict[str, Any], key: str) -> Any:
    if key in meta:
        return meta[key]
    return (meta.get("meta") or {}).get(key)


def oversample_indices(source: Any, spec: dict[str, Any], seed: int) -> list[int]:
    """The training stream's index list under `data.sample_weights` (see DataConfig).

    spec = {"key": field, "weights": {value: w >= 0}, "default": w for other values (1.0)}.
    Example i (value v of `key` in `source.metadata(i)`, or in its "meta") appears floor(w) times
    plus once more with probability frac(w), drawn once from `seed`: deterministic, and resumable
    because the list is fixed for the run (the iterator's position indexes it). Indices are in
    source order, each repeated in place; the training stream shuffles them.
    """
    unknown = set(spec) - {"key", "weights", "default"}
    if unknown or "key" not in spec or not isinstance(spec.get("weights", {}), dict):
        raise ValueError(f"data.sample_weights={spec!r}: give {{'key': <field>, 'weights': "
                         f"{{value: weight}}, 'default': 1.0}}; unknown keys {sorted(unknown)}")
    key, weights = spec["key"], dict(spec.get("weights", {}))
    default = float(spec.get("default", 1.0))
    for v, w in list(weights.items()) + [("default", default)]:
        if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
            raise ValueError(f"data.sample_weights: weight {w!r} for {v!r} must be a finite "
                             "number >= 0")
    n = len(source)
    values = [_field(source.metadata(i), key) for i in range(n)]
    if all(v is None for v in values):
        raise ValueError(f"data.sample_weights key {key!r} is in no example of {source!r}; use "
                         "a field of the records (e.g. 'speaker') or of their meta (e.g. 'accent')")
    w = np.asarray([float(weights.get(str(v), weights.get(v, default))) for v in values])
    u = np.random.default_rng([int(seed), 0x5A3]).random(n)
    counts = np.floor(w).astype(np.int64) + (u < w - np.floor(w))
    order = np.repeat(np.arange(n), counts).tolist()
    if not order:
        raise ValueError(f"data.sample_weights={spec!r} gives every example of {source!r} weight "
                         "0; nothing is left to train on")
    log.info("oversampling by %r: %d examples -> %d per pass", key, n, len(order))
    return order


def make_batches(source: Any, *, prepare: Prepare, collate: Collate, data_cfg: DataConfig,
                 train: bool, seed: int, process_index: int = 0,
                 process_count: int = 1) -> Batches:
    """Batches of `source` for this process (see the module docstring and docs/DESIGN.md).

    Train: shuffled with `seed` (reshuffled each epoch), repeated forever, local batch
    `data_cfg.batch_size // process_count`. Eval: one pass in order over this process's shard,
    local batch `data_cfg.eval_batch_size // process_count`, padded with weight-0 rows.
    Every process must pass the same `seed` (the shards are cut from one shuffled stream).
    """
    return Batches(source, prepare=prepare, collate=collate, data_cfg=data_cfg, train=train,
                   seed=seed, process_index=process_index, process_count=process_count)


def pad_rows(rows: Sequence[dict[str, Any]], batch_size: int,
             spec: dict[str, tuple[str, tuple[int, ...], Any]]) -> dict[str, np.ndarray]:
    """Stack fixed- or variable-length rows into padded arrays.

    `spec[key] = (dtype, trailing_shape, pad_value)`: each row's `key` is a scalar or an array
    whose shape fits in `trailing_shape` (padded at the end). Missing rows are all padding.
    Adds `weight` (1 real row, 0 padding) and `index` (-1 for padding) when the rows have it.
    """
    out: dict[str, np.ndarray] = {}
    for key, (dtype, shape, pad) in spec.items():
        arr = np.full((batch_size, *shape), pad, dtype=dtype)
        for k, r in enumerate(rows):
            v = np.asarray(r[key], dtype=dtype)
            if v.ndim == 0:
                arr[k] = v
            else:
                arr[(k, *[slice(0, n) for n in v.shape])] = v
        out[key] = arr
    out["weight"] = np.zeros((batch_size,), np.float32)
    out["weight"][: len(rows)] = 1.0
    if "index" not in out:
        out["index"] = np.full((batch_size,), -1, np.int32)
        for k, r in enumerate(rows):
            out["index"][k] = int(r["index"])
    return out
