"""Regenerate the tables of docs/personalization.md from results/personalization/*.json (never
typed).

    python scripts/render_personalization_docs.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "results" / "personalization"
DOC = ROOT / "docs" / "personalization.md"
BEGIN, END = "<!-- BEGIN GENERATED: render_personalization_docs.py -->", "<!-- END GENERATED -->"


def pct(x) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def tables() -> str:
    lines = []
    ue = RESULTS / "user_embeddings.json"
    if ue.exists():
        data = json.loads(ue.read_text())
        lines += ["### Accuracy against the baselines (test split; %)", "",
                  "| dataset | model | accuracy | Recall@10 | NDCG@10 | ambiguous acc | "
                  "unambiguous acc | positions |", "|---|---|---|---|---|---|---|---|"]
        for d in data["datasets"]:
            rows = [("incremental user embeddings", d["model"])] + [
                (k.replace("_", " "), v) for k, v in d["baselines"].items()]
            for name, r in rows:
                amb = r.get("accuracy_by_ambiguous", {})
                lines.append(
                    f"| {d['name']} | {name} | {pct(r.get('accuracy'))} | "
                    f"{pct(r.get('recall@10'))} | {pct(r.get('ndcg@10'))} | "
                    f"{pct(amb.get('true', {}).get('accuracy'))} | "
                    f"{pct(amb.get('false', {}).get('accuracy'))} | {r.get('positions', '')} |")
        lines += ["", "### Per request kind (simulated log; accuracy %)", ""]
        kinds = sorted({k for d in data["datasets"] for r in [d["model"]]
                        for k in r.get("accuracy_by_kind", {})})
        if kinds:
            lines += ["| dataset | model | " + " | ".join(kinds) + " |",
                      "|---|---|" + "---|" * len(kinds)]
            for d in data["datasets"]:
                if not d["model"].get("accuracy_by_kind"):
                    continue
                for name, r in [("incremental user embeddings", d["model"])] + [
                        (k.replace("_", " "), v) for k, v in d["baselines"].items()
                        if v.get("accuracy_by_kind")]:
                    by = r["accuracy_by_kind"]
                    lines.append(f"| {d['name']} | {name} | " + " | ".join(
                        pct(by.get(k, {}).get("accuracy")) for k in kinds) + " |")
        lines += ["", "### Incremental state against full recompute (trained model, test users)",
                  "", "| dataset | max abs logit difference | users | positions | train min "
                  "(model / no history / SASRec) |", "|---|---|---|---|---|"]
        for d in data["datasets"]:
            t = d.get("timing", {})
            mins = " / ".join(f"{t[k]['train_s'] / 60:.1f}" for k in ("model", "no_history",
                                                                      "sasrec") if k in t)
            lines.append(f"| {d['name']} | {d['incremental_max_abs_diff']:.2e} | "
                         f"{d['incremental_users']} | {d['incremental_positions']} | {mins} |")
        lines += ["", f"Source: `results/personalization/user_embeddings.json` "
                  f"(`{data.get('command', '')}` and the other dataset's run); commit "
                  f"{(data.get('commit') or '')[:7]}, {data['machine'].get('cpu')} "
                  f"x{data['machine'].get('cores')}."]
    for bench in sorted(RESULTS.glob("incremental_update_*.json")):
        b = json.loads(bench.read_text())
        lines += ["", f"### Update cost by history length ({b['backend']}; ms, median "
                  f"[q1, q3] of {b['reps']} calls)", "",
                  "| past interactions | incremental update (merge a window of "
                  f"{b['model']['window']}) | full recompute | max abs diff |",
                  "|---|---|---|---|"]
        for r in b["lengths"]:
            i, f = r["incremental"], r["full"]
            lines.append(f"| {r['history']:,} | {i['median_ms']:.3f} [{i['q1_ms']:.3f}, "
                         f"{i['q3_ms']:.3f}] | {f['median_ms']:.3f} [{f['q1_ms']:.3f}, "
                         f"{f['q3_ms']:.3f}] | {r['max_abs_diff']:.1e} |")
        lines += ["", f"Source: `{bench.relative_to(ROOT)}` (`{b.get('command', '')}`), "
                  f"{b['machine'].get('cpu')} x{b['machine'].get('cores')}, load "
                  f"{b['machine'].get('load_avg_before')}."]
    return "\n".join(lines)


def main() -> int:
    from jaxslu.provenance import replace_generated_block

    print(replace_generated_block(DOC, BEGIN, END, tables()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
