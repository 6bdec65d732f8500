"""The spoken SLU corpus at scale: the `slurp_nlu` text mix (HWU64 train + SLURP devel) spoken by a
panel of synthetic eSpeak NG speakers, with test speakers never heard in training.

`build_spoken_nlu(out_dir)` writes out_dir/audio/<split>/*.flac, out_dir/speakers.json and, last,
the manifest (out_dir/manifest.jsonl; out_dir/manifest-first<N>.jsonl with limit_per_split=N),
and returns the manifest path. The `spoken_nlu` dataset (jaxslu.data.sources) builds it once into
<cache>/spoken_nlu-<key> and serves it; `jaxslu synth-nlu` builds it from the command line.

Choices that were open:
- Text: `jaxslu.nlu.data.slurp_nlu` splits "train" (HWU64 train + SLURP devel's train part),
  "dev", "slurp_test" and "hwu64_test" (texts repeated across them already removed from the
  held-out parts), with their intents (SLURP's scenario_action naming) and entities (word spans
  of text.split()). `limit_per_split=N` keeps the first N sentences of each split (tests, pilots).
- Speakers (`make_nlu_speakers`, the recipe of `jaxslu.fairness.speakers.make_panel`, whose
  own split rule cannot give 48 + 16): two disjoint sides, "train" and "test". Speaker k of a
  side has accent VOICES[k % 8] and gender GENDERS[(k + k // 8) % 2], so each block of 8
  covers every accent, and a side of 16 (48) has each accent x gender cell once (three times);
  a side needs >= 8 speakers, so every accent is on both sides. Within an accent x gender cell
  the speakers of both sides (test first) take the gender's variants (m1..m7, f1..f5) in a
  seeded permutation, each once before any repeats: with 48 + 16 a cell holds 4 speakers with 4
  distinct variants, so no test speaker shares a variant with a training speaker of its
  accent. rate = round(175 * U(0.85, 1.15)) words per minute; pitch = round(50 + U(-15, 15)) for
  a variant's first speaker in the cell and PITCH_LEVELS +- 5 for its repeats (as make_panel);
  home = a centre of the accent's region (synth.ACCENT_REGIONS) plus a Gaussian offset of the
  region's spread, as synth.make_speakers.
- Who says what: sentence k of "train" is spoken by the `speakers_per_sentence` s distinct
  training speakers perm[(k*s + j) % n_train], j < s, perm a seeded permutation (round robin:
  equal shares, as build_spoken_slurp); sentence k of a held-out split by
  `test_speakers_per_sentence` test speakers, the same rule with a permutation per split (so
  each held-out split is balanced over the test speakers on its own).
- One utterance (a sentence and a speaker) is rendered from numpy default_rng([_STREAM, seed,
  h]) alone, h = a hash of the utterance id (record id and speaker id): the speaker's rate
  jittered by U(-RATE_JITTER, +RATE_JITTER) (relative) and pitch by U(-PITCH_JITTER,
  +PITCH_JITTER), eSpeak's seed, then, drawn whether or not they apply: reverberation with
  probability reverb_prob (`perturb.synthetic_rir`: RT60 uniform in rt60_s, DRR uniform in
  drr_db), additive coloured noise with probability noise_prob (`perturb.coloured_noise`,
  1/f^beta with beta uniform in noise_beta, SNR uniform in snr_db, against the reverberant
  clip's mean power), in that order. Values are rounded before use, so the manifest's
  rate/pitch/rt60/drr_db/snr_db/noise_beta (null when a step was not applied) are exactly what
  was rendered. A clip whose peak exceeds 1 after this is scaled to peak 0.99 (not clipped).
  Nothing depends on which other utterances exist: a corpus of N sentences per split is the
  first N of any larger one, with the same files.
- Files and resumption: an audio file's name holds a hash of everything that determines its
  samples (text, voice, variant, rate, pitch, seeds, augmentation values, sample rate, eSpeak
  version, FORMAT_VERSION); an existing file is reused, so a second build synthesizes nothing
  and an interrupted one resumes. FLAC files, speakers.json and the manifest are written
  atomically, the manifest last. The manifest's name holds limit_per_split, so pilots and the
  full corpus share one folder (and its audio).
- Manifest lines (the `read_manifest` format, every extra key goes to the example's meta): id,
  path, text, intent, entities, speaker, split, and accent, gender, lat, lon, voice, variant,
  rate, pitch, snr_db, noise_beta, rt60, drr_db, source ("hwu64"/"slurp"), source_id, domain,
  scenario, action, num_samples, sample_rate.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from jaxslu import paths
from jaxslu.audio.corpus import _atomic_write_text, cached_clip
from jaxslu.audio.perturb import add_noise, coloured_noise, reverberate, synthetic_rir
from jaxslu.audio.synth import (ACCENT_REGIONS, PITCH_RANGE, RATE_RANGE, VARIANTS, VOICES,
                                espeak_version, synthesize)

__all__ = ["SPLITS", "HELD_OUT", "GENDERS", "NluSpeaker", "make_nlu_speakers", "corpus_params",
           "corpus_dir", "manifest_name", "utterance_params", "utterance_plan", "render",
           "build_spoken_nlu", "spoken_nlu_manifest"]

SPLITS = ("train", "dev", "slurp_test", "hwu64_test")
HELD_OUT = SPLITS[1:]
GENDERS = ("female", "male")
PITCH_LEVELS = (28, 72, 39, 61)  # eSpeak base pitch of a cell's 2nd, 3rd, ... use of a variant
RATE_JITTER = 0.06  # relative, per utterance
PITCH_JITTER = 4.0  # eSpeak pitch units, per utterance
FORMAT_VERSION = 1  # bump when the rendering recipe changes: new corpus key and file names
LOG_EVERY = 500
_STREAM = 0x5107  # separates these draws from other users of (seed, ...)

DEFAULTS: dict[str, Any] = {
    "num_train_speakers": 48, "num_test_speakers": 16, "speakers_per_sentence": 2,
    "test_speakers_per_sentence": 1, "seed": 0, "sample_rate": 16000,
    "noise_prob": 0.5, "snr_db": (5.0, 30.0), "noise_beta": (0.0, 2.0),
    "reverb_prob": 0.3, "rt60_s": (0.15, 0.6), "drr_db": (0.0, 12.0)}


@dataclasses.dataclass(frozen=True)
class NluSpeaker:
    id: str
    side: str  # "train" or "test"
    voice: str
    variant: str
    accent: str
    gender: str
    rate: int
    pitch: int
    lat: float
    lon: float


def _int(name: str, value, lo: int, hi: int | None = None) -> int:
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo
            or (hi is not None and value > hi)):
        want = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"spoken_nlu: {name} must be an integer {want}, got {value!r}")
    return int(value)


def _prob(name: str, value) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))
            or not 0.0 <= float(value) <= 1.0):
        raise ValueError(f"spoken_nlu: {name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def _pair(name: str, value, lo: float, hi: float) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"spoken_nlu: {name} must be a (low, high) pair, got {value!r}") from e
    if not (math.isfinite(a) and math.isfinite(b) and lo <= a <= b <= hi):
        raise ValueError(f"spoken_nlu: {name}={value!r} needs {lo} <= low <= high <= {hi}")
    return a, b


def make_nlu_speakers(num_train: int, num_test: int, seed: int = 0) -> list[NluSpeaker]:
    """The speaker panel (module docstring): num_train "train" then num_test "test" speakers,
    ids "trn000"... and "tst000"...; deterministic in (num_train, num_test, seed)."""
    voices = tuple(VOICES)
    num_train = _int("num_train_speakers", num_train, len(voices))
    num_test = _int("num_test_speakers", num_test, len(voices))
    rng = np.random.default_rng([_STREAM, seed, 1])
    cell_variants = {}
    for v in voices:
        for g in GENDERS:
            names = [n for n, gg in VARIANTS.items() if gg == g]
            cell_variants[v, g] = [names[i] for i in rng.permutation(len(names))]
    used: dict[tuple[str, str], int] = {}
    out = []
    for side, n, prefix in (("test", num_test, "tst"), ("train", num_train, "trn")):
        side_out = []
        for k in range(n):
            voice = voices[k % len(voices)]
            gender = GENDERS[(k + k // len(voices)) % 2]
            variants = cell_variants[voice, gender]
            m = used.get((voice, gender), 0)
            used[voice, gender] = m + 1
            repeat = m // len(variants)
            rate = int(round(175 * rng.uniform(0.85, 1.15)))
            if repeat == 0:
                pitch = 50 + rng.uniform(-15, 15)
            else:
                pitch = PITCH_LEVELS[(repeat - 1) % len(PITCH_LEVELS)] + rng.uniform(-5, 5)
            region = ACCENT_REGIONS[voice]
            _, clat, clon = region.centres[int(rng.integers(len(region.centres)))]
            dn, de = rng.normal(0.0, region.spread_km, size=2)
            lat = clat + dn / 111.2
            lon = clon + de / (111.2 * math.cos(math.radians(clat)))
            side_out.append(NluSpeaker(f"{prefix}{k:03d}", side, voice, variants[m % len(variants)],
                                       region.label, gender, rate, int(round(pitch)),
                                       round(float(lat), 4), round(float(lon), 4)))
        out = side_out + out if side == "train" else out + side_out
    return out  # train speakers first, then test


def corpus_params(**options) -> dict[str, Any]:
    """The validated, normalized parameters that define a corpus (everything but
    limit_per_split, which only chooses how much of it to build). Unknown options: ValueError."""
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"spoken_nlu: unknown option(s) {unknown}; options are "
                         f"{sorted(DEFAULTS) + ['limit_per_split', 'cache_dir']}")
    o = {**DEFAULTS, **options}
    p: dict[str, Any] = {
        "num_train_speakers": _int("num_train_speakers", o["num_train_speakers"], len(VOICES)),
        "num_test_speakers": _int("num_test_speakers", o["num_test_speakers"], len(VOICES)),
        "seed": _int("seed", o["seed"], 0, 2**63 - 1),
        "sample_rate": _int("sample_rate", o["sample_rate"], 8000, 48000),
        "noise_prob": _prob("noise_prob", o["noise_prob"]),
        "snr_db": list(_pair("snr_db", o["snr_db"], -10.0, 100.0)),
        "noise_beta": list(_pair("noise_beta", o["noise_beta"], 0.0, 3.0)),
        "reverb_prob": _prob("reverb_prob", o["reverb_prob"]),
        "rt60_s": list(_pair("rt60_s", o["rt60_s"], 0.05, 3.0)),
        "drr_db": list(_pair("drr_db", o["drr_db"], -20.0, 40.0)),
    }
    p["speakers_per_sentence"] = _int("speakers_per_sentence", o["speakers_per_sentence"], 1,
                                      p["num_train_speakers"])
    p["test_speakers_per_sentence"] = _int("test_speakers_per_sentence",
                                           o["test_speakers_per_sentence"], 1,
                                           p["num_test_speakers"])
    p["format"] = FORMAT_VERSION
    return p


def _check_limit(limit_per_split) -> int | None:
    if limit_per_split is None:
        return None
    return _int("limit_per_split", limit_per_split, 1)


def corpus_dir(params: dict[str, Any], cache_dir: str = "", name: str = "spoken_nlu") -> Path:
    """<cache>/<name>-<12 hex digits of the parameters' hash>."""
    key = json.dumps(params, sort_keys=True)
    return paths.cache_dir(cache_dir) / f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def manifest_name(limit_per_split: int | None) -> str:
    return "manifest.jsonl" if limit_per_split is None else f"manifest-first{limit_per_split}.jsonl"


