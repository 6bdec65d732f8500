"""Waveform augmentation (speed, reverberation, coloured noise), its pipeline seeding, and VTLP.

Checks are against independent measurements: the frequency of a perturbed sine from its FFT
peak, the SNR recomputed from the two components, the spectral slope of the noise fitted in
log-log, RT60 from Schroeder backward integration of the impulse response.
"""
from __future__ import annotations

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

from jaxslu.audio.frontend import hz_to_mel, log_mel, vtlp_warp
from jaxslu.audio.perturb import (add_noise, augment_enabled, channel_filter,
                                  check_augment_config, coloured_noise, perturb, reverberate,
                                  speed_perturb, synthetic_rir)
from jaxslu.config import FrontendConfig, WaveAugmentConfig
from jaxslu.data.labels import Vocabularies
from jaxslu.data.sources import manifest
from jaxslu.slu.batching import make_audio_batches

from tests.unit.test_pipeline import SR, CharTokenizer, cfg, real_indices, write_corpus

SR16 = 16000


def sine(freq, seconds=0.5, sr=SR16):
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x, sr=SR16):
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return np.argmax(spec) * sr / x.size


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturb_scales_duration_and_frequency(factor):
    x = sine(1000.0)
    y = speed_perturb(x, SR16, factor)
    assert abs(y.size - x.size / factor) <= 2
    # a 1 kHz tone played `factor` times faster is at factor kHz (FFT bin width 2 Hz / factor)
    assert abs(peak_hz(y) - 1000.0 * factor) < 5.0
    assert speed_perturb(x, SR16, 1.0) is x


def test_rir_direct_path_drr_and_rt60():
    rng = np.random.default_rng(0)
    rt60, drr = 0.4, 6.0
    h = synthetic_rir(rng, SR16, rt60, drr)
    assert h[0] == 1.0 and h.size == round(1.2 * rt60 * SR16)
    tail = h[1:]
    np.testing.assert_allclose(10 * np.log10(1.0 / np.sum(tail ** 2)), drr, atol=1e-9)
    # Schroeder integral of the tail: slope between -5 and -25 dB extrapolated to -60 dB
    edc = np.cumsum(tail[::-1] ** 2)[::-1]
    edc_db = 10 * np.log10(edc / edc[0])
    t = np.arange(edc.size) / SR16
    sel = (edc_db < -5) & (edc_db > -25)
    slope = np.polyfit(t[sel], edc_db[sel], 1)[0]
    assert abs(-60.0 / slope - rt60) < 0.1 * rt60


def test_reverberate_keeps_length_and_rms_and_smears_energy():
    x = np.zeros(8000, np.float32)
    x[1000] = 1.0
    h = synthetic_rir(np.random.default_rng(1), SR16, 0.3, 0.0)
    y = reverberate(x, h)
    assert y.shape == x.shape
    np.testing.assert_allclose(np.sqrt(np.mean(y ** 2)), np.sqrt(np.mean(x ** 2)), rtol=1e-5)
    assert np.sum(y[1100:] ** 2) > 0.3 * np.sum(y ** 2)  # DRR 0 dB: about half is the tail


