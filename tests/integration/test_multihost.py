"""A real multi-process (multi-host) run against a single-process one.

Two processes with 4 simulated CPU devices each join through `jax.distributed` (coordinator on
localhost, gloo collectives across processes) and train one config in one shared workdir, as hosts
on a shared filesystem do: each reads its own shard of the data, orbax writes the checkpoints from
both, the run is resumed from its previous checkpoint, and the workdir is evaluated. A single
process with 8 devices trains the same config with the same global batch as the reference. All
are separate interpreters running tests/multihost/worker.py (the device count must be set before
JAX starts, and the pytest process already has its 8 devices from tests/conftest.py).

What must agree:
* parameters after training: the same global batches in the same row order, the same programs;
  only the order of the cross-device float32 reductions differs (the gradient all-reduce runs
  over 2 x 4 devices through gloo instead of 8 devices of one process), so they agree to float32
  rounding, not bitwise: measured max |diff| 3e-7 (fsdd ci) and 1.2e-7 (slurp_nlu tiny) after 3
  Adam steps. TOLERANCE is ~30x that; a wrong data order (rows in another order get other
  dropout/SpecAugment masks) gave 6e-3, a wrong padding value 1e-4;
* the last logged training metrics (loss terms, accuracies, gradient norm), same tolerance;
* the resumed run's parameters and metrics with the uninterrupted ones: to 1e-6 (same programs,
  same data);
* the evaluation reports: identical (they count words and labels of greedy decodes).
Both processes of the multi-process run must also end with the same parameters and reports.

Runtime: ~230 CPU-seconds for the fsdd case (3 processes; about 2 minutes on 2 idle cores, most
of it compiling), 4-5 minutes on a loaded machine. Each process logs the wall and CPU seconds of
its phases (the logs are shown when a run fails).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKER = "tests.multihost.worker"

# Overrides of every case: a few steps, every one logged (the last metrics are the last step's),
# checkpoints at steps 2 and 3 (orbax, written by both processes; the multi-process run deletes
# the last one and resumes from step 2, see tests/multihost/worker.py --resume-check). Same
# global batch size in both runs (16: 2 rows per device on 8 devices, 8 rows per process).
COMMON = ("train.steps=3", "train.checkpoint_every=2", "train.log_every=1", "data.batch_size=16")

# Compiling is most of the test's time, so the FSDD buckets are chosen for one compiled program
# per process and phase while still making the processes disagree: with these audio buckets every
# global training batch of the 3 steps (seed 0) pads to 1.2 s, but in steps 2 and 3 one process's
# own rows fit 0.6 s; the one evaluation batch (all 250 test examples) pads to 1.2 s, while
# process 1's half alone fits 0.6 s. The processes must agree on one padded shape per step.
FSDD = ("data.bucket_seconds=(0.6,1.2,2.4)", "data.eval_batch_size=256")

# (config file, variant, its own overrides): each trained multi-process vs single-process.
CASES = [
    ("configs/fsdd_slu.py", "ci", FSDD),
    ("configs/slurp_nlu.py", "tiny", ()),
]
NUM_PROCESSES, DEVICES_PER_PROCESS = 2, 4
# The resume check (tests/multihost/worker.py --resume-check) costs ~45 CPU-seconds per case
# (process 1 compiles the train step again), ~20 s of the test's time on 2 cores.
RESUME_CHECK = True
TIMEOUT_S = 600  # all runs of one case, generous for a loaded 2-core machine
# float32 rounding of differently ordered reductions (see the module docstring).
TOLERANCE = dict(rtol=1e-4, atol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("XLA_FLAGS", None)  # the worker sets its device count itself
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["PYTHONUNBUFFERED"] = "1"
    return env


class _Proc:
    def __init__(self, name: str, args: list[str], log: Path):
        self.name, self.log = name, log
        self._file = open(log, "w")
        self.popen = subprocess.Popen([sys.executable, "-m", WORKER, *args], cwd=ROOT,
                                      env=_env(), stdout=self._file, stderr=subprocess.STDOUT)

    def tail(self, lines: int = 80) -> str:
        self._file.flush()
        text = [line for line in self.log.read_text(errors="replace").splitlines()
                if not line.startswith("[Gloo]")]
        head = f"--- {self.name} (exit {self.popen.returncode}), last {lines} lines of {self.log}:"
        return "\n".join([head, *text[-lines:]])

    def close(self):
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        self._file.close()


def _run_all(procs: list[_Proc], timeout: float) -> None:
    """Wait for every process; the first failure (or the timeout) stops the rest, since a
    distributed peer would otherwise wait for its dead partner until jax's heartbeat timeout."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            codes = [p.popen.poll() for p in procs]
            failed = [p for p, c in zip(procs, codes) if c not in (None, 0)]
            if failed or all(c == 0 for c in codes):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"timeout after {timeout:.0f} s\n" +
                            "\n".join(p.tail() for p in procs))
            time.sleep(0.5)
        if failed:
            time.sleep(2)  # let the peers print their side of the error
            pytest.fail("worker failed:\n" + "\n".join(p.tail() for p in procs))
    finally:
        for p in procs:
            p.close()


