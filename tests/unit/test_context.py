"""Context as input: the context record's validation and encoding, the ambiguous-request data
(rules, determinism, disjoint phrases), and the NLU model and task with a context input."""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxslu.context import ContextError, ContextSchema, check_context
from jaxslu.context import data as D


def test_check_context_rejects_bad_records_by_field():
    assert check_context(None) == {}
    ok = {"device_states": ["oven_on"], "device_type": "screen", "hour": 23.5,
          "recent_domain": "weather"}
    assert check_context(ok) == ok
    bad = [("not a dict", "JSON object"), ({"colour": "red"}, "unknown context fields"),
           ({"device_states": "oven_on"}, "device_states"),
           ({"device_states": [1]}, "device_states"), ({"device_type": 3}, "device_type"),
           ({"hour": 24}, "hour"), ({"hour": -1}, "hour"), ({"hour": True}, "hour"),
           ({"hour": "7"}, "hour"), ({"recent_domain": ["x"]}, "recent_domain")]
    for ctx, match in bad:
        with pytest.raises(ContextError, match=match):
            check_context(ctx, "example 'x'")
    with pytest.raises(ContextError, match="example 'x'"):
        check_context({"hour": 99}, "example 'x'")


def test_schema_reads_vocabularies_and_encodes_by_hand(tmp_path):
    schema = ContextSchema.from_contexts([
        {"device_states": ["tv_on", "oven_on"], "device_type": "speaker"},
        {"device_states": [], "device_type": "car", "recent_domain": "music", "hour": 3},
        None])
    assert schema.device_states == ("oven_on", "tv_on")
    assert schema.device_types == ("car", "speaker")
    assert schema.recent_domains == ("music",)
    assert schema.dim == 2 + 2 + 1 + 3 == len(schema.feature_names())
    v = schema.encode({"device_states": ["tv_on"], "device_type": "speaker", "hour": 6,
                       "recent_domain": "music"})
    np.testing.assert_allclose(v, [0, 1, 0, 1, 1, 1.0, 0.0, 1], atol=1e-7)  # sin/cos(pi/2)
    midnight = schema.encode({"hour": 0})
    np.testing.assert_allclose(midnight, [0, 0, 0, 0, 0, 0, 1, 1], atol=1e-7)
    np.testing.assert_array_equal(schema.encode({}), np.zeros(schema.dim))
    h = schema.encode({"hour": 21})[-3:]
    np.testing.assert_allclose(h, [math.sin(2 * math.pi * 21 / 24),
                                   math.cos(2 * math.pi * 21 / 24), 1], atol=1e-6)
    # Values the training data never had encode as unknown and are counted.
    v = schema.encode({"device_states": ["kettle_on"], "device_type": "watch"})
    np.testing.assert_array_equal(v, np.zeros(schema.dim))
    assert schema.unknown == {"kettle_on": 1, "watch": 1}
    schema.save(tmp_path / "context.json")
    assert ContextSchema.load(tmp_path / "context.json") == schema


def test_rules_give_the_documented_readings():
    by = {f.name: f for f in D.FAMILIES}
    t = by["temperature"].rule
    assert t({"device_states": ["oven_on"]}) == "iot_oven_query"
    assert t({"device_states": ["tv_on"]}) == "weather_query" == t({})
    stop = by["stop"].rule
    assert stop({"device_states": ["music_playing", "alarm_ringing"]}) == "alarm_remove"
    assert stop({"device_states": ["lights_on", "tv_on"]}) == "iot_tv_off"
    assert stop({}) == "general_commandstop"
    assert by["next"].rule({"recent_domain": "cooking"}) == "cooking_nextstep"
    assert by["next"].rule({"recent_domain": "cooking",
                            "device_states": ["music_playing"]}) == "music_next"
    assert by["follow_up"].rule({"recent_domain": "weather"}) == "weather_query"
    assert by["play"].rule({"device_type": "car"}) == "play_radio"
    assert by["whats_on"].rule({"hour": 8}) == "news_query"
    assert by["whats_on"].rule({"hour": 20}) == "iot_tv_query"
    assert by["whats_on"].rule({"hour": 14}) == "calendar_query" == by["whats_on"].rule({})
    rng = np.random.default_rng(0)
    for f in D.FAMILIES:
        assert len(f.phrases) == 6 and len(set(f.phrases)) == 6
        got = {f.rule(D.random_context(rng)) for _ in range(3000)}
        assert got == set(f.readings), f.name  # every reading reachable, no other
        for intent in f.readings:
            assert f.rule(D.context_for(f, intent, rng)) == intent