@pytest.mark.parametrize("beta", [0.0, 1.0, 2.0])
def test_coloured_noise_slope_and_variance(beta):
    n = 1 << 16
    z = coloured_noise(np.random.default_rng(2), n, beta)
    np.testing.assert_allclose(np.std(z), 1.0, rtol=1e-6)
    assert abs(np.mean(z)) < 1e-6
    power = np.abs(np.fft.rfft(z)) ** 2
    f = np.arange(power.size)
    sel = (f > 10) & (f < power.size // 2)
    # log-log slope of the band-averaged power (64 bands) within 0.15 of -beta
    edges = np.unique(np.geomspace(11, power.size // 2, 65).astype(int))
    fc = [np.sqrt(a * b) for a, b in zip(edges[:-1], edges[1:])]
    pb = [power[a:b].mean() for a, b in zip(edges[:-1], edges[1:])]
    slope = np.polyfit(np.log(fc), np.log(pb), 1)[0]
    assert sel.any() and abs(slope + beta) < 0.15


def test_add_noise_hits_the_snr():
    x = sine(300.0)
    noise = coloured_noise(np.random.default_rng(3), x.size, 1.0)
    y = add_noise(x, noise, 7.5)
    n = y.astype(np.float64) - x
    snr = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(n ** 2))
    assert abs(snr - 7.5) < 1e-3
    silent = np.zeros(100, np.float32)
    assert add_noise(silent, noise[:100], 0.0) is silent


def test_channel_filter_highpass_and_tilt():
    lo, hi = sine(60.0, 1.0), sine(2000.0, 1.0)
    # RMS is restored for each signal alone, so compare a two-tone mix: the high-pass at 600 Hz
    # takes the 60 Hz tone down by ~40 dB (2nd order: 12 dB/octave over ~3.3 octaves)
    mix = lo + hi
    y = channel_filter(mix, SR16, 600.0, 0.0)
    spec = np.abs(np.fft.rfft(y[2000:-2000] * np.hanning(y.size - 4000)))
    f = np.fft.rfftfreq(y.size - 4000, 1 / SR16)
    ratio = spec[np.argmin(abs(f - 60))] / spec[np.argmin(abs(f - 2000))]
    assert ratio < 10 ** (-30 / 20)
    np.testing.assert_allclose(np.sqrt(np.mean(y ** 2)), np.sqrt(np.mean(mix ** 2)), rtol=1e-5)
    # tilt a: |1 - a e^{-jw}|; a = 0.9 brightens (2 kHz over 60 Hz by ~|1-0.9e^{-j0.785}|/0.1)
    bright = channel_filter(mix, SR16, 20.0, 0.9)
    spec_b = np.abs(np.fft.rfft(bright[2000:-2000] * np.hanning(y.size - 4000)))
    w = 2 * np.pi * 2000 / SR16
    expected = abs(1 - 0.9 * np.exp(-1j * w)) / abs(1 - 0.9 * np.exp(-1j * 2 * np.pi * 60 / SR16))
    got = spec_b[np.argmin(abs(f - 2000))] / spec_b[np.argmin(abs(f - 60))]
    base = np.abs(np.fft.rfft(mix[2000:-2000] * np.hanning(y.size - 4000)))
    got /= base[np.argmin(abs(f - 2000))] / base[np.argmin(abs(f - 60))]
    assert abs(20 * np.log10(got / expected)) < 1.0  # within 1 dB (the 20 Hz high-pass adds a bit)


ALL = WaveAugmentConfig(speeds=(0.9, 1.0, 1.1), reverb_prob=0.5, noise_prob=0.5,
                        channel_prob=0.5)


def test_perturb_deterministic_and_draw_order_fixed():
    x = sine(440.0)
    a, info_a = perturb(x, SR16, np.random.default_rng([5, 1]), ALL)
    b, info_b = perturb(x, SR16, np.random.default_rng([5, 1]), ALL)
    np.testing.assert_array_equal(a, b)
    assert info_a == info_b
    outs = {perturb(x, SR16, np.random.default_rng([5, k]), ALL)[0].tobytes() for k in range(8)}
    assert len(outs) > 4
    # Turning noise off leaves the speed and reverb draws as they were.
    for k in range(16):
        _, full = perturb(x, SR16, np.random.default_rng([9, k]), ALL)
        _, quiet = perturb(x, SR16, np.random.default_rng([9, k]),
                           dataclasses.replace(ALL, noise_prob=0.0))
        assert {key: v for key, v in full.items() if key not in ("snr_db", "noise_beta")} == quiet
        _, no_channel = perturb(x, SR16, np.random.default_rng([9, k]),
                                dataclasses.replace(ALL, channel_prob=0.0))
        assert {key: v for key, v in full.items() if key not in ("highpass_hz", "tilt")} == no_channel
    off = WaveAugmentConfig()
    y, info = perturb(x, SR16, np.random.default_rng(0), off)
    np.testing.assert_array_equal(y, x)
    assert info == {} and not augment_enabled(off) and augment_enabled(ALL)


def test_perturb_respects_the_largest_bucket():
    x = sine(440.0, seconds=1.0)
    slow = WaveAugmentConfig(speeds=(0.9,))
    y, info = perturb(x, SR16, np.random.default_rng(0), slow, max_samples=x.size)
    assert y.size == x.size and info == {}
    y, info = perturb(x, SR16, np.random.default_rng(0), slow, max_samples=2 * x.size)
    assert info == {"speed": 0.9} and y.size > x.size


@pytest.mark.parametrize("field,value,match", [
    ("speeds", (0.9, 3.0), "speeds"), ("reverb_prob", 1.5, "reverb_prob"),
    ("noise_snr_db", (30.0, 5.0), "noise_snr_db"), ("rt60_s", (0.1,), "rt60_s"),
    ("noise_beta", (0.0, float("nan")), "noise_beta"), ("tilt", (0.0, 1.0), "tilt"),
    ("channel_prob", -0.1, "channel_prob")])
def test_bad_augment_config_is_named(field, value, match):
    with pytest.raises(ValueError, match=match):
        check_augment_config(dataclasses.replace(WaveAugmentConfig(), **{field: value}))


# ---- pipeline: seeded by (seed, stream position) ------------------------------------------


@pytest.fixture
def corpus(tmp_path):
    src = manifest("train", path=str(write_corpus(tmp_path)))
    return src, Vocabularies.from_source(src)


def stream(src, vocab, augment, **kw):
    data_cfg = cfg(augment=augment)
    return make_audio_batches(src, tokenizer=CharTokenizer(), vocab=vocab, data_cfg=data_cfg,
                              sample_rate=SR, seed=kw.pop("seed", 0), train=kw.pop("train", True),
                              **kw)


NOISY = WaveAugmentConfig(noise_prob=1.0, noise_snr_db=(0.0, 10.0))


def test_pipeline_augments_training_deterministically_and_resumes(corpus):
    src, vocab = corpus
    plain = iter(stream(src, vocab, WaveAugmentConfig()))
    noisy = iter(stream(src, vocab, NOISY))
    a, b = next(plain), next(noisy)
    np.testing.assert_array_equal(a["index"], b["index"])  # same order, different audio
    assert not np.array_equal(a["audio"], b["audio"])
    np.testing.assert_array_equal(a["audio_lengths"], b["audio_lengths"])
    it = iter(stream(src, vocab, NOISY))
    for _ in range(4):  # crosses an epoch: a repeated example gets new noise
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(3)]
    fresh = iter(stream(src, vocab, NOISY))
    fresh.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(fresh)["audio"], want["audio"])
    # Evaluation is never augmented.
    ev = next(iter(stream(src, vocab, NOISY, train=False)))
    ev_plain = next(iter(stream(src, vocab, WaveAugmentConfig(), train=False)))
    np.testing.assert_array_equal(ev["audio"], ev_plain["audio"])


