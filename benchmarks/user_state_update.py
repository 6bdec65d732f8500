"""Benchmark: incremental long-term user-state update vs full recompute, by history length.

    python benchmarks/user_state_update.py [--reps 21] [--window 10]
        [--out results/personalization/incremental_update_<backend>.json]

For a user who has n past interactions (n = 10, 100, 1,000, 10,000), times on the same model
(`user_embedding`, dim 64, 8 slots, random weights; the cost does not depend on trained values):
  * incremental: merge a window of `--window` new events into the stored long-term state
    (`UserEmbeddingModel.merge_window`): embed the new events, score them, merge;
  * full recompute: embed and pool all n + window events from scratch (`memory.full_memory`).
Each is jitted once per shape, warmed up (`--warmup` calls), then the two are timed alternately,
every call ending with `block_until_ready`; reported: median, quartiles, min, max of `--reps`
(>= 10) wall times, and the largest difference between the two results' memories.
The JSON carries jaxslu/provenance.py's command, commit, machine and versions.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jaxslu import provenance  # noqa: E402
from jaxslu.personalization import memory  # noqa: E402
from jaxslu.personalization.models import UserEmbeddingConfig, UserEmbeddingModel  # noqa: E402

LENGTHS = (10, 100, 1000, 10000)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--labels", type=int, default=200)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    provenance.check_timed_calls(args.reps)
    rec = provenance.Recorder(argv, script="benchmarks/user_state_update.py")
    backend = jax.default_backend()
    out = Path(args.out or ROOT / "results" / "personalization" /
               f"incremental_update_{backend}.json")

    cfg = UserEmbeddingConfig(dim=64, heads=2, slots=8, window=args.window, event_text=True)
    model = UserEmbeddingModel(cfg, num_labels=args.labels, vocab_size=500, num_feats=40,
                               rngs=nnx.Rngs(0))
    g, st = nnx.split(model)
    W, words, nf = args.window, 16, 2
    rng = np.random.default_rng(0)

    def events(n):
        return (jnp.asarray(rng.integers(0, args.labels, n), jnp.int32),
                jnp.asarray(rng.integers(0, 500, (n, words)), jnp.int32),
                jnp.asarray(rng.integers(1, 40, (n, nf)), jnp.int32))

    @jax.jit
    def embed_and_merge(st, state, label, tokens, feats):
        m = nnx.merge(g, st)
        return m.merge_window(state, m.events(label, tokens, feats))

    @jax.jit
    def full(st, label, tokens, feats):
        m = nnx.merge(g, st)
        s, v = m.slot_scores(m.events(label, tokens, feats))
        return memory.full_memory(s, v)

    prepared = {}
    for n in LENGTHS:
        old, new = events(n), events(W)
        state = embed_and_merge(st, memory.empty_state(cfg.slots, cfg.dim), *old)
        allev = tuple(jnp.concatenate([a, b]) for a, b in zip(old, new))
        for _ in range(args.warmup):
            jax.block_until_ready(embed_and_merge(st, state, *new))
            jax.block_until_ready(full(st, *allev))
        prepared[n] = (state, new, allev)
    t_inc = {n: [] for n in LENGTHS}
    t_full = {n: [] for n in LENGTHS}
    # round robin over lengths and methods: load from other processes hits all alike
    for _ in range(args.reps):
        for n in LENGTHS:
            state, new, allev = prepared[n]
            t0 = time.perf_counter()
            jax.block_until_ready(embed_and_merge(st, state, *new))
            t_inc[n].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            jax.block_until_ready(full(st, *allev))
            t_full[n].append(time.perf_counter() - t0)
    ms = lambda ts: {k.replace("_s", "_ms"): (round(v * 1e3, 4) if k != "times_s" else
                                              [round(x * 1e3, 4) for x in v])
                     for k, v in provenance.timing_stats(ts).items() if k != "n"}
    rows = []
    for n in LENGTHS:
        state, new, allev = prepared[n]
        upd = embed_and_merge(st, state, *new)
        diff = float(jnp.max(jnp.abs(memory.read(upd) - full(st, *allev))))
        rows.append({"history": n, "window": W, "incremental": ms(t_inc[n]),
                     "full": ms(t_full[n]), "max_abs_diff": diff})
        print(n, rows[-1]["incremental"]["median_ms"], rows[-1]["full"]["median_ms"], diff,
              flush=True)
    rec.write(out, {"backend": backend, "model": {"dim": cfg.dim, "slots": cfg.slots,
                                                  "window": W, "words_per_event": words},
                    "reps": args.reps, "warmup": args.warmup, "lengths": rows})
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
