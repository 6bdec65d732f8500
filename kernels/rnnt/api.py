"""Public RNN-T loss entry points with input checks, reductions and backend dispatch.

    rnnt_loss(logits, labels, logit_lengths, label_lengths, *, blank=0, reduction="mean",
              fastemit_lambda=0.0, clamp=None, implementation=None, interpret=None) -> loss
    fused_rnnt_loss(encoder, predictor, weight, bias, labels, logit_lengths, label_lengths, *,
                    blank=0, reduction="mean", fastemit_lambda=0.0, clamp=None, activation="tanh",
                    implementation=None, interpret=None) -> loss

Conventions and values are torchaudio.functional.rnnt_loss's: logits [B, T, U+1, V] (fp32 or
bf16), labels int [B, U] padded with anything past label_lengths, lengths int [B];
reduction "none" -> [B], "sum", "mean" (mean over the batch). The fused variant computes
logits[b, t, u] = act(encoder[b, t] + predictor[b, u]) @ weight + bias inside the loss and never
materializes them; gradients flow to all four.

Options, honoured by every implementation or refused (never silently dropped):
  fastemit_lambda  FastEmit: loss value unchanged, label-emission gradient terms scaled by 1 + l.
  clamp            clip each entry of d loss_b / d logits to [-clamp, clamp] before the cotangent
                   multiplies it (torchaudio's convention); for the fused loss, applied to the
                   recomputed logit gradients inside the fused backward. None: no clipping.

implementation:
  None         safe and fast: on TPU / GPU the Pallas kernel (pallas_tpu / pallas_gpu) where it is
               known to work for this call, else XLA (see "Dispatch" below); XLA on CPU, where a
               Pallas kernel could only run interpreted.
  "xla"        kernels/rnnt/xla.py (or fused.py).
  "pallas"     the Pallas kernel of the backend; on CPU only with interpret=True (the TPU kernel in
               interpret mode, for tests). A request it cannot serve raises a clear error.
  "reference"  the pure-JAX autodiff definition (reference.py; the fused loss materializes its
               logits first): slow, for checking. It has no gradient clamp: clamp raises.

Dispatch (implementation=None on TPU / GPU). Before the first call with a given signature
(shapes and dtypes of every argument, the static options, the backend), the Pallas loss and its
gradient are compiled ahead of time for exactly those shapes (`jax.jit(...).lower(...).compile()`,
which runs Mosaic / Triton). If that raises anything (a lowering or compile error, a VMEM or
shared-memory limit, NotImplementedError for an unsupported shape, an option the kernel lacks such
as the fused activations "gelu" / "swish"), the verdict "XLA" is cached for the signature and one
`PallasFallbackWarning` says why; otherwise the verdict "Pallas" is cached. Later calls with the
signature reuse the verdict (no compile). The check also runs when the call is being traced
(inside jit): it needs only shapes and dtypes. `dispatch_verdicts()` lists the verdicts,
`clear_dispatch_cache()` forgets them.

Input checks: shapes, dtypes and options always; values whenever the integer inputs are concrete
(not traced under jit): lengths in range (1 <= logit_lengths <= T, 0 <= label_lengths <= U),
labels in [0, V) and not blank at real positions -- a ValueError before any kernel runs. Traced
inputs cannot be inspected: every implementation then returns loss +inf for a zero-frame sequence
and NaN for out-of-range lengths or labels, with zero gradient for that sequence (see
validity.py), so a training step's finiteness check stops the update.
"""
from __future__ import annotations

import importlib
import logging
import threading
import warnings
from types import ModuleType
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxslu.kernels.rnnt import fused as _fused
from jaxslu.kernels.rnnt import validity
from jaxslu.kernels.rnnt import xla as _xla

REDUCTIONS = ("none", "sum", "mean")
IMPLEMENTATIONS = (None, "xla", "pallas", "reference")

log = logging.getLogger(__name__)


class PallasFallbackWarning(RuntimeWarning):
    """implementation=None found the Pallas kernel unusable for a call signature and uses XLA."""


def _reduce(per_seq: jax.Array, reduction: str) -> jax.Array:
    if reduction == "none":
        return per_seq
    if reduction == "sum":
        return jnp.sum(per_seq)
    return jnp.mean(per_seq)


