"""The self-learning experiment: simulate the log, then mine rewrites, detect rephrases, isolate
failures and rewrite online; writes results/selflearn/<stage>.json and summary.json.

    python scripts/selflearn_experiment.py --system runs/selflearn_system \
        --log runs/selflearn/log --runs runs/selflearn [--stages simulate,mine,rephrase,isolate,rewrite]

The system run is `jaxslu train --config configs/selflearn_system.py --workdir W`. Each stage's
JSON carries the command, commit, machine and library versions; summary.json is assembled from
the stage files (the stage that measured each figure is named in it).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "results" / "selflearn"
STAGES = ("simulate", "mine", "rephrase", "isolate", "rewrite")


def _train_eval(name: str, log: Path, workdir: Path, overrides) -> dict:
    from jaxslu.config import load_config
    from jaxslu.eval import evaluate_workdir
    from jaxslu.train.loop import train

    cfg = load_config(str(ROOT / "configs" / f"selflearn_{name}.py"), None,
                      [f"data.options.path={log}"] + list(overrides))
    t0 = time.time()
    res = train(cfg, workdir, progress=False)
    report = evaluate_workdir(workdir, splits=["heldout"])["heldout"]
    return {"report": report, "train_s": round(time.time() - t0, 1),
            "steps": int(res.state.step), "config": name}


def summary(out: Path) -> dict:
    def load(stage):
        f = out / f"{stage}.json"
        return json.loads(f.read_text()) if f.is_file() else None

    s: dict = {"stages": {}}
    sim, mine, reph, iso, rew = (load(x) for x in STAGES)
    if sim:
        s["log"] = {k: sim["stats"][k] for k in ("sessions", "users", "turns", "defect_rate")}
        s["stages"]["simulate"] = "simulate.json"
    if mine:
        s["rewrite_mining"] = {"win_loss_ratio": mine["result"]["win_loss_ratio"],
                               "pairs": mine["result"]["pairs"],
                               "wins": mine["result"]["wins"],
                               "losses": mine["result"]["losses"],
                               "coverage": mine["result"]["coverage"]}
        s["stages"]["mine"] = "mine.json"
    if rew:
        r = rew["result"]
        s["online_rewriting"] = {k: r[k] for k in (
            "defect_reduction_global", "defect_reduction_global_personal", "p50_ms", "p99_ms")}
        s["stages"]["rewrite"] = "rewrite.json"
    if reph:
        r = reph["report"]
        s["rephrase_detection"] = {"span_f1": r["span_f1"], "precision": r["precision"],
                                   "recall": r["recall"]}
        s["stages"]["rephrase"] = "rephrase.json"
    if iso:
        r = iso["report"]
        s["failure_isolation"] = {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"],
                                  "per_class_f1": r["per_class_f1"]}
        s["stages"]["isolate"] = "isolate.json"
    return s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--system", default=str(ROOT / "runs" / "selflearn_system"))
    ap.add_argument("--log", default=str(ROOT / "runs" / "selflearn" / "log"))
    ap.add_argument("--runs", default=str(ROOT / "runs" / "selflearn"))
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="config override for the trained stages (repeatable)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise SystemExit(f"--stages {sorted(unknown)} unknown; use {','.join(STAGES)}")

    from jaxslu.provenance import Recorder
    from jaxslu.selflearn import pipeline
    from jaxslu.selflearn.simulator import SimulatorConfig

    out, log, runs = Path(args.out), Path(args.log), Path(args.runs)
    for stage in stages:
        rec = Recorder(argv)
        t0 = time.time()
        if stage == "simulate":
            cfg = SimulatorConfig(num_users=args.users)
            payload = {"stats": pipeline.simulate_log(log, system_workdir=args.system, cfg=cfg),
                       "simulator": cfg.__dict__}
        elif stage == "mine":
            payload = {"result": pipeline.mine(log, out=runs / "rewrites.jsonl")}
        elif stage == "rephrase":
            payload = _train_eval("rephrase", log, runs / "rephrase", args.overrides)
        elif stage == "isolate":
            payload = _train_eval("isolation", log, runs / "isolation", args.overrides)
        else:
            payload = {"result": pipeline.rewrite(log, runs / "rewrite",
                                                  overrides=args.overrides)}
        payload["seconds"] = round(time.time() - t0, 1)
        payload["log"] = str(log)
        rec.write(out / f"{stage}.json", payload)
        print(stage, json.dumps({k: v for k, v in payload.items()
                                 if k in ("stats", "result", "seconds")})[:600], flush=True)
    rec = Recorder(argv)
    rec.write(out / "summary.json", summary(out))
    print((out / "summary.json").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
