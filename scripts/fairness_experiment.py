"""The fairness mitigation experiment on spoken SLURP (docs/fairness.md):

    python scripts/fairness_experiment.py [--runs runs/fairness] [--stages base,cohorts,fisher,mitigate]

1. base      `configs/fairness_slurp.py` trained and evaluated on dev and test (resumes).
2. cohorts   geographic and embedding cohorts of the base model on test
             -> results/fairness/cohorts.json (+ PNGs); the geographic cohorts on *dev* pick the
             worst cohort the mitigations target (chosen on dev, measured on test: the test
             figures are not inflated by the search that found the cohort).
3. fisher    the base model's empirical diagonal Fisher on its training data (run asset).
4. tune      (optional) train and evaluate only the `--kinds` fine-tunings, e.g. two processes
             with different kinds in parallel; `mitigate` then finds them done.
5. mitigate  fine-tunings from the base toward the worst cohort: plain (its training
             utterances only), EWC (the same + lambda/2 sum F (theta - theta*)^2), oversampling
             (all data, the cohort weighted up) and cohort input (all data, the dev cohorts as a
             learned encoder-input embedding); each evaluated on test: overall WER and the worst
             cohort's WER, with paired-bootstrap intervals against the base
             -> results/fairness/mitigation.json.

Every JSON carries the command, commit, machine and library versions.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "results" / "fairness"
CONFIG = ROOT / "configs" / "fairness_slurp.py"
STAGES = ("base", "cohorts", "fisher", "tune", "mitigate")
KINDS = ("finetune", "ewc", "oversample", "cohort_input")


def _provenance(argv) -> dict:
    from jaxslu import provenance as P

    return {"command": P.command_line(["scripts/fairness_experiment.py"] + list(argv)),
            **P.git_state(), "machine": P.machine(), "versions": P.versions()}


def _train_eval(variant: str, workdir: Path, overrides, splits=("test",)) -> dict:
    from jaxslu.config import load_config
    from jaxslu.eval import evaluate_workdir
    from jaxslu.train.loop import train

    cfg = load_config(str(CONFIG), variant, list(overrides))
    t0 = time.time()
    res = train(cfg, workdir, progress=False)
    train_s = time.time() - t0
    done = all((workdir / f"predictions_{s}.jsonl").is_file() for s in splits) and all(
        json.loads((workdir / f"report_{s}.json").read_text()).get("step") == int(res.state.step)
        for s in splits if (workdir / f"report_{s}.json").is_file())
    if not done:
        evaluate_workdir(workdir, splits=list(splits))
    info = {"steps": int(res.state.step)}
    if res.steps_run:  # a run found finished (resumed at its last step) has no training time
        info["train_s"] = round(train_s, 1)
    return info


def _records(workdir: Path, split: str) -> list[dict]:
    from jaxslu.fairness.cohorts import read_records

    return read_records(workdir, split)


def _wer(records) -> float:
    from jaxslu.fairness.cohorts import utterance_errors

    e, w = utterance_errors(records)
    return float(e.sum() / max(w.sum(), 1))


def _bounds_list(cohort: dict) -> list[float]:
    """[lat_lo, lat_hi, lon_lo, lon_hi] of a geo cohort (open edges as +-1000 degrees)."""
    b = cohort["bounds"]
    f = lambda v, d: float(d if v is None else v)
    return [f(b["lat"][0], -1000), f(b["lat"][1], 1000), f(b["lon"][0], -1000),
            f(b["lon"][1], 1000)]


def stage_base(runs: Path, steps: int | None) -> dict:
    ov = [] if steps is None else [f"train.steps={steps}"]
    info = _train_eval("default", runs / "base", ov, splits=("test", "dev"))
    print(f"base: {info}", flush=True)
    return info


def stage_cohorts(runs: Path, argv, k: int) -> dict:
    from jaxslu.fairness.cohorts import cohorts_report

    base = runs / "base"
    prov = _provenance(argv)
    out = {}
    for method in ("geo", "embedding"):
        entry = cohorts_report(base, "test", method, k=k if method == "embedding" else None,
                               out=RESULTS, extra=prov)
        out[method] = entry
        print(f"cohorts {method} (test): " + ", ".join(
            f"{c['name']} {c['wer']:.3f}" for c in entry["cohorts"]), flush=True)
    dev = cohorts_report(base, "dev", "geo", extra=prov)
    print("cohorts geo (dev, picks the target): " + ", ".join(
        f"{c['name']} {c['wer']:.3f}" for c in dev["cohorts"]), flush=True)
    return out


def _dev_cohorts(runs: Path) -> list[dict]:
    path = runs / "base" / "cohorts_dev_geo.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the 'cohorts' stage first")
    return json.loads(path.read_text())["cohorts"]  # ranked worst first


def stage_fisher(runs: Path, examples: int) -> Path:
    from jaxslu.fairness.ewc import FISHER_FILE, fisher_diagonal

    path = runs / "base" / FISHER_FILE
    if not path.is_file():
        t0 = time.time()
        fisher_diagonal(runs / "base", max_examples=examples)
        print(f"fisher: {examples} examples in {time.time() - t0:.0f} s", flush=True)
    return path


def _overrides(kind: str, runs: Path, cohorts: list[dict], oversample: float) -> list[str]:
    worst = cohorts[0]
    ov = [f"train.init_from={runs / 'base'}"]
    only = {"key": "speaker", "weights": {s: 1.0 for s in worst["speakers"]}, "default": 0.0}
    up = {"key": "speaker", "weights": {s: oversample for s in worst["speakers"]},
          "default": 1.0}
    if kind in ("finetune", "ewc"):
        ov.append(f"data.sample_weights={json.dumps(only)}")
    if kind == "ewc":
        ov.append(f"loss_options.ewc.fisher={runs / 'base' / 'fisher.npz'}")
    if kind == "oversample":
        ov.append(f"data.sample_weights={json.dumps(up)}")
    if kind == "cohort_input":
        regions = {"regions": [_bounds_list(c) for c in cohorts]}
        ov += [f"task_options.cohort_input={json.dumps(regions)}",
               f"model.num_cohorts={len(cohorts)}"]
    return ov


def _evaluate_run(name: str, kind: str, workdir: Path, base_records, worst_ids: set,
                  extra: dict) -> dict:
    from jaxslu.fairness.cohorts import paired_bootstrap

    recs = _records(workdir, "test")
    worst = [r for r in recs if r["speaker"] in worst_ids]
    base_worst = [r for r in base_records if r["speaker"] in worst_ids]
    row = {"name": name, "kind": kind, "workdir": str(workdir.relative_to(ROOT))
           if workdir.is_relative_to(ROOT) else str(workdir),
           "overall_wer": _wer(recs), "worst_cohort_wer": _wer(worst),
           "utterances": len(recs), "worst_cohort_utterances": len(worst), **extra}
    if kind != "baseline":
        row["vs_baseline"] = {"overall": paired_bootstrap(base_records, recs),
                              "worst_cohort": paired_bootstrap(base_worst, worst)}
        for key in ("overall", "worst_cohort"):
            b = row["vs_baseline"][key]
            b["relative"] = b["delta"] / b["wer_a"] if b["wer_a"] else math.nan
    return row


def stage_tune(runs: Path, kinds, oversample: float) -> None:
    cohorts = _dev_cohorts(runs)
    for kind in kinds:
        info = _train_eval(kind, runs / kind, _overrides(kind, runs, cohorts, oversample))
        print(f"tuned {kind}: {info}", flush=True)


def stage_mitigate(runs: Path, argv, kinds, oversample: float) -> dict:
    from jaxslu.provenance import write_json

    cohorts = _dev_cohorts(runs)
    worst = cohorts[0]
    base_records = _records(runs / "base", "test")
    worst_ids = set(worst["speakers"])
    base_report = json.loads((runs / "base" / "report_test.json").read_text())
    rows = [_evaluate_run("base", "baseline", runs / "base", base_records, worst_ids,
                          {"steps": base_report.get("step")})]
    for kind in kinds:
        wd = runs / kind
        info = _train_eval(kind, wd, _overrides(kind, runs, cohorts, oversample))
        rows.append(_evaluate_run(kind, kind, wd, base_records, worst_ids, info))
        r = rows[-1]
        print(f"{kind}: overall {r['overall_wer']:.4f} worst {r['worst_cohort_wer']:.4f} "
              f"({info})", flush=True)
    from jaxslu.config import load_config

    cfg = load_config(str(CONFIG), "finetune")
    ewc_cfg = load_config(str(CONFIG), "ewc")
    out = {**_provenance(argv),
           "target": {"cohort": worst["name"], "bounds": worst["bounds"],
                      "speakers": worst["speakers"], "chosen_on": "dev",
                      "dev_wer": worst["wer"], "dev_cohorts": [
                          {"name": c["name"], "wer": c["wer"], "speakers": len(c["speakers"])}
                          for c in cohorts]},
           "finetune": {"steps": cfg.train.steps, "learning_rate": cfg.optim.learning_rate,
                        "oversample_weight": oversample, "ewc_loss": ewc_cfg.loss,
                        "base_steps": base_report.get("step")},
           "runs": rows}
    write_json(RESULTS / "mitigation.json", out)
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from jaxslu.cli import _enable_compilation_cache

    _enable_compilation_cache()
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default=str(ROOT / "runs" / "fairness"))
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--k", type=int, default=8, help="embedding cohorts (k-means clusters)")
    ap.add_argument("--fisher-examples", type=int, default=400)
    ap.add_argument("--oversample", type=float, default=4.0)
    ap.add_argument("--base-steps", type=int, default=None,
                    help="train the base for this many steps instead of the config's")
    args = ap.parse_args(argv)
    runs = Path(args.runs)
    stages = args.stages.split(",")
    unknown = set(stages) - set(STAGES)
    if unknown:
        ap.error(f"unknown stages {sorted(unknown)}; use {','.join(STAGES)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    if "base" in stages:
        stage_base(runs, args.base_steps)
    if "cohorts" in stages:
        stage_cohorts(runs, argv, args.k)
    if "fisher" in stages:
        stage_fisher(runs, args.fisher_examples)
    if "tune" in stages:
        stage_tune(runs, args.kinds.split(","), args.oversample)
    if "mitigate" in stages:
        stage_mitigate(runs, argv, args.kinds.split(","), args.oversample)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