def _check_options(fn: str, blank: int, V: int, reduction: str, fastemit_lambda: float,
                   clamp: float | None, implementation: str | None) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{fn}: reduction={reduction!r}; use one of {REDUCTIONS}")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"{fn}: implementation={implementation!r}; use None (best for the "
                         "backend), 'xla', 'pallas' or 'reference'")
    if not isinstance(blank, (int, np.integer)) or not 0 <= blank < V:
        raise ValueError(f"{fn}: blank={blank!r} must be an int in [0, V={V})")
    if not np.isfinite(fastemit_lambda) or fastemit_lambda < 0:
        raise ValueError(f"{fn}: fastemit_lambda={fastemit_lambda!r} must be a finite float >= 0 "
                         "(0 disables FastEmit)")
    if clamp is not None and not (np.isfinite(clamp) and clamp > 0):
        raise ValueError(f"{fn}: clamp={clamp!r} must be None or a finite float > 0")
    if implementation == "reference" and clamp is not None:
        raise ValueError(f"{fn}: implementation='reference' (autodiff of the definition) cannot "
                         f"apply clamp={clamp}: clipping d loss / d logits before the cotangent has "
                         "no autodiff form; use implementation='xla' (or 'pallas') for clamp")


def _check_int(fn: str, name: str, x, shape: tuple[int, ...]) -> None:
    if not jnp.issubdtype(jnp.result_type(x), jnp.integer):
        raise TypeError(f"{fn}: {name} must be an integer array (int32), got {jnp.result_type(x)}")
    if tuple(jnp.shape(x)) != shape:
        raise ValueError(f"{fn}: {name} has shape {tuple(jnp.shape(x))}, expected {shape}")


def _concrete(x) -> np.ndarray | None:
    """Host copy of x if it is concrete (not a tracer), else None."""
    if validity.is_traced(x):
        return None
    return np.asarray(x)


def _check_values(fn: str, labels, logit_lengths, label_lengths, T: int, U: int, V: int,
                  blank: int) -> None:
    """Range checks on the integer inputs, only possible when they are concrete."""
    tl, ul = _concrete(logit_lengths), _concrete(label_lengths)
    if tl is not None and np.any(tl < 1):
        raise ValueError(f"{fn}: logit_lengths {tl.tolist()}: sequence(s) "
                         f"{np.flatnonzero(tl < 1).tolist()} have no frames; every sequence needs "
                         f"1 <= logit_lengths <= T={T} (traced under jit, such a sequence's loss "
                         "is +inf)")
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
                             "positions (padding past label_lengths may hold anything; traced "
                             "under jit, such a sequence's loss is NaN)")
        if (real & (lab == blank)).any():
            raise ValueError(f"{fn}: labels contain the blank id {blank} at real positions; "
                             "targets must not include blank")


# ------------------------------------------------------------------------------------------------
# Dispatch.

def _backend() -> str:
    return jax.default_backend()


def _auto_candidate(backend: str) -> tuple[str, bool] | None:
    """(Pallas module, interpret flag) that implementation=None tries on `backend`, or None for
    XLA. CPU: None (a Pallas kernel would only run interpreted, far slower than XLA). Tests
    replace this to exercise the dispatch on CPU."""
    return {"tpu": ("pallas_tpu", False), "gpu": ("pallas_gpu", False)}.get(backend)


def _aot_compile(fn: Callable, args: tuple) -> None:
    """Compile fn for the abstract args (ShapeDtypeStructs) ahead of time; raises what the
    lowering or the kernel compiler (Mosaic / Triton) raises. Separate so tests can inject a
    failing compile."""
    jax.jit(fn).lower(*args).compile()


_VERDICTS: dict[tuple, str | None] = {}  # signature -> None (Pallas works) or the reason it does not
_LOCK = threading.Lock()


def dispatch_verdicts() -> dict[tuple, str | None]:
    """Copy of the cached implementation=None verdicts: signature -> None (Pallas) or the reason
    for falling back to XLA."""
    with _LOCK:
        return dict(_VERDICTS)


def clear_dispatch_cache() -> None:
    with _LOCK:
        _VERDICTS.clear()


def _abstract(x) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(jnp.shape(x)), jnp.result_type(x))


def _signature(arrays) -> tuple:
    return tuple((tuple(jnp.shape(x)), str(jnp.result_type(x))) for x in arrays)


