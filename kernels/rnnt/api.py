"""Public RNN-T loss entry points with input checks, reductions and backend dispatch.

    rnnt_loss(logits, labels, logit_lengths, label_lengths, *, blank=0, reduction="mean",
              fastemit_lambda=0.0, clamp=None, implementation=None, interpret=None) -> loss
    fused_rnnt_loss(encoder, predictor, weight, bias, labels, logit_lengths, label_lengths, *,
                    blank=0, reduction="mean", fastemit_lambda=0.0, activation="tanh",
                    implementation=None, interpret=None) -> loss

Conventions and values are torchaudio.functional.rnnt_loss's: logits [B, T, U+1, V] (fp32 or
bf16), labels int [B, U] padded with anything past label_lengths, lengths int [B];
reduction "none" -> [B], "sum", "mean" (mean over the batch). The fused variant computes
logits[b, t, u] = act(encoder[b, t] + predictor[b, u]) @ weight + bias inside the loss and never
materializes them; gradients flow to all four.

implementation:
  None      best for the backend: XLA on CPU; on TPU / GPU the Pallas kernel (pallas_tpu /
            pallas_gpu), falling back to XLA when it raises NotImplementedError or is missing.
  "xla"     kernels/rnnt/xla.py (or fused.py).
  "pallas"  the Pallas kernel of the backend; on CPU only with interpret=True (the TPU kernel in
            interpret mode, for tests). A request that cannot run raises a clear error.

Input checks: shapes, dtypes and options always; values (lengths in range, labels in [0, V) and
not blank) whenever the integer inputs are concrete (not traced under jit). Under jit,
out-of-range values cannot be detected; logit_lengths < 1 is the one infeasible input and gives
loss +inf with zero gradient (see xla.py).
"""
from __future__ import annotations

import importlib
from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np

from jaxslu.kernels.rnnt import fused as _fused
from jaxslu.kernels.rnnt import xla as _xla

REDUCTIONS = ("none", "sum", "mean")
IMPLEMENTATIONS = (None, "xla", "pallas")


def _reduce(per_seq: jax.Array, reduction: str) -> jax.Array:
    if reduction == "none":
        return per_seq
    if reduction == "sum":
        return jnp.sum(per_seq)
    return jnp.mean(per_seq)


def _check_options(fn: str, blank: int, V: int, reduction: str, fastemit_lambda: float,
                   implementation: str | None) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{fn}: reduction={reduction!r}; use one of {REDUCTIONS}")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"{fn}: implementation={implementation!r}; use None (best for the "
                         "backend), 'xla' or 'pallas'")
    if not isinstance(blank, (int, np.integer)) or not 0 <= blank < V:
        raise ValueError(f"{fn}: blank={blank!r} must be an int in [0, V={V})")
    if not np.isfinite(fastemit_lambda) or fastemit_lambda < 0:
        raise ValueError(f"{fn}: fastemit_lambda={fastemit_lambda!r} must be a finite float >= 0 "
                         "(0 disables FastEmit)")


def _check_int(fn: str, name: str, x, shape: tuple[int, ...]) -> None:
    if not jnp.issubdtype(jnp.result_type(x), jnp.integer):
        raise TypeError(f"{fn}: {name} must be an integer array (int32), got {jnp.result_type(x)}")
    if tuple(jnp.shape(x)) != shape:
        raise ValueError(f"{fn}: {name} has shape {tuple(jnp.shape(x))}, expected {shape}")


def _concrete(x) -> np.ndarray | None:
    """Host copy of x if it is concrete (not a tracer), else None."""
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def _check_values(fn: str, labels, logit_lengths, label_lengths, T: int, U: int, V: int,
                  blank: int) -> None:
    """Range checks on the integer inputs, only possible when they are concrete."""
    tl, ul = _concrete(logit_lengths), _concrete(label_lengths)
    if tl is not None and np.any(tl > T):
        raise ValueError(f"{fn}: logit_lengths {tl.tolist()} exceed T={T}; pass the number of "
                         "valid frames per sequence (1 <= logit_lengths <= T)")
    if ul is not None and (np.any(ul < 0) or np.any(ul > U)):
        raise ValueError(f"{fn}: label_lengths {ul.tolist()} must lie in [0, U={U}]")
    lab = _concrete(labels)
    if lab is not None and ul is not None:
        real = np.arange(U)[None, :] < ul[:, None]
        bad = real & ((lab < 0) | (lab >= V))
        if bad.any():
            raise ValueError(f"{fn}: labels {lab[bad][:5].tolist()} are outside [0, V={V}) at real "
                             "positions (padding past label_lengths may hold anything)")
        if (real & (lab == blank)).any():
            raise ValueError(f"{fn}: labels contain the blank id {blank} at real positions; "
                             "targets must not include blank")


def _pallas_module(fn: str, implementation: str | None, interpret: bool | None
                   ) -> tuple[ModuleType | None, bool]:
    """The Pallas module to try (or None for XLA) and the interpret flag to pass it."""
    backend = jax.default_backend()
    if implementation == "xla":
        return None, False
    if backend == "cpu":
        if implementation is None:
            return None, False
        if not interpret:
            raise ValueError(f"{fn}: implementation='pallas' cannot run on CPU without "
                             "interpret=True (slow, for testing); use implementation='xla' or None")
        name = "pallas_tpu"
    else:
        name = "pallas_tpu" if backend == "tpu" else "pallas_gpu"
    try:
        module = importlib.import_module(f"jaxslu.kernels.rnnt.{name}")
    except ImportError as e:
        if implementation is None:
            return None, False
        raise NotImplementedError(f"{fn}: implementation='pallas' is unavailable on {backend} "
                                  f"({e}); use implementation='xla' or None") from e
    return module, bool(interpret)


