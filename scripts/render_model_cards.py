"""Model cards (docs/model_cards/<name>.md), one per trained speech config, from results JSON.

    python scripts/render_model_cards.py

Each card states the data, the model and its size, the training budget, the results and the
known limits, in the manner of ESPnet and NeMo recipe cards. Every figure comes from a results
file written by the program that measured it (the card names the file and its command); the
model and training settings come from the config file. Cards whose results are missing say so.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "docs" / "model_cards"

CARDS = [
    {"name": "fsdd_slu", "config": "configs/fsdd_slu.py", "variant": "default",
     "title": "FSDD spoken-digit SLU transducer (the `jaxslu demo` model)",
     "data": "Free Spoken Digit Dataset as bundled (data/fsdd, CC BY-SA 4.0): 5 speakers, "
             "8 kHz. Standard split: recordings 0-4 of every digit and speaker are the test set "
             "(250), 5-49 the training set (2,250).",
     "report": "results/fsdd_demo_report.json", "loso": ("default", "none"),
     "limits": ["Five training voices: on a voice it has never heard it does far worse than "
                "on the standard split (the leave-one-speaker-out figures above).",
                "Isolated digits only; the transcript vocabulary is the ten digit words."]},
    {"name": "fsdd_robust", "config": "configs/fsdd_robust.py", "variant": "default",
     "title": "Speaker-robust FSDD transducer (augmentation + synthetic voices)",
     "data": "FSDD as above plus synthetic digits rendered by eSpeak NG over 104 voices "
             "(8 accents x 13 variants, random rate and pitch) at 1 synthetic per real training "
             "recording; speed, VTLP, reverberation, noise and SpecAugment on the training "
             "examples (docs/speech_robustness.md).",
     "report": "results/fsdd_robust_report.json", "loso": ("default", "default"),
     "limits": ["The synthetic voices are formant synthesis, far from natural speech; the "
                "leave-one-speaker-out table shows how much they transfer.",
                "Isolated digits only."]},
    {"name": "spoken_slurp", "config": "configs/spoken_slurp.py", "variant": "default",
     "title": "Spoken SLURP E2E SLU transducer (SLURP devel text, synthetic voices)",
     "data": "SLURP devel sentences (data/slurp, CC BY 4.0) spoken by 16 eSpeak NG speakers "
             "(accents), 80/10/10 split by a hash of slurp_id, the same speakers in every split.",
     "report": "results/spoken_slurp_devel16_report.json", "loso": None,
     "limits": ["About 1,650 training utterances: data-starved, far from pretrained systems "
                "on real SLURP audio.",
                "Synthetic speech only; test speakers are the training speakers.",
                "Superseded by the spoken_nlu card (the scaled corpus, unseen test speakers)."]},
    {"name": "spoken_nlu", "config": "configs/spoken_nlu.py", "variant": "default",
     "title": "Spoken SLU transducer at scale (HWU64 + SLURP text, 48 synthetic voices)",
     "data": "HWU64 train (SLURP test sentences removed) plus the train part of SLURP devel "
             "(the `slurp_nlu` text mix, data/hwu64 CC BY-SA 3.0 and data/slurp CC BY 4.0), "
             "spoken by 48 eSpeak NG training speakers (accents x voice variants x rate x "
             "pitch), 2 speakers per sentence, noise (50%) and reverberation (30%) rendered in; "
             "tested on SLURP devel's held-out part and HWU64 test spoken by 16 speakers never "
             "heard in training (jaxslu/audio/spoken_nlu.py).",
     "report": "results/spoken_slurp_report.json",
     "extra_reports": ["results/spoken_nlu_hwu64_test_report.json"], "accents": True,
     "loso": None,
     "limits": ["Synthetic speech only (formant synthesis): figures on real recordings will "
                "be lower; no pretrained acoustic model.",
                "Trained from scratch within about 1.5 h of 2 CPU cores."]},
]


def _load(path: str) -> dict | None:
    p = ROOT / path
    return json.loads(p.read_text()) if p.is_file() else None


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _model_lines(cfg) -> list[str]:
    m = cfg.model
    enc = m.encoder
    heads = [h for h, on in (("CTC", m.ctc_head), ("intent", m.intent_head),
                             ("slots", getattr(m, "slot_head", False))) if on]
    return [f"- Encoder: {enc.kind}, {enc.num_layers} layers x {enc.dim} dims, {enc.heads} "
            f"heads, subsampling {enc.subsampling}x, dropout {enc.dropout}.",
            f"- Prediction network: LSTM {m.predictor.layers} x {m.predictor.hidden}; joint "
            f"{m.joint_dim}; heads: {', '.join(heads) or 'none'}.",
            f"- Objective: `{cfg.loss}`; tokenizer {cfg.tokenizer.kind} ({cfg.tokenizer.vocab_size}).",
            f"- Frontend: {cfg.frontend.num_mels} log-mels at {cfg.frontend.sample_rate} Hz; "
            f"SpecAugment {cfg.frontend.freq_masks} x F{cfg.frontend.freq_mask_width}, "
            f"{cfg.frontend.time_masks} x T{cfg.frontend.time_mask_ratio}; VTLP "
            f"{cfg.frontend.vtlp}."]


def render_card(card: dict) -> str:
    from jaxslu.config import load_config

    cfg = load_config(str(ROOT / card["config"]), card["variant"])
    report = _load(card["report"])
    lines = [f"# Model card: {card['title']}", "",
             f"Config: `{card['config']}` (variant `{card['variant']}`). Generated by "
             "`scripts/render_model_cards.py` from the results files named below; do not edit.",
             "", "## Data", card["data"], "", "## Model"] + _model_lines(cfg)
    params = (report or {}).get("num_parameters")
    if not params and card["loso"] and _load("results/fsdd_loso.json"):
        params = next((r.get("num_parameters") for r in _load("results/fsdd_loso.json")["runs"]
                       if r["variant"] == card["loso"][1] and r.get("num_parameters")), None)
    lines.append(f"- Parameters: {params:,}." if params else
                 "- Parameters: not recorded in the report (re-evaluate the run to add them).")
    lines += ["", "## Training budget",
              f"- {cfg.train.steps} steps of batch {cfg.data.batch_size}, AdamW lr "
              f"{cfg.optim.learning_rate} ({cfg.optim.warmup_steps} warm-up, {cfg.optim.decay}), "
              f"seed {cfg.seed}.",
              f"- Command: `jaxslu train --config {card['config']} --workdir W --eval`."]
    lines += ["", "## Results"]
    if report:
        lines += [f"From `{card['report']}` (command `{report.get('command', '?')}`, machine "
                  f"{json.dumps(report.get('machine', '?')) if isinstance(report.get('machine'), dict) else report.get('machine', '?')}):",
                  "", "| split | examples | WER | intent accuracy | SLU-F1 | step |",
                  "|---|---|---|---|---|---|",
                  f"| {report.get('split')} | {report.get('num_examples')} | "
                  f"{_pct(report.get('wer'))} | {_pct(report.get('intent_accuracy'))} | "
                  f"{_pct(report.get('slu_f1'))} | {report.get('step')} |"]
        for extra in card.get("extra_reports", []):
            r = _load(extra)
            if r:
                lines.append(f"| {r.get('split')} (`{extra}`) | {r.get('num_examples')} | "
                             f"{_pct(r.get('wer'))} | {_pct(r.get('intent_accuracy'))} | "
                             f"{_pct(r.get('slu_f1'))} | {r.get('step')} |")
        if card.get("accents") and report.get("per_accent"):
            lines += ["", f"Per accent of the unseen test speakers (`{card['report']}`):", "",
                      "| accent | utterances | WER | intent accuracy | SLU-F1 |",
                      "|---|---|---|---|---|"]
            for accent, a in sorted(report["per_accent"].items()):
                lines.append(f"| {accent} | {a.get('num_examples', a.get('n', '?'))} | "
                             f"{_pct(a.get('wer'))} | {_pct(a.get('intent_accuracy'))} | "
                             f"{_pct(a.get('slu_f1'))} |")
    else:
        lines.append(f"`{card['report']}` is not there yet: the config has not been trained "
                     "with its final settings on the project's machine.")
    loso = _load("results/fsdd_loso.json") if card["loso"] else None
    if loso:
        rows = [s for s in loso["summary"].values()
                if s["size"] == "default" and s["variant"] == card["loso"][1]]
        for s in rows:
            lines += ["", f"Leave-one-speaker-out (`results/fsdd_loso.json`, variant "
                      f"`{card['loso'][1]}`, {s['steps']} steps, {s['speakers']} of 5 held-out "
                      f"speakers so far): mean digit accuracy {_pct(s['mean_digit_accuracy'])}, "
                      f"worst {_pct(s['worst_digit_accuracy'])} ({s['worst_speaker']})."]
    peers = _load("results/asr_peers.json")
    if peers:
        rows = [r for r in peers.get("systems", []) if r.get("dataset") and
                card["name"].startswith(str(r.get("dataset")))]
        if rows:
            lines += ["", "Against a pretrained recognizer on the same audio and CPU "
                      "(`results/asr_peers.json`):", "", "| system | dataset | WER | RTF |",
                      "|---|---|---|---|"]
            lines += [f"| {r['name']} | {r['dataset']} | {_pct(r['wer'])} | {r['rtf']:.3f} |"
                      for r in rows]
    lines += ["", "## Known limits"] + [f"- {x}" for x in card["limits"]] + [""]
    return "\n".join(lines)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for card in CARDS:
        path = OUT / f"{card['name']}.md"
        path.write_text(render_card(card))
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
