"""Pallas GPU (Triton) kernel for the gated residual FFN block: inactive row tiles are never loaded.

Same tiling idea as pallas_tpu.py, adapted to Triton, which has no scalar-prefetch grid spec and
no automatic block pipeline:

* Frames are flattened to N = B*T rows padded to a multiple of `tile_rows`.
* `tile_ids` (active tile indices, padded with the last active tile) and `count` are ordinary int32
  inputs; the grid is (num_tiles,) and program i reads `tile_ids[i]`. Programs with i >= count
  return immediately (`pl.when`): they load nothing and compute nothing. On a GPU the launch of an
  empty program costs a few hundred cycles, negligible next to a tile's FFN.
* x, gate and the weights are passed whole (no BlockSpec); the program loads its row tile with a
  dynamic `pl.ds` slice and stores only that tile. The output aliases x (`input_output_aliases`),
  so rows of tiles never visited keep x without any copy.
* The FFN is chunked over H (`block_h`): for each chunk, a = act(LN(x) @ W1[:, c] + b1[c]) and
  acc += a @ W2[c, :], so only [D, block_h] and [block_h, D] weight slices are live at once
  (a whole D x H weight does not fit a Triton program). D, tile_rows and block_h must be powers
  of two (Triton block shapes); block_h must divide H.
* Inside an active tile, rows with gate == 0 are masked to exactly x.

**Sizing for real hardware** (`config`; H100 / H200, sm_90: per SM 227 KiB of shared memory for
one program, 64 K 32-bit registers, at most 255 per thread). Triton software-pipelines the loads
in the H loop that feed the two dots into shared memory, `num_stages` copies deep: per stage a
[D, block_h] slice of W1 and a [block_h, D] slice of W2. The previous default (block_h = 64,
Triton's default num_stages = 3, as `pallas_call_registration` sets it for CUDA) needed
3 * 2 * 256 * 64 * 4 B = 384 KiB at D = 256 fp32: more than an H100 has, a compile failure.
Now num_stages = 2 and block_h is the largest power of two <= 64 dividing H with
2 stages * 2 slices * D * block_h * itemsize <= 128 KiB (room left for the dot operand copies
and reductions' scratch): D = 256 fp32 -> 32, bf16 -> 64; D = 512 fp32 -> 16. The registers
hold the [tile_rows, D] fp32 accumulator, the LN output and the x tile: tile_rows * D <= 8 K
elements for fp32 inputs, 16 K for bf16 (8 warps, as jax's attention kernel uses for wide rows):
fp32 tile_rows = 64 / 32 / 16 for D = 128 / 256 / 512, bf16 64 for D <= 256. Shapes with no
fitting config (block_h < 16, non-power-of-two D) are refused by `supports`
(implementation=None then uses XLA).
Checked without a GPU by compiling the kernel's Triton IR for sm_90 with the `triton` package and
ptxas (`benchmarks/triton_resources.py` -> results/benchmarks/triton_resources_sm90.json): the
previous config needed 459 KiB of shared memory at D = 256 fp32 (the compile fails on an H100),
the current one fits with no register spills (numbers in the JSON).
Precision: the dots run at the default precision, TF32 tensor cores for fp32 operands (as XLA's
own fp32 matmuls on the GPU; `jax_default_matmul_precision="highest"` selects IEEE fp32), bf16
tensor cores for bf16; fp32 accumulation. With TF32 the block's output differs from an fp32
computation by ~1e-3 relative (the tests state the tolerance they use on a GPU).

Forward only; the api wraps it in a custom_vjp whose backward is the XLA compaction VJP. Verified
in interpret mode on CPU and lowered to Triton IR; never compiled by Triton or timed on a GPU from
this repository (no GPU was available; `scripts/device_check.py` is the check to run there).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from jaxslu.kernels.gated_block.pallas_tpu import active_tiles, pad_rows
from jaxslu.kernels.gated_block.reference import ACTIVATIONS, GatedFFNParams, layer_norm_rows

NUM_STAGES = 2
NUM_WARPS = 8
_MAX_TILE_ROWS = 64
# [tile_rows, D] elements per register-resident tile: 8 K for fp32 inputs (the fp32 accumulator,
# the LN output and the x tile, ~32 registers each per thread at 8 warps), 16 K for bf16 (the LN
# output and x take half). Measured by benchmarks/triton_resources.py for sm_90: D = 256 fp32 at
# 64 rows used 255 registers and spilled 216 B, at 32 rows 164 registers and no spill; bf16 at
# 64 rows 242 registers, no spill.
_ACC_ELEMENTS = {4: 8192, 2: 16384}
_W_SMEM = 128 << 10  # pipelined W1 + W2 slices over all stages


def _is_pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


def config(d: int, h: int, dtype=jnp.float32) -> dict:
    """Tile sizes for the Triton kernel (see the module docstring): tile_rows, block_h (0 if no
    power of two >= 16 fits), num_warps, num_stages."""
    itemsize = jnp.dtype(dtype).itemsize
    tile_rows = _MAX_TILE_ROWS
    while tile_rows > 16 and tile_rows * d > _ACC_ELEMENTS.get(itemsize, 8192):
        tile_rows //= 2
    block_h = 64
    while block_h >= 16 and (h % block_h or NUM_STAGES * 2 * d * block_h * itemsize > _W_SMEM):
        block_h //= 2
    return dict(tile_rows=tile_rows, block_h=block_h if block_h >= 16 else 0,
                num_warps=NUM_WARPS, num_stages=NUM_STAGES)


def supports(d: int, h: int, dtype=jnp.float32) -> bool:
    """Whether the Triton kernel can take this block shape with its default config."""
    return _is_pow2(d) and config(d, h, dtype)["block_h"] > 0


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


def gated_ffn_pallas_gpu(x: jax.Array, gate: jax.Array, p: GatedFFNParams, *,
                         activation: str = "gelu", tile_rows: int | None = None,
                         block_h: int | None = None, num_warps: int | None = None,
                         interpret: bool = False) -> tuple[jax.Array, jax.Array]:
    """Forward of the gated block with the Triton kernel (None: `config`'s sizes).

    Returns (y [B, T, D] x.dtype, rows_computed int32 scalar = active tiles * tile_rows).
    """
    B, T, D = x.shape
    H = p.w1.shape[1]
    cfg = config(D, H, x.dtype)
    tile_rows = cfg["tile_rows"] if tile_rows is None else tile_rows
    block_h = (cfg["block_h"] or min(64, H)) if block_h is None else min(block_h, H)
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
        # Triton CompilerParams select the Triton backend (jax 0.10 otherwise may pick Mosaic GPU);
        # num_stages is explicit because Triton's default (3) overflows shared memory (see above).
        compiler_params=pltriton.CompilerParams(num_warps=num_warps or cfg["num_warps"],
                                                num_stages=cfg["num_stages"]),
        interpret=interpret,
        name="gated_ffn_gpu",
    )(ids, count, xf, g, p.ln_scale, p.ln_bias, p.w1, p.b1, p.w2, p.b2)
    return yf[:n].reshape(B, T, D), count[0] * tile_rows