def test_dataset_is_deterministic_with_disjoint_phrases():
    a = D.ambiguous_records("test", 5, seed=3, part="ambiguous_test")
    b = D.ambiguous_records("test", 5, seed=3, part="ambiguous_test")
    c = D.ambiguous_records("test", 5, seed=4, part="ambiguous_test")
    assert a == b and a != c
    train = D.ambiguous_records("train", 5, seed=3, part="train")
    assert not {r["text"] for r in train} & {r["text"] for r in a}
    seen = D.ambiguous_records("train", 5, seed=3, part="ambiguous_seen")
    assert {r["text"] for r in seen} == {r["text"] for r in train}
    assert [r["meta"]["context"] for r in seen] != [r["meta"]["context"] for r in train]
    for r in a + train:
        fam = next(f for f in D.FAMILIES if f.name == r["meta"]["family"])
        assert fam.rule(r["meta"]["context"]) == r["intent"]
        assert r["meta"]["domain"] == r["intent"].split("_")[0]
    # Context-blind best answer: each phrase's majority reading, well below 1.
    assert D.majority_baseline(a) < 0.75
    src = D.context_nlu("train", per_phrase=2)
    metas = [src.metadata(i) for i in range(len(src))]
    plain = [m for m in metas if not m["meta"]["ambiguous"]]
    assert plain and all(m["text"] not in D._PHRASES for m in plain)
    assert all(isinstance(m["meta"]["context"], dict) for m in metas)
    with pytest.raises(ValueError, match="split 'nope' unknown"):
        D.context_nlu("nope")
    with pytest.raises(ValueError, match="per_phrase"):
        D.context_nlu("train", per_phrase=0)


def _model(context_dim):
    from jaxslu.nlu.models import JointNLU, NluConfig, TextEncoderConfig

    cfg = NluConfig(encoder=TextEncoderConfig(num_layers=1, dim=16, heads=2, ff_mult=2))
    return JointNLU(cfg, vocab_size=30, num_intents=5, num_domains=3, num_slot_tags=3,
                    context_dim=context_dim, rngs=nnx.Rngs(0))


def test_model_fuses_the_context_into_intent_not_slots():
    model = _model(4)
    rng = np.random.default_rng(0)
    batch = {"tokens": jnp.asarray(rng.integers(1, 30, (2, 6)), jnp.int32),
             "token_lengths": jnp.asarray([6, 4], jnp.int32),
             "context": jnp.zeros((2, 4), jnp.float32)}
    other = dict(batch, context=jnp.asarray(rng.normal(size=(2, 4)), jnp.float32))
    # fuse_out starts at zero: at init the context changes nothing (the text model's output).
    np.testing.assert_allclose(model(batch)["intent_logits"], model(other)["intent_logits"],
                               atol=1e-6)
    model.context.fuse_out.kernel[...] = jnp.asarray(rng.normal(size=(16, 16)), jnp.float32)
    a, b = model(batch), model(other)
    assert np.abs(np.asarray(a["intent_logits"] - b["intent_logits"])).max() > 1e-3
    assert np.abs(np.asarray(a["domain_logits"] - b["domain_logits"])).max() > 1e-3
    np.testing.assert_array_equal(a["slot_logits"], b["slot_logits"])
    np.testing.assert_array_equal(a["embedding"], b["embedding"])
    with pytest.raises(ValueError, match="no 'context'"):
        model({k: v for k, v in batch.items() if k != "context"})
    assert _model(0).context is None


def _task(mode, tmp_path):
    from jaxslu.config import load_config
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "configs" / "context_nlu.py", "tiny",
                      [f"task_options.context={mode}"] if mode != "input" else [])
    from jaxslu.task import get_task

    task = get_task(cfg)
    source = task.open_source("ambiguous_test")
    assets = task.build_assets(task.open_source("train"), tmp_path)
    return task, source, assets


@pytest.mark.parametrize("mode", ["input", "blind"])
def test_task_rows_and_batches_carry_the_context(mode, tmp_path):
    task, source, assets = _task(mode, tmp_path)
    assert task.model_kwargs(assets)["context_dim"] == assets.context.dim > 3
    prepare = task.prepare_fn(source, assets, train=False)
    rows = [prepare(i) for i in range(3)]
    for i, r in enumerate(rows):
        want = assets.context.encode(source.metadata(i)["meta"]["context"])
        np.testing.assert_array_equal(r["context"], want if mode == "input" else 0 * want)
    batch = task.collate(rows, 4)
    assert batch["context"].shape == (4, assets.context.dim)
    np.testing.assert_array_equal(batch["context"][3], 0)  # padding row
    task.save_assets(assets, tmp_path)
    loaded = task.load_assets(tmp_path)
    assert loaded.context == assets.context


