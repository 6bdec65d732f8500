"""Waveform augmentation of training examples: speed, reverberation, channel, coloured noise.

`perturb(audio, sample_rate, rng, cfg)` runs on the host (in the data pipeline's read threads),
on one example at a time, after resampling to the frontend's rate and before the length checks,
so a perturbed example is checked like any other. Everything is a function of the numpy
`Generator` it is handed; the pipeline seeds that generator from the run's seed and the example's
position in the training stream, so augmentation is deterministic and resumes with the iterator.

Choices that were open:
- Speed: factor s drawn uniformly from `cfg.speeds`; the waveform is resampled from
  round(sample_rate * s) Hz to sample_rate Hz (the clip plays s times faster: tempo and pitch
  change together, as sox `speed` in Kaldi/ESPnet recipes). `max_samples` (the largest bucket) is
  respected: a factor that would make the clip longer than that is replaced by the identity.
- Reverberation: a synthetic room impulse response h = [1, 0, ..., 0] (direct path) plus a tail
  of Gaussian noise under an exponential envelope exp(-3 ln(10) t / RT60) (60 dB energy decay in
  RT60 seconds) starting 1 ms after the direct path, 1.2 RT60 long, scaled so that the energy
  ratio direct / tail is the drawn DRR (dB). The reverberant clip is truncated to the input
  length (the tail past the end is dropped: lengths, hence buckets, do not change) and rescaled
  to the input's RMS.
- Noise: Gaussian noise shaped in the frequency domain to a 1/f^beta power spectrum (beta drawn
  in `cfg.noise_beta`: 0 white, 1 pink, 2 brown; DC removed), scaled to the drawn SNR against the
  clip's mean power. A silent clip (power 0) is returned unchanged.
- Channel: a microphone/line simulation between the room and the noise: a 2nd-order Butterworth
  high-pass at a cutoff log-uniform in `cfg.highpass_hz` (clipped below Nyquist), then the
  first-order tilt y[n] = x[n] - a x[n-1], a uniform in `cfg.tilt`, rescaled to the input's RMS.
  After per-utterance mean normalization a fixed filter alone would cancel out in the log-mel
  features; what it changes is which bands the speech still dominates once noise is added, and
  that is the mismatch between recording set-ups (one speaker's microphone cuts the lows,
  another's the highs).
- Each of reverb, channel and noise is applied with its own probability; draws are made in a fixed
  order whether or not a step applies, so turning one augmentation on or off does not change
  the random numbers another one sees.
"""
from __future__ import annotations

import math

import numpy as np

from jaxslu.config import WaveAugmentConfig

__all__ = ["check_augment_config", "augment_enabled", "speed_perturb", "synthetic_rir",
           "reverberate", "channel_filter", "coloured_noise", "add_noise", "perturb"]


def _range(name: str, r, lo: float, hi: float) -> tuple[float, float]:
    if len(r) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in r):
        raise ValueError(f"data.augment.{name}={r!r}: give two finite numbers [low, high]")
    a, b = float(r[0]), float(r[1])
    if not lo <= a <= b <= hi:
        raise ValueError(f"data.augment.{name}={r!r}: need {lo} <= low <= high <= {hi}")
    return a, b


def check_augment_config(cfg: WaveAugmentConfig) -> None:
    """Raise ValueError naming the `data.augment` field that makes no sense."""
    for s in cfg.speeds:
        if not (isinstance(s, (int, float)) and math.isfinite(s) and 0.5 <= s <= 2.0):
            raise ValueError(f"data.augment.speeds={cfg.speeds!r}: each factor must lie in "
                             "[0.5, 2.0], e.g. [0.9, 1.0, 1.1]")
    for name in ("reverb_prob", "noise_prob", "channel_prob"):
        p = getattr(cfg, name)
        if not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
            raise ValueError(f"data.augment.{name}={p!r} must be a probability in [0, 1]")
    _range("rt60_s", cfg.rt60_s, 0.01, 5.0)
    _range("drr_db", cfg.drr_db, -30.0, 60.0)
    _range("noise_snr_db", cfg.noise_snr_db, -30.0, 100.0)
    _range("noise_beta", cfg.noise_beta, 0.0, 3.0)
    _range("highpass_hz", cfg.highpass_hz, 1.0, 20000.0)
    _range("tilt", cfg.tilt, -0.99, 0.99)


def augment_enabled(cfg: WaveAugmentConfig) -> bool:
    """Whether any waveform augmentation is on."""
    return bool(any(float(s) != 1.0 for s in cfg.speeds) or cfg.reverb_prob > 0
                or cfg.noise_prob > 0 or cfg.channel_prob > 0)


def speed_perturb(x: np.ndarray, sample_rate: int, factor: float) -> np.ndarray:
    """`x` played `factor` times faster (len ~ len(x) / factor), same sample rate."""
    from jaxslu.audio.io import resample

    if factor == 1.0 or x.size == 0:
        return x
    return resample(x, int(round(sample_rate * factor)), sample_rate).astype(np.float32)


