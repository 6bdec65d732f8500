"""Provenance of a measurement: what ran, from which commit, on which machine, with which versions.

Every results JSON under results/benchmarks/ is written by the program that measured it through
`write_results`, which adds:

    command      the exact command line ("python benchmarks/rnnt_loss.py --quick ...")
    commit       the git HEAD the measured tree is based on, and `commit_dirty`: the tracked
                 files that differed from it when the measurement ran (so a reader can tell
                 whether the numbers belong to that commit or to the working tree on top of it)
    machine      CPU model, cores (total and usable), memory, OS, transparent-huge-page mode,
                 load averages before and after, and the accelerator: JAX's backend and
                 devices, `nvidia-smi`'s GPU names and driver where present
    versions     python, jax, jaxlib, the CUDA plugin, numpy, flax, optax, torch, torchaudio,
                 triton, warp-rnnt, k2, ... : every one that is installed (read from the package
                 metadata, nothing is imported for it)
    started_utc / finished_utc

`timing_stats` summarizes timed calls as median, min, max, quartiles and IQR; the benchmarks
require at least `MIN_TIMED_CALLS` (10) timed calls after warm-up.

Only the standard library is imported at module level; jax is inspected only if the caller has
imported it already.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

MIN_TIMED_CALLS = 10
REPO_ROOT = Path(__file__).resolve().parents[1]

# Distributions whose versions a measurement may depend on (reported when installed).
PACKAGES = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "jax-cuda12-pjrt",
            "jax-cuda13-pjrt", "libtpu", "numpy", "scipy", "flax", "optax", "orbax-checkpoint",
            "torch", "torchaudio", "triton", "warp-rnnt", "warp_rnnt", "k2", "jaxslu")


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def command_line(argv: Sequence[str] | None = None, script: str | None = None) -> str:
    """The command that ran, as a user would type it from the repository root."""
    argv = list(sys.argv if argv is None else argv)
    prog = script or (argv[0] if argv else "")
    try:
        prog = os.path.relpath(os.path.abspath(prog), REPO_ROOT)
    except ValueError:
        pass
    if prog.endswith(".py"):
        prog = f"python {prog}"
    return " ".join([prog] + [shlex.quote(a) for a in argv[1:]]).strip()


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.rstrip() if out.returncode == 0 else None  # keep porcelain's leading space


def git_state() -> dict[str, Any]:
    """{"commit": HEAD sha, "commit_dirty": tracked files that differ from HEAD}; outside a git
    checkout the commit is $JAXSLU_COMMIT or "unknown (...)" and commit_dirty None."""
    sha = _git("rev-parse", "HEAD")
    sha = sha.strip() if sha else None
    if sha is None:  # e.g. a copied tree without .git: the caller may say which commit it is
        return {"commit": os.environ.get("JAXSLU_COMMIT") or "unknown (not a git checkout)",
                "commit_dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no") or ""
    dirty = sorted(line[3:] for line in status.splitlines() if line.strip())
    return {"commit": sha, "commit_dirty": dirty}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _thp_mode() -> str:
    try:
        return Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    except OSError:
        return "unknown"


def _nvidia_smi() -> list[dict[str, str]] | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    gpus = []
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            gpus.append({"name": parts[0], "driver": parts[1], "memory": parts[2]})
    return gpus


def accelerator() -> dict[str, Any]:
    """JAX's backend and devices (if jax is imported) and nvidia-smi's GPUs (if present)."""
    info: dict[str, Any] = {}
    jax = sys.modules.get("jax")
    if jax is not None:
        try:
            devices = jax.devices()
            info["jax_backend"] = jax.default_backend()
            info["jax_devices"] = [getattr(d, "device_kind", str(d)) for d in devices]
        except Exception as e:  # noqa: BLE001 - report, never fail a measurement on it
            info["jax_error"] = f"{type(e).__name__}: {e}"
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                info["torch_cuda_devices"] = [torch.cuda.get_device_name(i)
                                              for i in range(torch.cuda.device_count())]
                info["torch_cuda"] = torch.version.cuda
        except Exception as e:  # noqa: BLE001
            info["torch_error"] = f"{type(e).__name__}: {e}"
    gpus = _nvidia_smi()
    if gpus:
        info["nvidia_smi"] = gpus
    return info


def machine(load_before: Sequence[float] | None = None) -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_bytes": _mem_total_bytes(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "transparent_hugepage": _thp_mode(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "load_avg_before": list(load_before) if load_before is not None else None,
        "load_avg_after": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "accelerator": accelerator(),
    }


def versions(packages: Iterable[str] = PACKAGES) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    torch = sys.modules.get("torch")
    if torch is not None and getattr(torch.version, "cuda", None):
        out["torch_cuda"] = torch.version.cuda
    return out


def timing_stats(times_s: Sequence[float]) -> dict[str, Any]:
    """median, min, max, quartiles and IQR (seconds) of the timed calls, plus every call."""
    ts = sorted(float(t) for t in times_s)
    if not ts:
        raise ValueError("timing_stats needs at least one timed call")

    def quantile(q: float) -> float:  # linear interpolation (numpy's default)
        pos = q * (len(ts) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(ts) - 1)
        return ts[lo] + (ts[hi] - ts[lo]) * (pos - lo)

    q1, med, q3 = quantile(0.25), quantile(0.5), quantile(0.75)
    return {"n": len(ts), "median_s": med, "min_s": ts[0], "max_s": ts[-1], "q1_s": q1,
            "q3_s": q3, "iqr_s": q3 - q1, "times_s": [float(t) for t in times_s]}


def check_timed_calls(n: int, what: str = "--repeats") -> None:
    if n < MIN_TIMED_CALLS:
        raise SystemExit(f"{what}={n}: a reported timing needs at least {MIN_TIMED_CALLS} timed "
                         "calls after warm-up")


class Recorder:
    """Collects provenance around a measurement: create before, `write` after.

        rec = Recorder(argv)             # records start time, load average, git state
        ... measure ...
        rec.write(path, payload)         # payload + provenance -> JSON (atomic rename)
    """

    def __init__(self, argv: Sequence[str] | None = None, script: str | None = None):
        self.command = command_line(argv, script)
        self.started = now_utc()
        self.load_before = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        self.git = git_state()

    def provenance(self) -> dict[str, Any]:
        return {"command": self.command, **self.git, "machine": machine(self.load_before),
                "versions": versions(), "started_utc": self.started, "finished_utc": now_utc()}

    def write(self, path: str | os.PathLike, payload: dict[str, Any]) -> Path:
        out = {**self.provenance(), **payload}
        return write_json(path, out)


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_jsonable) + "\n")
    os.replace(tmp, path)
    return path


def _jsonable(x):
    try:
        import numpy as np
        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, np.ndarray):
            return x.tolist()
    except ImportError:
        pass
    return str(x)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file (read in 1 MiB chunks), to name the exact data or checkpoint measured."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


REQUIRED_FIELDS = ("command", "commit", "machine", "versions")


def missing_fields(record: dict[str, Any]) -> list[str]:
    """Provenance fields a results JSON lacks (empty list: complete)."""
    missing = [k for k in REQUIRED_FIELDS if not record.get(k)]
    m = record.get("machine") or {}
    for k in ("cpu", "cores", "accelerator"):
        if k not in m:
            missing.append(f"machine.{k}")
    v = record.get("versions") or {}
    for k in ("jax", "jaxlib"):
        if k not in v:
            missing.append(f"versions.{k}")
    return missing


def replace_generated_block(doc: str | os.PathLike, begin: str, end: str, body: str) -> Path:
    """Rewrite the text between the `begin` and `end` marker lines of `doc` with `body` (the
    tables a docs script generates from results JSON); the prose around them is kept."""
    doc = Path(doc)
    text = doc.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{doc} lacks the generated-block markers {begin!r} ... {end!r}")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{begin}\n{body}\n{end}{tail}")
    return doc
