"""Benchmark: RNN-T loss + gradient, every JAX implementation and the peers in one process.

    python benchmarks/rnnt_loss.py --quick                    # two small shapes (seconds)
    python benchmarks/rnnt_loss.py                            # the four issue shapes (minutes)
    python benchmarks/rnnt_loss.py --shapes "16,200,50,1000;1,2000,200,256"   # B,T,U,V[,J]
    python benchmarks/rnnt_loss.py --no-torch                 # JAX only

Runs on whatever jax's default backend is. On a GPU it also times the Pallas kernels and runs
torchaudio's `rnnt_loss` on CUDA (and warp-rnnt / k2 when importable) in the same process
(`scripts/device_check.py` does that); on CPU the peers run on the CPU.

For each shape (B, T, U, V) of kernels/rnnt/specs.py (full-length sequences, fp32 logits):
  time    loss + gradient: `--warmup` untimed calls, then `--repeats` (>= 10) timed calls, each
          ended by block_until_ready (JAX), torch.cuda.synchronize (CUDA) or backward() returning
          (CPU); reported as median, min, max, quartiles and IQR (jaxslu/provenance.py), every call
          kept in `times_s`. `time_s` is the median (kept for colab/rnnt_loss_benchmark.py).
            xla          jit(value_and_grad(rnnt_loss, implementation="xla")) on logits
                         [B, T, U+1, V]; the gradient is a fresh buffer each call.
            xla_donated  the same with the logits donated (the gradient reuses their buffer, as
                         when the logits are an intermediate of a training step); a fresh copy is
                         made outside the timed region.
            fused        jit(value_and_grad(fused_rnnt_loss, implementation="xla")) w.r.t.
                         encoder, predictor, weight, bias (joint dim J): it also computes the
                         joint, which the unfused timings do not.
            pallas, fused_pallas   (GPU / TPU only) the same with implementation="pallas"; a
                         kernel that fails to compile is recorded with its error, and
                         `dispatch` says what implementation=None chose for the shape.
            torchaudio   torchaudio.functional.rnnt_loss(reduction="sum") + backward(); warp_rnnt
                         (log_softmax + warp_rnnt.rnnt_loss) and k2 (k2.rnnt_loss) likewise when
                         importable (CUDA only).
  faults  minor page faults per call (getrusage), for the XLA columns: the fresh-buffer cost
          that glibc's 4 KiB pages put on a large new gradient (see --malloc).
  memory  JAX: XLA's compiled memory_analysis() of the jitted loss+grad:
          argument + output + temp - alias bytes (what the executable needs live at its peak).
          torch on CPU: peak resident-set growth during loss+backward (VmHWM reset through
          /proc/self/clear_refs before the call, minus the RSS before it) plus the logits, which
          are resident before the call; on CUDA: torch.cuda.max_memory_allocated during the call.
          "unfused_joint_loss" is the compiled peak of act(enc+pred) @ W + b followed by the XLA
          loss, gradients to all four (for context).
  agreement  xla vs torchaudio (and vs pallas): max relative error of per-sequence losses, max
          absolute error of the gradients; fused vs xla on the materialized joint.
  accuracy  sequence 0 of xla and torchaudio against a float64 numpy computation
          (`float64_loss_and_grad`): both run the lattice in fp32, whose rounding grows with
          |log P| and the lattice size, so this shows which side an xla/torch gap comes from.

The JSON (rewritten after every shape, so an interrupted run keeps what it measured) carries the
provenance of jaxslu/provenance.py: command, commit, machine, versions.
"""
from __future__ import annotations

import os

# Several frameworks share one GPU in this process: JAX must not grab 75% of it up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxslu import provenance  # noqa: E402
from jaxslu.hugepages import reexec_with_malloc_hugepages  # noqa: E402
from jaxslu.kernels.rnnt import api as rnnt_api  # noqa: E402
from jaxslu.kernels.rnnt import fused as rnnt_fused  # noqa: E402
from jaxslu.kernels.rnnt import fused_rnnt_loss, rnnt_loss, specs  # noqa: E402