def _load(name: str) -> ModuleType:
    return importlib.import_module(f"jaxslu.kernels.rnnt.{name}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300] if text else ''}"


def _pallas_verdict(fn: str, key: tuple, check: Callable[[], None]) -> bool:
    """Cached verdict for `key` = (fn, backend, module, signature, ...): run `check()` (which
    raises if the kernel cannot serve the call) once per key; warn once when it fails."""
    with _LOCK:
        if key in _VERDICTS:
            return _VERDICTS[key] is None
    try:
        check()
        reason = None
    except Exception as e:  # noqa: BLE001 - any lowering / compile failure means "use XLA"
        reason = _first_line(e)
    with _LOCK:
        _VERDICTS[key] = reason
    if reason is not None:
        shapes = ", ".join(f"{dtype}{list(shape)}" for shape, dtype in key[3])
        msg = (f"{fn}: {key[2]} cannot serve ({shapes}) on {key[1]}: {reason}. Using the XLA "
               "implementation for this signature; implementation='pallas' shows the full error, "
               "implementation='xla' skips the check.")
        log.warning(msg)
        warnings.warn(msg, PallasFallbackWarning, stacklevel=3)
    return reason is None


def _pallas_target(fn: str, implementation: str | None, interpret: bool | None
                   ) -> tuple[str, bool] | None:
    """The Pallas module (name, interpret) an explicit 'pallas' request runs, or None for XLA."""
    backend = _backend()
    if implementation is None:
        return _auto_candidate(backend)
    if backend == "cpu":
        if not interpret:
            raise ValueError(f"{fn}: implementation='pallas' cannot run on CPU without "
                             "interpret=True (slow, for testing); use implementation='xla' or None")
        return "pallas_tpu", True
    return ("pallas_tpu" if backend == "tpu" else "pallas_gpu"), bool(interpret)


def _explicit_module(fn: str, name: str) -> ModuleType:
    try:
        return _load(name)
    except ImportError as e:
        raise NotImplementedError(f"{fn}: implementation='pallas' is unavailable on "
                                  f"{_backend()} ({e}); use implementation='xla' or None") from e


def _call_explicit(fn: str, call):
    """Run an explicitly requested Pallas kernel; NotImplementedError gets a what-to-do hint."""
    try:
        return call()
    except NotImplementedError as e:
        raise NotImplementedError(f"{fn}: the Pallas kernel cannot handle this input ({e}); use "
                                  "implementation='xla' or None") from e


# ------------------------------------------------------------------------------------------------
# Entry points.

def rnnt_loss(logits, labels, logit_lengths, label_lengths, *, blank: int = 0,
              reduction: str = "mean", fastemit_lambda: float = 0.0, clamp: float | None = None,
              implementation: str | None = None, interpret: bool | None = None) -> jax.Array:
    """RNN-T loss of joint logits [B, T, U+1, V] (torchaudio conventions), fp32.

    fastemit_lambda: FastEmit regularization (loss value unchanged, label-emission gradient terms
    scaled by 1 + lambda). clamp: clip each element of the per-sequence gradient to
    [-clamp, clamp] (None: no clipping). See the module docstring for implementation / dispatch
    and for the result on invalid traced inputs.
    """
    fn = "rnnt_loss"
    if jnp.ndim(logits) != 4 or not jnp.issubdtype(jnp.result_type(logits), jnp.floating):
        raise ValueError(f"{fn}: logits must be a float array [B, T, U+1, V], got "
                         f"{jnp.result_type(logits)} {tuple(jnp.shape(logits))}")
    B, T, U1, V = logits.shape
    U = U1 - 1
    if jnp.ndim(labels) != 2 or jnp.shape(labels)[1] != U:
        raise ValueError(f"{fn}: labels has shape {tuple(jnp.shape(labels))}, expected "
                         f"[B={B}, U={U}] (logits' third axis is U+1)")
    _check_int(fn, "labels", labels, (B, U))
    _check_int(fn, "logit_lengths", logit_lengths, (B,))
    _check_int(fn, "label_lengths", label_lengths, (B,))
    _check_options(fn, blank, V, reduction, fastemit_lambda, clamp, implementation)
    _check_values(fn, labels, logit_lengths, label_lengths, T, U, V, blank)
    s = validity.sanitize(labels, logit_lengths, label_lengths, T, U, V)
    blank, lam = int(blank), float(fastemit_lambda)
    clamp = None if clamp is None else float(clamp)
    ints = (s.labels, s.logit_lengths, s.label_lengths)

    def xla_loss():
        return _xla.rnnt_loss(logits, *ints, blank=blank, fastemit_lambda=lam, clamp=clamp)

    if implementation == "reference":
        from jaxslu.kernels.rnnt.reference import rnnt_loss_reference
        per_seq = rnnt_loss_reference(logits, *ints, blank=blank, fastemit_lambda=lam)
    elif implementation == "xla":
        per_seq = xla_loss()
    else:
        per_seq = None
        target = _pallas_target(fn, implementation, interpret)
        if target is not None:
            name, interp = target
            if implementation == "pallas":
                mod = _explicit_module(fn, name)
                per_seq = _call_explicit(fn, lambda: mod.rnnt_loss(
                    logits, *ints, blank=blank, fastemit_lambda=lam, clamp=clamp,
                    interpret=interp))
            else:
                key = (fn, _backend(), name, _signature((logits, *ints)), interp, blank, lam, clamp)

                def check():
                    mod = _load(name)

                    def vg(x, lab, tl, ul):
                        return jax.value_and_grad(lambda y: jnp.sum(mod.rnnt_loss(
                            y, lab, tl, ul, blank=blank, fastemit_lambda=lam, clamp=clamp,
                            interpret=interp)))(x)

                    _aot_compile(vg, tuple(_abstract(a) for a in (logits, *ints)))

                if _pallas_verdict(fn, key, check):
                    per_seq = _load(name).rnnt_loss(logits, *ints, blank=blank,
                                                    fastemit_lambda=lam, clamp=clamp,
                                                    interpret=interp)
        if per_seq is None:
            per_seq = xla_loss()
    return _reduce(validity.apply_status(per_seq, s), reduction)


def _materialized_joint(encoder, predictor, weight, bias, activation):
    """The joint's logits [B, T, U+1, V] in fp32 (the reference for the fused loss)."""
    act = _fused.ACTIVATIONS[activation]
    f32 = [x.astype(jnp.float32) for x in (encoder, predictor, weight, bias)]
    h = act(f32[0][:, :, None, :] + f32[1][:, None, :, :])
    return jnp.einsum("btuj,jv->btuv", h, f32[2], precision=jax.lax.Precision.HIGHEST) + f32[3]


def fused_rnnt_loss(encoder, predictor, weight, bias, labels, logit_lengths, label_lengths, *,
                    blank: int = 0, reduction: str = "mean", fastemit_lambda: float = 0.0,
                    clamp: float | None = None, activation: str = "tanh",
                    implementation: str | None = None, interpret: bool | None = None) -> jax.Array:
    """RNN-T loss of logits = act(encoder + predictor) @ weight + bias, never materialized.

    encoder [B, T, J], predictor [B, U+1, J], weight [J, V], bias [V]; activation one of
    "tanh", "relu", "gelu", "swish" (the Pallas kernels have tanh and relu: None falls back to
    XLA for the others, "pallas" raises). Same conventions and options as `rnnt_loss`; clamp clips
    the joint's logit gradients inside the fused backward.
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
    _check_options(fn, blank, V, reduction, fastemit_lambda, clamp, implementation)
    if activation not in _fused.ACTIVATIONS:
        raise ValueError(f"{fn}: activation={activation!r}; use one of "
                         f"{sorted(_fused.ACTIVATIONS)}")
    _check_values(fn, labels, logit_lengths, label_lengths, T, U, V, blank)
    s = validity.sanitize(labels, logit_lengths, label_lengths, T, U, V)
    blank, lam = int(blank), float(fastemit_lambda)
    clamp = None if clamp is None else float(clamp)
    params = (encoder, predictor, weight, bias)
    ints = (s.labels, s.logit_lengths, s.label_lengths)

    def xla_loss():
        return _fused.fused_rnnt_loss(*params, *ints, blank=blank, fastemit_lambda=lam,
                                      activation=activation, clamp=clamp)

    if implementation == "reference":
        from jaxslu.kernels.rnnt.reference import rnnt_loss_reference
        per_seq = rnnt_loss_reference(_materialized_joint(*params, activation), *ints,
                                      blank=blank, fastemit_lambda=lam)
    elif implementation == "xla":
        per_seq = xla_loss()
    else:
        per_seq = None
        target = _pallas_target(fn, implementation, interpret)
        if target is not None:
            name, interp = target
            if implementation == "pallas":
                mod = _explicit_module(fn, name)
                per_seq = _call_explicit(fn, lambda: mod.fused_rnnt_loss(
                    *params, *ints, blank=blank, fastemit_lambda=lam, clamp=clamp,
                    activation=activation, interpret=interp))
            else:
                key = (fn, _backend(), name, _signature((*params, *ints)), interp, blank, lam,
                       clamp, activation)

                def check():
                    mod = _load(name)
                    if activation not in mod.pc.ACTIVATIONS:
                        raise NotImplementedError(
                            f"activation={activation!r} is not in the Pallas joint's "
                            f"{mod.pc.ACTIVATIONS}")

                    def vg(*a):
                        return jax.value_and_grad(lambda *p: jnp.sum(mod.fused_rnnt_loss(
                            *p, *a[4:], blank=blank, fastemit_lambda=lam, clamp=clamp,
                            activation=activation, interpret=interp)), argnums=(0, 1, 2, 3))(*a[:4])

                    _aot_compile(vg, tuple(_abstract(a) for a in (*params, *ints)))

                if _pallas_verdict(fn, key, check):
                    per_seq = _load(name).fused_rnnt_loss(
                        *params, *ints, blank=blank, fastemit_lambda=lam, clamp=clamp,
                        activation=activation, interpret=interp)
        if per_seq is None:
            per_seq = xla_loss()
    return _reduce(validity.apply_status(per_seq, s), reduction)
