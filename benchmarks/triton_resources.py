"""Offline Triton compile of every Pallas GPU kernel for sm_90 (H100 / H200), without a GPU.

    python benchmarks/triton_resources.py [--old REV] [--out results/benchmarks/triton_resources_sm90.json]

Each kernel is lowered by jax for CUDA on this host (`lowering_platforms=("cuda",)`), which
produces the Triton IR that jax hands to XLA's Triton; this program captures that IR and compiles
it with the `triton` package (it comes with torch) for `GPUTarget("cuda", 90, 32)` with the
kernel's own num_warps / num_stages, through Triton's layout, pipelining and LLVM passes to PTX,
then runs Triton's bundled `ptxas -v` for sm_90a. Recorded per kernel: shared memory per
program (Triton's allocation, against the 227 KiB = 232448 B an sm_90 program may use),
registers per thread (<= 255), spill stores / loads, and a status: "exceeds" (shared memory
or registers over the limit: the compile fails on the GPU), "spills" (compiles, but registers
spill to local memory: slower), "fits".

What it does not show: run time, and differences between this Triton release and the one built
into the GPU machine's jaxlib / XLA (layouts and pipelining may differ a little; the kernels'
budgets leave room for that). `--old REV` also compiles the kernels as they were at a git
revision, to show what the sizing fixes changed.
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxslu import provenance

ROOT = Path(__file__).resolve().parents[1]
SMEM_LIMIT = 232448  # bytes of shared memory one program may use on sm_90 (227 KiB)
MAX_REGS = 255

_CAPTURED: list[str] = []


def _install_capture():
    from jax._src.pallas.triton import pallas_call_registration as reg

    orig = reg.lowering.lower_jaxpr_to_triton_module

    def capture(*a, **k):
        res = orig(*a, **k)
        _CAPTURED.append(res.module.operation.get_asm(enable_debug_info=False))
        return res

    reg.lowering.lower_jaxpr_to_triton_module = capture


def triton_kernels(fn, *args) -> list[dict]:
    """[{name, num_warps, num_stages, ttir}] of the Triton kernels in jit(fn)(*args)."""
    _CAPTURED.clear()
    text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    params = re.findall(r'name = "(\w+)", num_stages = (\d+) : i32, num_warps = (\d+) : i32', text)
    if len(params) != len(_CAPTURED):
        raise RuntimeError(f"found {len(params)} Triton custom calls, captured {len(_CAPTURED)}")
    return [{"name": n, "num_stages": int(s), "num_warps": int(w), "ttir": ir}
            for (n, s, w), ir in zip(params, _CAPTURED)]


def compile_sm90(kernel: dict, workdir: Path) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget

    src = workdir / f"{kernel['name']}_{abs(hash(kernel['ttir'])) % 10**8}.ttir"
    src.write_text(kernel["ttir"])
    rec = {"kernel": kernel["name"], "num_warps": kernel["num_warps"],
           "num_stages": kernel["num_stages"]}
    try:
        k = triton.compile(str(src), target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": kernel["num_warps"],
                                    "num_stages": kernel["num_stages"]})
    except Exception as e:  # noqa: BLE001 - a kernel that does not compile is the finding
        text = str(e).strip()
        rec.update(status="compile_error", error=text.splitlines()[-1][:400] if text else
                   type(e).__name__)
        return rec
    rec["shared_bytes"] = int(k.metadata.shared)
    ptx = src.with_suffix(".ptx")
    ptx.write_text(k.asm["ptx"])
    ptxas = glob.glob(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                                   "ptxas"))[0]
    out = subprocess.run([ptxas, "-arch=sm_90a", "-v", str(ptx), "-o", str(ptx.with_suffix(".cubin"))],
                         capture_output=True, text=True)
    info = out.stdout + out.stderr
    regs = re.search(r"Used (\d+) registers", info)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", info)
    rec["registers"] = int(regs.group(1)) if regs else None
    rec["spill_store_bytes"] = int(spill.group(1)) if spill else None
    rec["spill_load_bytes"] = int(spill.group(2)) if spill else None
    fits = rec["shared_bytes"] <= SMEM_LIMIT and (rec["registers"] or 0) <= MAX_REGS
    if not fits or out.returncode != 0:
        rec["status"] = "exceeds"  # the compile fails on an sm_90 GPU
    else:  # compiles; spills to local memory cost speed, not correctness
        rec["status"] = "spills" if rec["spill_store_bytes"] else "fits"
    if out.returncode != 0:
        rec["ptxas_error"] = info.strip().splitlines()[-1][:400]
    return rec


def _load_old(rev: str, path: str, name: str):
    """The module at `path` as it was at git revision `rev` (imports resolve to today's tree)."""
    src = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    tmp = Path(tempfile.mkdtemp()) / f"{name}.py"
    tmp.write_text(src)
    spec = importlib.util.spec_from_file_location(name, tmp)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cases(old_rev: str | None):
    """(label, function, abstract args) of every kernel family at the benchmark shapes."""
    from jaxslu.kernels.gated_block import pallas_gpu as gated_gpu
    from jaxslu.kernels.gated_block.specs import BENCH_SHAPE, make_params
    from jaxslu.kernels.rnnt import pallas_common as pc
    from jaxslu.kernels.rnnt import pallas_gpu as rnnt_gpu

    sds = jax.ShapeDtypeStruct
    B, T, U, V, J = 16, 200, 50, 1000, 256
    labels = jnp.ones((B, U), jnp.int32)
    tl, ul = jnp.full((B,), T, jnp.int32), jnp.full((B,), U, jnp.int32)
    joint = (sds((B, T, J), jnp.float32), sds((B, U + 1, J), jnp.float32),
             sds((J, V), jnp.float32), sds((V,), jnp.float32))
    joint16 = tuple(sds(a.shape, jnp.bfloat16) for a in joint)
    out = []
    for dtype in (jnp.float32, jnp.bfloat16):
        out.append((f"rnnt_loss grad, logits {jnp.dtype(dtype).name} [16, 200, 51, 1000]",
                    jax.grad(lambda x: rnnt_gpu.rnnt_loss(x, labels, tl, ul, clamp=1.0).sum()),
                    (sds((B, T, U + 1, V), dtype),)))
    for tag, args in (("fp32", joint), ("bf16", joint16)):
        out.append((f"fused_rnnt_loss grad, {tag} joint J=256 V=1000",
                    jax.grad(lambda *p: rnnt_gpu.fused_rnnt_loss(*p, labels, tl, ul).sum(),
                             argnums=(0, 1, 2, 3)), args))
    for D, H in ((BENCH_SHAPE.D, BENCH_SHAPE.H), (512, 2048)):
        for dtype in (jnp.float32, jnp.bfloat16):
            shape = dict(B=8, T=512, D=D, H=H)
            p = jax.tree.map(lambda a: sds(a.shape, dtype),
                             make_params(BENCH_SHAPE.__class__(**shape), jax.random.key(0)))
            out.append((f"gated_ffn, D={D} H={H} {jnp.dtype(dtype).name}",
                        lambda x, g, p_: gated_gpu.gated_ffn_pallas_gpu(x, g, p_)[0],
                        (sds((8, 512, D), dtype), sds((8, 512), jnp.float32), p)))
    if old_rev:
        old_r = _load_old(old_rev, "kernels/rnnt/pallas_gpu.py", "old_rnnt_pallas_gpu")
        old_g = _load_old(old_rev, "kernels/gated_block/pallas_gpu.py", "old_gated_pallas_gpu")
        lab_ext = pc.extend_labels(labels, V)

        def old_joint_fwd(enc, pred, W, bias):
            return old_r.joint_logprobs(enc, pred, W, bias, lab_ext, tl, ul, blank=0,
                                        activation="tanh", interpret=False)

        def old_joint_bwd(enc, pred, W, bias):
            node = jnp.zeros((B, T, U + 1), jnp.float32)
            return old_r.joint_grad(enc, pred, W, bias, node, node, node, node, lab_ext, tl, ul,
                                    jnp.ones((B,), jnp.float32), blank=0, activation="tanh",
                                    interpret=False)

        out.append((f"[{old_rev}] fused joint forward, fp32 J=256 V=1000", old_joint_fwd, joint))
        out.append((f"[{old_rev}] fused joint backward, fp32 J=256 V=1000", old_joint_bwd, joint))
        for dtype in (jnp.float32, jnp.bfloat16):
            p = jax.tree.map(lambda a: sds(a.shape, dtype),
                             make_params(BENCH_SHAPE, jax.random.key(0)))
            out.append((f"[{old_rev}] gated_ffn, D=256 H=1024 {jnp.dtype(dtype).name}",
                        lambda x, g, p_: old_g.gated_ffn_pallas_gpu(x, g, p_)[0],
                        (sds((8, 512, 256), dtype), sds((8, 512), jnp.float32), p)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", default=None, help="also compile the kernels of this git revision")
    ap.add_argument("--out", default="results/benchmarks/triton_resources_sm90.json")
    args = ap.parse_args(argv)
    if importlib.util.find_spec("triton") is None:
        sys.exit("the `triton` package is needed (it comes with torch: pip install torch)")
    recorder = provenance.Recorder(None if argv is None else [sys.argv[0], *argv])
    _install_capture()
    workdir = Path(tempfile.mkdtemp(prefix="triton_sm90_"))
    records = []
    for label, fn, fargs in cases(args.old):
        kernels = triton_kernels(fn, *fargs)
        for k in kernels:
            rec = {"case": label, **compile_sm90(k, workdir)}
            records.append(rec)
            print(f"{label:<52} {rec['kernel']:<28} warps {rec['num_warps']} stages "
                  f"{rec['num_stages']}: {rec['status']:<13} smem {rec.get('shared_bytes', '-')} "
                  f"regs {rec.get('registers', '-')} spills {rec.get('spill_store_bytes', '-')}",
                  flush=True)
    recorder.write(args.out, {
        "benchmark": "triton_resources: offline Triton compile of the Pallas GPU kernels for sm_90",
        "target": {"arch": "sm_90 (H100 / H200)", "shared_limit_bytes": SMEM_LIMIT,
                   "max_registers_per_thread": MAX_REGS},
        "method": "jax lowering for cuda -> captured Triton IR -> triton.compile(GPUTarget('cuda', "
                  "90, 32), num_warps, num_stages) -> ptxas -v -arch=sm_90a",
        "results": records,
    })
    print(f"wrote {args.out}")
    return 0 if all(r["status"] != "exceeds" for r in records if not r["case"].startswith("[")) else 1


if __name__ == "__main__":
    raise SystemExit(main())
