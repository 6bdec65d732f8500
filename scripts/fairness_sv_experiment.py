"""Speaker verification fairness: baseline vs ARW vs pairwise ARW on the synthetic speaker
panel (+ FSDD); writes results/fairness/speaker_verification.json.

    python scripts/fairness_sv_experiment.py [--runs baseline,arw,pairwise_arw] \
        [--ablations pairwise] [--workdirs runs/fairness] [--set key=value ...]

Each run is `jaxslu train --config configs/speaker_verification.py:<variant>
--workdir runs/fairness/sv_<variant> --eval`, done in-process through the same functions the CLI
calls (`jaxslu.train.loop.train`, `jaxslu.eval.evaluate_workdir`). Runs resume from their
workdir (a finished run is not retrained; its reports are reused when they are of the final
step). The JSON is rewritten after every run (with "complete": false until the last), with the
command, commit, machine and library versions (jaxslu.provenance).

Per run: eer, min_dcf {"0.01", "0.05"}, per_cohort {"gender": {...}, "accent": {...}} (eer,
min_dcf, trials each), gender_gap (female - male EER, its absolute value, relative = absolute /
mean of the two), accent_spread (max - min EER over the accents), trials, train steps and
seconds, the FSDD held-out check (closed set: FSDD speakers are in training), and for ARW runs
the relative change against the baseline (the paper's VoxCeleb figures: EER -7.7% relative,
gender gap -17%). The ablation "pairwise" (configs/speaker_verification.py:pairwise: the same
pair loss beside aam_softmax with every weight 1, no adversary) separates what pairwise ARW
gains from the pair loss from what it gains from the reweighting: pairwise_arw's
"vs_unweighted_pairwise" holds its relative change against it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CONFIG = ROOT / "configs" / "speaker_verification.py"
OUT = ROOT / "results" / "fairness" / "speaker_verification.json"
# name -> (config variant, kind)
RUNS = {"baseline": ("default", "baseline"), "arw": ("arw", "arw"),
        "pairwise_arw": ("pairwise_arw", "pairwise_arw"),
        # ablation (under "ablations" in the JSON): the pair loss with every weight 1
        "pairwise": ("pairwise", "pairwise_unweighted")}
MAIN = ("baseline", "arw", "pairwise_arw")
PAPER = {"source": "Jin et al., Adversarial reweighting for speaker verification fairness "
                   "(Interspeech 2022), VoxCeleb", "eer_relative_change": -0.077,
         "gender_gap_relative_change": -0.17}


def _cohort(per_cohort: dict) -> dict:
    return {key: {v: {"eer": m["eer"], "min_dcf": m["min_dcf"], "trials": m["trials"]}
                  for v, m in values.items()} for key, values in per_cohort.items()}


def _reports(workdir: Path, step: int) -> dict | None:
    """The run's reports if every eval split has one of `step` (a resumed script reuses them)."""
    cfg = json.loads((workdir / "config.json").read_text())
    out = {}
    for split in cfg["data"]["eval_splits"]:
        p = workdir / f"report_{split}.json"
        if not p.is_file():
            return None
        r = json.loads(p.read_text())
        if r.get("step") != step:
            return None
        out[split] = r
    return out