def _uid_base(record_id: str) -> str:
    return record_id.replace("/", "-")


def utterance_params(record_id: str, text: str, speaker: NluSpeaker,
                     params: dict[str, Any]) -> dict[str, Any]:
    """Everything that determines one utterance's samples; a function of its arguments only."""
    h = int.from_bytes(hashlib.sha256(f"{record_id}|{speaker.id}".encode()).digest()[:8], "big")
    rng = np.random.default_rng([_STREAM, params["seed"], h])
    rate = int(np.clip(round(speaker.rate * rng.uniform(1 - RATE_JITTER, 1 + RATE_JITTER)),
                       *RATE_RANGE))
    pitch = int(np.clip(round(speaker.pitch + rng.uniform(-PITCH_JITTER, PITCH_JITTER)),
                        *PITCH_RANGE))
    synth_seed = int(rng.integers(2**31 - 1))
    u_rev, u_noise = rng.random(2)  # drawn in this order whatever the probabilities
    rt60 = round(float(rng.uniform(*params["rt60_s"])), 3)
    drr = round(float(rng.uniform(*params["drr_db"])), 2)
    snr = round(float(rng.uniform(*params["snr_db"])), 2)
    beta = round(float(rng.uniform(*params["noise_beta"])), 3)
    aug_seed = int(rng.integers(2**63 - 1))
    reverb = bool(u_rev < params["reverb_prob"])
    noise = bool(u_noise < params["noise_prob"])
    return {"text": text, "voice": speaker.voice, "variant": speaker.variant, "rate": rate,
            "pitch": pitch, "seed": synth_seed, "sample_rate": params["sample_rate"],
            "rt60": rt60 if reverb else None, "drr_db": drr if reverb else None,
            "snr_db": snr if noise else None, "noise_beta": beta if noise else None,
            "aug_seed": aug_seed}


