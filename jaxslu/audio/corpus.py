"""Spoken SLURP: the bundled SLURP devel text (data/slurp/devel.jsonl) rendered with eSpeak NG voices.

`build_spoken_slurp(out_dir)` writes out_dir/audio/*.flac, out_dir/speakers.json and, last,
out_dir/manifest.jsonl (one JSON object per utterance), and returns the manifest path.

Choices that were open:
- Text: SLURP tokens are PTB-style ("what 's", "ca n't"). The transcript is built from the tokens:
  lowercased, "@" -> " at ", "&" -> " and ", every character other than letters, digits and
  apostrophes becomes a space, and clitic tokens (starting with an apostrophe, or "n't") are
  glued to the previous word, so the text reads like SLURP's `sentence` ("what's", "can't").
  Entity token spans (`span: [i, ..., j]`) are mapped through the token -> word alignment to word
  spans [start, end) of text.split(); an entity touching a glued clitic covers the whole word.
- Speakers: `make_speakers(num_speakers, seed)` (voices cycle over the accents); sentence k is
  spoken by perm[k % num_speakers] for a seeded permutation perm (round robin, so speakers get
  equal shares). With `speakers_per_sentence` s > 1, sentence k is spoken by the s speakers
  perm[(k*s + j) % num_speakers], j < s (distinct, still equal shares): more audio per sentence
  and per-speaker statistics on every split (the fairness cohorts need them). Each utterance's SNR is uniform in `noise_snr_db` and its synthesis seed is
  derived from (seed, slurp_id), so one utterance's audio does not depend on which others exist.
- Split: "train"/"dev"/"test" = 80/10/10 by SHA-256(slurp_id) mod 10, independent of the speaker,
  so every accent appears in every split (given enough utterances).
- Idempotent and resumable: an audio file's name holds a hash of everything that determines its
  samples, so an existing file is reused as is (and a changed parameter renders a new file);
  FLAC files, speakers.json and the manifest are written atomically, the manifest last.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf

from jaxslu import paths
from jaxslu.audio.io import write_flac
from jaxslu.audio.synth import Speaker, make_speakers, synthesize

__all__ = ["SPLITS", "normalize_tokens", "split_of", "load_slurp_devel", "build_spoken_slurp"]

SPLITS = ("train", "dev", "test")
_NON_WORD = re.compile(r"[^\w']+|_")
_CLITIC = re.compile(r"^('\w+|n't)$")


def _normalize_piece(surface: str) -> list[str]:
    s = surface.lower().replace("@", " at ").replace("&", " and ")
    return [w for w in _NON_WORD.sub(" ", s).split() if w.strip("'")]  # drop bare apostrophes


def normalize_tokens(tokens: Sequence[str]) -> tuple[list[str], list[tuple[int, int]]]:
    """Normalized words of a SLURP token list and, per token, its word range [start, end).

    A token that normalizes to nothing (e.g. ".") gets an empty range (start == end).
    """
    words: list[str] = []
    ranges: list[tuple[int, int]] = []
    for tok in tokens:
        pieces = _normalize_piece(tok)
        if len(pieces) == 1 and _CLITIC.match(pieces[0]) and words:
            words[-1] += pieces[0]
            ranges.append((len(words) - 1, len(words)))
            continue
        start = len(words)
        words.extend(pieces)
        ranges.append((start, len(words)))
    return words, ranges


def split_of(slurp_id: int | str) -> str:
    """'train', 'dev' or 'test' (80/10/10) from a hash of the SLURP id."""
    bucket = int(hashlib.sha256(str(slurp_id).encode()).hexdigest(), 16) % 10
    return "train" if bucket < 8 else ("dev" if bucket == 8 else "test")


def load_slurp_devel(path: str | os.PathLike | None = None) -> list[dict]:
    """Parsed, normalized SLURP devel records: slurp_id, text, scenario, action, intent, entities.

    `path` defaults to <data_dir>/slurp/devel.jsonl. Errors name the file and line.
    """
    path = Path(path) if path is not None else paths.data_dir() / "slurp" / "devel.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"SLURP text file {str(path)!r} not found; it ships in data/slurp/ "
                                "of a jaxslu checkout (or set JAXSLU_DATA)")
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                words, ranges = normalize_tokens([t["surface"] for t in r["tokens"]])
                entities = []
                for e in r["entities"]:
                    span = [int(i) for i in e["span"]]
                    start, end = ranges[min(span)][0], ranges[max(span)][1]
                    if start < end:  # an entity made only of punctuation has no words left
                        entities.append({"type": e["type"], "start": start, "end": end})
                records.append({"slurp_id": int(r["slurp_id"]), "text": " ".join(words),
                                "scenario": r["scenario"], "action": r["action"],
                                "intent": r["intent"], "entities": entities})
            except (KeyError, TypeError, ValueError, IndexError) as e:
                raise ValueError(f"{str(path)}:{lineno}: malformed SLURP record ({e!r})") from e
            if not records[-1]["text"]:
                raise ValueError(f"{str(path)}:{lineno}: sentence normalizes to empty text")
    return records


def cached_clip(out: Path, stem: str, key: dict, render, sample_rate: int,
                folder: str = "audio") -> tuple[str, int, bool]:
    """The FLAC of one utterance, rendered once: out/folder/<stem>-<hash of key>.flac.

    `key` holds everything that determines the samples, so an existing file is reused as is and
    a changed parameter renders a new one; `render()` -> float32 samples at `sample_rate`,
    written atomically. Returns (path relative to out, number of samples, whether it rendered).
    """
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    rel = f"{folder}/{stem}-{digest}.flac"
    path = out / rel
    if path.is_file():
        return rel, int(sf.info(str(path)).frames), False
    x = render()
    write_flac(path, x, sample_rate)
    return rel, int(x.shape[0]), True


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _snr_range(noise_snr_db) -> tuple[float, float] | None:
    if noise_snr_db is None:
        return None
    if isinstance(noise_snr_db, (int, float)):
        return float(noise_snr_db), float(noise_snr_db)
    try:
        lo, hi = (float(v) for v in noise_snr_db)
    except (TypeError, ValueError) as e:
        raise ValueError(f"noise_snr_db must be None, a number or a (low, high) pair of dB, "
                         f"got {noise_snr_db!r}") from e
    if not lo <= hi:
        raise ValueError(f"noise_snr_db range must have low <= high, got {noise_snr_db!r}")
    return lo, hi


def build_spoken_slurp(out_dir: str | os.PathLike, *, num_speakers: int = 16,
                       utterances: int | None = None, seed: int = 0, sample_rate: int = 16000,
                       noise_snr_db: float | tuple[float, float] | None = (20, 40),
                       source: str | os.PathLike | None = None, verbose: bool = True,
                       speakers_per_sentence: int = 1) -> Path:
    """Render SLURP devel sentences to FLAC with synthetic speakers; returns out_dir/manifest.jsonl.

    utterances: the first N sentences of the file (None = all). noise_snr_db: None (clean), a
    fixed SNR, or a (low, high) range sampled uniformly per utterance. source: the SLURP jsonl
    (default: the bundled devel.jsonl). Manifest fields: id, path (relative to out_dir), text,
    scenario, action, intent, entities [{type, start, end}], speaker, accent, lat, lon, split,
    slurp_id, num_samples. Re-running with the same arguments reuses every existing audio file.
    """
    if isinstance(num_speakers, bool) or not isinstance(num_speakers, int) or num_speakers < 1:
        raise ValueError(f"num_speakers must be a positive int, got {num_speakers!r}")
    if (isinstance(speakers_per_sentence, bool) or not isinstance(speakers_per_sentence, int)
            or not 1 <= speakers_per_sentence <= num_speakers):
        raise ValueError(f"speakers_per_sentence must be an int in [1, num_speakers="
                         f"{num_speakers}], got {speakers_per_sentence!r}")
    if utterances is not None and (isinstance(utterances, bool) or not isinstance(utterances, int)
                                   or utterances < 1):
        raise ValueError(f"utterances must be None (all) or a positive int, got {utterances!r}")
    snr = _snr_range(noise_snr_db)
    records = load_slurp_devel(source)
    if utterances is not None:
        records = records[:utterances]

    out = Path(out_dir)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    speakers = make_speakers(num_speakers, seed)
    _atomic_write_text(out / "speakers.json",
                       json.dumps([dataclasses.asdict(s) for s in speakers], indent=1) + "\n")
    perm = np.random.default_rng([seed, 1]).permutation(num_speakers)

    lines, rendered, t0 = [], 0, time.perf_counter()
    step = max(1, len(records) // 10)
    for k, r in enumerate(records):
        for j in range(speakers_per_sentence):
            spk: Speaker = speakers[int(perm[(k * speakers_per_sentence + j) % num_speakers])]
            rng = np.random.default_rng([seed, r["slurp_id"]] + ([j] if j else []))
            utt_seed = int(rng.integers(2**31 - 1))
            utt_snr = None if snr is None else round(float(rng.uniform(*snr)), 2)
            params = dict(text=r["text"], voice=spk.voice, rate=spk.rate, pitch=spk.pitch,
                          noise_snr_db=utt_snr, seed=utt_seed, sample_rate=sample_rate)
            uid = f"slurp{r['slurp_id']}-{spk.id}"
            rel, num_samples, new = cached_clip(out, uid, params,
                                                lambda: synthesize(**params), sample_rate)
            rendered += new
            lines.append(json.dumps({
                "id": uid, "path": rel, "text": r["text"], "scenario": r["scenario"],
                "action": r["action"], "intent": r["intent"], "entities": r["entities"],
                "speaker": spk.id, "accent": spk.accent, "lat": spk.lat, "lon": spk.lon,
                "split": split_of(r["slurp_id"]), "slurp_id": r["slurp_id"],
                "num_samples": int(num_samples)}))
        if verbose and ((k + 1) % step == 0 or k + 1 == len(records)):
            dt = time.perf_counter() - t0
            print(f"spoken-slurp: {k + 1}/{len(records)} sentences ({rendered} rendered, "
                  f"{rendered / max(dt, 1e-9):.1f}/s)", flush=True)
    manifest = out / "manifest.jsonl"
    _atomic_write_text(manifest, "\n".join(lines) + "\n")
    return manifest
