"""Regenerate the tables of docs/fairness.md from results/fairness/*.json (never typed).

    python scripts/render_fairness_docs.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "results" / "fairness"
DOC = ROOT / "docs" / "fairness.md"
BEGIN, END = "<!-- BEGIN GENERATED: render_fairness_docs.py -->", "<!-- END GENERATED -->"


def pct(x, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}"


def _load(name: str):
    f = RESULTS / f"{name}.json"
    return json.loads(f.read_text()) if f.is_file() else None


def _source(d: dict, name: str) -> str:
    m = d.get("machine", {})
    return (f"Source: `results/fairness/{name}.json` (`{d.get('command', '')}`), commit "
            f"{(d.get('commit') or '')[:7]}{' (dirty)' if d.get('commit_dirty') else ''}, "
            f"{m.get('cpu')} x{m.get('cores')}.")


def _interval(iv) -> str:
    if not iv or iv[0] is None:
        return "n/a"
    return f"[{pct(iv[0])}, {pct(iv[1])}]"


def cohort_tables(doc: dict) -> list[str]:
    lines: list[str] = []
    for m in doc["methods"]:
        lines += [f"### {m['method']} cohorts ({m.get('split', '')}: {m.get('utterances')} "
                  f"utterances, {m.get('speakers')} speakers; overall WER {pct(m.get('wer'))}%)",
                  "", "| rank | cohort | speakers | utterances | WER % | 95% interval | accents |",
                  "|---|---|---|---|---|---|---|"]
        for r, c in enumerate(m["cohorts"], 1):
            acc = ", ".join(f"{k} {v}" for k, v in sorted(c.get("accents", {}).items()))
            lines.append(f"| {r} | {c['name']} | {len(c['speakers'])} | {c['utterances']} | "
                         f"{pct(c['wer'])} | {_interval(c.get('interval'))} | {acc} |")
        gap = m.get("relative_gap")
        lines += ["", f"Relative gap (worst - best) / best: {pct(gap)}%; bottom cohort's share "
                      f"of utterances: {pct(m.get('bottom_share'))}%; adjusted Rand index "
                      f"between cohorts and accents: {m.get('accent_ari') if m.get('accent_ari') is None else round(m['accent_ari'], 3)}. "
                      f"Parameters: `{json.dumps(m.get('params', {}))}`.", ""]
        for kind, name in sorted((m.get("plots") or {}).items()):
            lines.append(f"![{m['method']} {kind}](../results/fairness/{name})")
        prov = m.get("provenance") or {}
        lines += ["", f"Source: `results/fairness/cohorts.json` (`{prov.get('command', '')}`), "
                      f"commit {(prov.get('commit') or '')[:7]}.", ""]
    return lines


def mitigation_table(d: dict) -> list[str]:
    t = d["target"]
    lines = [f"Target cohort (chosen on dev, worst WER there): **{t['cohort']}**, "
             f"{len(t['speakers'])} speakers, dev WER {pct(t['dev_wer'])}%. Fine-tuning: "
             f"{d['finetune']['steps']} steps at learning rate {d['finetune']['learning_rate']}, "
             f"oversampling weight {d['finetune']['oversample_weight']}.", "",
             "| run | kind | overall WER % | worst-cohort WER % | overall delta vs base (95% CI) | "
             "worst-cohort delta (95% CI) | p(no gain), worst cohort |",
             "|---|---|---|---|---|---|---|"]
    for r in d["runs"]:
        vs = r.get("vs_baseline")
        if vs:
            o, w = vs["overall"], vs["worst_cohort"]
            od = f"{pct(o['delta'], 2)} [{pct(o['interval'][0], 2)}, {pct(o['interval'][1], 2)}]"
            wd = f"{pct(w['delta'], 2)} [{pct(w['interval'][0], 2)}, {pct(w['interval'][1], 2)}]"
            p = f"{w['p_delta_ge_0']:.2f}"
        else:
            od = wd = p = ""
        lines.append(f"| {r['name']} | {r['kind']} | {pct(r['overall_wer'], 2)} | "
                     f"{pct(r['worst_cohort_wer'], 2)} | {od} | {wd} | {p} |")
    lines += ["", "Deltas are WER(run) - WER(base) in points, paired bootstrap over speakers "
                  "on the same test utterances.", "", _source(d, "mitigation"), ""]
    return lines


def sv_table(d: dict) -> list[str]:
    lines = ["| run | kind | EER % | minDCF 0.01 | minDCF 0.05 | gender EER gap | accent EER "
             "spread |", "|---|---|---|---|---|---|---|"]
    rows = list(d["runs"]) + [dict(r, name=f"{r['name']} (ablation)")
                              for r in d.get("ablations", [])]
    for r in rows:
        dcf = r.get("min_dcf") or {}
        gap = r.get("gender_gap")
        gap = gap.get("absolute") if isinstance(gap, dict) else gap
        spread = r.get("accent_spread")
        spread = spread.get("max_minus_min") if isinstance(spread, dict) else spread
        lines.append(f"| {r['name']} | {r['kind']} | {pct(r['eer'], 2)} | "
                     f"{dcf.get('0.01', float('nan')):.3f} | {dcf.get('0.05', float('nan')):.3f} | "
                     f"{pct(gap, 2)} | {pct(spread, 2)} |")
    for r in rows:
        per = r.get("per_cohort") or {}
        for group, cohorts in per.items():
            if not isinstance(cohorts, dict):
                continue
            lines += ["", f"{r['name']}, per {group}:", "", "| cohort | EER % | trials |",
                      "|---|---|---|"]
            for name, c in sorted(cohorts.items()):
                if isinstance(c, dict) and "eer" in c:
                    lines.append(f"| {name} | {pct(c['eer'], 2)} | {c.get('trials', '')} |")
    lines += ["", _source(d, "speaker_verification"), ""]
    return lines


def tables() -> str:
    lines: list[str] = []
    coh = _load("cohorts")
    if coh:
        lines += ["## Cohorts found (base model, test split)", ""] + cohort_tables(coh)
    mit = _load("mitigation")
    if mit:
        lines += ["## Mitigation (fine-tuning toward the worst cohort)", ""] + mitigation_table(mit)
    sv = _load("speaker_verification")
    if sv:
        lines += ["## Speaker verification (unseen synthetic speakers)", ""] + sv_table(sv)
    return "\n".join(lines)


def main() -> int:
    from jaxslu.provenance import replace_generated_block

    replace_generated_block(DOC, BEGIN, END, tables())
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
