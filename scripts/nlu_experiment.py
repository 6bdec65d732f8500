"""Train (or resume) and evaluate an NLU config, and write its figures with provenance.

    python scripts/nlu_experiment.py --config configs/slurp_nlu.py --workdir runs/slurp_nlu
    python scripts/nlu_experiment.py --config configs/slurp_nlu.py --variant minilm \\
        --workdir runs/slurp_nlu_minilm
    python scripts/nlu_experiment.py --config configs/clinc_oos.py --workdir runs/clinc_oos

Writes `results/nlu/<experiment name>.json`: command, commit, machine, versions, the config's
seed and steps, the training wall time (`train_time.json` of the workdir), and every evaluation split's report (top-level
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


def training_seconds(workdir: Path) -> float | None:
    """Wall seconds of all training invocations of the run (`train_time.json`, by the loop)."""
    f = workdir / "train_time.json"
    return float(json.loads(f.read_text())["total_seconds"]) if f.exists() else None


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
    seconds = training_seconds(workdir)
    keep = lambda r: {k: v for k, v in r.items() if not isinstance(v, (dict, list))
                      and k not in ("path",)}
    payload = {"experiment": cfg.name, "config": args.config, "variant": args.variant or "default",
               "overrides": args.overrides, "seed": cfg.seed, "steps": int(result.state.step),
               "encoder": cfg.model.encoder.kind, "loss": cfg.loss,
               "train_seconds": None if seconds is None else round(seconds, 1),
               "open_set": (json.loads((workdir / "open_set.json").read_text())
                            if (workdir / "open_set.json").exists() else None),
               "reports": {split: keep(r) for split, r in reports.items()}}
    out = Path(args.out) if args.out else ROOT / "results" / "nlu" / f"{cfg.name}.json"
    rec.write(out, payload)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
