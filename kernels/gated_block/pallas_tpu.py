"""Pallas TPU (Mosaic) kernel for the gated residual FFN block: inactive row tiles are never loaded.

Layout: frames flattened to N = B*T rows, padded to a multiple of `tile_rows` (128: the MXU and the
(8, 128) vreg tiling want row blocks of 128). A tile is active if any of its rows has gate != 0.

* Scalar prefetch (`pltpu.PrefetchScalarGridSpec(num_scalar_prefetch=2)`): `tile_ids` [num_tiles]
  int32 = the active tile indices in order, padded with the LAST active tile, and `count` [1] =
  the number of active tiles. Both sit in SMEM before the pipeline starts, so index maps read them.
* Grid = (num_tiles,) (a static upper bound); step i works on row tile `tile_ids[i]`. Steps past
  `count` map to the same block as step count-1, so the pipeline issues no new DMA (in or out),
  and their body is skipped with `pl.when`: an inactive tile costs neither bandwidth nor FLOPs.
* The output aliases x (`input_output_aliases`), so tiles never visited keep x untouched in HBM.
* Inside an active tile, rows with gate == 0 are masked (`jnp.where`) to exactly x; the matmuls
  still run on the whole tile (tile granularity is the price of MXU-shaped work).
* Weights / LN / biases are whole blocks with a constant index map: DMA'd once, resident in VMEM
  (D*H*2 weights, double-buffered by the pipeline, must fit VMEM, e.g. D=512, H=2048 fp32 =
  16 MiB). `vmem_bytes` estimates the need and the call requests it (`vmem_limit_bytes`, up to
  VMEM_CAP = 56 MiB); beyond that it raises NotImplementedError, so implementation=None uses XLA.
  An H-chunked variant would be the next step for larger blocks.
* Grid semantics "arbitrary" (sequential): with "parallel" (megacore split) a core whose steps are
  all past `count` would write its never-filled output buffer back over a real tile.
* No active tile at all: step 0 still maps to tile 0 and Mosaic writes that output block back at
  the end of the grid, so the body copies the x block into it (the only work done).

Forward only; `pallas_call` is not differentiated here. The api wraps it in a custom_vjp whose
backward is the XLA compaction VJP (see api.py). Verified on CPU under TPU interpret mode
(`pltpu.InterpretParams()`, which simulates the HBM <-> VMEM copies) and lowered to Mosaic; not
run or timed on a real TPU here.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from jaxslu.kernels.gated_block.reference import GatedFFNParams, ffn_rows

TILE_ROWS = 128
# Largest VMEM request: below the 64 MiB per TensorCore of v7x (v5e / v6e have 128 MiB), leaving
# room for Mosaic's internal scratch. Mosaic's default scoped limit (16 MiB on v5e, 32 MiB on
# v6e) is lower than what resident weights need at realistic sizes, so the call asks for its
# estimate explicitly.
VMEM_CAP = 56 << 20


def vmem_bytes(tile_rows: int, d: int, h: int, itemsize: int) -> int:
    """VMEM estimate of one grid step: the double-buffered blocks (the constant-index weight blocks
    are still allocated twice by the pipeline) plus the fp32 intermediates of `ffn_rows` (the
    [rows, H] activation and a few [rows, D] values)."""
    blocks = 2 * itemsize * (2 * d * h + h + 3 * d + 2 * tile_rows * d) + 2 * 4 * tile_rows
    temps = 4 * (2 * tile_rows * h + 6 * tile_rows * d)
    return blocks + temps


def active_tiles(g_rows: jax.Array, tile_rows: int) -> tuple[jax.Array, jax.Array]:
    """(tile_ids [num_tiles] int32 padded with the last active tile, count [1] int32).

    g_rows: [N_pad] gate per row, N_pad a multiple of tile_rows.
    """
    num_tiles = g_rows.shape[0] // tile_rows
    active = jnp.any(g_rows.reshape(num_tiles, tile_rows) != 0, axis=1)
    count = jnp.sum(active, dtype=jnp.int32)
    ids = jnp.nonzero(active, size=num_tiles, fill_value=0)[0].astype(jnp.int32)
    last = ids[jnp.maximum(count - 1, 0)]
    ids = jnp.where(jnp.arange(num_tiles) < count, ids, last)
    return ids, count.reshape(1)


def pad_rows(x: jax.Array, gate: jax.Array, tile_rows: int) -> tuple[jax.Array, jax.Array, int]:
    """Flatten to rows and pad to a multiple of tile_rows: (x [N_pad, D], g [N_pad], N)."""
    B, T, D = x.shape
    n = B * T
    n_pad = -(-n // tile_rows) * tile_rows
    xf = jnp.pad(x.reshape(n, D), ((0, n_pad - n), (0, 0)))
    g = jnp.pad(gate.reshape(n), (0, n_pad - n))
    return xf, g, n


def _kernel(ids_ref, count_ref, x_ref, g_ref, s_ref, lb_ref, w1_ref, b1_ref, w2_ref, b2_ref,
            o_ref, *, activation: str):
    i = pl.program_id(0)
    count = count_ref[0]

    @pl.when(i < count)
    def _compute():
        x = x_ref[...]
        g = g_ref[...].astype(jnp.float32)  # [R, 1]
        p = GatedFFNParams(s_ref[0], lb_ref[0], w1_ref[...], b1_ref[0], w2_ref[...], b2_ref[0])
        f = ffn_rows(x, p, activation)
        y = (x.astype(jnp.float32) + g * f).astype(x.dtype)
        o_ref[...] = jnp.where(g != 0, y, x)

    @pl.when((count == 0) & (i == 0))
    def _passthrough():
        o_ref[...] = x_ref[...]


def gated_ffn_pallas_tpu(x: jax.Array, gate: jax.Array, p: GatedFFNParams, *,
                         activation: str = "gelu", tile_rows: int = TILE_ROWS,
                         interpret: bool | pltpu.InterpretParams = False
                         ) -> tuple[jax.Array, jax.Array]:
    """Forward of the gated block with the TPU kernel.

    Returns (y [B, T, D] x.dtype, rows_computed int32 scalar = active tiles * tile_rows).
    `interpret`: False on TPU; True or a `pltpu.InterpretParams` to run on CPU.
    """
    B, T, D = x.shape
    H = p.w1.shape[1]
    xf, g, n = pad_rows(x, gate, tile_rows)
    num_tiles = xf.shape[0] // tile_rows
    ids, count = active_tiles(g, tile_rows)

    row_map = lambda i, ids_ref, count_ref: (ids_ref[i], 0)  # noqa: E731
    const = lambda i, ids_ref, count_ref: (0, 0)  # noqa: E731
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2,
        grid=(num_tiles,),
        in_specs=[
            pl.BlockSpec((tile_rows, D), row_map),
            pl.BlockSpec((tile_rows, 1), row_map),
            pl.BlockSpec((1, D), const),
            pl.BlockSpec((1, D), const),
            pl.BlockSpec((D, H), const),
            pl.BlockSpec((1, H), const),
            pl.BlockSpec((H, D), const),
            pl.BlockSpec((1, D), const),
        ],
        out_specs=pl.BlockSpec((tile_rows, D), row_map),
    )
    vmem = vmem_bytes(tile_rows, D, H, jnp.dtype(x.dtype).itemsize)
    if vmem > VMEM_CAP:
        raise NotImplementedError(
            f"gated_ffn_pallas_tpu: D={D}, H={H} keeps {vmem >> 20} MiB of weights and "
            f"intermediates in VMEM (cap {VMEM_CAP >> 20} MiB); use implementation='xla' (an "
            "H-chunked grid axis would lift this)")
    yf = pl.pallas_call(
        functools.partial(_kernel, activation=activation),
        out_shape=jax.ShapeDtypeStruct(xf.shape, xf.dtype),
        grid_spec=grid_spec,
        # operand order: ids, count, x, ...: x (operand 2) is reused as the output buffer.
        input_output_aliases={2: 0},
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("arbitrary",),
            vmem_limit_bytes=min(VMEM_CAP, max(32 << 20, vmem + (4 << 20)))),
        interpret=interpret,
        name="gated_ffn_tpu",
    )(ids, count, xf, g.reshape(-1, 1), p.ln_scale.reshape(1, D), p.ln_bias.reshape(1, D),
      p.w1, p.b1.reshape(1, H), p.w2, p.b2.reshape(1, D))
    return yf[:n].reshape(B, T, D), count[0] * tile_rows
