"""Microbenchmark: gated FFN block, skipping implementations vs the dense multiply-by-zero reference.

    python benchmarks/gated_block.py [--reps 21] [--out results/benchmarks/gated_block_<backend>.json]

For each gate density, every implementation is jitted (the XLA compaction with the host-side
128-row capacity bucket of that gate, a static argument; on a GPU / TPU also the Pallas kernel,
implementation="pallas"), warmed up (`--warmup` calls), then timed alternately (dense, xla,
pallas, dense, ...) so load from other processes on a shared machine hits all alike; each call
ends with `block_until_ready`. Reported per implementation: median, min, max, quartiles and IQR
of the `--reps` (>= 10) wall times, the median process CPU time (all threads; on a shared CPU it
is less sensitive than wall time to waiting for a core), and the executed FLOPs.
The JSON carries jaxslu/provenance.py's command, commit, machine and versions.
"""
from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np

from jaxslu import provenance
from jaxslu.kernels.gated_block.api import gated_ffn
from jaxslu.kernels.gated_block.reference import gated_ffn_dense
from jaxslu.kernels.gated_block.specs import (BENCH_DENSITIES, BENCH_SHAPE, GatedBlockShape,
                                              make_inputs)
from jaxslu.kernels.gated_block.xla import bucket_capacity, gated_ffn_xla


def _time_call(fn, *args) -> tuple[float, float]:
    """(wall seconds, process CPU seconds summed over all threads) of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0, time.process_time() - c0


def _stats(ts: list[tuple[float, float]]) -> dict:
    wall = provenance.timing_stats([t[0] for t in ts])
    ms = {k.replace("_s", "_ms"): round(v * 1e3, 4) for k, v in wall.items()
          if k.endswith("_s") and k != "times_s"}
    return {**ms, "n": wall["n"], "times_ms": [round(t[0] * 1e3, 4) for t in ts],
            "median_cpu_ms": round(float(np.median([t[1] for t in ts])) * 1e3, 3)}


def implementations(backend: str) -> list[str]:
    return ["dense", "xla"] + (["pallas"] if backend in ("gpu", "tpu") else [])


def run(shape: GatedBlockShape, densities, pattern: str, reps: int, warmup: int,
        impls: list[str], pallas_interpret: bool = False) -> list[dict]:
    """Time every implementation at each density; returns one record per density."""
    records = []
    for density in densities:
        x, gate, p = make_inputs(shape, density, pattern)
        capacity = bucket_capacity(gate)
        fns = {"dense": jax.jit(gated_ffn_dense),
               "xla": jax.jit(lambda x_, g_, p_, c=capacity: gated_ffn_xla(x_, g_, p_, capacity=c)),
               "pallas": jax.jit(lambda x_, g_, p_: gated_ffn(
                   x_, g_, p_, implementation="pallas", interpret=pallas_interpret or None))}
        rec: dict = {"density": density, "active_frames": int(np.count_nonzero(np.asarray(gate))),
                     "capacity_rows": capacity}
        y_dense, flops_dense = fns["dense"](x, gate, p)
        live = []
        for name in impls:
            try:
                y, flops = fns[name](x, gate, p)
            except Exception as e:  # noqa: BLE001 - a kernel that fails is a result
                rec[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
                continue
            rec[name] = {"executed_gflop": float(flops) / 1e9,
                         "flop_ratio": round(float(flops) / float(flops_dense), 4),
                         "max_abs_diff_vs_dense": float(np.abs(np.asarray(y, np.float32)
                                                               - np.asarray(y_dense,
                                                                            np.float32)).max())}
            live.append(name)
        for _ in range(warmup):
            for name in live:
                _time_call(fns[name], x, gate, p)
        times: dict[str, list] = {name: [] for name in live}
        for _ in range(reps):
            for name in live:
                times[name].append(_time_call(fns[name], x, gate, p))
        for name in live:
            rec[name].update(_stats(times[name]))
        base = rec["dense"]
        for name in live:
            if name != "dense":
                rec[name]["speedup_vs_dense"] = round(base["median_ms"] / rec[name]["median_ms"], 3)
                rec[name]["cpu_time_ratio"] = round(rec[name]["median_cpu_ms"]
                                                    / base["median_cpu_ms"], 3)
        records.append(rec)
        print(f"density {density:4.2f}: " + "  ".join(
            f"{n} {rec[n]['median_ms']:8.2f} ms" for n in live), flush=True)
    return records


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default=f"{BENCH_SHAPE.B},{BENCH_SHAPE.T},{BENCH_SHAPE.D},{BENCH_SHAPE.H}",
                    help="B,T,D,H")
    ap.add_argument("--densities", default=",".join(str(d) for d in BENCH_DENSITIES))
    ap.add_argument("--pattern", default="random", choices=["random", "ragged", "prefix"])
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default=None, help="default results/benchmarks/gated_block_<backend>.json")
    ap.add_argument("--pallas-interpret", action="store_true",
                    help="add the Pallas column interpreted on CPU (tests this program; the "
                         "timings mean nothing)")
    args = ap.parse_args(argv)
    provenance.check_timed_calls(args.reps, "--reps")
    try:
        B, T, D, H = (int(v) for v in args.shape.split(","))
    except ValueError:
        ap.error(f"--shape must be four comma-separated ints B,T,D,H, got {args.shape!r}")
    recorder = provenance.Recorder(None if argv is None else [sys.argv[0], *argv])
    backend = jax.default_backend()
    impls = implementations(backend)
    if args.pallas_interpret and "pallas" not in impls:
        impls.append("pallas")
    shape = GatedBlockShape(B, T, D, H)
    densities = [float(d) for d in args.densities.split(",")]
    records = run(shape, densities, args.pattern, args.reps, args.warmup, impls,
                  args.pallas_interpret)
    out = args.out or f"results/benchmarks/gated_block_{backend}.json"
    recorder.write(out, {
        "benchmark": "gated_block: " + ", ".join(impls) + " (fp32, forward)",
        "shape": {"B": B, "T": T, "D": D, "H": H, "dtype": "float32", "gate_pattern": args.pattern},
        "timing": {"warmup": args.warmup, "reps": args.reps,
                   "order": "alternating " + "/".join(impls),
                   "stat": "median/min/max/IQR of per-call wall time with block_until_ready; "
                           "median process CPU time"},
        "implementations": impls,
        "results": records,
    })
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
