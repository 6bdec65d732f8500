"""Data of the self-learning family.

  * `selflearn_requests(split)`: the request pool the simulated users draw from, HWU64 (train +
    test) and SLURP devel text, with slots. "system_train" is the part the simulated assistant's
    NLU model is trained on (a hash-chosen `system_share`, 60%, of HWU64 train); "unseen" is the
    rest of the pool (about half of it), phrasings the system has never seen, so its defects are
    real model errors; "pool" is everything. Texts that repeat are kept once.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from jaxslu import paths
from jaxslu.data.sources import ExampleSource, slurp_records
from jaxslu.nlu.data import read_hwu64
from jaxslu.registry import DATASETS

SPLITS = ("system_train", "unseen", "pool")


def _bucket(text: str) -> float:
    h = hashlib.sha1(("selflearn:" + text).encode()).digest()
    return int.from_bytes(h[:4], "little") / 2 ** 32


def request_pool(hwu64_path: str = "", slurp_path: str = "",
                 system_share: float = 0.6) -> dict[str, list[dict[str, Any]]]:
    """{"system_train": [...], "unseen": [...]} records (Example dicts), disjoint by text."""
    if not 0.0 < system_share < 1.0:
        raise ValueError(f"system_share={system_share} must be in (0, 1)")
    root = Path(hwu64_path) if hwu64_path else paths.data_dir() / "hwu64"
    hwu_train = read_hwu64(root / "train.jsonl")
    rest = read_hwu64(root / "test.jsonl")
    slurp = Path(slurp_path) if slurp_path else paths.data_dir() / "slurp" / "devel.jsonl"
    if slurp.is_file():
        for r in slurp_records(slurp):
            r = dict(r, meta=dict(r["meta"], domain=r["meta"]["scenario"]))
            rest.append(r)
    seen: set[str] = set()
    out: dict[str, list] = {"system_train": [], "unseen": []}
    for part, recs in (("train", hwu_train), ("rest", rest)):
        for r in recs:
            key = " ".join(r["text"].split())
            if key in seen:
                continue
            seen.add(key)
            split = ("system_train" if part == "train" and _bucket(key) < system_share
                     else "unseen")
            out[split].append(r)
    return out


@DATASETS.register("selflearn_requests")
def selflearn_requests(split: str = "pool", *, hwu64_path: str = "", slurp_path: str = "",
                       system_share: float = 0.6) -> ExampleSource:
    """The request pool (module docstring); splits "system_train", "unseen", "pool"."""
    parts = request_pool(hwu64_path, slurp_path, system_share)
    if split == "pool":
        records = parts["system_train"] + parts["unseen"]
    elif split in parts:
        records = parts[split]
    else:
        raise ValueError(f"selflearn_requests split {split!r} unknown; use one of {SPLITS}")
    return ExampleSource("selflearn_requests", split, records)
