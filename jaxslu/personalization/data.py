"""Sources of the personalization family: one row = one user's events in time order.

Row (`metadata(i)`):
  {"id": user, "events": [{"label": str, "text": str, "feats": [str, ...], "meta": {...}}, ...],
   "score_from": int}   # positions >= score_from are predicted and scored

Registered sources (`jaxslu.registry.DATASETS`):
  * `assistant_log`: the simulated assistant log (`jaxslu.personalization.simulator`), from a
    JSONL file (`path`) or generated deterministically (`num_users`, `sim_seed`, ...); users are
    split 80/10/10 into train/dev/test by a hash of their id, so test users are users the model
    has never seen: it knows them only through their history. Every request is scored.
  * `movielens_seq`: MovieLens-100K (`path`, see `jaxslu.data.movielens`), each user's ratings
    in time order (ties by file order); leave-one-out: train = all but the last two, dev
    predicts the second last, test the last (the SASRec protocol). Request features: the user's
    age band, gender, occupation, and the hour and weekday of the rating.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Sequence


from jaxslu.registry import DATASETS

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")


class SequenceSource:
    """A list of user rows; grain random access by index."""

    def __init__(self, rows: list[dict[str, Any]], name: str, catalogue: Sequence[str] = ()):
        self.rows = rows
        self.name = name
        #: every label the task may predict (known up front, e.g. the item catalogue); empty:
        #: the labels of the training rows
        self.catalogue = list(catalogue)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[int(i)]

    def metadata(self, i: int) -> dict[str, Any]:
        return self.rows[int(i)]

    def text(self, i: int) -> str:
        return " ".join(e["text"] for e in self.rows[int(i)]["events"])

    def __repr__(self) -> str:
        return f"<{self.name}: {len(self.rows)} users>"


def user_split(user: str, seed: int = 0) -> str:
    h = int(hashlib.sha256(f"{seed}:{user}".encode()).hexdigest()[:8], 16) % 10
    return "train" if h < 8 else ("dev" if h == 8 else "test")


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: use one of {', '.join(SPLITS)}")
    return split


def time_feats(seconds: float) -> list[str]:
    """hour and weekday of a time in seconds (UTC)."""
    s = int(seconds)
    return [f"hour={(s // 3600) % 24}", f"weekday={(s // 86400 + 3) % 7}"]  # 1970-01-01: Thu


def log_rows(events: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Simulator events -> user -> events of the row format (time order)."""
    users: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        users.setdefault(e["user"], []).append(e)
    out = {}
    for u, evs in users.items():
        evs = sorted(evs, key=lambda e: e["time"])
        out[u] = [{"label": e["label"], "text": e["text"],
                   "feats": [f"hour={int(e['hour'])}", f"weekday={int(e['weekday'])}"],
                   "meta": {"kind": e.get("kind", ""), "ambiguous": bool(e.get("ambiguous")),
                            "intent": e.get("intent", "")}} for e in evs]
    return out


_LOG_CACHE: dict[tuple, list[dict[str, Any]]] = {}


def _simulated(path: str, num_users: int, sim_seed: int, sim_options: dict) -> list[dict]:
    from jaxslu.personalization import simulator as sim

    if path:
        p = Path(path).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"assistant log {p} not found; write one with `jaxslu "
                                    "simulate-log --out FILE` or drop data.options.path "
                                    "to simulate in memory")
        key = ("file", str(p.resolve()), p.stat().st_mtime_ns)
        if key not in _LOG_CACHE:
            _LOG_CACHE[key] = sim.read_log(p)
        return _LOG_CACHE[key]
    key = ("sim", num_users, sim_seed, tuple(sorted(sim_options.items())))
    if key not in _LOG_CACHE:
        _LOG_CACHE[key] = sim.simulate(sim.SimulatorConfig(num_users=num_users, seed=sim_seed,
                                                           **sim_options))
    return _LOG_CACHE[key]


@DATASETS.register("assistant_log")
def assistant_log(split: str, *, path: str = "", num_users: int = 2000, sim_seed: int = 0,
                  split_seed: int = 0, sim_options: dict | None = None) -> SequenceSource:
    _check_split(split)
    events = _simulated(path, int(num_users), int(sim_seed), dict(sim_options or {}))
    users = log_rows(events)
    rows = [{"id": u, "events": evs, "score_from": 0}
            for u, evs in sorted(users.items()) if user_split(u, split_seed) == split]
    if not rows:
        raise ValueError(f"assistant_log {split}: no users fall in this split "
                         f"({len(users)} users in all); simulate more users")
    return SequenceSource(rows, f"assistant_log[{split}]")


def _age_band(age: str) -> str:
    try:
        a = int(age)
    except (TypeError, ValueError):
        return "age=?"
    for lo, hi in ((0, 17), (18, 24), (25, 34), (35, 44), (45, 49), (50, 55)):
        if lo <= a <= hi:
            return f"age={lo}-{hi}"
    return "age=56+"


_ML_CACHE: dict[str, Any] = {}


@DATASETS.register("movielens_seq")
def movielens_seq(split: str, *, path: str = "", min_events: int = 5) -> SequenceSource:
    from jaxslu.data.movielens import find_movielens, load_movielens

    _check_split(split)
    where = str(find_movielens(path or None))
    if where not in _ML_CACHE:
        _ML_CACHE[where] = load_movielens(where)
    ml = _ML_CACHE[where]
    drop = {"train": 2, "dev": 1, "test": 0}[split]
    rows = []
    skipped = 0
    for user, idx in sorted(ml.sequences().items(), key=lambda kv: kv[0]):
        if len(idx) < max(int(min_events), 3):
            skipped += 1
            continue
        info = ml.user_info.get(user, {})
        static = [_age_band(info.get("age", "")), f"gender={info.get('gender', '?')}",
                  f"occupation={info.get('occupation', '?')}"]
        keep = idx[:len(idx) - drop] if drop else idx
        events = [{"label": str(ml.items[i]), "text": "",
                   "feats": static + time_feats(float(ml.timestamps[i])),
                   "meta": {"rating": float(ml.ratings[i])}} for i in keep]
        rows.append({"id": user, "events": events,
                     "score_from": 0 if split == "train" else len(events) - 1})
    if skipped:
        log.info("movielens_seq: %d users with fewer than %d ratings left out", skipped,
                 max(int(min_events), 3))
    catalogue = sorted(set(map(str, ml.items)) | set(ml.item_info), key=_natural)
    return SequenceSource(rows, f"movielens_seq[{split}]", catalogue=catalogue)


def _natural(s: str):
    return (0, int(s), "") if s.isdigit() else (1, 0, s)
