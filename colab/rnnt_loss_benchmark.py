# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # RNN-T loss microbenchmark: time and memory versus vocabulary size
#
# Runs `benchmarks/rnnt_loss.py`'s measurement (`bench_shape`: loss + gradient, warm-up, median
# of timed calls ended by `block_until_ready`, XLA's compiled peak memory) for the XLA path, the
# fused joint + loss, and torchaudio's `rnnt_loss` when torch/torchaudio are installed
# (`pip install -e ".[bench]"`), over a sweep of V, and plots both. On a Colab TPU or GPU
# runtime the same cells measure that backend (torchaudio then runs on the host CPU).

# %%
import os
import subprocess
import sys
from pathlib import Path

if not Path("benchmarks/rnnt_loss.py").exists():
    if Path("../benchmarks/rnnt_loss.py").exists():
        os.chdir("..")
    else:
        repo = os.environ.get("JAXSLU_REPO")
        if not repo:
            raise SystemExit("set JAXSLU_REPO to the jaxslu repository URL (or run from a checkout)")
        subprocess.run(["git", "clone", "--depth", "1", repo, "jaxslu"], check=True)
        os.chdir("jaxslu")
subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", ".[notebook]"], check=True)

# %%
import importlib.util

import jax

spec = importlib.util.spec_from_file_location("rnnt_bench", "benchmarks/rnnt_loss.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
from jaxslu.kernels.rnnt.specs import RnntShape

try:
    import torch
    import torchaudio.functional as taf
    torch.set_num_threads(os.cpu_count() or 1)
except ImportError:
    torch = taf = None
    print("torch/torchaudio not installed: measuring the JAX paths only")

# Small enough for a CPU runtime; raise B, T, U on an accelerator.
B, T, U = int(os.environ.get("BENCH_B", 4)), int(os.environ.get("BENCH_T", 100)), 25
VOCABS = [int(v) for v in os.environ.get("BENCH_VOCABS", "128,256,512,1024,2048").split(",")]
REPEATS = int(os.environ.get("BENCH_REPEATS", 3))
print(jax.devices())

rows = []
for V in VOCABS:
    r = bench.bench_shape(RnntShape(B, T, U, V, J=128), REPEATS, torch, taf)
    rows.append(r)
    print(V, {k: round(r[k]["time_s"], 4) for k in ("xla", "fused", "torchaudio") if k in r})

# %%
import matplotlib.pyplot as plt

fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
for key, label in (("xla", "XLA"), ("xla_donated", "XLA, logits donated"),
                   ("fused", "fused joint + loss"), ("torchaudio", "torchaudio")):
    if key in rows[0]:
        ax_t.plot(VOCABS, [r[key]["time_s"] for r in rows], "o-", label=label)
        if rows[0][key].get("peak_bytes"):
            ax_m.plot(VOCABS, [r[key]["peak_bytes"] / 2**20 for r in rows], "o-", label=label)
ax_m.plot(VOCABS, [r["logits_bytes"] / 2**20 for r in rows], "k--", label="logits size")
for ax, title in ((ax_t, "loss + gradient time (s)"), (ax_m, "peak memory (MiB)")):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("vocabulary size V")
    ax.set_title(f"{title}, B={B} T={T} U={U}")
    ax.legend()
plt.tight_layout()
Path("runs").mkdir(exist_ok=True)
plt.savefig("runs/rnnt_loss_vs_vocab.png")