def test_pipeline_augmentation_same_on_two_processes(corpus):
    src, vocab = corpus
    one = next(iter(stream(src, vocab, NOISY)))  # global batch 4
    halves = [next(iter(stream(src, vocab, NOISY, process_index=p, process_count=2)))
              for p in range(2)]
    assert real_indices([one]) == real_indices(halves)
    rows = {int(i): r for h in halves for i, r in zip(h["index"], h["audio"])}
    for i, r in zip(one["index"], one["audio"]):
        width = min(r.size, rows[int(i)].size)
        np.testing.assert_array_equal(r[:width], rows[int(i)][:width])


# ---- VTLP ------------------------------------------------------------------------------------


def test_vtlp_warp_is_piecewise_linear_and_keeps_the_band():
    f = np.linspace(0, 8000, 801)
    alpha = jnp.array([0.9, 1.0, 1.1])
    w = np.asarray(vtlp_warp(f, alpha, SR16))
    np.testing.assert_allclose(w[1], f, atol=1e-3)
    np.testing.assert_allclose(w[:, 0], 0.0, atol=1e-6)
    np.testing.assert_allclose(w[:, -1], 8000.0, atol=1e-2)
    assert (np.diff(w, axis=1) > 0).all()  # monotone, so no frequency folds
    np.testing.assert_allclose(w[0, 100], 0.9 * f[100], rtol=1e-6)  # 1 kHz is below the boundary
    np.testing.assert_allclose(w[2, 100], 1.1 * f[100], rtol=1e-6)