def _read(out: Path) -> dict:
    run = {"reports": {p.name[len("report_"):-len(".json")]: json.loads(p.read_text())
                       for p in sorted(out.glob("report_*.json"))}}
    for name in ("", "resumed_"):
        if (out / f"{name}params.npz").exists():
            with np.load(out / f"{name}params.npz") as z:
                run[f"{name}params"] = {k: z[k] for k in z.files}
            run[f"{name}metrics"] = json.loads((out / f"{name}metrics.json").read_text())
    return run


@pytest.fixture(scope="module", params=CASES, ids=[f"{Path(c).stem}-{v}" for c, v, _ in CASES])
def runs(request, tmp_path_factory):
    """Both runs of one case, shared by the tests below (they only read the results)."""
    config, variant, overrides = request.param
    tmp_path = tmp_path_factory.mktemp(f"multihost_{Path(config).stem}_{variant}")
    common = ["--config", config, "--variant", variant]
    sets = ["--set", *COMMON, *overrides]
    port = _free_port()
    # The resumed run loads its programs from this cache instead of compiling them again (jax
    # writes entries from process 0 only and the other process's keys differ: only process 0
    # gains, ~20 CPU-seconds).
    resume = ["--resume-check", "--compile-cache", str(tmp_path / "xla_cache")] \
        if RESUME_CHECK else []
    procs = [_Proc("reference 1x8", [*common, "--workdir", str(tmp_path / "work_ref"),
                                     "--out", str(tmp_path / "out_ref"), "--devices",
                                     str(NUM_PROCESSES * DEVICES_PER_PROCESS), *sets],
                   tmp_path / "reference.log")]
    for i in range(NUM_PROCESSES):
        procs.append(_Proc(f"process {i} of {NUM_PROCESSES}x{DEVICES_PER_PROCESS}", [
            *common, "--workdir", str(tmp_path / "work_multi"), "--out",
            str(tmp_path / "out_multi"), "--devices", str(DEVICES_PER_PROCESS),
            "--num-processes", str(NUM_PROCESSES), "--process-id", str(i), "--port", str(port),
            *resume, *sets],
            tmp_path / f"process_{i}.log"))
    t0 = time.monotonic()
    _run_all(procs, TIMEOUT_S)
    print(f"multi-host test runs: {time.monotonic() - t0:.1f} s")
    ref = _read(tmp_path / "out_ref" / "process_0")
    multi = [_read(tmp_path / "out_multi" / f"process_{i}") for i in range(NUM_PROCESSES)]
    return ref, multi, tmp_path


def test_multi_process_training_matches_single_process(runs):
    ref, multi, tmp_path = runs
    # The shared workdir holds one run: config, assets, the checkpoints of steps 2 and 3 (3 written
    # again by the resumed run), no temporary (half-written) checkpoint.
    work = tmp_path / "work_multi"
    assert (work / "config.json").exists() and (work / "metrics.jsonl").exists()
    assert sorted(p.name for p in (work / "checkpoints").iterdir() if p.name.isdigit()) == \
        ["2", "3"]
    assert not [p for p in (work / "checkpoints").iterdir() if "tmp" in p.name]

    for i, run in enumerate(multi):
        assert run["metrics"]["step"] == ref["metrics"]["step"] == 3
        assert sorted(run["params"]) == sorted(ref["params"])
        worst = max(float(np.max(np.abs(run["params"][k] - ref["params"][k])))
                    for k in ref["params"])
        print(f"process {i}: max |param diff| vs the 1-process run: {worst:.3g}")
        for k, want in ref["params"].items():
            np.testing.assert_allclose(run["params"][k], want, **TOLERANCE,
                                       err_msg=f"process {i}: parameter {k}")
        assert sorted(run["metrics"]) == sorted(ref["metrics"])
        for k, want in ref["metrics"].items():
            np.testing.assert_allclose(run["metrics"][k], want, **TOLERANCE,
                                       err_msg=f"process {i}: metric {k}")

    # Every process ends with the same (gathered) parameters.
    for k in multi[0]["params"]:
        np.testing.assert_array_equal(multi[1]["params"][k], multi[0]["params"][k])


def test_multi_process_run_resumes_exactly(runs):
    """Resumed from the step-2 checkpoint (train state, each process's data position), the
    multi-process run redoes step 3 as before: the same programs on the same data."""
    if not RESUME_CHECK:
        pytest.skip("RESUME_CHECK is off")
    _, multi, _ = runs
    for i, run in enumerate(multi):
        assert "resumed_params" in run, f"process {i} did not resume"
        assert run["resumed_metrics"]["step"] == run["metrics"]["step"] == 3
        for k, want in run["params"].items():
            np.testing.assert_allclose(run["resumed_params"][k], want, rtol=0, atol=1e-6,
                                       err_msg=f"process {i}: parameter {k}")
        for k, want in run["metrics"].items():
            np.testing.assert_allclose(run["resumed_metrics"][k], want, rtol=1e-6, atol=1e-6,
                                       err_msg=f"process {i}: metric {k}")


def test_multi_process_evaluation_matches_single_process(runs):
    ref, multi, tmp_path = runs
    assert ref["reports"], "the reference wrote no evaluation report"
    for i, run in enumerate(multi):
        assert run["reports"] == ref["reports"], f"process {i}"
    # The report in the shared workdir is the one every process returned.
    for split, report in ref["reports"].items():
        saved = json.loads((tmp_path / "work_multi" / f"report_{split}.json").read_text())
        saved = {k: v for k, v in saved.items() if k not in ("seconds", "path")}
        assert saved == report
