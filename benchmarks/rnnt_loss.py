"""Benchmark: RNN-T loss + gradient on CPU, XLA unfused / XLA fused / torchaudio, in one run.

    python benchmarks/rnnt_loss.py            # the four issue shapes (several minutes)
    python benchmarks/rnnt_loss.py --quick    # two small shapes (seconds)

For each shape (B, T, U, V) of kernels/rnnt/specs.py (full-length sequences, fp32 logits):
  time    loss + gradient, one warm-up call, then the median of --repeats calls, each ended by
          block_until_ready (JAX) or after .backward() returns (torch).
            xla          jit(value_and_grad(rnnt_loss)) on logits [B, T, U+1, V]; the gradient
                         is a fresh buffer each call.
            xla_donated  the same with the logits donated (the gradient reuses their buffer, as
                         when the logits are an intermediate of a training step); a fresh copy is
                         made outside the timed region.
            fused        jit(value_and_grad(fused_rnnt_loss)) w.r.t. encoder, predictor, weight,
                         bias (joint dim J of the shape): it also computes the joint, which the
                         unfused timings do not.
            torchaudio   torchaudio.functional.rnnt_loss(reduction="sum") + backward().
  memory  JAX: XLA's compiled memory_analysis() of the jitted loss+grad:
          argument + output + temp - alias bytes (what the executable needs live at its peak).
          torch: peak resident-set growth during loss+backward (VmHWM reset through
          /proc/self/clear_refs before the call, minus the RSS before it) plus the logits, which
          are resident before the call. "unfused_joint_loss" is the compiled peak of
          act(enc+pred) @ W + b followed by the XLA loss, gradients to all four (for context).
  agreement  xla vs torchaudio: max relative error of per-sequence losses, max absolute error of
          the gradients; fused vs xla on the materialized joint: max relative loss error.
  accuracy  sequence 0 of xla and torchaudio against a float64 numpy computation
          (`float64_loss_and_grad`): both run the lattice in fp32, whose rounding grows with
          |log P| and the lattice size, so this shows which side an xla/torch gap comes from.

Writes JSON (command, machine, versions, load averages, results) to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxslu.kernels.rnnt import fused as rnnt_fused
from jaxslu.hugepages import reexec_with_malloc_hugepages, thp_mode
from jaxslu.kernels.rnnt import rnnt_loss, fused_rnnt_loss, specs


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _compiled_peak(fn, *args) -> int:
    m = jax.jit(fn).lower(*args).compile().memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)


def _median_time(call, repeats: int, setup=None) -> tuple[float, list[float]]:
    """Median wall time of call(setup()) over `repeats` runs after one warm-up."""
    times = []
    for i in range(repeats + 1):
        arg = setup() if setup else None
        t0 = time.perf_counter()
        call(arg)
        dt = time.perf_counter() - t0
        if i:
            times.append(dt)
    return statistics.median(times), times


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _torch_peak_growth(call) -> int | None:
    """Bytes of peak-RSS growth while running call() (Linux: VmHWM reset via clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    before = _rss_kb("VmRSS")
    call()
    return (_rss_kb("VmHWM") - before) * 1024


def float64_loss_and_grad(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Loss and gradient of ONE full-length sequence (logits [T, U+1, V]) in numpy float64.

    Row-by-row alpha / beta in float64 and the analytic posterior gradient: the ground truth the
    fp32 implementations are measured against (both accumulate fp32 rounding along the lattice,
    ~ulp(|log P|) per step, so long lattices differ from it by more than from each other).
    """
    z = logits.astype(np.float64)
    T, U1, _ = z.shape
    m = z.max(-1, keepdims=True)
    lp = z - (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))
    blank = lp[:, :, 0]
    emit = np.full((T, U1), -np.inf)
    emit[:, :-1] = lp[:, np.arange(U1 - 1), labels]
    alpha = np.full((T, U1), -np.inf)
    for t in range(T):
        prev = alpha[t - 1] + blank[t - 1] if t else np.where(np.arange(U1) == 0, 0.0, -np.inf)
        row = prev.copy()
        for u in range(1, U1):  # the label chain within a row is sequential
            row[u] = np.logaddexp(prev[u], row[u - 1] + emit[t, u - 1])
        alpha[t] = row
    ll = alpha[T - 1, U1 - 1] + blank[T - 1, U1 - 1]
    beta = np.full((T + 1, U1 + 1), -np.inf)
    for t in range(T - 1, -1, -1):
        nxt = beta[t + 1, :U1] + blank[t] if t < T - 1 else np.full(U1, -np.inf)
        if t == T - 1:
            nxt[U1 - 1] = blank[t, U1 - 1]
        row = nxt.copy()
        for u in range(U1 - 2, -1, -1):
            row[u] = np.logaddexp(nxt[u], row[u + 1] + emit[t, u])
        beta[t, :U1] = row
    after_blank = np.concatenate([beta[1:T, :U1], np.full((1, U1), -np.inf)], 0)
    after_blank[T - 1, U1 - 1] = 0.0
    blank_post = np.exp(alpha + blank + after_blank - ll)
    emit_post = np.exp(alpha + emit + np.concatenate([beta[:T, 1:U1], np.full((T, 1), -np.inf)], 1)
                       - ll)
    grad = np.exp(lp) * (blank_post + emit_post)[..., None]
    grad[:, :, 0] -= blank_post
    grad[:, np.arange(U1 - 1), labels] -= emit_post[:, :-1]
    return -ll, grad


def bench_shape(shape: specs.RnntShape, repeats: int, torch_mod, taf) -> dict:
    p = specs.make_problem(shape, ragged=False)
    logits_np = specs.make_logits(shape)
    lab, tl, ul = (jnp.asarray(a) for a in (p.labels, p.logit_lengths, p.label_lengths))
    out: dict = {"shape": dict(B=shape.B, T=shape.T, U=shape.U, V=shape.V, J=shape.J),
                 "logits_bytes": int(logits_np.nbytes)}

    def loss_sum(x):
        return rnnt_loss(x, lab, tl, ul, reduction="sum", implementation="xla")

    vg = jax.value_and_grad(loss_sum)
    logits = jax.device_put(logits_np)
    f = jax.jit(vg)
    med, times = _median_time(lambda _: jax.block_until_ready(f(logits)), repeats)
    peak = _compiled_peak(vg, logits)
    out["xla"] = {"time_s": med, "times_s": times, "peak_bytes": peak,
                  "peak_over_logits": peak / logits_np.nbytes}
    per_seq = np.asarray(rnnt_loss(logits, lab, tl, ul, reduction="none"))
    grad = np.asarray(f(logits)[1])
    del logits
    ll64, g64 = float64_loss_and_grad(logits_np[0], p.labels[0])
    acc = {"xla_loss_rel_err": float(abs(per_seq[0] - ll64) / abs(ll64)),
           "xla_grad_max_abs_err": float(np.max(np.abs(grad[0] - g64)))}
    out["accuracy_vs_float64_row0"] = acc

    fd = jax.jit(vg, donate_argnums=0)
    med, times = _median_time(lambda x: jax.block_until_ready(fd(x)), repeats,
                              setup=lambda: jax.block_until_ready(jax.device_put(logits_np)))
    m = fd.lower(jax.ShapeDtypeStruct(logits_np.shape, jnp.float32)).compile().memory_analysis()
    peak_d = int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                 - m.alias_size_in_bytes)
    out["xla_donated"] = {"time_s": med, "times_s": times, "peak_bytes": peak_d,
                          "peak_over_logits": peak_d / logits_np.nbytes}

    # Fused joint + loss (and, for context, the peak of the same thing unfused).
    joint = [jnp.asarray(a) for a in specs.make_joint(shape)]

    def fused_sum(*a):
        return fused_rnnt_loss(*a, lab, tl, ul, reduction="sum", implementation="xla")

    def unfused_joint_sum(enc, pred, w, b):
        h = jnp.tanh(enc[:, :, None, :] + pred[:, None, :, :])
        return rnnt_loss(h @ w + b, lab, tl, ul, reduction="sum", implementation="xla")

    fvg = jax.value_and_grad(fused_sum, argnums=(0, 1, 2, 3))
    ff = jax.jit(fvg)
    med, times = _median_time(lambda _: jax.block_until_ready(ff(*joint)), repeats)
    peak_f = _compiled_peak(fvg, *joint)
    peak_uj = _compiled_peak(jax.value_and_grad(unfused_joint_sum, argnums=(0, 1, 2, 3)), *joint)
    out["fused"] = {"time_s": med, "times_s": times, "peak_bytes": peak_f,
                    "peak_over_logits": peak_f / logits_np.nbytes,
                    "peak_over_xla_unfused": peak_f / peak,
                    "tile_v": rnnt_fused.DEFAULT_TILE_V}
    out["unfused_joint_loss"] = {"peak_bytes": peak_uj,
                                 "fused_peak_over_this": peak_f / peak_uj}
    fused_per = np.asarray(fused_rnnt_loss(*joint, lab, tl, ul, reduction="none"))
    unf_per = np.asarray(jax.jit(lambda e, pr, w, b: rnnt_loss(
        jnp.tanh(e[:, :, None, :] + pr[:, None, :, :]) @ w + b, lab, tl, ul,
        reduction="none"))(*joint))
    out["agreement_fused_vs_xla"] = {
        "loss_max_rel_err": float(np.max(np.abs(fused_per - unf_per) / np.abs(unf_per)))}
    del joint

    if torch_mod is not None:
        torch = torch_mod
        x = torch.from_numpy(logits_np).requires_grad_(True)
        t_lab = torch.from_numpy(p.labels)
        t_tl, t_ul = torch.from_numpy(p.logit_lengths), torch.from_numpy(p.label_lengths)

        def run(_=None):
            x.grad = None
            taf.rnnt_loss(x, t_lab, t_tl, t_ul, blank=0, reduction="sum").backward()

        med, times = _median_time(run, repeats)
        x.grad = None
        growth = _torch_peak_growth(run)
        t_peak = None if growth is None else growth + logits_np.nbytes
        per_t = taf.rnnt_loss(x.detach(), t_lab, t_tl, t_ul, blank=0,
                              reduction="none").numpy()
        out["torchaudio"] = {"time_s": med, "times_s": times, "peak_bytes": t_peak,
                             "peak_over_logits": None if t_peak is None
                             else t_peak / logits_np.nbytes,
                             "threads": torch.get_num_threads()}
        out["speedup_xla_vs_torchaudio"] = med / out["xla"]["time_s"]
        out["speedup_xla_donated_vs_torchaudio"] = med / out["xla_donated"]["time_s"]
        acc["torchaudio_loss_rel_err"] = float(abs(per_t[0] - ll64) / abs(ll64))
        acc["torchaudio_grad_max_abs_err"] = float(np.max(np.abs(x.grad.numpy()[0] - g64)))
        out["agreement_xla_vs_torchaudio"] = {
            "loss_max_rel_err": float(np.max(np.abs(per_seq - per_t) / np.abs(per_t))),
            "grad_max_abs_err": float(np.max(np.abs(grad - x.grad.numpy())))}
        x.grad = None
        del x
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="two small shapes only")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per measurement")
    ap.add_argument("--no-torch", action="store_true", help="skip torchaudio")
    ap.add_argument("--out", default="results/benchmarks/rnnt_loss_cpu.json")
    ap.add_argument("--malloc", choices=("default", "hugepages"), default="default",
                    help="hugepages: re-run this process with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 "
                         "so glibc's malloc backs large blocks with transparent huge pages "
                         "(what a kernel with THP 'always' does anyway); applies to every "
                         "peer in the run")
    args = ap.parse_args(argv)
    if args.malloc == "hugepages":
        reexec_with_malloc_hugepages()

    torch_mod = taf = None
    versions = {"jax": jax.__version__, "jaxlib": jax.lib.__version__, "numpy": np.__version__}
    if not args.no_torch:
        try:
            import torch as torch_mod
            import torchaudio
            import torchaudio.functional as taf
            versions.update(torch=torch_mod.__version__, torchaudio=torchaudio.__version__)
        except ImportError as e:
            sys.exit(f"torchaudio is not importable ({e}); install the bench extra "
                     "(see benchmarks/README.md) or pass --no-torch")

    shapes = specs.QUICK_SHAPES if args.quick else specs.BENCHMARK_SHAPES
    load_before = os.getloadavg()
    results = []
    for shape in shapes:
        print(f"[rnnt_loss] {shape} ...", flush=True)
        r = bench_shape(shape, args.repeats, torch_mod, taf)
        results.append(r)
        print(json.dumps({k: (v if not isinstance(v, dict) else
                              {kk: vv for kk, vv in v.items() if kk != "times_s"})
                          for k, v in r.items()}), flush=True)
    report = {
        "benchmark": "rnnt_loss",
        "command": "python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:]),
        "machine": {"cpu": _cpu_model(), "cores": os.cpu_count(),
                    "platform": platform.platform(), "jax_backend": jax.default_backend(),
                    "shared": "load averages before/after show whether other jobs shared the cores",
                    "transparent_hugepage": thp_mode(),
                    "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
                    "load_avg_before": load_before, "load_avg_after": os.getloadavg()},
        "versions": versions,
        "dtype": "float32",
        "repeats": args.repeats,
        "method": {"time": "median of repeats after one warm-up; block_until_ready / backward()",
                   "jax_memory": "compiled memory_analysis(): argument+output+temp-alias",
                   "torch_memory": "VmHWM growth (clear_refs reset) + logits bytes"},
        "results": results,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"[rnnt_loss] wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
