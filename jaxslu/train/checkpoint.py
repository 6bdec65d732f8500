"""Checkpoints: orbax CheckpointManager holding the train state and the data iterator's position.

A checkpoint directory is written under a temporary name and renamed when complete (orbax's
atomic commit), so a run killed mid-save leaves the previous checkpoints intact and never a
half-written one that would be restored. Restoring goes onto the abstract, sharded train state,
so each device reads only its shard.

Multi-host: every process calls save/restore at the same steps on the same (shared) directory;
orbax writes each process's array shards and the primary process the JSON items. The data
iterator position is per process (each reads its own shard of the data), so the `data` item holds
every process's position, gathered at save, and each process restores its own.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, directory: str | Path, *, keep: int = 3, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict | None, meta: dict | None = None) -> None:
        """Save a TrainState: its parameters as item `params` (what evaluation and warm starts
        read, alone), the rest (step, optimizer state, RNG, constants) as item `state`."""
        params, rest = _split_state(state)
        args = {"params": ocp.args.StandardSave(params), "state": ocp.args.StandardSave(rest),
                "meta": ocp.args.JsonSave(dict(meta or {})),
                "data": ocp.args.JsonSave(_data_item(data_state))}
        self.manager.save(step, args=ocp.args.Composite(**args), force=True)

    def _step(self, step: int | None) -> int:
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}; train first "
                                    "(jaxslu train --config ... --workdir ...)")
        return step

    def restore(self, abstract_state: Any, step: int | None = None
                ) -> tuple[Any, dict | None, dict]:
        """The whole TrainState (onto `abstract_state`'s shardings), the data iterator's
        position and the meta dict."""
        step = self._step(step)
        params, rest = _split_state(abstract_state)
        args = {"params": ocp.args.StandardRestore(params),
                "state": ocp.args.StandardRestore(rest), "meta": ocp.args.JsonRestore(),
                "data": ocp.args.JsonRestore()}
        restored = self.manager.restore(step, args=ocp.args.Composite(**args))
        state = dataclasses.replace(abstract_state, params=restored["params"],
                                    **dict(restored["state"]))
        return state, _own_data_state(restored.get("data"), step), restored["meta"]

    def restore_params(self, abstract_params: Any, step: int | None = None) -> tuple[Any, int]:
        """Only the parameters (onto `abstract_params`'s shardings) and the step: what
        evaluation needs; no optimizer state is read or built."""
        step = self._step(step)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_params)))
        return restored["params"], step

    def restore_state_tree(self, step: int | None = None) -> tuple[Any, int]:
        """The saved parameters as orbax wrote them (nested dicts of arrays, no target structure
        needed), and the step: for reading another model's parameters (warm start)."""
        step = self._step(step)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore()))
        return {"params": restored["params"]}, step

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _split_state(state: Any) -> tuple[Any, dict]:
    """(params, {every other field}) of a TrainState (a dataclass pytree)."""
    rest = {f.name: getattr(state, f.name) for f in dataclasses.fields(state) if f.name != "params"}
    return state.params, rest


# Key of the `data` item when a multi-process run saved it: the list of every process's position.
PER_PROCESS = "per_process"


def _data_item(data_state: dict | None) -> dict:
    """The `data` item to save: this process's iterator position, or on multi-host every
    process's, in process order (a collective: every process calls save at the same step)."""
    data_state = dict(data_state or {})
    if jax.process_count() == 1:
        return data_state
    return {PER_PROCESS: _allgather_json(data_state)}


def _own_data_state(item: dict | None, step: int) -> dict | None:
    """This process's iterator position from a restored `data` item (None: start afresh)."""
    if not item:
        return None
    if PER_PROCESS not in item:  # written by a single process
        if jax.process_count() == 1:
            return item
        states, writers = [item], 1
    else:
        states, writers = item[PER_PROCESS], len(item[PER_PROCESS])
    if writers != jax.process_count():
        # Each process's position is in its own shard of the data; a different process count
        # shards the data differently, so no position carries over.
        log.warning("checkpoint step %d was written by %d process(es), this run has %d: the data "
                    "iterators start from the beginning of their shards", step, writers,
                    jax.process_count())
        return None
    return states[jax.process_index()] or None


def _allgather_json(obj: Any) -> list:
    """Every process's JSON-serializable `obj`, in process order (collective)."""
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(obj, sort_keys=True).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([data.size], np.int32)))
    sizes = sizes.reshape(-1)
    buf = np.zeros(int(sizes.max()), np.uint8)
    buf[:data.size] = data
    gathered = np.asarray(multihost_utils.process_allgather(buf)).reshape(len(sizes), -1)
    return [json.loads(gathered[i, :n].tobytes().decode()) for i, n in enumerate(sizes)]
