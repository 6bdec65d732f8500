"""Evaluation: evaluators looked up by name, reports, per-example records.

    jaxslu eval --workdir runs/fsdd [--split test] [--set eval.decode=beam]

An evaluator is registered with `@EVALUATORS.register(name)` as a factory
`(run: LoadedRun) -> evaluator` whose `evaluate(split) -> (report, records)` returns the report
dict (metrics, breakdowns) and one record per example (id, speaker and its metadata, reference,
hypothesis, labels). The config's `eval.evaluator` names it ("" -> the task's default).
`evaluate_workdir` writes `report_<split>.json` and `predictions_<split>.jsonl` (process 0 of a
multi-host run, from every process's rows); nothing here knows a task.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import jax

from jaxslu.eval.run import LoadedRun
from jaxslu.registry import EVALUATORS

log = logging.getLogger("jaxslu")

__all__ = ["LoadedRun", "evaluate_workdir", "get_evaluator", "print_report", "write_json",
           "write_jsonl"]


def get_evaluator(run: LoadedRun):
    name = run.cfg.eval.evaluator or run.task.default_evaluator
    if not name:
        raise ValueError(f"task {run.cfg.task!r} has no default evaluator; set eval.evaluator to "
                         f"one of {EVALUATORS.names()}")
    return EVALUATORS.get(name).factory(run)


def evaluate_workdir(workdir: str | Path, splits: Sequence[str] | None = None,
                     overrides: Sequence[str] = (), output: str | Path | None = None,
                     run: LoadedRun | None = None) -> dict[str, dict]:
    """Evaluate the run in `workdir` on `splits` (default: the config's eval splits) and write one
    report per split (and the per-example records). Returns {split: report}."""
    run = run or LoadedRun.from_workdir(workdir, overrides)
    evaluator = get_evaluator(run)
    splits = list(splits or run.cfg.data.eval_splits)
    reports = {}
    for split in splits:
        t0 = time.perf_counter()
        report, records = evaluator.evaluate(split)
        report = {"split": split, "experiment": run.cfg.name, "step": run.step,
                  "task": run.cfg.task, "dataset": run.cfg.data.dataset,
                  "num_parameters": run.num_parameters, **report}
        report["seconds"] = round(time.perf_counter() - t0, 2)
        path = Path(output) if (output and len(splits) == 1) else run.workdir / f"report_{split}.json"
        if jax.process_index() == 0:
            write_json(path, report)
            if run.cfg.eval.write_predictions:
                write_jsonl(run.workdir / f"predictions_{split}.jsonl", records)
        report["path"] = str(path)
        reports[split] = report
    return reports


def write_json(path: str | Path, obj: Any) -> None:
    """Atomic JSON write (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def write_jsonl(path: str | Path, records: Sequence[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    tmp.replace(path)


def print_report(report: dict) -> None:
    """A compact human-readable summary on stdout (the JSON file holds everything)."""
    keys = ("wer", "cer", "domain_accuracy", "intent_accuracy", "slu_f1", "span_f1",
            "in_scope_accuracy", "oos_recall", "oos_f1")

    def fmt(m):
        parts = [f"n={m.get('num_examples', 0)}"]
        for k in keys:
            if isinstance(m.get(k), (int, float)):
                parts.append(f"{k}={100 * m[k]:.2f}%")
        return " ".join(parts)

    print(f"[{report['experiment']} / {report['split']} @ step {report['step']}] {fmt(report)}")
    for key in ("per_speaker", "per_accent"):
        for g, m in report.get(key, {}).items():
            print(f"    {key[4:]} {g:>16}: {fmt(m)}")
    if "path" in report:
        print(f"    report: {report['path']}")