def _compiled_peak(fn, *args) -> int:
    m = jax.jit(fn).lower(*args).compile().memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_calls(call, repeats: int, setup=None, warmup: int = 1) -> dict:
    """Timing statistics of call(setup()) over `repeats` timed calls after `warmup` untimed ones;
    also the median number of minor page faults per timed call."""
    for _ in range(warmup):
        call(setup() if setup else None)
    times, faults = [], []
    for _ in range(repeats):
        arg = setup() if setup else None
        f0 = _minor_faults()
        t0 = time.perf_counter()
        call(arg)
        times.append(time.perf_counter() - t0)
        faults.append(_minor_faults() - f0)
    stats = provenance.timing_stats(times)
    stats["time_s"] = stats["median_s"]
    stats["minor_faults_per_call"] = statistics.median(faults)
    return stats


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


def _error(e: BaseException) -> dict:
    text = str(e).strip()
    return {"error": f"{type(e).__name__}: {text.splitlines()[0][:500] if text else ''}"}


def _rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b)) / np.abs(np.asarray(b))))


def _torch_peers(torch, taf, torch_device: str) -> dict:
    """name -> loss_fn(x, labels, tl, ul) returning the summed loss, for the importable peers."""
    peers = {"torchaudio": lambda x, lab, tl, ul: taf.rnnt_loss(x, lab, tl, ul, blank=0,
                                                                 reduction="sum")}
    if torch_device == "cuda":
        try:
            import warp_rnnt

            def warp(x, lab, tl, ul):
                return warp_rnnt.rnnt_loss(torch.log_softmax(x, -1), lab, tl, ul, blank=0,
                                           reduction="sum", gather=True)
            peers["warp_rnnt"] = warp
        except ImportError:
            pass
        try:
            import k2

            def k2_loss(x, lab, tl, ul):
                zeros = torch.zeros_like(tl)
                boundary = torch.stack([zeros, zeros, ul, tl], 1).to(torch.int64)
                return k2.rnnt_loss(logits=x, symbols=lab.to(torch.int64), termination_symbol=0,
                                    boundary=boundary, reduction="sum")
            peers["k2"] = k2_loss
        except ImportError:
            pass
    return peers


JAX_COLUMNS = ("xla", "xla_donated", "fused", "pallas", "fused_pallas")