def test_log_mel_with_unit_warp_equals_plain_and_warp_moves_formants():
    fcfg = FrontendConfig(num_mels=40)
    x = jnp.asarray(np.stack([sine(1000.0), sine(1000.0)]))
    lengths = jnp.array([x.shape[1]] * 2)
    plain, _ = log_mel(x, lengths, fcfg)
    unit, _ = log_mel(x, lengths, fcfg, jnp.ones(2))
    # float32 mel of the warped axis vs the float64 static filterbank: 1e-3 on log energies
    np.testing.assert_allclose(unit, plain, atol=1e-3)
    warped, _ = log_mel(x, lengths, fcfg, jnp.array([1.0, 1.2]))
    edges = np.linspace(hz_to_mel(fcfg.fmin), hz_to_mel(fcfg.fmax), fcfg.num_mels + 2)[1:-1]
    peak = np.asarray(warped[:, 5]).argmax(axis=-1)
    assert np.argmin(abs(edges - hz_to_mel(1000.0))) == peak[0]
    assert np.argmin(abs(edges - hz_to_mel(1200.0))) == peak[1]


def test_transducer_features_apply_vtlp_only_in_training():
    from flax import nnx

    from jaxslu.models.transducer import (EncoderConfig, PredictorConfig, TransducerConfig,
                                          Transducer as TransducerModel)

    mcfg = TransducerConfig(encoder=EncoderConfig(kind="conformer", num_layers=1, dim=16, heads=2,
                                                  conv_kernel=3, subsampling=2),
                            predictor=PredictorConfig(embed_dim=8, hidden=16, layers=1),
                            joint_dim=16)
    no_masks = dict(freq_masks=0, time_masks=0, num_mels=20)
    x = jnp.asarray(np.stack([sine(700.0, 0.2), sine(1500.0, 0.2)]))
    lengths = jnp.array([x.shape[1]] * 2)

    def feats(vtlp, train):
        model = TransducerModel(mcfg, vocab_size=5, frontend_cfg=FrontendConfig(vtlp=vtlp, **no_masks),
                                rngs=nnx.Rngs(0))
        rngs = nnx.Rngs(dropout=0, augment=1)
        return np.asarray(model.features(x, lengths, train=train, rngs=rngs)[0])

    np.testing.assert_array_equal(feats(0.2, False), feats(0.0, False))
    assert not np.allclose(feats(0.2, True), feats(0.0, True), atol=1e-3)
    with pytest.raises(ValueError, match="frontend.vtlp"):
        feats(0.7, True)


def test_fsdd_robust_ablations_each_drop_exactly_one_thing():
    from pathlib import Path

    from jaxslu.config import load_config, to_dict

    path = Path(__file__).resolve().parents[2] / "configs" / "fsdd_robust.py"
    full = to_dict(load_config(path, "default"))

    def diff(a, b, prefix=""):
        out = set()
        for k in a:
            if isinstance(a[k], dict) and isinstance(b.get(k), dict):
                out |= diff(a[k], b[k], f"{prefix}{k}.")
            elif a[k] != b.get(k):
                out.add(prefix + k)
        return out - {"name"}

    expected = {"no_speed": {"data.augment.speeds"}, "no_vtlp": {"frontend.vtlp"},
                "no_reverb": {"data.augment.reverb_prob"}, "no_noise": {"data.augment.noise_prob"},
                "no_synthetic": {"data.options.synthetic_ratio"},
                "no_specaug": {"frontend.freq_mask_width", "frontend.time_masks"},
                "plus_channel": {"data.augment.channel_prob"},
                "plus_channel_no_synthetic": {"data.augment.channel_prob",
                                              "data.options.synthetic_ratio"}}
    for variant, fields in expected.items():
        got = diff(full, to_dict(load_config(path, variant)))
        got |= diff(to_dict(load_config(path, variant)), full)
        assert got == fields, (variant, got)
    none = load_config(path, "none")
    assert none.frontend.vtlp == 0 and not none.data.options and none.data.augment.speeds == ()
    ci_ablation = load_config(path, "ci/no_speed")
    assert ci_ablation.data.augment.speeds == () and ci_ablation.model.encoder.dim == 64
    with pytest.raises(ValueError, match="unknown variant"):
        load_config(path, "no_such_thing")
