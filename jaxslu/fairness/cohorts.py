"""Cohort discovery from an evaluation's per-example records: which groups of speakers does the
recognizer serve worst, found without (geo) or even without any (embedding) demographic labels.

    jaxslu cohorts --workdir W --split test --method geo [--min-size N] [--max-depth D]
    jaxslu cohorts --workdir W --split test --method embedding [--k K] [--embeddings FILE.npz]

Input: W/predictions_<split>.jsonl as written by `jaxslu eval` (one record per utterance with
"id", "speaker", "meta" {"lat", "lon", "accent", ...}, "ref", "hyp"; see
jaxslu/slu/evaluate.py). Word errors per utterance come from `jaxslu.text.metrics.wer` (with its
normalization), so a cohort's WER is exactly what the evaluation report would say for its
utterances. Every WER here is CORPUS level: sum of word errors / sum of reference words.

The unit is the SPEAKER: a speaker's utterances are never split between cohorts (membership is a
property of a person, and a speaker's utterances are correlated). Every record needs a speaker.

Methods
-------
geo (`geo_cohorts`)
    Recursive binary splits of the speakers by latitude or longitude (a CART-like tree on the
    speakers' home coordinates, meta.lat / meta.lon). Candidate thresholds are the midpoints
    between consecutive distinct speaker coordinates on that axis; a split sends coord < t left
    and coord >= t right. The split taken is the one maximizing |WER_left - WER_right| over both
    axes subject to both sides having >= `min_size` utterances and > 0 reference words, and a gap
    > `min_gap` (default 0: a split that separates nothing is not made). Ties (gaps equal to
    1e-12) go to the more balanced split (utterances), then latitude before longitude, then the
    smaller threshold. Recursion stops when a node has no valid split or reaches `max_depth`
    (default 3, so at most 8 cohorts). The search is greedy (each split optimal given its
    parent), not a global optimum over trees. Leaves are the cohorts; each has a bounding box of
    half-open intervals lo <= x < hi with -inf/+inf at the outer edges (JSON: null), so the boxes
    PARTITION the plane: any finite (lat, lon) falls in exactly one leaf (`assign_region`, for
    speakers never seen). Names come from the box, e.g. "lat<52.1,lon>=-3" or
    "51.2<=lat<52.1"; a tree without splits has the one cohort "all".
    The default `min_size` (`default_min_size`) is 10% of the split's utterances, at least 1.

embedding (`embedding_cohorts`)
    Speaker vectors clustered with k-means into k "virtual regions": no labels, no coordinates.
    Vectors come from `--embeddings FILE.npz` (e.g. a speaker-verification model; keys: one array
    per speaker id, or the two arrays "speakers" (str [S]) and "vectors" ([S, D])) or, by default,
    from the run's own ASR encoder (`encoder_speaker_vectors`): per utterance the mean of the
    encoder output (`model.encode`, projected to the joint dimension) over its valid frames
    (length-masked), then the mean over a speaker's utterances (each utterance weighs the same).
    Every speaker vector is L2-normalized before clustering (so Euclidean k-means ranks like
    cosine similarity; a zero vector is an error). Speakers weigh the same whatever their number
    of utterances. k-means: numpy Lloyd iterations from k-means++ seeds, `n_init` restarts
    (default 10), the lowest inertia kept; speakers are sorted by id first and every restart's
    generator derives from `seed`, so the result is deterministic and independent of the input
    order. An emptied cluster is re-seeded with the point farthest from its centroid. Clusters
    are named "virtual-1".. in the order of their first speaker (sorted ids), which does not
    depend on their WERs. `assign_nearest(centroids, vector)` places a new speaker (its vector
    normalized the same way). The default k (`default_k`) is min(4, number of speakers); an
    explicit k larger than the number of speakers is an error.

Per cohort and per method
-------------------------
Each cohort: speakers, utterances, errors, words, wer, a bootstrap 95% percentile interval of its
WER, and its accents (counts of speakers per meta accent, when recorded). The bootstrap resamples
SPEAKERS with replacement within the cohort (a cluster bootstrap: utterances of one speaker are
correlated, so resampling utterances would understate the uncertainty); a cohort of a single
speaker has no between-speaker variation to draw on and resamples its utterances instead
(`interval_unit` says which). n = 1000 replicates, the generator seeded from `seed` and the
cohort's speaker ids (so a cohort's interval does not depend on the other cohorts); replicates
with no reference words are dropped. `bootstrap_unit="utterance"` resamples utterances
everywhere. The intervals are CONDITIONAL on the discovered partition: the search that picked the
cohorts (a maximized gap) is not redone per replicate, so the worst cohort's WER and the gap are
optimistic (winner's curse); compare cohorts on held-out data (`assign_region` / `assign_nearest`
on another split) before acting on a gap. Cohorts are ranked worst WER first (ties by name). The
method's summary: relative_gap = (worst - best) / best (JSON null when best is 0 and worst > 0, 0
when both are 0), bottom_share = the worst cohort's utterances / all utterances, and accent_ari,
the adjusted Rand index between cohorts and the speakers' accents (how much of the cohort
structure is accent).

`paired_bootstrap(records_a, records_b)`: the WER difference delta = WER_b - WER_a of two systems
on the same utterances (matched by id; the ids and references must agree), with a 95% interval
and p(delta >= 0), the share of replicates in which b is not better than a (a one-sided p-value
for "b improves on a"). The same replicate indices are used for both systems (paired), by
speaker by default.

Outputs (`cohorts_report`): W/cohorts_<split>_<method>.json, W/cohorts_<split>_<method>_map.png
(speakers at their homes, lon on x and lat on y, coloured by cohort, with the geo boxes; for the
embedding method on a corpus without coordinates, the first two principal components of the
speaker vectors instead) and W/cohorts_<split>_<method>_wer.png (WER per cohort with the
bootstrap intervals as error bars), all written atomically (temporary file + rename). With
`out=DIR` the method's entry is also merged into DIR/cohorts.json, {"methods": [...]} (an entry
of the same method and split is replaced), with copies of the two PNGs beside it. Plot paths in
a JSON file are file names relative to that file's folder. Non-finite numbers are written as
null. Without matplotlib the plots are skipped with a warning.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from jaxslu.text import metrics as M
from jaxslu.text.normalize import normalize_text

log = logging.getLogger("jaxslu")

__all__ = [
    "Cohort", "utterance_errors", "read_records", "speaker_table", "geo_cohorts", "assign_region",
    "kmeans", "embedding_cohorts", "assign_nearest", "load_speaker_vectors",
    "encoder_speaker_vectors", "bootstrap_interval", "paired_bootstrap", "summarize_cohorts",
    "adjusted_rand_index", "plot_map", "plot_wer", "cohorts_report", "default_min_size",
    "default_k", "format_table", "METHODS",
]

METHODS = ("geo", "embedding")
N_BOOT = 1000
LEVEL = 0.95
_TIE = 1e-12


# ------------------------------------------------------------------------------------------------
# Records -> per-utterance and per-speaker error counts
# ------------------------------------------------------------------------------------------------


def _rec_name(rec: Mapping[str, Any], k: int) -> str:
    return f"record {k} (id {rec.get('id')!r}, speaker {rec.get('speaker')!r})"


def utterance_errors(records: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(word errors int64 [n], reference words int64 [n]) of each record, by
    `jaxslu.text.metrics.wer` on its "ref" and "hyp" (normalized as in the evaluation report)."""
    errors = np.zeros(len(records), np.int64)
    words = np.zeros(len(records), np.int64)
    for k, rec in enumerate(records):
        if "ref" not in rec or "hyp" not in rec:
            raise ValueError(f"{_rec_name(rec, k)} has no 'ref'/'hyp' transcript: cohorts need "
                             "the per-example records of a speech evaluation (jaxslu eval)")
        e = M.wer([rec["ref"]], [rec["hyp"]])
        errors[k], words[k] = e.errors, e.ref_len
    return errors, words


