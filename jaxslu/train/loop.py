"""The training loop: data -> sharded step -> metrics, checkpoints, exact resume.

    jaxslu train --config configs/fsdd_slu.py --workdir runs/fsdd

A workdir holds everything a run needs to be resumed, evaluated or used for transcription:
`config.json` (the resolved config), `tokenizer.model`, `labels.json`, `checkpoints/` (orbax:
train state + data iterator position), `tb/` (TensorBoard) and `metrics.jsonl`.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxslu.config import ExperimentConfig, read_config, save_config
from jaxslu.losses.base import build_objective
from jaxslu.parallel import mesh as mesh_lib
from jaxslu.task import Task, get_task
from jaxslu.train.checkpoint import Checkpointer
from jaxslu.train.metrics import MetricWriter, format_scalars
from jaxslu.train.state import TrainState, param_count
from jaxslu.train import warm_start
from jaxslu.train.step import Trainer

log = logging.getLogger("jaxslu")


class NonFiniteLossError(FloatingPointError):
    """Training produced a non-finite loss or gradient; the last good checkpoint is untouched."""


def prepare_assets(task: Task, workdir: Path, train_source=None) -> Any:
    """The task's assets from the workdir, or built from the training split. On multi-host,
    process 0 builds and writes them and the others load them once written, so every process
    uses the very same assets (no need for tokenizer training to be deterministic)."""
    primary = jax.process_index() == 0
    assets = task.load_assets(workdir) if primary else None
    if primary and assets is None:
        source = (train_source if train_source is not None
                  else task.open_source(task.cfg.data.train_split))
        assets = task.build_assets(source, workdir / ".assets")
        task.save_assets(assets, workdir)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("jaxslu: run assets written")
        if not primary:
            assets = task.load_assets(workdir)
    return assets


def without_launch(cfg: ExperimentConfig) -> ExperimentConfig:
    """`cfg` without how this process was launched (mesh.distributed, coordinator, process
    count and id): they belong to one invocation, not to the experiment in the workdir."""
    mesh = dataclasses.replace(cfg.mesh, distributed=False, coordinator_address="",
                               num_processes=0, process_id=-1)
    return dataclasses.replace(cfg, mesh=mesh)


def make_trainer(cfg: ExperimentConfig, model_kwargs: dict, devices=None, *,
                 task: Task | None = None, assets: Any = None) -> Trainer:
    """The compiled trainer of `cfg` with the task's model arguments; the task checks that the
    config, model and objective fit, and adds its frozen constants to the objective's."""
    task = task or get_task(cfg)
    mesh = mesh_lib.make_mesh(cfg.mesh, devices)
    objective = build_objective(cfg.loss, cfg.loss_options)

    def constants_fn(params):
        constants = objective.init_constants(params)
        own = task.constants(params, assets)
        if own:
            constants["task"] = own
        return constants

    trainer = Trainer.create(cfg, model_kwargs, mesh, objective, constants_fn=constants_fn)
    task.check(trainer.abstract_model, objective)
    return trainer


@dataclasses.dataclass
class TrainResult:
    state: TrainState
    trainer: Trainer
    assets: Any
    steps_run: int
    seconds: float
    skipped_updates: int
    skipped_examples: int
    last_metrics: dict


