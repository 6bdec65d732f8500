"""The speaker panel of the verification experiments: synthetic eSpeak NG speakers balanced over
accent x gender, rendered once into the cache, FSDD's real speakers beside them, and trial lists.

`make_panel(num_speakers, seed)` -> speakers; `build_speaker_panel(out_dir, ...)` renders their
utterances (out_dir/audio/*.flac, speakers.json, and last manifest.jsonl); the `speaker_panel`
data source (jaxslu.fairness.verification) serves them; `make_trials(records, ...)` draws a
trial list.

Choices that were open:
* Cohorts: accent = the eSpeak voice (`jaxslu.audio.synth.VOICES`, its ACCENT_REGIONS label),
  gender = the voice variant (male m1..m7, female f1..f5, `synth.VARIANTS`). A cell is one
  (accent, gender); `num_speakers` must be a multiple of the number of cells, every cell gets
  the same number of speakers, so the panel is balanced. Within a cell the variants follow a
  seeded permutation of the gender's variants, each used once before any repeats; rate =
  round(175 * U(0.85, 1.15)) words per minute (as `synth.make_speakers`). Pitch (eSpeak's base
  pitch, a position inside the variant's own range): round(50 + U(-15, 15)) for a variant's
  first speaker in the cell; a later speaker with the same variant gets a pitch level away from
  it (PITCH_LEVELS 28, 72, 39, 61, +- 5), because eSpeak's voice identity is little more than
  (variant, pitch, rate): in a development run on a first panel with uniform pitch and random
  test speakers, same-variant non-target pairs were accepted 80% of the time at the EER
  threshold (against 7.5% for different variants).
* Split: in each cell the first round(per_cell * test_fraction) speakers of the variant cycle
  (at least 2, so every cell has non-target trials) are "test", the rest "train": disjoint
  speakers, the same accent x gender balance in both, and (with at most 5 test speakers per
  cell) the test speakers of a cell have distinct variants, while training speakers repeat
  variants and so must be told apart by pitch and rate too. Female cells draw their test
  variants from 5, male from 7, and training females repeat variants more often: known
  sources of a gender difference.
* Utterances: each speaker says `utterances_per_speaker` distinct SLURP devel sentences of
  `min_words`..`max_words` words (a seeded draw per speaker; text-independent verification, so
  speakers share sentences), at an SNR uniform in `noise_snr_db` (white noise, see synth),
  synthesis seed derived from (seed, speaker, utterance). Audio longer than `max_seconds` is cut
  to its first `max_seconds` (SV uses random crops; no utterance exceeds the largest bucket).
* Cache: the folder name hashes every parameter (`panel_dir`), an audio file's name hashes what
  determines its samples, an existing file is reused (re-running renders nothing), files and the
  manifest are written atomically, the manifest last.
* FSDD (real speakers, 8 kHz digits, all male): training adds `fsdd_train_per_speaker`
  recordings of each FSDD speaker from FSDD's train indices (5..49; spread evenly over the ten
  digits, seeded), so the embedding sees real voices and a real channel; "fsdd_test" is FSDD's
  test indices (0..4) of the same speakers: a closed-set check on held-out recordings of
  speakers seen in training (not an open-set result), scored on its own trial list.
* Trials (`make_trials`): within each cell (VoxCeleb-H style: non-target pairs share gender and
  accent, the hard case), `per_cell` target and `per_cell` non-target pairs. Targets are spread
  evenly over the cell's speakers (water-filling: each speaker gets an equal quota, capped by its
  C(u, 2) pairs, the rest going to the others), non-targets evenly over the cell's speaker pairs;
  within a speaker (pair) the utterance pairs are a seeded draw without replacement. Every cell
  is balanced, so every gender and accent cohort (a union of cells) is balanced too.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jaxslu import paths
from jaxslu.audio.corpus import _atomic_write_text, cached_clip
from jaxslu.audio.synth import ACCENT_REGIONS, VARIANTS, VOICES

GENDERS = ("female", "male")
PITCH_LEVELS = (28, 72, 39, 61)  # eSpeak base pitch of a cell's 2nd, 3rd, ... use of a variant
PANEL_FORMAT = 2  # bump when the rendering changes, to render into a new folder


@dataclasses.dataclass(frozen=True)
class PanelSpeaker:
    id: str
    voice: str
    accent: str
    gender: str
    variant: str
    rate: int
    pitch: int
    split: str  # "train" or "test"


def _voices(voices: Sequence[str] | None) -> tuple[str, ...]:
    voices = tuple(VOICES) if voices is None else tuple(voices)
    if not voices:
        raise ValueError("the speaker panel needs at least one voice (accent)")
    for v in voices:
        if v not in VOICES:
            raise ValueError(f"unknown voice {v!r} for the speaker panel; choose from "
                             f"{sorted(VOICES)}")
    if len(set(voices)) != len(voices):
        raise ValueError(f"voices {list(voices)} repeat an accent")
    return voices


def make_panel(num_speakers: int, seed: int = 0, *, voices: Sequence[str] | None = None,
               test_fraction: float = 1 / 3) -> list[PanelSpeaker]:
    """`num_speakers` speakers balanced over (accent, gender) cells (see the module docstring);
    ids "sv000", "sv001", ... in cell order (accent in `voices` order, female then male)."""
    voices = _voices(voices)
    cells = [(v, g) for v in voices for g in GENDERS]
    if (isinstance(num_speakers, bool) or not isinstance(num_speakers, (int, np.integer))
            or num_speakers < 1 or num_speakers % len(cells)):
        raise ValueError(f"num_speakers={num_speakers!r} must be a positive multiple of the "
                         f"{len(cells)} accent x gender cells ({len(voices)} voices x 2 genders) "
                         "so that the panel is balanced")
    per = int(num_speakers) // len(cells)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    n_test = max(2, int(round(per * test_fraction)))
    if per - n_test < 1:
        raise ValueError(f"num_speakers={num_speakers} gives {per} speakers per accent x gender "
                         f"cell; need at least {n_test + 1} (>= 2 test speakers for non-target "
                         "trials and >= 1 training speaker)")
    rng = np.random.default_rng([seed, 7])
    out = []
    for voice, gender in cells:
        names = [v for v, g in VARIANTS.items() if g == gender]
        variants = [names[i] for i in rng.permutation(len(names))]
        for k in range(per):
            repeat = k // len(variants)  # how many speakers of this cell had the variant before
            rate = int(round(175 * rng.uniform(0.85, 1.15)))
            if repeat == 0:
                pitch = 50 + rng.uniform(-15, 15)
            else:  # a repeated variant: pitch levels far from the earlier speakers' (and 50)
                level = PITCH_LEVELS[(repeat - 1) % len(PITCH_LEVELS)]
                pitch = level + rng.uniform(-5, 5)
            out.append(PanelSpeaker(f"sv{len(out):03d}", voice, ACCENT_REGIONS[voice].label,
                                    gender, variants[k % len(variants)], rate,
                                    int(round(pitch)), "test" if k < n_test else "train"))
    return out


def panel_params(*, num_speakers: int, utterances_per_speaker: int, seed: int,
                 voices: Sequence[str] | None, test_fraction: float, noise_snr_db,
                 max_seconds: float, min_words: int, max_words: int,
                 sample_rate: int) -> dict[str, Any]:
    lo, hi = (float(x) for x in noise_snr_db) if noise_snr_db is not None else (None, None)
    return {"num_speakers": int(num_speakers),
            "utterances_per_speaker": int(utterances_per_speaker),
            "seed": int(seed), "voices": list(_voices(voices)),
            "test_fraction": float(test_fraction),
            "noise_snr_db": None if lo is None else [lo, hi], "max_seconds": float(max_seconds),
            "min_words": int(min_words), "max_words": int(max_words),
            "sample_rate": int(sample_rate), "format": PANEL_FORMAT}


def panel_dir(params: dict[str, Any], cache_dir: str = "") -> Path:
    key = json.dumps(params, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return paths.cache_dir(cache_dir) / f"speaker_panel-{digest}"


def sentence_pool(min_words: int, max_words: int, source=None) -> list[str]:
    """Distinct SLURP devel sentences of min_words..max_words words, in file order."""
    from jaxslu.audio.corpus import load_slurp_devel

    if not 1 <= min_words <= max_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got {min_words}, {max_words}")
    seen, out = set(), []
    for r in load_slurp_devel(source):
        t = r["text"]
        if min_words <= len(t.split()) <= max_words and t not in seen:
            seen.add(t)
            out.append(t)
    return out


def build_speaker_panel(out_dir: str | os.PathLike, params: dict[str, Any], *,
                        source=None, verbose: bool = True) -> Path:
    """Render the panel `params` (from `panel_params`) into out_dir; returns the manifest path.
    Manifest fields: id, path (relative), text, speaker, voice, variant, accent, gender, split,
    rate, pitch, snr_db, num_samples."""
    from jaxslu.audio.synth import synthesize

    out = Path(out_dir)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    speakers = make_panel(params["num_speakers"], params["seed"], voices=params["voices"],
                          test_fraction=params["test_fraction"])
    pool = sentence_pool(params["min_words"], params["max_words"], source)
    u = params["utterances_per_speaker"]
    if not 2 <= u <= len(pool):
        raise ValueError(f"utterances_per_speaker={u} must lie in [2, {len(pool)}] (the "
                         f"sentences of {params['min_words']}..{params['max_words']} words)")
    _atomic_write_text(out / "speakers.json", json.dumps(
        [dataclasses.asdict(s) for s in speakers], indent=1) + "\n")
    sr, max_n = params["sample_rate"], int(round(params["max_seconds"] * params["sample_rate"]))
    snr = params["noise_snr_db"]
    lines, rendered, t0 = [], 0, time.perf_counter()
    total = len(speakers) * u
    for si, spk in enumerate(speakers):
        rng = np.random.default_rng([params["seed"], 11, si])
        texts = [pool[i] for i in rng.choice(len(pool), size=u, replace=False)]
        for k, text in enumerate(texts):
            utt_seed = int(rng.integers(2**31 - 1))
            utt_snr = None if snr is None else round(float(rng.uniform(*snr)), 2)
            synth_params = dict(text=text, voice=spk.voice, variant=spk.variant, rate=spk.rate,
                                pitch=spk.pitch, noise_snr_db=utt_snr, seed=utt_seed,
                                sample_rate=sr)
            uid = f"{spk.id}-{k:02d}"
            rel, num_samples, new = cached_clip(
                out, uid, {**synth_params, "max_samples": max_n},
                lambda: synthesize(**synth_params)[:max_n], sr)
            rendered += new
            lines.append(json.dumps({
                "id": uid, "path": rel, "text": text, "speaker": spk.id, "voice": spk.voice,
                "variant": spk.variant, "accent": spk.accent, "gender": spk.gender,
                "split": spk.split, "rate": spk.rate, "pitch": spk.pitch, "snr_db": utt_snr,
                "num_samples": int(num_samples)}))
        done = (si + 1) * u
        if verbose and ((si + 1) % max(1, len(speakers) // 8) == 0 or si + 1 == len(speakers)):
            dt = time.perf_counter() - t0
            print(f"speaker-panel: {done}/{total} utterances ({rendered} rendered, "
                  f"{rendered / max(dt, 1e-9):.1f}/s)", flush=True)
    manifest = out / "manifest.jsonl"
    _atomic_write_text(manifest, "\n".join(lines) + "\n")
    return manifest


def read_panel_manifest(path: Path) -> list[dict[str, Any]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: malformed manifest line ({e})") from e
    return out


# ------------------------------------------------------------------------------------------
# Trial lists
# ------------------------------------------------------------------------------------------


def _quotas(capacity: Sequence[int], total: int, order: np.ndarray) -> list[int]:
    """Split `total` over groups as evenly as their capacities allow (water-filling); `order`
    (a permutation) decides which groups get the remainder."""
    cap = np.asarray(capacity, np.int64)
    q = np.zeros_like(cap)
    left = int(total)
    while left > 0:
        open_ = [i for i in order if q[i] < cap[i]]
        if not open_:
            raise AssertionError("quota exceeds capacity")  # callers check the total first
        share = max(1, left // len(open_))
        for i in open_:
            take = min(share, int(cap[i] - q[i]), left)
            q[i] += take
            left -= take
            if left == 0:
                break
    return q.tolist()


def _draw_pairs(n_a: int, n_b: int | None, k: int, rng) -> list[tuple[int, int]]:
    """k distinct pairs: (i < j) within one group of n_a (n_b None), or (i, j) across two."""
    if k == 0:
        return []
    if n_b is None:
        all_pairs = [(i, j) for i in range(n_a) for j in range(i + 1, n_a)]
        pick = rng.choice(len(all_pairs), size=k, replace=False)
        return [all_pairs[p] for p in np.sort(pick)]
    pick = np.sort(rng.choice(n_a * n_b, size=k, replace=False))
    return [(int(p // n_b), int(p % n_b)) for p in pick]


def make_trials(records: Sequence[dict[str, Any]], *, per_cell: int, seed: int = 0,
                cell_keys: Sequence[str] = ("gender", "accent"),
                what: str = "trial list") -> list[dict[str, Any]]:
    """Balanced trials among `records` (dicts with "speaker" and "meta": {key: ...}): for each
    cell (the values of `cell_keys` in meta; () = one cell), `per_cell` target and `per_cell`
    non-target pairs (see the module docstring). Returns dicts {"a", "b" (record indices),
    "target" (bool), "cell" ({key: value})}, cells in sorted order."""
    if per_cell < 1:
        raise ValueError(f"{what}: per_cell={per_cell} must be >= 1")
    by_speaker: dict[str, list[int]] = {}
    cell_of: dict[str, tuple] = {}
    for i, r in enumerate(records):
        spk = r["speaker"]
        cell = tuple(str(r["meta"].get(k, "")) for k in cell_keys)
        if cell_of.setdefault(spk, cell) != cell:
            raise ValueError(f"{what}: speaker {spk!r} appears in two cohort cells "
                             f"{cell_of[spk]} and {cell} (keys {list(cell_keys)})")
        by_speaker.setdefault(spk, []).append(i)
    for spk, idx in by_speaker.items():
        if len(idx) < 2:
            raise ValueError(f"{what}: speaker {spk!r} has {len(idx)} utterance(s); a target "
                             "trial needs at least 2 utterances of every test speaker")
    cells: dict[tuple, list[str]] = {}
    for spk in sorted(by_speaker):
        cells.setdefault(cell_of[spk], []).append(spk)
    trials: list[dict[str, Any]] = []
    for ci, cell in enumerate(sorted(cells)):
        spks = cells[cell]
        name = dict(zip(cell_keys, cell))
        if len(spks) < 2:
            raise ValueError(f"{what}: cohort cell {name or 'all'} has {len(spks)} speaker "
                             f"({spks}); non-target trials within a cell need at least 2")
        rng = np.random.default_rng([seed, 13, ci])
        sizes = [len(by_speaker[s]) for s in spks]
        cap_t = [n * (n - 1) // 2 for n in sizes]
        pairs = list(itertools.combinations(range(len(spks)), 2))
        cap_n = [sizes[a] * sizes[b] for a, b in pairs]
        if sum(cap_t) < per_cell or sum(cap_n) < per_cell:
            raise ValueError(f"{what}: cohort cell {name or 'all'} has only {sum(cap_t)} target "
                             f"and {sum(cap_n)} non-target pairs; lower the trials per cell "
                             f"({per_cell}) or add utterances/speakers")
        q_t = _quotas(cap_t, per_cell, rng.permutation(len(spks)))
        q_n = _quotas(cap_n, per_cell, rng.permutation(len(pairs)))
        for s, k in zip(spks, q_t):
            idx = by_speaker[s]
            for i, j in _draw_pairs(len(idx), None, k, rng):
                trials.append({"a": idx[i], "b": idx[j], "target": True, "cell": name})
        for (sa, sb), k in zip(pairs, q_n):
            ia, ib = by_speaker[spks[sa]], by_speaker[spks[sb]]
            for i, j in _draw_pairs(len(ia), len(ib), k, rng):
                trials.append({"a": ia[i], "b": ib[j], "target": False, "cell": name})
    return trials


def trials_digest(trials: Sequence[dict[str, Any]], ids: Sequence[str]) -> str:
    """sha256 of the trial list as "<target> <id a> <id b>" lines (names the exact list)."""
    h = hashlib.sha256()
    for t in trials:
        h.update(f"{int(t['target'])} {ids[t['a']]} {ids[t['b']]}\n".encode())
    return h.hexdigest()
