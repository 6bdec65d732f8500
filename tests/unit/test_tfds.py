"""The TFDS builder for bundled FSDD and the TfdsSource adapter.

Prepares the "mini" config (2 speakers x 10 digits x indices 0..6 = 140 recordings) as
array_record into a temporary folder, reads it through TfdsSource -> make_batches and checks
the batches equal, bit for bit, those the "fsdd" source gives for the same examples (both read
the same 16-bit PCM and scale by 1/32768, so equality is exact).
"""
from __future__ import annotations

import numpy as np
import pytest

from jaxslu.config import DataConfig
from jaxslu.data.batch import BATCH_SPEC
from jaxslu.data.labels import Vocabularies
from jaxslu.slu.batching import make_audio_batches as make_batches
from jaxslu.data.sources import FsddSource
from jaxslu.data.tfds_adapter import TfdsSource
from jaxslu.registry import DATASETS

KEYS = dict(speaker_key="speaker", intent_key="label", id_key="id")


class CharTokenizer:
    vocab_size = 27

    def encode_words(self, words):
        ids = [ord(c) - 96 for w in words for c in w]
        return ids, [k for k, w in enumerate(words) for _ in w]


class ById:
    """The fsdd examples with the given ids, in that order (same index space as the TFDS split)."""

    def __init__(self, source, ids):
        pos = {source.metadata(i)["id"]: i for i in range(len(source))}
        self._src, self._idx = source, [pos[x] for x in ids]

    def __len__(self):
        return len(self._idx)

    def __getitem__(self, i):
        return self._src[self._idx[i]]

    def metadata(self, i):
        return self._src.metadata(self._idx[i])

    def text(self, i):
        return self._src.text(self._idx[i])


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    from jaxslu.data.tfds_fsdd import prepare_fsdd_tfds

    return prepare_fsdd_tfds(tmp_path_factory.mktemp("tfds"), "mini")


def test_builder_splits(builder):
    train, test = TfdsSource(builder, "train", **KEYS), TfdsSource(builder, "test", **KEYS)
    assert (len(train), len(test)) == (2 * 10 * 2, 2 * 10 * 5)
    ids = {test.metadata(i)["id"] for i in range(len(test))}
    assert all(int(x.split("_")[2]) < 5 for x in ids)
    assert {x.split("_")[1] for x in ids} == {"george", "jackson"}
    ex = test[0]
    assert ex["sample_rate"] == 8000 and ex["audio"].dtype == np.float32
    assert ex["intent"] == ex["id"][0] and ex["speaker"] == ex["id"].split("_")[1]


@pytest.mark.parametrize("split", ["train", "test"])
def test_tfds_batches_equal_fsdd_batches(builder, split):
    tf_src = TfdsSource(builder, split, **KEYS)
    ids = [tf_src.metadata(i)["id"] for i in range(len(tf_src))]
    fs_src = ById(FsddSource(split), ids)
    for i in range(0, len(ids), 17):
        assert tf_src.metadata(i) | {"meta": {}} == fs_src.metadata(i) | {"meta": {}}
    vocab = Vocabularies.from_source(fs_src)
    assert Vocabularies.from_source(tf_src) == vocab
    cfg = DataConfig(batch_size=8, eval_batch_size=16, bucket_seconds=(0.5, 1.0, 2.0),
                     label_buckets=(8,), num_threads=2)
    common = dict(tokenizer=CharTokenizer(), vocab=vocab, data_cfg=cfg, sample_rate=16000,
                  seed=0)
    for train in (False, True):
        a = iter(make_batches(tf_src, train=train, **common))
        b = iter(make_batches(fs_src, train=train, **common))
        for _ in range(3):
            x, y = next(a), next(b)
            for k in BATCH_SPEC:
                np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_registered_tfds_dataset_and_errors(builder, tmp_path):
    src = DATASETS.get("tfds").factory("test", name="jaxslu_fsdd/mini",
                                       data_dir=str(builder.data_dir_root), **KEYS)
    assert len(src) == 100
    with pytest.raises(KeyError, match="intent_key='digit' is not a feature.*'label'"):
        TfdsSource(builder, "test", intent_key="digit")
    with pytest.raises(FileNotFoundError, match="not prepared"):
        DATASETS.get("tfds").factory("test", name="jaxslu_fsdd/mini", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="needs data.options.name"):
        DATASETS.get("tfds").factory("test")
