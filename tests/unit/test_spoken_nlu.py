"""The spoken SLU corpus (jaxslu.audio.spoken_nlu) and its `spoken_nlu` dataset: unseen test
speakers, every accent on both sides, round-robin speakers per sentence, determinism,
idempotence, growth that reuses files, manifest fields, the dataset factory and the CLI.
All on a few utterances (eSpeak NG synthesis takes ~30 ms per sentence)."""
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from jaxslu.audio import spoken_nlu as SN
from jaxslu.audio.synth import ACCENT_REGIONS, VARIANTS, VOICES
from jaxslu.registry import DATASETS

ACCENTS = {r.label for r in ACCENT_REGIONS.values()}
SMALL = dict(num_train_speakers=8, num_test_speakers=8, speakers_per_sentence=2)


@pytest.fixture(scope="module")
def texts():
    return SN._texts(5)  # the first 5 sentences of each slurp_nlu split


@pytest.fixture
def count_synth(monkeypatch):
    calls = []
    real = SN.synthesize

    def counting(*a, **k):
        calls.append(a[0] if a else k["text"])
        return real(*a, **k)

    monkeypatch.setattr(SN, "synthesize", counting)
    return calls


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_panel_sides_disjoint_balanced_every_accent_on_both():
    spk = SN.make_nlu_speakers(48, 16, seed=0)
    assert len(spk) == 64 and len({s.id for s in spk}) == 64
    train = [s for s in spk if s.side == "train"]
    test = [s for s in spk if s.side == "test"]
    assert len(train) == 48 and len(test) == 16
    assert not {s.id for s in train} & {s.id for s in test}
    assert {s.accent for s in train} == ACCENTS == {s.accent for s in test}
    # every accent x gender cell: 3 training speakers and 1 test speaker, 4 distinct variants
    cells = Counter((s.side, s.voice, s.gender) for s in spk)
    for v in VOICES:
        for g in SN.GENDERS:
            assert cells["train", v, g] == 3 and cells["test", v, g] == 1
            assert len({s.variant for s in spk if (s.voice, s.gender) == (v, g)}) == 4
    for s in spk:
        assert VARIANTS[s.variant] == s.gender
        assert 80 <= s.rate <= 450 and 0 <= s.pitch <= 100
        assert abs(s.lat) <= 90 and abs(s.lon) <= 180
    assert SN.make_nlu_speakers(48, 16, seed=0) == spk
    assert SN.make_nlu_speakers(48, 16, seed=1) != spk
    # the smallest panel still has every accent on both sides
    small = SN.make_nlu_speakers(8, 8)
    assert {s.accent for s in small if s.side == "train"} == ACCENTS
    assert {s.accent for s in small if s.side == "test"} == ACCENTS
    with pytest.raises(ValueError, match="num_test_speakers"):
        SN.make_nlu_speakers(48, 7)


