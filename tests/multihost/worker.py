"""One process of a simulated multi-host run, started by tests/integration/test_multihost.py.

    python -m tests.multihost.worker --config configs/fsdd_slu.py --variant ci \
        --workdir W --out O --devices 4 --num-processes 2 --process-id 0 --port 12345 \
        [--resume-check] [--compile-cache DIR] --set train.steps=3 ...

Every process is one "host" with `--devices` simulated CPU devices; with `--num-processes` > 1
they join through `jax.distributed` (coordinator on 127.0.0.1:`--port`) and run cross-process
collectives with gloo. All processes share one workdir, as hosts on a shared filesystem do.

1. Train with the project's loop (`jaxslu.train.loop.train`).
2. `--resume-check`: first, the checkpointer alone: every process saves its own data-iterator
   position into one checkpoint and must get its own back. Then the run's last checkpoint is
   deleted and the same config trained again in the same processes: it resumes from the
   previous checkpoint (train state and each process's data position) and redoes the last steps.
3. Evaluate the workdir (`evaluate_workdir`).

Each process writes to `--out`/process_<i>/:
* params.npz: the final parameters, gathered from all processes ('/'-joined pytree paths),
* metrics.json: the last logged training metrics (timings removed) and the step,
* resumed_params.npz, resumed_metrics.json: the same after the resumed run (`--resume-check`),
* report_<split>.json: the evaluation report of each split (timings and paths removed).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

# Only timing-dependent entries differ between otherwise identical runs.
VOLATILE_METRICS = ("seconds_per_step",)
VOLATILE_REPORT = ("seconds", "path")

log = logging.getLogger("multihost.worker")


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--variant", default=None)
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--devices", type=int, required=True, help="simulated CPU devices per process")
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--port", type=int, default=0, help="coordinator port (multi-process only)")
    p.add_argument("--resume-check", action="store_true",
                   help="also check the checkpointer and resume from the previous checkpoint")
    p.add_argument("--compile-cache", default="",
                   help="persistent compilation cache directory, the same for all processes "
                        "(jax writes it from process 0): the resumed run then loads its programs "
                        "instead of compiling them again")
    p.add_argument("--set", nargs="*", default=[], dest="overrides", metavar="KEY=VALUE")
    return p.parse_args(argv)


def _evaluate_workdir():
    """The evaluation entry point: jaxslu.eval (new home) or jaxslu.train.evaluate (today)."""
    try:
        from jaxslu.eval import evaluate_workdir
    except ImportError:
        from jaxslu.train.evaluate import evaluate_workdir
    return evaluate_workdir


def _key(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def flat_numpy(tree) -> dict:
    """'a/b/c' -> numpy array of every leaf; each process gets the full (global) value."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    out = {}
    for path, leaf in leaves:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            value = multihost_utils.process_allgather(leaf, tiled=True)
        else:
            value = jax.device_get(leaf)
        out["/".join(_key(e) for e in path)] = np.asarray(value)
    return out


class _Clock:
    """Wall and CPU seconds since the last lap (the logs show where a slow run spends them)."""

    def __init__(self):
        self._t = (time.perf_counter(), time.process_time())

    def lap(self) -> str:
        now = (time.perf_counter(), time.process_time())
        wall, cpu = now[0] - self._t[0], now[1] - self._t[1]
        self._t = now
        return f"{wall:.1f} s wall, {cpu:.1f} s CPU"


def _write_result(out: Path, name: str, result) -> None:
    import numpy as np

    np.savez(out / f"{name}params.npz", **flat_numpy(result.state.params))
    metrics = {k: v for k, v in result.last_metrics.items() if k not in VOLATILE_METRICS}
    metrics["step"] = int(flat_numpy({"step": result.state.step})["step"])
    (out / f"{name}metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")


