"""Regenerate the results table of docs/recommendation.md from results/recommendation/kgat.json
(never typed by hand).

    python scripts/render_recommendation_docs.py   # rewrites the block between the markers
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "results" / "recommendation" / "kgat.json"
DOC = ROOT / "docs" / "recommendation.md"
BEGIN = "<!-- BEGIN GENERATED: render_recommendation_docs.py -->"
END = "<!-- END GENERATED -->"
NAMES = {"recipes": "Synthetic recipe graph (targets: held-out cook-alongs)",
         "movielens": "MovieLens-100K + Freebase KG (RecBole files)"}


def table(results: dict) -> str:
    lines = []
    for d in results["datasets"]:
        info = d.get("data") or {}
        lines += [f"### {NAMES.get(d['name'], d['name'])}", "",
                  f"{info.get('users')} users, {info.get('items')} items, "
                  f"{info.get('entities')} entities, {info.get('relations')} relations "
                  f"(inverses included), {info.get('ckg_edges')} CKG edges; "
                  f"{info.get('train_interactions')} train / {info.get('valid_interactions')} "
                  f"valid / {info.get('test_interactions')} test interactions. Seed "
                  f"{d.get('seed')}.", "",
                  "| kind | loss | Recall@20 | NDCG@20 | users evaluated | valid Recall@20 | "
                  "selected step / steps | batch | epochs | s/step | s/epoch |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in d["runs"]:
            lines.append(
                f"| {r['kind']} | `{r['loss']}` | {r['recall@20']:.4f} | {r['ndcg@20']:.4f} | "
                f"{r['users_evaluated']} | {r['valid_recall@20']:.4f} | "
                f"{r['selected_step']} / {r['steps']} | {r['batch_size']} | {r['epochs']} | "
                f"{r['seconds_per_step']} | {r['epoch_seconds']} |")
        load = lambda x: "/".join(f"{v:.1f}" for v in x) if x else "?"
        where = (f" (started {d['started_utc']}; 1/5/15-minute load average "
                 f"{load(d.get('load_avg_before'))} before, {load(d.get('load_avg_after'))} after)"
                 if d.get("started_utc") else " (load not recorded for this run)")
        lines += ["", f"Command: `{d.get('command', '')}`{where}. The 2-core machine was shared "
                  "with other jobs during the runs, so the timings are upper bounds.", ""]
    m = results.get("machine", {})
    acc = m.get("accelerator") or {}
    lines.append(f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, JAX backend "
                 f"{acc.get('jax_backend', '?') if isinstance(acc, dict) else acc}; "
                 f"commit {str(results.get('commit', ''))[:7]}"
                 f"{' (dirty)' if results.get('commit_dirty') else ''}; jax "
                 f"{results.get('versions', {}).get('jax', '?')}.")
    return "\n".join(lines)


def main() -> None:
    from jaxslu.provenance import replace_generated_block

    if not RESULTS.exists():
        raise SystemExit(f"{RESULTS} not found; run scripts/recommendation_experiment.py first")
    replace_generated_block(DOC, BEGIN, END, table(json.loads(RESULTS.read_text())))
    print(f"rewrote the table in {DOC}")


if __name__ == "__main__":
    main()
