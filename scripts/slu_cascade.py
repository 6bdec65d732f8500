"""Cascade (ASR transcript -> text NLU) against end-to-end SLU heads on the same test audio, with
the text NLU on the reference transcripts as the ceiling (`jaxslu.slu.cascade`):

    python scripts/slu_cascade.py --e2e runs/slurp --nlu runs/nlu [--split test] [--limit N]
        [--out results/slu_cascade_vs_e2e.json] [--records FILE.jsonl] [--decode]

Writes {"runs": [{"kind": "e2e"|"cascade"|"gold_text", "intent_accuracy", "slu_f1", "wer", ...,
"models": {role: {config_name, step}}}], "e2e_workdir", "nlu_workdir", "split",
"num_utterances", "unknown_labels", ..., "command", "commit", "machine", "versions"}.
The E2E run's predictions_<split>.jsonl is used when it is current (else the audio is decoded);
--decode always decodes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_OUT = ROOT / "results" / "slu_cascade_vs_e2e.json"


def _provenance(argv) -> dict:
    from jaxslu import provenance as P

    return {"command": P.command_line(["scripts/slu_cascade.py"] + list(argv)),
            **P.git_state(), "machine": P.machine(), "versions": P.versions()}


def _fmt(v) -> str:
    return "-" if v is None else f"{100 * v:6.2f}"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--e2e", required=True, metavar="WORKDIR",
                    help="end-to-end SLU run (transducer_slu, e.g. configs/spoken_slurp.py)")
    ap.add_argument("--nlu", required=True, metavar="WORKDIR",
                    help="text NLU run (nlu, e.g. configs/slurp_nlu.py)")
    ap.add_argument("--split", default="test", help="split of the E2E run's data")
    ap.add_argument("--limit", type=int, default=None, help="first N utterances (by id)")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--records", default=None, metavar="FILE.jsonl",
                    help="also write the per-utterance predictions of the three runs")
    ap.add_argument("--decode", action="store_true",
                    help="decode the audio even where predictions_<split>.jsonl is current")
    args = ap.parse_args(argv)

    from jaxslu.cli import _enable_compilation_cache

    _enable_compilation_cache()
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("absl", "orbax", "jax._src", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from jaxslu.provenance import write_json
    from jaxslu.slu.cascade import CascadeError, cascade_vs_e2e

    t0 = time.perf_counter()
    try:
        result = cascade_vs_e2e(args.e2e, args.nlu, split=args.split, limit=args.limit,
                                reuse_predictions=not args.decode,
                                return_records=bool(args.records))
    except CascadeError as e:
        print(f"slu_cascade: error: {e}", file=sys.stderr)
        return 2
    records = result.pop("records", None)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    out = {**result, **_provenance(argv)}
    path = write_json(args.out, out)
    if records is not None:
        Path(args.records).parent.mkdir(parents=True, exist_ok=True)
        with open(args.records, "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
    print(f"{result['split']}: {result['num_utterances']} utterances "
          f"({result['num_sentences']} sentences); e2e {result['e2e']['config_name']} @ "
          f"{result['e2e']['step']}, nlu {result['nlu']['config_name']} @ {result['nlu']['step']}")
    print(f"{'kind':>10} {'intent%':>8} {'SLU-F1%':>8} {'WER%':>8}")
    for r in result["runs"]:
        print(f"{r['kind']:>10} {_fmt(r['intent_accuracy']):>8} {_fmt(r['slu_f1']):>8} "
              f"{_fmt(r['wer']):>8}")
    unk = result["unknown_labels"]["nlu"]
    print(f"references unknown to the NLU run: {unk['intent_references']} intents, "
          f"{unk['slot_references']} slots; seen in training: {result['seen_in_training']}")
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