def test_build_manifest_speakers_idempotent_and_growth(tmp_path, texts, count_synth):
    out = tmp_path / "c"
    m3 = SN.build_spoken_nlu(out, limit_per_split=3, texts=texts, verbose=False, **SMALL)
    assert m3.name == "manifest-first3.jsonl"
    recs = _lines(m3)
    # 3 train sentences x 2 speakers + 3 held-out splits x 3 sentences x 1 speaker
    assert len(recs) == 6 + 9 and len(count_synth) == 15
    speakers = {s["id"]: s for s in json.loads((out / "speakers.json").read_text())}
    assert len(speakers) == 16
    by_sentence = {}
    for r in recs:
        assert {"id", "path", "text", "intent", "entities", "speaker", "split", "accent",
                "gender", "lat", "lon", "voice", "variant", "rate", "pitch", "snr_db", "rt60",
                "source", "domain", "scenario", "num_samples"} <= set(r)
        side = speakers[r["speaker"]]["side"]
        assert side == ("train" if r["split"] == "train" else "test")
        assert r["accent"] == speakers[r["speaker"]]["accent"]
        assert r["gender"] == speakers[r["speaker"]]["gender"]
        assert r["source"] == ("slurp" if r["split"] in ("dev", "slurp_test") else "hwu64")
        n = len(r["text"].split())
        assert all(0 <= e["start"] < e["end"] <= n for e in r["entities"])
        info = sf.info(str(out / r["path"]))
        assert info.samplerate == 16000 and info.frames == r["num_samples"] > 1600
        by_sentence.setdefault((r["split"], r["text"]), []).append(r["speaker"])
    for (split, _), spks in by_sentence.items():
        assert len(spks) == len(set(spks)) == (2 if split == "train" else 1)
    assert Counter(r["split"] for r in recs) == {"train": 6, "dev": 3, "slurp_test": 3,
                                                 "hwu64_test": 3}
    # round robin: the 6 training utterances use 6 distinct training speakers (equal shares)
    assert len({r["speaker"] for r in recs if r["split"] == "train"}) == 6

    # idempotent: a second build synthesizes nothing and writes the same manifest
    before = m3.read_text()
    SN.build_spoken_nlu(out, limit_per_split=3, texts=texts, verbose=False, **SMALL)
    assert len(count_synth) == 15 and m3.read_text() == before

    # growth: 5 sentences per split render only the new ones; old records are unchanged
    stamps = {r["path"]: (out / r["path"]).stat().st_mtime_ns for r in recs}
    m5 = SN.build_spoken_nlu(out, limit_per_split=5, texts=texts, verbose=False, **SMALL)
    assert len(count_synth) == 15 + 2 * 2 + 3 * 2
    recs5 = {r["id"]: r for r in _lines(m5)}
    assert len(recs5) == 25
    for r in recs:
        assert recs5[r["id"]] == r
        assert (out / r["path"]).stat().st_mtime_ns == stamps[r["path"]]
    assert m3.read_text() == before  # the pilot's manifest stays

    # determinism: a fresh folder renders the same samples
    other = SN.build_spoken_nlu(tmp_path / "d", limit_per_split=1, texts=texts, verbose=False,
                                **SMALL)
    for r in _lines(other):
        a, _ = sf.read(str(tmp_path / "d" / r["path"]))
        b, _ = sf.read(str(out / recs5[r["id"]]["path"]))
        np.testing.assert_array_equal(a, b)
        assert recs5[r["id"]] == r


def test_noise_and_reverb_recorded_and_applied(tmp_path, texts):
    one = {s: texts[s][:1] for s in SN.SPLITS}
    clean = _lines(SN.build_spoken_nlu(tmp_path / "clean", texts=one, noise_prob=0.0,
                                       reverb_prob=0.0, verbose=False, **SMALL))
    dirty = _lines(SN.build_spoken_nlu(tmp_path / "dirty", texts=one, noise_prob=1.0,
                                       reverb_prob=1.0, snr_db=(10, 10), verbose=False, **SMALL))
    assert all(r["snr_db"] is None and r["rt60"] is None for r in clean)
    assert all(r["snr_db"] == 10.0 and 0.15 <= r["rt60"] <= 0.6 and r["noise_beta"] is not None
               for r in dirty)
    for c, d in zip(clean, dirty):
        assert c["id"] == d["id"] and c["num_samples"] == d["num_samples"]  # same speech
        a, _ = sf.read(str(tmp_path / "clean" / c["path"]))
        b, _ = sf.read(str(tmp_path / "dirty" / d["path"]))
        assert not np.allclose(a, b) and np.max(np.abs(b)) <= 1.0
    # the mix over many utterances follows the probabilities (parameters only, no audio)
    spk = SN.make_nlu_speakers(8, 8)
    p = SN.corpus_params(**SMALL)
    us = [SN.utterance_params(f"x/{i}", "hello there", spk[i % 16], p) for i in range(400)]
    assert 0.4 < np.mean([u["snr_db"] is not None for u in us]) < 0.6
    assert 0.2 < np.mean([u["rt60"] is not None for u in us]) < 0.4