def render(u: dict[str, Any], synth: Callable[..., np.ndarray] = synthesize) -> np.ndarray:
    """The float32 waveform of utterance parameters `u` (from `utterance_params`)."""
    x = synth(u["text"], voice=u["voice"], variant=u["variant"], rate=u["rate"],
              pitch=u["pitch"], seed=u["seed"], sample_rate=u["sample_rate"])
    rir_rng, noise_rng = np.random.default_rng(u["aug_seed"]).spawn(2)
    if u["rt60"] is not None:
        x = reverberate(x, synthetic_rir(rir_rng, u["sample_rate"], u["rt60"], u["drr_db"]))
    if u["snr_db"] is not None:
        x = add_noise(x, coloured_noise(noise_rng, x.size, u["noise_beta"]), u["snr_db"])
    return peak_safe(x)


def peak_safe(x: np.ndarray) -> np.ndarray:
    """float32 `x`, scaled to peak 0.99 when its peak exceeds 1 (never clipped)."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > 1.0:
        x = x * (0.99 / peak)
    return np.asarray(x, np.float32)


def _source(record: dict[str, Any]) -> tuple[str, Any]:
    if record["id"].startswith("hwu64/"):
        return "hwu64", record["meta"].get("source_id")
    return "slurp", record["meta"].get("slurp_id")


def _texts(limit: int | None) -> dict[str, list[dict[str, Any]]]:
    from jaxslu.nlu.data import slurp_nlu

    out = {}
    for split in SPLITS:
        src = slurp_nlu(split)
        n = len(src) if limit is None else min(limit, len(src))
        out[split] = [src.metadata(i) for i in range(n)]
    return out


def _assign(n_sentences: int, speakers: Sequence[NluSpeaker], per_sentence: int,
            perm: np.ndarray) -> list[list[NluSpeaker]]:
    n = len(speakers)
    return [[speakers[int(perm[(k * per_sentence + j) % n])] for j in range(per_sentence)]
            for k in range(n_sentences)]


def utterance_plan(texts: dict[str, Sequence[dict[str, Any]]], speakers: Sequence[NluSpeaker],
                   params: dict[str, Any], splits: Sequence[str] = SPLITS,
                   ) -> list[tuple[str, dict[str, Any], NluSpeaker]]:
    """(split, text record, speaker) of every utterance, in manifest order (module docstring).
    "train" is spoken by training speakers, every other split of `splits` by test speakers."""
    train_spk = [s for s in speakers if s.side == "train"]
    test_spk = [s for s in speakers if s.side == "test"]
    plan = []
    for si, split in enumerate(splits):
        pool, per = ((train_spk, params["speakers_per_sentence"]) if split == "train"
                     else (test_spk, params["test_speakers_per_sentence"]))
        perm = np.random.default_rng([_STREAM, params["seed"], 2, si]).permutation(len(pool))
        for r, spks in zip(texts[split], _assign(len(texts[split]), pool, per, perm)):
            plan.extend((split, r, spk) for spk in spks)
    return plan


def build_spoken_nlu(out_dir: str | os.PathLike, *, num_train_speakers: int = 48,
                     num_test_speakers: int = 16, speakers_per_sentence: int = 2,
                     test_speakers_per_sentence: int = 1, seed: int = 0,
                     sample_rate: int = 16000, noise_prob: float = DEFAULTS["noise_prob"],
                     snr_db: tuple[float, float] = DEFAULTS["snr_db"],
                     noise_beta: tuple[float, float] = DEFAULTS["noise_beta"],
                     reverb_prob: float = DEFAULTS["reverb_prob"],
                     rt60_s: tuple[float, float] = DEFAULTS["rt60_s"],
                     drr_db: tuple[float, float] = DEFAULTS["drr_db"],
                     limit_per_split: int | None = None, verbose: bool = True,
                     texts: dict[str, list[dict[str, Any]]] | None = None,
                     splits: Sequence[str] = SPLITS, extra_meta: Sequence[str] = ()) -> Path:
    """Render the corpus into out_dir (module docstring); returns the manifest path.

    texts: {split: records with id, text, intent, entities, meta} instead of `slurp_nlu`'s
    (tests, or another corpus such as the spoken context benchmark); limit_per_split still
    applies. splits: the splits of `texts`, in manifest order ("train" is spoken by the training
    speakers, the others by the test speakers). extra_meta: keys of a record's meta copied into
    its manifest line (so into the example's meta), e.g. "context". Re-running reuses every
    existing audio file.
    """
    params = corpus_params(num_train_speakers=num_train_speakers,
                           num_test_speakers=num_test_speakers,
                           speakers_per_sentence=speakers_per_sentence,
                           test_speakers_per_sentence=test_speakers_per_sentence, seed=seed,
                           sample_rate=sample_rate, noise_prob=noise_prob, snr_db=snr_db,
                           noise_beta=noise_beta, reverb_prob=reverb_prob, rt60_s=rt60_s,
                           drr_db=drr_db)
    limit = _check_limit(limit_per_split)
    splits = tuple(splits)
    if texts is None:
        if splits != SPLITS:
            raise ValueError(f"spoken_nlu: splits={splits} needs the texts of those splits")
        texts = _texts(limit)
    else:
        missing = [s for s in splits if s not in texts]
        if missing:
            raise ValueError(f"spoken_nlu: texts lacks split(s) {missing}")
        texts = {s: list(texts[s])[:limit] if limit else list(texts[s]) for s in splits}
    seen: set[str] = set()
    for s in splits:
        for r in texts[s]:
            if r["id"] in seen:
                raise ValueError(f"spoken_nlu: record id {r['id']!r} appears twice")
            seen.add(r["id"])

    out = Path(out_dir)
    for s in splits:
        (out / "audio" / s).mkdir(parents=True, exist_ok=True)
    speakers = make_nlu_speakers(params["num_train_speakers"], params["num_test_speakers"],
                                 params["seed"])
    _atomic_write_text(out / "speakers.json", json.dumps(
        [dataclasses.asdict(s) for s in speakers], indent=1) + "\n")
    version = espeak_version()

    plan = utterance_plan(texts, speakers, params, splits)
    lines, rendered, audio_s, t0 = [], 0, 0.0, time.perf_counter()
    for i, (split, r, spk) in enumerate(plan, 1):
        u = utterance_params(r["id"], r["text"], spk, params)
        key = {**u, "espeak": version, "format": FORMAT_VERSION}
        uid = f"{_uid_base(r['id'])}-{spk.id}"
        rel, num_samples, new = cached_clip(out, uid, key, lambda: render(u, synthesize),
                                            params["sample_rate"], folder=f"audio/{split}")
        if new:
            rendered += 1
            audio_s += num_samples / params["sample_rate"]
        meta = r.get("meta") or {}
        source, source_id = _source(r)
        scenario = meta.get("scenario", meta.get("domain"))
        action = meta.get("action")
        if action is None and scenario and r["intent"].startswith(f"{scenario}_"):
            action = r["intent"][len(scenario) + 1:]
        extra = {k: meta[k] for k in extra_meta if k in meta}
        lines.append(json.dumps({
            **extra, "id": uid, "path": rel, "text": r["text"], "intent": r["intent"],
            "entities": r["entities"], "speaker": spk.id, "split": split,
            "accent": spk.accent, "gender": spk.gender, "lat": spk.lat, "lon": spk.lon,
            "voice": spk.voice, "variant": spk.variant, "rate": u["rate"], "pitch": u["pitch"],
            "snr_db": u["snr_db"], "noise_beta": u["noise_beta"], "rt60": u["rt60"],
            "drr_db": u["drr_db"], "source": source, "source_id": source_id,
            "domain": meta.get("domain", scenario), "scenario": scenario, "action": action,
            "num_samples": int(num_samples), "sample_rate": params["sample_rate"]}))
        if verbose and (i % LOG_EVERY == 0 or i == len(plan)):
            dt = max(time.perf_counter() - t0, 1e-9)
            print(f"spoken-nlu: {i}/{len(plan)} utterances ({rendered} rendered, "
                  f"{rendered / dt:.1f} utt/s, {audio_s / max(rendered, 1):.2f} s audio/utt) "
                  f"in {out}", flush=True)
    manifest = out / manifest_name(limit)
    _atomic_write_text(manifest, "\n".join(lines) + "\n")
    return manifest


def spoken_nlu_manifest(*, cache_dir: str = "", limit_per_split: int | None = None,
                        build: Callable[..., Any] | None = None, verbose: bool = True,
                        **options) -> Path:
    """The manifest of the corpus `options` in the cache, built (or extended) when missing."""
    params = corpus_params(**options)
    limit = _check_limit(limit_per_split)
    out = corpus_dir(params, cache_dir)
    manifest = out / manifest_name(limit)
    if manifest.is_file():
        return manifest
    build = build_spoken_nlu if build is None else build
    kwargs = {k: params[k] for k in DEFAULTS}
    return Path(build(out, limit_per_split=limit, verbose=verbose, **kwargs))
