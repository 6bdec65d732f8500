"""Tables of docs/speech_robustness.md from results JSON: the spoken SLU model at scale
(results/spoken_slurp_report.json, results/spoken_nlu_hwu64_test_report.json), the
cascade-vs-E2E comparisons (results/slu_cascade_vs_e2e*.json) and the ASR peers
(results/asr_peers.json); the
leave-one-speaker-out table is rendered by `scripts/fsdd_loso.py --render`.

    python scripts/render_speech_docs.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DOC = ROOT / "docs" / "speech_robustness.md"


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def cascade_table(d: dict) -> str:
    lines = ["| kind | intent acc. % | SLU-F1 % | WER % | intent acc. %, unseen | SLU-F1 %, unseen |",
             "|---|---|---|---|---|---|"]
    for r in d["runs"]:
        u = r.get("unseen") or {}
        lines.append(f"| {r['kind']} | {_pct(r['intent_accuracy'])} | {_pct(r['slu_f1'])} | "
                     f"{_pct(r['wer'])} | {_pct(u.get('intent_accuracy'))} | "
                     f"{_pct(u.get('slu_f1'))} |")
    seen = d.get("seen_in_training", {})
    e2e, nlu = d.get("e2e", {}), d.get("nlu", {})
    lines += ["", f"{d['num_utterances']} utterances of split `{d['split']}`; E2E run "
              f"`{e2e.get('config_name')}` at step {e2e.get('step')}, NLU run "
              f"`{nlu.get('config_name')}` at step {nlu.get('step')}. Utterances whose sentence "
              f"the NLU run trained on: {seen.get('nlu')}; the `unseen` columns leave them out "
              f"({seen.get('unseen_by_both')} utterances). Command `{d.get('command')}`, commit "
              f"{d.get('commit')}."]
    return "\n".join(lines)


def peers_table(d: dict) -> str:
    lines = ["| system | dataset | utterances | audio s | WER % | digit acc. % | RTF |",
             "|---|---|---|---|---|---|---|"]
    for r in d["systems"]:
        lines.append(f"| {r['name']} | {r['dataset']} | {r['utterances']} | "
                     f"{r['audio_seconds']:.0f} | {_pct(r['wer'])} | "
                     f"{_pct(r.get('digit_accuracy'))} | {r['rtf']:.3f} |")
    m = d.get("machine") or {}
    load = m.get("load_avg_before")
    lines += ["", f"Same audio, same CPU, one run ({m.get('cpu', '?')}, {m.get('cores', '?')} "
              "cores" + (f", 1-minute load average {load[0]:.1f} when it started: the RTFs "
                         "include sharing the cores with other jobs" if load else "") +
              f"). Command `{d.get('command')}`, commit {d.get('commit')}."]
    return "\n".join(lines)


def spoken_table(reports: dict[str, dict]) -> str:
    lines = ["| split | utterances | WER % | CER % | intent acc. % | SLU-F1 % | step |",
             "|---|---|---|---|---|---|---|"]
    for path, r in reports.items():
        lines.append(f"| {r['split']} (`{path}`) | {r['num_examples']} | {_pct(r['wer'])} | "
                     f"{_pct(r.get('cer'))} | {_pct(r['intent_accuracy'])} | "
                     f"{_pct(r['slu_f1'])} | {r['step']} |")
    first = next(iter(reports.values()))
    lines += ["", "Per accent of the unseen test speakers (" +
              ", ".join(f"`{r['split']}`" for r in reports.values()) + "):", "",
              "| accent | " + " | ".join(f"{r['split']}: WER % / intent % / SLU-F1 %"
                                        for r in reports.values()) + " |",
              "|---|" + "---|" * len(reports)]
    for accent in sorted(first.get("per_accent", {})):
        cells = []
        for r in reports.values():
            a = r.get("per_accent", {}).get(accent, {})
            cells.append(f"{_pct(a.get('wer'))} / {_pct(a.get('intent_accuracy'))} / "
                         f"{_pct(a.get('slu_f1'))}")
        lines.append(f"| {accent} | " + " | ".join(cells) + " |")
    lines += ["", f"Command `{first.get('command')}`."]
    return "\n".join(lines)


def main() -> int:
    from jaxslu.provenance import replace_generated_block

    spoken = {p: json.loads((ROOT / p).read_text())
              for p in ("results/spoken_slurp_report.json",
                        "results/spoken_nlu_hwu64_test_report.json") if (ROOT / p).is_file()}
    if spoken and all(r.get("experiment") == "spoken_nlu" for r in spoken.values()):
        replace_generated_block(DOC, "<!-- BEGIN spoken_nlu (generated) -->",
                                "<!-- END spoken_nlu (generated) -->", spoken_table(spoken))
    for name, fn in (("slu_cascade_vs_e2e", cascade_table),
                     ("slu_cascade_vs_e2e_hwu64_test", cascade_table),
                     ("asr_peers", peers_table)):
        path = ROOT / "results" / f"{name}.json"
        if path.is_file():
            replace_generated_block(DOC, f"<!-- BEGIN {name} (generated) -->",
                                    f"<!-- END {name} (generated) -->",
                                    fn(json.loads(path.read_text())))
    print(DOC)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
