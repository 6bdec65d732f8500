"""Synthetic spoken digits: "zero".."nine" rendered with eSpeak NG over many voices and variants.

`build_synthetic_digits(out_dir, num_utterances=N)` writes out_dir/audio/*.flac and, last,
out_dir/manifest.jsonl (one JSON object per utterance, in the format that
`jaxslu.data.sources.read_manifest` reads), and returns the manifest path. The "fsdd" dataset mixes these clips into its training
split (option `synthetic_ratio`); the corpus lives in `<cache>/synthetic_digits-<key>` where
key = `corpus_key(seed, sample_rate)`.

Choices that were open:
- Utterance k speaks DIGIT_WORDS[k % 10] (so any N is balanced to within one clip per digit).
  Its speaker and rendering come from numpy default_rng([_STREAM, seed, k]) alone: a voice
  uniform over all of `synth.VOICES` (the accents), a variant uniform over None (the voice's
  own) and all of `synth.VARIANTS` (m1..m7, f1..f5), rate uniform over the integers of
  RATE_WPM (words per minute), eSpeak base pitch uniform over the integers of PITCH, a white-noise
  SNR uniform in SNR_DB (dB, rounded to 0.01) and the synthesis seed. Nothing depends on
  num_utterances, so a corpus of N clips is the first N clips of any larger one (same files).
- Speaker id "synth_<voice>_<variant>" ("base" for the voice's own), e.g. "synth_en-gb-scotland_f3":
  8 voices x 13 variants = 104 synthetic speakers; rate and pitch vary per utterance on top.
- Gender: the variant's ("male" for m*, "female" for f*). Without a variant the voice is eSpeak's
  built-in default, which declares no gender (code 0) but sounds male (median F0 about 100 Hz
  for en-us at pitch 50, measured, against 94-107 Hz for m1/m3 and 180-213 Hz for f1/f3), so
  it is labelled "male" and `meta["variant"]` is null.
- Accent: `synth.ACCENT_REGIONS[voice].label` (e.g. "scottish"), as the fairness speaker panel.
- 8 kHz by default: FSDD is 8 kHz telephone-band audio, so real and synthetic clips share a
  bandwidth (eSpeak renders 22050 Hz; `synthesize` resamples with an anti-aliasing filter).
- Idempotent and resumable (as jaxslu.audio.corpus): an audio file's name holds a hash of
  everything that determines its samples (text, voice, variant, rate, pitch, SNR, seed, sample
  rate, eSpeak version, FORMAT_VERSION), so an existing file is reused as is; FLAC files and the
  manifest are written atomically, the manifest last. A second build with the same arguments
  synthesizes nothing.
- One process, one loop: `synthesize` holds a module lock around every eSpeak call, so threads
  would not overlap the synthesis itself.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from jaxslu.audio.corpus import _atomic_write_text, cached_clip
from jaxslu.audio.synth import ACCENT_REGIONS, VARIANTS, VOICES, espeak_version, synthesize

__all__ = ["DIGIT_WORDS", "RATE_WPM", "PITCH", "SNR_DB", "FORMAT_VERSION", "MANIFEST",
           "corpus_key", "utterance_id", "utterance_params", "build_synthetic_digits"]

log = logging.getLogger(__name__)

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
RATE_WPM = (120, 260)  # inclusive integer range, words per minute
PITCH = (20, 80)  # inclusive integer range, eSpeak base pitch (a position in the variant's range)
SNR_DB = (20.0, 40.0)  # white-noise SNR range, dB
FORMAT_VERSION = 1  # bump when the recipe below changes: new corpus key and file names
MANIFEST = "manifest.jsonl"
_STREAM = 0xD1617  # separates these draws from other users of (seed, k)
_VARIANT_CHOICES: tuple[str | None, ...] = (None, *VARIANTS)
_LOG_EVERY = 500


def _check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo
            or (hi is not None and value > hi)):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"build_synthetic_digits: {name} must be an integer {rng}, got {value!r}")
    return int(value)


def corpus_key(seed: int, sample_rate: int = 8000) -> str:
    """12 hex digits identifying the recipe for (seed, sample_rate): ranges, voices, variants,
    format version. Not the number of utterances: a larger corpus extends a smaller one."""
    params = {"seed": int(seed), "sample_rate": int(sample_rate), "rate_wpm": list(RATE_WPM),
              "pitch": list(PITCH), "snr_db": list(SNR_DB), "voices": sorted(VOICES),
              "variants": sorted(VARIANTS), "format": FORMAT_VERSION}
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


def utterance_id(k: int) -> str:
    return f"synthdigit-{k:06d}"


def utterance_params(seed: int, k: int, sample_rate: int = 8000) -> dict:
    """The `synthesize` keyword arguments of utterance k: a function of (seed, k, sample_rate)."""
    rng = np.random.default_rng([_STREAM, int(seed), int(k)])
    voice = sorted(VOICES)[int(rng.integers(len(VOICES)))]
    variant = _VARIANT_CHOICES[int(rng.integers(len(_VARIANT_CHOICES)))]
    rate = int(rng.integers(RATE_WPM[0], RATE_WPM[1] + 1))
    pitch = int(rng.integers(PITCH[0], PITCH[1] + 1))
    snr = round(float(rng.uniform(*SNR_DB)), 2)
    utt_seed = int(rng.integers(2**31 - 1))
    return dict(text=DIGIT_WORDS[k % 10], voice=voice, variant=variant, rate=rate, pitch=pitch,
                noise_snr_db=snr, seed=utt_seed, sample_rate=int(sample_rate))


def build_synthetic_digits(out_dir: str | os.PathLike, *, num_utterances: int, seed: int = 0,
                           sample_rate: int = 8000) -> Path:
    """Render `num_utterances` spoken digits to FLAC; returns out_dir/manifest.jsonl.

    Manifest fields per line: id, path (relative to out_dir), text (digit word), intent (the
    digit "0".."9"), entities [], speaker ("synth_<voice>_<variant|base>"), split "train", and
    (read into meta) index k, voice, variant (null: the voice's own), gender, accent, rate,
    pitch, noise_snr_db, seed, num_samples, synthetic true. Existing audio files are reused.
    """
    num_utterances = _check_int("num_utterances", num_utterances, 1)
    seed = _check_int("seed", seed, 0, 2**63 - 1)
    sample_rate = _check_int("sample_rate", sample_rate, 1000, 384000)
    out = Path(out_dir)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    version = espeak_version()

    lines, rendered, t0 = [], 0, time.perf_counter()
    for k in range(num_utterances):
        params = utterance_params(seed, k, sample_rate)
        key = {**params, "espeak": version, "format": FORMAT_VERSION}
        uid = utterance_id(k)
        rel, num_samples, new = cached_clip(out, uid, key, lambda: synthesize(**params),
                                            sample_rate)
        rendered += new
        voice, variant = params["voice"], params["variant"]
        lines.append(json.dumps({
            "id": uid, "path": rel, "text": params["text"], "intent": str(k % 10),
            "entities": [], "speaker": f"synth_{voice}_{variant or 'base'}", "split": "train",
            "index": k, "voice": voice, "variant": variant,
            "gender": VARIANTS[variant] if variant else "male",
            "accent": ACCENT_REGIONS[voice].label, "rate": params["rate"],
            "pitch": params["pitch"], "noise_snr_db": params["noise_snr_db"],
            "seed": params["seed"], "num_samples": int(num_samples), "synthetic": True}))
        if (k + 1) % _LOG_EVERY == 0 or k + 1 == num_utterances:
            dt = time.perf_counter() - t0
            log.info("synthetic digits: %d/%d utterances (%d rendered, %.1f/s) in %s", k + 1,
                     num_utterances, rendered, rendered / max(dt, 1e-9), out)
    manifest = out / MANIFEST
    _atomic_write_text(manifest, "\n".join(lines) + "\n")
    return manifest
