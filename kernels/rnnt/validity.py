"""One documented behaviour for invalid integer inputs, shared by every RNN-T implementation.

The RNN-T loss is defined for 1 <= logit_lengths[b] <= T, 0 <= label_lengths[b] <= U and labels
in [0, V) at the real positions (u < label_lengths[b]; the padding past it may hold anything).
What happens otherwise is decided here, once, and applied by `api.rnnt_loss` /
`api.fused_rnnt_loss` around whichever implementation runs (XLA, fused XLA, Pallas TPU, Pallas
GPU, the autodiff reference) and by the Pallas modules' own entry points:

* concrete inputs (numpy arrays, or jax arrays outside jit): a ValueError naming the offending
  values, raised before any kernel runs (`api._check_values`, `pallas_common.check_inputs`);
* traced inputs (under jit, where values cannot be inspected on the host), per sequence:
    logit_lengths[b] < 1 (a zero-frame sequence: no alignment exists, P(y|x) = 0)
        -> loss +inf, gradient exactly zero;
    logit_lengths[b] > T, label_lengths[b] outside [0, U], or a real label outside [0, V)
        -> loss NaN, gradient exactly zero;
  the other sequences of the batch are unaffected. A train step's finiteness check
  (`jaxslu/train/step.py`: the update is applied only when the loss is finite) therefore stops
  the update instead of silently training on a clipped or garbage lattice.

How: the implementation runs on sanitized inputs (lengths clipped into range, labels outside
[0, V) and the padding replaced by 0) so that its numbers stay finite, and its per-sequence loss is then
replaced with `jnp.where`; the where's VJP sends a zero cotangent into the replaced sequences, so
their gradient is 0 * (finite) = 0 in every implementation.
A real label equal to `blank` is rejected when concrete; traced, it is computed as written (the
probability of emitting the blank symbol as a label), identically by every implementation.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


# The tracer type (public as jax.core.Tracer; looked up defensively for newer jax releases).
Tracer = getattr(jax.core, "Tracer", None)
if Tracer is None:  # pragma: no cover - depends on the jax version
    from jax._src.core import Tracer


def is_traced(x) -> bool:
    """Whether x is a tracer (its values cannot be inspected on the host)."""
    return isinstance(x, Tracer)


class Sanitized(NamedTuple):
    labels: jax.Array  # [B, U] int32: real labels in [0, V), padding 0
    logit_lengths: jax.Array  # [B] int32 in [1, T]
    label_lengths: jax.Array  # [B] int32 in [0, U]
    invalid: jax.Array  # [B] bool: loss NaN (see the module docstring)
    infeasible: jax.Array  # [B] bool: loss +inf (zero frames)


def sanitize(labels, logit_lengths, label_lengths, T: int, U: int, V: int) -> Sanitized:
    """In-range copies of the integer inputs and the per-sequence status (traceable)."""
    labels = jnp.asarray(labels).astype(jnp.int32)
    tl = jnp.asarray(logit_lengths).astype(jnp.int32)
    ul = jnp.asarray(label_lengths).astype(jnp.int32)
    real = jnp.arange(U, dtype=jnp.int32)[None, :] < ul[:, None]
    bad_label = real & ((labels < 0) | (labels >= V))
    invalid = (tl > T) | (ul < 0) | (ul > U) | jnp.any(bad_label, axis=1)
    infeasible = (tl < 1) & ~invalid
    # any id in [0, V) keeps the replaced sequence's numbers finite (its loss is overwritten)
    labels = jnp.where(real & ~bad_label, labels, 0)
    return Sanitized(labels, jnp.clip(tl, 1, T), jnp.clip(ul, 0, U), invalid, infeasible)


def apply_status(per_seq: jax.Array, s: Sanitized) -> jax.Array:
    """per_seq [B] with invalid sequences set to NaN and zero-frame ones to +inf (zero gradient)."""
    out = jnp.where(s.infeasible, jnp.inf, per_seq)
    return jnp.where(s.invalid, jnp.nan, out)