def read_records(workdir: str | os.PathLike, split: str) -> list[dict]:
    """The records of W/predictions_<split>.jsonl; a clear error when it is missing or empty."""
    path = Path(workdir) / f"predictions_{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `jaxslu eval --workdir {workdir} --split "
                                f"{split}` first (cohorts are computed from its per-example "
                                "records)")
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n} is not a JSON line ({e}); rerun `jaxslu eval "
                                 f"--workdir {workdir} --split {split}`") from None
    if not records:
        raise ValueError(f"{path} holds no records: nothing to form cohorts from")
    return records


def _speaker_of(rec: Mapping[str, Any], k: int) -> str:
    spk = rec.get("speaker")
    if spk is None or spk == "":
        raise ValueError(f"{_rec_name(rec, k)} has no speaker: cohorts are groups of speakers; "
                         "evaluate a corpus whose records name their speaker")
    return str(spk)


def _coords_of(rec: Mapping[str, Any]) -> tuple[float, float] | None:
    meta = rec.get("meta") or {}
    lat, lon = meta.get("lat", rec.get("lat")), meta.get("lon", rec.get("lon"))
    if lat is None or lon is None:
        return None
    try:
        lat, lon = float(lat), float(lon)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(lat) and math.isfinite(lon)):
        return None
    return lat, lon


@dataclasses.dataclass
class SpeakerTable:
    """Per-speaker totals, speakers sorted by id. `lat`/`lon` are NaN where unknown."""

    ids: list[str]
    utterances: np.ndarray  # int64 [S]
    errors: np.ndarray  # int64 [S]
    words: np.ndarray  # int64 [S]
    lat: np.ndarray  # float64 [S]
    lon: np.ndarray  # float64 [S]
    accent: list[str | None]
    utt_speaker: np.ndarray  # int64 [n]: the speaker index of each record
    utt_errors: np.ndarray
    utt_words: np.ndarray


def speaker_table(records: Sequence[Mapping[str, Any]], *, need_coords: bool = False
                  ) -> SpeakerTable:
    """Aggregate records per speaker. With `need_coords`, every record must carry finite
    meta.lat / meta.lon and a speaker must have one home (else a ValueError naming the record)."""
    if not records:
        raise ValueError("no records: nothing to form cohorts from")
    errors, words = utterance_errors(records)
    speakers = [_speaker_of(r, k) for k, r in enumerate(records)]
    ids = sorted(set(speakers))
    index = {s: i for i, s in enumerate(ids)}
    S = len(ids)
    utt_speaker = np.array([index[s] for s in speakers], np.int64)
    lat = np.full(S, np.nan)
    lon = np.full(S, np.nan)
    first: dict[int, int] = {}
    accent: list[str | None] = [None] * S
    for k, rec in enumerate(records):
        i = int(utt_speaker[k])
        c = _coords_of(rec)
        if c is None:
            if need_coords:
                raise ValueError(
                    f"{_rec_name(rec, k)} has no finite meta.lat/meta.lon: the geo method needs "
                    "every speaker's home coordinates; evaluate a corpus whose metadata carries "
                    "them (e.g. spoken_slurp), drop such records, or use --method embedding")
        elif i not in first:
            first[i] = k
            lat[i], lon[i] = c
        elif need_coords and (abs(lat[i] - c[0]) > 1e-6 or abs(lon[i] - c[1]) > 1e-6):
            j = first[i]
            raise ValueError(
                f"speaker {ids[i]!r} has two homes: ({lat[i]}, {lon[i]}) in "
                f"{_rec_name(records[j], j)} and {c} in {_rec_name(rec, k)}; a speaker must "
                "have one (lat, lon) since cohorts never split a speaker")
        a = rec.get("accent", (rec.get("meta") or {}).get("accent"))
        if accent[i] is None and a not in (None, ""):
            accent[i] = str(a)
    return SpeakerTable(
        ids=ids, utterances=np.bincount(utt_speaker, minlength=S).astype(np.int64),
        errors=np.bincount(utt_speaker, weights=errors, minlength=S).astype(np.int64),
        words=np.bincount(utt_speaker, weights=words, minlength=S).astype(np.int64),
        lat=lat, lon=lon, accent=accent, utt_speaker=utt_speaker, utt_errors=errors,
        utt_words=words)


def _rate(errors: float, words: float) -> float:
    """Corpus WER with `jaxslu.text.metrics.ErrorRate`'s rule for no reference words."""
    if words == 0:
        return 0.0 if errors == 0 else math.inf
    return float(errors) / float(words)


