"""The loss-term protocol and the composition of terms into one objective.

A loss term is a pure function

    term(batch, outputs, params) -> (scalar, metrics)

of the batch (a dict of arrays, see `jaxslu.data.batch`), the model's outputs (a dict the model's
`__call__` returns, plus `outputs["intermediates"]`: every `nnx.Intermediate` the layers recorded
during the forward pass) and the model's parameters (an `nnx.State`, for regularizers such as EWC).
It returns a scalar and a dict of scalar metrics. A term that needs frozen arrays (anchors,
Fisher weights, a teacher's parameters) carries `term.init_constants(params) -> pytree`; the run
computes them once at the start, checkpoints them with the train state, and the term reads them
as `outputs["constants"][<term name>]`. Terms are built by factories registered in
`jaxslu.registry.LOSSES`; the config names them in one line:

    loss = "rnnt + 0.3*intent_ce + 0.5*slot_ce"
    loss_options = {"rnnt": {"implementation": "xla", "fused": False}}

Every term's value is logged separately as `loss/<name>`, its metrics as `<name>/<metric>`.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any, Callable, Mapping, Protocol

import jax
import jax.numpy as jnp
from flax import nnx

from jaxslu.registry import LOSSES

Batch = Mapping[str, jax.Array]
Outputs = Mapping[str, Any]
Metrics = dict[str, jax.Array]


class LossTerm(Protocol):
    def __call__(self, batch: Batch, outputs: Outputs, params: nnx.State) -> tuple[jax.Array, Metrics]:
        ...


def intermediates_of(outputs: Outputs, kind: type[nnx.Intermediate]) -> list[Any]:
    """All values of type `kind` that layers recorded in the forward pass, in module order."""
    state = outputs.get("intermediates")
    if state is None:
        return []
    found = []
    for _, var in nnx.to_flat_state(state) if hasattr(nnx, "to_flat_state") else state.flat_state():
        if isinstance(var, kind):
            value = var.get_value() if hasattr(var, "get_value") else var.value
            found.extend(value if isinstance(value, tuple) else (value,))
    return found


_TERM_RE = re.compile(r"^\s*(?:(?P<w>[0-9.eE+-]+)\s*\*\s*)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*$")


def parse_objective(expr: str) -> list[tuple[float, str]]:
    """Parse "rnnt + 0.3*intent_ce - ..." into [(1.0, "rnnt"), (0.3, "intent_ce")]."""
    if not expr or not expr.strip():
        raise ValueError("the loss expression is empty; set e.g. loss='rnnt + 0.3*intent_ce'")
    out: list[tuple[float, str]] = []
    for part in expr.split("+"):
        m = _TERM_RE.match(part)
        if not m:
            raise ValueError(f"cannot parse loss term {part.strip()!r} in {expr!r}; write terms as "
                             "'name' or 'weight*name' joined by '+', e.g. 'rnnt + 0.3*intent_ce'")
        w = float(m.group("w")) if m.group("w") else 1.0
        name = m.group("name")
        if any(n == name for _, n in out):
            raise ValueError(f"loss term {name!r} appears twice in {expr!r}")
        out.append((w, name))
    return out


@dataclasses.dataclass(frozen=True)
class Objective:
    """A weighted sum of named loss terms."""

    terms: tuple[tuple[str, float, LossTerm], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _, _ in self.terms)

    def init_constants(self, params: nnx.State) -> dict[str, Any]:
        """Frozen constants of the terms that declare them (`term.init_constants(params)`),
        keyed by term name; the train step hands them to every term as outputs["constants"]."""
        out = {}
        for name, _, term in self.terms:
            fn = getattr(term, "init_constants", None)
            if fn is not None:
                out[name] = fn(params)
        return out

    def __call__(self, batch: Batch, outputs: Outputs, params: nnx.State) -> tuple[jax.Array, Metrics]:
        total = jnp.zeros((), jnp.float32)
        metrics: Metrics = {}
        for name, weight, term in self.terms:
            value, term_metrics = term(batch, outputs, params)
            value = jnp.asarray(value, jnp.float32)
            metrics[f"loss/{name}"] = value
            for k, v in term_metrics.items():
                metrics[f"{name}/{k}"] = v
            total = total + weight * value
        metrics["loss/total"] = total
        return total, metrics


def build_objective(expr: str, options: Mapping[str, Mapping[str, Any]] | None = None) -> Objective:
    """Build the objective a config names; unknown terms or options are errors that say so."""
    options = dict(options or {})
    parsed = parse_objective(expr)
    unused = set(options) - {n for _, n in parsed}
    if unused:
        raise ValueError(f"loss_options names terms not in the objective {expr!r}: {sorted(unused)}")
    terms = []
    for weight, name in parsed:
        factory: Callable[..., LossTerm] = LOSSES.get(name).factory
        kwargs = dict(options.get(name, {}))
        sig = inspect.signature(factory)
        has_var_kw = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
        bad = [k for k in kwargs if k not in sig.parameters and not has_var_kw]
        if bad:
            raise ValueError(f"unknown option(s) {bad} for loss term {name!r}; it takes "
                             f"{[p for p in sig.parameters]}")
        terms.append((name, weight, factory(**kwargs)))
    return Objective(tuple(terms))
