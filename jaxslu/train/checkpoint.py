"""Checkpoints: orbax CheckpointManager holding the train state and the data iterator's position.

A checkpoint directory is written under a temporary name and renamed when complete (orbax's
atomic commit), so a run killed mid-save leaves the previous checkpoints intact and never a
half-written one that would be restored. Restoring goes onto the abstract, sharded train state,
so each device reads only its shard.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

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
        args = {"state": ocp.args.StandardSave(state),
                "meta": ocp.args.JsonSave(dict(meta or {}))}
        args["data"] = ocp.args.JsonSave(data_state or {})
        self.manager.save(step, args=ocp.args.Composite(**args), force=True)

    def restore(self, abstract_state: Any, step: int | None = None
                ) -> tuple[Any, dict | None, dict]:
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}; train first "
                                    "(jaxslu train --config ... --workdir ...)")
        # The loop always saves all three items; `data` is the data iterator's position.
        args = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore(),
                "data": ocp.args.JsonRestore()}
        restored = self.manager.restore(step, args=ocp.args.Composite(**args))
        return restored["state"], restored.get("data") or None, restored["meta"]

    def restore_state_tree(self, step: int | None = None) -> tuple[Any, int]:
        """The saved train state as orbax wrote it (nested dicts of arrays, no target structure
        needed), and its step: for reading another model's parameters (warm start)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore()))
        return restored["state"], step

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
