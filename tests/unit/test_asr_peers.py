"""benchmarks/asr_peers.py: the logic around the timings (hypothesis normalization, WER, digit
accuracy, argument and data checks) on tiny inputs, and one pocketsphinx utterance where
pocketsphinx is installed (the bench extra; CI installs .[test,tfds] only)."""
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
FSDD = ROOT / "data" / "fsdd" / "recordings"


def load_module():
    spec = importlib.util.spec_from_file_location("asr_peers", ROOT / "benchmarks" /
                                                  "asr_peers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def peers(monkeypatch):
    """The module, with `import pocketsphinx` made to fail: the pure logic must not need it."""
    monkeypatch.setitem(sys.modules, "pocketsphinx", None)
    return load_module()


def test_normalize_hypothesis_strips_fillers_and_variants(peers):
    assert peers.normalize_hypothesis("<s> you are(2) </s>") == "you are"
    assert peers.normalize_hypothesis("[NOISE] <sil> Seven ++BREATH++ [SPEECH]") == "seven"
    assert peers.normalize_hypothesis("o'clock(3) Don't.") == "o'clock don't"
    assert peers.normalize_hypothesis("<sil> [NOISE]") == ""
    assert peers.normalize_hypothesis(None) == ""
    assert peers.normalize_hypothesis("") == ""
    assert peers.is_filler("<sil>") and peers.is_filler("[NOISE]") and peers.is_filler("++UM++")
    assert not peers.is_filler("one") and not peers.is_filler("++")


def test_corpus_wer_is_corpus_level(peers):
    w = peers.corpus_wer(["one", "two three four"], ["one", "two"])
    assert w["rate"] == pytest.approx(2 / 4)  # not the mean of per-utterance rates (1/3)
    assert (w["deletions"], w["substitutions"], w["insertions"]) == (2, 0, 0)
    assert w["ref_len"] == 4 and w["utterances"] == 2
    w = peers.corpus_wer(["seven"], ["heaven and"])
    assert w["rate"] == pytest.approx(2.0)
    s = peers.scores(["one", "two"], ["one", "the two"], is_fsdd=True)
    assert s["wer"] == pytest.approx(0.5) and s["digit_accuracy"] == 1.0
    assert "digit_accuracy" not in peers.scores(["a b"], ["a b"], is_fsdd=False)


def test_digit_accuracy(peers):
    refs = ["seven", "one", "zero", "Two"]
    hyps = ["and seven", "seventy one", "oh", "seventy"]
    assert peers.digit_accuracy(refs, hyps) == pytest.approx(2 / 4)  # a whole word, not a prefix
    assert peers.digit_accuracy(["nine"], ["Nine!"]) == 1.0
    assert math.isnan(peers.digit_accuracy([], []))
    with pytest.raises(ValueError, match="2 references but 1"):
        peers.digit_accuracy(["one", "two"], ["one"])
    with pytest.raises(ValueError, match="not a digit word"):
        peers.digit_accuracy(["play music"], ["play music"])
    with pytest.raises(TypeError):
        peers.digit_accuracy("one", "one")


def test_rtf(peers):
    assert peers.rtf(1.0, 4.0) == 0.25
    assert math.isnan(peers.rtf(1.0, 0.0))


def test_parse_runs_errors(peers, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(peers.BenchError, match="has no config.json"):
        peers.parse_runs([f"fsdd={run}"])
    (run / "config.json").write_text("{}")
    assert peers.parse_runs([f"fsdd={run}"]) == [("fsdd", run, "test")]
    assert peers.parse_runs([f"fsdd={run}"], "dev") == [("fsdd", run, "dev")]
    assert peers.parse_runs([f"s={run}@slurp_test"]) == [("s", run, "slurp_test")]
    with pytest.raises(peers.BenchError, match="NAME=WORKDIR@SPLIT"):
        peers.parse_runs([f"s={run}@"])
    with pytest.raises(peers.BenchError, match="does not exist"):
        peers.parse_runs([f"fsdd={tmp_path / 'missing'}"])
    with pytest.raises(peers.BenchError, match="NAME=WORKDIR"):
        peers.parse_runs([str(run)])
    with pytest.raises(peers.BenchError, match="given twice"):
        peers.parse_runs([f"a={run}", f"a={run}"])
    with pytest.raises(peers.BenchError, match="no --run"):
        peers.parse_runs([])


def test_main_reports_missing_workdir(peers, tmp_path, capsys):
    out = tmp_path / "out.json"
    rc = peers.main(["--run", f"fsdd={tmp_path / 'nope'}", "--out", str(out)])
    assert rc == 2 and not out.exists()
    assert "does not exist" in capsys.readouterr().err


def test_missing_pocketsphinx_names_the_extra(peers):
    with pytest.raises(peers.BenchError, match=r'pip install -e "\.\[bench\]"'):
        peers.require_pocketsphinx()


class _Source:
    def __init__(self, audio):
        self.audio = audio
        self.name = "fake"

    def __len__(self):
        return 3

    def __getitem__(self, i):
        return {"id": str(i), "text": "one", "audio": self.audio, "sample_rate": 8000}

    def text(self, i):
        return "one"

    def metadata(self, i):
        return {"id": str(i), "text": "one"}


def test_text_only_dataset_is_refused(peers):
    with pytest.raises(peers.BenchError, match="has no audio"):
        peers.check_has_audio(_Source(None), "slurp", "slurp_text")
    peers.check_has_audio(_Source(np.zeros(80, np.float32)), "fsdd", "fsdd")


def test_first_n_keeps_indices(peers):
    sub = peers.FirstN(_Source(np.zeros(80, np.float32)), 2)
    assert len(sub) == 2 and sub[1]["id"] == "1" and sub.metadata(0)["id"] == "0"
    assert len(peers.FirstN(_Source(None), 10)) == 3
    with pytest.raises(IndexError):
        sub[2]


def test_to_pcm16_resamples_and_clips(peers):
    x = np.array([0.0, 0.5, -0.5, 1.0] * 20, np.float32)
    pcm = np.frombuffer(peers.to_pcm16(x, 16000), "<i2")
    assert pcm.tolist()[:4] == [0, 16384, -16384, 32767]
    up = np.frombuffer(peers.to_pcm16(x, 8000), "<i2")
    assert len(up) == 2 * len(x)
    assert peers.to_pcm16(np.full(4, 3.0, np.float32), 16000) == np.full(4, 32767, "<i2").tobytes()


def test_pocketsphinx_one_utterance():
    # pocketsphinx is in the test extra: this test runs in CI, it is not skipped.
    from jaxslu.audio.io import load_audio

    peers = load_module()
    ps = peers.Pocketsphinx()
    audio, sr = load_audio(FSDD / "1_george_2.wav")
    assert sr == 8000
    raw, wall, cpu = ps.recognize(peers.to_pcm16(audio, sr))
    hyp = peers.normalize_hypothesis(raw)
    assert wall > 0 and cpu > 0
    assert "one" in hyp.split()  # this recording is one pocketsphinx gets right
    assert ps.recognize(b"")[0] == ""  # empty audio: no hypothesis, no crash
    d = ps.describe()
    assert d["settings"]["samprate"] == 16000 and Path(d["hmm"]).is_dir()
    assert int(d["version"].split(".")[0]) >= 5



def _run_dir(tmp_path, name, overrides):
    """A workdir holding only the resolved config.json of configs/fsdd_slu.py + overrides."""
    from jaxslu.config import load_config, save_config

    run = tmp_path / name
    run.mkdir()
    save_config(load_config(ROOT / "configs" / "fsdd_slu.py", None, overrides),
                run / "config.json")
    return run


def test_main_refuses_text_only_datasets_and_other_tasks(peers, tmp_path, capsys):
    out = tmp_path / "o.json"
    run = _run_dir(tmp_path, "text", ["data.dataset=slurp_text"])
    assert peers.main(["--run", f"slurp={run}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "has no audio" in err and "slurp_text" in err
    run = _run_dir(tmp_path, "nlu", ["task=nlu"])
    assert peers.main(["--run", f"x={run}", "--out", str(out)]) == 2
    assert "transducer_slu run" in capsys.readouterr().err
    assert not out.exists()