# ------------------------------------------------------------------------------------------------
# Cohorts
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Cohort:
    """One cohort of speakers. `bounds` (geo): {"lat": (lo, hi), "lon": (lo, hi)}, half-open
    lo <= x < hi, +-inf at the outer edges; `path` (geo): the splits from the root to this leaf;
    `centroid` (embedding): the k-means centroid (in the space of L2-normalized vectors)."""

    name: str
    speakers: list[str]
    utterances: int
    errors: int
    words: int
    wer: float
    interval: tuple[float, float] = (math.nan, math.nan)
    interval_unit: str = ""
    accents: dict[str, int] = dataclasses.field(default_factory=dict)
    bounds: dict[str, tuple[float, float]] | None = None
    path: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    centroid: np.ndarray | None = None

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "speakers": list(self.speakers),
                             "utterances": int(self.utterances), "wer": self.wer,
                             "errors": int(self.errors), "words": int(self.words),
                             "interval": [self.interval[0], self.interval[1]],
                             "interval_unit": self.interval_unit, "accents": dict(self.accents)}
        if self.bounds is not None:
            d["bounds"] = {ax: [None if math.isinf(lo) else lo, None if math.isinf(hi) else hi]
                           for ax, (lo, hi) in self.bounds.items()}
            d["path"] = [dict(p) for p in self.path]
        if self.centroid is not None:
            d["centroid"] = [round(float(x), 6) for x in self.centroid]
        return d


def _cohort(name: str, members: np.ndarray, table: SpeakerTable, **extra) -> Cohort:
    members = np.sort(np.asarray(members, np.int64))
    e, w = int(table.errors[members].sum()), int(table.words[members].sum())
    accents: dict[str, int] = {}
    for i in members:
        if table.accent[i] is not None:
            accents[table.accent[i]] = accents.get(table.accent[i], 0) + 1
    return Cohort(name=name, speakers=[table.ids[i] for i in members],
                  utterances=int(table.utterances[members].sum()), errors=e, words=w,
                  wer=_rate(e, w), accents=dict(sorted(accents.items())), **extra)


def _rank(cohorts: list[Cohort]) -> list[Cohort]:
    return sorted(cohorts, key=lambda c: (-c.wer, c.name))


def _finish(cohorts: list[Cohort], table: SpeakerTable, n_boot: int, seed: int,
            bootstrap_unit: str) -> list[Cohort]:
    if bootstrap_unit not in ("speaker", "utterance"):
        raise ValueError(f"bootstrap_unit must be 'speaker' or 'utterance', got {bootstrap_unit!r}")
    index = {s: i for i, s in enumerate(table.ids)}
    for c in cohorts:
        members = np.array([index[s] for s in c.speakers], np.int64)
        unit = bootstrap_unit if len(members) > 1 else "utterance"
        if unit == "speaker":
            num, den = table.errors[members], table.words[members]
        else:
            rows = np.isin(table.utt_speaker, members)
            num, den = table.utt_errors[rows], table.utt_words[rows]
        key = zlib.crc32("\0".join(c.speakers).encode())
        c.interval = bootstrap_interval(num, den, n=n_boot, seed=(seed, key))
        c.interval_unit = unit
    return _rank(cohorts)


# ------------------------------------------------------------------------------------------------
# Geographic cohorts
# ------------------------------------------------------------------------------------------------


def default_min_size(num_utterances: int) -> int:
    """The geo method's default minimum cohort size: 10% of the utterances, at least 1."""
    return max(1, int(math.ceil(0.1 * num_utterances)))