def synthetic_rir(rng: np.random.Generator, sample_rate: int, rt60: float,
                  drr_db: float) -> np.ndarray:
    """An exponentially decaying noise impulse response with a unit direct path (module doc)."""
    start = max(1, int(round(1e-3 * sample_rate)))
    n = max(start + 1, int(round(1.2 * rt60 * sample_rate)))
    t = np.arange(n - start) / sample_rate
    tail = rng.standard_normal(n - start) * np.exp(-3.0 * math.log(10.0) * t / rt60)
    energy = float(np.sum(tail ** 2))
    h = np.zeros(n, np.float64)
    h[0] = 1.0
    if energy > 0:
        h[start:] = tail * math.sqrt(10.0 ** (-drr_db / 10.0) / energy)
    return h


def reverberate(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """x convolved with h, truncated to len(x), rescaled to x's RMS."""
    from scipy.signal import fftconvolve

    if x.size == 0:
        return x
    y = fftconvolve(x.astype(np.float64), h)[: x.size]
    rms_x, rms_y = float(np.sqrt(np.mean(x.astype(np.float64) ** 2))), float(np.sqrt(np.mean(y ** 2)))
    if rms_y > 0:
        y *= rms_x / rms_y
    return y.astype(np.float32)


def coloured_noise(rng: np.random.Generator, n: int, beta: float) -> np.ndarray:
    """Zero-mean Gaussian noise of n samples with a 1/f^beta power spectrum, unit variance."""
    if n < 2:
        return np.zeros(n, np.float64)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    spec *= f ** (-beta / 2.0)
    spec[0] = 0.0
    y = np.fft.irfft(spec, n)
    sd = float(np.std(y))
    return y / sd if sd > 0 else y


def add_noise(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """x + noise scaled so that mean power(x) / mean power(noise) = snr_db."""
    p = float(np.mean(x.astype(np.float64) ** 2)) if x.size else 0.0
    pn = float(np.mean(noise ** 2)) if noise.size else 0.0
    if p <= 0 or pn <= 0:
        return x
    scale = math.sqrt(p / (pn * 10.0 ** (snr_db / 10.0)))
    return (x + scale * noise).astype(np.float32)


def channel_filter(x: np.ndarray, sample_rate: int, highpass_hz: float, tilt: float) -> np.ndarray:
    """High-pass (2nd-order Butterworth at highpass_hz), then y[n] = x[n] - tilt x[n-1];
    rescaled to x's RMS."""
    from scipy.signal import butter, lfilter, sosfilt

    if x.size == 0:
        return x
    xd = x.astype(np.float64)
    fc = min(float(highpass_hz), 0.45 * sample_rate)
    y = sosfilt(butter(2, fc, btype="highpass", fs=sample_rate, output="sos"), xd)
    y = lfilter([1.0, -float(tilt)], [1.0], y)
    rms_x, rms_y = float(np.sqrt(np.mean(xd ** 2))), float(np.sqrt(np.mean(y ** 2)))
    if rms_y > 0:
        y *= rms_x / rms_y
    return y.astype(np.float32)


def perturb(x: np.ndarray, sample_rate: int, rng: np.random.Generator, cfg: WaveAugmentConfig,
            *, max_samples: int | None = None) -> tuple[np.ndarray, dict]:
    """(augmented float32 waveform, what was applied) for one example (module docstring)."""
    x = np.asarray(x, np.float32)
    # Every draw is made, in this order, whatever is enabled (see the module docstring).
    u_speed, u_rev, u_noise = rng.random(3)
    rt60 = rng.uniform(*cfg.rt60_s)
    drr = rng.uniform(*cfg.drr_db)
    snr = rng.uniform(*cfg.noise_snr_db)
    beta = rng.uniform(*cfg.noise_beta)
    rir_rng, noise_rng = rng.spawn(2)
    u_chan = rng.random()
    highpass = math.exp(rng.uniform(*np.log(cfg.highpass_hz)))
    tilt = rng.uniform(*cfg.tilt)
    applied: dict = {}
    if cfg.speeds:
        s = float(cfg.speeds[min(int(u_speed * len(cfg.speeds)), len(cfg.speeds) - 1)])
        if max_samples is not None and x.size / s > max_samples:
            s = 1.0
        if s != 1.0:
            x = speed_perturb(x, sample_rate, s)
            applied["speed"] = s
    if u_rev < cfg.reverb_prob:
        x = reverberate(x, synthetic_rir(rir_rng, sample_rate, rt60, drr))
        applied.update(rt60=float(rt60), drr_db=float(drr))
    if u_chan < cfg.channel_prob:
        x = channel_filter(x, sample_rate, highpass, tilt)
        applied.update(highpass_hz=float(highpass), tilt=float(tilt))
    if u_noise < cfg.noise_prob:
        x = add_noise(x, coloured_noise(noise_rng, x.size, beta), snr)
        applied.update(snr_db=float(snr), noise_beta=float(beta))
    return x, applied