def bench_shape(shape: specs.RnntShape, repeats: int, torch_mod=None, taf=None, *,
                warmup: int = 1, torch_device: str = "cpu", accuracy: bool = True,
                columns=JAX_COLUMNS, pallas_interpret: bool = False) -> dict:
    """Measure one shape (see the module docstring); returns the JSON record. `columns`: the JAX
    implementations to time ("xla" always runs: the others are compared with it).
    pallas_interpret: also run the Pallas columns on CPU, interpreted (to test this program off
    an accelerator; such timings mean nothing)."""
    p = specs.make_problem(shape, ragged=False)
    logits_np = specs.make_logits(shape)
    lab, tl, ul = (jnp.asarray(a) for a in (p.labels, p.logit_lengths, p.label_lengths))
    backend = jax.default_backend()
    out: dict = {"shape": dict(B=shape.B, T=shape.T, U=shape.U, V=shape.V, J=shape.J),
                 "logits_bytes": int(logits_np.nbytes), "jax_backend": backend}

    pallas_kw = {"interpret": True} if pallas_interpret else {}
    run_pallas = backend in ("gpu", "tpu") or pallas_interpret

    def loss_sum(x, implementation="xla"):
        kw = pallas_kw if implementation == "pallas" else {}
        return rnnt_loss(x, lab, tl, ul, reduction="sum", implementation=implementation, **kw)

    vg = jax.value_and_grad(loss_sum)
    logits = jax.device_put(logits_np)
    f = jax.jit(vg)
    stats = time_calls(lambda _: jax.block_until_ready(f(logits)), repeats, warmup=warmup)
    peak = _compiled_peak(vg, logits)
    out["xla"] = {**stats, "peak_bytes": peak, "peak_over_logits": peak / logits_np.nbytes}
    per_seq = np.asarray(rnnt_loss(logits, lab, tl, ul, reduction="none", implementation="xla"))
    grad = np.asarray(f(logits)[1])
    acc: dict = {}
    if accuracy:
        ll64, g64 = float64_loss_and_grad(logits_np[0], p.labels[0])
        acc = {"xla_loss_rel_err": float(abs(per_seq[0] - ll64) / abs(ll64)),
               "xla_grad_max_abs_err": float(np.max(np.abs(grad[0] - g64)))}
        out["accuracy_vs_float64_row0"] = acc

    if "xla_donated" in columns:
        fd = jax.jit(vg, donate_argnums=0)
        stats = time_calls(lambda x: jax.block_until_ready(fd(x)), repeats, warmup=warmup,
                           setup=lambda: jax.block_until_ready(jax.device_put(logits_np)))
        m = fd.lower(jax.ShapeDtypeStruct(logits_np.shape, jnp.float32)).compile()
        m = m.memory_analysis()
        peak_d = int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                     - m.alias_size_in_bytes)
        out["xla_donated"] = {**stats, "peak_bytes": peak_d,
                              "peak_over_logits": peak_d / logits_np.nbytes}

    if run_pallas and "pallas" in columns:
        try:
            fp = jax.jit(jax.value_and_grad(lambda x: loss_sum(x, "pallas")))
            stats = time_calls(lambda _: jax.block_until_ready(fp(logits)), repeats, warmup=warmup)
            per_p = np.asarray(rnnt_loss(logits, lab, tl, ul, reduction="none",
                                         implementation="pallas", **pallas_kw))
            out["pallas"] = {**stats, "loss_max_rel_err_vs_xla": _rel(per_p, per_seq),
                             "grad_max_abs_err_vs_xla": float(np.max(np.abs(
                                 np.asarray(fp(logits)[1]) - grad)))}
        except Exception as e:  # noqa: BLE001 - a kernel that fails is a result, not a crash
            out["pallas"] = _error(e)
        rnnt_api.clear_dispatch_cache()
        jax.block_until_ready(rnnt_loss(logits, lab, tl, ul))
        out["dispatch"] = {"rnnt_loss": [v or "pallas" for v in
                                         rnnt_api.dispatch_verdicts().values()]}
    logits = None  # free the device copy before the fused columns
    if "fused" not in columns and "fused_pallas" not in columns:
        if torch_mod is not None:
            out.update(_bench_torch(torch_mod, taf, torch_device, logits_np, p, repeats, warmup,
                                    out, per_seq, grad, acc, accuracy))
        return out

    # Fused joint + loss (and, for context, the peak of the same thing unfused).
    joint = [jnp.asarray(a) for a in specs.make_joint(shape)]

    def fused_sum(*a, implementation="xla"):
        kw = pallas_kw if implementation == "pallas" else {}
        return fused_rnnt_loss(*a, lab, tl, ul, reduction="sum", implementation=implementation,
                               **kw)

    def unfused_joint_sum(enc, pred, w, b):
        h = jnp.tanh(enc[:, :, None, :] + pred[:, None, :, :])
        return rnnt_loss(h @ w + b, lab, tl, ul, reduction="sum", implementation="xla")

    fvg = jax.value_and_grad(fused_sum, argnums=(0, 1, 2, 3))
    ff = jax.jit(fvg)
    stats = time_calls(lambda _: jax.block_until_ready(ff(*joint)), repeats, warmup=warmup)
    peak_f = _compiled_peak(fvg, *joint)
    peak_uj = _compiled_peak(jax.value_and_grad(unfused_joint_sum, argnums=(0, 1, 2, 3)), *joint)
    out["fused"] = {**stats, "peak_bytes": peak_f, "peak_over_logits": peak_f / logits_np.nbytes,
                    "peak_over_xla_unfused": peak_f / peak, "tile_v": rnnt_fused.DEFAULT_TILE_V}
    out["unfused_joint_loss"] = {"peak_bytes": peak_uj, "fused_peak_over_this": peak_f / peak_uj}
    fused_per = np.asarray(fused_rnnt_loss(*joint, lab, tl, ul, reduction="none",
                                           implementation="xla"))
    unf_per = np.asarray(jax.jit(lambda e, pr, w, b: rnnt_loss(
        jnp.tanh(e[:, :, None, :] + pr[:, None, :, :]) @ w + b, lab, tl, ul, reduction="none",
        implementation="xla"))(*joint))
    out["agreement_fused_vs_xla"] = {"loss_max_rel_err": _rel(fused_per, unf_per)}
    if run_pallas and "fused_pallas" in columns:
        try:
            ffp = jax.jit(jax.value_and_grad(lambda *a: fused_sum(*a, implementation="pallas"),
                                             argnums=(0, 1, 2, 3)))
            stats = time_calls(lambda _: jax.block_until_ready(ffp(*joint)), repeats,
                               warmup=warmup)
            per_fp = np.asarray(fused_rnnt_loss(*joint, lab, tl, ul, reduction="none",
                                                implementation="pallas", **pallas_kw))
            out["fused_pallas"] = {**stats, "loss_max_rel_err_vs_fused_xla": _rel(per_fp,
                                                                                  fused_per)}
        except Exception as e:  # noqa: BLE001
            out["fused_pallas"] = _error(e)
    joint = None

    if torch_mod is not None:
        out.update(_bench_torch(torch_mod, taf, torch_device, logits_np, p, repeats, warmup,
                                out, per_seq, grad, acc, accuracy))
    return out


