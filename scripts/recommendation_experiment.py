"""Train BPR-MF, KGAT and contrastive KGAT on one data set (same split, same seed, same step
budget), select each run's checkpoint on the validation split (Recall@20), evaluate it on the
test split, and merge the figures into results/recommendation/kgat.json.

    python scripts/recommendation_experiment.py --dataset recipes --out runs/recommendation
    python scripts/recommendation_experiment.py --dataset movielens \
        --movielens /path/to/recbole-1.2.1-py3-none-any.whl --out runs/recommendation

Runs resume from their checkpoints (run the same command again after an interruption). An
epoch is one pass over the training interactions; `epoch_seconds` is the median of the logged
seconds per step (the first window, which holds compilation, left out) times steps per epoch,
on this machine.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KINDS = ("bpr_mf", "kgat", "contrastive_kgat")
CONFIGS = {"recipes": ROOT / "configs" / "kgat_recipes.py",
           "movielens": ROOT / "configs" / "kgat_movielens.py"}
RESULTS = ROOT / "results" / "recommendation" / "kgat.json"
log = logging.getLogger("recommendation_experiment")


def run_config(dataset: str, kind: str, movielens: str | None, extra=()):
    from jaxslu.config import load_config

    overrides = list(extra)
    if dataset == "movielens":
        if not movielens:
            raise SystemExit("--dataset movielens needs --movielens PATH (the RecBole 1.2.1 wheel "
                             "or its ml-100k atomic files); MovieLens is never bundled")
        overrides.append(f"data.options.path={movielens}")
    return load_config(CONFIGS[dataset], kind, overrides)


def checkpoint_steps(workdir: Path) -> list[int]:
    d = workdir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def select_and_test(workdir: Path, k: int = 20) -> dict:
    """Validation Recall@k at every checkpoint; test figures at the best one."""
    from jaxslu.eval import get_evaluator
    from jaxslu.eval.run import LoadedRun

    curve = []
    best = None
    for step in checkpoint_steps(workdir):
        run = LoadedRun.from_workdir(workdir, step=step)
        report, _ = get_evaluator(run).evaluate("valid")
        curve.append({"step": step, f"valid_recall@{k}": report[f"recall@{k}"],
                      f"valid_ndcg@{k}": report[f"ndcg@{k}"]})
        if best is None or report[f"recall@{k}"] > best[1][f"recall@{k}"]:
            best = (step, report)
    if best is None:
        raise SystemExit(f"{workdir} has no checkpoints")
    run = LoadedRun.from_workdir(workdir, step=best[0])
    test, records = get_evaluator(run).evaluate("test")
    from jaxslu.eval import write_json, write_jsonl
    write_json(workdir / "report_test_selected.json", {"step": best[0], **test})
    write_jsonl(workdir / "predictions_test_selected.jsonl", records)
    return {"selected_step": best[0], "valid": best[1], "test": test, "curve": curve}


def epoch_seconds(workdir: Path, cfg, n_train: int) -> dict:
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines() if x]
    sps = [r["train/seconds_per_step"] for r in rows if "train/seconds_per_step" in r]
    steady = sps[1:] or sps
    per_step = statistics.median(steady)
    steps_per_epoch = n_train / cfg.data.batch_size
    total = json.loads((workdir / "train_time.json").read_text())["total_seconds"]
    return {"seconds_per_step": round(per_step, 4), "steps_per_epoch": round(steps_per_epoch, 2),
            "epoch_seconds": round(per_step * steps_per_epoch, 2),
            "epochs": round(cfg.train.steps / steps_per_epoch, 2),
            "train_seconds_total": total}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=sorted(CONFIGS), required=True)
    ap.add_argument("--movielens", default=None, help="RecBole 1.2.1 wheel or ml-100k atomic files")
    ap.add_argument("--out", default="runs/recommendation")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--set", action="append", default=[], help="extra config override")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    from jaxslu.provenance import Recorder
    from jaxslu.task import get_task
    from jaxslu.train.loop import train

    rec = Recorder(["scripts/recommendation_experiment.py", *(argv if argv is not None else sys.argv[1:])],
                   script="scripts/recommendation_experiment.py")
    kinds = [k for k in args.kinds.split(",") if k]
    bad = set(kinds) - set(KINDS)
    if bad:
        raise SystemExit(f"--kinds {sorted(bad)}: use {KINDS}")
    runs = []
    data_info = None
    for kind in kinds:
        cfg = run_config(args.dataset, kind, args.movielens, args.set)
        workdir = Path(args.out) / args.dataset / kind
        t0 = time.perf_counter()
        train(cfg, workdir, progress=False)
        log.info("%s/%s trained in %.1f s", args.dataset, kind, time.perf_counter() - t0)
        source = get_task(cfg).open_source("train").base
        n_train = len(source)
        data = source.data
        data_info = {"users": data.num_users, "items": data.num_items,
                     "entities": data.num_entities, "relations": data.num_relations,
                     "train_interactions": n_train,
                     "valid_interactions": len(data.splits["valid"]["user"]),
                     "test_interactions": len(data.splits["test"]["user"]),
                     "ckg_edges": int(len(data.ckg_edges()["head"])),
                     "target_types": data.target_types}
        sel = select_and_test(workdir)
        timing = epoch_seconds(workdir, cfg, n_train)
        test = sel["test"]
        runs.append({"kind": kind, "recall@20": test["recall@20"], "ndcg@20": test["ndcg@20"],
                     "epoch_seconds": timing["epoch_seconds"],
                     "users_evaluated": test["users_evaluated"],
                     "valid_recall@20": sel["valid"]["recall@20"],
                     "valid_ndcg@20": sel["valid"]["ndcg@20"],
                     "selected_step": sel["selected_step"], "steps": cfg.train.steps,
                     "batch_size": cfg.data.batch_size, "loss": cfg.loss,
                     "model": json.loads(json.dumps(cfg.model.__dict__, default=list)),
                     **{k: v for k, v in timing.items() if k != "epoch_seconds"},
                     "valid_curve": sel["curve"], "workdir": str(workdir)})
        log.info("%s/%s: test recall@20 %.4f ndcg@20 %.4f (step %d), %.1f s/epoch", args.dataset,
                 kind, test["recall@20"], test["ndcg@20"], sel["selected_step"],
                 timing["epoch_seconds"])
    path = Path(args.results)
    previous = json.loads(path.read_text()) if path.exists() else {}
    datasets = [d for d in previous.get("datasets", []) if d.get("name") != args.dataset]
    datasets.append({"name": args.dataset, "data": data_info, "seed": cfg.seed,
                     "split": "per-user time order: last 20% test, last 10% of the rest valid "
                              "(recipes: held-out cook-alongs only)",
                     "selection": "checkpoint with the best validation recall@20",
                     "command": rec.command, "started_utc": rec.started,
                     # the machine is shared: the load around the timings, as measured
                     "load_avg_before": rec.load_before,
                     "load_avg_after": list(os.getloadavg()), "runs": runs})
    datasets.sort(key=lambda d: d["name"])
    rec.write(path, {"datasets": datasets})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
