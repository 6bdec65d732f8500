"""How the kernel tests run the Pallas kernels: interpreted (default, any machine) or compiled.

    JAXSLU_PALLAS_INTERPRET=1 (default)  every Pallas kernel (TPU and GPU flavours) runs under
                                         Pallas' interpreter on the host backend (CPU CI);
    JAXSLU_PALLAS_INTERPRET=0            on a GPU (TPU) machine the GPU (TPU) kernels are compiled
                                         by Triton (Mosaic) and run for real; tests of the other
                                         flavour and interpreter-only checks are skipped.
                                         `scripts/device_check.py` runs the kernel tests this way.

Compiled on a GPU, fp32 `dot`s run as TF32 on tensor cores (the kernels' and XLA's default
precision, see kernels/rnnt/pallas_gpu.py), so tests of the fused joint and of the gated block
use `DOT_TOL` there: TF32 keeps 10 mantissa bits (unit roundoff 2^-11 ~ 4.9e-4 per operand);
with J <= 32 / D <= 256 terms of magnitude <= 1 per dot, a logit or FFN output is off by
<= ~5e-3 absolute (observed bounds are for an H100 and are to be confirmed by device_check).
"""
from __future__ import annotations

import os

import jax
import pytest

INTERPRET = os.environ.get("JAXSLU_PALLAS_INTERPRET", "1").strip().lower() not in ("0", "false",
                                                                                   "no")
PLATFORM = jax.default_backend()

if not INTERPRET and PLATFORM not in ("gpu", "tpu"):
    raise RuntimeError(f"JAXSLU_PALLAS_INTERPRET=0 needs a GPU or TPU backend, this one is "
                       f"{PLATFORM!r}")


def pallas_backends() -> list[str]:
    """Kernel flavours ("tpu", "gpu") this session tests."""
    return ["gpu", "tpu"] if INTERPRET else [PLATFORM]


interpret_only = pytest.mark.skipif(not INTERPRET, reason="interpreter-only check "
                                    "(JAXSLU_PALLAS_INTERPRET=0 compiles the kernels instead)")

COMPILED = not INTERPRET

# Tolerances for tests whose compiled kernels contain fp32 dots (see the module docstring). On a
# TPU the MXU's default precision for fp32 is one bf16 pass (8 mantissa bits, 2^-9): 4x looser
# (unverified here: no TPU was available).
DOT_TOL = (dict(loss_rtol=1e-2, grad_atol=5e-2, value_atol=2e-2, value_rtol=2e-2)
           if PLATFORM == "tpu" else
           dict(loss_rtol=2e-3, grad_atol=1e-2, value_atol=5e-3, value_rtol=5e-3))