def run_one(name: str, workdir: Path, overrides) -> dict:
    from jaxslu.config import load_config
    from jaxslu.eval import evaluate_workdir
    from jaxslu.train.loop import train

    variant, kind = RUNS[name]
    cfg = load_config(CONFIG, variant, overrides)
    t0 = time.time()
    res = train(cfg, workdir, progress=False)
    step = int(res.state.step)
    t1 = time.time()
    reports = _reports(workdir, step)
    reused = reports is not None
    if not reused:
        reports = evaluate_workdir(workdir)
    t2 = time.time()
    r, f = reports["test"], reports.get("fsdd_test")
    tt = workdir / "train_time.json"
    train_seconds = json.loads(tt.read_text())["total_seconds"] if tt.is_file() else None
    out = {"name": name, "kind": kind, "config": f"configs/speaker_verification.py:{variant}",
           "workdir": str(workdir.relative_to(ROOT) if workdir.is_relative_to(ROOT) else workdir),
           "overrides": list(overrides), "loss": cfg.loss,
           "eer": r["eer"], "min_dcf": r["min_dcf"], "per_cohort": _cohort(r["per_cohort"]),
           "gender_gap": r["gender_gap"], "accent_spread": r["accent_spread"],
           "trials": {"total": r["trials"], "target": r["target_trials"],
                      "nontarget": r["nontarget_trials"], "per_cell": r["trial_list"]["per_cell"],
                      "cells": r["trial_list"]["cells"], "sha256": r["trial_list"]["sha256"]},
           "test_speakers": r["num_speakers"], "test_utterances": r["num_utterances"],
           "train_steps": step, "train_seconds": train_seconds,
           "train_seconds_this_invocation": round(t1 - t0, 1),
           "eval_seconds": round(t2 - t1, 1), "reports_reused": reused,
           "final_train_metrics": {k: v for k, v in res.last_metrics.items()
                                   if k.startswith(("loss/", "arw/", "aam_softmax/",
                                                    "pairwise_arw/"))}}
    if f is not None:
        out["fsdd"] = {"eer": f["eer"], "min_dcf": f["min_dcf"], "trials": f["trials"],
                       "speakers": f["num_speakers"], "utterances": f["num_utterances"],
                       "note": "closed set: held-out recordings (indices 0-4) of the 5 FSDD "
                               "speakers, whose other recordings are in training"}
    return out


def relative_changes(r: dict, ref: dict) -> dict:
    rel = lambda a, b: (a - b) / b if b else None
    return {"eer_relative_change": rel(r["eer"], ref["eer"]),
            "min_dcf_relative_change": {p: rel(v, ref["min_dcf"][p])
                                        for p, v in r["min_dcf"].items()},
            "gender_gap_relative_change": rel(r["gender_gap"]["absolute"],
                                              ref["gender_gap"]["absolute"]),
            "accent_spread_relative_change": rel(r["accent_spread"]["max_minus_min"],
                                                 ref["accent_spread"]["max_minus_min"])}


def compare(runs: list[dict], ablations: list[dict] = ()) -> None:
    base = next((r for r in runs if r["kind"] == "baseline"), None)
    for r in list(runs) + list(ablations):
        if base is not None and r is not base:
            r["vs_baseline"] = relative_changes(r, base)
    plain = next((a for a in ablations if a["kind"] == "pairwise_unweighted"), None)
    for r in runs:
        if plain is not None and r["kind"] == "pairwise_arw":
            r["vs_unweighted_pairwise"] = relative_changes(r, plain)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default=",".join(MAIN))
    ap.add_argument("--ablations", default="pairwise",
                    help="ablation runs after the main ones ('' for none)")
    ap.add_argument("--workdirs", default=str(ROOT / "runs" / "fairness"))
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="config override for every run (repeatable)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    import logging
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("absl", "orbax"):  # checkpoint bookkeeping, one line per save
        logging.getLogger(noisy).setLevel(logging.WARNING)
    names = [n for n in args.runs.split(",") if n]
    extra = [n for n in args.ablations.split(",") if n]
    unknown = [n for n in names if n not in MAIN] + [n for n in extra if n in MAIN
                                                      or n not in RUNS]
    if unknown:
        raise SystemExit(f"--runs / --ablations {unknown} unknown; runs: {','.join(MAIN)}, "
                         f"ablations: {','.join(n for n in RUNS if n not in MAIN)}")

    from jaxslu.provenance import Recorder

    rec = Recorder(argv)
    runs: list[dict] = []
    ablations: list[dict] = []
    t0 = time.time()
    for name in names + extra:
        print(f"=== {name}", flush=True)
        run = run_one(name, Path(args.workdirs) / f"sv_{RUNS[name][0]}", args.overrides)
        (runs if name in MAIN else ablations).append(run)
        compare(runs, ablations)
        print(json.dumps({k: run[k] for k in ("name", "eer", "min_dcf", "gender_gap",
                                              "accent_spread")}), flush=True)
        rec.write(args.out, {"runs": runs, "ablations": ablations,
                             "complete": len(runs) + len(ablations) == len(names) + len(extra),
                             "seconds": {"this_invocation": round(time.time() - t0, 1),
                                         "train_total": round(sum(
                                             r["train_seconds"] or 0 for r in runs + ablations),
                                             1)},
                             "paper": PAPER,
                             "data": "speaker_panel: eSpeak NG synthetic speakers (accent x "
                                     "gender balanced, disjoint train/test speakers) + FSDD's "
                                     "5 real speakers in training"})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
