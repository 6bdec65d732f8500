"""TEXTOIR's discovery protocol with `jaxslu discover`: datasets x known ratios x seeds, and the
figures with provenance.

    python scripts/discovery_protocol.py --dataset clinc --known 0.75 --seeds 0 1 2 3 4
    python scripts/discovery_protocol.py --dataset snips --known 0.25 0.5 0.75 --seeds 0 1 2
    python scripts/discovery_protocol.py --collect      # results/discovery.json + the K plot

Each run is one `jaxslu discover` invocation (in-process, so compiled programs and the frozen
encoder's feature cache are shared) into `runs/discovery/<dataset>_<variant>_k<ratio>_s<seed>/`
with its own report.json (provenance included); a finished run is not redone. `--collect`
gathers every report under runs/discovery/ into `results/discovery.json`: one row per
(dataset, encoder, known ratio) with the mean and standard deviation over its seeds and the
seeds themselves, plus every run's figures, and draws `docs/img/discovery_k.png` (K found
against the true K over seeds).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RUNS = ROOT / "runs" / "discovery"
OUT = ROOT / "results" / "discovery.json"
PLOT = ROOT / "docs" / "img" / "discovery_k.png"


def run_one(dataset: str, known: float, seed: int, variant: str, labeled: float,
            overrides: list[str]) -> Path:
    from jaxslu import cli

    name = f"{dataset}_{variant}_k{int(round(known * 100))}_s{seed}"
    out = RUNS / name
    if (out / "report.json").exists():
        return out
    data = ROOT / "data" / "textoir" / dataset
    argv = ["discover", "--train", str(data / "train.tsv"), "--test", str(data / "test.tsv"),
            "--dev", str(data / "dev.tsv"), "--known-ratio", str(known), "--labeled-ratio",
            str(labeled), "--seed", str(seed), "--out", str(out)]
    if variant != "default":
        argv += ["--variant", variant]
    for o in overrides:
        argv += ["--set", o]
    code = cli.main(argv)
    if code:
        raise SystemExit(f"jaxslu {' '.join(argv)} failed with exit code {code}")
    return out


METRICS = ("nmi", "ari", "acc", "k_found")


def run_seconds(r: dict) -> float:
    """Wall seconds of a run as if done in one invocation: a resumed run's report counts only
    the training of its last invocation, the workdirs' train_time.json count all of it."""
    total = float(r["timings"]["total_s"])
    for stage in ("calibration", "final"):
        f = RUNS / r["run"] / stage / "run" / "train_time.json"
        if f.exists() and f"{stage}_train_s" in r["timings"]:
            total += (float(json.loads(f.read_text())["total_seconds"])
                      - float(r["timings"][f"{stage}_train_s"]))
    return total


def collect() -> dict:
    from jaxslu.provenance import Recorder

    rec = Recorder(["scripts/discovery_protocol.py", "--collect"])
    reports = []
    for f in sorted(RUNS.glob("*/report.json")):
        r = json.loads(f.read_text())
        r["run"] = f.parent.name
        reports.append(r)
    if not reports:
        raise SystemExit(f"no reports under {RUNS}; run the protocol first")
    groups: dict[tuple, list[dict]] = {}
    for r in reports:
        dataset = Path(r["train"]).parent.name
        groups.setdefault((dataset, r["encoder"], r["known_ratio"], r["labeled_ratio"]), []).append(r)
    rows = []
    for (dataset, encoder, known, labeled), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["seed"])
        row = {"dataset": dataset, "encoder": encoder, "known_ratio": known,
               "labeled_ratio": labeled, "seeds": [r["seed"] for r in rs],
               "k_true": rs[0]["k_true"]}
        for m in METRICS:
            vals = [float(r[m]) for r in rs]
            row[m] = {"mean": round(float(np.mean(vals)), 2), "std": round(float(np.std(vals)), 2)}
        row["k_found_per_seed"] = [r["k_found"] for r in rs]
        for m in ("accuracy", "macro_f1"):
            vals = [float(r["open"][m]) for r in rs]
            row[f"open_{m}"] = {"mean": round(float(np.mean(vals)), 2),
                                "std": round(float(np.std(vals)), 2)}
        if all(r.get("domains") for r in rs):
            for m in ("nmi", "ari", "acc", "k_found"):
                vals = [float(r["domains"][m]) for r in rs]
                row[f"domain_{m}"] = {"mean": round(float(np.mean(vals)), 2),
                                      "std": round(float(np.std(vals)), 2)}
            row["domain_k_true"] = rs[0]["domains"]["k_true"]
        base = {}
        for name in (rs[0].get("baselines") or {}):
            base[name] = {m: round(float(np.mean([r["baselines"][name][m] for r in rs])), 2)
                          for m in ("nmi", "ari", "acc")}
        row["baselines_mean"] = base
        row["minutes_per_run"] = round(float(np.mean([run_seconds(r) for r in rs])) / 60, 2)
        rows.append(row)
    for r in reports:
        r["seconds_all_invocations"] = round(run_seconds(r), 1)
    runs = [{k: r.get(k) for k in ("run", "seed", "known_ratio", "labeled_ratio", "encoder",
                                   "k_true", "k_found", "nmi", "ari", "acc", "novel", "open",
                                   "domains", "calibration", "baselines", "timings",
                                   "seconds_all_invocations", "commit",
                                   "machine")} for r in reports]
    payload = {"protocol": "TEXTOIR: known ratio of the intents, labeled ratio of each known "
                           "intent's training rows, whole test split scored",
               "rows": rows, "runs": runs}
    rec.write(OUT, payload)
    plot(rows)
    return payload


def plot(rows) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for row in rows:
        label = f"{row['dataset']} {int(row['known_ratio'] * 100)}% known ({row['encoder'][:24]})"
        xs = np.full(len(row["k_found_per_seed"]), row["k_true"], float)
        xs += np.linspace(-0.02, 0.02, len(xs)) * row["k_true"] + 0.02 * row["k_true"] * (
            row["known_ratio"] - 0.5)
        ax.scatter(xs, row["k_found_per_seed"], s=18, label=label, alpha=0.8)
    top = max(max(r["k_found_per_seed"] + [r["k_true"]]) for r in rows) * 1.1
    ax.plot([0, top], [0, top], "k--", lw=0.8, label="K found = true K")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("true number of intents K")
    ax.set_ylabel("K found (one point per seed)")
    ax.legend(fontsize=6, loc="upper left")
    ax.set_title("jaxslu discover: number of intents found")
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["clinc", "snips"])
    p.add_argument("--known", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--labeled", type=float, default=0.1)
    p.add_argument("--variant", default="default")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--collect", action="store_true")
    args = p.parse_args(argv)
    if args.dataset:
        for known in args.known:
            for seed in args.seeds:
                print(run_one(args.dataset, known, seed, args.variant, args.labeled,
                              args.overrides), flush=True)
    if args.collect:
        collect()
        print(OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