def _best_split(lat, lon, err, wrd, utt, min_size: int, min_gap: float):
    """The best (gap, axis, threshold) over both axes for the speakers given, or None."""
    best, best_key = None, None
    for axis_order, (axis, coord) in enumerate((("lat", lat), ("lon", lon))):
        order = np.argsort(coord, kind="stable")
        c = coord[order]
        uniq, start = np.unique(c, return_index=True)
        if len(uniq) < 2:
            continue
        ge, gw, gu = (np.add.reduceat(x[order], start) for x in (err, wrd, utt))
        le, lw, lu = np.cumsum(ge)[:-1], np.cumsum(gw)[:-1], np.cumsum(gu)[:-1]
        re_, rw, ru = ge.sum() - le, gw.sum() - lw, gu.sum() - lu
        valid = (lu >= min_size) & (ru >= min_size) & (lw > 0) & (rw > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            gap = np.abs(le / np.maximum(lw, 1) - re_ / np.maximum(rw, 1))
        valid &= gap > min_gap
        for j in np.flatnonzero(valid):
            t = float((uniq[j] + uniq[j + 1]) / 2.0)
            if not uniq[j] < t <= uniq[j + 1]:  # adjacent floats: the midpoint rounds onto one
                t = float(uniq[j + 1])
            key = (-round(float(gap[j]) / _TIE) * _TIE, abs(int(lu[j]) - int(ru[j])), axis_order,
                   t)
            if best_key is None or key < best_key:
                best_key, best = key, (float(gap[j]), axis, t)
    return best


def _fmt(x: float) -> str:
    s = f"{x:.5f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _box_name(bounds: dict[str, tuple[float, float]]) -> str:
    parts = []
    for ax in ("lat", "lon"):
        lo, hi = bounds[ax]
        if math.isinf(lo) and math.isinf(hi):
            continue
        if math.isinf(lo):
            parts.append(f"{ax}<{_fmt(hi)}")
        elif math.isinf(hi):
            parts.append(f"{ax}>={_fmt(lo)}")
        else:
            parts.append(f"{_fmt(lo)}<={ax}<{_fmt(hi)}")
    return ",".join(parts) or "all"


def geo_cohorts(records: Sequence[Mapping[str, Any]], min_size: int | None = None,
                max_depth: int | None = 3, *, min_gap: float = 0.0, n_boot: int = N_BOOT,
                seed: int = 0, bootstrap_unit: str = "speaker") -> list[Cohort]:
    """Geographic cohorts: leaves of recursive lat/lon splits of the speakers, each split the one
    maximizing |WER_left - WER_right| with both sides >= `min_size` utterances (default
    `default_min_size`); `max_depth=None` splits until no valid split is left. Returns the
    cohorts ranked worst WER first, each with its half-open bounding box (`assign_region`)."""
    table = speaker_table(records, need_coords=True)
    if min_size is None:
        min_size = default_min_size(len(records))
    if isinstance(min_size, bool) or int(min_size) != min_size or min_size < 1:
        raise ValueError(f"min_size must be a positive number of utterances, got {min_size!r}")
    if max_depth is not None and max_depth < 0:
        raise ValueError(f"max_depth must be >= 0 or None, got {max_depth!r}")
    min_size = int(min_size)
    inf = math.inf
    leaves: list[Cohort] = []

    def grow(members, bounds, depth, path):
        split = None
        if max_depth is None or depth < max_depth:
            split = _best_split(table.lat[members], table.lon[members], table.errors[members],
                                table.words[members], table.utterances[members], min_size,
                                min_gap)
        if split is None:
            leaves.append(_cohort(_box_name(bounds), members, table,
                                  bounds={k: tuple(v) for k, v in bounds.items()},
                                  path=[dict(p) for p in path]))
            return
        gap, axis, t = split
        coord = table.lat[members] if axis == "lat" else table.lon[members]
        left, right = members[coord < t], members[coord >= t]
        lo, hi = bounds[axis]
        for side, sub, box in (("<", left, (lo, t)), (">=", right, (t, hi))):
            step = {"depth": depth, "axis": axis, "threshold": t, "side": side, "gap": gap}
            grow(sub, {**bounds, axis: box}, depth + 1, path + [step])

    grow(np.arange(len(table.ids)), {"lat": (-inf, inf), "lon": (-inf, inf)}, 0, [])
    return _finish(leaves, table, n_boot, seed, bootstrap_unit)


def _get(c: Any, name: str):
    return c[name] if isinstance(c, Mapping) else getattr(c, name)


def _bounds_arrays(cohorts: Sequence[Any]) -> np.ndarray:
    out = np.empty((len(cohorts), 4))
    for i, c in enumerate(cohorts):
        b = _get(c, "bounds")
        if b is None:
            raise ValueError(f"cohort {i} ({_get(c, 'name')!r}) has no bounds: assign_region needs "
                             "geo cohorts (use assign_nearest for embedding cohorts)")
        for j, (ax, side) in enumerate((("lat", 0), ("lat", 1), ("lon", 0), ("lon", 1))):
            v = b[ax][side]
            out[i, j] = (-math.inf if side == 0 else math.inf) if v is None else float(v)
    return out


def assign_region(cohorts: Sequence[Any], lat, lon):
    """The index (into `cohorts`) of the geo cohort whose box holds (lat, lon): scalars give an
    int, arrays an int64 array. `cohorts`: `Cohort`s or their JSON dicts (bounds null = inf).
    Coordinates must be finite; boxes that do not partition the plane are an error."""
    b = _bounds_arrays(cohorts)
    la, lo = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
    if not (np.isfinite(la).all() and np.isfinite(lo).all()):
        raise ValueError(f"assign_region needs finite coordinates, got lat={lat!r}, lon={lon!r}")
    la, lo = np.broadcast_arrays(la, lo)
    inside = ((b[:, 0] <= la[..., None]) & (la[..., None] < b[:, 1])
              & (b[:, 2] <= lo[..., None]) & (lo[..., None] < b[:, 3]))
    count = inside.sum(-1)
    if (count != 1).any():
        k = int(np.flatnonzero(count.ravel() != 1)[0])
        raise ValueError(f"({la.ravel()[k]}, {lo.ravel()[k]}) falls in {int(count.ravel()[k])} "
                         "cohort boxes: these cohorts' boxes do not partition the plane (pass "
                         "all the leaves of one geo_cohorts result)")
    idx = inside.argmax(-1).astype(np.int64)
    return int(idx) if idx.ndim == 0 else idx


# ------------------------------------------------------------------------------------------------
# Embedding cohorts
# ------------------------------------------------------------------------------------------------


def default_k(num_speakers: int) -> int:
    """The embedding method's default number of clusters: min(4, speakers)."""
    return max(1, min(4, num_speakers))


def _kmeans_pp(X: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    n = len(X)
    centers = [int(rng.integers(n))]
    d2 = ((X - X[centers[0]]) ** 2).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        if total <= 0:  # every point sits on a centre already (duplicates)
            rest = np.setdiff1d(np.arange(n), centers)
            j = int(rng.choice(rest))
        else:
            j = int(rng.choice(n, p=d2 / total))
        centers.append(j)
        d2 = np.minimum(d2, ((X - X[j]) ** 2).sum(1))
    return X[centers].copy()


def _sq_dist(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    d = (X * X).sum(1)[:, None] - 2.0 * X @ C.T + (C * C).sum(1)[None, :]
    return np.maximum(d, 0.0)


def kmeans(X: np.ndarray, k: int, *, seed: int = 0, n_init: int = 10, max_iter: int = 300
           ) -> tuple[np.ndarray, np.ndarray, float]:
    """k-means (Lloyd) from k-means++ seeds, best of `n_init` restarts by inertia (the first on
    ties); deterministic in `seed`. Returns (labels int64 [n], centroids [k, D], inertia)."""
    X = np.asarray(X, np.float64)
    if X.ndim != 2 or not len(X):
        raise ValueError(f"kmeans needs a non-empty [n, D] array, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("kmeans: the vectors hold NaN or infinite values")
    n = len(X)
    if isinstance(k, bool) or int(k) != k or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, {n}] (the number of points), got {k!r}")
    k = int(k)
    best = None
    for r in range(max(1, int(n_init))):
        rng = np.random.default_rng([int(seed), r])
        C = _kmeans_pp(X, k, rng)
        labels = None
        for _ in range(max_iter):
            d = _sq_dist(X, C)
            new = d.argmin(1)
            for j in range(k):  # re-seed emptied clusters with the worst-served point
                if not (new == j).any():
                    far = int(d[np.arange(n), new].argmax())
                    C[j] = X[far]
                    d = _sq_dist(X, C)
                    new = d.argmin(1)
            if labels is not None and (new == labels).all():
                break
            labels = new
            C = np.stack([X[labels == j].mean(0) if (labels == j).any() else C[j]
                          for j in range(k)])
        inertia = float(_sq_dist(X, C)[np.arange(n), labels].sum())
        if best is None or inertia < best[2] - 1e-12:
            best = (labels.astype(np.int64), C, inertia)
    labels, C, inertia = best
    # canonical cluster order: by first member, so equal partitions give equal labels
    order = sorted(range(k), key=lambda j: int(np.flatnonzero(labels == j)[0])
                   if (labels == j).any() else n + j)
    remap = np.empty(k, np.int64)
    remap[order] = np.arange(k)
    return remap[labels], C[order], inertia


def _normalize_rows(X: np.ndarray, names: Sequence[str]) -> np.ndarray:
    norms = np.linalg.norm(X, axis=1)
    bad = np.flatnonzero(~(norms > 0) | ~np.isfinite(norms))
    if len(bad):
        raise ValueError(f"speaker vector(s) of {[names[i] for i in bad[:5]]} are zero or not "
                         "finite: cannot L2-normalize; fix the embeddings")
    return X / norms[:, None]


def embedding_cohorts(speaker_vectors: Mapping[str, Any], records: Sequence[Mapping[str, Any]],
                      k: int | None = None, seed: int = 0, *, n_init: int = 10,
                      n_boot: int = N_BOOT, bootstrap_unit: str = "speaker") -> list[Cohort]:
    """Virtual regions: k-means over the L2-normalized vectors of the records' speakers
    (`speaker_vectors`: speaker id -> vector; speakers without records are ignored). Returns the
    cohorts ranked worst WER first, each with its centroid (`assign_nearest`)."""
    table = speaker_table(records)
    vectors = {str(s): v for s, v in speaker_vectors.items()}
    missing = [s for s in table.ids if s not in vectors]
    if missing:
        raise ValueError(f"{len(missing)} speaker(s) of the records have no vector, e.g. "
                         f"{missing[:5]}: add them to the embeddings (speaker id -> vector) or "
                         "drop their records")
    rows = [np.asarray(vectors[s], np.float64).ravel() for s in table.ids]
    dims = {len(r) for r in rows}
    if len(dims) != 1:
        raise ValueError(f"speaker vectors have different lengths {sorted(dims)}: one embedding "
                         "space is needed")
    X = _normalize_rows(np.stack(rows), table.ids)
    if k is None:
        k = default_k(len(table.ids))
    if isinstance(k, bool) or int(k) != k or not 1 <= k <= len(table.ids):
        raise ValueError(f"k={k!r} clusters but the records have {len(table.ids)} speaker(s): "
                         f"choose k in [1, {len(table.ids)}]")
    labels, C, _ = kmeans(X, int(k), seed=seed, n_init=n_init)
    cohorts = [_cohort(f"virtual-{j + 1}", np.flatnonzero(labels == j), table, centroid=C[j])
               for j in range(int(k))]
    return _finish(cohorts, table, n_boot, seed, bootstrap_unit)


def assign_nearest(centroids, vector, *, normalize: bool = True):
    """The index of the nearest centroid (Euclidean) to `vector` ([D] -> int, or [n, D] -> int64
    array). `centroids`: an array [k, D] or `Cohort`s / their JSON dicts with a centroid. The
    vector is L2-normalized first (as the clustered speaker vectors were) unless `normalize` is
    False."""
    if isinstance(centroids, np.ndarray):
        C = np.asarray(centroids, np.float64)
    else:
        C = np.stack([np.asarray(_get(c, "centroid"), np.float64) for c in centroids])
    v = np.asarray(vector, np.float64)
    single = v.ndim == 1
    V = v[None] if single else v
    if V.ndim != 2 or V.shape[1] != C.shape[1]:
        raise ValueError(f"vector of shape {v.shape} does not match centroids of dimension "
                         f"{C.shape[1]}")
    if normalize:
        V = _normalize_rows(V, [f"vector {i}" for i in range(len(V))])
    idx = _sq_dist(V, C).argmin(1).astype(np.int64)
    return int(idx[0]) if single else idx


def load_speaker_vectors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Speaker vectors from an .npz: arrays "speakers" [S] and "vectors" [S, D], or one array per
    speaker id."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file {path} not found")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable .npz of speaker vectors ({e})") from None
    with z:
        names = list(z.files)
        if set(names) == {"speakers", "vectors"}:
            spk, vec = z["speakers"], z["vectors"]
            if vec.ndim != 2 or len(spk) != len(vec):
                raise ValueError(f"{path}: 'speakers' [S] and 'vectors' [S, D] disagree (shapes "
                                 f"{spk.shape}, {vec.shape})")
            return {str(s): np.asarray(v) for s, v in zip(spk.tolist(), vec)}
        if not names:
            raise ValueError(f"{path} holds no arrays")
        return {n: np.asarray(z[n]).ravel() for n in names}


def _pooled_encoder(model, batch):
    import jax.numpy as jnp

    enc, lengths = model.encode(batch["audio"], batch["audio_lengths"])
    mask = (jnp.arange(enc.shape[1])[None, :] < lengths[:, None]).astype(enc.dtype)
    total = (enc * mask[..., None]).sum(1)
    return total / jnp.maximum(lengths, 1).astype(enc.dtype)[:, None]


def encoder_speaker_vectors(workdir: str | os.PathLike, split: str,
                            records: Sequence[Mapping[str, Any]] | None = None, *,
                            overrides: Sequence[str] = (), run=None) -> dict[str, np.ndarray]:
    """Speaker vectors from the run's ASR encoder: per utterance the length-masked mean of
    `model.encode`'s output, averaged over each speaker's utterances (only the utterances whose
    ids are in `records`, when given). Not normalized (`embedding_cohorts` does that)."""
    workdir = Path(workdir)
    if run is None:
        if not (workdir / "config.json").is_file() or not (workdir / "checkpoints").is_dir():
            raise FileNotFoundError(f"{workdir} holds no trained run (config.json, checkpoints/) "
                                    "to take encoder embeddings from: pass --embeddings "
                                    "FILE.npz (speaker -> vector) instead")
        import jax

        from jaxslu.eval.run import LoadedRun
        run = LoadedRun.from_workdir(workdir, overrides, devices=jax.devices()[:1])
    if not hasattr(run.model(), "encode"):
        raise ValueError(f"the {run.cfg.model.name!r} model of {workdir} has no encode(): pass "
                         "--embeddings FILE.npz (speaker -> vector) instead")
    wanted = None if records is None else {str(r.get("id")) for r in records}
    source = run.task.open_source(split)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for batch in run.eval_batches(source):
        out, index, weight = run.apply(_pooled_encoder, batch)
        for vec, idx, w in zip(np.asarray(out, np.float64), index, weight):
            if idx < 0 or w == 0:
                continue
            meta = source.metadata(int(idx))
            if wanted is not None and str(meta.get("id", idx)) not in wanted:
                continue
            spk = meta.get("speaker")
            if spk is None:
                continue
            spk = str(spk)
            sums[spk] = sums.get(spk, 0.0) + vec
            counts[spk] = counts.get(spk, 0) + 1
    if not sums:
        raise ValueError(f"no utterance of split {split!r} matched the records: were the "
                         "predictions written by this run on this split?")
    return {s: sums[s] / counts[s] for s in sorted(sums)}


# ------------------------------------------------------------------------------------------------
# Bootstrap
# ------------------------------------------------------------------------------------------------


def _replicates(num: np.ndarray, den: np.ndarray, n: int, rng: np.random.Generator,
                num_b: np.ndarray | None = None) -> np.ndarray:
    """Ratio sum(num)/sum(den) over `n` resamples (with replacement) of the units; with `num_b`,
    the paired difference sum(num_b)/sum(den) - sum(num)/sum(den). NaN where sum(den) = 0."""
    m = len(num)
    chunk = max(1, 2_000_000 // max(m, 1))
    out = []
    for s in range(0, n, chunk):
        idx = rng.integers(0, m, size=(min(chunk, n - s), m))
        w = den[idx].sum(1).astype(np.float64)
        e = num[idx].sum(1).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = e / w
            if num_b is not None:
                r = num_b[idx].sum(1) / w - r
        out.append(np.where(w > 0, r, np.nan))
    return np.concatenate(out) if out else np.zeros(0)


def bootstrap_interval(num, den, *, n: int = N_BOOT, seed: Any = 0, level: float = LEVEL
                       ) -> tuple[float, float]:
    """Percentile interval of sum(num)/sum(den) when the units (rows of num/den: speakers or
    utterances) are resampled with replacement; (nan, nan) without units or reference words."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    if not len(num) or den.sum() <= 0:
        return (math.nan, math.nan)
    r = _replicates(num, den, int(n), np.random.default_rng(_seed_seq(seed)))
    r = r[np.isfinite(r)]
    if not len(r):
        return (math.nan, math.nan)
    a = (1.0 - level) / 2.0
    lo, hi = np.percentile(r, [100 * a, 100 * (1 - a)])
    return (float(lo), float(hi))


def _seed_seq(seed: Any) -> list[int]:
    return [int(s) for s in (seed if isinstance(seed, (tuple, list)) else (seed,))]


def paired_bootstrap(records_a: Sequence[Mapping[str, Any]], records_b: Sequence[Mapping[str, Any]],
                     *, n: int = N_BOOT, seed: int = 0, unit: str = "speaker",
                     level: float = LEVEL) -> dict[str, Any]:
    """Paired bootstrap of delta = WER_b - WER_a on the same utterances (matched by "id"; both
    lists must hold the same ids with the same references). Units (speakers of records_a, or
    utterances) are resampled with replacement, the same draw for both systems. Returns
    {"wer_a", "wer_b", "delta", "interval": [lo, hi], "p_delta_ge_0", "n", "unit",
    "utterances", "speakers"}; p_delta_ge_0 is the share of replicates where b is no better."""
    if unit not in ("speaker", "utterance"):
        raise ValueError(f"unit must be 'speaker' or 'utterance', got {unit!r}")

    def by_id(recs, which):
        out = {}
        for k, r in enumerate(recs):
            i = str(r.get("id"))
            if i in out:
                raise ValueError(f"system {which}: id {i!r} appears twice (records {out[i][0]} "
                                 f"and {k}); pass one record per utterance")
            out[i] = (k, r)
        return out

    a, b = by_id(records_a, "a"), by_id(records_b, "b")
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise ValueError(f"the two systems' records are not on the same utterances: "
                         f"{len(only_a)} id(s) only in a (e.g. {only_a[:3]}), {len(only_b)} only "
                         f"in b (e.g. {only_b[:3]}); evaluate both on the same split, or filter "
                         "both to the shared ids")
    if not a:
        raise ValueError("paired_bootstrap: no records")
    ids = sorted(a)
    ra, rb = [a[i][1] for i in ids], [b[i][1] for i in ids]
    for i, x, y in zip(ids, ra, rb):
        if normalize_text(str(x.get("ref", ""))) != normalize_text(str(y.get("ref", ""))):
            raise ValueError(f"id {i!r} has different references in the two systems "
                             f"({x.get('ref')!r} vs {y.get('ref')!r}): not the same utterances")
    ea, wa = utterance_errors(ra)
    eb, _ = utterance_errors(rb)
    if unit == "speaker":
        speakers = [r.get("speaker") for r in ra]
        if any(s is None or s == "" for s in speakers):
            k = next(j for j, s in enumerate(speakers) if s is None or s == "")
            raise ValueError(f"{_rec_name(ra[k], k)} has no speaker to resample by: pass "
                             "unit='utterance'")
        speakers = [str(s) for s in speakers]
        names = sorted(set(speakers))
        pos = {s: j for j, s in enumerate(names)}
        g = np.array([pos[s] for s in speakers], np.int64)
        ea_u, eb_u, w_u = (np.bincount(g, weights=x, minlength=len(names)) for x in (ea, eb, wa))
        num_speakers = len(names)
    else:
        ea_u, eb_u, w_u = ea.astype(np.float64), eb.astype(np.float64), wa.astype(np.float64)
        num_speakers = len({str(r.get("speaker")) for r in ra})
    wer_a, wer_b = _rate(ea.sum(), wa.sum()), _rate(eb.sum(), wa.sum())
    delta = wer_b - wer_a if math.isfinite(wer_a) and math.isfinite(wer_b) else math.nan
    rng = np.random.default_rng([int(seed), 0x9A1])
    r = _replicates(ea_u, w_u, int(n), rng, num_b=eb_u)
    r = r[np.isfinite(r)]
    if len(r):
        alpha = (1.0 - level) / 2.0
        lo, hi = (float(x) for x in np.percentile(r, [100 * alpha, 100 * (1 - alpha)]))
        p = float((r >= 0).mean())
    else:
        lo = hi = p = math.nan
    return {"wer_a": wer_a, "wer_b": wer_b, "delta": delta, "interval": [lo, hi],
            "p_delta_ge_0": p, "n": int(n), "unit": unit, "utterances": len(ids),
            "speakers": num_speakers, "level": level}


# ------------------------------------------------------------------------------------------------
# Summary
# ------------------------------------------------------------------------------------------------


def adjusted_rand_index(labels_a: Sequence[Any], labels_b: Sequence[Any]) -> float:
    """Adjusted Rand index (Hubert & Arabie) of two labelings of the same items (1 = same
    partition, ~0 = chance); 1.0 when both put everything in one group (or n < 2)."""
    _, a = np.unique(np.asarray(labels_a, dtype=object).astype(str), return_inverse=True)
    _, b = np.unique(np.asarray(labels_b, dtype=object).astype(str), return_inverse=True)
    if len(a) != len(b):
        raise ValueError(f"adjusted_rand_index: {len(a)} vs {len(b)} labels")
    n = len(a)
    if n < 2:
        return 1.0
    table = np.zeros((a.max() + 1, b.max() + 1), np.int64)
    np.add.at(table, (a, b), 1)
    comb = lambda x: (x * (x - 1) / 2.0).sum()
    index, sa, sb = comb(table), comb(table.sum(1)), comb(table.sum(0))
    expected = sa * sb / (n * (n - 1) / 2.0)
    maximum = (sa + sb) / 2.0
    if maximum == expected:
        return 1.0
    return float((index - expected) / (maximum - expected))


def summarize_cohorts(cohorts: Sequence[Cohort]) -> dict[str, Any]:
    """relative_gap = (worst - best) / best WER (None if best is 0 < worst; 0 if both are 0),
    bottom_share = worst cohort's utterances / all; worst/best by WER (ties: first in order)."""
    if not cohorts:
        raise ValueError("no cohorts to summarize")
    worst = max(cohorts, key=lambda c: c.wer)
    best = min(cohorts, key=lambda c: c.wer)
    if best.wer > 0:
        gap = (worst.wer - best.wer) / best.wer
    else:
        gap = 0.0 if worst.wer == 0 else None
    total = sum(c.utterances for c in cohorts)
    return {"relative_gap": gap, "bottom_share": worst.utterances / total if total else None,
            "worst": worst.name, "best": best.name, "worst_wer": worst.wer,
            "best_wer": best.wer}


def _accent_ari(cohorts: Sequence[Cohort], table: SpeakerTable) -> float | None:
    if any(a is None for a in table.accent):
        return None
    label = {s: j for j, c in enumerate(cohorts) for s in c.speakers}
    return adjusted_rand_index([label[s] for s in table.ids], table.accent)


# ------------------------------------------------------------------------------------------------
# Plots
# ------------------------------------------------------------------------------------------------


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _colors(n: int):
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def plot_map(cohorts: Sequence[Cohort], table: SpeakerTable, path: str | os.PathLike, *,
             title: str = "", vectors: Mapping[str, np.ndarray] | None = None) -> Path | None:
    """Speakers at their homes (lon on x, lat on y), coloured by cohort (rank order), marker area
    by utterances, with the geo cohorts' boxes; without coordinates, the first two principal
    components of `vectors`. Returns the PNG path, or None without matplotlib."""
    plt = _pyplot()
    if plt is None:
        log.warning("matplotlib is not installed: no cohort map")
        return None
    from matplotlib.patches import Rectangle

    index = {s: i for i, s in enumerate(table.ids)}
    colors = _colors(len(cohorts))
    has = np.isfinite(table.lat) & np.isfinite(table.lon)
    use_pca = not has.any()
    if use_pca:
        if vectors is None:
            log.warning("no speaker coordinates nor vectors: no cohort map")
            return None
        X = _normalize_rows(np.stack([np.asarray(vectors[s], np.float64).ravel()
                                      for s in table.ids]), table.ids)
        X = X - X.mean(0)
        _, _, vt = np.linalg.svd(X, full_matrices=False)
        P = X @ vt[:2].T if vt.shape[0] >= 2 else np.c_[X @ vt[:1].T, np.zeros(len(X))]
        x, y = P[:, 0], P[:, 1]
        has = np.ones(len(table.ids), bool)
    else:
        x, y = table.lon, table.lat
    fig, ax = plt.subplots(figsize=(8, 6))
    try:
        sizes = 20 + 120 * table.utterances / max(1, int(table.utterances.max()))
        if not use_pca and any(c.bounds is not None for c in cohorts):
            x0, x1 = np.nanmin(x[has]), np.nanmax(x[has])
            y0, y1 = np.nanmin(y[has]), np.nanmax(y[has])
            px, py = max(0.05 * (x1 - x0), 0.5), max(0.05 * (y1 - y0), 0.5)
            x0, x1, y0, y1 = x0 - px, x1 + px, y0 - py, y1 + py
            for c, col in zip(cohorts, colors):
                if c.bounds is None:
                    continue
                (la0, la1), (lo0, lo1) = c.bounds["lat"], c.bounds["lon"]
                bx0, bx1 = max(lo0, x0), min(lo1, x1)
                by0, by1 = max(la0, y0), min(la1, y1)
                if bx1 > bx0 and by1 > by0:
                    ax.add_patch(Rectangle((bx0, by0), bx1 - bx0, by1 - by0, facecolor=col,
                                           alpha=0.12, edgecolor="0.3", linewidth=0.8))
            ax.set_xlim(x0, x1)
            ax.set_ylim(y0, y1)
        for c, col in zip(cohorts, colors):
            m = np.array([index[s] for s in c.speakers], np.int64)
            m = m[has[m]]
            ax.scatter(x[m], y[m], s=sizes[m], color=col, edgecolor="k", linewidth=0.4,
                       label=f"{c.name}: WER {c.wer:.1%} ({c.utterances} utts)")
        ax.set_xlabel("PC 1 of speaker vectors" if use_pca else "longitude")
        ax.set_ylabel("PC 2 of speaker vectors" if use_pca else "latitude")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        ax.grid(alpha=0.3)
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


def plot_wer(cohorts: Sequence[Cohort], path: str | os.PathLike, *, title: str = ""
             ) -> Path | None:
    """WER per cohort (rank order) with the bootstrap intervals as error bars."""
    plt = _pyplot()
    if plt is None:
        log.warning("matplotlib is not installed: no cohort WER chart")
        return None
    colors = _colors(len(cohorts))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(cohorts) + 2), 4.2))
    try:
        pos = np.arange(len(cohorts))
        wer = np.array([c.wer if math.isfinite(c.wer) else 0.0 for c in cohorts])
        lo = np.array([c.interval[0] for c in cohorts], np.float64)
        hi = np.array([c.interval[1] for c in cohorts], np.float64)
        yerr = np.nan_to_num(np.stack([np.maximum(wer - lo, 0), np.maximum(hi - wer, 0)]))
        ax.bar(pos, wer, color=colors, edgecolor="k", linewidth=0.5, yerr=yerr, capsize=4)
        for p, c, w in zip(pos, cohorts, wer):
            ax.text(p, w / 2, f"n={c.utterances}", ha="center", va="center", fontsize=7)
        ax.set_xticks(pos)
        ax.set_xticklabels([c.name for c in cohorts], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("WER (95% bootstrap interval)")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def _clean(x: Any) -> Any:
    """JSON-safe: numpy scalars/arrays to Python, non-finite floats to None."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(obj), indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def _merge_methods(path: Path, entry: dict) -> Path:
    doc: dict[str, Any] = {"methods": []}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            if isinstance(old, dict) and isinstance(old.get("methods"), list):
                doc = old
        except json.JSONDecodeError:
            log.warning("%s is not valid JSON: rewriting it", path)
    methods = [m for m in doc["methods"] if not (m.get("method") == entry["method"]
                                                  and m.get("split") == entry["split"])]
    methods.append(entry)
    methods.sort(key=lambda m: (str(m.get("split")), METHODS.index(m["method"])
                                if m.get("method") in METHODS else len(METHODS)))
    doc = {**doc, "methods": methods}
    # the file's own provenance: that of the entry written last (each entry keeps its own)
    doc.update({k: v for k, v in (entry.get("provenance") or {}).items()
                if k in ("command", "commit", "commit_dirty", "machine", "versions")})
    return _write_json(path, doc)


def cohorts_report(workdir: str | os.PathLike, split: str = "test", method: str = "geo",
                   min_size: int | None = None, k: int | None = None, *,
                   embeddings: str | os.PathLike | Mapping[str, Any] | None = None,
                   max_depth: int | None = 3, min_gap: float = 0.0, seed: int = 0,
                   n_boot: int = N_BOOT, n_init: int = 10, bootstrap_unit: str = "speaker",
                   out: str | os.PathLike | None = None, plots: bool = True,
                   overrides: Sequence[str] = (), extra: Mapping[str, Any] | None = None
                   ) -> dict[str, Any]:
    """Cohorts of one method from W/predictions_<split>.jsonl: writes
    W/cohorts_<split>_<method>.json and its two PNGs (and, with `out`, merges the entry into
    out/cohorts.json with the PNGs beside it; `extra`, e.g. the command line and commit, is
    stored as the entry's "provenance"). `embeddings`: an .npz path or a speaker -> vector
    mapping (default: the run's encoder). Returns the method's entry, with "files" (absolute
    paths written)."""
    if method not in METHODS:
        raise ValueError(f"unknown cohort method {method!r}: use one of {list(METHODS)}")
    workdir = Path(workdir)
    records = read_records(workdir, split)
    vectors = None
    params: dict[str, Any] = {"seed": seed, "n_boot": n_boot, "bootstrap_unit": bootstrap_unit,
                              "level": LEVEL}
    if method == "geo":
        used_min = default_min_size(len(records)) if min_size is None else min_size
        cohorts = geo_cohorts(records, used_min, max_depth, min_gap=min_gap, n_boot=n_boot,
                              seed=seed, bootstrap_unit=bootstrap_unit)
        params.update(min_size=used_min, max_depth=max_depth, min_gap=min_gap)
    else:
        if embeddings is None:
            vectors = encoder_speaker_vectors(workdir, split, records, overrides=overrides)
            source = "encoder"
        elif isinstance(embeddings, Mapping):
            vectors, source = dict(embeddings), "given"
        else:
            vectors, source = load_speaker_vectors(embeddings), str(embeddings)
        n_spk = len({_speaker_of(r, i) for i, r in enumerate(records)})
        used_k = default_k(n_spk) if k is None else k
        cohorts = embedding_cohorts(vectors, records, used_k, seed, n_init=n_init, n_boot=n_boot,
                                    bootstrap_unit=bootstrap_unit)
        params.update(k=used_k, n_init=n_init, embeddings=source,
                      dim=int(len(next(iter(vectors.values())))))
    table = speaker_table(records)
    overall = M.wer([r["ref"] for r in records], [r["hyp"] for r in records])
    entry: dict[str, Any] = {
        "method": method, "split": split, "workdir": str(workdir),
        "cohorts": [c.as_dict() for c in cohorts], **summarize_cohorts(cohorts),
        "accent_ari": _accent_ari(cohorts, table), "wer": overall.rate,
        "utterances": len(records), "speakers": len(table.ids), "params": params,
    }
    if extra:
        entry["provenance"] = dict(extra)
    if method == "geo":
        seen, splits = set(), []
        for c in cohorts:
            for p in c.path:
                key = (p["depth"], p["axis"], p["threshold"], tuple(
                    (q["axis"], q["threshold"], q["side"]) for q in c.path[:p["depth"]]))
                if key not in seen:
                    seen.add(key)
                    splits.append({k2: p[k2] for k2 in ("depth", "axis", "threshold", "gap")})
        entry["splits"] = sorted(splits, key=lambda s: (s["depth"], s["axis"], s["threshold"]))

    stem = f"cohorts_{split}_{method}"
    files: dict[str, str] = {}
    names: dict[str, str] = {}
    if plots:
        summary = entry["relative_gap"]
        gap_txt = "n/a" if summary is None else f"{summary:.0%}"
        title = (f"{method} cohorts, {split} ({len(records)} utts, {len(table.ids)} speakers): "
                 f"relative gap {gap_txt}")
        m = plot_map(cohorts, table, workdir / f"{stem}_map.png", title=title, vectors=vectors)
        w = plot_wer(cohorts, workdir / f"{stem}_wer.png", title=title)
        for key, p in (("map", m), ("wer", w)):
            if p is not None:
                files[key], names[key] = str(p), p.name
    entry["plots"] = dict(names)
    files["json"] = str(_write_json(workdir / f"{stem}.json", entry))
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for key, name in names.items():
            dst = out / name
            if dst.resolve() != Path(files[key]).resolve():
                tmp = dst.with_name(dst.name + ".tmp")
                shutil.copyfile(files[key], tmp)
                os.replace(tmp, dst)
            files[f"out_{key}"] = str(dst)
        files["out_json"] = str(_merge_methods(out / "cohorts.json", entry))
    return {**_clean(entry), "files": files}


def format_table(entry: Mapping[str, Any]) -> str:
    """A short text table of one method's cohorts (worst first)."""
    rows = [f"{'rank':>4}  {'cohort':<34} {'spk':>4} {'utts':>5} {'WER':>7}  95% interval"]
    for r, c in enumerate(entry["cohorts"], 1):
        lo, hi = c["interval"]
        iv = "n/a" if lo is None else f"[{lo:.3f}, {hi:.3f}]"
        w = "inf" if c["wer"] is None else f"{c['wer']:.3f}"
        rows.append(f"{r:>4}  {c['name'][:34]:<34} {len(c['speakers']):>4} "
                    f"{c['utterances']:>5} {w:>7}  {iv}")
    gap = entry.get("relative_gap")
    rows.append(f"{entry['method']}: {len(entry['cohorts'])} cohorts, relative gap "
                f"{'n/a' if gap is None else f'{gap:.3f}'}, bottom share "
                f"{entry.get('bottom_share', 0):.3f}")
    return "\n".join(rows)
