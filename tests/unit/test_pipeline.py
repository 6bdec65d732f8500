"""The grain pipeline: buckets, epochs, sharding, exact resume, eval padding, bad examples.

Data: a tiny manifest of synthetic 8 kHz WAVs written with soundfile, and a character tokenizer
defined here (ids a..z -> 1..26), so expected tokens/tags are computed independently of the code
under test. Audio is compared exactly at the native rate (integer PCM -> float is exact).
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import soundfile as sf

from jaxslu.config import DataConfig
from jaxslu.data.batch import BATCH_SPEC
from jaxslu.data.labels import Vocabularies
from jaxslu.data.pipeline import DataError
from jaxslu.slu.batching import make_audio_batches as make_batches
from jaxslu.data.sources import ExampleReadError, manifest

SR = 8000


class CharTokenizer:
    """a..z -> 1..26, anything else -> 27; one token per character, no space tokens."""

    vocab_size = 28

    def encode_words(self, words):
        ids, owner = [], []
        for w, word in enumerate(words):
            for c in word:
                ids.append(ord(c) - 96 if "a" <= c <= "z" else 27)
                owner.append(w)
        return ids, owner


WORDS = ["play", "jazz", "in", "the", "kitchen", "now", "set", "alarm", "for", "six"]


def write_corpus(root, n=12, seconds=None, corrupt=()):
    """n examples, i-th has (i % 5 + 1) * 0.1 s of audio and (i % 4 + 1) words."""
    lines = []
    rng = np.random.default_rng(0)
    for i in range(n):
        secs = seconds[i] if seconds is not None else (i % 5 + 1) * 0.1
        pcm = rng.integers(-20000, 20000, size=int(secs * SR), dtype=np.int16)
        path = root / f"u{i}.wav"
        if i in corrupt:
            path.write_bytes(b"RIFF not really a wav file")
        else:
            sf.write(str(path), pcm, SR, subtype="PCM_16")
        words = [WORDS[(i + k) % len(WORDS)] for k in range(i % 4 + 1)]
        ents = [{"type": "thing", "start": 0, "end": 1}] if len(words) > 1 else []
        lines.append({"id": f"u{i}", "path": path.name, "text": " ".join(words),
                      "intent": f"int{i % 3}", "entities": ents, "speaker": f"spk{i % 2}",
                      "split": "train"})
    (root / "manifest.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return root / "manifest.jsonl"


def cfg(**kw):
    base = dict(batch_size=4, eval_batch_size=4, bucket_seconds=(0.25, 0.5, 1.0),
                label_buckets=(8, 16, 32), num_threads=2, prefetch=2)
    base.update(kw)
    return DataConfig(**base)


@pytest.fixture
def corpus(tmp_path):
    src = manifest("train", path=str(write_corpus(tmp_path)))
    return src, Vocabularies.from_source(src)


def batches(src, vocab, n, **kw):
    kw.setdefault("train", True)
    kw.setdefault("seed", 0)
    kw.setdefault("sample_rate", SR)
    data_cfg = kw.pop("data_cfg", cfg())
    it = iter(make_batches(src, tokenizer=CharTokenizer(), vocab=vocab, data_cfg=data_cfg, **kw))
    return [next(it) for _ in range(n)]


def real_indices(bs):
    return [int(i) for b in bs for i, w in zip(b["index"], b["weight"]) if w > 0]


def test_batch_contents_shapes_and_buckets(corpus):
    src, vocab = corpus
    buckets = [int(s * SR) for s in (0.25, 0.5, 1.0)]
    tok = CharTokenizer()
    for b in batches(src, vocab, 6):
        assert {k: (str(v.dtype), v.ndim) for k, v in b.items()} == BATCH_SPEC
        n, u = b["audio"].shape[1], b["tokens"].shape[1]
        longest, longest_u = b["audio_lengths"].max(), b["token_lengths"].max()
        # the smallest bucket that holds the longest row
        assert n in buckets and longest <= n and all(x < longest for x in buckets if x < n)
        assert u in (8, 16, 32) and longest_u <= u and all(x < longest_u for x in (8, 16, 32)
                                                           if x < u)
        for row in range(4):
            i = int(b["index"][row])
            ex = src[i]
            ref = ex["audio"]
            assert b["audio_lengths"][row] == len(ref)
            np.testing.assert_array_equal(b["audio"][row, :len(ref)], ref)
            assert not b["audio"][row, len(ref):].any()
            ids, owner = tok.encode_words(ex["text"].split())
            assert b["token_lengths"][row] == len(ids)
            np.testing.assert_array_equal(b["tokens"][row, :len(ids)], ids)
            assert not b["tokens"][row, len(ids):].any()
            # BIO by hand: entity (if any) covers word 0 -> B on its first char, I on the rest
            want = [0] * len(ids)
            if ex["entities"]:
                want = [(vocab.tags.index("B-thing") if k == 0 else vocab.tags.index("I-thing"))
                        if o == 0 else 0 for k, o in enumerate(owner)]
            np.testing.assert_array_equal(b["slot_tags"][row, :len(ids)], want)
            assert (b["slot_tags"][row, len(ids):] == -1).all()
            assert b["intent"][row] == vocab.intents.index(ex["intent"])
            assert b["speaker"][row] == vocab.speakers.index(ex["speaker"])
            assert b["weight"][row] == 1.0


def test_every_example_once_per_epoch_and_reshuffled(corpus):
    src, vocab = corpus  # 12 examples, batch 4 -> 3 batches per epoch
    idx = real_indices(batches(src, vocab, 9))
    epochs = [idx[0:12], idx[12:24], idx[24:36]]
    for e in epochs:
        assert sorted(e) == list(range(12))
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    # deterministic for a seed, different for another seed
    assert real_indices(batches(src, vocab, 3)) == idx[:12]
    assert real_indices(batches(src, vocab, 3, seed=1)) != idx[:12]


def test_two_process_shards_disjoint_and_cover(corpus):
    src, vocab = corpus  # global batch 4 -> local 2; 6 examples per process per epoch
    shards = [real_indices(batches(src, vocab, 3, process_index=p, process_count=2))
              for p in range(2)]
    assert all(len(s) == 6 for s in shards)
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(12))
    ev = [real_indices(batches(src, vocab, 3, train=False, process_index=p, process_count=2))
          for p in range(2)]
    # Blocks of the local batch size (2): global eval batch k is source rows [4k, 4k+4).
    assert ev[0] == [0, 1, 4, 5, 8, 9] and ev[1] == [2, 3, 6, 7, 10, 11]


def test_exact_resume(corpus):
    src, vocab = corpus
    stream = make_batches(src, tokenizer=CharTokenizer(), vocab=vocab, data_cfg=cfg(),
                          sample_rate=SR, train=True, seed=3)
    it = iter(stream)
    for _ in range(4):  # crosses an epoch boundary after 3
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(5)]
    fresh = iter(make_batches(src, tokenizer=CharTokenizer(), vocab=vocab, data_cfg=cfg(),
                              sample_rate=SR, train=True, seed=3))
    fresh.set_state(state)
    for want in expected:
        got = next(fresh)
        for k in BATCH_SPEC:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    with pytest.raises(ValueError, match="state lacks"):
        fresh.set_state({"grain": state["grain"]})


def test_eval_single_pass_with_weight0_padding(corpus):
    src, vocab = corpus
    data_cfg = cfg(eval_batch_size=5)  # 12 examples -> 5 + 5 + 2 real rows
    stream = make_batches(src, tokenizer=CharTokenizer(), vocab=vocab, data_cfg=data_cfg,
                          sample_rate=SR, train=False, seed=0)
    out = list(stream)
    assert len(out) == len(stream) == 3
    assert real_indices(out) == list(range(12))  # in order, each once
    last = out[-1]
    assert last["audio"].shape[0] == 5
    np.testing.assert_array_equal(last["weight"], [1, 1, 0, 0, 0])
    np.testing.assert_array_equal(last["index"][2:], [-1, -1, -1])
    assert (last["audio_lengths"][2:] >= 1).all() and (last["token_lengths"][2:] == 0).all()
    assert (last["intent"][2:] == -1).all() and (last["slot_tags"][2:] == -1).all()
    # 3 processes: 4 examples each, local batch 1 -> 4 batches on every process
    per = [list(make_batches(src, tokenizer=CharTokenizer(), vocab=vocab,
                             data_cfg=cfg(eval_batch_size=3), sample_rate=SR, train=False,
                             seed=0, process_index=p, process_count=3)) for p in range(3)]
    assert [len(x) for x in per] == [4, 4, 4]
    assert sorted(sum((real_indices(x) for x in per), [])) == list(range(12))


def test_too_long_audio_and_transcript(tmp_path, corpus):
    src, vocab = corpus
    long_audio = cfg(bucket_seconds=(0.25, 0.45))  # examples with 0.5 s audio are too long
    with pytest.raises(DataError, match=r"example 'u4'.*data\.bucket_seconds"):
        batches(src, vocab, 3, train=False, data_cfg=long_audio)
    stream = make_batches(src, tokenizer=CharTokenizer(), vocab=vocab,
                          data_cfg=dataclasses.replace(long_audio, skip_bad_examples=True),
                          sample_rate=SR, train=False, seed=0)
    out = list(stream)
    assert stream.skipped == 2  # u4 and u9 have 0.5 s
    assert real_indices(out) == [i for i in range(12) if i not in (4, 9)]
    # transcripts: u3 has 4 words "play jazz in the" = 13 chars > 12 (u3, u7, u11 too long)
    with pytest.raises(DataError, match=r"example 'u3' has 1\d tokens.*data\.label_buckets"):
        batches(src, vocab, 3, train=False, data_cfg=cfg(label_buckets=(4, 12)))
    # fewer frames than tokens: frames_fn = 1 frame per 100 samples (0.1 s -> 8 frames)
    with pytest.raises(DataError, match=r"example 'u\d+' has \d+ tokens but its \d+ samples "
                                        r"give only \d+ encoder frames"):
        batches(src, vocab, 3, train=False, frames_fn=lambda n: n // 100)
    stream = make_batches(src, tokenizer=CharTokenizer(), vocab=vocab,
                          data_cfg=cfg(skip_bad_examples=True), sample_rate=SR, train=False,
                          seed=0, frames_fn=lambda n: n // 100)
    kept = real_indices(list(stream))
    tok = CharTokenizer()
    want = [i for i in range(12)
            if len(tok.encode_words(src.text(i).split())[0]) <= len(src[i]["audio"]) // 100]
    assert kept == want and stream.skipped == 12 - len(want) > 0


def test_corrupt_wav_names_the_file(tmp_path):
    src = manifest("train", path=str(write_corpus(tmp_path, n=4, corrupt=(2,))))
    vocab = Vocabularies.from_source(src)
    with pytest.raises(ExampleReadError, match=r"example 'u2'.*u2\.wav"):
        src[2]
    with pytest.raises(ExampleReadError, match=r"u2\.wav"):
        batches(src, vocab, 1, train=False)
    stream = make_batches(src, tokenizer=CharTokenizer(), vocab=vocab,
                          data_cfg=cfg(skip_bad_examples=True), sample_rate=SR, train=False,
                          seed=0)
    assert real_indices(list(stream)) == [0, 1, 3] and stream.skipped == 1


def test_resampling_and_config_errors(corpus):
    src, vocab = corpus
    b = batches(src, vocab, 1, train=False, sample_rate=16000)[0]
    for row in range(4):  # 8 kHz -> 16 kHz doubles the length
        assert b["audio_lengths"][row] == 2 * len(src[int(b["index"][row])]["audio"])
    with pytest.raises(ValueError, match="multiple of the process count 3"):
        make_batches(src, tokenizer=CharTokenizer(), vocab=vocab, data_cfg=cfg(), sample_rate=SR,
                     train=True, seed=0, process_count=3)


class _Override:
    """Wraps a source, replacing the audio or sample rate of one example (in-memory sources such
    as TFDS records can carry values a file reader would reject)."""

    def __init__(self, src, index, **fields):
        self.src, self.index, self.fields = src, index, fields

    def __len__(self):
        return len(self.src)

    def __getitem__(self, i):
        ex = dict(self.src[i])
        if i == self.index:
            ex.update(self.fields)
        return ex

    def metadata(self, i):
        return self.src.metadata(i)

    def text(self, i):
        return self.src.text(i)


@pytest.mark.parametrize("fields,match", [
    ({"sample_rate": 800}, r"example 'u5' says its audio is sampled at 800 Hz.*sample_rate"),
    ({"audio": np.full(800, np.nan, np.float32)}, r"example 'u5' has NaN or infinite audio"),
])
def test_wrong_sample_rate_and_nan_audio_are_named(corpus, fields, match):
    src, vocab = corpus
    bad = _Override(src, 5, **fields)
    with pytest.raises(DataError, match=match):
        batches(bad, vocab, 3, train=False)
    stream = make_batches(bad, tokenizer=CharTokenizer(), vocab=vocab,
                          data_cfg=cfg(skip_bad_examples=True), sample_rate=SR, train=False,
                          seed=0)
    assert real_indices(list(stream)) == [i for i in range(12) if i != 5]
    assert stream.skipped == 1
