"""Dense reference for the gated residual feed-forward block, and the row math every path shares.

Block (compute-cost amortized Transformer; Xie et al., "Compute Cost Amortized Transformer for Streaming ASR", Interspeech 2022):

    y = x + gate[..., None] * FFN(LN(x)),   FFN(h) = act(h @ W1 + b1) @ W2 + b2

x [B, T, D] (fp32 or bf16), gate [B, T] (float; 0 switches a frame's branch off, any other value
scales it, so a soft or straight-through gate is handled exactly).

The reference computes the branch on EVERY frame and multiplies by the gate: correct by
construction, autodiff gives every gradient including d y / d gate = FFN(LN(x)) on inactive frames
(what a straight-through Gumbel estimator needs), and it costs the full dense FLOPs.

Numerics (shared by all implementations through `ffn_rows` / `combine_rows`, so they differ only
by matmul accumulation order): LayerNorm statistics in fp32 (eps 1e-6); both matmuls take operands
in the activation dtype and accumulate in fp32 (`preferred_element_type`); bias adds and the
activation in fp32; the residual sum `x + gate * f` in fp32, rounded once to x.dtype.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

LN_EPS = 1e-6


class GatedFFNParams(NamedTuple):
    """Block parameters (a pytree). ln_scale/ln_bias [D], w1 [D, H], b1 [H], w2 [H, D], b2 [D]."""

    ln_scale: jax.Array
    ln_bias: jax.Array
    w1: jax.Array
    b1: jax.Array
    w2: jax.Array
    b2: jax.Array


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    # tanh-approximate GELU: it lowers on every backend (Mosaic, Triton, XLA) without erf.
    "gelu": lambda a: jax.nn.gelu(a, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


def as_params(params: Any) -> GatedFFNParams:
    """Accept a dict, a dataclass / object with the six attributes, or a GatedFFNParams."""
    if isinstance(params, GatedFFNParams):
        return params
    fields = GatedFFNParams._fields
    try:
        if isinstance(params, dict):
            return GatedFFNParams(**{k: params[k] for k in fields})
        return GatedFFNParams(**{k: getattr(params, k) for k in fields})
    except (KeyError, AttributeError) as e:
        raise ValueError(f"params must provide {fields} (dict keys or attributes); missing {e}") from None


def validate(x: jax.Array, gate: jax.Array, params: Any, activation: str) -> GatedFFNParams:
    """Check shapes/dtypes of the block inputs; return the params as a GatedFFNParams."""
    p = as_params(params)
    if x.ndim != 3:
        raise ValueError(f"x must be [B, T, D], got shape {x.shape}")
    if x.dtype not in (jnp.float32, jnp.bfloat16):
        raise ValueError(f"x must be float32 or bfloat16, got {x.dtype}; cast it first")
    B, T, D = x.shape
    if gate.shape != (B, T):
        raise ValueError(f"gate must be [B, T] = {(B, T)} matching x, got {gate.shape}")
    if not jnp.issubdtype(gate.dtype, jnp.floating):
        raise ValueError(f"gate must be a float array (0 = frame off), got {gate.dtype}")
    if p.w1.ndim != 2 or p.w1.shape[0] != D:
        raise ValueError(f"params.w1 must be [D={D}, H], got {p.w1.shape}")
    H = p.w1.shape[1]
    want = {"ln_scale": (D,), "ln_bias": (D,), "b1": (H,), "w2": (H, D), "b2": (D,)}
    for name, shape in want.items():
        got = getattr(p, name).shape
        if got != shape:
            raise ValueError(f"params.{name} must have shape {shape} (D={D}, H={H}), got {got}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    return p


def flops_per_row(d: int, h: int) -> int:
    """Multiply-add FLOPs of the two matmuls for one frame: 2 * (D*H + H*D)."""
    return 2 * (d * h + h * d)


def layer_norm_rows(x: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
    """LayerNorm over the last axis, statistics and result in fp32."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    return (xf - mean) * jax.lax.rsqrt(var + LN_EPS) * scale.astype(jnp.float32) + bias.astype(
        jnp.float32)


def ffn_rows(x: jax.Array, p: GatedFFNParams, activation: str) -> jax.Array:
    """The branch FFN(LN(x)) for rows x [..., D]; fp32 result (see the module docstring)."""
    cdt = x.dtype
    h = layer_norm_rows(x, p.ln_scale, p.ln_bias).astype(cdt)
    a = jnp.dot(h, p.w1.astype(cdt), preferred_element_type=jnp.float32) + p.b1.astype(jnp.float32)
    a = ACTIVATIONS[activation](a).astype(cdt)
    return jnp.dot(a, p.w2.astype(cdt), preferred_element_type=jnp.float32) + p.b2.astype(
        jnp.float32)


def combine_rows(x: jax.Array, g: jax.Array, f: jax.Array) -> jax.Array:
    """x + g * f in fp32, rounded once to x.dtype; g has x's shape without the last axis."""
    return (x.astype(jnp.float32) + g.astype(jnp.float32)[..., None] * f).astype(x.dtype)


def gated_ffn_dense(x: jax.Array, gate: jax.Array, params: Any, *,
                    activation: str = "gelu") -> tuple[jax.Array, jax.Array]:
    """Dense reference: branch on every frame, multiplied by the gate.

    Returns (y [B, T, D] in x.dtype, executed_flops float32 scalar = B*T * flops_per_row).
    """
    p = validate(x, gate, params, activation)
    B, T, D = x.shape
    # Flattened to [B*T, D] rows like the compaction path, so a benchmark compares the same 2-D
    # matmul program with and without skipping (XLA CPU's fusion of the 3-D form was slower).
    xf = x.reshape(B * T, D)
    y = combine_rows(xf, gate.reshape(B * T), ffn_rows(xf, p, activation)).reshape(B, T, D)
    return y, jnp.float32(B * T * flops_per_row(D, p.w1.shape[1]))
