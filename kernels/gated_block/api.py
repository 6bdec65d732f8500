"""Public entry of the gated residual FFN block: `gated_ffn` and its dispatch.

    y = x + gate[..., None] * FFN(LN(x)),   FFN(h) = act(h @ W1 + b1) @ W2 + b2

Frames with gate == 0 are switched off and, except with implementation="dense", are not computed
at all (compaction on XLA, skipped row tiles in the Pallas kernels). Every implementation returns
`(y, executed_flops)`, executed_flops = rows actually computed * 2*(D*H + H*D) as a float32 scalar:
  dense   B*T rows;
  xla     `capacity` rows (or B*T when the active count overflows capacity: exact dense fallback);
  pallas  active tiles * tile_rows (128 on TPU; on GPU `pallas_gpu.config`, 16..64 by D).

Gate gradients (the design choice for training arbitrators). The straight-through estimator of a
hard Gumbel gate needs d y / d gate = FFN(LN(x)) on EVERY frame, i.e. the FFN on exactly the
frames a skipping kernel does not compute. So:
  * implementation="dense" gives the full gate gradient: use it while training gates with
    straight-through gradients (it costs the dense FLOPs, as the estimator inherently does);
  * "xla" and "pallas" give exact gradients for x and all parameters and the gate gradient on
    ACTIVE frames only (zero on inactive frames): use them for inference and for gate-frozen
    training / fine-tuning, which is where the compute saving is realised.

Dispatch (implementation=None): XLA compaction on CPU (a Pallas kernel would only run
interpreted); on TPU / GPU the Pallas kernel where it is known to work for this call: before the
first call with a given signature (shapes and dtypes of x, gate and the parameters, activation,
backend) its forward is compiled ahead of time for exactly those shapes
(`jax.jit(...).lower(...).compile()`, i.e. Mosaic / Triton). Any failure (a shape the Triton
kernel cannot tile, a VMEM / shared-memory limit, a lowering or compile error) caches the verdict
"XLA" for the signature and emits one `PallasFallbackWarning`; the XLA path then runs with
`capacity`, or the host bucket of a concrete gate, or (gate traced, capacity None) all rows, so a
call that worked with Pallas never needs a new argument to work with the fallback.
implementation="pallas" skips the check and raises the kernel's error.

Pallas backward: `pallas_call` forward inside a `jax.custom_vjp` whose backward is the VJP of the
XLA compaction path (it recomputes the FFN on the compacted rows; an inactive frame costs nothing
there either). Its capacity is `capacity` if given, else the host bucket of a concrete gate, else
(gate traced under jit) all B*T rows, i.e. a dense-cost backward, which then also returns the
full dense gate gradient (the XLA path computes every row when capacity >= B*T).
"""
from __future__ import annotations

import logging
import threading
import warnings
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

log = logging.getLogger(__name__)


class PallasFallbackWarning(RuntimeWarning):
    """implementation=None found the Pallas kernel unusable for a call signature and uses XLA."""


def default_implementation(backend: str | None = None) -> str:
    """The implementation None tries first on a backend: the Pallas kernel on TPU/GPU (subject to
    the ahead-of-time check, see the module docstring), XLA compaction elsewhere."""
    backend = backend or jax.default_backend()
    return "pallas" if backend in ("tpu", "gpu") else "xla"


def _backend() -> str:
    return jax.default_backend()


def _auto_candidate(backend: str) -> tuple[str, bool | None] | None:
    """(kernel backend "tpu"/"gpu", interpret) that implementation=None tries, or None for XLA.
    Tests replace this to exercise the dispatch on CPU."""
    return (backend, None) if default_implementation(backend) == "pallas" else None


def _aot_compile(fn, args: tuple) -> None:
    """Compile fn for abstract args ahead of time (raises what Mosaic / Triton raise); separate so
    tests can inject a failing compile."""
    jax.jit(fn).lower(*args).compile()


