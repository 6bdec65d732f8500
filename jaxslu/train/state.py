"""Train state, model construction, optimizer: the functional core around an NNX model.

The model is split once into a static `graphdef` and its parameters (`nnx.State`); the train
state is a plain pytree (step, params, optimizer state, base RNG key) that jit donates, shards and
orbax checkpoints. Inside the step the model is rebuilt with `nnx.merge`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxslu.config import ExperimentConfig, OptimConfig
from jaxslu.registry import MODELS


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    step: jax.Array  # int32 scalar
    params: nnx.State
    opt_state: Any
    rng: jax.Array  # raw uint32 key data; per-step keys are fold_in(rng, step)


@dataclasses.dataclass(frozen=True)
class ModelSizes:
    """What a model needs to know about its data: set from the tokenizer and label vocabularies."""

    vocab_size: int
    num_intents: int = 0
    num_slot_tags: int = 0


def build_model(cfg: ExperimentConfig, sizes: ModelSizes, seed: int | None = None) -> nnx.Module:
    entry = MODELS.get(cfg.model.name)
    if entry.config is not None and not isinstance(cfg.model, entry.config):
        raise TypeError(f"model {cfg.model.name!r} takes a {entry.config.__name__}, got "
                        f"{type(cfg.model).__name__}")
    return entry.factory(cfg.model, frontend_cfg=cfg.frontend, vocab_size=sizes.vocab_size,
                         num_intents=sizes.num_intents, num_slot_tags=sizes.num_slot_tags,
                         rngs=nnx.Rngs(cfg.seed if seed is None else seed))


def split_model(model: nnx.Module):
    """graphdef, params (nnx.Param state), rest (anything else; expected to be empty)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, params, rest


def learning_rate_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    warmup = max(0, min(cfg.warmup_steps, total_steps))
    decay_steps = max(1, total_steps - warmup)
    end = cfg.learning_rate * cfg.end_learning_rate_ratio
    if cfg.decay == "cosine":
        after = optax.cosine_decay_schedule(cfg.learning_rate, decay_steps,
                                            alpha=cfg.end_learning_rate_ratio)
    elif cfg.decay == "linear":
        after = optax.linear_schedule(cfg.learning_rate, end, decay_steps)
    elif cfg.decay == "constant":
        after = optax.constant_schedule(cfg.learning_rate)
    else:
        raise ValueError(f"optim.decay={cfg.decay!r}: use 'cosine', 'linear' or 'constant'")
    if warmup == 0:
        return after
    return optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.learning_rate, warmup), after], [warmup])


def _decay_mask(params):
    # Decay matrices and convolution kernels, not biases, norms' scales or embeddings' rows sums.
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    schedule = learning_rate_schedule(cfg, total_steps)
    parts = []
    if cfg.clip_norm and cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay,
                             mask=_decay_mask))
    return optax.chain(*parts)


def init_train_state(params: nnx.State, optimizer: optax.GradientTransformation,
                     seed: int) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params),
                      rng=jax.random.key_data(jax.random.key(seed)))


def param_count(params: nnx.State) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))
