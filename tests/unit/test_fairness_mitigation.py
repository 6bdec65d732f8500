"""Fairness mitigations: the `ewc` term and its Fisher, oversampling in the data pipeline, and
cohort membership as a model input.

References are independent: the EWC value and gradient against the formula evaluated in numpy
(float64), the per-example Fisher against a python loop of single-example gradients, the
oversampling counts against their definition. Tolerances: float32 sums (rtol 1e-5)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxslu.config import DataConfig, FrontendConfig
from jaxslu.data.pipeline import make_batches, oversample_indices
from jaxslu.data.sources import ExampleSource
from jaxslu.fairness.ewc import ewc, per_example_grad_squares, read_fisher, write_fisher
from jaxslu.layers.core import param
from jaxslu.losses.base import build_objective
from jaxslu.models.transducer import EncoderConfig, PredictorConfig, Transducer, TransducerConfig
from jaxslu.registry import LOSSES
from jaxslu.slu.task import CohortOf
from jaxslu.train.warm_start import flat_params


# ---- ewc ------------------------------------------------------------------------------------

class _Toy(nnx.Module):
    def __init__(self, rngs):
        self.w = param(rngs, nnx.initializers.normal(1.0), (3, 2), (None, None))
        self.b = param(rngs, nnx.initializers.normal(1.0), (2,), (None,))

    def __call__(self, batch, *, train=False, rngs=None):
        return {"y": batch["x"] @ self.w[...] + self.b[...]}


def _toy_params(seed=0):
    model = _Toy(nnx.Rngs(seed))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, params, rest


def _fisher_file(tmp_path, params, seed=1, scale=1.0):
    rng = np.random.default_rng(seed)
    table = {k: (scale * rng.random(np.shape(v))).astype(np.float32)
             for k, v in flat_params(params).items()}
    return write_fisher(tmp_path / "fisher.npz", table, 17), table


@pytest.mark.parametrize("normalize", ["none", "mean"])
def test_ewc_zero_at_anchor_and_gradient_is_fisher_times_offset(tmp_path, normalize):
    _, params, _ = _toy_params()
    path, table = _fisher_file(tmp_path, params)
    term = ewc(fisher=str(path), normalize=normalize)
    consts = {"ewc": term.init_constants(params)}
    value, _ = term({}, {"constants": consts}, params)
    assert float(value) == 0.0
    moved = jax.tree.map(lambda x: x + 0.3 * jnp.arange(x.size, dtype=x.dtype).reshape(x.shape)
                         / x.size, params)
    value, _ = term({}, {"constants": consts}, moved)
    grads = jax.grad(lambda p: term({}, {"constants": consts}, p)[0])(moved)
    mean = np.mean(np.concatenate([t.ravel() for t in table.values()]).astype(np.float64))
    scale = 1.0 / mean if normalize == "mean" else 1.0
    want, fp, fm = 0.0, flat_params(params), flat_params(moved)
    for k, f in table.items():
        d = np.asarray(fm[k], np.float64) - np.asarray(fp[k], np.float64)
        want += 0.5 * np.sum(scale * f * d * d)
        np.testing.assert_allclose(np.asarray(flat_params(grads)[k]), scale * f * d, rtol=1e-5,
                                   atol=1e-7)
    np.testing.assert_allclose(float(value), want, rtol=1e-5)


def test_ewc_in_an_objective_line_weights_by_lambda(tmp_path):
    _, params, _ = _toy_params()
    path, _ = _fisher_file(tmp_path, params)
    obj1 = build_objective("1.0*ewc", {"ewc": {"fisher": str(path), "normalize": "none"}})
    obj2 = build_objective("250*ewc", {"ewc": {"fisher": str(path), "normalize": "none"}})
    consts = obj1.init_constants(params)
    moved = jax.tree.map(lambda x: x + 0.1, params)
    v1, _ = obj1({}, {"constants": consts}, moved)
    v2, _ = obj2({}, {"constants": consts}, moved)
    np.testing.assert_allclose(float(v2), 250 * float(v1), rtol=1e-6)


def test_ewc_errors_name_what_to_do(tmp_path):
    _, params, _ = _toy_params()
    with pytest.raises(ValueError, match="jaxslu fisher"):
        ewc()
    with pytest.raises(FileNotFoundError, match="jaxslu fisher --workdir"):
        ewc(fisher=str(tmp_path / "nope.npz")).init_constants(params)
    write_fisher(tmp_path / "other.npz", {"something/else": np.ones(3, np.float32)}, 1)
    with pytest.raises(ValueError, match="none of the model's parameters"):
        ewc(fisher=str(tmp_path / "other.npz")).init_constants(params)
    write_fisher(tmp_path / "shape.npz", {"w": np.ones((2, 3), np.float32)}, 1)
    with pytest.raises(ValueError, match="another model"):
        ewc(fisher=str(tmp_path / "shape.npz")).init_constants(params)
    write_fisher(tmp_path / "neg.npz", {"w": -np.ones((3, 2), np.float32)}, 1)
    with pytest.raises(ValueError, match="negative or non-finite"):
        read_fisher(tmp_path / "neg.npz")


@LOSSES.register("_toy_sq")
def _toy_sq():
    def term(batch, outputs, params):
        per = jnp.sum((outputs["y"] - batch["t"]) ** 2, -1)
        w = batch["weight"]
        return jnp.sum(per * w) / jnp.maximum(jnp.sum(w), 1.0), {}
    return term


def test_per_example_fisher_matches_a_loop_of_single_example_gradients():
    graphdef, params, rest = _toy_params()
    objective = build_objective("_toy_sq")
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(5, 3)).astype(np.float32),
             "t": rng.normal(size=(5, 2)).astype(np.float32),
             "weight": np.array([1, 1, 1, 1, 0], np.float32)}  # the last row is padding
    sq, n = jax.jit(lambda p, b: per_example_grad_squares(graphdef, rest, objective, p, b))(
        params, batch)
    assert int(n) == 4
    want = None
    for i in range(4):
        one = {k: v[i:i + 1] for k, v in batch.items()}

        def loss(p):
            y = nnx.merge(graphdef, p, rest)(one)["y"]
            return jnp.sum((y - one["t"]) ** 2)

        g = jax.tree.map(lambda x: np.asarray(x, np.float64) ** 2, jax.grad(loss)(params))
        want = g if want is None else jax.tree.map(np.add, want, g)
    for k, v in flat_params(want).items():
        np.testing.assert_allclose(np.asarray(flat_params(sq)[k]), v, rtol=1e-5, atol=1e-6)


# ---- oversampling ---------------------------------------------------------------------------

def _source(n=40):
    recs = [{"id": f"u{i}", "text": "a b", "intent": None, "entities": [],
             "speaker": f"s{i % 4}", "meta": {"accent": "x" if i % 4 == 0 else "y"}}
            for i in range(n)]
    return ExampleSource("toy", "train", recs, sample_rate=16000)


def test_oversample_counts_follow_the_weights_and_are_deterministic():
    src = _source()
    order = oversample_indices(src, {"key": "accent", "weights": {"x": 3.0}}, seed=0)
    counts = np.bincount(order, minlength=len(src))
    assert all(counts[i] == (3 if i % 4 == 0 else 1) for i in range(len(src)))
    only = oversample_indices(src, {"key": "speaker", "weights": {"s1": 1}, "default": 0}, 0)
    assert sorted(set(only)) == [i for i in range(len(src)) if i % 4 == 1]
    frac = oversample_indices(src, {"key": "accent", "weights": {"x": 2.5}}, seed=3)
    again = oversample_indices(src, {"key": "accent", "weights": {"x": 2.5}}, seed=3)
    assert frac == again
    c = np.bincount(frac, minlength=len(src))[::4]
    assert set(c.tolist()) <= {2, 3} and 2 in c and 3 in c  # stochastic rounding of 2.5


def test_oversample_errors():
    src = _source()
    with pytest.raises(ValueError, match="is in no example"):
        oversample_indices(src, {"key": "colour", "weights": {}}, 0)
    with pytest.raises(ValueError, match="finite number >= 0"):
        oversample_indices(src, {"key": "accent", "weights": {"x": -1}}, 0)
    with pytest.raises(ValueError, match="nothing is left"):
        oversample_indices(src, {"key": "accent", "weights": {}, "default": 0}, 0)
    with pytest.raises(ValueError, match="unknown keys"):
        oversample_indices(src, {"key": "accent", "weight": {}}, 0)


def test_oversampled_stream_resumes_exactly():
    src = _source()
    cfg = DataConfig(batch_size=4, num_threads=1, prefetch=1,
                     sample_weights={"key": "accent", "weights": {"x": 4.0}})
    prepare = lambda i: {"index": int(i)}
    collate = lambda rows, b: {"index": np.array([r["index"] for r in rows] + [-1] * (b - len(rows)))}
    batches = make_batches(src, prepare=prepare, collate=collate, data_cfg=cfg, train=True, seed=5)
    it = iter(batches)
    seen = [next(it)["index"] for _ in range(30)]
    flat = np.concatenate(seen)
    share = np.mean(flat % 4 == 0)
    assert 0.45 < share < 0.75  # 4x weight on a quarter of the data: 4/7 of the stream
    it = iter(batches)
    for _ in range(7):
        next(it)
    state = it.get_state()
    rest = [next(it)["index"] for _ in range(5)]
    it2 = iter(batches)
    it2.set_state(state)
    for a, b in zip(rest, [next(it2)["index"] for _ in range(5)]):
        np.testing.assert_array_equal(a, b)


# ---- cohort input ---------------------------------------------------------------------------

def test_cohort_of_regions_and_keys():
    by_box = CohortOf({"regions": [[50.0, 60.0, -10.0, 0.0], [0.0, 90.0, -180.0, 180.0]]})
    assert by_box({"meta": {"lat": 55.0, "lon": -3.0}}) == 0
    assert by_box({"meta": {"lat": 40.0, "lon": -74.0}}) == 1
    assert by_box({"meta": {"lat": -30.0, "lon": 10.0}}) == -1
    with pytest.raises(ValueError, match="no lat/lon"):
        by_box({"id": "u1", "meta": {}})
    by_key = CohortOf({"key": "accent", "values": {"scottish": 0, "caribbean": 1}})
    assert by_key.size == 2
    assert by_key({"meta": {"accent": "caribbean"}}) == 1 and by_key({"meta": {}}) == -1
    with pytest.raises(ValueError, match="lo < hi"):
        CohortOf({"regions": [[1.0, 0.0, 0.0, 1.0]]})


def _tiny_transducer(num_cohorts):
    cfg = TransducerConfig(encoder=EncoderConfig(kind="conformer", num_layers=1, dim=16, heads=2,
                                                 conv_kernel=3),
                           predictor=PredictorConfig(embed_dim=8, hidden=16, layers=1),
                           joint_dim=16, num_cohorts=num_cohorts)
    return Transducer(cfg, frontend_cfg=FrontendConfig(num_mels=16), vocab_size=8,
                      rngs=nnx.Rngs(0))


def test_cohort_embedding_starts_at_zero_and_only_moves_the_used_cohorts():
    rng = np.random.default_rng(0)
    audio = jnp.asarray(rng.normal(size=(3, 4000)).astype(np.float32) * 0.1)
    lengths = jnp.asarray([4000, 3000, 2000], jnp.int32)
    base, with_c = _tiny_transducer(0), _tiny_transducer(3)
    cohort = jnp.asarray([2, -1, 0], jnp.int32)
    e0, _ = base.encode(audio, lengths)
    e1, _ = with_c.encode(audio, lengths, cohort=cohort)
    np.testing.assert_allclose(np.asarray(e0), np.asarray(e1), atol=1e-6)  # zero init
    with pytest.raises(ValueError, match="needs `cohort`"):
        with_c.encode(audio, lengths)

    graphdef, params, rest = nnx.split(with_c, nnx.Param, ...)

    def f(p):
        return jnp.sum(nnx.merge(graphdef, p, rest).encode(audio, lengths, cohort=cohort)[0] ** 2)

    g = np.asarray(jax.grad(f)(params)["cohort_embed"]["embedding"][...])
    assert np.abs(g[0]).sum() > 0 and np.abs(g[2]).sum() > 0  # cohorts 0 and 2 are used
    assert np.abs(g[1]).sum() == 0  # cohort 1 is not; the -1 row adds nothing
    # not a constant vector: the encoder's LayerNorms remove a per-frame constant
    with_c.cohort_embed.embedding.value = jnp.sin(jnp.arange(48.0)).reshape(3, 16)
    e2, _ = with_c.encode(audio, lengths, cohort=cohort)
    np.testing.assert_allclose(np.asarray(e2[1]), np.asarray(e0[1]), atol=1e-6)  # -1: unchanged
    assert not np.allclose(np.asarray(e2[0]), np.asarray(e0[0]), atol=1e-3)