def test_dataset_factory_splits_cache_and_errors(tmp_path, monkeypatch):
    calls = []

    def build(*a, **k):
        calls.append(k)
        return SN.build_spoken_nlu(*a, **k)

    make = DATASETS.get("spoken_nlu").factory
    opts = dict(SMALL, limit_per_split=2, cache_dir=str(tmp_path), build=build)
    train = make("train", **opts)
    held = {s: make(s, **opts) for s in SN.HELD_OUT}
    assert len(calls) == 1 and len(train) == 4 and all(len(h) == 2 for h in held.values())
    train_spk = {train.metadata(i)["speaker"] for i in range(len(train))}
    test_spk = {h.metadata(i)["speaker"] for h in held.values() for i in range(len(h))}
    assert train_spk and test_spk and not train_spk & test_spk
    ex = held["hwu64_test"][0]
    assert ex["audio"].ndim == 1 and ex["sample_rate"] == 16000
    assert {"accent", "gender", "lat", "lon", "voice", "variant", "rate", "pitch", "snr_db",
            "rt60", "source", "domain"} <= set(ex["meta"])
    assert ex["intent"] and ex["text"]
    assert len(make("dev+slurp_test", **opts)) == 4 and len(make("all", **opts)) == 10
    assert len(calls) == 1  # served from the manifest
    folders = list(tmp_path.glob("spoken_nlu-*"))
    assert len(folders) == 1
    make("train", **dict(opts, limit_per_split=3))  # same folder, another manifest
    assert len(calls) == 2 and list(tmp_path.glob("spoken_nlu-*")) == folders
    assert {p.name for p in folders[0].glob("manifest*")} == {"manifest-first2.jsonl",
                                                              "manifest-first3.jsonl"}
    make("train", **dict(opts, seed=1))  # other parameters -> another folder
    assert len(calls) == 3 and len(list(tmp_path.glob("spoken_nlu-*"))) == 2

    with pytest.raises(ValueError, match="split 'test' unknown"):
        make("test", **opts)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['num_speakers'\]"):
        make("train", **opts, num_speakers=4)
    with pytest.raises(ValueError, match="speakers_per_sentence"):
        make("train", **dict(opts, speakers_per_sentence=9))
    with pytest.raises(ValueError, match="num_test_speakers"):
        make("train", **dict(opts, num_test_speakers=4))
    with pytest.raises(ValueError, match="limit_per_split"):
        make("train", **dict(opts, limit_per_split=0))
    with pytest.raises(ValueError, match="noise_prob"):
        make("train", **opts, noise_prob=1.5)
    assert len(calls) == 3  # a bad option builds nothing


def test_cli_synth_nlu(tmp_path, capsys):
    from jaxslu.cli import main

    argv = ["synth-nlu", "--out", str(tmp_path / "o"), "--train-speakers", "8",
            "--test-speakers", "8", "--limit-per-split", "1"]
    assert main(argv) == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    assert path.endswith("manifest-first1.jsonl") and len(_lines(Path(path))) == 5
    assert main(argv[:3] + ["--train-speakers", "8", "--test-speakers", "3"]) == 2
    assert "num_test_speakers" in capsys.readouterr().err
    # without --out: the cache folder the dataset reads (so training finds it built)
    cache = tmp_path / "cache"
    assert main(["synth-nlu", "--cache-dir", str(cache)] + argv[3:]) == 0
    path = Path(capsys.readouterr().out.strip().splitlines()[-1])
    make = DATASETS.get("spoken_nlu").factory
    src = make("all", **SMALL, limit_per_split=1, cache_dir=str(cache),
               build=lambda *a, **k: pytest.fail("the CLI built it already"))
    assert path.parent.parent == cache and len(src) == 5


def test_config_options_are_the_factory_s():
    from jaxslu.config import load_config

    root = Path(__file__).resolve().parents[2]
    for variant in ("default", "tiny"):
        cfg = load_config(root / "configs" / "spoken_nlu.py", variant)
        assert cfg.data.dataset == "spoken_nlu"
        assert set(cfg.data.eval_splits) == set(SN.HELD_OUT)
        opts = dict(cfg.data.options)
        limit = opts.pop("limit_per_split", None)
        SN.corpus_params(**opts)  # no unknown or bad option
        assert variant == "default" or limit == 6
    # the default corpus is the one `jaxslu synth-nlu` builds without --out
    default = load_config(root / "configs" / "spoken_nlu.py").data.options
    assert SN.corpus_params(**default) == SN.corpus_params()
