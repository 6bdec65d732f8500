"""Regenerate the tables of docs/discovery.md from results/discovery.json (never typed).

    python scripts/render_discovery_docs.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "results" / "discovery.json"
DOC = ROOT / "docs" / "discovery.md"
BEGIN, END = "<!-- BEGIN GENERATED: render_discovery_docs.py -->", "<!-- END GENERATED -->"


def ms(d) -> str:
    return "" if not d else f"{d['mean']:.1f} ± {d['std']:.1f}"


def tables() -> str:
    data = json.loads(RESULTS.read_text())
    lines = ["### Discovery (whole test split; mean ± std over the seeds listed)", "",
             "| dataset | known | encoder | seeds | NMI | ARI | ACC | K true | K found (per seed) "
             "| open acc | open macro-F1 | min/run |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        lines.append(
            f"| {r['dataset']} | {int(r['known_ratio'] * 100)}% | {r['encoder']} | "
            f"{','.join(map(str, r['seeds']))} | {ms(r['nmi'])} | {ms(r['ari'])} | "
            f"{ms(r['acc'])} | {r['k_true']} | {ms(r['k_found'])} "
            f"({', '.join(map(str, r['k_found_per_seed']))}) | {ms(r['open_accuracy'])} | "
            f"{ms(r['open_macro_f1'])} | {r['minutes_per_run']:.1f} |")
    lines += ["", "### Baselines on the same test features, given the true K (mean over the same "
              "seeds)", "", "| dataset | known | encoder | baseline | NMI | ARI | ACC |",
              "|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        for name, b in r["baselines_mean"].items():
            lines.append(f"| {r['dataset']} | {int(r['known_ratio'] * 100)}% | {r['encoder']} | "
                         f"{name} | {b['nmi']:.1f} | {b['ari']:.1f} | {b['acc']:.1f} |")
    dom = [r for r in data["rows"] if "domain_nmi" in r]
    if dom:
        lines += ["", "### Domains (stage 3: discovered and known intents clustered into "
                  "domains; CLINC's domains.json is the truth)", "",
                  "| dataset | known | encoder | NMI | ARI | ACC | domains true | found |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in dom:
            lines.append(f"| {r['dataset']} | {int(r['known_ratio'] * 100)}% | {r['encoder']} | "
                         f"{ms(r['domain_nmi'])} | {ms(r['domain_ari'])} | {ms(r['domain_acc'])} "
                         f"| {r['domain_k_true']} | {ms(r['domain_k_found'])} |")
    machines = {f"{r['machine'].get('cpu')} x{r['machine'].get('cores')}" for r in data["runs"]}
    commits = sorted({(r.get("commit") or "")[:7] for r in data["runs"]})
    lines += ["", f"Machines: {', '.join(sorted(machines))}; commits {', '.join(commits)}. "
              "Source: `results/discovery.json` (`scripts/discovery_protocol.py --collect`); "
              "plot: `docs/img/discovery_k.png`."]
    return "\n".join(lines)


def main() -> int:
    from jaxslu.provenance import replace_generated_block

    print(replace_generated_block(DOC, BEGIN, END, tables()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
