"""Public entry of the gated residual FFN block: `gated_ffn` and its dispatch.

    y = x + gate[..., None] * FFN(LN(x)),   FFN(h) = act(h @ W1 + b1) @ W2 + b2

Frames with gate == 0 are switched off and, except with implementation="dense", are not computed
at all (compaction on XLA, skipped row tiles in the Pallas kernels). Every implementation returns
`(y, executed_flops)`, executed_flops = rows actually computed * 2*(D*H + H*D) as a float32 scalar:
  dense   B*T rows;
  xla     `capacity` rows (or B*T when the active count overflows capacity: exact dense fallback);
  pallas  active tiles * tile_rows (128 on TPU, 64 on GPU).

Gate gradients (the design choice for training arbitrators). The straight-through estimator of a
hard Gumbel gate needs d y / d gate = FFN(LN(x)) on EVERY frame, i.e. the FFN on exactly the
frames a skipping kernel does not compute. So:
  * implementation="dense" gives the full gate gradient: use it while training gates with
    straight-through gradients (it costs the dense FLOPs, as the estimator inherently does);
  * "xla" and "pallas" give exact gradients for x and all parameters and the gate gradient on
    ACTIVE frames only (zero on inactive frames): use them for inference and for gate-frozen
    training / fine-tuning, which is where the compute saving is realised.

Pallas backward: `pallas_call` forward inside a `jax.custom_vjp` whose backward is the VJP of the
XLA compaction path (it recomputes the FFN on the compacted rows; an inactive frame costs nothing
there either). Its capacity is `capacity` if given, else the host bucket of a concrete gate, else
(gate traced under jit) all B*T rows, i.e. a dense-cost backward, which then also returns the
full dense gate gradient (the XLA path computes every row when capacity >= B*T).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas import tpu as pltpu

from jaxslu.kernels.gated_block import pallas_gpu, pallas_tpu
from jaxslu.kernels.gated_block.reference import (GatedFFNParams, flops_per_row, gated_ffn_dense,
                                                  validate)
from jaxslu.kernels.gated_block.xla import bucket_capacity, gated_ffn_xla

IMPLEMENTATIONS = (None, "xla", "pallas", "dense")


def default_implementation(backend: str | None = None) -> str:
    """Best implementation for a backend: the Pallas kernel on TPU/GPU, XLA compaction elsewhere."""
    backend = backend or jax.default_backend()
    return "pallas" if backend in ("tpu", "gpu") else "xla"


def _pallas_forward(backend: str, interpret: bool | None):
    """(kernel function, tile_rows, interpret argument) for `implementation="pallas"` on `backend`."""
    if backend == "tpu" and not interpret:
        return pallas_tpu.gated_ffn_pallas_tpu, pallas_tpu.TILE_ROWS, False
    if backend == "gpu" and not interpret:
        return pallas_gpu.gated_ffn_pallas_gpu, pallas_gpu.TILE_ROWS, False
    if not interpret:
        raise ValueError(f"implementation='pallas' needs a TPU or GPU backend, this one is "
                         f"{backend!r}: pass interpret=True to run the TPU kernel in interpret "
                         "mode (slow, for testing), or use implementation='xla' / None")
    # TPU interpret mode proper (not the generic interpreter): it simulates the HBM <-> VMEM block
    # copies, so a wrong writeback of a skipped tile shows up on CPU.
    return pallas_tpu.gated_ffn_pallas_tpu, pallas_tpu.TILE_ROWS, pltpu.InterpretParams()


def _backward_capacity(gate: jax.Array, capacity: int | None) -> int:
    if capacity is not None:
        return capacity
    try:
        return bucket_capacity(gate)
    except ValueError:  # traced gate: no host-side count, fall back to all rows
        return int(np.prod(gate.shape))


def gated_ffn(x: jax.Array, gate: jax.Array, params: Any, *, activation: str = "gelu",
              implementation: str | None = None, capacity: int | None = None,
              interpret: bool | None = None) -> tuple[jax.Array, jax.Array]:
    """Gated residual FFN block. Returns (y [B, T, D] in x.dtype, executed_flops float32 scalar).

    x: [B, T, D] float32 / bfloat16. gate: [B, T] float, 0 = frame off (nonzero values scale the
    branch, so a straight-through hard Gumbel sample works). params: dict / dataclass /
    GatedFFNParams with ln_scale [D], ln_bias [D], w1 [D, H], b1 [H], w2 [H, D], b2 [D].
    activation: "gelu" (tanh approximation), "relu" or "silu".
    implementation: None = best for the backend (Pallas on TPU/GPU, XLA compaction on CPU and for
      shapes the Triton kernel cannot take);
      "xla", "pallas", or "dense" (the reference that multiplies by zero).
    capacity: static max computed rows for "xla" (required under jit; None = host-side bucket of
      the active count, a multiple of 128 rows) and the backward of "pallas". The Pallas forward
      needs none: its grid bounds the tiles and skips the inactive ones at run time.
    interpret: run the Pallas kernel in interpret mode (needed on CPU; on a non-TPU/GPU backend
      it runs the TPU kernel under `pltpu.InterpretParams()`). None = False.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    p = validate(x, gate, params, activation)
    backend = jax.default_backend()
    if implementation is None:
        implementation = default_implementation(backend)
        if backend == "gpu" and not pallas_gpu.supports(*p.w1.shape):
            implementation = "xla"  # the Triton kernel needs power-of-two D; never fail on None
    if implementation == "dense":
        return gated_ffn_dense(x, gate, p, activation=activation)
    if implementation == "xla":
        return gated_ffn_xla(x, gate, p, activation=activation, capacity=capacity)

    kernel, tile_rows, interp = _pallas_forward(backend, interpret)
    bwd_capacity = _backward_capacity(gate, capacity)

    @jax.custom_vjp
    def block(x_, g_, p_):
        return kernel(x_, g_, p_, activation=activation, interpret=interp)[0]

    def block_fwd(x_, g_, p_):
        return block(x_, g_, p_), (x_, g_, p_)

    def block_bwd(res, ct):
        def compact(x_, g_, p_):
            return gated_ffn_xla(x_, g_, p_, activation=activation, capacity=bwd_capacity)[0]
        return jax.vjp(compact, *res)[1](ct)

    block.defvjp(block_fwd, block_bwd)
    y = block(x, gate, p)
    g_rows = jax.lax.stop_gradient(gate).reshape(-1)
    g_rows = jnp.pad(g_rows, (0, -g_rows.shape[0] % tile_rows))
    rows = pallas_tpu.active_tiles(g_rows, tile_rows)[1][0] * tile_rows
    D, H = p.w1.shape
    return y, rows.astype(jnp.float32) * jnp.float32(flops_per_row(D, H))


__all__ = ["GatedFFNParams", "default_implementation", "gated_ffn"]
