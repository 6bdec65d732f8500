"""Elastic weight consolidation: fine-tune toward a cohort without forgetting the rest.

    loss = task loss + lambda/2 * sum_i F_i (theta_i - theta*_i)^2

theta* are the parameters the fine-tuning run starts from (the base model, through a warm
start: `train.init_from`), F the diagonal Fisher information of the base model on its own
training data, and lambda the term's weight in the config's loss line:

    loss = "rnnt + 0.3*ctc + 0.5*intent_ce + 0.5*slot_ce + 100*ewc"
    loss_options = {"ewc": {"fisher": "runs/base/fisher.npz"}}

The term's value is 1/2 sum F (theta - theta*)^2, so its gradient is F * (theta - theta*) and the
config weight is lambda. The anchors and the Fisher weights are the term's frozen constants
(`TrainState.constants["ewc"]`), checkpointed with the run: a resumed run keeps the same ones.

Choices that were open:
- The Fisher is the *empirical* diagonal Fisher: the mean over training examples of the squared
  per-example gradient of the base run's own objective (its loss line, with the reference labels),
  computed per example (vmap over the batch rows, no dropout or augmentation), never from the
  squared gradient of a batch mean (which would shrink it by the batch size and mix examples).
  `fisher_diagonal` writes it to `fisher.npz` in the base run's workdir: a run asset, keyed by
  parameter path ("encoder/blocks/0/..."), with the number of examples it averaged.
- Scale: by default the Fisher is divided by its mean over all selected parameters
  (`normalize="mean"`), so lambda means the same thing for models of any size and loss scale
  (lambda = 1 pulls each parameter as hard as an average-importance unit quadratic);
  `normalize="none"` uses the raw values.
- `pattern` (a regular expression on parameter paths) restricts the penalty, e.g. to the
  encoder; parameters the Fisher file lacks (a head added at fine-tuning, such as the cohort
  embedding) are not penalized and are named in the log.
"""
from __future__ import annotations

import logging
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxslu.registry import LOSSES
from jaxslu.train.warm_start import flat_params

log = logging.getLogger(__name__)

FISHER_FILE = "fisher.npz"
_COUNT_KEY = "__num_examples__"


def read_fisher(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], int]:
    """{parameter path: Fisher diagonal} and the number of examples it averages."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Fisher file {str(path)!r} does not exist; compute it from the "
                                "base run with `jaxslu fisher --workdir <base run>` (it writes "
                                f"<base run>/{FISHER_FILE})")
    with np.load(path) as z:
        data = {k: np.asarray(z[k], np.float32) for k in z.files if k != _COUNT_KEY}
        count = int(z[_COUNT_KEY]) if _COUNT_KEY in z.files else 0
    for k, v in data.items():
        if not np.all(np.isfinite(v)) or np.any(v < 0):
            raise ValueError(f"Fisher file {str(path)!r}: {k} has negative or non-finite values; "
                             "recompute it")
    return data, count


def write_fisher(path: str | os.PathLike, fisher: dict[str, np.ndarray], count: int) -> Path:
    """Atomically write a Fisher file (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".fisher-", suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, **{k: np.asarray(v, np.float32) for k, v in fisher.items()},
                 **{_COUNT_KEY: np.asarray(count)})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _selected(params, pattern: str) -> dict[str, Any]:
    flat = flat_params(params)
    rx = re.compile(pattern) if pattern else None
    return {k: v for k, v in flat.items() if rx is None or rx.search(k)}