def _bench_torch(torch, taf, device, logits_np, p, repeats, warmup, out, per_seq, grad, acc,
                 accuracy) -> dict:
    res: dict = {}
    cuda = device == "cuda"
    x = torch.from_numpy(logits_np).to(device).requires_grad_(True)
    t_lab = torch.from_numpy(p.labels).to(device)
    t_tl = torch.from_numpy(p.logit_lengths).to(device)
    t_ul = torch.from_numpy(p.label_lengths).to(device)
    for name, loss_fn in _torch_peers(torch, taf, device).items():
        def run(_=None, loss_fn=loss_fn):
            x.grad = None
            loss_fn(x, t_lab, t_tl, t_ul).backward()
            if cuda:
                torch.cuda.synchronize()

        try:
            stats = time_calls(run, repeats, warmup=warmup)
        except Exception as e:  # noqa: BLE001 - a peer that fails is recorded, not fatal
            res[name] = _error(e)
            continue
        x.grad = None
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            run()
            peak = int(torch.cuda.max_memory_allocated())
        else:
            growth = _torch_peak_growth(run)
            peak = None if growth is None else growth + logits_np.nbytes
        res[name] = {**stats, "device": device, "peak_bytes": peak,
                     "peak_over_logits": None if peak is None else peak / logits_np.nbytes,
                     "threads": torch.get_num_threads()}
        res[f"speedup_xla_vs_{name}"] = stats["median_s"] / out["xla"]["median_s"]
        if "xla_donated" in out:
            res[f"speedup_xla_donated_vs_{name}"] = (stats["median_s"]
                                                     / out["xla_donated"]["median_s"])
        if isinstance(out.get("pallas"), dict) and "median_s" in out["pallas"]:
            res[f"speedup_pallas_vs_{name}"] = stats["median_s"] / out["pallas"]["median_s"]
        if name == "torchaudio":
            with torch.no_grad():
                per_t = taf.rnnt_loss(x.detach(), t_lab, t_tl, t_ul, blank=0,
                                      reduction="none").cpu().numpy()
            x.grad = None
            run()
            g_t = x.grad.cpu().numpy()
            if accuracy:
                ll64, g64 = float64_loss_and_grad(logits_np[0], p.labels[0])
                acc["torchaudio_loss_rel_err"] = float(abs(per_t[0] - ll64) / abs(ll64))
                acc["torchaudio_grad_max_abs_err"] = float(np.max(np.abs(g_t[0] - g64)))
            res["agreement_xla_vs_torchaudio"] = {
                "loss_max_rel_err": _rel(per_seq, per_t),
                "grad_max_abs_err": float(np.max(np.abs(grad - g_t)))}
    x.grad = None
    x = None
    if cuda:
        torch.cuda.empty_cache()
    return res


