"""Transducer losses for researchers and loss terms: re-exported from jaxslu.kernels.rnnt.api."""
from jaxslu.kernels.rnnt.api import PallasFallbackWarning, fused_rnnt_loss, rnnt_loss

__all__ = ["rnnt_loss", "fused_rnnt_loss", "PallasFallbackWarning"]