@LOSSES.register("ewc")
def ewc(*, fisher: str = "", pattern: str = "", normalize: str = "mean"):
    """1/2 sum_i F_i (theta_i - theta*_i)^2 over the parameters the Fisher file holds (and
    `pattern` selects); weight it with lambda in the loss line (module docstring)."""
    if not fisher:
        raise ValueError("loss term 'ewc' needs loss_options={'ewc': {'fisher': <path of the "
                         "base run's fisher.npz>}} (write it with `jaxslu fisher --workdir BASE`)")
    if normalize not in ("mean", "none"):
        raise ValueError(f"ewc normalize={normalize!r}: use 'mean' or 'none'")

    def term(batch, outputs, params):
        consts = outputs["constants"]["ewc"]
        flat = flat_params(params)
        total = jnp.zeros((), jnp.float32)
        for k, anchor in consts["anchor"].items():
            d = flat[k].astype(jnp.float32) - anchor
            total = total + jnp.sum(consts["fisher"][k] * d * d)
        return 0.5 * total, {}

    def init_constants(params):
        table, count = read_fisher(fisher)
        chosen = _selected(params, pattern)
        if not chosen:
            raise ValueError(f"ewc: pattern {pattern!r} matches no parameter")
        missing = sorted(k for k in chosen if k not in table)
        keys = [k for k in chosen if k in table]
        if not keys:
            raise ValueError(f"ewc: the Fisher file {fisher!r} holds none of the model's "
                             f"parameters (e.g. {sorted(chosen)[:3]}); was it computed from this "
                             "model's base run?")
        for k in keys:
            if tuple(table[k].shape) != tuple(chosen[k].shape):
                raise ValueError(f"ewc: Fisher {k} has shape {table[k].shape} but the parameter "
                                 f"is {tuple(chosen[k].shape)}; the file belongs to another model")
        if missing:
            log.info("ewc: %d parameters have no Fisher weight and are not penalized: %s",
                     len(missing), missing[:8])
        scale = 1.0
        if normalize == "mean":
            total = sum(float(table[k].sum()) for k in keys)
            size = sum(int(table[k].size) for k in keys)
            mean = total / max(size, 1)
            if not mean > 0 or not math.isfinite(mean):
                raise ValueError(f"ewc: the Fisher file {fisher!r} is all zeros; recompute it on "
                                 "training data with real examples")
            scale = 1.0 / mean
        log.info("ewc: %d parameter arrays anchored, Fisher from %d examples", len(keys), count)
        return {"anchor": {k: jnp.asarray(chosen[k], jnp.float32) for k in keys},
                "fisher": {k: jnp.asarray(table[k] * scale, jnp.float32) for k in keys}}

    term.init_constants = init_constants
    return term


def per_example_grad_squares(graphdef, rest, objective, params, batch):
    """Sum over the batch's real rows (weight > 0) of each row's squared gradient of
    `objective` at `params` (eval mode: no dropout), and the number of real rows. Pure; jit it."""
    from jaxslu.train.step import forward

    def row_grad(row):
        one = jax.tree.map(lambda x: x[None], row)

        def loss(p):
            outputs = forward(graphdef, p, rest, one, train=False)
            return objective(one, outputs, p)[0]

        return jax.grad(loss)(params)

    grads = jax.vmap(row_grad)(batch)
    w = (batch["weight"] > 0).astype(jnp.float32)
    sq = jax.tree.map(lambda g: jnp.tensordot(w, jnp.square(g.astype(jnp.float32)), axes=1),
                      grads)
    return sq, jnp.sum(w)


def fisher_diagonal(workdir: str | os.PathLike, *, split: str = "", max_examples: int = 1000,
                    out: str | os.PathLike | None = None, rows_per_call: int = 8) -> Path:
    """The empirical diagonal Fisher of a trained run on (the first `max_examples` of) its
    training split, written to `out` (default: workdir/fisher.npz). Returns the path."""
    from jaxslu.eval.run import LoadedRun
    from jaxslu.losses.base import build_objective
    from jaxslu.data.pipeline import make_batches
    import dataclasses

    run = LoadedRun.from_workdir(workdir)
    if max_examples < 1:
        raise ValueError(f"max_examples={max_examples} must be >= 1")
    objective = build_objective(run.cfg.loss, {k: v for k, v in run.cfg.loss_options.items()
                                               if k != "ewc"})
    source = run.task.open_source(split or run.cfg.data.train_split)
    data_cfg = dataclasses.replace(run.cfg.data, eval_batch_size=rows_per_call)
    prepare = run.task.prepare_fn(source, run.assets, train=False)
    batches = make_batches(source, prepare=prepare, collate=run.task.collate, data_cfg=data_cfg,
                           train=False, seed=run.cfg.seed)
    fn = jax.jit(lambda p, b: per_example_grad_squares(run.graphdef, run.rest, objective, p, b))
    total, count = None, 0
    for batch in batches:
        if count >= max_examples:
            break
        weight = np.asarray(batch["weight"]).copy()
        real = np.flatnonzero(weight > 0)
        if real.size == 0:
            continue
        weight[real[max_examples - count:]] = 0.0  # exactly max_examples in all
        batch = {**batch, "weight": weight}
        sq, n = fn(run.params, batch)
        sq = jax.device_get(sq)
        if not all(np.all(np.isfinite(x)) for x in jax.tree.leaves(sq)):
            raise FloatingPointError(f"non-finite per-example gradient in a batch of {split!r} "
                                     f"(source indices {np.asarray(batch['index']).tolist()}); "
                                     "check those examples")
        total = sq if total is None else jax.tree.map(np.add, total, sq)
        count += int(n)
    if total is None:
        raise ValueError(f"no examples in split {split!r} of {workdir}")
    fisher = {k: np.asarray(v, np.float32) / count for k, v in flat_params(total).items()}
    path = Path(out) if out else Path(workdir) / FISHER_FILE
    write_fisher(path, fisher, count)
    log.info("Fisher diagonal of %s from %d examples -> %s", workdir, count, path)
    return path
