"""SpecAugment (frequency and time masking) on padded, normalized log-mel batches, in pure JAX.

Choices that were open:
- Masked values are set to 0: the features are utterance-normalized, so 0 is the per-bin mean.
- Per row and per mask, independently: a frequency mask has width w ~ U{0, ..., min(F, M)}
  (F = cfg.freq_mask_width, M = mel bins) and start ~ U{0, ..., M - w}; a time mask has width
  w ~ U{0, ..., floor(cfg.time_mask_ratio * length)} (length = that row's frame length) and start
  ~ U{0, ..., length - w}. Masks may overlap. Width 0 masks nothing.
- Integer draws come from uniform floats scaled by the per-row bound (floor(u * (bound + 1))),
  which handles row-dependent bounds in one vectorized draw.
- Padding frames (>= the row's frame length) are never changed, and the result is a pure function
  of (key, feats, frame_lengths, cfg): the same key gives the same masks.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxslu.config import FrontendConfig

__all__ = ["spec_augment"]


def _randint_upto(key: jax.Array, shape: tuple[int, ...], bound: jax.Array) -> jax.Array:
    """Integers uniform on {0, ..., bound} (bound broadcast against `shape`, >= 0), int32."""
    u = jax.random.uniform(key, shape)
    bound = jnp.asarray(bound, jnp.int32)
    return jnp.minimum(jnp.floor(u * (bound + 1).astype(jnp.float32)).astype(jnp.int32), bound)


def spec_augment(key: jax.Array, feats: jax.Array, frame_lengths: jax.Array,
                 cfg: FrontendConfig) -> jax.Array:
    """Apply cfg.freq_masks frequency masks and cfg.time_masks time masks per row.

    key: a jax PRNG key; feats float [B, T, M]; frame_lengths int [B] -> feats with masked cells set
    to 0 (see the module docstring for the distributions). Jit-able with `cfg` static.
    """
    for field in ("freq_masks", "freq_mask_width", "time_masks"):
        if getattr(cfg, field) < 0:
            raise ValueError(f"FrontendConfig.{field} must be >= 0, got {getattr(cfg, field)}")
    if not 0.0 <= cfg.time_mask_ratio <= 1.0:
        raise ValueError(f"FrontendConfig.time_mask_ratio must lie in [0, 1], "
                         f"got {cfg.time_mask_ratio}")
    feats = jnp.asarray(feats)
    if feats.ndim != 3:
        raise ValueError(f"spec_augment expects feats [batch, frames, mels], got {feats.shape}")
    frame_lengths = jnp.asarray(frame_lengths)
    if frame_lengths.shape != feats.shape[:1]:
        raise ValueError(f"spec_augment expects frame_lengths of shape {feats.shape[:1]}, "
                         f"got {frame_lengths.shape}")
    b, t, m = feats.shape
    lengths = jnp.clip(frame_lengths.astype(jnp.int32), 0, t)
    k_fw, k_fs, k_tw, k_ts = jax.random.split(key, 4)
    masked = jnp.zeros((b, t, m), dtype=bool)

    if cfg.freq_masks > 0:
        n = cfg.freq_masks
        width = _randint_upto(k_fw, (b, n), min(cfg.freq_mask_width, m))
        start = _randint_upto(k_fs, (b, n), m - width)
        bins = jnp.arange(m)[None, None, :]
        fmask = ((bins >= start[..., None]) & (bins < (start + width)[..., None])).any(axis=1)
        masked = masked | fmask[:, None, :]

    if cfg.time_masks > 0:
        n = cfg.time_masks
        max_w = jnp.floor(cfg.time_mask_ratio * lengths.astype(jnp.float32)).astype(jnp.int32)
        width = _randint_upto(k_tw, (b, n), max_w[:, None])
        start = _randint_upto(k_ts, (b, n), lengths[:, None] - width)
        steps = jnp.arange(t)[None, None, :]
        tmask = ((steps >= start[..., None]) & (steps < (start + width)[..., None])).any(axis=1)
        masked = masked | tmask[:, :, None]

    valid = (jnp.arange(t)[None, :] < lengths[:, None])[:, :, None]
    return jnp.where(masked & valid, jnp.zeros((), feats.dtype), feats)
