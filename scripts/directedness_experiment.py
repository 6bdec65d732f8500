"""Device-directedness: acoustic, semantic and fused classifiers, equal-error rate of each.

    python scripts/directedness_experiment.py --e2e runs/spoken_nlu --nlu runs/slurp_nlu
    python scripts/directedness_experiment.py --render      # only rewrite the docs table

1. The corpus (jaxslu/directedness/corpus.py): `--train` directed + `--train` not-directed
   training utterances and `--test` + `--test` test utterances (unseen speakers), directed ones
   taken from the E2E run's own spoken corpus, not-directed ones rendered, in <root>/corpus.
2. The features (jaxslu/directedness/features.py) from the E2E run (and the NLU run), in
   <root>/features.
3. configs/device_directedness.py's "acoustic", "semantic" and "fused" variants trained in
   <root>/<kind> and evaluated on the test split.

Writes results/device_directedness.json: {"runs": [{"kind": "acoustic" | "semantic" | "fused",
"eer", "accuracy", "per_delivery"}], "fused_vs_acoustic_relative_eer_change", ...} and the
generated table of docs/device_directedness.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DOC = ROOT / "docs" / "device_directedness.md"
KINDS = ("acoustic", "semantic", "fused")


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def render(d: dict) -> str:
    deliveries = sorted({k for r in d["runs"] for k in r["per_delivery"]})
    lines = ["| kind | EER % | accuracy % | " +
             " | ".join(f"EER % vs {k} speech" for k in deliveries) + " |",
             "|---|---|---|" + "---|" * len(deliveries)]
    for r in d["runs"]:
        lines.append(f"| {r['kind']} | {_pct(r['eer'])} | {_pct(r['accuracy'])} | " +
                     " | ".join(_pct(r["per_delivery"].get(k, {}).get("eer"))
                                for k in deliveries) + " |")
    n = d["num_examples"]
    change = d.get("fused_vs_acoustic_relative_eer_change")
    lines += ["", f"Test: {n['test']} utterances ({d['num_directed_test']} directed) by speakers "
              f"never heard in training; training: {n['train']}. Fused against acoustic-only: "
              f"{'–' if change is None else f'{100 * change:+.1f}%'} relative EER. Features "
              f"from E2E run `{d['e2e_workdir']}` (step {d['e2e_step']}) and NLU run "
              f"`{d['nlu_workdir']}` (step {d['nlu_step']}). Command `{d.get('command')}`, "
              f"commit {d.get('commit')}."]
    return "\n".join(lines)


def write_doc(d: dict) -> None:
    from jaxslu.provenance import replace_generated_block

    replace_generated_block(DOC, "<!-- BEGIN device_directedness (generated) -->",
                            "<!-- END device_directedness (generated) -->", render(d))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--e2e", help="trained E2E SLU transducer run (e.g. configs/spoken_nlu.py)")
    p.add_argument("--nlu", default=None, help="text NLU run for the semantic features")
    p.add_argument("--root", default="runs/directedness")
    p.add_argument("--train", type=int, default=2000, help="utterances per class, training")
    p.add_argument("--test", type=int, default=500, help="utterances per class, test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="override of configs/device_directedness.py (every variant)")
    p.add_argument("--variant-suffix", default="", help="'tiny' to check the program quickly")
    p.add_argument("--out", default=str(ROOT / "results" / "device_directedness.json"))
    p.add_argument("--no-doc", action="store_true")
    p.add_argument("--render", action="store_true", help="only rewrite the docs table")
    args = p.parse_args(argv)
    if args.render:
        write_doc(json.loads(Path(args.out).read_text()))
        print(DOC)
        return 0
    if not args.e2e:
        p.error("--e2e is required (a trained E2E SLU run)")

    from jaxslu import cli
    from jaxslu.audio.spoken_nlu import spoken_nlu_manifest
    from jaxslu.config import load_config, read_config
    from jaxslu.directedness.corpus import build_directedness
    from jaxslu.directedness.features import extract_features
    from jaxslu.eval import evaluate_workdir
    from jaxslu.train.loop import train

    rec = cli.start_experiment("scripts/directedness_experiment.py", argv)
    e2e_cfg = read_config(Path(args.e2e) / "config.json")
    if e2e_cfg.data.dataset != "spoken_nlu":
        raise SystemExit(f"--e2e {args.e2e}: trained on {e2e_cfg.data.dataset!r}; the directed "
                         "utterances come from the spoken_nlu corpus, so use a spoken_nlu run")
    opts = dict(e2e_cfg.data.options)
    spoken = spoken_nlu_manifest(**opts)
    root = Path(args.root)
    manifest = build_directedness(root / "corpus", spoken, num_train=args.train,
                                  num_test=args.test, seed=args.seed)
    features = extract_features(args.e2e, manifest, root / "features", args.nlu)
    info = json.loads((features / "features.json").read_text())
    runs = []
    for kind in KINDS:
        variant = args.variant_suffix or kind
        overrides = [f"data.options.path={features}"] + args.overrides
        if args.variant_suffix:
            overrides.append("model.inputs=" + {"fused": "both"}.get(kind, kind))
        cfg = load_config(ROOT / "configs" / "device_directedness.py", variant, overrides)
        workdir = root / kind
        result = train(cfg, workdir, progress=False)
        r = evaluate_workdir(workdir)["test"]
        runs.append({"kind": kind, "variant": variant, "workdir": str(workdir),
                     "step": int(result.state.step), "inputs": cfg.model.inputs,
                     "eer": r["eer"], "accuracy": r["accuracy"],
                     "per_delivery": r["per_delivery"]})
        print(kind, {k: runs[-1][k] for k in ("eer", "accuracy")}, flush=True)
    eer = {r["kind"]: r["eer"] for r in runs}
    payload = {"experiment": "device_directedness", "config": "configs/device_directedness.py",
               "overrides": args.overrides, "runs": runs,
               "fused_vs_acoustic_relative_eer_change":
                   (eer["fused"] - eer["acoustic"]) / eer["acoustic"] if eer["acoustic"] else None,
               "e2e_workdir": args.e2e, "e2e_step": info["e2e_step"],
               "nlu_workdir": args.nlu, "nlu_step": info["nlu_step"],
               "num_examples": info["num_examples"],
               "num_directed_test": args.test, "corpus": {"train_per_class": args.train,
                                                          "test_per_class": args.test,
                                                          "seed": args.seed}}
    out = rec.write(args.out, payload)
    if not args.no_doc:
        write_doc(json.loads(out.read_text()))
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
