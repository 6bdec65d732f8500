"""Shapes and input builders shared by the gated-block tests and benchmark.

Gate patterns (each a [B, T] float32 array of 0/1):
  "random"   i.i.d. Bernoulli(density) per frame;
  "ragged"   per row a different density, and active frames in runs (what an arbitrator that
             switches a block off for stretches of silence produces), so whole row tiles are off
             while others are partly on;
  "prefix"   the first round(density * T) frames of each row on (a length-mask-like pattern).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxslu.kernels.gated_block.reference import GatedFFNParams


@dataclasses.dataclass(frozen=True)
class GatedBlockShape:
    B: int
    T: int
    D: int
    H: int


# Tests: tiny, but D=128 / H=256 keep the Pallas TPU blocks (8, 128)-aligned.
TEST_SHAPE = GatedBlockShape(B=2, T=64, D=128, H=256)
# Benchmark: a realistic Conformer/Transformer-transducer encoder block on CPU.
BENCH_SHAPE = GatedBlockShape(B=8, T=512, D=256, H=1024)
BENCH_DENSITIES = (1.0, 0.75, 0.5, 0.25, 0.1)


def make_params(shape: GatedBlockShape, key: jax.Array, dtype=jnp.float32) -> GatedFFNParams:
    """Random block parameters with unit-scale activations (fan-in scaled weights)."""
    k = jax.random.split(key, 6)
    D, H = shape.D, shape.H
    return GatedFFNParams(
        ln_scale=(1.0 + 0.1 * jax.random.normal(k[0], (D,))).astype(dtype),
        ln_bias=(0.1 * jax.random.normal(k[1], (D,))).astype(dtype),
        w1=(jax.random.normal(k[2], (D, H)) / np.sqrt(D)).astype(dtype),
        b1=(0.1 * jax.random.normal(k[3], (H,))).astype(dtype),
        w2=(jax.random.normal(k[4], (H, D)) / np.sqrt(H)).astype(dtype),
        b2=(0.1 * jax.random.normal(k[5], (D,))).astype(dtype),
    )


def make_gate(shape: GatedBlockShape, density: float, pattern: str = "random",
              seed: int = 0) -> jax.Array:
    """A [B, T] float32 0/1 gate with about `density` of the frames on (see module docstring)."""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    rng = np.random.default_rng(seed)
    B, T = shape.B, shape.T
    if pattern == "random":
        g = rng.random((B, T)) < density
    elif pattern == "prefix":
        g = np.arange(T)[None, :] < round(density * T) * np.ones((B, 1))
    elif pattern == "ragged":
        g = np.zeros((B, T), bool)
        for b in range(B):
            row_density = density * (2.0 * b + 1) / B if B > 1 else density  # mean ~ density
            want = min(T, round(min(row_density, 1.0) * T))
            pos = 0
            while want > 0 and pos < T:
                run = min(want, int(rng.integers(1, 24)), T - pos)
                g[b, pos:pos + run] = True
                want -= run
                pos += run + int(rng.integers(0, 40))
    else:
        raise ValueError(f"pattern must be 'random', 'ragged' or 'prefix', got {pattern!r}")
    return jnp.asarray(g, jnp.float32)


def make_inputs(shape: GatedBlockShape, density: float, pattern: str = "random",
                dtype=jnp.float32, seed: int = 0) -> tuple[jax.Array, jax.Array, GatedFFNParams]:
    """(x [B, T, D] dtype, gate [B, T] float32, params in dtype) for a shape and gate density."""
    kx, kp = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (shape.B, shape.T, shape.D)).astype(dtype)
    return x, make_gate(shape, density, pattern, seed), make_params(shape, kp, dtype)
