"""Incremental user embeddings against its baselines, on one dataset, in one run.

    python scripts/personalization_experiment.py --dataset log
    python scripts/personalization_experiment.py --dataset movielens --movielens PATH

PATH: the GroupLens ml-100k/ folder or the RecBole 1.2.1 wheel (see jaxslu/data/movielens.py).
Trains, in runs/personalization/<dataset>_<kind> (each resumes from its checkpoints): the model
(`user_embedding`), the same network without history (`+no_history`) and a SASRec-style model
(`+sasrec`); computes popularity from the training split; measures the largest difference
between the serving path (incremental state, one event at a time) and the batch path (full
recompute) of the trained model on test users; and merges the dataset's entry into
results/personalization/user_embeddings.json:
{"datasets": [{"name", "no_history_accuracy", "model_accuracy", "baselines": {...},
"incremental_max_abs_diff", ...}]} with command, commit, machine and versions.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KINDS = (("model", ""), ("no_history", "+no_history"), ("sasrec", "+sasrec"))
RESULTS = ROOT / "results" / "personalization" / "user_embeddings.json"


def popularity(task, assets, train_src, test_src) -> dict:
    """Rank labels by their training frequency (the seen items excluded when the task says)."""
    from jaxslu.personalization.evaluate import ranking_metrics

    counts = Counter()
    for i in range(len(train_src)):
        counts.update(e["label"] for e in train_src.metadata(i)["events"])
    order = sorted(assets.labels, key=lambda x: (-counts[x], assets.label_id[x]))
    pos = {x: k for k, x in enumerate(order)}
    ranks = []
    for i in range(len(test_src)):
        row = test_src.metadata(i)
        ev = row["events"]
        seen_before: set[str] = set()
        for t, e in enumerate(ev):
            if t >= row.get("score_from", 0):
                if e["label"] not in pos:
                    ranks.append(len(order))
                else:
                    r = pos[e["label"]]
                    if task.exclude_seen:
                        r -= sum(1 for s in seen_before if pos.get(s, 1 << 30) < r)
                    ranks.append(r)
            seen_before.add(e["label"])
    return {**ranking_metrics(np.asarray(ranks)), "positions": len(ranks)}


def incremental_diff(workdir: Path, split: str, users: int = 24) -> dict:
    """max |serving logits - batch logits| over every position of `users` users of `split`."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxslu.eval.run import LoadedRun

    run = LoadedRun.from_workdir(workdir)
    model = run.model()
    task = run.task
    src = task.open_source(split)
    rows = [{**task.encode_row({**src.metadata(i), "score_from": 0}, run.assets), "index": i}
            for i in range(min(users, len(src)))]
    batch = task.collate(rows, len(rows))
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    full = np.asarray(jax.jit(lambda b: model(b, train=False)["logits"])(batch))
    g, st = nnx.split(model)

    @jax.jit
    def step(st, state, label, tokens, feats):
        m = nnx.merge(g, st)
        logits = m.predict(state, tokens, feats)
        return logits, m.observe(state, label, tokens, feats)

    state = model.init_state((len(rows),))
    worst = 0.0
    T = batch["label"].shape[1]
    lengths = np.asarray([len(r["label"]) for r in rows])
    for t in range(T):
        logits, state = step(st, state, batch["label"][:, t], batch["tokens"][:, t],
                             batch["feats"][:, t])
        live = lengths > t
        if live.any():
            worst = max(worst, float(np.max(np.abs(np.asarray(logits)[live] - full[live, t]))))
    return {"incremental_max_abs_diff": worst, "incremental_users": len(rows),
            "incremental_positions": int(lengths.sum())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=("log", "movielens"), required=True)
    ap.add_argument("--movielens", default="", help="ml-100k folder or RecBole wheel")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "personalization"))
    ap.add_argument("--steps", type=int, default=0, help="override train.steps (0: config's)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)

    from jaxslu.config import load_config
    from jaxslu.eval import evaluate_workdir
    from jaxslu.provenance import Recorder
    from jaxslu.task import get_task
    from jaxslu.train.loop import train

    rec = Recorder(argv)
    overrides = list(args.overrides)
    if args.dataset == "movielens":
        from jaxslu.data.movielens import find_movielens

        overrides.append(f"data.options.path={find_movielens(args.movielens or None)}")
    if args.steps:
        overrides.append(f"train.steps={args.steps}")
    reports, timing, cfgs = {}, {}, {}
    for kind, suffix in KINDS:
        cfg = load_config(str(ROOT / "configs" / "user_embeddings.py"), args.dataset + suffix,
                          overrides)
        cfgs[kind] = cfg
        wd = Path(args.runs) / f"{args.dataset}_{kind}"
        t0 = time.time()
        res = train(cfg, wd, progress=False)
        timing[kind] = {"train_s": round(time.time() - t0, 1), "steps": int(res.state.step)}
        if (wd / "train_time.json").exists():
            timing[kind]["train_time"] = json.loads((wd / "train_time.json").read_text())
        reports[kind] = evaluate_workdir(wd, splits=["test"])["test"]
        print(kind, {k: reports[kind][k] for k in ("accuracy", "recall@10", "ndcg@10")},
              flush=True)
    task = get_task(cfgs["model"])
    assets = task.load_assets(Path(args.runs) / f"{args.dataset}_model")
    pop = popularity(task, assets, task.open_source("train"), task.open_source("test"))
    inc = incremental_diff(Path(args.runs) / f"{args.dataset}_model", "test")

    def figures(r):
        keep = ("accuracy", "recall@10", "ndcg@10", "positions", "users", "accuracy_by_kind",
                "accuracy_by_ambiguous")
        return {k: r[k] for k in keep if k in r}

    entry = {"name": {"log": "assistant_log", "movielens": "movielens-100k"}[args.dataset],
             "no_history_accuracy": reports["no_history"]["accuracy"],
             "model_accuracy": reports["model"]["accuracy"],
             "model": figures(reports["model"]),
             "baselines": {"no_history": figures(reports["no_history"]),
                           "popularity": pop, "sasrec": figures(reports["sasrec"])},
             **inc, "timing": timing,
             "data_options": dict(cfgs["model"].data.options),
             "protocol": ("simulated log, users split 80/10/10 by id hash; every request of the "
                          "test users predicted from its own history" if args.dataset == "log"
                          else "leave-one-out by time: the last rating of each user predicted "
                               "from all earlier ones, full ranking over unseen items")}
    out = Path(args.out)
    prev = json.loads(out.read_text()) if out.exists() else {}
    datasets = [d for d in prev.get("datasets", []) if d.get("name") != entry["name"]]
    datasets.append(entry)
    entry["provenance"] = rec.provenance()
    rec.write(out, {"datasets": sorted(datasets, key=lambda d: d["name"])})
    print(json.dumps({k: entry[k] for k in ("name", "model_accuracy", "no_history_accuracy",
                                            "incremental_max_abs_diff")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