def _call_pallas(fn: str, implementation: str | None, call):
    """Run `call()`; on NotImplementedError fall back (None) or raise a helpful error ('pallas')."""
    try:
        return call()
    except NotImplementedError as e:
        if implementation is None:
            return None
        raise NotImplementedError(f"{fn}: the Pallas kernel cannot handle this input ({e}); use "
                                  "implementation='xla' or None") from e


def rnnt_loss(logits, labels, logit_lengths, label_lengths, *, blank: int = 0,
              reduction: str = "mean", fastemit_lambda: float = 0.0, clamp: float | None = None,
              implementation: str | None = None, interpret: bool | None = None) -> jax.Array:
    """RNN-T loss of joint logits [B, T, U+1, V] (torchaudio conventions), fp32.

    fastemit_lambda: FastEmit regularization (loss value unchanged, label-emission gradient terms
    scaled by 1 + lambda). clamp: clip each element of the per-sequence gradient to
    [-clamp, clamp] (None: no clipping).
    """
    fn = "rnnt_loss"
    if jnp.ndim(logits) != 4 or not jnp.issubdtype(jnp.result_type(logits), jnp.floating):
        raise ValueError(f"{fn}: logits must be a float array [B, T, U+1, V], got "
                         f"{jnp.result_type(logits)} {tuple(jnp.shape(logits))}")
    B, T, U1, V = logits.shape
    if jnp.ndim(labels) != 2 or jnp.shape(labels)[1] != U1 - 1:
        raise ValueError(f"{fn}: labels has shape {tuple(jnp.shape(labels))}, expected "
                         f"[B={B}, U={U1 - 1}] (logits' third axis is U+1)")
    _check_int(fn, "labels", labels, (B, U1 - 1))
    _check_int(fn, "logit_lengths", logit_lengths, (B,))
    _check_int(fn, "label_lengths", label_lengths, (B,))
    _check_options(fn, blank, V, reduction, fastemit_lambda, implementation)
    if clamp is not None and not (np.isfinite(clamp) and clamp > 0):
        raise ValueError(f"{fn}: clamp={clamp!r} must be None or a finite float > 0")
    _check_values(fn, labels, logit_lengths, label_lengths, T, U1 - 1, V, blank)

    per_seq = None
    module, interp = _pallas_module(fn, implementation, interpret)
    if module is not None:
        per_seq = _call_pallas(fn, implementation, lambda: module.rnnt_loss(
            logits, labels, logit_lengths, label_lengths, blank=blank,
            fastemit_lambda=fastemit_lambda, clamp=clamp, interpret=interp))
    if per_seq is None:
        per_seq = _xla.rnnt_loss(logits, labels, logit_lengths, label_lengths, blank=int(blank),
                                 fastemit_lambda=float(fastemit_lambda),
                                 clamp=None if clamp is None else float(clamp))
    return _reduce(per_seq, reduction)


def fused_rnnt_loss(encoder, predictor, weight, bias, labels, logit_lengths, label_lengths, *,
                    blank: int = 0, reduction: str = "mean", fastemit_lambda: float = 0.0,
                    activation: str = "tanh", implementation: str | None = None,
                    interpret: bool | None = None) -> jax.Array:
    """RNN-T loss of logits = act(encoder + predictor) @ weight + bias, never materialized.

    encoder [B, T, J], predictor [B, U+1, J], weight [J, V], bias [V]; activation one of
    "tanh", "relu", "gelu", "swish". Same conventions and options as `rnnt_loss` (no clamp).
    """
    fn = "fused_rnnt_loss"
    for name, x, nd in (("encoder", encoder, 3), ("predictor", predictor, 3),
                        ("weight", weight, 2), ("bias", bias, 1)):
        if jnp.ndim(x) != nd or not jnp.issubdtype(jnp.result_type(x), jnp.floating):
            raise ValueError(f"{fn}: {name} must be a float array with {nd} dims, got "
                             f"{jnp.result_type(x)} {tuple(jnp.shape(x))}")
    B, T, J = encoder.shape
    J2, V = weight.shape
    if predictor.shape[0] != B or predictor.shape[2] != J or J2 != J or bias.shape != (V,):
        raise ValueError(f"{fn}: shapes encoder {encoder.shape}, predictor {predictor.shape}, "
                         f"weight {weight.shape}, bias {bias.shape} do not fit [B, T, J], "
                         "[B, U+1, J], [J, V], [V]")
    U = predictor.shape[1] - 1
    _check_int(fn, "labels", labels, (B, U))
    _check_int(fn, "logit_lengths", logit_lengths, (B,))
    _check_int(fn, "label_lengths", label_lengths, (B,))
    _check_options(fn, blank, V, reduction, fastemit_lambda, implementation)
    if activation not in _fused.ACTIVATIONS:
        raise ValueError(f"{fn}: activation={activation!r}; use one of "
                         f"{sorted(_fused.ACTIVATIONS)}")
    _check_values(fn, labels, logit_lengths, label_lengths, T, U, V, blank)

    per_seq = None
    module, interp = _pallas_module(fn, implementation, interpret)
    if module is not None:
        per_seq = _call_pallas(fn, implementation, lambda: module.fused_rnnt_loss(
            encoder, predictor, weight, bias, labels, logit_lengths, label_lengths, blank=blank,
            fastemit_lambda=fastemit_lambda, activation=activation, interpret=interp))
    if per_seq is None:
        per_seq = _fused.fused_rnnt_loss(encoder, predictor, weight, bias, labels, logit_lengths,
                                         label_lengths, blank=int(blank),
                                         fastemit_lambda=float(fastemit_lambda),
                                         activation=activation)
    return _reduce(per_seq, reduction)
