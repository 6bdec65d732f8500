"""The training loop: data -> sharded step -> metrics, checkpoints, exact resume.

    jaxslu train --config configs/fsdd_slu.py --workdir runs/fsdd

A workdir holds everything a run needs to be resumed, evaluated or used for transcription:
`config.json` (the resolved config), `tokenizer.model`, `labels.json`, `checkpoints/` (orbax:
train state + data iterator position), `tb/` (TensorBoard) and `metrics.jsonl`.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxslu.config import ExperimentConfig, read_config, save_config
from jaxslu.losses.base import build_objective
from jaxslu.parallel import mesh as mesh_lib
from jaxslu.registry import DATASETS
from jaxslu.train.checkpoint import Checkpointer
from jaxslu.train.metrics import MetricWriter, format_scalars
from jaxslu.train.state import ModelSizes, TrainState, param_count
from jaxslu.train import warm_start
from jaxslu.train.step import Trainer

log = logging.getLogger("jaxslu")


class NonFiniteLossError(FloatingPointError):
    """Training produced a non-finite loss or gradient; the last good checkpoint is untouched."""


@dataclasses.dataclass
class RunAssets:
    """What a workdir holds besides checkpoints: tokenizer, label vocabularies, model sizes."""

    tokenizer: Any
    vocab: Any
    sizes: ModelSizes


def open_source(cfg: ExperimentConfig, split: str):
    return DATASETS.get(cfg.data.dataset).factory(split, **dict(cfg.data.options))


def prepare_assets(cfg: ExperimentConfig, workdir: Path, train_source=None) -> RunAssets:
    """Load the tokenizer and label vocabularies from the workdir, or build them from the
    training split (deterministically, so every process of a multi-host run builds the same)."""
    from jaxslu.data.labels import Vocabularies
    from jaxslu.text.tokenizer import Tokenizer

    tok_path = workdir / "tokenizer.model"
    vocab_path = workdir / "labels.json"
    if tok_path.exists() and vocab_path.exists():
        tokenizer = Tokenizer.load(tok_path)
        vocab = Vocabularies.load(vocab_path)
    else:
        source = train_source if train_source is not None else open_source(cfg, cfg.data.train_split)
        texts = [source.text(i) if hasattr(source, "text") else source[i]["text"]
                 for i in range(len(source))]
        tmp_dir = workdir / f".assets.{jax.process_index()}"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        tokenizer = Tokenizer.train(texts, kind=cfg.tokenizer.kind,
                                    vocab_size=cfg.tokenizer.vocab_size,
                                    model_path=tmp_dir / "tokenizer.model")
        vocab = Vocabularies.from_source(source)
        if jax.process_index() == 0:
            tokenizer.save(tok_path)
            vocab.save(vocab_path)
    sizes = ModelSizes(vocab_size=tokenizer.vocab_size, num_intents=len(vocab.intents),
                       num_slot_tags=len(vocab.tags))
    return RunAssets(tokenizer, vocab, sizes)


def check_joint_activation(cfg: ExperimentConfig) -> None:
    """The rnnt term recomputes the joint (act(enc + pred) @ W + b) from the model's outputs; its
    `activation` option must be the model's `joint_activation` or the loss trains another model."""
    model_act = getattr(cfg.model, "joint_activation", None)
    if model_act is None or "rnnt" not in cfg.loss:
        return
    term_act = dict(cfg.loss_options.get("rnnt", {})).get("activation", "tanh")
    if term_act != model_act:
        raise ValueError(f"loss_options.rnnt.activation={term_act!r} but the model's joint uses "
                         f"model.joint_activation={model_act!r}; set both to the same activation")


def make_trainer(cfg: ExperimentConfig, sizes: ModelSizes, devices=None) -> Trainer:
    check_joint_activation(cfg)
    mesh = mesh_lib.make_mesh(cfg.mesh, devices)
    objective = build_objective(cfg.loss, cfg.loss_options)
    return Trainer.create(cfg, sizes, mesh, objective)


