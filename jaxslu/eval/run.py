"""A trained run loaded for evaluation or inference: config, task, assets, parameters. No
optimizer is built and no optimizer state is read (the checkpoint's `params` item alone).

`LoadedRun.apply(fn, batch)` runs `fn(model, batch)` jitted on the run's mesh: the local batch
becomes global arrays (every process passes its shard), the outputs come back replicated, so
every process holds the outputs of every row of the global batch (multi-host evaluation: each
process reads its shard of the data, process 0 writes the report from all of them).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import nnx

from jaxslu.config import ExperimentConfig, apply_overrides, read_config
from jaxslu.parallel import mesh as mesh_lib
from jaxslu.task import Task, get_task
from jaxslu.train.checkpoint import Checkpointer
from jaxslu.train.state import build_model, split_model


@dataclasses.dataclass
class LoadedRun:
    cfg: ExperimentConfig
    workdir: Path
    task: Task
    assets: Any
    graphdef: Any
    params: Any
    rest: Any
    step: int
    mesh: Any

    @classmethod
    def from_workdir(cls, workdir: str | Path, overrides: Sequence[str] = (),
                     step: int | None = None, devices=None) -> "LoadedRun":
        workdir = Path(workdir)
        cfg = apply_overrides(read_config(workdir / "config.json"), overrides)
        mesh_lib.initialize_distributed(cfg.mesh)
        task = get_task(cfg)
        assets = task.load_assets(workdir)
        if assets is None:
            raise FileNotFoundError(f"{workdir} lacks the run's assets ({', '.join(task.asset_files)}): "
                                    "is it a workdir written by `jaxslu train`?")
        mesh = mesh_lib.make_mesh(cfg.mesh, devices)
        kwargs = task.model_kwargs(assets)
        abstract = nnx.eval_shape(lambda: build_model(cfg, kwargs))
        graphdef, abstract_params, rest = split_model(abstract)
        shardings = mesh_lib.state_shardings(abstract_params, mesh, cfg.mesh.rules)
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                              abstract_params, shardings)
        ckpt = Checkpointer(workdir / "checkpoints", keep=cfg.train.keep_checkpoints,
                            async_save=False)
        try:
            params, at = ckpt.restore_params(target, step)
        finally:
            ckpt.close()
        return cls(cfg=cfg, workdir=workdir, task=task, assets=assets, graphdef=graphdef,
                   params=params, rest=rest, step=int(at), mesh=mesh)

    def model(self) -> nnx.Module:
        return nnx.merge(self.graphdef, self.params, self.rest)

    @property
    def num_parameters(self) -> int:
        """Trainable parameters (elements of every leaf of the parameter tree)."""
        return int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.params)))

    def eval_batches(self, source):
        """This process's shard of `source` as fixed-size eval batches (the task's
        featurization; every process yields the same number of batches)."""
        from jaxslu.data.pipeline import make_batches

        prepare = self.task.prepare_fn(source, self.assets, train=False)
        return make_batches(source, prepare=prepare, collate=self.task.collate,
                            data_cfg=self.cfg.data, train=False, seed=self.cfg.seed,
                            process_index=jax.process_index(),
                            process_count=jax.process_count())

    def compiled(self, fn: Callable[[nnx.Module, Any], Any]) -> Callable[[Any, Any], Any]:
        """`fn(model, batch) -> outputs` jitted once per function (and padded shape)."""
        cache = self.__dict__.setdefault("_compiled", {})
        if fn not in cache:
            graphdef, rest = self.graphdef, self.rest

            def run(params, batch):
                # The rows' source indices and weights come back with the outputs: on multi-host
                # they are the global batch's, in the same order as the outputs.
                return (fn(nnx.merge(graphdef, params, rest), batch), batch["index"],
                        batch["weight"])

            cache[fn] = jax.jit(run, out_shardings=mesh_lib.replicated(self.mesh))
        return cache[fn]

    def apply(self, fn: Callable[[nnx.Module, Any], Any], local_batch: Any
              ) -> tuple[Any, np.ndarray, np.ndarray]:
        """(outputs, index, weight) as numpy over every row of the global batch, outputs of
        `fn(model, batch)`; `index`/`weight` are the batch's (source index, 1 real / 0 padding
        row), so a caller keeps the rows with weight > 0. The local batch
        is padded with copies of its first row to a multiple of the data-parallel devices of this
        process (the extra rows are dropped from the outputs' leading dimension)."""
        local_dp = max(1, mesh_lib.data_parallel_size(self.mesh) // jax.process_count())
        leaves = jax.tree.leaves(local_batch)
        rows = int(np.shape(leaves[0])[0]) if leaves else 0
        pad = (-rows) % local_dp
        if pad:
            if jax.process_count() > 1:
                raise ValueError(f"evaluation batch of {rows} rows per process is not divisible by "
                                 f"the {local_dp} local data-parallel devices; set "
                                 "data.eval_batch_size to a multiple of the data-parallel size")
            local_batch = jax.tree.map(
                lambda x: np.concatenate([x, np.repeat(x[:1], pad, axis=0)]), local_batch)
        local_batch = mesh_lib.common_local_shapes(local_batch, self.task.pad_values())
        batch = mesh_lib.to_global_batch(local_batch, self.mesh, self.task.batch_partition())
        out, index, weight = jax.device_get(self.compiled(fn)(self.params, batch))
        if pad:  # single process only: the padded rows are the last ones
            out = jax.tree.map(lambda x: x[:rows] if np.ndim(x) and len(x) == rows + pad else x,
                               out)
            index, weight = index[:rows], weight[:rows]
        return out, np.asarray(index), np.asarray(weight)
