"""Pallas GPU (Triton) kernel for the gated residual FFN block: inactive row tiles are never loaded.

Same tiling idea as pallas_tpu.py, adapted to Triton, which has no scalar-prefetch grid spec and
no automatic block pipeline:

* Frames are flattened to N = B*T rows padded to a multiple of `tile_rows` (64, untuned: a
  [64, D] fp32 accumulator plus the x / LN tiles per program at 4 warps; lower it for D > 256).
* `tile_ids` (active tile indices, padded with the last active tile) and `count` are ordinary int32
  inputs; the grid is (num_tiles,) and program i reads `tile_ids[i]`. Programs with i >= count
  return immediately (`pl.when`): they load nothing and compute nothing. On a GPU the launch of an
  empty program costs a few hundred cycles, negligible next to a tile's FFN.
* x, gate and the weights are passed whole (no BlockSpec); the program loads its row tile with a
  dynamic `pl.ds` slice and stores only that tile. The output aliases x (`input_output_aliases`),
  so rows of tiles never visited keep x without any copy.
* The FFN is chunked over H (`block_h`, default 64): for each chunk, a = act(LN(x) @ W1[:, c] + b1[c])
  and acc += a @ W2[c, :], so only [D, block_h] and [block_h, D] weight slices are live at once
  (a whole D x H weight does not fit a Triton program). D, tile_rows and block_h must be powers
  of two (Triton block shapes); block_h must divide H.
* Inside an active tile, rows with gate == 0 are masked to exactly x.

Forward only; the api wraps it in a custom_vjp whose backward is the XLA compaction VJP. Verified
in interpret mode on CPU and lowered to Triton IR (no GPU here, so never run or timed on one).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from jaxslu.kernels.gated_block.pallas_tpu import active_tiles, pad_rows
from jaxslu.kernels.gated_block.reference import ACTIVATIONS, GatedFFNParams, layer_norm_rows

TILE_ROWS = 64
BLOCK_H = 64


def _kernel(ids_ref, count_ref, x_ref, g_ref, s_ref, lb_ref, w1_ref, b1_ref, w2_ref, b2_ref,
            o_ref, *, activation: str, tile_rows: int, block_h: int):
    i = pl.program_id(0)

    @pl.when(i < count_ref[0])
    def _compute():
        rows = pl.ds(pl.multiple_of(ids_ref[i] * tile_rows, tile_rows), tile_rows)
        x = x_ref[rows, :]
        g = g_ref[rows].astype(jnp.float32)[:, None]
        cdt = x.dtype
        h = layer_norm_rows(x, s_ref[...], lb_ref[...]).astype(cdt)
        H = w1_ref.shape[1]

        def chunk(c, acc):
            cols = pl.ds(pl.multiple_of(c * block_h, block_h), block_h)
            a = jnp.dot(h, w1_ref[:, cols].astype(cdt), preferred_element_type=jnp.float32)
            a = ACTIVATIONS[activation](a + b1_ref[cols].astype(jnp.float32)).astype(cdt)
            return acc + jnp.dot(a, w2_ref[cols, :].astype(cdt), preferred_element_type=jnp.float32)

        f = jax.lax.fori_loop(0, H // block_h, chunk,
                              jnp.zeros((tile_rows, x.shape[1]), jnp.float32))
        f = f + b2_ref[...].astype(jnp.float32)
        y = (x.astype(jnp.float32) + g * f).astype(x.dtype)
        o_ref[rows, :] = jnp.where(g != 0, y, x)


def _is_pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


def supports(d: int, h: int, tile_rows: int = TILE_ROWS, block_h: int = BLOCK_H) -> bool:
    """Whether the Triton kernel can take this block shape (power-of-two tiles, block_h | H)."""
    block_h = min(block_h, h)
    return _is_pow2(d) and _is_pow2(tile_rows) and _is_pow2(block_h) and h % block_h == 0


def gated_ffn_pallas_gpu(x: jax.Array, gate: jax.Array, p: GatedFFNParams, *,
                         activation: str = "gelu", tile_rows: int = TILE_ROWS,
                         block_h: int = BLOCK_H, interpret: bool = False
                         ) -> tuple[jax.Array, jax.Array]:
    """Forward of the gated block with the Triton kernel.

    Returns (y [B, T, D] x.dtype, rows_computed int32 scalar = active tiles * tile_rows).
    """
    B, T, D = x.shape
    H = p.w1.shape[1]
    block_h = min(block_h, H)
    for name, v in (("D", D), ("tile_rows", tile_rows), ("block_h", block_h)):
        if not _is_pow2(v):
            raise ValueError(f"the Triton gated-block kernel needs {name} a power of two, got {v}; "
                             "use implementation='xla' for this shape")
    if H % block_h:
        raise ValueError(f"block_h={block_h} must divide H={H}; use implementation='xla'")
    xf, g, n = pad_rows(x, gate, tile_rows)
    num_tiles = xf.shape[0] // tile_rows
    ids, count = active_tiles(g, tile_rows)
    yf = pl.pallas_call(
        functools.partial(_kernel, activation=activation, tile_rows=tile_rows, block_h=block_h),
        out_shape=jax.ShapeDtypeStruct(xf.shape, xf.dtype),
        grid=(num_tiles,),
        # operand order: ids, count, x, ...: x (operand 2) is reused as the output buffer.
        input_output_aliases={2: 0},
        # Triton CompilerParams select the Triton backend (jax 0.10 otherwise may pick Mosaic GPU).
        compiler_params=pltriton.CompilerParams(num_warps=4),
        interpret=interpret,
        name="gated_ffn_gpu",
    )(ids, count, xf, g, p.ln_scale, p.ln_bias, p.w1, p.b1, p.w2, p.b2)
    return yf[:n].reshape(B, T, D), count[0] * tile_rows
