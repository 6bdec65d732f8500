"""RNN-T (transducer) loss kernels: `rnnt_loss` and `fused_rnnt_loss` (see api.py).

reference.py is the pure-JAX autodiff definition; xla.py / fused.py the fast XLA paths;
pallas_tpu.py / pallas_gpu.py the Pallas kernels (dispatched to lazily by api.py, on TPU / GPU
only where they compile for the call's shapes); validity.py the one behaviour every
implementation shares for invalid lengths and labels.
"""
from jaxslu.kernels.rnnt.api import PallasFallbackWarning, fused_rnnt_loss, rnnt_loss

__all__ = ["rnnt_loss", "fused_rnnt_loss", "PallasFallbackWarning"]
