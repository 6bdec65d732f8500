"""Step variants of the one train loop, on toy problems with known answers:

* parameter groups, one of them *maximizing* the objective (a min-max game) and one frozen;
* frozen constants a loss term reads (anchors of `anchor_l2`), checkpointed with the state;
* nested batches (pairs, a replicated graph leaf) sharded per leaf over 8 devices, finiteness
  checked over every floating leaf.

Toy model: a handful of scalar/vector parameters; the objective is a registered loss term.
Tolerances are on the optimum reached by Adam with a decaying learning rate (1e-2 absolute:
the last steps move by ~lr * 1e-2)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxslu.config import ExperimentConfig, MeshConfig, OptimConfig, TrainConfig
from jaxslu.layers.core import param
from jaxslu.parallel import mesh as mesh_lib
from jaxslu.registry import LOSSES, MODELS, TASKS
from jaxslu.task import Task
from jaxslu.train.checkpoint import Checkpointer
from jaxslu.train.loop import make_trainer

ONE = jax.devices()[:1]


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    name: str = "_toy_game"
    dim: int = 3


def _const(value):
    return lambda key, shape, dtype: jnp.full(shape, value, dtype)


@MODELS.register("_toy_game", config=ToyConfig)
class ToyGame(nnx.Module):
    def __init__(self, cfg: ToyConfig, *, rngs: nnx.Rngs):
        self.player = param(rngs, _const(0.0), (cfg.dim,), (None,))
        self.adversary = param(rngs, _const(0.0), (cfg.dim,), (None,))
        self.fixed = param(rngs, _const(0.5), (cfg.dim,), (None,))

    def __call__(self, batch, *, train=False, rngs=None):
        return {"x": self.player[...], "y": self.adversary[...], "z": self.fixed[...],
                "pair_sum": batch["pair"]["a"].sum() + batch["pair"]["b"].sum(),
                "graph_sum": batch["graph"].sum()}


A = np.array([1.0, -2.0, 0.5], np.float32)
B = np.array([2.0, 1.0, -1.0], np.float32)


@LOSSES.register("_toy_saddle")
def toy_saddle():
    """f(x, y) = |x - a|^2/2 - |y - b|^2/2 + (x - a).(y - b): a saddle at (a, b); descent in x,
    ascent in y converges there (the game's Jacobian has eigenvalues -1 +- i)."""

    def term(batch, outputs, params):
        dx, dy = outputs["x"] - A, outputs["y"] - B
        value = 0.5 * jnp.sum(dx ** 2) - 0.5 * jnp.sum(dy ** 2) + jnp.sum(dx * dy)
        return value + 0.0 * outputs["z"].sum(), {"pair_sum": outputs["pair_sum"],
                                                  "graph_sum": outputs["graph_sum"]}

    return term


@LOSSES.register("_toy_pull")
def toy_pull():
    """|x - a|^2 / 2 (with anchor_l2 at weight lam: optimum (a + lam x0) / (1 + lam))."""

    def term(batch, outputs, params):
        return 0.5 * jnp.sum((outputs["x"] - A) ** 2) + 0.0 * (
            outputs["y"].sum() + outputs["z"].sum()), {}

    return term


@TASKS.register("_toy_task")
class ToyTask(Task):
    pass


def _cfg(loss, groups=(), steps=600, lr=0.05):
    return ExperimentConfig(name="toy", task="_toy_task", model=ToyConfig(), loss=loss,
                            optim=OptimConfig(learning_rate=lr, warmup_steps=0, weight_decay=0.0,
                                              clip_norm=0.0, groups=groups,
                                              end_learning_rate_ratio=0.01),
                            train=TrainConfig(steps=steps), mesh=MeshConfig())


def _batch(mesh, rows=8, poison=False):
    a = np.ones((rows, 3), np.float32)
    if poison:
        a[0, 0] = np.nan
    local = {"pair": {"a": a, "b": 2 * np.ones((rows, 3), np.float32)},
             "graph": np.arange(25, dtype=np.float32).reshape(5, 5),
             "index": np.arange(rows, dtype=np.int32), "weight": np.ones(rows, np.float32)}
    return mesh_lib.to_global_batch(local, mesh, {"graph": "replicated"})


def _train(cfg, steps, devices=ONE, poison_at=None):
    trainer = make_trainer(cfg, {}, devices)
    state = trainer.init_state()
    batch = _batch(trainer.mesh)
    metrics = None
    for i in range(steps):
        b = _batch(trainer.mesh, poison=True) if i == poison_at else batch
        state, metrics = trainer.train_step(state, b)
    return trainer, state, jax.device_get(metrics)


def test_min_max_groups_reach_the_saddle_and_frozen_group_stays():
    groups = ({"name": "adversary", "pattern": "^adversary", "maximize": True},
              {"name": "fixed", "pattern": "^fixed", "frozen": True})
    _, state, metrics = _train(_cfg("_toy_saddle", groups, steps=1500), 1500)
    x = np.asarray(state.params["player"][...])
    y = np.asarray(state.params["adversary"][...])
    np.testing.assert_allclose(x, A, atol=1e-2)
    np.testing.assert_allclose(y, B, atol=1e-2)
    np.testing.assert_array_equal(np.asarray(state.params["fixed"][...]), 0.5)
    assert metrics["finite"] == 1.0


def test_without_the_maximize_flag_the_adversary_runs_away():
    # Plain descent on y of -|y - b|^2/2 pushes y away from b: the flag is what makes it a game.
    _, state, _ = _train(_cfg("_toy_saddle", steps=200), 200)
    assert np.abs(np.asarray(state.params["adversary"][...]) - B).max() > 1.0


def test_groups_are_checked():
    with pytest.raises(ValueError, match="matches no parameter"):
        make_trainer(_cfg("_toy_pull", ({"name": "g", "pattern": "^nothing"},)), {}, ONE)
    with pytest.raises(ValueError, match="unknown keys"):
        make_trainer(_cfg("_toy_pull", ({"name": "g", "pattern": "^player", "lr": 1},)), {}, ONE)


def test_anchor_constants_give_the_known_optimum_and_are_checkpointed(tmp_path):
    lam = 3.0
    cfg = _cfg(f"_toy_pull + {lam}*anchor_l2", steps=800, lr=0.05)
    cfg = dataclasses.replace(cfg, loss_options={"anchor_l2": {"pattern": "^player"}})
    trainer, state, _ = _train(cfg, 800)
    x0 = np.zeros(3, np.float32)  # the player's initial value: the anchor
    anchors = state.constants["anchor_l2"]
    assert list(anchors) == ["player"]
    np.testing.assert_array_equal(np.asarray(anchors["player"]), x0)
    np.testing.assert_allclose(np.asarray(state.params["player"][...]), (A + lam * x0) / (1 + lam),
                               atol=1e-2)
    # The constants travel with the train state through a checkpoint.
    ck = Checkpointer(tmp_path / "ck", async_save=False)
    ck.save(7, state, {"pos": 1}, {"step": 7})
    restored, data, _ = ck.restore(trainer.abstract_sharded_state())
    ck.close()
    np.testing.assert_array_equal(np.asarray(restored.constants["anchor_l2"]["player"]), x0)
    np.testing.assert_array_equal(np.asarray(restored.params["player"][...]),
                                  np.asarray(state.params["player"][...]))
    assert data == {"pos": 1}


def test_with_constants_follows_new_starting_params():
    cfg = dataclasses.replace(_cfg("_toy_pull + anchor_l2", steps=1),
                              loss_options={"anchor_l2": {"pattern": "^player"}})
    trainer = make_trainer(cfg, {}, ONE)
    state = trainer.init_state()
    params = jax.tree.map(lambda p: p + 1.0, state.params)
    state = trainer.with_constants(dataclasses.replace(state, params=params))
    np.testing.assert_array_equal(np.asarray(state.constants["anchor_l2"]["player"]), 1.0)


@pytest.mark.multidevice
def test_nested_batch_sharded_per_leaf_and_nan_anywhere_is_caught():
    cfg = dataclasses.replace(_cfg("_toy_saddle", steps=3), mesh=MeshConfig(data=-1))
    trainer = make_trainer(cfg, {}, jax.devices())
    batch = _batch(trainer.mesh)
    assert batch["pair"]["a"].sharding.spec == mesh_lib.batch_sharding(trainer.mesh).spec
    assert batch["graph"].sharding.spec == jax.sharding.PartitionSpec()
    assert len(batch["pair"]["a"].addressable_shards) == 8
    state = trainer.init_state()
    state, m = trainer.train_step(state, batch)
    m = jax.device_get(m)
    assert m["_toy_saddle/pair_sum"] == 8 * 3 * 3 and m["_toy_saddle/graph_sum"] == 300
    assert m["input_finite"] == 1.0
    state, m = trainer.train_step(state, _batch(trainer.mesh, poison=True))
    assert jax.device_get(m)["input_finite"] == 0.0
    with pytest.raises(ValueError, match="not divisible"):
        _batch(trainer.mesh, rows=6)
