"""Every committed benchmark result carries its provenance, and the docs' tables match it.

results/benchmarks/*.json must be written by the measuring program (jaxslu/provenance.py):
command, commit, machine (CPU, cores, accelerator), versions (jax, jaxlib), and timings of at
least 10 timed calls after warm-up. docs/benchmarks.md and docs/gated_block.md must equal what
scripts/render_benchmark_docs.py generates from those JSON files.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from jaxslu import provenance

ROOT = Path(__file__).resolve().parents[2]
JSONS = sorted((ROOT / "results" / "benchmarks").glob("*.json"))


def _timings(node, path=""):
    if isinstance(node, dict):
        if "median_s" in node or "median_ms" in node:
            yield path, node
        for k, v in node.items():
            yield from _timings(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _timings(v, f"{path}[{i}]")


def test_there_are_results():
    assert JSONS


@pytest.mark.parametrize("path", JSONS, ids=[p.name for p in JSONS])
def test_result_has_provenance_and_enough_timed_calls(path):
    record = json.loads(path.read_text())
    assert provenance.missing_fields(record) == [], path.name
    for where, t in _timings(record.get("results", [])):
        assert t["n"] >= provenance.MIN_TIMED_CALLS, (path.name, where)
        for k in ("min", "max", "iqr"):
            assert any(key.startswith(k) for key in t), (path.name, where, k)


def test_docs_tables_are_generated_from_the_results():
    spec = importlib.util.spec_from_file_location("render", ROOT / "scripts" /
                                                  "render_benchmark_docs.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    for path, text in render.render_all().items():
        assert path.read_text() == text, (f"{path.name} is stale: run "
                                          "python scripts/render_benchmark_docs.py")


def test_timing_stats():
    s = provenance.timing_stats([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (s["median_s"], s["min_s"], s["max_s"], s["q1_s"], s["q3_s"], s["iqr_s"]) == (
        3.0, 1.0, 5.0, 2.0, 4.0, 2.0)
    assert s["times_s"] == [4.0, 1.0, 3.0, 2.0, 5.0] and s["n"] == 5
    with pytest.raises(SystemExit, match="at least 10"):
        provenance.check_timed_calls(3)
