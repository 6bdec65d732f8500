"""Regenerate the tables of docs/nlu.md from results/nlu/*.json (never typed by hand).

    python scripts/render_nlu_docs.py            # rewrites the block between the markers
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "results" / "nlu"
DOC = ROOT / "docs" / "nlu.md"
BEGIN, END = "<!-- BEGIN GENERATED: render_nlu_docs.py -->", "<!-- END GENERATED -->"


def pct(x) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def tables() -> str:
    runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))
            if p.name != "baselines.json"]
    lines = ["### SLURP-style NLU (train: HWU64 train + SLURP devel train part)", "",
             "| run | encoder | steps | train min | SLURP held-out intent | domain | slot F1 | "
             "HWU64 test intent | domain | slot F1 | commit |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    base = RESULTS / "baselines.json"
    if base.exists():
        b = json.loads(base.read_text())
        for name, r in b["baselines"].items():
            if "eval" not in r:
                continue
            s, h = r["eval"]["slurp_test"], r["eval"]["hwu64_test"]
            lines.append(f"| baseline: {name} | - | - | {r.get('seconds', 0) / 60:.1f} | "
                         f"{pct(s['intent_accuracy'])} | {pct(s['domain_accuracy'])} | | "
                         f"{pct(h['intent_accuracy'])} | {pct(h['domain_accuracy'])} | | "
                         f"{b['commit'][:7]} |")
    for r in runs:
        rep = r["reports"]
        if "slurp_test" not in rep:
            continue
        s, h = rep["slurp_test"], rep.get("hwu64_test", {})
        lines.append(f"| {r['experiment']} | {r['encoder']} | {r['steps']} | "
                     f"{(r['train_seconds'] or 0) / 60:.1f} | {pct(s.get('intent_accuracy'))} | "
                     f"{pct(s.get('domain_accuracy'))} | {pct(s.get('slot_f1'))} | "
                     f"{pct(h.get('intent_accuracy'))} | {pct(h.get('domain_accuracy'))} | "
                     f"{pct(h.get('slot_f1'))} | {r['commit'][:7]} |")
    lines += ["", "### CLINC150 (full) with out-of-scope queries (test + oos_test)", "",
              "| run | encoder | steps | train min | in-scope accuracy | OOS recall | OOS precision "
              "| closed-set intent accuracy | threshold | commit |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        rep = r["reports"].get("test+oos_test")
        if rep is None:
            continue
        lines.append(f"| {r['experiment']} | {r['encoder']} | {r['steps']} | "
                     f"{(r['train_seconds'] or 0) / 60:.1f} | {pct(rep.get('in_scope_accuracy'))} | "
                     f"{pct(rep.get('oos_recall'))} | {pct(rep.get('oos_precision'))} | "
                     f"{pct(rep.get('intent_accuracy'))} | "
                     f"{rep.get('open_set_threshold', 0):.3f} | {r['commit'][:7]} |")
    machines = {json.dumps(r["machine"].get("cpu")) + f" x{r['machine'].get('cores')}"
                for r in runs}
    lines += ["", f"Machines: {', '.join(sorted(machines))}. Sources: `results/nlu/*.json`."]
    return "\n".join(lines)


def main() -> int:
    from jaxslu.provenance import replace_generated_block

    print(replace_generated_block(DOC, BEGIN, END, tables()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
