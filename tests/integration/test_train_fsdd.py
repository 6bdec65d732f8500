"""Short real training runs on bundled FSDD: learning, evaluation report, transcription, exact
resume, NaN handling. The `tiny` variant of configs/fsdd_slu.py keeps each run to seconds-minutes on
2 CPU cores; the module-scoped run is shared by the tests that only read its results."""
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxslu.config import load_config
from jaxslu.eval import evaluate_workdir
from jaxslu.train.loop import NonFiniteLossError, train

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "fsdd_slu.py"
ONE_DEVICE = jax.devices()[:1]


def _cfg(*overrides):
    return load_config(CONFIG, "tiny", list(overrides))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short training run (the `ci` variant) that every read-only test below shares."""
    workdir = tmp_path_factory.mktemp("fsdd_ci")
    cfg = load_config(CONFIG, "ci")
    result = train(cfg, workdir, progress=False, devices=ONE_DEVICE)
    reports = evaluate_workdir(workdir)
    return workdir, result, reports


def test_short_training_learns(trained):
    workdir, result, reports = trained
    report = reports["test"]
    # 10 digits: chance intent accuracy is 10%, chance WER ~100%. The ci run is a few hundred
    # steps of a small model, far from converged, yet must be far above chance.
    assert report["num_examples"] == 250
    assert report["intent_accuracy"] >= 0.6, report
    assert report["wer"] <= 0.6, report
    assert set(report["per_speaker"]) == {"george", "jackson", "nicolas", "theo", "yweweler"}
    for spk, m in report["per_speaker"].items():
        assert m["num_examples"] == 50
    saved = json.loads((workdir / "report_test.json").read_text())
    assert saved["wer"] == report["wer"]
    lines = (workdir / "predictions_test.jsonl").read_text().splitlines()
    assert len(lines) == 250
    assert (workdir / "config.json").exists() and list((workdir / "tb").iterdir())


def test_transcribe_cli_on_other_sample_rates(trained, tmp_path):
    import soundfile as sf

    from jaxslu.audio.io import load_audio, resample
    workdir, _, _ = trained
    src = ROOT / "data" / "fsdd" / "recordings" / "7_theo_0.wav"
    x, sr = load_audio(src)
    f44 = tmp_path / "seven_44k.flac"
    sf.write(f44, resample(x, sr, 44100), 44100)
    out = subprocess.run([sys.executable, "-m", "jaxslu.cli", "transcribe", "--workdir",
                          str(workdir), str(src), str(f44)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.strip().splitlines()]
    assert [Path(r["file"]).name for r in rows] == ["7_theo_0.wav", "seven_44k.flac"]
    for r in rows:
        assert set(r) >= {"file", "transcript", "intent"}
    # Resampling to 16 kHz makes both inputs the same signal up to filter edges: same answer.
    assert rows[0]["intent"] == rows[1]["intent"]


def test_transcribe_bad_files_are_named_and_the_rest_transcribed(trained, tmp_path):
    import soundfile as sf

    from jaxslu.audio.io import load_audio, resample
    workdir, _, _ = trained
    good = ROOT / "data" / "fsdd" / "recordings" / "3_theo_1.wav"
    bad = tmp_path / "corrupt.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    x, sr = load_audio(good)
    low = tmp_path / "one_khz.wav"
    sf.write(low, resample(x, sr, 1000), 1000)
    files = [tmp_path / "missing.wav", bad, good, low]
    out = subprocess.run([sys.executable, "-m", "jaxslu.cli", "transcribe", "--workdir",
                          str(workdir), *map(str, files)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 1, out.stderr
    rows = [json.loads(line) for line in out.stdout.strip().splitlines()]
    assert [Path(r["file"]).name for r in rows] == [f.name for f in files]
    for r, f in zip(rows, files):
        if f == good:
            assert "transcript" in r and "error" not in r
        else:
            assert f.name in r["error"], r
    assert "1000 Hz" in rows[3]["error"] and "8000 Hz" in rows[3]["error"]
    assert "3 of 4" in out.stderr or "3 of 4 file" in out.stderr, out.stderr


def _params(state):
    return [np.asarray(x) for x in jax.tree.leaves(state.params)]


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path):
    cfg = _cfg("train.steps=6", "train.checkpoint_every=3", "train.log_every=3")
    full = train(cfg, tmp_path / "full", progress=False, devices=ONE_DEVICE)
    part = train(cfg, tmp_path / "resumed", progress=False, devices=ONE_DEVICE, stop_after=4)
    assert int(part.state.step) == 4
    rest = train(cfg, tmp_path / "resumed", progress=False, devices=ONE_DEVICE)
    assert int(rest.state.step) == 6 and rest.steps_run == 2
    for a, b in zip(_params(full.state), _params(rest.state)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)  # same programs, same data: exact


def test_augmented_run_with_synthetic_voices_resumes_exactly(tmp_path):
    """configs/fsdd_robust.py (every augmentation, VTLP, synthetic digits): the waveform
    augmentation is seeded by the stream position, so an interrupted run resumes to the same
    parameters as an uninterrupted one."""
    cfg = load_config(ROOT / "configs" / "fsdd_robust.py", "tiny",
                      ["train.steps=4", "train.checkpoint_every=2", "train.log_every=2",
                       "data.options.synthetic_ratio=0.01",
                       f"data.options.cache_dir={tmp_path / 'cache'}"])
    assert cfg.frontend.vtlp > 0 and cfg.data.augment.noise_prob > 0
    full = train(cfg, tmp_path / "full", progress=False, devices=ONE_DEVICE)
    part = train(cfg, tmp_path / "resumed", progress=False, devices=ONE_DEVICE, stop_after=3)
    rest = train(cfg, tmp_path / "resumed", progress=False, devices=ONE_DEVICE)
    assert int(part.state.step) == 3 and int(rest.state.step) == 4
    for a, b in zip(_params(full.state), _params(rest.state)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    synthetic = list((tmp_path / "cache").glob("synthetic_digits-*/manifest.jsonl"))
    # 0.01 x 2250 real training recordings = 22.5, rounded half up
    assert len(synthetic) == 1 and len(synthetic[0].read_text().splitlines()) == 23


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    from jaxslu.eval import LoadedRun
    # An absurd learning rate (no warm-up) turns the parameters non-finite after one update: the
    # second step's loss is not finite, training stops, the step-1 checkpoint stays restorable.
    cfg = _cfg("train.steps=5", "train.checkpoint_every=1", "train.log_every=1",
               "optim.learning_rate=1e30", "optim.warmup_steps=0", "optim.clip_norm=0.0")
    with pytest.raises(NonFiniteLossError, match="last good checkpoint"):
        train(cfg, tmp_path, progress=False, devices=ONE_DEVICE)
    run = LoadedRun.from_workdir(tmp_path)
    assert run.step >= 1
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(run.params))


def test_unknown_config_key_is_a_clear_cli_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "jaxslu.cli", "train", "--config", str(CONFIG),
                          "--workdir", str(tmp_path), "--set", "model.encoder.num_layer=3"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "unknown config key 'num_layer'" in out.stderr and "valid keys" in out.stderr


def test_rnnt_activation_must_match_the_models_joint():
    from jaxslu.train.loop import make_trainer
    from jaxslu.slu.task import transducer_model_kwargs
    cfg = _cfg("model.joint_activation=relu")
    with pytest.raises(ValueError, match="loss_options.rnnt.activation='tanh'.*'relu'"):
        make_trainer(cfg, transducer_model_kwargs(cfg, 8, 10), ONE_DEVICE)
