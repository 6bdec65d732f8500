"""Microbenchmark: the encoder's convolutional subsampling, XLA convolution vs 3x3 patches (im2col).

    python benchmarks/subsampling_conv.py [--reps 11] [--shapes "16,400,80,64;16,400,80,144"]
                                          [--out results/benchmarks/subsampling_conv_<backend>.json]

Each shape B,T,M,C is a batch of B rows of T feature frames with M mel bins through a factor-4
`ConvSubsampling` with C channels (two 3x3 stride-2 convolutions + ReLU and the projection to 144
dims). Timed: forward + backward (value_and_grad of a scalar of the outputs w.r.t. the input and
every parameter), jitted, warmed up, then called alternately (conv, patches, conv, ...) so load
from other processes hits both alike; each call ends with `block_until_ready`. Reported: median,
min, max, IQR of the wall times and the median process CPU time, plus the largest difference of
the outputs and gradients between the two. `conv_impl="auto"` takes the patches on CPU
(jaxslu/layers/subsampling.py) because of this benchmark's CPU figures.
"""
from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxslu import provenance
from jaxslu.layers.subsampling import ConvSubsampling

IMPLS = ("conv", "patches")
DEFAULT_SHAPES = "16,400,80,64;16,400,80,144"


def _time_call(fn, *args) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0, time.process_time() - c0


def _grad_fn(impl: str, mels: int, channels: int, dim: int):
    sub = ConvSubsampling(mels, dim, factor=4, channels=channels, conv_impl=impl,
                          rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(sub)

    def loss(params, feats, lengths):
        y, _ = nnx.merge(graphdef, params)(feats, lengths)
        return jnp.mean(jnp.square(y))

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1))), params


def run_shape(B: int, T: int, M: int, C: int, dim: int, reps: int, warmup: int) -> dict:
    rng = np.random.default_rng(0)
    feats = jnp.asarray(rng.normal(size=(B, T, M)), jnp.float32)
    lengths = jnp.asarray(rng.integers(T // 2, T + 1, B), jnp.int32)
    fns = {impl: _grad_fn(impl, M, C, dim) for impl in IMPLS}
    outs = {impl: fn(params, feats, lengths) for impl, (fn, params) in fns.items()}
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
               for a, b in zip(jax.tree.leaves(outs["conv"]), jax.tree.leaves(outs["patches"])))
    for _ in range(warmup):
        for fn, params in fns.values():
            jax.block_until_ready(fn(params, feats, lengths))
    times = {impl: [] for impl in IMPLS}
    for _ in range(reps):
        for impl, (fn, params) in fns.items():
            times[impl].append(_time_call(fn, params, feats, lengths))
    stats = {}
    for impl, ts in times.items():
        wall = provenance.timing_stats([t[0] for t in ts])
        stats[impl] = {**{k.replace("_s", "_ms"): round(v * 1e3, 3) for k, v in wall.items()
                          if k.endswith("_s") and k != "times_s"},
                       "n": wall["n"], "times_ms": [round(t[0] * 1e3, 3) for t in ts],
                       "median_cpu_ms": round(float(np.median([t[1] for t in ts])) * 1e3, 3)}
    speedup = stats["conv"]["median_ms"] / stats["patches"]["median_ms"]
    print(f"B={B} T={T} M={M} C={C}: conv {stats['conv']['median_ms']:.1f} ms, patches "
          f"{stats['patches']['median_ms']:.1f} ms ({speedup:.2f}x), max |diff| {diff:.2e}",
          flush=True)
    return {"shape": {"B": B, "T": T, "M": M, "C": C, "dim": dim, "factor": 4},
            "implementations": stats, "speedup_conv_over_patches": round(speedup, 3),
            "max_abs_diff_outputs_and_grads": diff}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default=DEFAULT_SHAPES, help="B,T,M,C;B,T,M,C;...")
    ap.add_argument("--dim", type=int, default=144, help="projection (encoder) width")
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default=None,
                    help="default results/benchmarks/subsampling_conv_<backend>.json")
    args = ap.parse_args(argv)
    provenance.check_timed_calls(args.reps, "--reps")
    try:
        shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes.split(";")]
        if any(len(s) != 4 or min(s) < 1 for s in shapes):
            raise ValueError
    except ValueError:
        ap.error(f"--shapes must be ';'-separated B,T,M,C of positive ints, got {args.shapes!r}")
    recorder = provenance.Recorder(None if argv is None else [sys.argv[0], *argv])
    backend = jax.default_backend()
    records = [run_shape(*s, args.dim, args.reps, args.warmup) for s in shapes]
    out = args.out or f"results/benchmarks/subsampling_conv_{backend}.json"
    recorder.write(out, {
        "benchmark": "subsampling_conv: ConvSubsampling factor 4, conv vs patches "
                     "(fp32, forward + backward)",
        "backend": backend,
        "timing": {"warmup": args.warmup, "reps": args.reps, "order": "alternating conv/patches",
                   "stat": "median/min/max/IQR of per-call wall time with block_until_ready; "
                           "median process CPU time"},
        "results": records,
    })
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
