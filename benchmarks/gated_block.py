"""CPU microbenchmark: gated FFN block by XLA compaction vs the dense multiply-by-zero reference.

For each gate density, both programs are jitted (the compaction with the host-side 128-row
capacity bucket of that gate, a static argument), warmed up, then timed alternately (dense, gated,
dense, gated, ...) so load from other processes on a shared machine hits both alike; each call ends
with `block_until_ready`, and the median wall time (and quartiles) are reported with the executed
FLOPs. The median process CPU time (all XLA threads) is recorded too: on a shared machine it is
less sensitive than wall time to waiting for a core, since it counts the work actually done.

    python benchmarks/gated_block.py [--reps 21] [--out results/benchmarks/gated_block_cpu.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

from jaxslu.kernels.gated_block.reference import gated_ffn_dense
from jaxslu.kernels.gated_block.specs import (BENCH_DENSITIES, BENCH_SHAPE, GatedBlockShape,
                                              make_inputs)
from jaxslu.kernels.gated_block.xla import bucket_capacity, gated_ffn_xla


def _time_call(fn, *args) -> tuple[float, float]:
    """(wall seconds, process CPU seconds summed over all threads) of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0, time.process_time() - c0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _stats(ts: list[tuple[float, float]]) -> dict:
    wall = np.asarray([t[0] for t in ts]) * 1e3
    cpu = np.asarray([t[1] for t in ts]) * 1e3
    q1, med, q3 = np.percentile(wall, [25, 50, 75])
    return {"median_ms": round(float(med), 3), "q1_ms": round(float(q1), 3),
            "q3_ms": round(float(q3), 3), "median_cpu_ms": round(float(np.median(cpu)), 3)}


def run(shape: GatedBlockShape, densities, pattern: str, reps: int, warmup: int) -> list[dict]:
    """Time dense vs gated at each density; returns one record per density."""
    dense = jax.jit(gated_ffn_dense)
    records = []
    for density in densities:
        x, gate, p = make_inputs(shape, density, pattern)
        capacity = bucket_capacity(gate)
        gated = jax.jit(lambda x_, g_, p_, c=capacity: gated_ffn_xla(x_, g_, p_, capacity=c))
        y_d, flops_d = dense(x, gate, p)
        y_g, flops_g = gated(x, gate, p)
        max_err = float(np.abs(np.asarray(y_d) - np.asarray(y_g)).max())
        for _ in range(warmup):
            _time_call(dense, x, gate, p)
            _time_call(gated, x, gate, p)
        td, tg = [], []
        for _ in range(reps):
            td.append(_time_call(dense, x, gate, p))
            tg.append(_time_call(gated, x, gate, p))
        sd, sg = _stats(td), _stats(tg)
        rec = {
            "density": density,
            "active_frames": int(np.count_nonzero(np.asarray(gate))),
            "capacity_rows": capacity,
            "dense": {**sd, "executed_gflop": float(flops_d) / 1e9},
            "gated_xla": {**sg, "executed_gflop": float(flops_g) / 1e9},
            "speedup": round(sd["median_ms"] / sg["median_ms"], 3),
            "cpu_time_ratio": round(sg["median_cpu_ms"] / sd["median_cpu_ms"], 3),
            "flop_ratio": round(float(flops_g) / float(flops_d), 4),
            "max_abs_diff_vs_dense": max_err,
        }
        records.append(rec)
        print(f"density {density:4.2f}: dense {sd['median_ms']:8.2f} ms ({sd['median_cpu_ms']:.1f} cpu)"
              f"  gated {sg['median_ms']:8.2f} ms ({sg['median_cpu_ms']:.1f} cpu)"
              f"  speedup {rec['speedup']:5.2f}x (cpu {rec['cpu_time_ratio']:.3f})"
              f"  FLOPs {rec['flop_ratio']:.3f} of dense", flush=True)
    return records


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default=f"{BENCH_SHAPE.B},{BENCH_SHAPE.T},{BENCH_SHAPE.D},{BENCH_SHAPE.H}",
                    help="B,T,D,H")
    ap.add_argument("--densities", default=",".join(str(d) for d in BENCH_DENSITIES))
    ap.add_argument("--pattern", default="random", choices=["random", "ragged", "prefix"])
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default="results/benchmarks/gated_block_cpu.json")
    args = ap.parse_args(argv)
    try:
        B, T, D, H = (int(v) for v in args.shape.split(","))
    except ValueError:
        ap.error(f"--shape must be four comma-separated ints B,T,D,H, got {args.shape!r}")
    shape = GatedBlockShape(B, T, D, H)
    densities = [float(d) for d in args.densities.split(",")]
    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    records = run(shape, densities, args.pattern, args.reps, args.warmup)
    result = {
        "benchmark": "gated_block (XLA compaction) vs dense reference, fp32, forward",
        "command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        "started_utc": started,
        "shape": {"B": B, "T": T, "D": D, "H": H, "dtype": "float32", "gate_pattern": args.pattern},
        "timing": {"warmup": args.warmup, "reps": args.reps, "order": "alternating dense/gated",
                   "stat": "median of per-call wall time with block_until_ready; median process CPU time"},
        "machine": {
            "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "jax": jax.__version__,
            "backend": jax.default_backend(), "devices": len(jax.devices()),
            "loadavg_before": [round(v, 2) for v in load_before],
            "loadavg_after": [round(v, 2) for v in os.getloadavg()],
            "note": "shared machine: other processes were running; see loadavg",
        },
        "results": records,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
