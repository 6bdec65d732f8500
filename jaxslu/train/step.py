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
from jax.sharding import Mesh

from jaxslu.config import ExperimentConfig
from jaxslu.losses.base import Objective
from jaxslu.parallel import mesh as mesh_lib
from jaxslu.train.state import (TrainState, build_model, init_train_state,
                                learning_rate_schedule, make_optimizer, split_model)


def forward(graphdef, params, rest, batch, *, train: bool, key=None, constants=None):
    """Run the model on a batch; returns its outputs with the recorded intermediates and the
    run's frozen constants (`outputs["constants"]`, what e.g. an EWC term reads)."""
    model = nnx.merge(graphdef, params, rest)
    rngs = nnx.Rngs(dropout=key, augment=jax.random.fold_in(key, 1)) if key is not None else None
    outputs = dict(model(batch, train=train, rngs=rngs))
    outputs["intermediates"] = nnx.pop(model, nnx.Intermediate)
    outputs["constants"] = {} if constants is None else constants
    return outputs


def inputs_finite(batch) -> jax.Array:
    """Whether every floating-point leaf of a (nested) batch is finite."""
    flags = [jnp.isfinite(x).all() for x in jax.tree.leaves(batch)
             if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.bool_(True)


def make_loss_and_grads(graphdef, rest, objective: Objective) -> Callable:
    """(state, batch) -> ((loss, metrics), grads): the objective and its gradient at state.params,
    with the step's dropout/augmentation key derived from (state.rng, state.step)."""

    def loss_and_grads(state: TrainState, batch: dict[str, jax.Array]):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

        def loss_fn(params):
            outputs = forward(graphdef, params, rest, batch, train=True, key=key,
                              constants=jax.lax.stop_gradient(state.constants))
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
                               opt_state=keep(new_opt_state, state.opt_state), rng=state.rng,
                               constants=state.constants)
        metrics = dict(metrics)
        metrics["grad_norm"] = grad_norm
        metrics["finite"] = finite.astype(jnp.float32)
        metrics["input_finite"] = inputs_finite(batch).astype(jnp.float32)
        return new_state, metrics

    return train_step