def label_capacity_fn(cfg: ExperimentConfig, trainer: Trainer):
    """How many tokens an utterance of n samples can carry, for the data pipeline's length check.

    CTC needs at least one encoder frame per token; the transducer can emit several tokens per
    frame, but greedy decoding emits at most `eval.max_symbols_per_frame`, so a transcript longer
    than that many per frame could never be decoded. Models without `output_frames` get no check.
    """
    frames = trainer.frames_fn
    if frames is None:
        return None
    if "ctc" in trainer.objective.names:
        return frames
    per_frame = max(1, cfg.eval.max_symbols_per_frame)
    return lambda n: frames(n) * per_frame


@dataclasses.dataclass
class TrainResult:
    state: TrainState
    trainer: Trainer
    assets: RunAssets
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

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh_lib.initialize_distributed(cfg.mesh)
    if (workdir / "config.json").exists():
        previous = read_config(workdir / "config.json")
        if previous != cfg:
            log.warning("workdir %s holds a run with a different config; the new config is used "
                        "and written (checkpoints must still fit the model)", workdir)
    if jax.process_index() == 0:
        save_config(cfg, workdir / "config.json")

    source = open_source(cfg, cfg.data.train_split)
    if cfg.train.init_from and not warm_start.has_checkpoint(workdir):
        warm_start.copy_assets(cfg.train.init_from, workdir)
    assets = prepare_assets(cfg, workdir, source)
    trainer = make_trainer(cfg, assets.sizes, devices)
    dp = mesh_lib.data_parallel_size(trainer.mesh)
    if cfg.data.batch_size % max(dp, jax.process_count()):
        raise ValueError(f"data.batch_size={cfg.data.batch_size} must be divisible by the "
                         f"data-parallel size {dp} of the mesh and the {jax.process_count()} "
                         "processes; change data.batch_size or mesh.data/mesh.fsdp")

    ckpt = Checkpointer(workdir / "checkpoints", keep=cfg.train.keep_checkpoints)
    batches = make_batches(source, tokenizer=assets.tokenizer, vocab=assets.vocab,
                           data_cfg=cfg.data, sample_rate=cfg.frontend.sample_rate, train=True,
                           seed=cfg.seed, process_index=jax.process_index(),
                           process_count=jax.process_count(),
                           frames_fn=label_capacity_fn(cfg, trainer))
    iterator = iter(batches)
    if ckpt.latest_step() is not None:
        state, data_state, meta = ckpt.restore(trainer.abstract_sharded_state())
        if data_state is not None:
            iterator.set_state(data_state)
        log.info("resumed from step %d of %s", int(state.step), workdir)
    else:
        state = trainer.init_state()
        if cfg.train.init_from:  # a fresh run: the source's parameters where they fit
            params, _ = warm_start.warm_start_params(state.params, cfg.train.init_from)
            state = dataclasses.replace(state, params=params)
        log.info("model %s: %d parameters; objective %s; mesh %s", cfg.model.name,
                 param_count(state.params), cfg.loss, dict(trainer.mesh.shape))

    writer = MetricWriter(workdir)
    start_step = int(state.step)
    total = cfg.train.steps
    bar = None
    if progress and jax.process_index() == 0:
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
            batch = mesh_lib.to_global_batch(local, trainer.mesh)
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
    return TrainResult(state=state, trainer=trainer, assets=assets, steps_run=run_here,
                       seconds=seconds, skipped_updates=skipped, skipped_examples=skipped_examples,
                       last_metrics=last)


def _summarize(window):
    """Mean of each metric over a window of steps (finite steps only) and the non-finite ones."""
    fetched = jax.device_get([m for m, _ in window])
    bad = [(i, window[i][1].tolist()[:8]) for i, m in enumerate(fetched) if float(m["finite"]) < 1]
    good = [m for m in fetched if float(m["finite"]) >= 1] or fetched
    keys = good[0].keys()
    out = {k: float(np.mean([float(m[k]) for m in good])) for k in keys}
    return out, bad
