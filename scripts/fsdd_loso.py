"""Leave-one-speaker-out FSDD with and without each augmentation (docs/speech_robustness.md).

    python scripts/fsdd_loso.py [--size default|ci] [--variants default,none,no_speed,...]
                                [--speakers george,...] [--runs runs/fsdd_loso] [--steps N]
    python scripts/fsdd_loso.py --render      # summary + docs table from results/fsdd_loso.json

For every variant of `configs/fsdd_robust.py` and every FSDD speaker: train on the other
speakers (plus the synthetic voices, where the variant has them) and evaluate on all 500
recordings of the held-out speaker; digit accuracy = the intent head's accuracy (the digit), WER
= the transcript's. Each run resumes from runs/<size>/<variant>/<speaker>, so the command can be
interrupted and rerun, or split across processes with --variants/--speakers (each process
merges its runs into the JSON; nothing is lost). Writes results/fsdd_loso.json with the command,
commit, machine and library versions, per run and per variant (mean and worst over speakers).
"""
from __future__ import annotations

import argparse
import fcntl
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CONFIG = ROOT / "configs" / "fsdd_robust.py"
RESULTS = ROOT / "results" / "fsdd_loso.json"
DOC = ROOT / "docs" / "speech_robustness.md"
BEGIN, END = "<!-- BEGIN fsdd_loso (generated) -->", "<!-- END fsdd_loso (generated) -->"


def _config_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("fsdd_robust", CONFIG)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def variants_all() -> list[str]:
    return ["default", "none", *_config_module().ABLATIONS]


def speakers_all() -> list[str]:
    from jaxslu import paths

    return sorted(json.loads((paths.data_dir() / "fsdd" / "speakers.json").read_text()))


def config_digest(cfg) -> str:
    """12 hex digits of the resolved config, the held-out speaker left out: the runs of one
    variant (all folds) share it, and it changes when the variant's settings change."""
    import hashlib

    from jaxslu.config import to_dict
    from jaxslu.train.loop import without_launch

    d = to_dict(without_launch(cfg))
    d["data"]["options"] = {k: v for k, v in d["data"]["options"].items()
                            if k != "holdout_speaker"}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def variant_config(size: str, variant: str, speaker: str, steps: int | None):
    from jaxslu.config import load_config

    name = variant if size == "default" else f"{size}/{variant}" if variant != "default" else size
    overrides = [f"data.options.holdout_speaker={speaker}"]
    if steps:
        overrides.append(f"train.steps={steps}")
    return load_config(str(CONFIG), name, overrides)


def run_one(size: str, variant: str, speaker: str, runs: Path, steps: int | None) -> dict:
    from jaxslu.config import read_config
    from jaxslu.eval import evaluate_workdir
    from jaxslu.train.loop import train

    cfg = variant_config(size, variant, speaker, steps)
    digest = config_digest(cfg)
    workdir = runs / size / variant / speaker
    if (workdir / "config.json").is_file():
        old = config_digest(read_config(workdir / "config.json"))
        if old != digest:  # the variant changed since: keep the old run aside, train afresh
            archive = runs / size / f"{variant}@{old}" / speaker
            archive.parent.mkdir(parents=True, exist_ok=True)
            workdir.rename(archive)
            logging.info("%s was trained with another config (%s); moved to %s", workdir, old,
                         archive)
    t0 = time.time()
    res = train(cfg, workdir, progress=False)
    train_s = time.time() - t0
    report_path = workdir / "report_test.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    if report.get("step") != int(res.state.step):
        evaluate_workdir(workdir, splits=["test"])
        report = json.loads(report_path.read_text())
    row = {"size": size, "variant": variant, "holdout": speaker, "config_digest": digest,
           "steps": int(res.state.step),
           "digit_accuracy": report["intent_accuracy"], "wer": report["wer"],
           "num_examples": report["num_examples"],
           "num_parameters": report.get("num_parameters"), "workdir": str(workdir.relative_to(ROOT))
           if workdir.is_relative_to(ROOT) else str(workdir)}
    if res.steps_run:
        row["train_s"] = round(train_s, 1)
    return row


