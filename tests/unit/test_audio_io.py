"""Waveform I/O: FLAC/WAV reading, error cases, resampling against analytic signals, atomic writes."""
from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from jaxslu.audio import io

Q16 = 1.0 / 32768  # one 16-bit quantization step: the round-trip error bound is half of it


def _tone(freq, sr, seconds, amp=0.5):
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_flac_round_trip(tmp_path):
    x = _tone(440, 16000, 0.5)
    p = io.write_flac(tmp_path / "sub" / "a.flac", x, 16000)
    assert p == tmp_path / "sub" / "a.flac"
    y, sr = io.load_audio(p)
    assert sr == 16000 and y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=Q16)
    assert sorted(os.listdir(p.parent)) == ["a.flac"]  # no temporary file left behind


def test_stereo_wav_mixed_to_mono(tmp_path):
    left, right = _tone(300, 8000, 0.2, 0.6), _tone(500, 8000, 0.2, 0.2)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 8000, subtype="PCM_16")
    y, sr = io.load_audio(tmp_path / "s.wav")
    assert sr == 8000 and y.ndim == 1
    np.testing.assert_allclose(y, (left + right) / 2, atol=Q16)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.flac"):
        io.load_audio(tmp_path / "nope.flac")


@pytest.mark.parametrize("content", [b"", b"RIFF garbage that is not audio" * 3])
def test_corrupt_or_empty_file(tmp_path, content):
    p = tmp_path / "bad.wav"
    p.write_bytes(content)
    with pytest.raises(io.AudioError, match="bad.wav"):
        io.load_audio(p)


def test_wav_without_samples(tmp_path):
    p = tmp_path / "empty.wav"
    sf.write(p, np.zeros(0, np.float32), 16000, subtype="PCM_16")
    with pytest.raises(io.AudioError, match="no samples"):
        io.load_audio(p)


def test_non_finite_and_out_of_range_samples(tmp_path):
    x = _tone(440, 16000, 0.1)
    x[10] = np.nan
    sf.write(tmp_path / "nan.wav", x, 16000, subtype="FLOAT")
    with pytest.raises(io.AudioError, match="NaN"):
        io.load_audio(tmp_path / "nan.wav")
    sf.write(tmp_path / "loud.wav", _tone(440, 16000, 0.1, amp=2.0), 16000, subtype="FLOAT")
    with pytest.raises(io.AudioError, match="peak amplitude"):
        io.load_audio(tmp_path / "loud.wav")


def test_resample_identity_and_rejects_bad_rates():
    x = _tone(440, 16000, 0.1)
    y = io.resample(x, 16000, 16000)
    np.testing.assert_array_equal(y, x)
    assert y is not x
    with pytest.raises(ValueError, match="sr_out"):
        io.resample(x, 16000, 0)
    with pytest.raises(ValueError, match="1-D"):
        io.resample(np.zeros((2, 10)), 16000, 8000)


@pytest.mark.parametrize("sr_in,sr_out", [(22050, 16000), (8000, 16000), (48000, 16000)])
def test_resample_preserves_a_tone(sr_in, sr_out):
    """A 440 Hz tone resampled must equal the same tone sampled at the new rate (away from the
    edges, where the polyphase filter sees the implicit zero padding). Tolerance 2e-3 of a 0.5
    amplitude: scipy's default Kaiser filter passes 440 Hz with ~1e-4 ripple."""
    seconds = 0.25
    y = io.resample(_tone(440, sr_in, seconds), sr_in, sr_out)
    assert y.dtype == np.float32
    assert len(y) == int(np.ceil(int(sr_in * seconds) * sr_out / sr_in))
    ref = _tone(440, sr_out, seconds)[:len(y)]
    edge = sr_out // 50  # 20 ms
    np.testing.assert_allclose(y[edge:-edge], ref[edge:-edge], atol=2e-3)


def test_load_resampled(tmp_path):
    io.write_flac(tmp_path / "t.flac", _tone(440, 22050, 0.2), 22050)
    y = io.load_resampled(tmp_path / "t.flac", 16000)
    assert len(y) == int(np.ceil(int(22050 * 0.2) * 16000 / 22050))


def test_write_flac_rejects_bad_waveforms(tmp_path):
    for bad, msg in [(np.zeros((2, 10)), "1-D"), (np.zeros(0), "1-D"),
                     (np.array([0.1, np.inf]), "NaN/inf"), (np.array([0.5, 1.5]), "peak amplitude")]:
        with pytest.raises(io.AudioError, match=msg):
            io.write_flac(tmp_path / "x.flac", bad, 16000)
    assert not (tmp_path / "x.flac").exists()


def test_write_flac_is_atomic_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "keep.flac"
    io.write_flac(target, _tone(440, 16000, 0.1), 16000)
    before = target.read_bytes()

    def failing_write(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(io.sf, "write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        io.write_flac(target, _tone(880, 16000, 0.1), 16000)
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["keep.flac"]
