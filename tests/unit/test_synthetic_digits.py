"""Synthetic spoken digits (jaxslu.audio.digits) and their mixing into the fsdd train split.

Small on purpose: corpora of 12 and 20 clips at 8 kHz, and a handful of clips mixed into FSDD
(a tiny copy of the FSDD folder for ratio 0.5, a tiny ratio on the real one).
"""
from __future__ import annotations

import collections
import json
import math
import shutil

import numpy as np
import pytest
import soundfile as sf

from jaxslu import paths
from jaxslu.audio import digits, synth
from jaxslu.data.labels import Vocabularies
from jaxslu.data.sources import FsddSource, read_manifest, synthetic_digits_dir
from jaxslu.registry import DATASETS

FSDD = paths.data_dir() / "fsdd"
FSDD_SPEAKERS = ("george", "jackson", "nicolas", "theo", "yweweler")


def fsdd(split, **options):
    return DATASETS.get("fsdd").factory(split, **options)


def lines(manifest):
    return [json.loads(x) for x in manifest.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Corpus A (12 clips), corpus B (12, then extended to 20, then rebuilt), with the number of
    synthesize calls of each step."""
    calls = []
    real = digits.synthesize

    def counting(**kw):
        calls.append(kw)
        return real(**kw)

    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(digits, "synthesize", counting)
        a_dir, b_dir = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
        steps = [("a12", a_dir, 12), ("b12", b_dir, 12), ("b20", b_dir, 20),
                 ("b20again", b_dir, 20)]
        for name, d, n in steps:
            before = len(calls)
            m = digits.build_synthetic_digits(d, num_utterances=n, seed=0, sample_rate=8000)
            out[name] = {"manifest": m, "lines": lines(m), "calls": len(calls) - before,
                         "dir": d}
    return out


def test_same_arguments_give_same_files_and_samples(built):
    a, b = built["a12"], built["b12"]
    assert a["calls"] == b["calls"] == 12
    assert a["lines"] == b["lines"]  # same ids, file names (content hashes), fields
    for la in a["lines"]:
        xa, sra = sf.read(str(a["dir"] / la["path"]), dtype="float32")
        xb, srb = sf.read(str(b["dir"] / la["path"]), dtype="float32")
        assert sra == srb == 8000
        np.testing.assert_array_equal(xa, xb)


def test_larger_corpus_extends_smaller_and_rebuild_synthesizes_nothing(built):
    assert built["b20"]["calls"] == 8  # clips 12..19 only; 0..11 reused
    assert built["b20"]["lines"][:12] == built["a12"]["lines"]
    assert built["b20again"]["calls"] == 0
    assert built["b20again"]["lines"] == built["b20"]["lines"]
    assert len(list((built["b20"]["dir"] / "audio").glob("*.flac"))) == 20
    assert not list(built["b20"]["dir"].rglob(".*"))  # no temporary files left behind
    # utterance k's samples are the same in the 12- and the 20-clip corpus
    for la in built["a12"]["lines"][:3]:
        xa, _ = sf.read(str(built["a12"]["dir"] / la["path"]), dtype="float32")
        xb, _ = sf.read(str(built["b20"]["dir"] / la["path"]), dtype="float32")
        np.testing.assert_array_equal(xa, xb)


def test_digits_are_balanced(built):
    ls = built["b20"]["lines"]
    assert [x["intent"] for x in ls] == [str(k % 10) for k in range(20)]
    assert collections.Counter(x["intent"] for x in ls) == {str(d): 2 for d in range(10)}
    assert all(x["text"] == digits.DIGIT_WORDS[int(x["intent"])] for x in ls)


def test_manifest_fields_and_audio(built):
    d, ls = built["b20"]["dir"], built["b20"]["lines"]
    assert len({x["id"] for x in ls}) == 20
    for k, x in enumerate(ls):
        assert x["id"] == digits.utterance_id(k) and x["index"] == k
        assert x["entities"] == [] and x["split"] == "train" and x["synthetic"] is True
        assert x["voice"] in synth.VOICES
        assert x["variant"] is None or x["variant"] in synth.VARIANTS
        assert x["speaker"] == f"synth_{x['voice']}_{x['variant'] or 'base'}"
        assert x["gender"] == (synth.VARIANTS[x["variant"]] if x["variant"] else "male")
        assert x["accent"] == synth.ACCENT_REGIONS[x["voice"]].label
        assert 120 <= x["rate"] <= 260 and 20 <= x["pitch"] <= 80
        assert 20 <= x["noise_snr_db"] <= 40
        assert x["path"].startswith("audio/") and x["path"].endswith(".flac")
        info = sf.info(str(d / x["path"]))
        assert info.samplerate == 8000 and info.frames == x["num_samples"]
        # a spoken digit: 0.1-1.5 s (measured 0.19-0.72 s over 200 clips)
        assert 0.1 < x["num_samples"] / 8000 < 1.5
    recs = read_manifest(built["b20"]["manifest"], "all")
    assert recs[3]["meta"]["synthetic"] is True and recs[3]["audio_path"].is_file()
    assert {"voice", "variant", "rate", "pitch", "accent", "gender"} <= set(recs[3]["meta"])


def test_speaker_draws_cover_voices_and_variants_and_depend_only_on_seed_and_k():
    draws = [digits.utterance_params(0, k) for k in range(2000)]
    assert draws[7] == digits.utterance_params(0, 7)
    assert digits.utterance_params(1, 7) != draws[7]
    assert {p["voice"] for p in draws} == set(synth.VOICES)
    assert {p["variant"] for p in draws} == {None, *synth.VARIANTS}
    rates, pitches = [p["rate"] for p in draws], [p["pitch"] for p in draws]
    assert (min(rates), max(rates)) == (120, 260) and (min(pitches), max(pitches)) == (20, 80)
    snrs = [p["noise_snr_db"] for p in draws]
    assert 20 <= min(snrs) < 21 and 39 < max(snrs) <= 40
    assert all(p["sample_rate"] == 8000 for p in draws)


@pytest.mark.parametrize("kwargs", [dict(num_utterances=0), dict(num_utterances=2.0),
                                    dict(num_utterances=3, seed=-1),
                                    dict(num_utterances=3, sample_rate=True)])
def test_builder_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError, match="build_synthetic_digits"):
        digits.build_synthetic_digits(tmp_path, **kwargs)


# ---------------------------------------------------------------------------------------------
# fsdd with synthetic_ratio
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache folder for the fsdd tests: the synthetic corpus is built once and extended."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """A copy of FSDD with 11 train recordings (index 5, plus one index 6) and 10 test ones."""
    root = tmp_path_factory.mktemp("fsdd")
    (root / "recordings").mkdir()
    shutil.copy(FSDD / "speakers.json", root / "speakers.json")
    names = [f"{d}_{s}_{i}.wav" for s in ("jackson", "theo") for d in range(5) for i in (4, 5)]
    for n in names + ["0_jackson_6.wav"]:
        shutil.copy(FSDD / "recordings" / n, root / "recordings" / n)
    return root


def test_ratio_half_adds_rounded_synthetic_clips_that_load_at_8khz(tiny_root, cache):
    src = FsddSource("train", root=tiny_root, synthetic_ratio=0.5, cache_dir=str(cache))
    n_real = 11
    n_syn = math.floor(0.5 * n_real + 0.5)  # 6 (rounded half up)
    assert len(src) == n_real + n_syn == 17
    assert (src.num_real, src.num_synthetic) == (11, 6)
    metas = [src.metadata(i) for i in range(len(src))]
    assert [m["meta"]["synthetic"] for m in metas] == [False] * n_real + [True] * n_syn
    assert all(m["speaker"] in ("jackson", "theo") for m in metas[:n_real])
    assert all(m["speaker"].startswith("synth_") for m in metas[n_real:])
    assert [m["intent"] for m in metas[n_real:]] == [str(k) for k in range(n_syn)]
    for i in range(n_real, len(src)):
        ex = src[i]
        assert ex["sample_rate"] == 8000 and ex["audio"].ndim == 1 and ex["audio"].size > 800
        assert np.all(np.isfinite(ex["audio"])) and np.abs(ex["audio"]).max() <= 1.0
        assert ex["text"] == digits.DIGIT_WORDS[int(ex["intent"])]
    assert src[0]["sample_rate"] == 8000  # a real one
    vocab = Vocabularies.from_source(src)  # per-speaker vocabularies see both kinds
    assert {"jackson", "theo"} <= set(vocab.speakers) and len(vocab.speakers) > 2
    assert (cache / synthetic_digits_dir(0, str(cache)).name / "manifest.jsonl").is_file()
    assert synthetic_digits_dir(0, str(cache)).name.startswith("synthetic_digits-")


def test_test_and_all_splits_ignore_the_ratio(tiny_root, cache):
    def ids(src):
        return [src.metadata(i)["id"] for i in range(len(src))]

    for split, n in (("test", 10), ("all", 21)):
        plain = FsddSource(split, root=tiny_root)
        mixed = FsddSource(split, root=tiny_root, synthetic_ratio=0.5, cache_dir=str(cache))
        assert ids(mixed) == ids(plain) and len(plain) == n and mixed.num_synthetic == 0
        assert not any(mixed.metadata(i)["meta"]["synthetic"] for i in range(len(mixed)))


def test_corpus_built_once_then_served_and_extended(tiny_root, tmp_path):
    calls = []

    def build(out_dir, **kw):
        calls.append(kw["num_utterances"])
        return digits.build_synthetic_digits(out_dir, **kw)

    opts = dict(root=tiny_root, cache_dir=str(tmp_path), synthetic_build=build)
    a = FsddSource("train", synthetic_ratio=0.2, **opts)  # round(2.2) = 2
    b = FsddSource("train", synthetic_ratio=0.2, **opts)
    c = FsddSource("train", synthetic_ratio=0.1, **opts)  # 1 <= 2 built: served
    assert calls == [2] and (a.num_synthetic, b.num_synthetic, c.num_synthetic) == (2, 2, 1)
    d = FsddSource("train", synthetic_ratio=0.3, **opts)  # 3 > 2: extends (1 new clip)
    assert calls == [2, 3] and len(d) == 14
    assert d.metadata(11) == a.metadata(11) and d.metadata(12) == a.metadata(12)
    FsddSource("train", synthetic_ratio=0.2, synthetic_seed=1, **opts)  # another seed: folder
    assert calls == [2, 3, 2] and len(list(tmp_path.glob("synthetic_digits-*"))) == 2


def test_fsdd_factory_with_ratio_and_holdout_speaker(cache):
    tr = fsdd("train", synthetic_ratio=0.002, cache_dir=str(cache))
    assert len(tr) == 2250 + 5  # floor(4.5 + 0.5)
    assert sum(tr.metadata(i)["meta"]["synthetic"] for i in range(len(tr))) == 5
    xtr = fsdd("train", holdout_speaker="theo", synthetic_ratio=0.002, cache_dir=str(cache))
    xte = fsdd("test", holdout_speaker="theo", synthetic_ratio=0.002, cache_dir=str(cache))
    assert len(xtr) == 2000 + 4 and len(xte) == 500
    tr_speakers = {xtr.metadata(i)["speaker"] for i in range(len(xtr))}
    assert "theo" not in tr_speakers
    assert {s for s in tr_speakers if not s.startswith("synth_")} == set(FSDD_SPEAKERS) - {"theo"}
    assert {xte.metadata(i)["speaker"] for i in range(len(xte))} == {"theo"}
    assert not any(xte.metadata(i)["meta"]["synthetic"] for i in range(len(xte)))
    assert xtr.metadata(2003)["id"] == tr.metadata(2253)["id"]  # one shared corpus


@pytest.mark.parametrize("ratio", [-0.1, float("nan"), float("inf"), "0.5", True, None])
def test_bad_ratio_is_a_clear_error(ratio):
    with pytest.raises(ValueError, match=r"synthetic_ratio must be a finite number >= 0"):
        fsdd("train", synthetic_ratio=ratio)
    with pytest.raises(ValueError, match=r"synthetic_ratio"):
        fsdd("test", synthetic_ratio=ratio)  # checked on every split


@pytest.mark.parametrize("seed", [-1, 1.5, True])
def test_bad_synthetic_seed_is_a_clear_error(seed):
    with pytest.raises(ValueError, match=r"synthetic_seed must be an integer >= 0"):
        fsdd("train", synthetic_ratio=0.1, synthetic_seed=seed)