def parse_shapes(text: str) -> tuple[specs.RnntShape, ...]:
    shapes = []
    for part in text.split(";"):
        vals = [int(v) for v in part.replace(" ", "").split(",") if v]
        if len(vals) not in (4, 5):
            raise ValueError(f"shape {part!r}: give B,T,U,V or B,T,U,V,J")
        shapes.append(specs.RnntShape(*vals))
    return tuple(shapes)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="two small shapes only")
    ap.add_argument("--shapes", default=None, help='e.g. "16,200,50,1000;1,2000,200,256"')
    ap.add_argument("--repeats", type=int, default=provenance.MIN_TIMED_CALLS,
                    help=f"timed calls per measurement (>= {provenance.MIN_TIMED_CALLS})")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls before the timed ones")
    ap.add_argument("--no-torch", action="store_true", help="skip torchaudio and the other peers")
    ap.add_argument("--columns", default=",".join(JAX_COLUMNS),
                    help="JAX implementations to time (xla always runs), e.g. xla,xla_donated")
    ap.add_argument("--torch-device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="auto: cuda when JAX runs on a GPU and torch sees one, else cpu")
    ap.add_argument("--no-accuracy", action="store_true",
                    help="skip the float64 check of sequence 0 (slow for long lattices)")
    ap.add_argument("--out", default=None,
                    help="default results/benchmarks/rnnt_loss_<backend>[_hugepages].json")
    ap.add_argument("--pallas-interpret", action="store_true",
                    help="run the Pallas columns interpreted on CPU (tests this program; the "
                         "timings mean nothing)")
    ap.add_argument("--malloc", choices=("default", "hugepages"), default="default",
                    help="hugepages: re-run this process with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 "
                         "so glibc's malloc backs large blocks with transparent huge pages "
                         "(what a kernel with THP 'always' does anyway); applies to every "
                         "peer in the run")
    args = ap.parse_args(argv)
    provenance.check_timed_calls(args.repeats)
    if args.malloc == "hugepages":
        reexec_with_malloc_hugepages()
    recorder = provenance.Recorder(None if argv is None else [sys.argv[0], *argv])

    torch_mod = taf = None
    if not args.no_torch:
        try:
            import torch as torch_mod
            import torchaudio.functional as taf
        except ImportError as e:
            sys.exit(f"torchaudio is not importable ({e}); install the bench extra "
                     "(see benchmarks/README.md) or pass --no-torch")
    backend = jax.default_backend()
    torch_device = args.torch_device
    if torch_device == "auto":
        torch_device = ("cuda" if torch_mod is not None and backend == "gpu"
                        and torch_mod.cuda.is_available() else "cpu")
    out = args.out or (f"results/benchmarks/rnnt_loss_{backend}"
                       f"{'_hugepages' if args.malloc == 'hugepages' else ''}.json")
    shapes = (parse_shapes(args.shapes) if args.shapes else
              specs.QUICK_SHAPES if args.quick else specs.BENCHMARK_SHAPES)
    payload = {
        "benchmark": "rnnt_loss",
        "dtype": "float32",
        "repeats": args.repeats,
        "warmup": args.warmup,
        "torch_device": torch_device if torch_mod is not None else None,
        "method": {"time": "median / min / max / IQR of --repeats timed calls after --warmup "
                           "untimed ones; block_until_ready / cuda synchronize / backward()",
                   "faults": "median minor page faults per timed call (getrusage)",
                   "jax_memory": "compiled memory_analysis(): argument+output+temp-alias",
                   "torch_memory": "CPU: VmHWM growth (clear_refs reset) + logits bytes; "
                                   "CUDA: max_memory_allocated"},
        "results": [],
    }
    for shape in shapes:
        print(f"[rnnt_loss] {shape} ...", flush=True)
        r = bench_shape(shape, args.repeats, torch_mod, taf, warmup=args.warmup,
                        torch_device=torch_device, accuracy=not args.no_accuracy,
                        columns=tuple(c for c in args.columns.split(",") if c),
                        pallas_interpret=args.pallas_interpret)
        payload["results"].append(r)
        recorder.write(out, payload)
        print({k: (v.get("median_s", v.get("error")) if isinstance(v, dict) else v)
               for k, v in r.items() if k not in ("shape",)}, flush=True)
    print(f"[rnnt_loss] wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
