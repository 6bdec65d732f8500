"""Waveform I/O: read WAV/FLAC as float32 mono in [-1, 1], resample, write FLAC atomically.

Design choices:
- Reading goes through soundfile (libsndfile), so any format it reads works; WAV and FLAC are
  the ones the project uses and tests. Multi-channel audio is mixed to mono by averaging the
  channels (not by taking the first channel), which keeps the level of centred speech.
- A waveform outside [-1, 1] (possible in float WAV files) is rejected rather than silently clipped
  or rescaled: the batch contract (docs/DESIGN.md) promises [-1, 1], and a silent fix would hide a
  broken upstream step.
- Resampling is polyphase (scipy.signal.resample_poly) with the rate ratio reduced by its gcd,
  e.g. 22050 -> 16000 is up 320 / down 441.
- `write_flac` writes 16-bit PCM to a temporary file in the destination folder and renames it into
  place (`os.replace`, atomic on POSIX), so a reader never sees a half-written file and an
  interrupted corpus build leaves no truncated audio behind.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal

__all__ = ["AudioError", "load_audio", "resample", "load_resampled", "write_flac"]


class AudioError(ValueError):
    """An audio file or waveform is unreadable, empty or holds invalid samples."""


def _check_samples(x: np.ndarray, what: str) -> None:
    """Raise AudioError if `x` (named `what` in the message) has non-finite or out-of-range samples."""
    if not np.all(np.isfinite(x)):
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise AudioError(f"{what} holds {bad} NaN/inf samples; re-export or regenerate the audio")
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > 1.0:
        raise AudioError(f"{what} has peak amplitude {peak:.4g} > 1; scale the waveform into [-1, 1] "
                         "(e.g. x / max(abs(x))) before using it")


def load_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read an audio file as (float32 mono waveform in [-1, 1], sample rate).

    Raises FileNotFoundError if `path` does not exist, AudioError if it cannot be decoded, has no
    samples, or holds NaN/inf or out-of-range samples.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file {str(path)!r} not found")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(f"cannot decode audio file {str(path)!r} ({e}); check that it is a valid "
                         "WAV or FLAC file (re-download or re-render it)") from e
    if data.shape[0] == 0:
        raise AudioError(f"audio file {str(path)!r} holds no samples; re-render or drop it")
    x = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    _check_samples(x, f"audio file {str(path)!r}")
    return np.ascontiguousarray(x, dtype=np.float32), int(sr)


def _check_rate(sr: int, name: str) -> int:
    if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) or sr <= 0:
        raise ValueError(f"{name} must be a positive integer sample rate in Hz, got {sr!r}")
    return int(sr)


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample a 1-D waveform from `sr_in` to `sr_out` Hz (polyphase, gcd-reduced ratio).

    Returns float32 with ceil(len(x) * sr_out / sr_in) samples; a copy of `x` when the rates match.
    """
    sr_in, sr_out = _check_rate(sr_in, "sr_in"), _check_rate(sr_out, "sr_out")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"resample expects a 1-D waveform, got shape {x.shape}; mix to mono first")
    if sr_in == sr_out:
        return x.copy()
    g = math.gcd(sr_in, sr_out)
    return signal.resample_poly(x, sr_out // g, sr_in // g).astype(np.float32)


def load_resampled(path: str | os.PathLike, sample_rate: int = 16000) -> np.ndarray:
    """`load_audio` then `resample` to `sample_rate` (float32 mono)."""
    x, sr = load_audio(path)
    return resample(x, sr, sample_rate)


def write_flac(path: str | os.PathLike, x: np.ndarray, sr: int) -> Path:
    """Write a mono float waveform in [-1, 1] as 16-bit FLAC, atomically; returns the path.

    The parent folder is created if needed. Raises AudioError for an empty, multi-dimensional,
    non-finite or out-of-range waveform (FLAC is integer PCM, so values beyond 1 would clip).
    """
    path = Path(path)
    sr = _check_rate(sr, "sr")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 1 or x.size == 0:
        raise AudioError(f"write_flac({str(path)!r}) expects a non-empty 1-D waveform, "
                         f"got shape {x.shape}")
    _check_samples(x, f"waveform for {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        sf.write(tmp, x, sr, format="FLAC", subtype="PCM_16")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
