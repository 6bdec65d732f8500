"""`jaxslu discover` end to end on TSV files it has never seen: a generated corpus of 10 intents
with their own vocabularies (6 known, 4 to find), the from-scratch encoder trained for real on
the core trainer; the number of intents must be found and the clusters recovered; the outputs
follow the documented schema; rerunning the same command resumes; other inputs into the same
folder and bad files are clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from jaxslu import cli

FILLER = ["please", "now", "the", "a", "my", "can", "you", "i", "want", "to"]


def _corpus(path, n_intents=10, per=40, seed=0):
    rng = np.random.default_rng(seed)
    vocab = {f"intent_{k}": [f"w{k}x{j}" for j in range(6)] for k in range(n_intents)}
    for split, n in (("train", per), ("test", 10), ("dev", 4)):
        lines = ["text\tlabel"]
        for lab, words in vocab.items():
            for _ in range(n):
                own = rng.choice(words, rng.integers(2, 4), replace=False).tolist()
                fill = rng.choice(FILLER, rng.integers(1, 3)).tolist()
                toks = own + fill
                rng.shuffle(toks)
                lines.append(" ".join(toks) + "\t" + lab)
        (path / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    domains = {"even": [f"intent_{k}" for k in range(0, n_intents, 2)],
               "odd": [f"intent_{k}" for k in range(1, n_intents, 2)]}
    (path / "domains.json").write_text(json.dumps(domains))


ARGS = ["--known-ratio", "0.6", "--labeled-ratio", "0.25", "--variant", "tiny",
        "--set", "eval.options.heldout_intents=0.34", "--set", "train.steps=60"]


@pytest.fixture(scope="module")
def discovered(tmp_path_factory):
    d = tmp_path_factory.mktemp("disc")
    _corpus(d)
    out = d / "out"
    argv = ["discover", "--train", str(d / "train.tsv"), "--test", str(d / "test.tsv"),
            "--dev", str(d / "dev.tsv"), "--seed", "0", "--out", str(out), *ARGS]
    assert cli.main(argv) == 0
    return d, out, argv


def test_discover_finds_the_intents_and_writes_the_schema(discovered):
    d, out, _ = discovered
    report = json.loads((out / "report.json").read_text())
    for key in ("command", "commit", "machine", "versions", "nmi", "ari", "acc", "k_found",
                "k_true", "open", "timings", "calibration", "novel"):
        assert key in report, key
    assert report["k_true"] == 10 and report["k_known"] == 6
    assert abs(report["k_found"] - 10) <= 1, report
    assert report["acc"] >= 85 and report["nmi"] >= 85, report
    assert report["open"]["accuracy"] >= 85, report["open"]
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    tests = (d / "test.tsv").read_text().splitlines()[1:]
    assert len(preds) == len(tests) == 100
    for p, line in zip(preds, tests):
        assert set(p) == {"text", "cluster", "known", "intent", "domain_cluster"}
        assert p["text"] == line.split("\t")[0]
        assert p["known"] == (p["intent"] is not None)
        assert isinstance(p["cluster"], int) and isinstance(p["domain_cluster"], int)
    assert report["domains"]["k_true"] == 2


def test_discover_resumes_and_refuses_other_inputs(discovered, capsys):
    d, out, argv = discovered
    before = json.loads((out / "report.json").read_text())
    assert cli.main(argv) == 0  # both trainings resume at their last step: nothing retrains
    after = json.loads((out / "report.json").read_text())
    assert after["k_found"] == before["k_found"] and after["acc"] == before["acc"]
    other = list(argv)
    other[other.index("--seed") + 1] = "1"
    assert cli.main(other) == 2
    assert "holds a discovery run of other inputs" in capsys.readouterr().err


def test_discover_bad_file_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("text\tlabel\nhello world\n")
    code = cli.main(["discover", "--train", str(bad), "--test", str(bad), "--out",
                     str(tmp_path / "o"), "--variant", "tiny"])
    assert code == 2
    assert "bad.tsv:2: expected text<TAB>label" in capsys.readouterr().err
