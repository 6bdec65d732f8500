"""scripts/device_check.py: the plan and its imports check out on a CPU host (CI), and the
script refuses to "check" a machine without an accelerator. The real run needs a GPU / TPU."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "device_check.py"


def _run(*args, timeout=240):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_dry_run_prints_the_plan_and_imports_ok():
    out = _run("--dry-run")
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    for step in ("install", "kernel_tests", "rnnt_bench", "gated_bench", "train"):
        assert step in text, step
    assert "JAXSLU_PALLAS_INTERPRET=0" in text
    assert "benchmarks/rnnt_loss.py --repeats 10" in text
    assert "pip install --no-deps" in text
    assert "import jaxslu.kernels.rnnt.pallas_gpu: ok" in text
    assert text.rstrip().endswith("dry run ok")


def test_refuses_to_run_without_an_accelerator():
    import jax

    if jax.default_backend() != "cpu":
        return  # on an accelerator host the real run is the check
    out = _run("--no-install")
    assert out.returncode == 2
    assert "no GPU/TPU backend" in out.stderr


def test_exec_launcher_runs_modules_with_the_kernels_package():
    """The fallback used when `pip install -e .` is impossible maps jaxslu.kernels itself."""
    out = _run("--exec", "-m", "jaxslu.kernels.rnnt.specs", timeout=120)
    assert out.returncode == 0, out.stderr
