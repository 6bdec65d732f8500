"""Problem shapes and random inputs shared by the RNN-T tests and benchmarks.

`make_problem` draws labels, ragged lengths (the first row always full length, so every padded
dimension is exercised) and garbage in the label padding (labels past label_lengths are arbitrary
ints, which every implementation must ignore). Logits / joint inputs are drawn separately so a
benchmark can build only what it measures.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class RnntShape:
    """B sequences, T frames, U labels (U+1 predictor states), V classes, J joint dim."""
    B: int
    T: int
    U: int
    V: int
    J: int = 256

    @property
    def logits_elements(self) -> int:
        return self.B * self.T * (self.U + 1) * self.V

    def __str__(self) -> str:
        return f"B{self.B}_T{self.T}_U{self.U}_V{self.V}"


# The benchmark shapes of the issue: two typical batches, a large vocabulary, a long utterance.
BENCHMARK_SHAPES = (
    RnntShape(16, 200, 50, 1000),
    RnntShape(8, 150, 40, 500),
    RnntShape(4, 500, 100, 4096),
    RnntShape(1, 2000, 200, 256),
)
# Small shapes for `--quick` runs (seconds each).
QUICK_SHAPES = (
    RnntShape(4, 50, 12, 100, J=32),
    RnntShape(2, 80, 20, 512, J=64),
)


@dataclasses.dataclass
class Problem:
    """Integer inputs of one RNN-T problem (numpy, int32)."""
    labels: np.ndarray  # [B, U], garbage past label_lengths
    logit_lengths: np.ndarray  # [B], in [1, T]
    label_lengths: np.ndarray  # [B], in [0, U]


def make_problem(shape: RnntShape, *, seed: int = 0, blank: int = 0, ragged: bool = True
                 ) -> Problem:
    """Random labels (never blank at real positions) and lengths for `shape`."""
    rng = np.random.default_rng(seed)
    B, T, U, V = shape.B, shape.T, shape.U, shape.V
    if V < 2:
        raise ValueError(f"shape {shape}: V must be >= 2 (blank plus one label)")
    labels = rng.integers(0, V - 1, size=(B, U)).astype(np.int32)
    labels = labels + (labels >= blank)  # skip the blank id
    if ragged:
        logit_lengths = rng.integers(1, T + 1, size=B).astype(np.int32)
        label_lengths = rng.integers(0, U + 1, size=B).astype(np.int32)
        logit_lengths[0], label_lengths[0] = T, U
    else:
        logit_lengths = np.full(B, T, np.int32)
        label_lengths = np.full(B, U, np.int32)
    pad = np.arange(U)[None, :] >= label_lengths[:, None]
    labels = np.where(pad, rng.integers(-5, V + 5, size=(B, U)), labels).astype(np.int32)
    return Problem(labels, logit_lengths, label_lengths)


def make_logits(shape: RnntShape, *, seed: int = 0, scale: float = 1.0,
                dtype=np.float32) -> np.ndarray:
    """Random joint logits [B, T, U+1, V]."""
    rng = np.random.default_rng(seed + 1)
    out = rng.standard_normal((shape.B, shape.T, shape.U + 1, shape.V), dtype=np.float32)
    out *= scale
    return out.astype(dtype, copy=False)


def make_joint(shape: RnntShape, *, seed: int = 0, dtype=np.float32
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random (encoder [B,T,J], predictor [B,U+1,J], weight [J,V], bias [V]) for the fused loss.

    Weight is scaled by 1/sqrt(J) so the logits have unit-order spread, like a trained joint.
    """
    rng = np.random.default_rng(seed + 2)
    B, T, U, V, J = shape.B, shape.T, shape.U, shape.V, shape.J
    enc = rng.standard_normal((B, T, J), dtype=np.float32)
    pred = rng.standard_normal((B, U + 1, J), dtype=np.float32)
    weight = rng.standard_normal((J, V), dtype=np.float32) * (2.0 / np.sqrt(J))
    bias = rng.standard_normal(V, dtype=np.float32) * 0.1
    return tuple(x.astype(dtype, copy=False) for x in (enc, pred, weight, bias))
