"""The jitted train step: model-agnostic, objective-agnostic, sharding-explicit.

    step(state, batch) -> (state, metrics)

The model comes back from (graphdef, params) with `nnx.merge`; its outputs and the
`nnx.Intermediate`s its layers recorded go to the objective (a weighted sum of loss terms). An
update whose loss or gradient is not finite is not applied: the state comes back unchanged and
`metrics["finite"] == 0`, and the loop decides (stop or skip, `train.on_nan`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from jaxslu.config import ExperimentConfig
from jaxslu.losses.base import Objective
from jaxslu.parallel import mesh as mesh_lib
from jaxslu.train.state import (ModelSizes, TrainState, build_model, init_train_state,
                                learning_rate_schedule, make_optimizer, split_model)


def forward(graphdef, params, rest, batch, *, train: bool, key=None):
    """Run the model on a batch; returns its outputs with the recorded intermediates."""
    model = nnx.merge(graphdef, params, rest)
    rngs = nnx.Rngs(dropout=key, augment=jax.random.fold_in(key, 1)) if key is not None else None
    outputs = dict(model(batch, train=train, rngs=rngs))
    outputs["intermediates"] = nnx.pop(model, nnx.Intermediate)
    return outputs


def make_loss_and_grads(graphdef, rest, objective: Objective) -> Callable:
    """(state, batch) -> ((loss, metrics), grads): the objective and its gradient at state.params,
    with the step's dropout/augmentation key derived from (state.rng, state.step)."""

    def loss_and_grads(state: TrainState, batch: dict[str, jax.Array]):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

        def loss_fn(params):
            outputs = forward(graphdef, params, rest, batch, train=True, key=key)
            return objective(batch, outputs, params)

        return jax.value_and_grad(loss_fn, has_aux=True)(state.params)

    return loss_and_grads


def make_train_step(graphdef, rest, objective: Objective,
                    optimizer: optax.GradientTransformation) -> Callable:
    loss_and_grads = make_loss_and_grads(graphdef, rest, objective)

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        (loss, metrics), grads = loss_and_grads(state, batch)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt_state = optimizer.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        new_state = TrainState(step=state.step + finite.astype(jnp.int32),
                               params=keep(new_params, state.params),
                               opt_state=keep(new_opt_state, state.opt_state), rng=state.rng)
        metrics = dict(metrics)
        metrics["grad_norm"] = grad_norm
        metrics["finite"] = finite.astype(jnp.float32)
        metrics["input_finite"] = jnp.isfinite(batch["audio"]).all().astype(jnp.float32)
        return new_state, metrics

    return train_step


@dataclasses.dataclass
class Trainer:
    """Everything compiled for one experiment on one mesh: model structure, shardings, steps."""

    cfg: ExperimentConfig
    sizes: ModelSizes
    mesh: Mesh
    graphdef: Any
    rest: Any
    objective: Objective
    optimizer: optax.GradientTransformation
    state_shardings: Any
    batch_sharding: NamedSharding
    train_step: Callable  # jitted, donates the state
    loss_and_grads: Callable  # jitted (state, batch) -> ((loss, metrics), grads); no update
    abstract_state: Any
    schedule: Callable[[int], Any]  # learning rate at a step
    frames_fn: Callable[[int], int] | None  # audio samples -> encoder frames (data length checks)

    @classmethod
    def create(cls, cfg: ExperimentConfig, sizes: ModelSizes, mesh: Mesh,
               objective: Objective, total_steps: int | None = None) -> "Trainer":
        total_steps = total_steps or cfg.train.steps
        optimizer = make_optimizer(cfg.optim, total_steps)
        schedule = learning_rate_schedule(cfg.optim, total_steps)
        abstract_model = nnx.eval_shape(lambda: build_model(cfg, sizes))
        graphdef, abstract_params, rest = split_model(abstract_model)
        if jax.tree.leaves(rest):
            raise TypeError("the model holds state other than nnx.Param (e.g. BatchNorm statistics "
                            f"or stored RNG streams): {jax.tree.map(jnp.shape, rest)}; keep "
                            "randomness in the rngs passed to __call__ and use LayerNorm")
        param_shardings = mesh_lib.state_shardings(abstract_params, mesh, cfg.mesh.rules)

        def init():
            model = build_model(cfg, sizes)
            _, params, _ = split_model(model)
            return init_train_state(params, optimizer, cfg.seed)

        abstract_state = jax.eval_shape(init)
        replicated = mesh_lib.replicated(mesh)
        # Optimizer moments follow their parameters' shardings (matched by tree structure).
        opt_shardings = _opt_state_shardings(optimizer, abstract_state.opt_state,
                                             param_shardings, replicated)
        state_shardings = TrainState(step=replicated, params=param_shardings,
                                     opt_state=opt_shardings, rng=replicated)
        batch_sharding = mesh_lib.batch_sharding(mesh)
        step_fn = make_train_step(graphdef, rest, objective, optimizer)
        train_step = jax.jit(step_fn, in_shardings=(state_shardings, batch_sharding),
                             out_shardings=(state_shardings, replicated), donate_argnums=(0,))
        grads_fn = jax.jit(make_loss_and_grads(graphdef, rest, objective),
                           in_shardings=(state_shardings, batch_sharding),
                           out_shardings=((replicated, replicated), param_shardings))
        trainer = cls(cfg=cfg, sizes=sizes, mesh=mesh, graphdef=graphdef, rest=rest,
                      objective=objective, optimizer=optimizer, state_shardings=state_shardings,
                      batch_sharding=batch_sharding, train_step=train_step,
                      loss_and_grads=grads_fn,
                      abstract_state=abstract_state, schedule=schedule,
                      frames_fn=getattr(abstract_model, "output_frames", None))
        trainer._init = jax.jit(init, out_shardings=state_shardings)
        return trainer

    def init_state(self) -> TrainState:
        return self._init()

    def abstract_sharded_state(self) -> TrainState:
        """ShapeDtypeStructs with shardings: the target orbax restores onto."""
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            self.abstract_state, self.state_shardings)

    def model(self, state: TrainState) -> nnx.Module:
        return nnx.merge(self.graphdef, state.params, self.rest)


def _opt_state_shardings(optimizer, opt_state, param_shardings, default):
    """Shard optimizer leaves like the parameter they mirror (Adam moments); the rest replicated."""
    return optax.tree_map_params(optimizer, lambda _, s: s, opt_state, param_shardings,
                                 transform_non_params=lambda _: default)
