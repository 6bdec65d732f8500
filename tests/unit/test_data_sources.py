"""Data sources (fsdd, slurp_text, clinc150, manifest, spoken_slurp) and label vocabularies.

Expected values come from the bundled files read independently here (file names, JSON) or from
hand-worked examples; only a handful of audio files are read to keep the test fast.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxslu import paths
from jaxslu.data.labels import Vocabularies
from jaxslu.data.sources import ExampleReadError, token_to_word
from jaxslu.registry import DATASETS


def make(name, split, **options):
    return DATASETS.get(name).factory(split, **options)


EXAMPLE_KEYS = {"id", "audio", "sample_rate", "text", "intent", "entities", "speaker", "meta"}


def test_registered_names():
    assert {"fsdd", "slurp_text", "clinc150", "spoken_slurp", "manifest", "tfds"} <= set(
        DATASETS.names())


def test_fsdd_splits_and_example():
    files = [p.name for p in (paths.data_dir() / "fsdd" / "recordings").glob("*.wav")]
    idx = {n: int(re.match(r"\d_[a-z]+_(\d+)\.wav", n).group(1)) for n in files}
    train, test, all_ = make("fsdd", "train"), make("fsdd", "test"), make("fsdd", "all")
    assert len(train) == sum(i >= 5 for i in idx.values()) == 2250
    assert len(test) == sum(i < 5 for i in idx.values()) == 250
    assert len(all_) == 2500
    ids_test = {test.metadata(i)["id"] for i in range(len(test))}
    assert all(int(x.split("_")[2]) < 5 for x in ids_test)
    k = next(i for i in range(len(test)) if test.metadata(i)["id"] == "7_nicolas_3")
    ex = test[k]
    assert set(ex) == EXAMPLE_KEYS
    ref, sr = sf.read(str(paths.data_dir() / "fsdd/recordings/7_nicolas_3.wav"), dtype="float32")
    assert ex["sample_rate"] == sr == 8000
    np.testing.assert_array_equal(ex["audio"], ref)
    assert (ex["text"], ex["intent"], ex["entities"], ex["speaker"]) == ("seven", "7", [],
                                                                          "nicolas")
    assert ex["meta"] == {"accent": "BEL/French", "gender": "male", "synthetic": False}
    assert test.text(k) == "seven" and "audio" not in test.metadata(k)


def test_fsdd_holdout_speaker():
    tr, te = make("fsdd", "train", holdout_speaker="theo"), make("fsdd", "test",
                                                                  holdout_speaker="theo")
    assert len(tr) == 2000 and len(te) == 500
    assert {te.metadata(i)["speaker"] for i in range(len(te))} == {"theo"}
    assert "theo" not in {tr.metadata(i)["speaker"] for i in range(len(tr))}
    with pytest.raises(ValueError, match="holdout_speaker 'bob' unknown.*jackson"):
        make("fsdd", "train", holdout_speaker="bob")
    with pytest.raises(ValueError, match="split 'dev' unknown"):
        make("fsdd", "dev")


def test_slurp_text_split_and_word_spans():
    parts = {s: make("slurp_text", s) for s in ("train", "dev", "test")}
    ids = [{p.metadata(i)["id"] for i in range(len(p))} for p in parts.values()]
    assert sum(map(len, ids)) == 2033 and not (ids[0] & ids[1] or ids[0] & ids[2] or
                                               ids[1] & ids[2])
    assert 0.75 < len(parts["train"]) / 2033 < 0.85
    assert [len(p) for p in parts.values()] == [len(make("slurp_text", s)) for s in parts]
    src = make("slurp_text", "all")
    by_id = {src.metadata(i)["id"]: src.metadata(i) for i in range(len(src))}
    m = by_id["slurp/13804"]  # "siri what is one [american dollar] in [japanese yen]"
    assert m["text"] == "siri what is one american dollar in japanese yen"
    assert m["entities"] == [{"type": "currency_name", "start": 4, "end": 6},
                             {"type": "currency_name", "start": 7, "end": 9}]
    assert m["intent"] == "qa_currency" and m["meta"]["scenario"] == "qa"
    assert src[0]["audio"] is None
    # every entity's words equal the bracketed words of sentence_annotation (independent check),
    # where the annotation spells the sentence the same way (all but a few lines)
    checked = 0
    for line in (paths.data_dir() / "slurp/devel.jsonl").read_text().splitlines():
        d = json.loads(line)
        plain = re.sub(r"\[[^\]:]+? : ([^\]]*)\]", r"\1", d["sentence_annotation"])
        if plain.lower().split() != d["sentence"].lower().split():
            continue
        checked += 1
        want = [w.lower().split() for w in re.findall(r"\[[^\]:]+? : ([^\]]*)\]",
                                                      d["sentence_annotation"])]
        got = by_id[f"slurp/{d['slurp_id']}"]
        words = got["text"].split()
        spans = [[w.rstrip(",") for w in words[e["start"]:e["end"]]] for e in got["entities"]]
        assert spans == want, d["sentence"]  # "[person : robert], ..." -> the word "robert,"
    assert checked > 2000
    # "grassmarket" (one token, one annotated word) is "grass market" in the sentence
    m = next(x for x in by_id.values() if x["text"] == "find my thai takeaways around grass market")
    assert {"type": "place_name", "start": 5, "end": 7} in m["entities"]


def test_token_to_word_alignment():
    assert token_to_word(["what", "'s", "up"], ["what's", "up"]) == [(0, 0), (0, 0), (1, 1)]
    assert token_to_word(["around", "grassmarket"], ["around", "grass", "market"]) == [
        (0, 0), (1, 2)]
    assert token_to_word(["Barack", "obaba"], ["barack", "obama"]) == [(0, 0), (1, 1)]


def test_clinc150():
    data = json.loads((paths.data_dir() / "clinc150/data_full.json").read_text())
    tr = make("clinc150", "train")
    assert len(tr) == len(data["train"]) == 15000
    m = tr.metadata(0)
    assert (m["text"], m["intent"]) == tuple(data["train"][0])
    domains = json.loads((paths.data_dir() / "clinc150/domains.json").read_text())
    assert m["intent"] in domains[m["meta"]["domain"]]
    both = make("clinc150", "test+oos_test")
    assert len(both) == 5500
    assert both.metadata(5499)["intent"] == "oos" and both.metadata(5499)["meta"]["domain"] == "oos"
    with pytest.raises(ValueError, match="split 'dev' unknown"):
        make("clinc150", "dev")


def _manifest(tmp_path, lines):
    p = tmp_path / "m" / "manifest.jsonl"
    p.parent.mkdir(exist_ok=True)
    p.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return p


def test_manifest_source(tmp_path):
    (tmp_path / "m").mkdir()
    sf.write(str(tmp_path / "m/a.wav"), np.full(80, 1000, np.int16), 16000, subtype="PCM_16")
    line = {"id": "a", "path": "a.wav", "text": "wake me at six", "intent": "alarm_set",
            "entities": [{"type": "time", "start": 3, "end": 4}], "speaker": "s1",
            "accent": "x", "lat": 1.5, "lon": 2.5, "split": "train", "scenario": "alarm"}
    p = _manifest(tmp_path, [line, dict(line, id="b", path="missing.wav", split="test")])
    src = DATASETS.get("manifest").factory("train", path=str(p))
    ex = src[0]
    assert set(ex) == EXAMPLE_KEYS and ex["sample_rate"] == 16000
    np.testing.assert_allclose(ex["audio"], 1000 / 32768, rtol=1e-6)
    assert ex["meta"] == {"accent": "x", "lat": 1.5, "lon": 2.5, "scenario": "alarm"}
    test = DATASETS.get("manifest").factory("test", path=str(p))
    with pytest.raises(ExampleReadError, match=r"example 'b'.*missing\.wav"):
        test[0]
    with pytest.raises(ValueError, match=r"no examples in split 'val'.*'test', 'train'"):
        DATASETS.get("manifest").factory("val", path=str(p))
    bad = _manifest(tmp_path, [{"id": "c", "text": "x"}])
    with pytest.raises(ValueError, match=r"line 1 lacks \['path'\]"):
        DATASETS.get("manifest").factory("all", path=str(bad))
    span = _manifest(tmp_path, [dict(line, entities=[{"type": "t", "start": 2, "end": 9}])])
    with pytest.raises(ValueError, match="not a word span"):
        DATASETS.get("manifest").factory("all", path=str(span))


def test_spoken_slurp_builds_once_then_reads_cache(tmp_path):
    calls = []

    def fake_build(out_dir, num_speakers, utterances, seed):
        calls.append((num_speakers, utterances, seed))
        out_dir.mkdir(parents=True)
        sf.write(str(out_dir / "x.wav"), np.zeros(160, np.int16), 16000, subtype="PCM_16")
        lines = [{"id": f"u{k}", "path": "x.wav", "text": "hi there", "intent": "greet",
                  "entities": [], "speaker": f"s{k}", "accent": "a", "lat": 0.0, "lon": 0.0,
                  "split": "train" if k else "test", "slurp_id": k, "num_samples": 160}
                 for k in range(3)]
        (out_dir / "manifest.jsonl").write_text("\n".join(map(json.dumps, lines)))
        return out_dir / "manifest.jsonl"

    opts = dict(num_speakers=2, utterances=3, seed=1, cache_dir=str(tmp_path), build=fake_build)
    tr = make("spoken_slurp", "train", **opts)
    te = make("spoken_slurp", "test", **opts)
    assert calls == [(2, 3, 1)] and len(tr) == 2 and len(te) == 1
    assert tr.metadata(0)["meta"]["accent"] == "a" and "lat" in tr.metadata(0)["meta"]
    assert len(list(tmp_path.glob("spoken_slurp-*"))) == 1
    make("spoken_slurp", "train", **dict(opts, seed=2))  # other parameters -> another folder
    assert len(calls) == 2 and len(list(tmp_path.glob("spoken_slurp-*"))) == 2


# ---------------------------------------------------------------------------------------------
# Vocabularies
# ---------------------------------------------------------------------------------------------


def test_vocabularies_from_source_save_load(tmp_path, caplog):
    src = make("slurp_text", "train")
    v = Vocabularies.from_source(src)
    types = {e["type"] for i in range(len(src)) for e in src.metadata(i)["entities"]}
    assert v.tags[0] == "O" and len(v.tags) == 1 + 2 * len(types)
    assert v.tags[1:3] == [f"B-{sorted(types)[0]}", f"I-{sorted(types)[0]}"]
    assert v.intents == sorted({src.metadata(i)["intent"] for i in range(len(src))})
    v.save(tmp_path / "labels.json")
    assert Vocabularies.load(tmp_path / "labels.json") == v
    assert v.intent_id(None) == -1 and v.intent_id(v.intents[3]) == 3
    assert v.intent_id("no_such_intent") == -1 and v.intent_id("no_such_intent") == -1
    assert v.unknown["intent:no_such_intent"] == 2 and "no_such_intent" in caplog.text
    fsdd = Vocabularies.from_source(make("fsdd", "test"))
    assert fsdd.speakers == ["george", "jackson", "nicolas", "theo", "yweweler"]
    assert fsdd.intents == [str(d) for d in range(10)] and fsdd.tags == ["O"]
    with pytest.raises(FileNotFoundError, match="labels.json"):
        Vocabularies.load(tmp_path / "nope" / "labels.json")


def test_tag_ids_by_hand():
    v = Vocabularies(["x"], ["O", "B-date", "I-date", "B-time", "I-time"], [])
    # words: wake(0) me(1) at(2) six(3) am(4) tomorrow(5); tokens: "six" split into 2 pieces
    word_of_token = [0, 1, 2, 3, 3, 4, 5]
    ents = [{"type": "time", "start": 3, "end": 5}, {"type": "date", "start": 5, "end": 6}]
    tags = v.tag_ids(ents, word_of_token, 7)
    assert [v.tags[t] for t in tags] == ["O", "O", "O", "B-time", "I-time", "I-time", "B-date"]
    words = "wake me at six am tomorrow".split()
    assert v.decode_tags(tags, word_of_token, words) == ents
    # padding (-1) reads as O; an I- with no open entity starts one (conlleval)
    assert v.decode_tags([-1, 2, 0], [0, 1, 2], ["a", "b", "c"]) == [
        {"type": "date", "start": 1, "end": 2}]
    with pytest.raises(ValueError, match="word_of_token has 2 entries for 3 tokens"):
        v.tag_ids([], [0, 1], 3)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_decode_tags_inverts_tag_ids(data):
    n_words = data.draw(st.integers(1, 8))
    pieces = data.draw(st.lists(st.integers(1, 3), min_size=n_words, max_size=n_words))
    word_of_token = [w for w, k in enumerate(pieces) for _ in range(k)]
    # non-overlapping entities over sorted cut points
    cuts = sorted(data.draw(st.sets(st.integers(0, n_words), max_size=6)))
    ents = [{"type": data.draw(st.sampled_from(["a", "b"])), "start": s, "end": e}
            for s, e in zip(cuts[::2], cuts[1::2]) if e > s]
    v = Vocabularies([], ["O", "B-a", "I-a", "B-b", "I-b"], [])
    tags = v.tag_ids(ents, word_of_token, len(word_of_token))
    assert v.decode_tags(tags, word_of_token, ["w"] * n_words) == ents


def test_slurp_entities_agree_with_corpus_module():
    """Independent implementation: jaxslu.audio.corpus converts the same token spans for the
    spoken corpus; wherever both give the same text, the word spans must agree."""
    from jaxslu.audio.corpus import load_slurp_devel

    theirs = {r["slurp_id"]: r for r in load_slurp_devel()}
    src = make("slurp_text", "all")
    compared = 0
    for i in range(len(src)):
        m = src.metadata(i)
        o = theirs[m["meta"]["slurp_id"]]
        if o["text"] == m["text"]:
            compared += 1
            assert o["entities"] == m["entities"], m["text"]
    assert compared > 1900


def test_spoken_slurp_real_build(tmp_path):
    opts = dict(num_speakers=2, utterances=4, seed=0, cache_dir=str(tmp_path))
    src = make("spoken_slurp", "all", **opts)
    assert len(src) == 4
    ex = src[0]
    assert set(ex) == EXAMPLE_KEYS and ex["audio"].ndim == 1 and ex["sample_rate"] > 0
    assert {"accent", "lat", "lon"} <= set(ex["meta"]) and ex["speaker"]
    manifest = next(tmp_path.glob("spoken_slurp-*/manifest.jsonl"))
    stamp = manifest.stat().st_mtime_ns
    assert len(make("spoken_slurp", "all", **opts)) == 4
    assert manifest.stat().st_mtime_ns == stamp  # served from the cache, not rebuilt
