"""Multi-party streaming ASR: the separator-transducer-segmenter against a single-channel
transducer on the same simulated meetings.

    python scripts/multiparty_experiment.py                 # train (or resume) both, evaluate
    python scripts/multiparty_experiment.py --render        # only rewrite the docs table

1. configs/multiparty.py's "sts" and "baseline" variants trained in <root>/sts and
   <root>/baseline (a finished run is not retrained: training resumes from its workdir).
2. Both evaluated on the test meetings (jaxslu/multiparty/evaluate.py: cpWER-style WER,
   ORC-WER, turn-counting accuracy, <sot>/<eot> emission latency).
3. Streaming check: `--stream N` test meetings decoded chunk by chunk (`--chunk-frames`) by
   each model, compared token for token (and emission frame) with the offline decode.

Writes results/multiparty.json {"runs": [{"kind": "sts" | "baseline", "wer", "orc_wer",
"turn_count_accuracy", "sot_latency_ms", "eot_latency_ms", ...}], "sts_vs_baseline": {...}} and
the generated table of docs/multiparty.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DOC = ROOT / "docs" / "multiparty.md"
KINDS = ("sts", "baseline")


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _ms(x) -> str:
    return "–" if x is None else f"{x:.0f}"


def render(d: dict) -> str:
    lines = ["| model | channels | parameters | WER % (cp) | ORC-WER % | turn counting % | "
             "<sot> latency ms (mean / p90) | <eot> latency ms (mean / p90) | WER % overlapped "
             "/ not | streaming = offline |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in d["runs"]:
        by = r.get("by_overlap", {})
        ov = by.get("overlap", {}).get("wer")
        no = by.get("no_overlap", {}).get("wer")
        st = r.get("streaming") or {}
        same = (f"{st['identical']}/{st['num_meetings']}" if st else "–")
        lines.append(
            f"| {r['kind']} | {r['channels']} | {r['num_parameters']:,} | {_pct(r['wer'])} | "
            f"{_pct(r['orc_wer'])} | {_pct(r['turn_count_accuracy'])} | "
            f"{_ms(r['sot_latency_ms'])} / {_ms(r['sot_latency_p90_ms'])} | "
            f"{_ms(r['eot_latency_ms'])} / {_ms(r['eot_latency_p90_ms'])} | "
            f"{_pct(ov)} / {_pct(no)} | {same} |")
    c = d["sts_vs_baseline"]
    versus = (f"SURT against the baseline: WER {100 * c['wer_relative_change']:+.1f}% relative, "
              f"turn counting {100 * c['turn_count_accuracy_absolute_change']:+.1f} points "
              "absolute. " if c else "")
    lines += ["", f"Test: {d['runs'][0]['num_examples']} meetings mixed from FSDD test recordings "
              f"({d['overlapped_meetings']} with overlapped speech). {versus}Each "
              f"model trained {d['runs'][0]['step']} steps"
              + (f" after a warm start from its run in "
                 f"`{Path(d['runs'][0]['init_from']).parent}`"
                 if d['runs'][0].get('init_from') else "")
              + f" ({', '.join(str(round(r['train_seconds'] or 0)) + ' s' for r in d['runs'])} "
              f"of training on this machine). Command `{d.get('command')}`, "
              f"commit {d.get('commit')}."]
    return "\n".join(lines)


def write_doc(d: dict, block: str = "multiparty") -> None:
    """Rewrite the generated block named `block` (the results file's stem) of docs/multiparty.md."""
    from jaxslu.provenance import replace_generated_block

    replace_generated_block(DOC, f"<!-- BEGIN {block} (generated) -->",
                            f"<!-- END {block} (generated) -->", render(d))


def streaming_check(workdir: Path, n: int, chunk_frames: int) -> dict:
    import numpy as np

    from jaxslu.eval.run import LoadedRun
    from jaxslu.multiparty.evaluate import offline_decode, stream_decode

    run = LoadedRun.from_workdir(workdir)
    model = run.model()
    source = run.task.open_source("test")
    import jax

    identical = 0
    offline = jax.jit(lambda a, l: offline_decode(model, a, l))
    # Offline: every mixture zero-padded to the largest bucket (one compiled program; the model is
    # causal and the search stops at each row's length). Streaming: the mixture as it is.
    width = int(round(max(run.cfg.data.bucket_seconds) * run.cfg.frontend.sample_rate))
    for i in range(min(n, len(source))):
        ex = source[i]
        audio = np.asarray(ex["audio"], np.float32)[None]
        lengths = np.array([audio.shape[1]], np.int32)
        padded = np.zeros((1, max(width, audio.shape[1])), np.float32)
        padded[:, : audio.shape[1]] = audio
        tok, fr, ln = (np.asarray(x) for x in offline(padded, lengths))
        s_tok, s_fr, s_ln = stream_decode(model, audio, lengths, chunk_frames=chunk_frames)
        same = np.array_equal(ln, s_ln) and all(
            np.array_equal(tok[0, c, : ln[0, c]], s_tok[0, c, : ln[0, c]])
            and np.array_equal(fr[0, c, : ln[0, c]], s_fr[0, c, : ln[0, c]])
            for c in range(tok.shape[1]))
        identical += int(same)
    fs = run.task.frame_seconds()
    return {"num_meetings": min(n, len(source)), "identical": identical,
            "chunk_frames": chunk_frames,
            "chunk_ms": chunk_frames * run.cfg.frontend.hop_ms, "frame_seconds": fs}


def main(argv=None, devices=None) -> int:
    """`devices`: the devices training uses (default all; tests pass one)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default="runs/multiparty")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="override of configs/multiparty.py (both variants)")
    p.add_argument("--variant-prefix", default="", help="'tiny_' to check the program quickly")
    p.add_argument("--continue-from", default=None,
                   help="a --root of an earlier experiment: each model warm-starts from its run "
                        "there (train.init_from=<root>/<kind>) and trains the config's steps "
                        "again with a fresh schedule")
    p.add_argument("--kinds", default=",".join(KINDS),
                   help="models to train and evaluate, of " + ",".join(KINDS))
    p.add_argument("--stream", type=int, default=20, help="test meetings for the streaming check")
    p.add_argument("--chunk-frames", type=int, default=16)
    p.add_argument("--out", default=str(ROOT / "results" / "multiparty.json"))
    p.add_argument("--no-doc", action="store_true")
    p.add_argument("--render", action="store_true", help="only rewrite the docs table")
    args = p.parse_args(argv)
    if args.render:
        write_doc(json.loads(Path(args.out).read_text()), Path(args.out).stem)
        print(DOC)
        return 0

    from jaxslu import cli
    from jaxslu.config import load_config
    from jaxslu.eval import evaluate_workdir
    from jaxslu.train.loop import train

    rec = cli.start_experiment("scripts/multiparty_experiment.py", argv)
    kinds = [k for k in args.kinds.split(",") if k]
    if not kinds or any(k not in KINDS for k in kinds):
        p.error(f"--kinds {args.kinds!r}: give a comma-separated subset of {','.join(KINDS)}")
    runs = []
    for kind in kinds:
        variant = ({"sts": "tiny", "baseline": "tiny_baseline"}[kind] if args.variant_prefix
                   else kind)
        overrides = list(args.overrides)
        if args.continue_from:
            overrides.append(f"train.init_from={Path(args.continue_from) / kind}")
        cfg = load_config(ROOT / "configs" / "multiparty.py", variant, overrides)
        workdir = Path(args.root) / kind
        result = train(cfg, workdir, progress=False, devices=devices)
        r = evaluate_workdir(workdir, ["test"])["test"]
        row = {"kind": kind, "variant": variant, "workdir": str(workdir),
               "step": int(result.state.step), "train_seconds": json.loads(
                   (workdir / "train_time.json").read_text())["total_seconds"]
               if (workdir / "train_time.json").is_file() else None, "channels": r["channels"],
               "num_parameters": r["num_parameters"], "loss": cfg.loss,
               "loss_options": cfg.loss_options, "init_from": cfg.train.init_from}
        row.update({k: r[k] for k in ("num_examples", "wer", "orc_wer", "turn_count_accuracy",
                                      "sot_latency_ms", "sot_latency_p90_ms", "eot_latency_ms",
                                      "eot_latency_p90_ms", "num_sot_matched",
                                      "num_eot_matched", "by_overlap")})
        if args.stream:
            row["streaming"] = streaming_check(workdir, args.stream, args.chunk_frames)
        runs.append(row)
        print(kind, {k: row[k] for k in ("wer", "turn_count_accuracy", "sot_latency_ms",
                                         "eot_latency_ms")}, flush=True)
    by = {r["kind"]: r for r in runs}
    sts, base = by.get("sts"), by.get("baseline")
    compare = None
    if sts and base:
        compare = {"wer_relative_change": ((sts["wer"] - base["wer"]) / base["wer"]
                                           if base["wer"] else 0.0),
                   "turn_count_accuracy_absolute_change": (sts["turn_count_accuracy"]
                                                           - base["turn_count_accuracy"])}
    payload = {
        "experiment": "multiparty", "config": "configs/multiparty.py",
        "overrides": args.overrides, "runs": runs,
        "overlapped_meetings": runs[0]["by_overlap"].get("overlap", {}).get("num_examples", 0),
        "sts_vs_baseline": compare}
    out = rec.write(args.out, payload)
    if not args.no_doc:
        write_doc(json.loads(out.read_text()), out.stem)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
