"""XLA compaction implementation of the gated residual FFN block: inactive frames cost nothing.

Frames are flattened to N = B*T rows. The indices of the active rows (gate != 0) are found with
`jnp.nonzero(size=capacity)`, those rows are gathered into a [capacity, D] block, the FFN runs on
that block only, and the updated rows are scattered back into x (a `set` of x + gate*f, which
rounds exactly like the dense path). XLA needs static shapes, so `capacity` is a static Python int:

* given by the caller, the function is jit-compatible; `capacity` rows are computed whatever the
  active count (padding slots gather nothing and their scatter is dropped);
* if more rows are active than `capacity`, a `lax.cond` runs the dense branch instead (every row
  computed), so results are always exact; executed_flops then reports N rows. (Dropping the
  overflow rows silently, as MoE token dropping does, would change the model's output.)
* `capacity=None` (eager only) picks a host-side bucket: the active count rounded up to a multiple
  of `bucket_rows` (128), so only N/128 + 1 programs can ever compile.

Gradients come from plain autodiff through gather / scatter / cond: exact for x and every
parameter. For the gate, d y / d gate = FFN(LN(x)) is exact on ACTIVE frames and ZERO on inactive
frames (their FFN output is exactly what was skipped). The straight-through estimator of a hard
Gumbel gate needs it on inactive frames too, so training arbitrators with straight-through gate
gradients must use the dense reference (`implementation="dense"`); this kernel is for inference
and for gate-frozen training / fine-tuning, where the gate gradient is not used. (In the overflow
fallback branch, and when capacity >= N, the
gate gradient is dense.)

executed_flops = rows computed * 2*(D*H + H*D), a float32 scalar (N * 4DH overflows int32 at
realistic sizes).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import concrete_or_error

from jaxslu.kernels.gated_block.reference import (GatedFFNParams, combine_rows, ffn_rows,
                                                  flops_per_row, validate)

BUCKET_ROWS = 128


def bucket_capacity(gate: Any, bucket_rows: int = BUCKET_ROWS) -> int:
    """Host-side capacity for a concrete gate: active count rounded up to `bucket_rows`, <= N.

    Works eagerly and under eager jax.grad; raises a ValueError under jit (the gate is abstract): pass a static `capacity` there.
    """
    try:  # concrete_or_error sees through grad/vmap-free JVP tracers to a concrete primal
        g = concrete_or_error(np.asarray, gate, "gated_ffn capacity=None")
    except jax.errors.ConcretizationTypeError:
        raise ValueError("capacity=None picks a bucket from the concrete gate, but the gate is "
                         "traced (inside jit); pass a static capacity=<int rows>") from None
    n = g.size
    count = int(np.count_nonzero(g))
    return min(n, -(-count // bucket_rows) * bucket_rows)


def _compact(xf: jax.Array, g: jax.Array, p: GatedFFNParams, activation: str,
             capacity: int) -> jax.Array:
    """Gather the active rows (at most `capacity`), FFN them, scatter x + g*f back."""
    n = xf.shape[0]
    idx = jnp.nonzero(g != 0, size=capacity, fill_value=n)[0]  # padding slots point past the end
    rows = xf.at[idx].get(mode="fill", fill_value=0)
    g_rows = g.at[idx].get(mode="fill", fill_value=0)
    y_rows = combine_rows(rows, g_rows, ffn_rows(rows, p, activation))
    return xf.at[idx].set(y_rows, mode="drop")


def gated_ffn_xla(x: jax.Array, gate: jax.Array, params: Any, *, activation: str = "gelu",
                  capacity: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Gated block by compaction. Returns (y [B, T, D] x.dtype, executed_flops float32 scalar).

    capacity: static max number of computed rows (see the module docstring); None = host bucket.
    """
    p = validate(x, gate, params, activation)
    B, T, D = x.shape
    n = B * T
    if capacity is None:
        capacity = bucket_capacity(gate)
    if not isinstance(capacity, (int, np.integer)) or isinstance(capacity, bool) or capacity < 0:
        raise ValueError(f"capacity must be a static non-negative Python int (rows), got {capacity!r}")
    capacity = min(int(capacity), n)
    per_row = float(flops_per_row(D, p.w1.shape[1]))
    xf = x.reshape(n, D)
    g = gate.reshape(n)
    count = jnp.sum(g != 0)

    def compact(_):
        return _compact(xf, g, p, activation, capacity), jnp.float32(capacity * per_row)

    def dense(_):
        return combine_rows(xf, g, ffn_rows(xf, p, activation)), jnp.float32(n * per_row)

    if capacity == n:  # nothing to save: the gather would be an identity permutation
        yf, flops = dense(None)
    else:
        yf, flops = jax.lax.cond(count <= capacity, compact, dense, None)
    return yf.reshape(B, T, D), flops
