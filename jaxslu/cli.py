"""The `jaxslu` command line.

    jaxslu demo                                   train + evaluate the FSDD SLU transducer
    jaxslu train --config configs/fsdd_slu.py --workdir runs/fsdd [--set optim.learning_rate=2e-3]
    jaxslu eval --workdir runs/fsdd [--split test]
    jaxslu transcribe --workdir runs/fsdd a.wav b.flac
    jaxslu nlu --workdir runs/nlu [FILE]          label text, one utterance per line
    jaxslu synth-slurp --out DIR                  render the spoken SLURP corpus
    jaxslu synth-nlu [--out DIR]                  render the spoken SLU corpus (unseen speakers)
    jaxslu fisher --workdir W                     diagonal Fisher of a run (for the ewc term)
    jaxslu simulate-log --out FILE                the simulated assistant interaction log
    jaxslu selflearn simulate|mine|rephrase|isolate|rewrite ...   self-learning from interactions
    jaxslu cohorts --workdir runs/slurp --split test --method geo|embedding   fairness cohorts
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger("jaxslu")

REPO_ROOT = Path(__file__).resolve().parent.parent


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    log.setLevel(logging.INFO)
    for noisy in ("absl", "orbax", "jax._src", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", required=required, help="experiment config file (configs/*.py)")
    p.add_argument("--variant", default=None, help="config variant passed to get_config(), e.g. tiny")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set model.encoder.num_layers=4 (repeatable)")


def cmd_train(args) -> int:
    from jaxslu.config import load_config
    from jaxslu.train.loop import train
    cfg = load_config(args.config, args.variant, args.overrides)
    result = train(cfg, args.workdir, progress=not args.no_progress)
    print(json.dumps({"workdir": str(args.workdir), "steps": int(result.state.step),
                      "seconds": round(result.seconds, 1),
                      "skipped_updates": result.skipped_updates,
                      "skipped_examples": result.skipped_examples,
                      **{k: round(v, 5) for k, v in result.last_metrics.items()}}))
    if args.eval:
        return cmd_eval(argparse.Namespace(workdir=args.workdir, split=None, overrides=[],
                                           output=None))
    return 0


def cmd_eval(args) -> int:
    from jaxslu.eval import evaluate_workdir, print_report
    reports = evaluate_workdir(args.workdir, splits=[args.split] if args.split else None,
                               overrides=args.overrides, output=args.output)
    for split, report in reports.items():
        print_report(report)
    return 0


def cmd_transcribe(args) -> int:
    from jaxslu.slu.evaluate import Transcriber
    transcriber = Transcriber.from_workdir(args.workdir)
    failed = 0
    for line in transcriber.transcribe_files(args.files):
        failed += "error" in line
        print(json.dumps(line), flush=True)
    if failed:
        print(f"jaxslu transcribe: {failed} of {len(args.files)} file(s) could not be transcribed "
              "(see their \"error\" lines)", file=sys.stderr)
        return 1
    return 0


def cmd_discover(args) -> int:
    """Discover new intents and domains in a TSV (jaxslu/discovery/pipeline.py)."""
    from jaxslu import paths
    from jaxslu.config import load_config
    from jaxslu.discovery.pipeline import run_discovery
    from jaxslu.provenance import Recorder

    rec = Recorder(["jaxslu", *(args.argv or [])] if args.argv else None)
    config = args.config or str(paths.REPO_ROOT / "configs" / "discovery.py")
    cfg = load_config(config, args.variant, args.overrides)
    report = run_discovery(cfg, train_path=args.train, test_path=args.test, dev_path=args.dev,
                           known_ratio=args.known_ratio, labeled_ratio=args.labeled_ratio,
                           seed=args.seed, out=args.out)
    report["config"] = config
    report["variant"] = args.variant or "default"
    report["overrides"] = list(args.overrides)
    path = rec.write(Path(args.out) / "report.json", report)
    summary = {k: report.get(k) for k in ("k_true", "k_found", "nmi", "ari", "acc")}
    summary["open"] = report["open"]
    summary["seconds"] = report["timings"]["total_s"]
    print(json.dumps(summary))
    print(path)
    return 0


def cmd_nlu(args) -> int:
    """Label utterances (one per line of FILE or stdin) with a trained NLU run: JSON lines."""
    import jax

    from jaxslu.eval.run import LoadedRun
    from jaxslu.nlu.evaluate import NluPredictor, load_threshold, read_lines

    run = LoadedRun.from_workdir(args.workdir, devices=jax.devices()[:1])
    if run.cfg.task != "nlu":
        raise ValueError(f"{args.workdir} holds a {run.cfg.task!r} run, not an nlu one")
    predictor = NluPredictor(run, load_threshold(args.workdir))
    context = None
    if args.context:
        try:
            context = json.loads(args.context)
        except json.JSONDecodeError as e:
            raise ValueError(f"--context {args.context!r} is not JSON ({e}); give an object such "
                             "as '{\"device_states\": [\"oven_on\"], \"hour\": 19}'") from e
        predictor.predict_texts(["check"], context)  # fail before reading any input
    failed = 0
    pending: list[tuple[int, str]] = []

    def flush():
        for (_, _), row in zip(pending, predictor.predict_texts([t for _, t in pending],
                                                                 context)):
            print(json.dumps(row), flush=True)
        pending.clear()

    for n, text, error in read_lines(args.file):
        if error is not None:
            flush()
            failed += 1
            print(json.dumps({"line": n, "error": error}), flush=True)
            continue
        pending.append((n, text))
        if len(pending) >= run.cfg.data.eval_batch_size:
            flush()
    flush()
    if failed:
        print(f"jaxslu nlu: {failed} line(s) could not be labelled (see their \"error\" lines)",
              file=sys.stderr)
        return 1
    return 0


def cmd_demo(args) -> int:
    """Train the end-to-end SLU transducer on bundled FSDD, evaluate, print and write the report."""
    from jaxslu.config import load_config
    from jaxslu.eval import evaluate_workdir, print_report
    from jaxslu.train.loop import train
    config = REPO_ROOT / "configs" / "fsdd_slu.py"
    cfg = load_config(config, args.variant, args.overrides)
    workdir = Path(args.workdir)
    t0 = time.perf_counter()
    result = train(cfg, workdir, progress=not args.no_progress)
    train_s = time.perf_counter() - t0
    reports = evaluate_workdir(workdir)
    total_s = time.perf_counter() - t0
    for report in reports.values():
        print_report(report)
    summary = {"train_seconds": round(train_s, 1), "total_seconds": round(total_s, 1),
               "steps": int(result.state.step),
               "reports": {k: str(workdir / f"report_{k}.json") for k in reports}}
    (workdir / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0


def cmd_synth_slurp(args) -> int:
    from jaxslu.audio.corpus import build_spoken_slurp
    manifest = build_spoken_slurp(args.out, num_speakers=args.speakers,
                                  utterances=args.utterances, seed=args.seed,
                                  speakers_per_sentence=args.speakers_per_sentence)
    print(manifest)
    return 0


def cmd_synth_nlu(args) -> int:
    """Render the spoken SLU corpus (jaxslu.audio.spoken_nlu): into --out, or, without it, into
    the cache folder the `spoken_nlu` dataset (configs/spoken_nlu.py) reads."""
    from jaxslu.audio.spoken_nlu import build_spoken_nlu, spoken_nlu_manifest
    options = dict(num_train_speakers=args.train_speakers, num_test_speakers=args.test_speakers,
                   speakers_per_sentence=args.speakers_per_sentence,
                   test_speakers_per_sentence=args.test_speakers_per_sentence, seed=args.seed,
                   limit_per_split=args.limit_per_split)
    if args.out:
        manifest = build_spoken_nlu(args.out, **options)
    else:
        manifest = spoken_nlu_manifest(cache_dir=args.cache_dir, **options)
    print(manifest)
    return 0


def cmd_fisher(args) -> int:
    """The empirical diagonal Fisher of a trained run (the `ewc` term's weights)."""
    from jaxslu.fairness.ewc import fisher_diagonal

    path = fisher_diagonal(args.workdir, split=args.split, max_examples=args.examples,
                           out=args.out)
    print(path)
    return 0


def cmd_simulate_log(args) -> int:
    from jaxslu.personalization import simulator as sim
    events = sim.simulate(sim.SimulatorConfig(num_users=args.users, seed=args.seed))
    path = sim.write_log(args.out, events)
    print(json.dumps({"path": str(path), "events": len(events),
                      "users": len({e["user"] for e in events}),
                      "labels": len(sim.label_set(events)),
                      "ambiguous": round(sum(e["ambiguous"] for e in events) / len(events), 4)}))
    return 0


def _selflearn_config(name: str, args):
    from jaxslu.config import load_config

    path = REPO_ROOT / "configs" / f"selflearn_{name}.py"
    overrides = [f"data.options.path={args.log}"] + list(args.overrides)
    return load_config(path, args.variant, overrides)


def cmd_selflearn(args) -> int:
    from jaxslu.selflearn import pipeline

    if args.stage == "simulate":
        from jaxslu.selflearn.simulator import SimulatorConfig

        cfg = SimulatorConfig(num_users=args.users, sessions_per_user=args.sessions_per_user,
                              seed=args.seed)
        stats = pipeline.simulate_log(args.out, system_workdir=args.system, cfg=cfg)
        print(json.dumps({"out": str(args.out), **stats}))
        return 0
    if args.stage == "mine":
        result = pipeline.mine(args.log, out=args.out, min_count=args.min_count)
        result.pop("examples", None)
        print(json.dumps(result))
        return 0
    if args.stage in ("rephrase", "isolate"):
        from jaxslu.eval import evaluate_workdir
        from jaxslu.train.loop import train

        cfg = _selflearn_config("rephrase" if args.stage == "rephrase" else "isolation", args)
        train(cfg, args.workdir, progress=False)
        reports = evaluate_workdir(args.workdir)
        keys = (("precision", "recall", "f1", "span_f1", "exact_match") if args.stage ==
                "rephrase" else ("accuracy", "macro_f1", "per_class_f1"))
        print(json.dumps({split: {k: r[k] for k in keys} for split, r in reports.items()}))
        return 0
    if args.stage == "rewrite":
        result = pipeline.rewrite(args.log, args.workdir, variant=args.variant,
                                  overrides=args.overrides)
        print(json.dumps(result))
        return 0
    raise ValueError(f"unknown selflearn stage {args.stage!r}")


def cmd_cohorts(args) -> int:
    """Cohorts of speakers ranked by WER from a run's per-example records (jaxslu/fairness)."""
    import shlex

    from jaxslu.fairness.cohorts import cohorts_report, format_table
    from jaxslu.provenance import git_state

    extra = None
    if args.out:  # a results file says what wrote it
        extra = {"command": shlex.join(["jaxslu", *args.argv]), **git_state()}
    entry = cohorts_report(args.workdir, args.split, args.method, min_size=args.min_size,
                           k=args.k, embeddings=args.embeddings, max_depth=args.max_depth,
                           seed=args.seed, n_boot=args.bootstrap, out=args.out,
                           overrides=args.overrides, extra=extra)
    print(format_table(entry))
    print(entry["files"].get("out_json", entry["files"]["json"]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxslu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train (or resume) an experiment")
    _add_config_args(p)
    p.add_argument("--workdir", required=True)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--eval", action="store_true", help="evaluate when training ends")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a trained workdir; writes report_<split>.json")
    p.add_argument("--workdir", required=True)
    p.add_argument("--split", default=None, help="split to evaluate (default: data.eval_splits)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override eval/data settings, e.g. --set eval.decode=beam")
    p.add_argument("--output", default=None, help="report path (default workdir/report_<split>.json)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("transcribe", help="transcript, intent and slots for audio files (JSON lines)")
    p.add_argument("--workdir", required=True)
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_transcribe)

    p = sub.add_parser("nlu", help="domain, intent, slots and in-scope flag for text (JSON lines)")
    p.add_argument("--workdir", required=True)
    p.add_argument("file", nargs="?", default=None, help="one utterance per line (default stdin)")
    p.add_argument("--context", default=None,
                   help="context record (JSON) for every line, for a run trained with "
                        "task_options.context: e.g. '{\"device_states\": [\"oven_on\"], "
                        "\"device_type\": \"screen\", \"hour\": 19}'")
    p.set_defaults(func=cmd_nlu)

    p = sub.add_parser("discover", help="find the new intents (and domains) in text<TAB>label "
                       "TSV files and how many there are (ADVIN)")
    p.add_argument("--train", required=True, help="training TSV (text<TAB>label, header line)")
    p.add_argument("--test", required=True, help="test TSV, scored as a whole")
    p.add_argument("--dev", default=None, help="dev TSV (its known-intent rows calibrate)")
    p.add_argument("--known-ratio", type=float, default=0.75)
    p.add_argument("--labeled-ratio", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="folder for predictions.jsonl and report.json")
    _add_config_args(p, required=False)
    p.set_defaults(func=cmd_discover)

    p = sub.add_parser("demo", help="train and evaluate the FSDD spoken-digit SLU transducer")
    p.add_argument("--workdir", default="runs/fsdd_demo")
    p.add_argument("--variant", default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("synth-slurp", help="render the spoken SLURP corpus with eSpeak NG voices")
    p.add_argument("--out", required=True)
    p.add_argument("--speakers", type=int, default=16)
    p.add_argument("--utterances", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speakers-per-sentence", type=int, default=1)
    p.set_defaults(func=cmd_synth_slurp)

    p = sub.add_parser("synth-nlu", help="render the spoken SLU corpus (HWU64 train + SLURP "
                       "devel, test speakers unseen in training) with eSpeak NG voices")
    p.add_argument("--out", default=None, help="folder to build into (default: the cache folder "
                   "the spoken_nlu dataset reads, under --cache-dir)")
    p.add_argument("--cache-dir", default="", help="without --out: the cache root (default "
                   "$JAXSLU_CACHE or ~/.cache/jaxslu)")
    p.add_argument("--train-speakers", type=int, default=48)
    p.add_argument("--test-speakers", type=int, default=16)
    p.add_argument("--speakers-per-sentence", type=int, default=2)
    p.add_argument("--test-speakers-per-sentence", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit-per-split", type=int, default=None,
                   help="only the first N sentences of each split (pilots)")
    p.set_defaults(func=cmd_synth_nlu)

    p = sub.add_parser("fisher", help="the diagonal Fisher of a trained run on its training "
                       "data (for the ewc loss term); writes WORKDIR/fisher.npz")
    p.add_argument("--workdir", required=True)
    p.add_argument("--split", default="", help="default: the run's training split")
    p.add_argument("--examples", type=int, default=1000, help="examples averaged (first N)")
    p.add_argument("--out", default=None, help="default: WORKDIR/fisher.npz")
    p.set_defaults(func=cmd_fisher)

    p = sub.add_parser("simulate-log", help="write the simulated assistant interaction log "
                       "(JSONL) that the personalization configs read")
    p.add_argument("--out", required=True)
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_simulate_log)

    p = sub.add_parser("selflearn", help="self-learning from interactions: simulate a log, mine "
                       "rewrites, detect rephrases, isolate failures, rewrite online")
    stages = p.add_subparsers(dest="stage", required=True)
    q = stages.add_parser("simulate", help="write a simulated session log folder")
    q.add_argument("--system", required=True,
                   help="the assistant's NLU run (configs/selflearn_system.py workdir)")
    q.add_argument("--out", required=True)
    q.add_argument("--users", type=int, default=3000)
    q.add_argument("--sessions-per-user", type=float, default=36.0)
    q.add_argument("--seed", type=int, default=0)
    q = stages.add_parser("mine", help="mine rewrites (absorbing Markov chain) on the log's "
                          "train days, win/loss on its held-out days")
    q.add_argument("--log", required=True)
    q.add_argument("--out", default=None, help="write the rewrites (JSONL) here")
    q.add_argument("--min-count", type=int, default=3)
    for stage, what in (("rephrase", "rephrase detection"), ("isolate", "failure isolation"),
                        ("rewrite", "the online rewriter (retriever, index, ranker)")):
        q = stages.add_parser(stage, help=f"train and evaluate {what} on a log")
        q.add_argument("--log", required=True)
        q.add_argument("--workdir", required=True)
        q.add_argument("--variant", default=None, help="config variant, e.g. tiny")
        q.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="override a config field (repeatable)")
    p.set_defaults(func=cmd_selflearn)

    p = sub.add_parser("cohorts", help="fairness cohorts ranked by WER from predictions_<split>"
                       ".jsonl: geographic splits or k-means over speaker embeddings")
    p.add_argument("--workdir", required=True, help="an evaluated run (predictions_<split>.jsonl)")
    p.add_argument("--split", default="test")
    p.add_argument("--method", required=True, choices=("geo", "embedding"))
    p.add_argument("--min-size", type=int, default=None,
                   help="geo: fewest utterances per cohort (default 10%% of the split's)")
    p.add_argument("--max-depth", type=int, default=3, help="geo: most nested splits")
    p.add_argument("--k", type=int, default=None,
                   help="embedding: number of clusters (default min(4, speakers))")
    p.add_argument("--embeddings", default=None, metavar="FILE.npz",
                   help="embedding: speaker vectors (speaker -> vector) instead of the run's "
                   "pooled encoder states")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="also merge the result into DIR/cohorts.json (e.g. results/fairness)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override data settings when loading the run's encoder")
    p.set_defaults(func=cmd_cohorts)
    return parser


def start_experiment(script: str, argv=None):
    """Common start of an experiment script (scripts/*_experiment.py): INFO logging, the
    compilation cache, and a provenance Recorder of the command line (`argv` None: sys.argv)."""
    import logging
    import sys

    from jaxslu.provenance import Recorder

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    _enable_compilation_cache()
    return Recorder(sys.argv if argv is None else [script, *argv])


def _enable_compilation_cache() -> None:
    """Reuse compiled XLA programs across runs (train, eval, transcribe compile the same ones);
    set JAXSLU_COMPILATION_CACHE=0 to disable, or to a folder to choose where."""
    where = os.environ.get("JAXSLU_COMPILATION_CACHE", "")
    if where == "0":
        return
    import jax

    from jaxslu.paths import cache_dir
    jax.config.update("jax_compilation_cache_dir", where or str(cache_dir() / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    _enable_compilation_cache()
    _setup_logging(args.verbose or args.command in ("train", "demo", "selflearn"))
    from jaxslu.config import ConfigError
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, KeyError, ValueError) as e:
        # Errors about the user's input: one clear line, no traceback (use -v for details).
        if args.verbose or os.environ.get("JAXSLU_TRACEBACK"):
            raise
        print(f"jaxslu {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
