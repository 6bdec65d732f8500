"""A short real run of the self-learning family: the system NLU trained (tiny), a log simulated
with it, rephrase detection and failure isolation trained on the log through the core trainer
and evaluated on its held-out days, rewrites mined and judged, and the command line."""
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from jaxslu.config import load_config
from jaxslu.eval import evaluate_workdir
from jaxslu.selflearn import pipeline
from jaxslu.selflearn.simulator import FAILURES, SimulatorConfig, read_sessions
from jaxslu.train.loop import train

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    """A log whose system is right on 80% of the pool's texts (tests/unit/test_selflearn.py's
    FakeSystem): a tiny NLU model trained in seconds is wrong on almost everything, which
    leaves the downstream tasks nothing to learn."""
    from tests.unit.test_selflearn import FakeSystem

    tmp = tmp_path_factory.mktemp("selflearn")
    stats = pipeline.simulate_log(tmp / "log", FakeSystem(),
                                  cfg=SimulatorConfig(num_users=80, sessions_per_user=10))
    assert stats["sessions"] > 500 and stats["splits"]["heldout"] > 50
    assert stats["failures"]["correct"] > 0.2 * stats["turns"], stats
    return tmp


def test_simulating_with_a_trained_nlu_run(tmp_path):
    cfg = load_config(str(ROOT / "configs/selflearn_system.py"), "tiny", ["train.steps=10"])
    train(cfg, tmp_path / "system", progress=False)
    stats = pipeline.simulate_log(tmp_path / "log", system_workdir=str(tmp_path / "system"),
                                  cfg=SimulatorConfig(num_users=5, sessions_per_user=4))
    sessions = read_sessions(tmp_path / "log")
    assert len(sessions) == stats["sessions"] > 0
    judge = pipeline.load_judge(tmp_path / "log")
    turn = sessions[0]["turns"][0]
    assert judge(turn["asr"], turn) == (turn["success"] and turn["directed"])
    assert len(judge.interpreter.cache) > 0  # the saved interpretations were loaded


def test_rephrase_detection_trains_and_detects(log):
    cfg = load_config(str(ROOT / "configs/selflearn_rephrase.py"), "tiny",
                      [f"data.options.path={log / 'log'}", "train.steps=400",
                       "optim.learning_rate=3e-3"])
    train(cfg, log / "rephrase", progress=False)
    report = evaluate_workdir(log / "rephrase", splits=["heldout"])["heldout"]
    assert report["examples"] > 50 and report["with_rephrase"] > 10
    # the trivial detector (always "rephrase") has precision = the positive share
    share = report["with_rephrase"] / report["examples"]
    assert report["precision"] > share + 0.1, report
    assert report["recall"] > 0.3 and report["span_f1"] > 0.2, report


def test_failure_isolation_beats_the_majority_class(log):
    cfg = load_config(str(ROOT / "configs/selflearn_isolation.py"), "tiny",
                      [f"data.options.path={log / 'log'}", "train.steps=120",
                       "optim.learning_rate=3e-3"])
    train(cfg, log / "isolation", progress=False)
    report = evaluate_workdir(log / "isolation", splits=["heldout"])["heldout"]
    sessions = read_sessions(log / "log", split="heldout")
    counts = Counter(t["failure"] for s in sessions for t in s["turns"])
    majority = counts.most_common(1)[0][1] / sum(counts.values())
    assert report["examples"] == sum(counts.values())
    assert set(report["per_class_f1"]) == set(FAILURES)
    assert report["accuracy"] > majority + 0.05, (report["accuracy"], majority)


def test_mining_and_the_command_line(log, tmp_path):
    result = pipeline.mine(log / "log", out=tmp_path / "rw.jsonl", min_count=2)
    assert {"pairs", "wins", "losses", "win_loss_ratio", "triggered"} <= set(result)
    assert result["turns"] > 0
    proc = subprocess.run([sys.executable, "-m", "jaxslu.cli", "selflearn", "mine", "--log",
                           str(log / "log"), "--min-count", "2"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["pairs"] == result["pairs"]
    bad = subprocess.run([sys.executable, "-m", "jaxslu.cli", "selflearn", "mine", "--log",
                          str(tmp_path / "nothing")], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "selflearn simulate" in bad.stderr
