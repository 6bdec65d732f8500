"""Train (or resume) and evaluate an NLU config, and write its figures with provenance.

    python scripts/nlu_experiment.py --config configs/slurp_nlu.py --workdir runs/slurp_nlu
    python scripts/nlu_experiment.py --config configs/slurp_nlu.py --variant minilm \\
        --workdir runs/slurp_nlu_minilm
    python scripts/nlu_experiment.py --config configs/clinc_oos.py --workdir runs/clinc_oos

Writes `results/nlu/<experiment name>.json`: command, commit, machine, versions, the config's
seed and steps, the training wall time (`train_time.json` of the workdir, or the per-window
step times the run logged in `metrics.jsonl`), and every evaluation split's report (top-level
figures; the per-example records stay in the workdir). `scripts/render_nlu_docs.py` builds the
docs tables from these files.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def training_seconds(workdir: Path) -> tuple[float | None, str]:
    f = workdir / "train_time.json"
    if f.exists():
        return float(json.loads(f.read_text())["total_seconds"]), "train_time.json"
    m = workdir / "metrics.jsonl"
    if not m.exists():
        return None, "unknown"
    total, prev = 0.0, 0
    for line in m.read_text().splitlines():
        d = json.loads(line)
        if "train/seconds_per_step" in d:
            total += d["train/seconds_per_step"] * (d["step"] - prev)
            prev = d["step"]
    return total, "metrics.jsonl seconds_per_step x steps"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--variant", default=None)
    p.add_argument("--workdir", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--out", default=None, help="default results/nlu/<experiment name>.json")
    args = p.parse_args(argv)

    from jaxslu.provenance import Recorder

    rec = Recorder(sys.argv if argv is None else ["scripts/nlu_experiment.py", *argv])
    from jaxslu.config import load_config
    from jaxslu.eval import evaluate_workdir
    from jaxslu.train.loop import train

    cfg = load_config(args.config, args.variant, args.overrides)
    workdir = Path(args.workdir)
    result = train(cfg, workdir, progress=False)
    reports = evaluate_workdir(workdir)
    seconds, how = training_seconds(workdir)
    keep = lambda r: {k: v for k, v in r.items() if not isinstance(v, (dict, list))
                      and k not in ("path",)}
    payload = {"experiment": cfg.name, "config": args.config, "variant": args.variant or "default",
               "overrides": args.overrides, "seed": cfg.seed, "steps": int(result.state.step),
               "encoder": cfg.model.encoder.kind, "loss": cfg.loss,
               "train_seconds": None if seconds is None else round(seconds, 1),
               "train_seconds_source": how,
               "open_set": (json.loads((workdir / "open_set.json").read_text())
                            if (workdir / "open_set.json").exists() else None),
               "reports": {split: keep(r) for split, r in reports.items()}}
    out = Path(args.out) if args.out else ROOT / "results" / "nlu" / f"{cfg.name}.json"
    rec.write(out, payload)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
