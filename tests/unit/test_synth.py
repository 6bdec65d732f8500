"""eSpeak NG synthesis, synthetic speakers, and the spoken-SLURP builder (6 utterances)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf

from jaxslu.audio import corpus, synth

SENTENCE = "siri what is one american dollar in japanese yen"


@pytest.fixture(scope="module")
def clean():
    return synth.synthesize(SENTENCE)


def test_every_voice_loads():
    for voice in synth.VOICES:
        synth.check_voice(voice)  # raises if eSpeak falls back to another voice


def test_sentence_is_speech_of_plausible_duration(clean):
    assert clean.dtype == np.float32 and clean.ndim == 1
    assert np.abs(clean).max() <= 1.0
    seconds = len(clean) / 16000
    # 9 words (15 syllables) at 175 words/min is about 3 s; allow 1.5-6 s for pauses and voices.
    assert 1.5 < seconds < 6.0, seconds
    rms = float(np.sqrt(np.mean(clean.astype(np.float64) ** 2)))
    assert rms > 0.02, rms
    # speech, not a steady tone or noise: the energy of 20 ms blocks swings between near-silent
    # stops/pauses and loud vowels (measured here: min 0, 10th percentile 0.02, max 0.22)
    blocks = clean[: len(clean) // 320 * 320].reshape(-1, 320)
    block_rms = np.sqrt((blocks.astype(np.float64) ** 2).mean(axis=1))
    assert block_rms.max() > 5 * np.percentile(block_rms, 10)
    assert block_rms.min() < 0.05 * block_rms.max()


def test_rate_and_sample_rate_change_length(clean):
    fast = synth.synthesize(SENTENCE, rate=300)
    assert len(fast) < 0.8 * len(clean)
    at8k = synth.synthesize(SENTENCE, sample_rate=8000)
    assert abs(len(at8k) - len(clean) / 2) <= 2


def test_deterministic_even_after_other_calls(clean):
    synth.synthesize("something else entirely", voice="en-gb-scotland", pitch=80)
    again = synth.synthesize(SENTENCE)
    np.testing.assert_array_equal(again, clean)


def test_voices_differ(clean):
    other = synth.synthesize(SENTENCE, voice="en-gb-scotland")
    n = min(len(other), len(clean))
    differs = len(other) != len(clean) or np.abs(other[:n] - clean[:n]).max() > 0.1
    assert differs
    # and not just a shift: the spectra differ (mean |rfft| over 1024-sample blocks)
    def spectrum(x):
        b = x[: len(x) // 1024 * 1024].reshape(-1, 1024)
        s = np.abs(np.fft.rfft(b, axis=1)).mean(axis=0)
        return s / s.sum()
    assert np.abs(spectrum(other) - spectrum(clean)).sum() > 0.05


def test_noise_at_requested_snr(clean):
    for snr in (10.0, 25.0):
        noisy = synth.synthesize(SENTENCE, noise_snr_db=snr, seed=3)
        noise = noisy.astype(np.float64) - clean
        measured = 10 * math.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise ** 2))
        assert abs(measured - snr) < 0.5, (snr, measured)
    a = synth.synthesize(SENTENCE, noise_snr_db=20.0, seed=5)
    np.testing.assert_array_equal(a, synth.synthesize(SENTENCE, noise_snr_db=20.0, seed=5))
    assert not np.array_equal(a, synth.synthesize(SENTENCE, noise_snr_db=20.0, seed=6))


def test_cache_hit(tmp_path, monkeypatch, clean):
    first = synth.synthesize(SENTENCE, cache_dir=tmp_path)
    np.testing.assert_array_equal(first, clean)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy"

    def no_espeak(*args, **kwargs):
        raise AssertionError("eSpeak called despite a cache entry")

    monkeypatch.setattr(synth, "_espeak", no_espeak)
    np.testing.assert_array_equal(synth.synthesize(SENTENCE, cache_dir=tmp_path), clean)
    with pytest.raises(AssertionError, match="despite"):  # other parameters: a different entry
        synth.synthesize(SENTENCE, pitch=60, cache_dir=tmp_path)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="en-zz"):
        synth.synthesize("hello", voice="en-zz")
    with pytest.raises(ValueError, match="non-empty text"):
        synth.synthesize("   ")
    with pytest.raises(ValueError, match="rate"):
        synth.synthesize("hello", rate=1000)
    with pytest.raises(ValueError, match="pitch"):
        synth.synthesize("hello", pitch=-1)


def _km(lat1, lon1, lat2, lon2):
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (math.sin((p2 - p1) / 2) ** 2
         + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2)
    return 2 * 6371 * math.asin(math.sqrt(a))


def test_make_speakers():
    speakers = synth.make_speakers(20, seed=1)
    assert speakers == synth.make_speakers(20, seed=1)
    assert speakers != synth.make_speakers(20, seed=2)
    voices = list(synth.VOICES)
    assert [s.voice for s in speakers] == [voices[i % len(voices)] for i in range(20)]
    assert len({s.id for s in speakers}) == 20
    for s in speakers:
        region = synth.ACCENT_REGIONS[s.voice]
        assert s.accent == region.label
        nearest = min(_km(s.lat, s.lon, la, lo) for _, la, lo in region.centres)
        assert nearest < 5 * region.spread_km, (s, nearest)  # 5 sigma of a 2-D Gaussian
        assert 148 <= s.rate <= 202 and 35 <= s.pitch <= 65
    with pytest.raises(ValueError, match="n >= 1"):
        synth.make_speakers(0)


def test_normalize_tokens_keeps_entity_spans():
    words, ranges = corpus.normalize_tokens(["what", "'s", "the", "rate", "of", "u.", "s.", "d.",
                                             "?", "ca", "n't", "jack@gmail"])
    assert words == ["what's", "the", "rate", "of", "u", "s", "d", "can't", "jack", "at", "gmail"]
    assert ranges == [(0, 1), (0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7), (7, 7),
                      (7, 8), (7, 8), (8, 11)]


def test_build_spoken_slurp(tmp_path, monkeypatch):
    out = tmp_path / "spoken"
    manifest = corpus.build_spoken_slurp(out, utterances=6, num_speakers=16, seed=0, verbose=False)
    assert manifest == out / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(rows) == 6
    source = [json.loads(line) for line in open(corpus.paths.data_dir() / "slurp" / "devel.jsonl")][:6]
    speakers = {s["id"]: s for s in json.loads((out / "speakers.json").read_text())}
    assert len(speakers) == 16
    keys = {"id", "path", "text", "scenario", "action", "intent", "entities", "speaker", "accent",
            "lat", "lon", "split", "slurp_id", "num_samples"}
    for row, src in zip(rows, source):
        assert set(row) == keys
        assert row["slurp_id"] == src["slurp_id"] and row["intent"] == src["intent"]
        assert row["split"] in corpus.SPLITS and row["split"] == corpus.split_of(src["slurp_id"])
        words = row["text"].split()
        assert len(words) == len(src["sentence"].split())  # devel's first rows have no clitics
        for ent, src_ent in zip(row["entities"], src["entities"]):
            assert ent["type"] == src_ent["type"]
            assert (ent["start"], ent["end"]) == (min(src_ent["span"]), max(src_ent["span"]) + 1)
        spk = speakers[row["speaker"]]
        assert (row["accent"], row["lat"], row["lon"]) == (spk["accent"], spk["lat"], spk["lon"])
        info = sf.info(str(out / row["path"]))
        assert info.samplerate == 16000 and info.frames == row["num_samples"]
        assert 0.5 < row["num_samples"] / 16000 < 10
    assert len({r["speaker"] for r in rows}) == 6  # round robin: 6 sentences, 6 distinct speakers
    assert rows[0]["text"] == "siri what is one american dollar in japanese yen"

    # Rebuild: every file is reused (no synthesis) and the manifest is identical.
    before = manifest.read_text()
    monkeypatch.setattr(corpus, "synthesize", lambda **kw: pytest.fail("re-rendered an existing file"))
    assert corpus.build_spoken_slurp(out, utterances=6, verbose=False).read_text() == before
    assert sorted(p.name for p in out.iterdir()) == ["audio", "manifest.jsonl", "speakers.json"]
