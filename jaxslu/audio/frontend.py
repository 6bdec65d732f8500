"""Log-mel filterbank features in pure JAX (jit-able, batch-first).

Conventions (the choices that were open, fixed here):
- Window = round(win_ms * sample_rate / 1000) samples (400 at 16 kHz / 25 ms), hop likewise
  (160 for 10 ms). Periodic Hann window (the DFT-even one: `0.5 - 0.5 cos(2 pi n / W)`), each frame
  zero-padded to n_fft = the next power of two >= W (512).
- No centering and no edge padding: frame t covers samples [t*hop, t*hop + W). A row of N >= W
  samples has `(N - W) // hop + 1` frames, so every frame of a row lies entirely inside its real
  samples and the features of a row never depend on its padding. A row with 1 <= N < W samples is
  zero-padded to one window and gives 1 frame (so padding rows, which have >= 1 sample, still have
  a frame); N = 0 gives 0 frames.
- No pre-emphasis, dither or DC removal. Power spectrum |rfft|^2 of the [-1, 1] waveform, without
  normalization by n_fft.
- HTK mel scale, mel(f) = 2595 log10(1 + f / 700); num_mels triangles with peaks 1 (no area
  normalization) whose edges/centres are num_mels + 2 points equally spaced in mel between fmin and
  fmax. As in HTK and Kaldi, the triangles are linear in mel (not in Hz): the weight of FFT bin k
  is computed from mel(k * sample_rate / n_fft). With many mels and a low
  fmin, the lowest triangles can be narrower than one FFT bin and catch no bin (all-zero filters);
  such channels sit at the log floor (a constant), which normalization maps to 0.
- Log floor: log(max(mel_energy, 1e-10)) (natural log), i.e. about -23.
- Frames at or past a row's frame length are 0 in the output.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxslu.config import FrontendConfig

__all__ = ["LOG_FLOOR", "window_samples", "hop_samples", "fft_size", "num_frames", "hz_to_mel",
           "mel_to_hz", "mel_filterbank", "vtlp_warp", "log_mel", "normalize_utterance", "compute_features"]

LOG_FLOOR = 1e-10  # mel energies are floored here before the log
_NORM_EPS = 1e-5  # added to the per-bin variance in utterance normalization


def window_samples(cfg: FrontendConfig) -> int:
    """Analysis window length in samples."""
    return int(round(cfg.win_ms * cfg.sample_rate / 1000.0))


def hop_samples(cfg: FrontendConfig) -> int:
    """Frame shift in samples."""
    return int(round(cfg.hop_ms * cfg.sample_rate / 1000.0))


def fft_size(cfg: FrontendConfig) -> int:
    """FFT length: the next power of two >= the window."""
    return 1 << (window_samples(cfg) - 1).bit_length()


def _check_cfg(cfg: FrontendConfig) -> None:
    """Raise ValueError naming the FrontendConfig field that makes no sense."""
    if cfg.sample_rate <= 0:
        raise ValueError(f"FrontendConfig.sample_rate must be > 0, got {cfg.sample_rate}")
    if window_samples(cfg) < 2 or hop_samples(cfg) < 1:
        raise ValueError(f"FrontendConfig.win_ms={cfg.win_ms} / hop_ms={cfg.hop_ms} give a window of "
                         f"{window_samples(cfg)} and a hop of {hop_samples(cfg)} samples at "
                         f"{cfg.sample_rate} Hz; need a window >= 2 and a hop >= 1 sample")
    if cfg.num_mels < 1:
        raise ValueError(f"FrontendConfig.num_mels must be >= 1, got {cfg.num_mels}")
    if not 0.0 <= cfg.fmin < cfg.fmax <= cfg.sample_rate / 2:
        raise ValueError(f"FrontendConfig needs 0 <= fmin < fmax <= sample_rate/2 "
                         f"({cfg.sample_rate / 2:g}); got fmin={cfg.fmin}, fmax={cfg.fmax}")


def num_frames(num_samples, cfg: FrontendConfig):
    """Frames for `num_samples` samples (int -> int; numpy/jax int array -> int32 array, same shape).

    `max(0, (N - W) // hop + 1)` for N >= W, 1 for 1 <= N < W (short input padded to one window),
    0 for N = 0. See the module docstring.
    """
    w, h = window_samples(cfg), hop_samples(cfg)
    if isinstance(num_samples, (int, np.integer)) and not isinstance(num_samples, bool):
        n = int(num_samples)
        if n < 0:
            raise ValueError(f"num_samples must be >= 0, got {n}")
        return 0 if n == 0 else max(1, (n - w) // h + 1)
    xp = jnp if isinstance(num_samples, jax.Array) else np
    n = xp.asarray(num_samples).astype(xp.int32)
    frames = xp.where(n >= w, (n - w) // h + 1, xp.minimum(n, 1))
    return frames.astype(xp.int32)


def hz_to_mel(f):
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m):
    """Inverse of `hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=16)
def _filterbank_np(sample_rate: int, n_fft: int, num_mels: int, fmin: float, fmax: float) -> np.ndarray:
    bin_mel = hz_to_mel(np.arange(n_fft // 2 + 1) * sample_rate / n_fft)[None, :]
    edges = np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), num_mels + 2)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rise = (bin_mel - lo) / (mid - lo)
    fall = (hi - bin_mel) / (hi - mid)
    fb = np.clip(np.minimum(rise, fall), 0.0, None).T.astype(np.float32)  # [n_fft//2+1, M]
    fb.setflags(write=False)
    return fb


def mel_filterbank(cfg: FrontendConfig) -> np.ndarray:
    """HTK-style triangular mel filterbank, float32 [n_fft // 2 + 1, num_mels] (triangles linear in
    mel, peak 1 per filter; see the module docstring)."""
    _check_cfg(cfg)
    return _filterbank_np(int(cfg.sample_rate), fft_size(cfg), int(cfg.num_mels), float(cfg.fmin),
                          float(cfg.fmax))


VTLP_HIGH_FRACTION = 0.6  # F_hi of vtlp_warp as a fraction of Nyquist (4800 Hz at 16 kHz)


def vtlp_warp(freqs: jax.Array, alpha: jax.Array, sample_rate: int) -> jax.Array:
    """Vocal-tract-length warp of frequencies (Hz) by factors alpha (Jaitly & Hinton, 2013).

    freqs [K], alpha [B] -> [B, K]: f -> alpha f below the boundary F_hi min(alpha, 1) / alpha,
    then the straight line that maps the boundary's image to itself and Nyquist to Nyquist
    (F_hi = VTLP_HIGH_FRACTION * Nyquist), so the band stays [0, Nyquist] and alpha = 1 is the
    identity.
    """
    nyq = sample_rate / 2.0
    f_hi = VTLP_HIGH_FRACTION * nyq
    f = jnp.asarray(freqs, jnp.float32)[None, :]
    a = jnp.asarray(alpha, jnp.float32)[:, None]
    edge = f_hi * jnp.minimum(a, 1.0)
    boundary = edge / a
    upper = nyq - (nyq - edge) / (nyq - boundary) * (nyq - f)
    return jnp.where(f <= boundary, f * a, upper)


def _warped_filterbank(cfg: FrontendConfig, alpha: jax.Array) -> jax.Array:
    """The mel filterbank read on a VTLP-warped frequency axis, one per row: [B, K, M]."""
    n_fft = fft_size(cfg)
    freqs = np.arange(n_fft // 2 + 1) * cfg.sample_rate / n_fft
    warped = vtlp_warp(freqs, alpha, cfg.sample_rate)
    bin_mel = 2595.0 * jnp.log10(1.0 + warped / 700.0)[:, :, None]  # [B, K, 1]
    edges = np.linspace(hz_to_mel(cfg.fmin), hz_to_mel(cfg.fmax), cfg.num_mels + 2)
    lo, mid, hi = (jnp.asarray(e, jnp.float32) for e in (edges[:-2], edges[1:-1], edges[2:]))
    rise = (bin_mel - lo) / (mid - lo)
    fall = (hi - bin_mel) / (hi - mid)
    return jnp.clip(jnp.minimum(rise, fall), 0.0, None)


def _periodic_hann(w: int) -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(w) / w)).astype(np.float32)


def log_mel(audio: jax.Array, lengths: jax.Array, cfg: FrontendConfig,
            warp: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Log-mel features of a padded batch (with `warp` [B]: VTLP factors, see `vtlp_warp`).

    audio float32 [B, N], lengths int [B] (real samples per row, 0 <= lengths <= N) ->
    (feats float32 [B, F, num_mels], frame_lengths int32 [B]) with F = num_frames(N) (1 if N < W).
    Samples at or past a row's length are ignored, and frames at or past its frame length are 0,
    so a row's features do not depend on how (or with what) it was padded. Jit-able with `cfg`
    static; lengths outside [0, N] are an error when concrete and clipped when traced.
    """
    _check_cfg(cfg)
    audio = jnp.asarray(audio, dtype=jnp.float32)
    if audio.ndim != 2:
        raise ValueError(f"log_mel expects audio [batch, samples], got shape {audio.shape}")
    lengths = jnp.asarray(lengths)
    if lengths.shape != audio.shape[:1]:
        raise ValueError(f"log_mel expects lengths of shape {audio.shape[:1]} (one per audio row), "
                         f"got {lengths.shape}")
    b, n = audio.shape
    if not isinstance(lengths, jax.core.Tracer):
        ln = np.asarray(lengths)
        if ln.size and (ln.min() < 0 or ln.max() > n):
            raise ValueError(f"log_mel: lengths must lie in [0, {n}] (the padded audio length), "
                             f"got min {ln.min()} max {ln.max()}")
    lengths = jnp.clip(lengths.astype(jnp.int32), 0, n)
    w, h, n_fft = window_samples(cfg), hop_samples(cfg), fft_size(cfg)

    # Zero everything past each row's length (so short rows padded to a window see zeros, not
    # whatever the padding held), then pad up to at least one window.
    audio = jnp.where(jnp.arange(n)[None, :] < lengths[:, None], audio, 0.0)
    if n < w:
        audio = jnp.pad(audio, ((0, 0), (0, w - n)))
    t = num_frames(max(n, 1), cfg)
    idx = np.arange(t)[:, None] * h + np.arange(w)[None, :]  # [T, W], static
    frames = audio[:, idx] * jnp.asarray(_periodic_hann(w))  # [B, T, W]
    spec = jnp.fft.rfft(frames, n=n_fft, axis=-1)
    power = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2  # [B, T, n_fft//2+1]
    if warp is None:
        mel = jnp.einsum("btk,km->btm", power, jnp.asarray(mel_filterbank(cfg)),
                         precision=jax.lax.Precision.HIGHEST)
    else:
        mel = jnp.einsum("btk,bkm->btm", power, _warped_filterbank(cfg, warp),
                         precision=jax.lax.Precision.HIGHEST)
    feats = jnp.log(jnp.maximum(mel, LOG_FLOOR))
    frame_lengths = num_frames(lengths, cfg)
    valid = jnp.arange(t)[None, :] < frame_lengths[:, None]
    return jnp.where(valid[:, :, None], feats, 0.0), frame_lengths


def normalize_utterance(feats: jax.Array, frame_lengths: jax.Array) -> jax.Array:
    """Per-utterance, per-mel-bin mean/variance normalization over each row's valid frames.

    feats [B, T, M], frame_lengths [B] -> [B, T, M]: (x - mean) / sqrt(var + 1e-5) on frames
    < frame_length; padding frames are 0. The 1e-5 keeps constant channels (e.g. all-floor
    filters, or a 1-frame utterance) finite: they come out as 0. A row with 0 frames stays all 0.
    """
    feats = jnp.asarray(feats, dtype=jnp.float32)
    if feats.ndim != 3:
        raise ValueError(f"normalize_utterance expects feats [batch, frames, mels], got {feats.shape}")
    frame_lengths = jnp.asarray(frame_lengths)
    if frame_lengths.shape != feats.shape[:1]:
        raise ValueError(f"normalize_utterance expects frame_lengths of shape {feats.shape[:1]}, "
                         f"got {frame_lengths.shape}")
    valid = (jnp.arange(feats.shape[1])[None, :] < frame_lengths[:, None])[:, :, None]
    count = jnp.maximum(frame_lengths, 1).astype(jnp.float32)[:, None, None]
    x = jnp.where(valid, feats, 0.0)
    mean = x.sum(axis=1, keepdims=True) / count
    centred = jnp.where(valid, feats - mean, 0.0)
    var = (centred ** 2).sum(axis=1, keepdims=True) / count
    return centred * jax.lax.rsqrt(var + _NORM_EPS)


def compute_features(audio: jax.Array, lengths: jax.Array,
                     cfg: FrontendConfig) -> tuple[jax.Array, jax.Array]:
    """`log_mel` followed by the normalization `cfg.normalize` names ("utterance" or "none")."""
    if cfg.normalize not in ("utterance", "none"):
        raise ValueError(f"FrontendConfig.normalize must be 'utterance' or 'none', "
                         f"got {cfg.normalize!r}")
    feats, frame_lengths = log_mel(audio, lengths, cfg)
    if cfg.normalize == "utterance":
        feats = normalize_utterance(feats, frame_lengths)
    return feats, frame_lengths