def train(cfg: ExperimentConfig, workdir: str | Path, *, progress: bool = True,
          stop_after: int | None = None, devices=None) -> TrainResult:
    """Train (or resume) the experiment in `workdir`. `stop_after` ends the run early after that
    many steps of this invocation (used to test interrupted-and-resumed runs)."""
    from jaxslu.data.pipeline import make_batches

    task = get_task(cfg)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh_lib.initialize_distributed(cfg.mesh)
    if (workdir / "config.json").exists():
        previous = read_config(workdir / "config.json")
        if without_launch(previous) != without_launch(cfg):
            log.warning("workdir %s holds a run with a different config; the new config is used "
                        "and written (checkpoints must still fit the model)", workdir)
    if jax.process_index() == 0:
        save_config(without_launch(cfg), workdir / "config.json")

    source = task.open_source(cfg.data.train_split)
    if cfg.train.init_from and not warm_start.has_checkpoint(workdir):
        warm_start.copy_assets(cfg.train.init_from, workdir, task.asset_files)
    assets = prepare_assets(task, workdir, source)
    trainer = make_trainer(cfg, task.model_kwargs(assets), devices, task=task, assets=assets)
    dp = mesh_lib.data_parallel_size(trainer.mesh)
    if cfg.data.batch_size % max(dp, jax.process_count()):
        raise ValueError(f"data.batch_size={cfg.data.batch_size} must be divisible by the "
                         f"data-parallel size {dp} of the mesh and the {jax.process_count()} "
                         "processes; change data.batch_size or mesh.data/mesh.fsdp")

    ckpt = Checkpointer(workdir / "checkpoints", keep=cfg.train.keep_checkpoints)
    prepare = task.prepare_fn(source, assets, train=True, model=trainer.abstract_model,
                              objective=trainer.objective)
    batches = make_batches(source, prepare=prepare, collate=task.collate, data_cfg=cfg.data,
                           train=True, seed=cfg.seed, process_index=jax.process_index(),
                           process_count=jax.process_count())
    partition = task.batch_partition()
    iterator = iter(batches)
    if ckpt.latest_step() is not None:
        state, data_state, meta = ckpt.restore(trainer.abstract_sharded_state())
        if data_state is not None:
            iterator.set_state(data_state)
        log.info("resumed from step %d of %s", int(state.step), workdir)
    else:
        state = trainer.init_state()
        params = task.init_params(state.params, assets)  # e.g. a pretrained encoder
        if cfg.train.init_from:  # a fresh run: the source's parameters where they fit
            params, _ = warm_start.warm_start_params(params, cfg.train.init_from)
        if params is not state.params:
            # Constants derived from the starting parameters (anchors) follow them.
            state = trainer.with_constants(dataclasses.replace(state, params=params))
        log.info("model %s: %d parameters; objective %s; mesh %s", cfg.model.name,
                 param_count(state.params), cfg.loss, dict(trainer.mesh.shape))

    writer = MetricWriter(workdir)
    start_step = int(state.step)
    total = cfg.train.steps
    bar = None
    # A progress bar only on a terminal; in log files, one line per log interval.
    if progress and jax.process_index() == 0 and sys.stderr.isatty():
        from tqdm.auto import tqdm
        bar = tqdm(total=total, initial=start_step, desc=cfg.name, unit="step", dynamic_ncols=True)

    t0 = time.perf_counter()
    t_window = t0
    step = start_step
    skipped = 0
    window: list[tuple[dict, np.ndarray]] = []
    last: dict = {}
    run_here = 0
    try:
        while step < total and (stop_after is None or run_here < stop_after):
            local = next(iterator)
            local = mesh_lib.common_local_shapes(local, task.pad_values())
            batch = mesh_lib.to_global_batch(local, trainer.mesh, partition)
            state, metrics = trainer.train_step(state, batch)
            window.append((metrics, np.asarray(local["index"])))
            run_here += 1
            step += 1
            at_log = step % cfg.train.log_every == 0 or step == total
            at_ckpt = cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0
            if at_log or at_ckpt or (stop_after is not None and run_here >= stop_after):
                last, bad = _summarize(window)
                fetched_steps = window
                window = []
                if bad:
                    skipped += len(bad)
                    if cfg.train.on_nan == "stop" or skipped > cfg.train.max_skipped_updates:
                        ckpt.wait()
                        raise NonFiniteLossError(
                            f"non-finite loss or gradient in {len(bad)} update(s) after step "
                            f"{int(state.step)} (example indices of the first such batch: "
                            f"{bad[0][1]}). The parameters were not "
                            f"updated and the last good checkpoint in {ckpt.directory} is intact. "
                            "Check the input data for NaN/inf (metric input_finite), lower "
                            "optim.learning_rate, or set train.on_nan=skip to drop such updates.")
                    log.warning("skipped %d non-finite update(s) (train.on_nan=skip)", len(bad))
                step = int(state.step)  # skipped updates do not count
                last["learning_rate"] = float(trainer.schedule(step))
                now = time.perf_counter()
                last["seconds_per_step"] = (now - t_window) / max(1, len(fetched_steps))
                t_window = now
                writer.write(step, last, prefix="train/")
                if bar is None and jax.process_index() == 0:
                    log.info("step %d/%d %s", step, total, format_scalars(last, [
                        "loss/total", "seconds_per_step"] + [k for k in last if k.startswith(
                            "loss/") and k != "loss/total"] + [k for k in last if
                                                           k.endswith("accuracy")]))
                if bar is not None:
                    bar.n = step
                    bar.set_postfix_str(format_scalars(last, ["loss/total"] + [
                        k for k in last if k.endswith("accuracy")]))
                    bar.refresh()
                if at_ckpt:
                    ckpt.save(step, state, iterator.get_state(), {"step": step})
        if run_here and ckpt.latest_step() != step:
            ckpt.save(step, state, iterator.get_state(), {"step": step, "final": step >= total})
        ckpt.wait()
    finally:
        if bar is not None:
            bar.close()
        writer.close()
        ckpt.close()
    seconds = time.perf_counter() - t0
    skipped_examples = int(getattr(batches, "skipped", 0) or 0)
    if run_here and jax.process_index() == 0:
        _record_training_time(workdir, int(state.step), run_here, seconds)
    return TrainResult(state=state, trainer=trainer, assets=assets, steps_run=run_here,
                       seconds=seconds, skipped_updates=skipped, skipped_examples=skipped_examples,
                       last_metrics=last)


def _record_training_time(workdir: Path, step: int, steps_run: int, seconds: float) -> None:
    """`train_time.json`: wall seconds of every invocation that trained (a resumed run adds one),
    so a report can state what the whole training cost."""
    import json

    path = workdir / "train_time.json"
    runs = json.loads(path.read_text())["invocations"] if path.exists() else []
    runs.append({"until_step": step, "steps": steps_run, "seconds": round(seconds, 2),
                 "devices": jax.device_count(), "processes": jax.process_count()})
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"total_seconds": round(sum(r["seconds"] for r in runs), 2),
                               "invocations": runs}, indent=1) + "\n")
    tmp.replace(path)


def _summarize(window):
    """Mean of each metric over a window of steps (finite steps only) and the non-finite ones."""
    fetched = jax.device_get([m for m, _ in window])
    bad = [(i, window[i][1].tolist()[:8]) for i, m in enumerate(fetched) if float(m["finite"]) < 1]
    good = [m for m in fetched if float(m["finite"]) >= 1] or fetched
    keys = good[0].keys()
    out = {k: float(np.mean([float(m[k]) for m in good])) for k in keys}
    return out, bad