_VERDICTS: dict[tuple, str | None] = {}
_LOCK = threading.Lock()


def dispatch_verdicts() -> dict[tuple, str | None]:
    """Copy of the cached implementation=None verdicts (None: Pallas; else the fallback reason)."""
    with _LOCK:
        return dict(_VERDICTS)


def clear_dispatch_cache() -> None:
    with _LOCK:
        _VERDICTS.clear()


def _abstract(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(tuple(jnp.shape(a)), jnp.result_type(a)),
                        tree)


def _pallas_ok(kernel_backend: str, interpret, x, gate, p, activation: str) -> bool:
    """Cached ahead-of-time verdict for the Pallas forward on this signature (see module doc)."""
    sig = tuple((tuple(jnp.shape(a)), str(jnp.result_type(a))) for a in (x, gate, *p))
    key = (_backend(), kernel_backend, sig, activation, repr(interpret))
    with _LOCK:
        if key in _VERDICTS:
            return _VERDICTS[key] is None
    try:
        kernel, _, interp = _pallas_forward(kernel_backend, interpret)
        if kernel_backend == "gpu":
            D, H = p.w1.shape
            if not pallas_gpu.supports(D, H, jnp.result_type(x)):
                raise NotImplementedError(f"the Triton kernel cannot tile D={D}, H={H} "
                                          f"({jnp.result_type(x)}); see pallas_gpu.config")
        _aot_compile(lambda x_, g_, p_: kernel(x_, g_, p_, activation=activation,
                                               interpret=interp)[0], _abstract((x, gate, p)))
        reason = None
    except Exception as e:  # noqa: BLE001 - any lowering / compile failure means "use XLA"
        text = str(e).strip()
        reason = f"{type(e).__name__}: {text.splitlines()[0][:300] if text else ''}"
    with _LOCK:
        _VERDICTS[key] = reason
    if reason is not None:
        msg = (f"gated_ffn: the Pallas {kernel_backend} kernel cannot serve x {tuple(x.shape)} "
               f"{jnp.result_type(x)}, H={p.w1.shape[1]} on {_backend()}: {reason}. Using XLA "
               "compaction for this signature; implementation='pallas' shows the full error.")
        log.warning(msg)
        warnings.warn(msg, PallasFallbackWarning, stacklevel=3)
    return reason is None


def _pallas_forward(backend: str, interpret: bool | None):
    """(kernel function, tile_rows, interpret argument) for `implementation="pallas"` on `backend`."""
    if backend == "tpu" and not interpret:
        return pallas_tpu.gated_ffn_pallas_tpu, pallas_tpu.TILE_ROWS, False
    if backend == "gpu" and interpret is True:  # the Triton kernel under the generic interpreter
        return pallas_gpu.gated_ffn_pallas_gpu, None, True
    if backend == "gpu" and not interpret:
        return pallas_gpu.gated_ffn_pallas_gpu, None, False
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
    implementation: None = best for the backend (Pallas on TPU/GPU where its ahead-of-time
      compile for this signature succeeds, XLA compaction otherwise and on CPU);
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
    backend = _backend()
    kernel_backend = backend
    if implementation is None:
        candidate = _auto_candidate(backend)
        implementation = "xla"
        if candidate is not None and _pallas_ok(*candidate, x, gate, p, activation):
            implementation = "pallas"
            kernel_backend, interpret = candidate
        else:
            # the fallback must accept every call the Pallas path accepts: a traced gate with
            # capacity=None computes all rows (dense cost, exact) instead of raising
            capacity = _backward_capacity(gate, capacity)
    if implementation == "dense":
        return gated_ffn_dense(x, gate, p, activation=activation)
    if implementation == "xla":
        return gated_ffn_xla(x, gate, p, activation=activation, capacity=capacity)

    kernel, tile_rows, interp = _pallas_forward(kernel_backend, interpret)
    if tile_rows is None:
        tile_rows = pallas_gpu.config(*p.w1.shape, x.dtype)["tile_rows"]
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
