"""Frozen-encoder features: the token states of every text after the first layers of a
pretrained BERT-family checkpoint, computed once and cached on disk.

Discovery fine-tunes only the top `trainable_layers` of the checkpoint (the pooled top is what
the pairwise loss shapes); the frozen bottom is the same function of the text in every run, seed
and known ratio, so its output is computed once per (checkpoint, depth, texts) and reused: the
top layers then train and embed at a fraction of the full encoder's cost. The cache key is a
hash of the checkpoint's weights file, the depth, `max_tokens` and the texts; a store is written
to a temporary folder and renamed, so an interrupted build leaves no half-written cache.

Layout of a store folder: `hidden.npy` float16 [total tokens, H] (memory-mapped), `offsets.npy`
int64 [N + 1] (text i's tokens are rows offsets[i]:offsets[i+1], [CLS] ... [SEP]), `meta.json`.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import jax
import numpy as np
from flax import nnx


class FeatureStore:
    def __init__(self, directory: str | Path):
        d = Path(directory)
        missing = [f for f in ("hidden.npy", "offsets.npy", "meta.json") if not (d / f).exists()]
        if missing:
            raise FileNotFoundError(f"feature store {str(d)!r} lacks {missing}; rebuild it with "
                                    "FeatureStore.build (jaxslu discover does)")
        self.directory = d
        self.hidden = np.load(d / "hidden.npy", mmap_mode="r")
        self.offsets = np.load(d / "offsets.npy")
        self.meta = json.loads((d / "meta.json").read_text())

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def dim(self) -> int:
        return int(self.hidden.shape[1])

    def length(self, row: int) -> int:
        return int(self.offsets[row + 1] - self.offsets[row])

    def get(self, row: int) -> np.ndarray:
        """Token states [L, H] float16 of text `row`."""
        if not 0 <= row < len(self):
            raise IndexError(f"feature row {row} outside the store's {len(self)} texts")
        return np.asarray(self.hidden[self.offsets[row]:self.offsets[row + 1]])

    @classmethod
    def build(cls, texts: Sequence[str], checkpoint: str | Path, frozen_layers: int,
              max_tokens: int, cache_dir: str | Path, batch_size: int = 128) -> "FeatureStore":
        from jaxslu.nlu.bert import HFTokenizer, load_pretrained

        checkpoint = Path(checkpoint)
        key = cache_key(texts, checkpoint, frozen_layers, max_tokens)
        final = Path(cache_dir) / f"bert{frozen_layers}_{key}"
        if (final / "meta.json").exists():
            return cls(final)
        encoder = load_pretrained(checkpoint)
        if not 0 <= frozen_layers <= encoder.cfg.num_layers:
            raise ValueError(f"frozen_layers={frozen_layers} outside 0..{encoder.cfg.num_layers} "
                             f"(the layers of {checkpoint})")
        tokenizer = HFTokenizer(checkpoint / "tokenizer.json")
        enc = tokenizer.encode_batch(list(texts), max_tokens)
        lengths = enc["attention_mask"].sum(axis=1).astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        hidden = np.zeros((int(offsets[-1]), encoder.cfg.hidden_size), np.float16)
        graphdef, state = nnx.split(encoder)
        fn = _bottom_fn(graphdef, frozen_layers)
        order = np.argsort(-lengths, kind="stable")
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            width = int(-(-int(lengths[idx].max()) // 8) * 8)
            rows = {k: np.zeros((batch_size, width), np.int32) for k in enc}
            for k in enc:
                rows[k][:len(idx)] = enc[k][idx, :width]
            rows["input_ids"][len(idx):] = tokenizer.pad_id
            rows["attention_mask"][len(idx):, 0] = 1
            out = np.asarray(fn(state, rows["input_ids"], rows["attention_mask"],
                                rows["token_type_ids"]))
            for j, i in enumerate(idx):
                hidden[offsets[i]:offsets[i + 1]] = out[j, :lengths[i]].astype(np.float16)
        tmp = final.parent / f".{final.name}.tmp{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        np.save(tmp / "hidden.npy", hidden)
        np.save(tmp / "offsets.npy", offsets)
        (tmp / "meta.json").write_text(json.dumps({
            "checkpoint": str(checkpoint), "frozen_layers": frozen_layers,
            "total_layers": encoder.cfg.num_layers, "hidden_size": encoder.cfg.hidden_size,
            "max_tokens": max_tokens, "texts": len(texts), "key": key}, indent=1))
        if final.exists():  # another process finished first: same content
            shutil.rmtree(tmp)
        else:
            tmp.rename(final)
        return cls(final)


def cache_key(texts: Sequence[str], checkpoint: Path, frozen_layers: int, max_tokens: int) -> str:
    from jaxslu.provenance import file_sha256

    h = hashlib.sha256()
    weights = checkpoint / "model.safetensors"
    h.update((file_sha256(weights) if weights.exists() else str(checkpoint)).encode())
    h.update(f"|{frozen_layers}|{max_tokens}|".encode())
    for t in texts:
        h.update(t.encode("utf-8") + b"\n")
    return h.hexdigest()[:20]


@functools.lru_cache(maxsize=4)
def _bottom_fn(graphdef, frozen_layers: int):
    @jax.jit
    def f(state, ids, mask, types):
        enc = nnx.merge(graphdef, state)
        return enc(ids, mask, types, num_layers=frozen_layers)
    return f
