"""Context as input: the same model trained with and without the context, on the same data.

    python scripts/context_experiment.py                    # results/context.json, docs/context.md
    python scripts/context_experiment.py --model e2e        # results/context_slu.json (spoken)
    python scripts/context_experiment.py --variant-suffix tiny --root /tmp/ctx --out /tmp/c.json

`--model nlu` (default): the text NLU model, configs/context_nlu.py. `--model e2e`: the
end-to-end SLU transducer on the spoken benchmark (configs/context_slu.py, workdirs
runs/context_slu/<kind>); its ordinary requests are the split `ordinary_test`, and its runs also
record the word error rate of each test split.

Trains (or resumes) configs/context_nlu.py's "with_context" and "without_context" variants in
`<root>/<kind>` (default runs/context), evaluates both on `ambiguous_seen` (the
context-dependent requests in their training phrasings, in new contexts), `ambiguous_test`
(phrasings never seen in training) and `slurp_test` (ordinary requests, whose random context
carries no information), and writes `results/context.json`:

    {"runs": [{"kind": "with_context" | "without_context", "accuracy",
               "accuracy_unseen_phrasing", "slurp_test_accuracy",
               "per_family": {family: accuracy}, ...}],
     "majority_baseline": the accuracy of each phrase's most frequent reading (ambiguous_seen)}

`accuracy` is the intent accuracy on ambiguous_seen, `accuracy_unseen_phrasing` on
ambiguous_test. The generated table in docs/context.md is
rewritten from the JSON (`--render` only rewrites it).
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DOC = ROOT / "docs" / "context.md"
KINDS = ("with_context", "without_context")
MODELS = {  # --model: config, default workdir root, results file, ordinary split, docs block
    "nlu": ("context_nlu.py", "runs/context", "context.json", "slurp_test", "context"),
    "e2e": ("context_slu.py", "runs/context_slu", "context_slu.json", "ordinary_test",
            "context_slu"),
}


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def render(d: dict) -> str:
    fams = sorted({f for r in d["runs"] for f in r["per_family"]})
    ordinary = d.get("ordinary_split", "slurp_test")
    wer = any(r.get("wer") for r in d["runs"])
    lines = ["| kind | ambiguous, new contexts % | " + " | ".join(fams) +
             f" | ambiguous, new phrasings % | ordinary requests ({ordinary}) % |" +
             (" WER % (new contexts / new phrasings / ordinary) |" if wer else ""),
             "|---|---|" + "---|" * len(fams) + "---|---|" + ("---|" if wer else "")]
    for r in d["runs"]:
        row = (f"| {r['kind']} | {_pct(r['accuracy'])} | " +
               " | ".join(_pct(r["per_family"].get(f)) for f in fams) +
               f" | {_pct(r['accuracy_unseen_phrasing'])} | "
               f"{_pct(r.get('ordinary_accuracy', r.get('slurp_test_accuracy')))} |")
        if wer:
            row += " " + " / ".join(_pct(r["wer"].get(k)) for k in (
                "ambiguous_seen", "ambiguous_test", ordinary)) + " |"
        lines.append(row)
    lines += ["", f"Intent accuracy. {d['num_ambiguous_seen']} ambiguous requests in their "
              f"training phrasings and new contexts (per family in the middle columns), "
              f"{d['num_ambiguous_test']} in phrasings never seen in training, "
              f"{d['num_slurp_test']} ordinary requests"
              + (", every one spoken by a speaker never heard in training" if wer else "") +
              ". A model that ignores the context can at "
              f"best answer each phrase's most frequent reading: "
              f"{_pct(d['majority_baseline'])}% on the first set. Steps: " +
              ", ".join(f"{r['kind']} {r['step']}" for r in d["runs"]) +
              f". Command `{d.get('command')}`, commit {d.get('commit')}."]
    return "\n".join(lines)


def write_doc(d: dict, block: str = "context") -> None:
    from jaxslu.provenance import replace_generated_block

    replace_generated_block(DOC, f"<!-- BEGIN {block} (generated) -->",
                            f"<!-- END {block} (generated) -->", render(d))


def _train_seconds(workdir: Path):
    path = workdir / "train_time.json"
    if not path.is_file():
        return None
    d = json.loads(path.read_text())
    return d.get("total_seconds")


def per_family(workdir: Path, split: str = "ambiguous_seen") -> tuple[dict[str, float], list[dict]]:
    recs = [json.loads(x) for x in
            (workdir / f"predictions_{split}.jsonl").read_text().splitlines() if x.strip()]
    by = collections.defaultdict(list)
    for r in recs:
        by[r["meta"]["family"]].append(r["intent_hyp"] == r["intent_ref"])
    return {f: sum(v) / len(v) for f, v in sorted(by.items())}, recs


def main(argv=None, devices=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="nlu",
                   help="nlu: the text NLU model; e2e: the spoken E2E SLU transducer")
    p.add_argument("--root", default="", help="workdirs <root>/<kind> (default per --model)")
    p.add_argument("--variant-suffix", default="", help="'tiny' for a quick check of the program")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--out", default="", help="results JSON (default per --model)")
    p.add_argument("--no-doc", action="store_true", help="do not rewrite docs/context.md")
    p.add_argument("--render", action="store_true", help="only rewrite the docs table")
    args = p.parse_args(argv)
    config_name, root, out_name, ordinary, block = MODELS[args.model]
    args.root = args.root or root
    args.out = args.out or str(ROOT / "results" / out_name)
    if args.render:
        write_doc(json.loads(Path(args.out).read_text()), block)
        print(DOC)
        return 0

    from jaxslu import cli
    from jaxslu.config import load_config
    from jaxslu.context.data import majority_baseline
    from jaxslu.eval import evaluate_workdir
    from jaxslu.train.loop import train

    rec = cli.start_experiment("scripts/context_experiment.py", argv)
    runs, baseline, n_seen, n_amb, n_slurp = [], None, 0, 0, 0
    for kind in KINDS:
        variant = f"{args.variant_suffix}_{kind}" if args.variant_suffix else kind
        if args.variant_suffix and kind == "with_context":
            variant = args.variant_suffix
        cfg = load_config(ROOT / "configs" / config_name, variant, args.overrides)
        workdir = Path(args.root) / kind
        result = train(cfg, workdir, progress=False, devices=devices)
        reports = evaluate_workdir(workdir)
        fam, recs = per_family(workdir)
        baseline = majority_baseline([{"text": r.get("text", r.get("ref")),  # nlu / e2e records
                                       "intent": r["intent_ref"]} for r in recs])
        n_seen = reports["ambiguous_seen"]["num_examples"]
        n_amb, n_slurp = reports["ambiguous_test"]["num_examples"], reports[ordinary][
            "num_examples"]
        run = {"kind": kind, "variant": variant, "workdir": str(workdir),
               "step": int(result.state.step),
               "accuracy": reports["ambiguous_seen"]["intent_accuracy"],
               "accuracy_unseen_phrasing": reports["ambiguous_test"]["intent_accuracy"],
               "ordinary_accuracy": reports[ordinary]["intent_accuracy"],
               "per_family": fam,
               "per_family_unseen_phrasing": per_family(workdir, "ambiguous_test")[0],
               "context_mode": cfg.task_options["context"]}
        if args.model == "nlu":  # the keys of the first results file
            run["slurp_test_accuracy"] = run["ordinary_accuracy"]
            run["slurp_test_slot_f1"] = reports["slurp_test"].get("slot_f1")
        else:
            run["wer"] = {s: r.get("wer") for s, r in reports.items()}
            run["train_time_s"] = _train_seconds(workdir)
        runs.append(run)
        print(kind, {k: run[k] for k in ("accuracy", "ordinary_accuracy")}, flush=True)
    payload = {"experiment": Path(config_name).stem, "config": f"configs/{config_name}",
               "overrides": args.overrides, "runs": runs, "majority_baseline": baseline,
               "ordinary_split": ordinary, "num_ambiguous_seen": n_seen,
               "num_ambiguous_test": n_amb, "num_slurp_test": n_slurp}
    out = rec.write(args.out, payload)
    if not args.no_doc:
        write_doc(json.loads(out.read_text()), block)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
