"""Context features: an example's context record -> a fixed-size float vector for the models.

A context record (an example's `meta["context"]`, or `jaxslu nlu --context`) is a JSON object with
any of these fields; a missing field is "unknown" and encodes as zeros:

    {"device_states": ["oven_on", "music_playing"],   # what is on / happening right now
     "device_type": "screen",                         # the device heard the request
     "hour": 19,                                      # local time of day, 0 <= hour < 24
     "recent_domain": "weather"}                      # the domain of the user's last request

The vocabularies (which device states, device types and recent domains exist) are read from the
training data (`ContextSchema.from_contexts`) and saved with the run (`context.json`), so a
corpus with other devices works unchanged. The vector is, in order: a multi-hot of the device
states, a one-hot of the device type, a one-hot of the recent domain, sin and cos of the hour
on the 24-hour circle and a 1 when the hour is given (so midnight differs from "unknown").
A value the training data never had (a new device type at test time) encodes as unknown and
is counted in `ContextSchema.unknown`; a value of the wrong type raises ContextError naming the
field and the example.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

FIELDS = ("device_states", "device_type", "hour", "recent_domain")
CONTEXT_FILE = "context.json"


class ContextError(ValueError):
    """A context record that cannot be encoded (names the example and the field)."""


def check_context(ctx: Any, where: str = "context") -> dict[str, Any]:
    """Validate one context record; returns it as a dict (None -> {})."""
    if ctx is None:
        return {}
    if not isinstance(ctx, Mapping):
        raise ContextError(f"{where}: a context is a JSON object with fields {FIELDS}, got "
                           f"{type(ctx).__name__}")
    unknown = set(ctx) - set(FIELDS)
    if unknown:
        raise ContextError(f"{where}: unknown context fields {sorted(unknown)}; use {FIELDS}")
    states = ctx.get("device_states", [])
    if isinstance(states, str) or not isinstance(states, (list, tuple)) or not all(
            isinstance(s, str) for s in states):
        raise ContextError(f"{where}: device_states must be a list of names, got {states!r}")
    for key in ("device_type", "recent_domain"):
        v = ctx.get(key)
        if v is not None and not isinstance(v, str):
            raise ContextError(f"{where}: {key} must be a name (string), got {v!r}")
    hour = ctx.get("hour")
    if hour is not None:
        if isinstance(hour, bool) or not isinstance(hour, (int, float)) or not (
                0 <= float(hour) < 24):
            raise ContextError(f"{where}: hour must be a number in [0, 24), got {hour!r}")
    return dict(ctx)


@dataclasses.dataclass
class ContextSchema:
    device_states: tuple[str, ...]
    device_types: tuple[str, ...]
    recent_domains: tuple[str, ...]
    unknown: collections.Counter = dataclasses.field(default_factory=collections.Counter,
                                                     compare=False, repr=False)

    @property
    def dim(self) -> int:
        return len(self.device_states) + len(self.device_types) + len(self.recent_domains) + 3

    @classmethod
    def from_contexts(cls, contexts: Iterable[Any]) -> "ContextSchema":
        states, types, domains = set(), set(), set()
        for k, ctx in enumerate(contexts):
            c = check_context(ctx, f"training context {k}")
            states.update(c.get("device_states", []))
            if c.get("device_type"):
                types.add(c["device_type"])
            if c.get("recent_domain"):
                domains.add(c["recent_domain"])
        return cls(tuple(sorted(states)), tuple(sorted(types)), tuple(sorted(domains)))

    def feature_names(self) -> list[str]:
        return ([f"state={s}" for s in self.device_states] +
                [f"device={t}" for t in self.device_types] +
                [f"recent={d}" for d in self.recent_domains] + ["hour_sin", "hour_cos",
                                                                "hour_known"])

    def encode(self, ctx: Any, where: str = "context") -> np.ndarray:
        c = check_context(ctx, where)
        v = np.zeros((self.dim,), np.float32)
        off = 0
        for group, values in ((self.device_states, c.get("device_states", [])),
                              (self.device_types, [c["device_type"]] if c.get("device_type")
                               else []),
                              (self.recent_domains, [c["recent_domain"]]
                               if c.get("recent_domain") else [])):
            index = {n: k for k, n in enumerate(group)}
            for name in values:
                if name in index:
                    v[off + index[name]] = 1.0
                else:
                    self.unknown[name] += 1
            off += len(group)
        if c.get("hour") is not None:
            angle = 2 * math.pi * float(c["hour"]) / 24.0
            v[off:off + 3] = (math.sin(angle), math.cos(angle), 1.0)
        return v

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"device_states": list(self.device_states),
                                   "device_types": list(self.device_types),
                                   "recent_domains": list(self.recent_domains),
                                   "features": self.feature_names()}, indent=1) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ContextSchema":
        d = json.loads(Path(path).read_text())
        return cls(tuple(d["device_states"]), tuple(d["device_types"]),
                   tuple(d["recent_domains"]))


CONTEXT_MODES = ("", "input", "blind")


def context_mode(options) -> str:
    """The task option `context`: "input" (the examples' meta["context"]), "blind" (zeros of the
    same size, the without-context baseline of the same model) or "" (no context input)."""
    mode = options.get("context", "") or ""
    if mode not in CONTEXT_MODES:
        raise ValueError(f"task_options.context={mode!r}: use 'input' (the examples' "
                         "meta['context']), 'blind' (zeros, same model) or ''")
    return mode


def schema_of_source(source) -> ContextSchema:
    """The context schema read from every example's meta["context"] of a (training) source."""
    return ContextSchema.from_contexts(
        (source.metadata(i).get("meta") or {}).get("context") for i in range(len(source)))