def summarize(rows: list[dict]) -> dict:
    """Mean and worst over the held-out speakers of each variant, from the runs trained with the
    variant's current config (runs of an earlier version of a variant are kept in `runs` but
    not summarized)."""
    out: dict = {}
    current: dict = {}
    for r in rows:
        key = (r["size"], r["variant"], r["steps"])
        if key not in current:
            current[key] = config_digest(variant_config(r["size"], r["variant"], r["holdout"],
                                                        r["steps"]))
        if r.get("config_digest") != current[key]:
            continue
        out.setdefault(f"{r['size']}/{r['variant']}@{r['steps']}", {})[r["holdout"]] = r
    summary = {}
    for key, by_spk in sorted(out.items()):
        acc = {s: r["digit_accuracy"] for s, r in sorted(by_spk.items())}
        worst = min(acc, key=acc.get)
        first = next(iter(by_spk.values()))
        summary[key] = {"size": first["size"], "variant": first["variant"],
                        "steps": first["steps"], "speakers": len(acc),
                        "mean_digit_accuracy": sum(acc.values()) / len(acc),
                        "worst_digit_accuracy": acc[worst], "worst_speaker": worst,
                        "mean_wer": sum(r["wer"] for r in by_spk.values()) / len(by_spk),
                        "per_speaker": acc}
    return summary


def merge_and_write(new_rows: list[dict], argv: list[str]) -> dict:
    """Merge runs into results/fsdd_loso.json under a file lock (parallel processes)."""
    from jaxslu import provenance as P

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        keep = {(r["size"], r["variant"], r["holdout"], r.get("config_digest")): r
                for r in old.get("runs", [])}
        prov = {"command": P.command_line(["scripts/fsdd_loso.py"] + argv), **P.git_state(),
                "machine": P.machine(), "versions": P.versions()}
        for r in new_rows:
            keep[(r["size"], r["variant"], r["holdout"], r["config_digest"])] = {
                **r, "provenance": prov}
        rows = sorted(keep.values(), key=lambda r: (r["size"], r["variant"], r["holdout"]))
        data = {**prov, "protocol": "leave one FSDD speaker out: train on the other four (plus "
                "synthetic eSpeak NG digits where the variant has them), test on all 500 "
                "recordings of the held-out speaker; digit accuracy = intent accuracy",
                "config": "configs/fsdd_robust.py", "runs": rows, "summary": summarize(rows)}
        P.write_json(RESULTS, data)
    return data


def resummarize() -> dict:
    """Recompute the summary of results/fsdd_loso.json from its runs (a run written without a
    config digest gets the digest of the config.json in its workdir), and rewrite it."""
    from jaxslu.config import read_config
    from jaxslu.provenance import write_json

    data = json.loads(RESULTS.read_text())
    for r in data["runs"]:
        if "config_digest" not in r:
            r["config_digest"] = config_digest(read_config(ROOT / r["workdir"] / "config.json"))
    data["summary"] = summarize(data["runs"])
    write_json(RESULTS, data)
    return data


def render(data: dict) -> Path:
    from jaxslu.provenance import replace_generated_block

    label = {"default": "all augmentations", "none": "none (fsdd_slu as is)"}
    lines = ["| size | variant | steps | speakers | mean digit acc. | worst | worst speaker | "
             "mean WER | " + " | ".join(speakers_all()) + " |",
             "|---|---|---|---|---|---|---|---|" + "---|" * len(speakers_all())]
    for key, s in data["summary"].items():
        size, variant = s["size"], s["variant"]
        per = " | ".join(f"{100 * s['per_speaker'][k]:.1f}" if k in s["per_speaker"] else "–"
                         for k in speakers_all())
        lines.append(f"| {size} | {label.get(variant, variant)} | {s['steps']} | {s['speakers']} | "
                     f"{100 * s['mean_digit_accuracy']:.1f} | {100 * s['worst_digit_accuracy']:.1f}"
                     f" | {s['worst_speaker']} | {100 * s['mean_wer']:.1f} | {per} |")
    lines += ["", "Digit accuracy in % on all 500 recordings of the held-out speaker; the mean "
              "and worst are over the speakers run so far (column `speakers`), so rows with "
              "fewer than 5 are partial. Written by commit "
              f"{data.get('commit')}, command `{data.get('command')}` (the last to write the "
              "file; each run records its own)."]
    return replace_generated_block(DOC, BEGIN, END, "\n".join(lines))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="default", choices=("default", "ci", "tiny"))
    ap.add_argument("--variants", default="")
    ap.add_argument("--speakers", default="")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "fsdd_loso"))
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--render", action="store_true", help="only rewrite the docs table")
    args = ap.parse_args(argv)
    if args.render:
        print(render(resummarize()))
        return 0
    from jaxslu.cli import _enable_compilation_cache

    _enable_compilation_cache()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    variants = args.variants.split(",") if args.variants else variants_all()
    speakers = args.speakers.split(",") if args.speakers else speakers_all()
    for v in variants:
        for spk in speakers:
            row = run_one(args.size, v, spk, Path(args.runs), args.steps)
            logging.info("LOSO %s/%s held out %s: digit accuracy %.3f, WER %.3f", args.size, v,
                         spk, row["digit_accuracy"], row["wer"])
            data = merge_and_write([row], argv)
    if DOC.is_file():
        render(data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
