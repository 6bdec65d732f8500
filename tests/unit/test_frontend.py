"""Log-mel frontend and SpecAugment, checked against an independent numpy implementation.

The reference below is written from the definitions (frame loop, np.fft in float64, filterbank
built weight by weight), not from jaxslu's code. Tolerance for log-mel: 2e-4 absolute in the log
domain. The JAX path computes in float32 (FFT and the mel matrix product at HIGHEST precision);
float32 has ~6e-8 relative rounding, the FFT and a 100-200 term sum grow it to ~1e-6..1e-5
relative in energy = the same absolute error in log energy, so 2e-4 leaves a wide margin while a
wrong window, scale, FFT size or filter edge gives errors of 1e-2 or more.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxslu.audio import augment, frontend
from jaxslu.config import FrontendConfig

# Small config for speed: 8 kHz, 25 ms / 10 ms -> window 200, hop 80, n_fft 256, 24 mels.
SMALL = FrontendConfig(sample_rate=8000, num_mels=24, win_ms=25.0, hop_ms=10.0, fmin=20.0,
                       fmax=4000.0)
LOG_ATOL = 2e-4


# ---------------------------------------------------------------- independent numpy reference
def ref_mel(f):
    return 2595.0 * math.log10(1.0 + f / 700.0)


def ref_inv_mel(m):
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def ref_filterbank(sr, n_fft, num_mels, fmin, fmax):
    """Weights [num_mels][n_fft//2+1], triangles linear in mel, built one weight at a time."""
    m_lo, m_hi = ref_mel(fmin), ref_mel(fmax)
    pts = [m_lo + (m_hi - m_lo) * i / (num_mels + 1) for i in range(num_mels + 2)]
    fb = np.zeros((num_mels, n_fft // 2 + 1))
    for j in range(num_mels):
        left, centre, right = pts[j], pts[j + 1], pts[j + 2]
        for k in range(n_fft // 2 + 1):
            m = ref_mel(k * sr / n_fft)
            if left < m <= centre:
                fb[j, k] = (m - left) / (centre - left)
            elif centre < m < right:
                fb[j, k] = (right - m) / (right - centre)
    return fb


def ref_log_mel(x, cfg):
    """Features of one unpadded waveform x (float64), [frames, mels]."""
    sr = cfg.sample_rate
    win = int(round(cfg.win_ms * sr / 1000))
    hop = int(round(cfg.hop_ms * sr / 1000))
    n_fft = 1
    while n_fft < win:
        n_fft *= 2
    window = np.array([0.5 - 0.5 * math.cos(2 * math.pi * i / win) for i in range(win)])
    x = np.asarray(x, np.float64)
    if len(x) == 0:
        return np.zeros((0, cfg.num_mels))
    if len(x) < win:
        x = np.concatenate([x, np.zeros(win - len(x))])
    fb = ref_filterbank(sr, n_fft, cfg.num_mels, cfg.fmin, cfg.fmax)
    out = []
    start = 0
    while start + win <= len(x):
        spec = np.fft.rfft(x[start:start + win] * window, n=n_fft)
        power = np.abs(spec) ** 2
        out.append(np.log(np.maximum(fb @ power, 1e-10)))
        start += hop
    return np.array(out)


# ---------------------------------------------------------------- log-mel
def test_filterbank_matches_reference():
    for cfg in (SMALL, FrontendConfig()):
        fb = frontend.mel_filterbank(cfg)
        n_fft = frontend.fft_size(cfg)
        ref = ref_filterbank(cfg.sample_rate, n_fft, cfg.num_mels, cfg.fmin, cfg.fmax)
        assert fb.shape == (n_fft // 2 + 1, cfg.num_mels)
        np.testing.assert_allclose(fb, ref.T, atol=1e-5)  # float32 storage of float64 weights
        assert fb.min() >= 0 and fb.max() <= 1


def test_default_sizes():
    cfg = FrontendConfig()
    sizes = frontend.window_samples(cfg), frontend.hop_samples(cfg), frontend.fft_size(cfg)
    assert sizes == (400, 160, 512)


def test_num_frames_rule():
    cfg = FrontendConfig()
    counts = [frontend.num_frames(n, cfg) for n in (0, 1, 399, 400, 559, 560, 16000)]
    assert counts == [0, 1, 1, 1, 1, 2, 98]
    arr = frontend.num_frames(np.array([0, 1, 400, 560, 16000]), cfg)
    np.testing.assert_array_equal(arr, [0, 1, 1, 2, 98])
    assert arr.dtype == np.int32
    np.testing.assert_array_equal(frontend.num_frames(jnp.array([0, 560]), cfg), [0, 2])
    with pytest.raises(ValueError, match="num_samples"):
        frontend.num_frames(-1, cfg)


def test_log_mel_matches_reference_ragged(rng):
    n = 2000
    # full, ragged, shorter than a window, exactly one window, empty
    lengths = np.array([2000, 1567, 150, 200, 0], np.int32)
    audio = rng.uniform(-0.8, 0.8, (len(lengths), n)).astype(np.float32)
    feats, frame_lengths = frontend.log_mel(audio, lengths, SMALL)
    feats, frame_lengths = np.asarray(feats), np.asarray(frame_lengths)
    assert feats.shape == (len(lengths), frontend.num_frames(n, SMALL), SMALL.num_mels)
    assert feats.dtype == np.float32 and frame_lengths.dtype == np.int32
    for i, length in enumerate(lengths):
        ref = ref_log_mel(audio[i, :length], SMALL)
        assert frame_lengths[i] == len(ref)
        np.testing.assert_allclose(feats[i, :len(ref)], ref, atol=LOG_ATOL, rtol=0)
        assert np.all(feats[i, len(ref):] == 0)  # frames past the row's length


def test_log_mel_default_config_matches_reference(rng):
    cfg = FrontendConfig()
    audio = (0.3 * rng.standard_normal((1, 4000))).astype(np.float32)
    feats, _ = frontend.log_mel(audio, np.array([4000]), cfg)
    np.testing.assert_allclose(np.asarray(feats[0]), ref_log_mel(audio[0], cfg), atol=LOG_ATOL, rtol=0)


def test_pure_tone_lands_in_its_mel_bin():
    cfg = FrontendConfig()
    f0 = 1000.0  # exactly FFT bin 32 at 16 kHz / 512
    t = np.arange(8000) / cfg.sample_rate
    audio = (0.5 * np.sin(2 * np.pi * f0 * t)).astype(np.float32)[None]
    feats, fl = frontend.log_mel(audio, np.array([8000]), cfg)
    # expected filter: the one whose centre (in mel) is closest to the tone
    pts = np.linspace(ref_mel(cfg.fmin), ref_mel(cfg.fmax), cfg.num_mels + 2)[1:-1]
    expected = int(np.argmin(np.abs(pts - ref_mel(f0))))
    winners = np.argmax(np.asarray(feats[0, :int(fl[0])]), axis=-1)
    assert np.all(winners == expected), (set(winners.tolist()), expected)


def test_row_result_independent_of_padding_and_batch(rng):
    length, n = 1111, 1600
    x = rng.uniform(-1, 1, length).astype(np.float32)
    alone, fl_alone = frontend.log_mel(x[None], np.array([length]), SMALL)
    batch = rng.uniform(-1, 1, (3, n)).astype(np.float32) * 50  # garbage padding values
    batch[1, :length] = x
    lengths = np.array([n, length, 700], np.int32)
    feats, fl = frontend.log_mel(batch, lengths, SMALL)
    assert int(fl[1]) == int(fl_alone[0])
    k = int(fl[1])
    np.testing.assert_allclose(np.asarray(feats[1, :k]), np.asarray(alone[0]), atol=1e-5, rtol=0)
    assert np.all(np.asarray(feats[1, k:]) == 0)


def test_jit_matches_eager(rng):
    audio = rng.uniform(-1, 1, (2, 1200)).astype(np.float32)
    lengths = np.array([1200, 900], np.int32)
    eager = frontend.compute_features(audio, lengths, SMALL)
    jitted = jax.jit(frontend.compute_features, static_argnums=2)(audio, lengths, SMALL)
    np.testing.assert_allclose(np.asarray(jitted[0]), np.asarray(eager[0]), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(np.asarray(jitted[1]), np.asarray(eager[1]))


def test_normalize_utterance_against_numpy(rng):
    feats = rng.normal(3.0, 2.0, (3, 10, 4)).astype(np.float32)
    fl = np.array([10, 6, 0], np.int32)
    for i, k in enumerate(fl):
        feats[i, k:] = 0
    out = np.asarray(frontend.normalize_utterance(feats, fl))
    for i, k in enumerate(fl):
        if k:
            v = feats[i, :k].astype(np.float64)
            ref = (v - v.mean(0)) / np.sqrt(v.var(0) + 1e-5)
            np.testing.assert_allclose(out[i, :k], ref, atol=1e-5)
        assert np.all(out[i, k:] == 0)


def test_compute_features_normalization_modes(rng):
    audio = rng.uniform(-1, 1, (1, 1600)).astype(np.float32)
    raw, fl = frontend.compute_features(audio, np.array([1600]), dataclasses.replace(SMALL, normalize="none"))
    norm, _ = frontend.compute_features(audio, np.array([1600]), SMALL)
    np.testing.assert_allclose(np.asarray(norm), np.asarray(frontend.normalize_utterance(raw, fl)), atol=1e-6)
    with pytest.raises(ValueError, match="normalize"):
        frontend.compute_features(audio, np.array([1600]), dataclasses.replace(SMALL, normalize="global"))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"audio \[batch, samples\]"):
        frontend.log_mel(np.zeros(100, np.float32), np.array([100]), SMALL)
    with pytest.raises(ValueError, match="lengths must lie in"):
        frontend.log_mel(np.zeros((1, 100), np.float32), np.array([101]), SMALL)
    with pytest.raises(ValueError, match="lengths of shape"):
        frontend.log_mel(np.zeros((2, 100), np.float32), np.array([10]), SMALL)
    with pytest.raises(ValueError, match="fmax"):
        frontend.mel_filterbank(dataclasses.replace(SMALL, fmax=5000.0))


# ---------------------------------------------------------------- SpecAugment
AUG = dataclasses.replace(SMALL, freq_masks=2, freq_mask_width=5, time_masks=2, time_mask_ratio=0.2)
_spec_augment_jit = jax.jit(augment.spec_augment, static_argnums=3)


def _batch(rng, lengths=(50, 31, 0), t=50, m=24, pad_value=7.0):
    feats = rng.normal(0, 1, (len(lengths), t, m)).astype(np.float32) + 10.0  # no natural zeros
    for i, k in enumerate(lengths):
        feats[i, k:] = pad_value
    return feats, np.array(lengths, np.int32)


def test_spec_augment_deterministic_and_key_dependent(rng):
    feats, fl = _batch(rng)
    a = np.asarray(augment.spec_augment(jax.random.key(3), feats, fl, AUG))  # eager
    b = np.asarray(_spec_augment_jit(jax.random.key(3), feats, fl, AUG))
    c = np.asarray(_spec_augment_jit(jax.random.key(3), feats, fl, AUG))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(b, c)
    others = [np.asarray(_spec_augment_jit(jax.random.key(k), feats, fl, AUG)) for k in range(4, 8)]
    assert any(not np.array_equal(a, o) for o in others)


def test_spec_augment_mask_structure_and_padding(rng):
    feats, fl = _batch(rng)
    keys = jax.random.split(jax.random.key(1), 20)
    for out in np.asarray(jax.vmap(lambda k: augment.spec_augment(k, feats, fl, AUG))(keys)):
        for i, k in enumerate(fl):
            assert np.all(out[i, k:] == 7.0)  # padding untouched
            if k == 0:
                continue
            z = out[i, :k] == 0
            kept = ~z
            np.testing.assert_array_equal(out[i, :k][kept], feats[i, :k][kept])
            cols = z.all(axis=0)  # frequency-masked bins
            rows = z.all(axis=1)  # time-masked frames
            np.testing.assert_array_equal(z, cols[None, :] | rows[:, None])  # only whole bands/frames
            if not rows.all():  # (if every frame were masked, columns could not be told apart)
                assert cols.sum() <= AUG.freq_masks * AUG.freq_mask_width
            if not cols.all():
                assert rows.sum() <= AUG.time_masks * int(AUG.time_mask_ratio * k)


def test_spec_augment_width_distribution(rng):
    """One mask of each kind: widths must be uniform on {0..max}: mean max/2 and the max reached."""
    cfg = dataclasses.replace(SMALL, freq_masks=1, freq_mask_width=10, time_masks=1, time_mask_ratio=0.2)
    feats, fl = _batch(rng, lengths=(50,), t=50, m=24)
    keys = jax.random.split(jax.random.key(0), 400)
    outs = np.asarray(jax.vmap(lambda k: augment.spec_augment(k, feats, fl, cfg))(keys))[:, 0]
    z = outs == 0
    fwidth = z.all(axis=1).sum(axis=1)  # bins masked in every frame
    twidth = z.all(axis=2).sum(axis=1)  # frames masked in every bin
    # Uniform on {0..10}: mean 5, sd 3.16, so the mean of 400 draws has sd 0.16; 0.8 is 5 sd.
    # (A time mask spanning all frames would make all columns look masked; with width <= 10 of 50
    # frames that cannot happen, and likewise for the frequency mask.)
    assert fwidth.max() == 10 and fwidth.min() == 0 and abs(fwidth.mean() - 5.0) < 0.8
    assert twidth.max() == 10 and twidth.min() == 0 and abs(twidth.mean() - 5.0) < 0.8


def test_spec_augment_no_masks_is_identity(rng):
    feats, fl = _batch(rng)
    cfg = dataclasses.replace(AUG, freq_masks=0, time_masks=0)
    np.testing.assert_array_equal(np.asarray(_spec_augment_jit(jax.random.key(0), feats, fl, cfg)), feats)
    with pytest.raises(ValueError, match="time_mask_ratio"):
        augment.spec_augment(jax.random.key(0), feats, fl, dataclasses.replace(AUG, time_mask_ratio=1.5))