@dataclasses.dataclass
class Trainer:
    """Everything compiled for one experiment on one mesh: model structure, shardings, steps.

    Knows no task: the model's constructor arguments come from the task (`model_kwargs`), and
    the batch is whatever (nested) dict of global arrays the task's collate produced; the jitted
    steps take its shardings from the arrays (`jaxslu.parallel.mesh.to_global_batch`).
    """

    cfg: ExperimentConfig
    model_kwargs: dict
    mesh: Mesh
    graphdef: Any
    rest: Any
    objective: Objective
    optimizer: optax.GradientTransformation
    state_shardings: Any
    train_step: Callable  # jitted, donates the state
    loss_and_grads: Callable  # jitted (state, batch) -> ((loss, metrics), grads); no update
    abstract_state: Any
    schedule: Callable[[int], Any]  # learning rate at a step
    abstract_model: Any  # the model built under eval_shape (for the task's checks)

    @classmethod
    def create(cls, cfg: ExperimentConfig, model_kwargs: dict, mesh: Mesh, objective: Objective,
               total_steps: int | None = None,
               constants_fn: Callable[[Any], Any] | None = None) -> "Trainer":
        """`constants_fn(params) -> pytree` gives the run's frozen constants (default: those the
        objective's terms declare, see `Objective.init_constants`)."""
        total_steps = total_steps or cfg.train.steps
        schedule = learning_rate_schedule(cfg.optim, total_steps)
        abstract_model = nnx.eval_shape(lambda: build_model(cfg, model_kwargs))
        graphdef, abstract_params, rest = split_model(abstract_model)
        if jax.tree.leaves(rest):
            raise TypeError("the model holds state other than nnx.Param (e.g. BatchNorm statistics "
                            f"or stored RNG streams): {jax.tree.map(jnp.shape, rest)}; keep "
                            "randomness in the rngs passed to __call__ and use LayerNorm")
        optimizer = make_optimizer(cfg.optim, total_steps, abstract_params)
        param_shardings = mesh_lib.state_shardings(abstract_params, mesh, cfg.mesh.rules)
        constants_fn = constants_fn or objective.init_constants

        def init():
            model = build_model(cfg, model_kwargs)
            _, params, _ = split_model(model)
            return init_train_state(params, optimizer, cfg.seed, constants_fn(params))

        abstract_state = jax.eval_shape(init)
        replicated = mesh_lib.replicated(mesh)
        # Optimizer moments follow their parameters' shardings (matched by tree structure).
        opt_shardings = _opt_state_shardings(abstract_state.opt_state,
                                             param_shardings, replicated)
        state_shardings = TrainState(
            step=replicated, params=param_shardings, opt_state=opt_shardings, rng=replicated,
            constants=jax.tree.map(lambda _: replicated, abstract_state.constants))
        step_fn = make_train_step(graphdef, rest, objective, optimizer)
        # The state arrives with its shardings (init/restore place it), the batch with those
        # to_global_batch gave it: no in_shardings, so any nested batch layout works.
        train_step = jax.jit(step_fn, out_shardings=(state_shardings, replicated),
                             donate_argnums=(0,))
        grads_fn = jax.jit(make_loss_and_grads(graphdef, rest, objective),
                           out_shardings=((replicated, replicated), param_shardings))
        trainer = cls(cfg=cfg, model_kwargs=dict(model_kwargs), mesh=mesh, graphdef=graphdef,
                      rest=rest, objective=objective, optimizer=optimizer,
                      state_shardings=state_shardings, train_step=train_step,
                      loss_and_grads=grads_fn, abstract_state=abstract_state, schedule=schedule,
                      abstract_model=abstract_model)
        trainer._init = jax.jit(init, out_shardings=state_shardings)
        trainer._constants = jax.jit(constants_fn, out_shardings=state_shardings.constants)
        return trainer

    def init_state(self) -> TrainState:
        return self._init()

    def with_constants(self, state: TrainState) -> TrainState:
        """Recompute the constants from the state's parameters (after a warm start or a
        pretrained encoder replaced the initial ones, e.g. the anchors of an L2-SP term)."""
        return dataclasses.replace(state, constants=self._constants(state.params))

    def abstract_sharded_state(self) -> TrainState:
        """ShapeDtypeStructs with shardings: the target orbax restores onto."""
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            self.abstract_state, self.state_shardings)

    def model(self, state: TrainState) -> nnx.Module:
        return nnx.merge(self.graphdef, state.params, self.rest)


def _opt_state_shardings(opt_state, param_shardings, default):
    """Shard optimizer leaves like the parameter they mirror (Adam moments), found by path: an
    optimizer leaf whose key path ends with a parameter's path and has its shape takes that
    parameter's sharding (this holds through chains, masks and `multi_transform` groups);
    everything else (counts, masked-out nodes) is replicated."""
    def keys(path):
        out = []
        for e in path:
            for attr in ("key", "name", "idx"):
                if hasattr(e, attr):
                    out.append(str(getattr(e, attr)))
                    break
            else:
                out.append(str(e))
        return tuple(out)

    is_sharding = lambda x: isinstance(x, jax.sharding.Sharding)
    by_path = {keys(p): s for p, s in
               jax.tree_util.tree_flatten_with_path(param_shardings, is_leaf=is_sharding)[0]}
    longest = max((len(k) for k in by_path), default=0)

    def one(path, leaf):
        k = keys(path)
        for n in range(min(longest, len(k)), 0, -1):
            s = by_path.get(k[-n:])
            if s is not None and len(getattr(s, "spec", ())) <= len(getattr(leaf, "shape", ())):
                return s
        return default

    return jax.tree_util.tree_map_with_path(one, opt_state)
