"""One command that checks jaxslu on a GPU (or TPU) machine, in under five minutes.

    python scripts/device_check.py --dry-run            # print the plan, check imports (any host)
    python scripts/device_check.py                      # run it (on the accelerator machine)
    python scripts/device_check.py --wheels /path/to/wheels   # also install the missing packages

Steps (each a subprocess with its own time cap, all within `--budget-s`, default 290 s):

  install       `pip install --no-deps --no-build-isolation -e .` over the machine's own jax /
                flax / torch (nothing is upgraded or downloaded); with `--wheels DIR`, also
                `pip install --no-index --find-links DIR` the packages below that are missing.
                If the editable install is impossible (no setuptools), the later steps run
                through this script's `--exec` launcher, which maps `jaxslu.kernels` to
                kernels/ the way setup.py does.
  kernel_tests  the Pallas kernel tests compiled for real: JAXSLU_PALLAS_INTERPRET=0 pytest
                tests/kernels/{test_rnnt_pallas,test_rnnt_dispatch,test_gated_block}.py
                (Triton on a GPU, Mosaic on a TPU; interpreter-only tests are skipped).
  rnnt_bench    benchmarks/rnnt_loss.py: XLA, Pallas, fused, against torchaudio's CUDA
                rnnt_loss in the same process (warp-rnnt / k2 where importable), 10 timed calls
                per measurement -> results/benchmarks/rnnt_loss_<backend>.json
  gated_bench   benchmarks/gated_block.py: dense, XLA compaction, Pallas ->
                results/benchmarks/gated_block_<backend>.json
  train         a demo-sized training run: `python -m jaxslu.cli train --config
                configs/fsdd_slu.py --variant ci --set train.steps=60 ...` (the bundled FSDD
                recordings), whose last line reports the loss and step count.

Packages the machine may lack, and what needs them (imports elsewhere stay lazy, so the kernels
and benchmarks run without them):

  pytest, hypothesis       kernel_tests (hypothesis only for tests not run here)
  grain, soundfile         train (the data pipeline and WAV reading)
  tensorboardX             train (the metric writer)
  tqdm, einops             train (progress bar; models)
  tensorflow-datasets      only the TFDS data path (not run here)
  espeakng-loader          only speech synthesis (not run here)
  torch, torchaudio        rnnt_bench's peers (the JAX columns run without them)

A step whose packages are missing is recorded as "skipped" with the reason. The summary JSON
results/benchmarks/device_check_<device>.json records the device, the versions, every step's
command, status, duration and output tail; `scripts/render_benchmark_docs.py` renders it.
XLA_PYTHON_CLIENT_PREALLOCATE=false is set for every step, so JAX and torch share the GPU.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "benchmarks"

# module -> pip distribution name
OPTIONAL = {"pytest": "pytest", "hypothesis": "hypothesis", "grain": "grain",
            "soundfile": "soundfile", "tensorboardX": "tensorboardX", "tqdm": "tqdm",
            "einops": "einops", "tensorflow_datasets": "tensorflow-datasets",
            "espeakng_loader": "espeakng-loader", "torch": "torch", "torchaudio": "torchaudio",
            "sentencepiece": "sentencepiece", "orbax.checkpoint": "orbax-checkpoint",
            "optax": "optax", "flax": "flax", "scipy": "scipy"}
KERNEL_TESTS = ["tests/kernels/test_rnnt_pallas.py", "tests/kernels/test_rnnt_dispatch.py",
                "tests/kernels/test_gated_block.py"]


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def plan(args) -> list[dict]:
    """The steps: name, argv, needed modules, time cap (seconds)."""
    workdir = args.workdir or "/tmp/jaxslu_device_check_train"
    py = [sys.executable]
    return [
        {"name": "kernel_tests", "cap": 100, "needs": ["pytest", "jax"],
         "env": {"JAXSLU_PALLAS_INTERPRET": "0"},
         "argv": py + ["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *KERNEL_TESTS]},
        {"name": "rnnt_bench", "cap": 90, "needs": ["jax"],
         "argv": py + ["benchmarks/rnnt_loss.py", "--repeats", "10"]
         + ([] if _has("torchaudio") else ["--no-torch"])},
        {"name": "gated_bench", "cap": 25, "needs": ["jax"],
         "argv": py + ["benchmarks/gated_block.py", "--reps", "21"]},
        {"name": "train", "cap": 60,
         "needs": ["grain", "soundfile", "tensorboardX", "einops", "optax", "flax",
                   "orbax.checkpoint", "sentencepiece", "scipy"],
         "argv": py + ["-m", "jaxslu.cli", "train", "--config", "configs/fsdd_slu.py",
                       "--variant", "ci", "--workdir", workdir, "--no-progress",
                       "--set", "train.steps=60", "--set", "train.log_every=30",
                       "--set", "train.checkpoint_every=60"]},
    ]


def _env(extra: dict | None = None) -> dict:
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env


def _run(argv, cap: float, env=None) -> dict:
    t0 = time.perf_counter()
    try:
        out = subprocess.run(argv, cwd=ROOT, env=_env(env), capture_output=True, text=True,
                             timeout=cap)
        status = "passed" if out.returncode == 0 else "failed"
        text = out.stdout + out.stderr
        rc = out.returncode
    except subprocess.TimeoutExpired as e:
        status, rc = "timeout", None
        text = ((e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes)
                else (e.stdout or "")) + ((e.stderr or b"").decode(errors="replace")
                                          if isinstance(e.stderr, bytes) else (e.stderr or ""))
    return {"status": status, "returncode": rc, "seconds": round(time.perf_counter() - t0, 1),
            "output_tail": text[-4000:]}


def _probe_device() -> dict:
    """Device and versions, from a subprocess (this process never initializes a backend)."""
    code = ("import json, jax, jaxlib; d = jax.devices(); print(json.dumps({'backend': "
            "jax.default_backend(), 'devices': [x.device_kind for x in d], 'jax': jax.__version__, "
            "'jaxlib': jaxlib.__version__}))")
    res = _run([sys.executable, "-c", code], 120)
    try:
        return json.loads(res["output_tail"].strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": res["output_tail"][-1000:]}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "unknown"


def install(args, missing: list[str]) -> dict:
    """Editable install without dependencies; optional wheels; returns the step record."""
    cmds = [[sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", "."]]
    no_wheel = []
    if args.wheels and missing:
        files = [f.name.lower() for f in Path(args.wheels).iterdir()]
        dists, no_wheel = [], []
        for dist in sorted({OPTIONAL[m] for m in missing if m in OPTIONAL}):
            stem = re.sub(r"[-_.]+", "_", dist.lower())
            (dists if any(re.sub(r"[-_.]+", "_", f).startswith(stem + "_") for f in files)
             else no_wheel).append(dist)
        if dists:  # their dependencies must be in the folder too (pip resolves offline)
            cmds.append([sys.executable, "-m", "pip", "install", "--no-index", "--find-links",
                         str(args.wheels), *dists])
    record = {"name": "install", "command": " && ".join(shlex.join(c) for c in cmds),
              "status": "passed", "seconds": 0.0, "output_tail": "",
              "no_wheel_for": no_wheel}
    for c in cmds:
        r = _run(c, 120)
        record["seconds"] += r["seconds"]
        record["output_tail"] += r["output_tail"][-1500:]
        if r["status"] != "passed":
            record["status"] = "failed"
    check = _run([sys.executable, "-c", "import jaxslu.kernels.rnnt, jaxslu.provenance"], 60)
    record["launcher"] = check["status"] != "passed"
    if record["launcher"]:
        record["note"] = ("jaxslu.kernels is not importable after the install: the steps run "
                          "through `scripts/device_check.py --exec` (kernels/ mapped as setup.py "
                          "does)")
    return record


def exec_launcher(rest: list[str]) -> None:
    """`--exec -m module args...` or `--exec script.py args...` with jaxslu.kernels mapped."""
    sys.path.insert(0, str(ROOT))
    import jaxslu

    try:
        import jaxslu.kernels  # noqa: F401 - installed (editable or not): nothing to map
    except ImportError:
        spec = importlib.util.spec_from_file_location(
            "jaxslu.kernels", ROOT / "kernels" / "__init__.py",
            submodule_search_locations=[str(ROOT / "kernels")])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["jaxslu.kernels"] = mod
        jaxslu.kernels = mod
        spec.loader.exec_module(mod)
    if rest and rest[0] == "-m":
        sys.argv = [rest[1], *rest[2:]]
        runpy.run_module(rest[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = rest
        runpy.run_path(rest[0], run_name="__main__")


def dry_run(args) -> int:
    """Print the plan and check that what the steps import is importable here."""
    print("device_check plan (dry run: nothing is installed, compiled or timed)")
    print(f"  budget {args.budget_s} s; results to {RESULTS.relative_to(ROOT)}/")
    print(f"  install: pip install --no-deps --no-build-isolation -e .  (+ --wheels: "
          f"{args.wheels or 'not given'})")
    ok = True
    missing = [m for m in OPTIONAL if not _has(m)]
    for step in plan(args):
        lack = [m for m in step["needs"] if not _has(m)]
        env = " ".join(f"{k}={v}" for k, v in step.get("env", {}).items())
        print(f"  {step['name']:<13} cap {step['cap']:>3} s  {env + ' ' if env else ''}"
              f"{shlex.join(step['argv'])}"
              + (f"\n  {'':<13} would be skipped here: missing {', '.join(lack)}" if lack else ""))
    print("  summary -> results/benchmarks/device_check_<device>.json")
    # the project's own modules each step imports (no backend is initialized by importing)
    checks = ["jaxslu.kernels.rnnt.api", "jaxslu.kernels.rnnt.pallas_gpu",
              "jaxslu.kernels.rnnt.pallas_tpu", "jaxslu.kernels.gated_block.api",
              "jaxslu.kernels.gated_block.pallas_gpu", "jaxslu.provenance", "jaxslu.hugepages"]
    for name in checks:
        try:
            importlib.import_module(name)
            print(f"  import {name}: ok")
        except Exception as e:  # noqa: BLE001
            ok = False
            print(f"  import {name}: FAILED ({type(e).__name__}: {e})")
    for script in ("benchmarks/rnnt_loss.py", "benchmarks/gated_block.py",
                   "scripts/render_benchmark_docs.py"):
        spec = importlib.util.spec_from_file_location(Path(script).stem, ROOT / script)
        try:
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
            print(f"  import {script}: ok")
        except Exception as e:  # noqa: BLE001
            ok = False
            print(f"  import {script}: FAILED ({type(e).__name__}: {e})")
    for test in KERNEL_TESTS:
        if not (ROOT / test).exists():
            ok = False
            print(f"  {test}: MISSING")
    print("  optional packages missing here: " + (", ".join(OPTIONAL[m] for m in missing) or "none"))
    print("dry run " + ("ok" if ok else "FAILED"))
    return 0 if ok else 1


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--exec"]:
        exec_launcher(argv[1:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="print the plan and check imports")
    ap.add_argument("--wheels", type=Path, default=None,
                    help="folder of wheels for the missing packages (pip --no-index)")
    ap.add_argument("--no-install", action="store_true", help="skip the editable install")
    ap.add_argument("--budget-s", type=float, default=290.0, help="total time for all steps")
    ap.add_argument("--skip", default="", help="comma-separated steps to leave out")
    ap.add_argument("--workdir", default=None, help="training workdir (default under /tmp)")
    args = ap.parse_args(argv)
    if args.dry_run:
        return dry_run(args)

    t_start = time.perf_counter()
    sys.path.insert(0, str(ROOT))
    from jaxslu import provenance  # stdlib only: safe before any install

    recorder = provenance.Recorder([sys.argv[0], *argv])
    device = _probe_device()
    if device.get("backend") not in ("gpu", "tpu"):
        print(f"device_check: no GPU/TPU backend here ({device}); use --dry-run on this host",
              file=sys.stderr)
        return 2
    steps = []
    missing = [m for m in OPTIONAL if not _has(m)]
    launcher = False
    if not args.no_install:
        rec = install(args, missing)
        launcher = rec.get("launcher", False)
        steps.append(rec)
        print(f"[device_check] install: {rec['status']}", flush=True)
        missing = [m for m in OPTIONAL if not _has(m)]  # after --wheels
    skip = {s for s in args.skip.split(",") if s}
    for step in plan(args):
        left = args.budget_s - (time.perf_counter() - t_start)
        argv_ = step["argv"]
        if launcher:
            argv_ = [sys.executable, str(Path(__file__).resolve()), "--exec"] + argv_[1:]
        rec = {"name": step["name"], "command": shlex.join(argv_)}
        lack = [m for m in step["needs"] if not _has(m)]
        if step["name"] in skip:
            rec.update(status="skipped", reason="--skip", seconds=0.0)
        elif lack:
            rec.update(status="skipped", seconds=0.0,
                       reason=f"missing {', '.join(lack)} (give --wheels DIR with "
                              f"{', '.join(sorted({OPTIONAL.get(m, m) for m in lack}))})")
        elif left < 15:
            rec.update(status="skipped", reason="out of time budget", seconds=0.0)
        else:
            rec.update(_run(argv_, min(step["cap"], left), step.get("env")))
        steps.append(rec)
        print(f"[device_check] {step['name']}: {rec['status']} ({rec.get('seconds', 0)} s)"
              + (f" {rec.get('reason')}" if rec.get("reason") else ""), flush=True)
    name = device.get("devices", ["unknown"])[0]
    out = RESULTS / f"device_check_{_slug(name)}.json"
    recorder.write(out, {"benchmark": "device_check", "device": name, "device_probe": device,
                         "missing_packages": [OPTIONAL[m] for m in missing],
                         "steps": steps,
                         "total_seconds": round(time.perf_counter() - t_start, 1),
                         "results": [str(p.relative_to(ROOT)) for p in
                                     sorted(RESULTS.glob(f"*_{device['backend']}.json"))]})
    print(f"[device_check] wrote {out.relative_to(ROOT)}")
    return 0 if all(s["status"] in ("passed", "skipped") for s in steps) else 1


if __name__ == "__main__":
    raise SystemExit(main())