def test_task_refuses_a_bad_context_option_and_mismatched_assets(tmp_path):
    from jaxslu.config import load_config
    from pathlib import Path

    from jaxslu.task import get_task

    root = Path(__file__).resolve().parents[2]
    with pytest.raises(ValueError, match="task_options.context"):
        get_task(load_config(root / "configs" / "context_nlu.py", "tiny",
                             ["task_options.context=yes"]))
    task, _, assets = _task("input", tmp_path)
    plain = get_task(load_config(root / "configs" / "slurp_nlu.py", "tiny"))
    with pytest.raises(ValueError, match="fresh workdir"):
        plain.model_kwargs(assets)
    source = task.open_source("ambiguous_test")
    bad = type(source)("bad", "x", [dict(source.metadata(0), meta={"context": {"hour": 30}})])
    with pytest.raises(ContextError, match="example .* of .*hour"):
        task.prepare_fn(bad, assets, train=False)(0)


def test_transducer_intent_head_reads_the_context_and_nothing_else_does():
    """The E2E SLU transducer's context input: at init (fusion output zero) the context changes
    nothing; once the fusion is nonzero it changes the intent logits and only them; decoding
    passes the batch's context to the head; a model with a context input refuses a batch
    without one."""
    from jaxslu.config import FrontendConfig
    from jaxslu.decoding import decode_with_slu
    from jaxslu.models.transducer import (EncoderConfig, PredictorConfig, Transducer,
                                          TransducerConfig)

    cfg = TransducerConfig(encoder=EncoderConfig(kind="conformer", num_layers=1, dim=16, heads=2,
                                                 conv_kernel=3, subsampling=4),
                           predictor=PredictorConfig(embed_dim=8, hidden=16, layers=1),
                           joint_dim=16, intent_head=True)
    model = Transducer(cfg, frontend_cfg=FrontendConfig(num_mels=16), vocab_size=7,
                       num_intents=5, context_dim=4, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    batch = {"audio": jnp.asarray(rng.normal(size=(2, 4000)) * 0.1, jnp.float32),
             "audio_lengths": jnp.asarray([4000, 3000], jnp.int32),
             "tokens": jnp.asarray([[1, 2, 3], [4, 5, 0]], jnp.int32),
             "token_lengths": jnp.asarray([3, 2], jnp.int32),
             "context": jnp.zeros((2, 4), jnp.float32)}
    other = dict(batch, context=jnp.asarray(rng.normal(size=(2, 4)), jnp.float32))
    np.testing.assert_allclose(model(batch)["intent_logits"], model(other)["intent_logits"],
                               atol=1e-6)
    model.intent.context.fuse_out.kernel[...] = jnp.asarray(rng.normal(size=(16, 16)),
                                                            jnp.float32)
    a, b = model(batch), model(other)
    assert np.abs(np.asarray(a["intent_logits"] - b["intent_logits"])).max() > 1e-3
    np.testing.assert_array_equal(a["encoder"], b["encoder"])
    d = decode_with_slu(model, other)
    np.testing.assert_allclose(d["intent_logits"], b["intent_logits"], atol=1e-5)
    with pytest.raises(ValueError, match="no 'context'"):
        model({k: v for k, v in batch.items() if k != "context"})
    with pytest.raises(ValueError, match="context has shape"):
        model(dict(batch, context=jnp.zeros((2, 3), jnp.float32)))


def test_spoken_context_texts_are_the_benchmark():
    """The spoken benchmark's text: a closed intent set (every family reading), the ambiguous
    examples' contexts give their intents by the family's rule, the held-out phrasings never
    appear in training, and the construction is deterministic."""
    from jaxslu.context.data import FAMILIES, TRAIN_PHRASES
    from jaxslu.context.spoken import reading_intents, spoken_context_texts

    texts = spoken_context_texts(per_phrase=10, test_per_phrase=2)
    assert texts == spoken_context_texts(per_phrase=10, test_per_phrase=2)
    intents = set(reading_intents())
    rules = {f.name: f.rule for f in FAMILIES}
    test_phrases = {p for f in FAMILIES for p in f.phrases[TRAIN_PHRASES:]}
    for split, recs in texts.items():
        assert recs and all(r["intent"] in intents for r in recs), split
        for r in recs:
            if r["meta"]["ambiguous"]:
                assert rules[r["meta"]["family"]](r["meta"]["context"]) == r["intent"]
    assert not {r["text"] for r in texts["train"]} & test_phrases
    assert {r["text"] for r in texts["ambiguous_test"]} == test_phrases
    assert sum(r["meta"]["ambiguous"] for r in texts["train"]) == 7 * TRAIN_PHRASES * 10
    assert not any(r["meta"]["ambiguous"] for r in texts["ordinary_test"])
