"""The self-learning stages behind `jaxslu selflearn simulate|mine|rephrase|isolate|rewrite`.

A log folder (`simulate --out DIR`) holds:
  sessions.jsonl.gz     the sessions (format: `simulator.py`)
  interpretations.jsonl the system's interpretation of every text it saw ({"text", "intent",
                        "slots", "conf"}), so judging a rewrite needs no model when the text
                        was seen; new texts go to the system run named in log.json
  confusions.json       the recognizer's confusion table (eSpeak NG phonemes)
  log.json              the simulator config, the system workdir and the log's statistics
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Sequence

from jaxslu.selflearn import simulator as S

log = logging.getLogger("jaxslu")


def simulate_log(out: str | Path, system: S.System | None = None, *, system_workdir: str = "",
                 cfg: S.SimulatorConfig | None = None) -> dict[str, Any]:
    """Simulate and write a log folder; returns its statistics."""
    from jaxslu.selflearn.confusions import confusion_table, save_table

    cfg = cfg or S.SimulatorConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if system is None:
        if not system_workdir:
            raise ValueError("simulate needs the system: --system WORKDIR, a run of "
                             "configs/selflearn_system.py")
        system = S.NluSystem(system_workdir)
    table = confusion_table(S.corpus_for(cfg).vocab)
    save_table(out / "confusions.json", table)
    interpreter = S.Interpreter(system)
    sessions = list(S.simulate(cfg, system, confusions=table, interpreter=interpreter,
                               progress=log.info))
    S.write_sessions(out / "sessions.jsonl.gz", sessions)
    S.write_jsonl(out / "interpretations.jsonl",
                 ({"text": t, **r} for t, r in sorted(interpreter.cache.items())))
    stats = S.log_stats(sessions)
    meta = {"config": dataclasses.asdict(cfg), "system_workdir": system_workdir,
            "stats": stats}
    from jaxslu.provenance import write_json

    write_json(out / "log.json", meta)
    return stats


def load_judge(log_dir: str | Path, system: S.System | None = None) -> S.Judge:
    """The judge of a log folder: the saved interpretations, then the system run for new texts."""
    log_dir = Path(log_dir)
    cache = {}
    f = log_dir / "interpretations.jsonl"
    if f.is_file():
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            try:
                d = json.loads(line)
                cache[d.pop("text")] = d
            except (json.JSONDecodeError, KeyError) as e:
                raise ValueError(f"{f}:{n}: not an interpretation line ({e})") from e
    if system is None:
        meta = json.loads((log_dir / "log.json").read_text()) if (log_dir / "log.json").is_file() \
            else {}
        system = _LazySystem(meta.get("system_workdir", ""))
    return S.Judge(S.Interpreter(system, cache))


class _LazySystem:
    """Loads the system run only when a text outside the saved interpretations is judged."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self._system: S.NluSystem | None = None

    def interpret(self, texts: Sequence[str]) -> list[dict]:
        if self._system is None:
            if not self.workdir or not Path(self.workdir).is_dir():
                raise FileNotFoundError(
                    f"judging {len(texts)} new texts needs the system run {self.workdir!r} "
                    "named in the log's log.json; pass it or keep it where it was")
            self._system = S.NluSystem(self.workdir)
        return self._system.interpret(texts)


def first_turns(sessions) -> list[dict]:
    """The first directed turn of each session (held-out traffic for rewriting)."""
    out = []
    for s in sessions:
        t = next((t for t in s["turns"] if t["directed"]), None)
        if t is not None:
            out.append(dict(t, user=s["user"], session=s["session"], day=s["day"]))
    return out


def mine(log_dir: str | Path, *, max_gap: float = 45.0, min_count: int = 3, max_hops: int = 2,
         min_reach: float = 0.05, max_source_success: float = 0.5, min_gain: float = 0.2,
         out: str | Path | None = None) -> dict[str, Any]:
    """Mine rewrites on the log's train days, evaluate them on its held-out days."""
    from jaxslu.selflearn import mining as M

    sessions = S.read_sessions(log_dir)
    train = [s for s in sessions if s["split"] == "train"]
    heldout = [s for s in sessions if s["split"] == "heldout"]
    chain = M.build_chain(train, max_gap=max_gap, min_count=1, state_fn=M.request_state)
    rewrites = M.mine_rewrites(chain, min_count=min_count, max_hops=max_hops,
                               min_reach=min_reach, max_source_success=max_source_success,
                               min_gain=min_gain)
    judge = load_judge(log_dir)
    turns = first_turns(heldout)
    judge.prefetch({r.target for r in rewrites})
    result = M.evaluate_rewrites(rewrites, turns, judge)
    result["states"] = len(chain.states)
    if out:
        M.write_rewrites(out, rewrites)
    result["examples"] = [dataclasses.asdict(r) for r in rewrites[:20]]
    return result


def rewrite(log_dir: str | Path, workdir: str | Path, *, variant: str | None = None,
            overrides: Sequence[str] = (), max_fit_turns: int = 20000,
            latency_queries: int = 200) -> dict[str, Any]:
    """Online rewriting on a log: (failed request, satisfied rephrase) pairs of the train days
    train the dual-encoder retriever (configs/selflearn_rewrite.py, core trainer); the train
    days' successful requests make the global and personal indexes; the rankers are fitted on
    the train days' first turns and the defect reduction measured on the held-out days' first
    turns, global then global + personal; then CPU latency."""
    from jaxslu.config import load_config
    from jaxslu.eval import evaluate_workdir
    from jaxslu.eval.run import LoadedRun
    from jaxslu.selflearn import retrieval, rewriting
    from jaxslu.train.loop import train as train_run

    root = Path(__file__).resolve().parents[2]
    workdir = Path(workdir)
    sessions = S.read_sessions(log_dir)
    train = [s for s in sessions if s["split"] == "train"]
    heldout = [s for s in sessions if s["split"] == "heldout"]
    counts = retrieval.write_pairs(retrieval.pairs_from_sessions(sessions), workdir / "pairs")
    cfg = load_config(root / "configs" / "selflearn_rewrite.py", variant,
                      [f"data.options.path={workdir / 'pairs'}"] + list(overrides))
    train_run(cfg, workdir / "retriever", progress=False)
    retrieval_report = evaluate_workdir(workdir / "retriever")
    run = LoadedRun.from_workdir(workdir / "retriever")
    judge = load_judge(log_dir)
    fit_turns, test_turns = first_turns(train), first_turns(heldout)
    report = rewriting.experiment(train, fit_turns, test_turns, run, judge,
                                  max_fit_turns=max_fit_turns, latency_queries=latency_queries)
    g, gp = report["global"], report.get("global_personal")
    lat = report.get("latency", {})
    return {
        "pairs": counts,
        "retrieval": {k: v for split in retrieval_report.values() for k, v in split.items()
                      if k.startswith("recall")},
        "defect_reduction_global": g["defect_reduction"],
        "defect_reduction_global_personal": gp["defect_reduction"] if gp else None,
        "personal_extra_reduction": report.get("personal_extra_reduction"),
        "p50_ms": lat.get("total_p50_ms"), "p99_ms": lat.get("total_p99_ms"),
        "global": g, "global_personal": gp,
        "latency": {**lat, "build_s": report["index"]["build_seconds"]},
        "index": report["index"], "fit": report["fit"]}
