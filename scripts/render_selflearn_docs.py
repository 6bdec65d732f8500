"""Regenerate the tables of docs/selflearn.md from results/selflearn/*.json (never typed).

    python scripts/render_selflearn_docs.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "results" / "selflearn"
DOC = ROOT / "docs" / "selflearn.md"
BEGIN, END = "<!-- BEGIN GENERATED: render_selflearn_docs.py -->", "<!-- END GENERATED -->"


def pct(x) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def _load(name: str):
    f = RESULTS / f"{name}.json"
    return json.loads(f.read_text()) if f.is_file() else None


def _source(d: dict, name: str) -> str:
    m = d.get("machine", {})
    return (f"Source: `results/selflearn/{name}.json` (`{d.get('command', '')}`), commit "
            f"{(d.get('commit') or '')[:7]}{' (dirty)' if d.get('commit_dirty') else ''}, "
            f"{m.get('cpu')} x{m.get('cores')}, {d.get('seconds', '')} s.")


def tables() -> str:
    lines: list[str] = []
    sim = _load("simulate")
    if sim:
        st = sim["stats"]
        lines += ["### The simulated log", "",
                  "| sessions | users | turns | directed turns | defect rate % | train / "
                  "held-out sessions |", "|---|---|---|---|---|---|",
                  f"| {st['sessions']:,} | {st['users']:,} | {st['turns']:,} | "
                  f"{st['directed_turns']:,} | {pct(st['defect_rate'])} | "
                  f"{st['splits']['train']:,} / {st['splits']['heldout']:,} |", "",
                  "| failure point | turns |", "|---|---|"]
        lines += [f"| {k} | {v:,} |" for k, v in st["failures"].items()]
        lines += ["", "| signal | turns |", "|---|---|"]
        lines += [f"| {k} | {v:,} |" for k, v in st["signals"].items()]
        lines += ["", "| turn kind | turns |", "|---|---|"]
        lines += [f"| {k} | {v:,} |" for k, v in st["kinds"].items()]
        lines += ["", _source(sim, "simulate"), ""]
    mine = _load("mine")
    if mine:
        r = mine["result"]
        lines += ["### Rewrite mining (absorbing Markov chain; held-out days, first turns)", "",
                  "| chain states | pairs mined | turns rewritten | wins | losses | "
                  "win/loss | defect rate before % | after % |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| {r['states']:,} | {r['pairs']:,} | {r['triggered']:,} | {r['wins']:,} | "
                  f"{r['losses']:,} | {r['win_loss_ratio']:.1f} | "
                  f"{pct(r['defect_rate_before'])} | {pct(r['defect_rate_after'])} |", "",
                  "Examples (source -> target, P(success) of each):", ""]
        for e in r.get("examples", [])[:8]:
            lines.append(f"- `{e['source']}` -> `{e['target']}` ({e['source_success']:.2f} -> "
                         f"{e['target_success']:.2f}, {e['support']} visits)")
        lines += ["", _source(mine, "mine"), ""]
    rw = _load("rewrite")
    if rw:
        r = rw["result"]
        lines += ["### Online rewriting (held-out days, first turns)", "",
                  "| layer | turns | defects before | defects after | relative reduction % | "
                  "rewritten | wins | losses |", "|---|---|---|---|---|---|---|---|"]
        for name, key in (("global", "global"), ("global + personal", "global_personal")):
            e = r.get(key) or {}
            if e:
                lines.append(f"| {name} | {e['turns']:,} | {e['defects_before']:,} | "
                             f"{e['defects_after']:,} | {pct(e['defect_reduction'])} | "
                             f"{e['rewritten']:,} | {e['wins']:,} | {e['losses']:,} |")
        lat = r.get("latency", {})
        if lat:
            lines += ["", "| index entries | index build s | query p50 ms | query p99 ms | "
                      "queries timed |", "|---|---|---|---|---|",
                      f"| {lat.get('index_size', '')} | {lat.get('build_s', 0):.2f} | "
                      f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {lat.get('queries', '')} |"]
        if r.get("retrieval"):
            lines += ["", "Retriever (held-out pairs): " + ", ".join(
                f"{k} {pct(v)}%" for k, v in r["retrieval"].items()
                if isinstance(v, float)) + "."]
        lines += ["", _source(rw, "rewrite"), ""]
    reph = _load("rephrase")
    if reph:
        r = reph["report"]
        lines += ["### Rephrase detection (held-out days)", "",
                  "| current turns | with a rephrase | precision % | recall % | F1 % | "
                  "span F1 % | exact span % | rephrases beyond the gap |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| {r['examples']:,} | {r['with_rephrase']:,} | {pct(r['precision'])} | "
                  f"{pct(r['recall'])} | {pct(r['f1'])} | {pct(r['span_f1'])} | "
                  f"{pct(r['exact_match'])} | {r['beyond_gap']:,} |", "",
                  _source(reph, "rephrase"), ""]
    iso = _load("isolate")
    if iso:
        r = iso["report"]
        lines += ["### Failure-point isolation (held-out days)", "",
                  f"Accuracy {pct(r['accuracy'])}%, macro F1 {pct(r['macro_f1'])}% over "
                  f"{r['examples']:,} turns.", "",
                  "| class | precision % | recall % | F1 % | turns |", "|---|---|---|---|---|"]
        for c, v in r["per_class"].items():
            lines.append(f"| {c} | {pct(v['precision'])} | {pct(v['recall'])} | "
                         f"{pct(v['f1'])} | {v['support']:,} |")
        lines += ["", _source(iso, "isolate")]
    return "\n".join(lines)


def main() -> int:
    from jaxslu.provenance import replace_generated_block

    print(replace_generated_block(DOC, BEGIN, END, tables()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
