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
# # jaxslu quickstart
#
# Train the end-to-end SLU transducer briefly on the bundled Free Spoken Digit Dataset, transcribe
# a few recordings and look at a log-mel spectrogram. In Colab, set `JAXSLU_REPO` to the clone URL
# of jaxslu (or upload a checkout); locally, run this from a clone.

# %%
import os
import subprocess
import sys
from pathlib import Path

if not Path("jaxslu/cli.py").exists() and not Path("../jaxslu/cli.py").exists():
    repo = os.environ.get("JAXSLU_REPO")
    if not repo:
        raise SystemExit("set JAXSLU_REPO to the jaxslu repository URL (or run from a checkout)")
    subprocess.run(["git", "clone", "--depth", "1", repo, "jaxslu"], check=True)
    os.chdir("jaxslu")
elif Path("../jaxslu/cli.py").exists():
    os.chdir("..")
subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", ".[notebook]"], check=True)

# %% [markdown]
# ## Train briefly
# The `tiny` variant of `configs/fsdd_slu.py` is a small model; `STEPS` sets how long it trains
# (the full `jaxslu demo` trains the default variant).

# %%
import dataclasses

import jax

from jaxslu.config import load_config
from jaxslu.train.loop import train

STEPS = int(os.environ.get("JAXSLU_NOTEBOOK_STEPS", "300"))
cfg = load_config("configs/fsdd_slu.py", "ci", [f"train.steps={STEPS}"])
workdir = Path("runs/colab_quickstart")
result = train(cfg, workdir, progress=True)
print(f"{int(result.state.step)} steps in {result.seconds:.0f} s on {jax.devices()[0].platform}")

# %% [markdown]
# ## Evaluate and transcribe

# %%
from jaxslu.eval import evaluate_workdir, print_report
from jaxslu.slu import Transcriber

report = evaluate_workdir(workdir)["test"]
print_report(report)

transcriber = Transcriber.from_workdir(workdir)
files = sorted(Path("data/fsdd/recordings").glob("*_0.wav"))[:6]
for row in transcriber.transcribe_files(files):
    print(row)

# %% [markdown]
# ## A log-mel spectrogram (the model's own frontend)

# %%
import jax.numpy as jnp
import matplotlib.pyplot as plt

from jaxslu.audio.frontend import log_mel
from jaxslu.audio.io import load_resampled

audio = load_resampled(files[0], cfg.frontend.sample_rate)
feats, frames = log_mel(jnp.asarray(audio)[None], jnp.array([len(audio)]), cfg.frontend)
plt.figure(figsize=(8, 3))
plt.imshow(jnp.asarray(feats[0, : int(frames[0])]).T, origin="lower", aspect="auto")
plt.xlabel("frame (10 ms)")
plt.ylabel("mel bin")
plt.title(files[0].name)
plt.colorbar()
plt.tight_layout()
plt.savefig(workdir / "log_mel.png")
