"""Metric writers: TensorBoard event files, a JSON-lines log, and the console."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Mapping

import jax

log = logging.getLogger("jaxslu")


class MetricWriter:
    """Writes scalars to TensorBoard (workdir/tb) and workdir/metrics.jsonl; process 0 only."""

    def __init__(self, workdir: str | Path, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = None
        self._jsonl = None
        if self.enabled:
            workdir = Path(workdir)
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(str(workdir / "tb"))
            self._jsonl = open(workdir / "metrics.jsonl", "a")

    def write(self, step: int, scalars: Mapping[str, float], prefix: str = "") -> None:
        if not self.enabled:
            return
        clean = {}
        for k, v in scalars.items():
            try:
                v = float(v)
            except (TypeError, ValueError):
                continue
            name = f"{prefix}{k}"
            clean[name] = v
            self._tb.add_scalar(name, v if math.isfinite(v) else float("nan"), step)
        self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()


def format_scalars(scalars: Mapping[str, float], keys=None) -> str:
    keys = keys or sorted(scalars)
    return " ".join(f"{k}={float(scalars[k]):.4g}" for k in keys if k in scalars)