def _sync(name: str) -> None:
    import jax
    from jax.experimental import multihost_utils

    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def check_checkpointer(directory: Path) -> None:
    """Every process saves its own data position into one checkpoint (the processes read
    different shards of the data) and restores its own, with a train state sharded over all
    processes' devices."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from jaxslu.train.checkpoint import Checkpointer

    @jax.tree_util.register_dataclass
    @dataclasses.dataclass
    class State:
        step: jax.Array
        params: dict

    mesh = Mesh(np.asarray(jax.devices()), ("d",))
    split, repl = NamedSharding(mesh, P("d")), NamedSharding(mesh, P())
    n = 2 * jax.device_count()
    state = State(step=jax.device_put(jnp.int32(5), repl),
                  params={"w": jax.jit(lambda: jnp.arange(n, dtype=jnp.float32),
                                       out_shardings=split)()})
    mine = {"process": jax.process_index(), "position": 100 + 7 * jax.process_index()}
    ckpt = Checkpointer(directory, async_save=False)
    try:
        ckpt.save(5, state, mine, {"step": 5})
        ckpt.wait()
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                               sharding=x.sharding), state)
        restored, data, meta = ckpt.restore(abstract)
    finally:
        ckpt.close()
    assert data == mine, f"process {jax.process_index()} restored data position {data}, " \
                         f"saved {mine}"
    assert meta == {"step": 5}, meta
    got = flat_numpy(restored)
    np.testing.assert_array_equal(got["params/w"], np.arange(n, dtype=np.float32))
    assert int(got["step"]) == 5
    log.info("checkpointer: process %d restored its own data position", jax.process_index())


def main(argv=None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format=f"%(asctime)s p{args.process_id} %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax's per-save INFO lines
    # Before anything touches a JAX backend: the simulated devices and cross-process collectives.
    import jax

    jax.config.update("jax_num_cpu_devices", args.devices)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_threefry_partitionable", True)
    if args.compile_cache:
        jax.config.update("jax_compilation_cache_dir", args.compile_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

    from jaxslu.config import load_config
    from jaxslu.train.loop import train

    overrides = list(args.overrides)
    if args.num_processes > 1:
        overrides += ["mesh.distributed=true",
                      f"mesh.coordinator_address=127.0.0.1:{args.port}",
                      f"mesh.num_processes={args.num_processes}",
                      f"mesh.process_id={args.process_id}"]
    cfg = load_config(args.config, args.variant, overrides)
    evaluate_workdir = _evaluate_workdir()
    workdir = Path(args.workdir)

    clock = _Clock()
    result = train(cfg, workdir, progress=False)
    log.info("trained: %s", clock.lap())
    assert jax.process_count() == args.num_processes, jax.process_count()
    assert jax.process_index() == args.process_id, jax.process_index()
    assert jax.device_count() == args.devices * args.num_processes, jax.devices()
    out = Path(args.out) / f"process_{jax.process_index()}"
    out.mkdir(parents=True, exist_ok=True)
    _write_result(out, "", result)

    if args.resume_check:
        check_checkpointer(Path(args.out) / "checkpointer_probe")
        ckpts = workdir / "checkpoints"
        steps = sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
        assert len(steps) >= 2, f"--resume-check needs two checkpoints, {ckpts} has {steps}"
        _sync("resume-check: trained")
        if jax.process_index() == 0:
            shutil.rmtree(ckpts / str(steps[-1]))
        _sync("resume-check: last checkpoint deleted")
        resumed = train(cfg, workdir, progress=False)
        log.info("resumed from step %d: %s", steps[-2], clock.lap())
        _write_result(out, "resumed_", resumed)

    reports = evaluate_workdir(workdir)
    log.info("evaluated: %s", clock.lap())
    for split, report in reports.items():
        report = {k: v for k, v in report.items() if k not in VOLATILE_REPORT}
        (out / f"report_{split}.json").write_text(json.dumps(report, indent=2, sort_keys=True)
                                                  + "\n")
    log.info("process %d/%d done: splits %s", jax.process_index(), jax.process_count(),
             sorted(reports))
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except (Exception, KeyboardInterrupt):
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        # Exit now: a normal exit would wait in jax.distributed's shutdown barrier for the
        # peers (minutes), which may be waiting for this process in a collective.
        os._exit(1)
    sys.exit(code)
