"""Large allocations on Linux CPU: glibc malloc with transparent huge pages.

XLA:CPU allocates its buffers with malloc; large blocks come from fresh mmap'd pages, so a
program that writes a new large array on every call (a gradient the size of the logits, the
activations of a training step) spends much of its time in page faults. With
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (glibc >= 2.35) malloc asks the kernel for transparent
huge pages (THP "madvise" mode, the common default; THP "always" does it for every process),
one fault per 2 MiB instead of per 4 KiB. Measured on the project's shared 2-core machine, RNN-T
loss + gradient (XLA) at (16, 200, 50, 1000), two back-to-back runs of benchmarks/rnnt_loss.py
differing only in `--malloc`: median 0.70 s with 160 k minor page faults per call -> 0.34 s with
1.2 k (results/benchmarks/rnnt_loss_cpu_4k_pages.json, rnnt_loss_cpu_hugepages.json; the tables
in docs/benchmarks.md are generated from them). glibc reads the variable at process start only,
so `reexec_with_malloc_hugepages()` sets it and re-executes the current program.

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 jaxslu train --config ... --workdir ...
"""
from __future__ import annotations

import os
import sys

HUGETLB = "glibc.malloc.hugetlb=1"


def thp_mode() -> str:
    """The kernel's transparent-huge-page setting, e.g. 'always [madvise] never'."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def malloc_hugepages_enabled() -> bool:
    return HUGETLB in os.environ.get("GLIBC_TUNABLES", "")


def reexec_with_malloc_hugepages() -> None:
    """Re-execute this Python program with the tunable set (no-op if set already or not Linux).
    Call it before any heavy work: the process image is replaced."""
    if malloc_hugepages_enabled() or not sys.platform.startswith("linux"):
        return
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    env = dict(os.environ, GLIBC_TUNABLES=":".join(t for t in (tunables, HUGETLB) if t))
    os.execve(sys.executable, [sys.executable, *sys.argv], env)
