"""Train state, model construction, optimizer: the functional core around an NNX model.

The model is split once into a static `graphdef` and its parameters (`nnx.State`); the train
state is a plain pytree (step, params, optimizer state, base RNG key, frozen constants) that jit
donates, shards and orbax checkpoints. Inside the step the model is rebuilt with `nnx.merge`.

Parameter groups (`optim.groups`) give parts of the model their own optimizer settings through
`optax.multi_transform`; a group with `"maximize": True` does gradient *ascent* on the same
objective (its updates are negated), which is the adversary of a min-max game (e.g. adversarial
reweighting), and `"frozen": True` keeps a group fixed. Constants (`TrainState.constants`) are
arrays loss terms read but nobody trains (EWC anchors and Fisher weights, a frozen teacher).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

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
    # Frozen arrays loss terms read as outputs["constants"] (not differentiated, not updated).
    constants: Any = dataclasses.field(default_factory=dict)


def build_model(cfg: ExperimentConfig, model_kwargs: Mapping[str, Any],
                seed: int | None = None) -> nnx.Module:
    """The model the config names, with the task's constructor arguments (sizes from assets)."""
    entry = MODELS.get(cfg.model.name)
    if entry.config is not None and not isinstance(cfg.model, entry.config):
        raise TypeError(f"model {cfg.model.name!r} takes a {entry.config.__name__}, got "
                        f"{type(cfg.model).__name__}")
    return entry.factory(cfg.model, **dict(model_kwargs),
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


_GROUP_KEYS = {"name", "pattern", "learning_rate", "weight_decay", "b1", "b2", "maximize", "frozen"}


def param_path(path) -> str:
    """'encoder/layers/0/kernel' for a key path of an nnx.State leaf."""
    parts = []
    for e in path:
        for attr in ("key", "name", "idx"):
            if hasattr(e, attr):
                parts.append(str(getattr(e, attr)))
                break
        else:
            parts.append(str(e))
    if parts and parts[-1] == "value":
        parts = parts[:-1]
    return "/".join(parts)


def _check_groups(groups) -> list[dict]:
    out = []
    for k, g in enumerate(groups):
        if not isinstance(g, Mapping) or "name" not in g or "pattern" not in g:
            raise ValueError(f"optim.groups[{k}]={g!r}: each group is a dict with 'name' and "
                             "'pattern' (a regular expression on parameter paths)")
        bad = set(g) - _GROUP_KEYS
        if bad:
            raise ValueError(f"optim.groups[{k}] ({g['name']!r}) has unknown keys {sorted(bad)}; "
                             f"valid keys: {sorted(_GROUP_KEYS)}")
        if g["name"] == "default":
            raise ValueError("optim.groups: 'default' names the ungrouped parameters; pick another")
        out.append(dict(g))
    return out


def group_labels(params, groups) -> Any:
    """The optimizer group of every parameter: the first group whose pattern matches its path
    (re.search), else "default"."""
    groups = _check_groups(groups)
    compiled = [(g["name"], re.compile(g["pattern"])) for g in groups]

    def label(path, _):
        name = param_path(path)
        for gname, pat in compiled:
            if pat.search(name):
                return gname
        return "default"

    return jax.tree_util.tree_map_with_path(label, params)


def _adamw(cfg: OptimConfig, total_steps: int, overrides: Mapping[str, Any]):
    sub = dataclasses.replace(cfg, **{k: overrides[k] for k in
                                      ("learning_rate", "weight_decay", "b1", "b2")
                                      if k in overrides})
    schedule = learning_rate_schedule(sub, total_steps)
    tx = optax.adamw(schedule, b1=sub.b1, b2=sub.b2, weight_decay=sub.weight_decay,
                     mask=_decay_mask)
    if overrides.get("frozen"):
        return optax.set_to_zero()
    if overrides.get("maximize"):
        # Ascent: the same objective's gradient, the update negated (min-max adversary).
        return optax.chain(tx, optax.scale(-1.0))
    return tx


def make_optimizer(cfg: OptimConfig, total_steps: int,
                   params: Any = None) -> optax.GradientTransformation:
    """AdamW with warm-up + decay and global-norm clipping; with `optim.groups`, one AdamW per
    group (`params` is then needed to label the leaves). Clipping is per group: an adversary's
    gradient norm does not shrink the main model's steps."""
    clip = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm and cfg.clip_norm > 0 else []
    if not cfg.groups:
        return optax.chain(*clip, _adamw(cfg, total_steps, {}))
    if params is None:
        raise ValueError("make_optimizer: optim.groups needs the parameters to label them")
    groups = _check_groups(cfg.groups)
    labels = group_labels(params, groups)
    used = set(jax.tree.leaves(labels))
    for g in groups:
        if g["name"] not in used:
            raise ValueError(f"optim.groups: group {g['name']!r} (pattern {g['pattern']!r}) "
                             "matches no parameter; parameter paths look like "
                             f"{param_path(jax.tree_util.tree_flatten_with_path(params)[0][0][0])!r}")
    transforms = {"default": optax.chain(*clip, _adamw(cfg, total_steps, {}))}
    for g in groups:
        transforms[g["name"]] = optax.chain(*clip, _adamw(cfg, total_steps, g))
    return optax.multi_transform(transforms, labels)


def init_train_state(params: nnx.State, optimizer: optax.GradientTransformation,
                     seed: int, constants: Any = None) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params),
                      rng=jax.random.key_data(jax.random.key(seed)),
                      constants={} if constants is None else constants)


def param_count(params: nnx.State) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))
