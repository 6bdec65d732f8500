"""Warm start: begin a new run from the parameters of another run's checkpoint.

`train.init_from = "<workdir of a finished or running run>"` makes a fresh run (no checkpoint in
its own workdir yet) copy that run's tokenizer and label vocabularies and load every parameter
whose path and shape exist in both models; parameters only the new model has (e.g. the
arbitrators of a compute-cost amortized Transformer started from the dense one) keep their
initialization. The step counter, optimizer moments and learning-rate schedule start afresh.
A parameter present in both with different shapes or dtypes is an error, never a silent re-init.
Resuming the new run later restores its own checkpoints; `init_from` is then ignored.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from jaxslu.train.checkpoint import Checkpointer

log = logging.getLogger(__name__)



def _key(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def flat_params(tree) -> dict[str, object]:
    """'a/b/c' path -> leaf, for nnx.State params and for the plain dicts orbax restores."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_name(path): leaf for path, leaf in leaves}


def _name(path) -> str:
    parts = [_key(e) for e in path]
    if parts and parts[-1] == "value":  # nnx.Variable's array
        parts = parts[:-1]
    return "/".join(parts)


def has_checkpoint(workdir: Path) -> bool:
    """Whether the run in `workdir` saved a (complete: orbax renames it when done) checkpoint."""
    ckpt = Path(workdir) / "checkpoints"
    return ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir())


def copy_assets(source: str | Path, workdir: Path, names: Sequence[str]) -> None:
    """Use the source run's assets (`names`, the task's `asset_files`: tokenizer, label
    vocabularies, ...; the output layers depend on them). Every process copies (same bytes;
    written under a temporary name and renamed), so none can read a half-written file or build
    its own."""
    source = Path(source)
    for name in names:
        src, dst = source / name, workdir / name
        if not src.exists():
            raise FileNotFoundError(f"train.init_from={str(source)!r} has no {name}; point it at "
                                    "the workdir of a jaxslu run")
        if not dst.exists():
            tmp = dst.with_name(f".{name}.{jax.process_index()}.tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)


def load_source_params(source: str | Path) -> tuple[dict, int]:
    """Flat params of the source run's latest checkpoint, as numpy arrays, and its step."""
    source = Path(source)
    if not has_checkpoint(source):
        raise FileNotFoundError(f"train.init_from={str(source)!r} has no saved checkpoint; point "
                                "it at the workdir of a run that saved one")
    ckpt = Checkpointer(source / "checkpoints", async_save=False)
    try:
        state, step = ckpt.restore_state_tree()
    finally:
        ckpt.close()
    params = state["params"] if isinstance(state, dict) else state.params
    return {k: np.asarray(v) for k, v in flat_params(params).items()}, step


def merge_params(params, source: dict[str, np.ndarray], source_name: str = "init_from"):
    """`params` (the fresh model's, possibly sharded) with every leaf that `source` has under the
    same path replaced by the source's value (placed with the leaf's sharding). Returns the new
    params and (loaded paths, paths kept at init, source paths unused)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    loaded, kept, out = [], [], []
    for path, leaf in leaves:
        name = _name(path)
        if name not in source:
            kept.append(name)
            out.append(leaf)
            continue
        value = source[name]
        if tuple(value.shape) != tuple(leaf.shape) or value.dtype != leaf.dtype:
            raise ValueError(f"train.init_from={source_name!r}: parameter {name} is "
                             f"{value.dtype}{list(value.shape)} there but {leaf.dtype}"
                             f"{list(leaf.shape)} in this model; warm start needs the shared "
                             "layers to have the same sizes (check model.* against the source "
                             "run's config.json)")
        sharding = getattr(leaf, "sharding", None)
        out.append(jax.device_put(value, sharding) if sharding is not None else value)
        loaded.append(name)
    if not loaded:
        raise ValueError(f"train.init_from={source_name!r}: no parameter path of this model "
                         "exists in the source checkpoint; is it a run of a related model?")
    unused = sorted(set(source) - set(loaded))
    return jax.tree_util.tree_unflatten(treedef, out), (loaded, kept, unused)


def warm_start_params(params, source: str | Path):
    """Load the source run's latest parameters into `params`; logs what was loaded and kept."""
    flat, step = load_source_params(source)
    merged, (loaded, kept, unused) = merge_params(params, flat, str(source))
    n_loaded = sum(int(np.prod(flat[k].shape)) for k in loaded)
    log.info("warm start from %s step %d: %d tensors (%d parameters) loaded, %d kept at init%s, "
             "%d source tensors unused%s", source, step, len(loaded), n_loaded, len(kept),
             f" ({', '.join(kept[:6])}{', ...' if len(kept) > 6 else ''})" if kept else "",
             len(unused), f" ({', '.join(unused[:6])})" if unused else "")
    return merged, {"source": str(source), "step": step, "loaded": len(loaded),
                    "kept_at_init": kept, "unused": unused}
