"""Colab notebooks stay paired with their plain-text versions, and the plain-text versions run.

The pairing check compares every code cell of each .ipynb with the cells of its .py (jupytext
percent format), so an edit to one without the other fails. The run checks are `slow`: they
install the package and train/benchmark briefly."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

COLAB = Path(__file__).resolve().parents[2] / "colab"
NOTEBOOKS = sorted(COLAB.glob("*.ipynb"))


def _py_cells(text: str) -> list[str]:
    body = re.split(r"^# %%.*$", text, flags=re.M)[1:]
    heads = re.findall(r"^# %%(.*)$", text, flags=re.M)
    return [b.strip("\n") for h, b in zip(heads, body) if "[markdown]" not in h]


def test_every_notebook_is_paired_and_in_sync():
    assert {p.stem for p in NOTEBOOKS} == {p.stem for p in COLAB.glob("*.py")}
    assert {"quickstart", "rnnt_loss_benchmark"} <= {p.stem for p in NOTEBOOKS}
    for nb in NOTEBOOKS:
        cells = ["".join(c["source"]).strip("\n") for c in json.loads(nb.read_text())["cells"]
                 if c["cell_type"] == "code"]
        assert cells == _py_cells(nb.with_suffix(".py").read_text()), nb.name


@pytest.mark.slow
@pytest.mark.parametrize("name,env", [
    ("quickstart.py", {"JAXSLU_NOTEBOOK_STEPS": "30"}),
    ("rnnt_loss_benchmark.py", {"BENCH_VOCABS": "64,128", "BENCH_REPEATS": "1"}),
])
def test_plain_text_notebook_runs(name, env, tmp_path):
    env = {**os.environ, "MPLBACKEND": "Agg", **env}
    out = subprocess.run([sys.executable, str(COLAB / name)], cwd=COLAB.parent, env=env,
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
