"""Regenerate the benchmark tables in docs/ from the results JSON that measured them.

    python scripts/render_benchmark_docs.py           # rewrite the generated blocks in place
    python scripts/render_benchmark_docs.py --check   # exit 1 if a doc is stale (CI)

A generated block sits between `<!-- BEGIN GENERATED: <name> -->` and `<!-- END GENERATED: <name> -->`
in docs/benchmarks.md and docs/gated_block.md; everything between the markers is replaced, the
prose around them is left alone. Blocks:

    rnnt_loss    one section per results/benchmarks/rnnt_loss_*.json (time, speedup, memory,
                 page faults, accuracy, and the provenance: command, commit, machine, versions)
    gated_block  one section per results/benchmarks/gated_block_*.json
    triton_resources  the offline sm_90 compile of the Pallas GPU kernels (shared memory,
                 registers, spills) from results/benchmarks/triton_resources_*.json
    device_check one row per results/benchmarks/device_check_*.json
    subsampling_conv  the encoder's conv subsampling, XLA convolution vs 3x3 patches, from
                 results/benchmarks/subsampling_conv_*.json

Every figure in those tables is read from a JSON written by the program that measured it, so a
number in the docs can always be traced to a run. Timings are shown as median (IQR) over the
recorded timed calls; a speedup as the ratio of medians with, in brackets, the ratio of the
quartiles (peer's q1 / ours q3 .. peer's q3 / ours q1).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "benchmarks"
DOCS = {"rnnt_loss": ROOT / "docs" / "benchmarks.md", "device_check": ROOT / "docs" / "benchmarks.md",
        "triton_resources": ROOT / "docs" / "benchmarks.md",
        "gated_block": ROOT / "docs" / "gated_block.md",
        "subsampling_conv": ROOT / "docs" / "benchmarks.md"}

RNNT_IMPLS = [("xla", "XLA"), ("xla_donated", "XLA, logits donated"),
              ("fused", "XLA fused (incl. joint)"), ("pallas", "Pallas"),
              ("fused_pallas", "Pallas fused (incl. joint)"), ("torchaudio", "torchaudio"),
              ("warp_rnnt", "warp-rnnt"), ("k2", "k2")]
PEERS = ("torchaudio", "warp_rnnt", "k2")


def _load(pattern: str) -> list[tuple[Path, dict]]:
    return [(p, json.loads(p.read_text())) for p in sorted(RESULTS.glob(pattern))]


def _secs(x: float) -> str:
    if x >= 1:
        return f"{x:.2f} s"
    if x >= 1e-3:
        return f"{x * 1e3:.1f} ms"
    return f"{x * 1e6:.0f} us"


def _cell_time(r: dict | None) -> str:
    if not isinstance(r, dict):
        return "-"
    if "error" in r:
        return "failed (see JSON)"
    if "median_s" not in r:
        return "-"
    return f"{_secs(r['median_s'])} ({_secs(r['iqr_s'])})"


def _ratio(peer: dict | None, ours: dict | None) -> str:
    if not (isinstance(peer, dict) and isinstance(ours, dict)
            and "median_s" in peer and "median_s" in ours):
        return "-"
    med = peer["median_s"] / ours["median_s"]
    lo, hi = peer["q1_s"] / ours["q3_s"], peer["q3_s"] / ours["q1_s"]
    return f"{med:.1f}x [{lo:.1f}-{hi:.1f}]"


def _shape(r: dict) -> str:
    s = r["shape"]
    return f"{s['B']}, {s['T']}, {s['U']}, {s['V']}"


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def _e(x) -> str:
    return "-" if x is None else f"{x:.1e}"


def provenance_lines(path: Path, d: dict) -> list[str]:
    m = d.get("machine", {})
    acc = m.get("accelerator", {})
    devices = acc.get("nvidia_smi") and ", ".join(g["name"] for g in acc["nvidia_smi"])
    devices = devices or ", ".join(sorted(set(acc.get("jax_devices", [])))) or "-"
    dirty = d.get("commit_dirty")
    commit = str(d.get("commit", "?"))[:10]
    if dirty:
        commit += f" + uncommitted changes to {len(dirty)} tracked files (listed in the JSON)"
    v = d.get("versions", {})
    vers = ", ".join(f"{k} {v[k]}" for k in ("jax", "jaxlib", "jax-cuda13-plugin",
                                              "jax-cuda12-plugin", "torch", "torchaudio",
                                              "warp-rnnt", "k2") if k in v)
    load = ""
    if m.get("load_avg_before") and m.get("load_avg_after"):
        load = (f"; load average {m['load_avg_before'][0]:.1f} before, "
                f"{m['load_avg_after'][0]:.1f} after (1-minute)")
    return [f"`{path.relative_to(ROOT)}`: `{d.get('command', '?')}`",
            "",
            f"- commit {commit}; {d.get('started_utc', '?')}",
            f"- machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, accelerator "
            f"{acc.get('jax_backend', '?')} ({devices}); THP `{m.get('transparent_hugepage', '?')}`, "
            f"GLIBC_TUNABLES `{m.get('glibc_tunables') or '-'}`{load}",
            f"- versions: {vers}",
            ""]


def render_rnnt(entries) -> list[str]:
    out: list[str] = []
    for path, d in entries:
        results = d["results"]
        impls = [(k, name) for k, name in RNNT_IMPLS if any(k in r for r in results)]
        peers = [k for k in PEERS if any(k in r for r in results)]
        ours = [k for k in ("xla", "xla_donated", "pallas") if any(k in r for r in results)]
        out += [f"### {path.stem}", ""] + provenance_lines(path, d)
        out += [f"Loss + gradient time, median (IQR) of {d.get('repeats', '?')} timed calls after "
                f"{d.get('warmup', 1)} warm-up:", ""]
        out.append("| shape (B, T, U, V) | logits | " + " | ".join(n for _, n in impls) + " |")
        out.append("|---" * (2 + len(impls)) + "|")
        for r in results:
            out.append(f"| {_shape(r)} | {_mib(r['logits_bytes'])} | "
                       + " | ".join(_cell_time(r.get(k)) for k, _ in impls) + " |")
        out.append("")
        if peers:
            cols = [(o, p) for p in peers for o in ours]
            out += ["Speedup (ratio of medians [ratio of quartiles]):", "",
                    "| shape | " + " | ".join(f"{dict(RNNT_IMPLS)[o]} vs {dict(RNNT_IMPLS)[p]}"
                                             for o, p in cols) + " |",
                    "|---" * (1 + len(cols)) + "|"]
            for r in results:
                out.append(f"| {_shape(r)} | " + " | ".join(_ratio(r.get(p), r.get(o))
                                                            for o, p in cols) + " |")
            out.append("")
        mem_cols = [k for k, _ in impls if any(isinstance(r.get(k), dict)
                                               and r[k].get("peak_over_logits") for r in results)]
        out += ["Peak memory / logits bytes, and minor page faults per call:", "",
                "| shape | " + " | ".join(f"{dict(RNNT_IMPLS)[k]} peak" for k in mem_cols)
                + " | fused peak / XLA peak | faults / call: XLA | XLA donated |",
                "|---" * (4 + len(mem_cols)) + "|"]
        for r in results:
            cells = []
            for k in mem_cols:
                v = r.get(k, {}).get("peak_over_logits") if isinstance(r.get(k), dict) else None
                cells.append("-" if v is None else f"{v:.2f}")
            fused = r.get("fused", {}).get("peak_over_xla_unfused")
            faults = [r.get(k, {}).get("minor_faults_per_call") for k in ("xla", "xla_donated")]
            out.append(f"| {_shape(r)} | " + " | ".join(cells)
                       + f" | {'-' if fused is None else f'{fused:.1%}'} | "
                       + " | ".join("-" if f is None else f"{f:,.0f}" for f in faults) + " |")
        out.append("")
        if any("accuracy_vs_float64_row0" in r for r in results):
            out += ["Accuracy (fp32; sequence 0 against float64):", "",
                    "| shape | loss rel. err XLA vs torchaudio | grad max abs err XLA vs "
                    "torchaudio | grad err vs float64: XLA | torchaudio |",
                    "|---|---|---|---|---|"]
            for r in results:
                a = r.get("accuracy_vs_float64_row0", {})
                ag = r.get("agreement_xla_vs_torchaudio", {})
                out.append(f"| {_shape(r)} | {_e(ag.get('loss_max_rel_err'))} | "
                           f"{_e(ag.get('grad_max_abs_err'))} | {_e(a.get('xla_grad_max_abs_err'))}"
                           f" | {_e(a.get('torchaudio_grad_max_abs_err'))} |")
            out.append("")
        out += _rnnt_targets(results)
        disp = [r.get("dispatch") for r in results if r.get("dispatch")]
        if disp:
            out += ["implementation=None chose: " + "; ".join(
                f"{_shape(r)}: {', '.join(r['dispatch']['rnnt_loss'])}"
                for r in results if r.get("dispatch")), ""]
    if not entries:
        out = ["No results/benchmarks/rnnt_loss_*.json yet.", ""]
    return out


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _rnnt_targets(results) -> list[str]:
    """The RNN-T loss targets, checked against this run's numbers (only those it measured)."""
    lines = []
    for r in results:
        s, label = r["shape"], _shape(r)
        if (s["B"], s["T"], s["U"], s["V"]) == (16, 200, 50, 1000):
            for ours in ("xla", "xla_donated", "pallas"):
                peer, mine = r.get("torchaudio"), r.get(ours)
                if isinstance(peer, dict) and isinstance(mine, dict) and "median_s" in mine \
                        and "median_s" in peer:
                    x = peer["median_s"] / mine["median_s"]
                    lines.append(f"speed at ({label}), {dict(RNNT_IMPLS)[ours]} >= 30x torchaudio: "
                                 f"{x:.1f}x, {_met(x >= 30)}")
        peak = r.get("xla", {}).get("peak_over_logits")
        if peak is not None:
            lines.append(f"memory at ({label}), XLA peak <= 2.2x logits: {peak:.2f}x, "
                         f"{_met(peak <= 2.2)}")
        fused = r.get("fused", {}).get("peak_over_xla_unfused")
        if fused is not None and s["V"] >= 4096:
            lines.append(f"fused at ({label}), peak <= 15% of unfused: {fused:.1%}, "
                         f"{_met(fused <= 0.15)}")
        ag = r.get("agreement_xla_vs_torchaudio", {}).get("loss_max_rel_err")
        if ag is not None:
            lines.append(f"values at ({label}) within 1e-4 relative of torchaudio: {ag:.1e}, "
                         f"{_met(ag <= 1e-4)}")
    return (["Targets, from this run:", ""] + [f"- {x}" for x in lines] + [""]) if lines else []


def render_gated(entries) -> list[str]:
    out: list[str] = []
    for path, d in entries:
        impls = [k for k in d.get("implementations", ["dense", "xla"]) if k != "dense"]
        s = d["shape"]
        out += [f"### {path.stem}", ""] + provenance_lines(path, d)
        out += [f"B={s['B']}, T={s['T']}, D={s['D']}, H={s['H']}, {s['dtype']}, forward, "
                f"{s['gate_pattern']} gate; {d['timing']['warmup']} warm-up calls, then "
                f"{d['timing']['reps']} calls of each, {d['timing']['order']}; median (IQR) ms:",
                ""]
        head = ["gate density", "active / capacity rows", "dense"]
        for k in impls:
            head += [k, f"{k} speedup", f"{k} FLOPs vs dense", f"{k} CPU-time ratio"]
        out += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for r in d["results"]:
            dn = r["dense"]
            row = [f"{r['density']:.0%}", f"{r['active_frames']} / {r['capacity_rows']}",
                   f"{dn['median_ms']:.1f} ({dn['iqr_ms']:.1f})"]
            for k in impls:
                g = r.get(k, {})
                if "median_ms" not in g:
                    row += ["failed (see JSON)" if "error" in g else "-", "-", "-", "-"]
                    continue
                row += [f"{g['median_ms']:.1f} ({g['iqr_ms']:.1f})", f"{g['speedup_vs_dense']:.2f}x",
                        f"{g['flop_ratio']:.3f}", f"{g['cpu_time_ratio']:.2f}"]
            out.append("| " + " | ".join(row) + " |")
        diffs = [r[k]["max_abs_diff_vs_dense"] for r in d["results"] for k in impls
                 if "max_abs_diff_vs_dense" in r.get(k, {})]
        if diffs:
            out += ["", f"Largest difference from dense over all rows: {max(diffs):.1e}."]
        out.append("")
    if not entries:
        out = ["No results/benchmarks/gated_block_*.json yet.", ""]
    return out


def render_device(entries) -> list[str]:
    if not entries:
        return ["No results/benchmarks/device_check_*.json yet: no accelerator has run "
                "`scripts/device_check.py` from this repository.", ""]
    out = ["| JSON | device | started | steps (status, seconds) |", "|---|---|---|---|"]
    for path, d in entries:
        steps = ", ".join(f"{s['name']}: {s['status']} ({s.get('seconds', 0):.0f} s)"
                          for s in d.get("steps", []))
        out.append(f"| `{path.relative_to(ROOT)}` | {d.get('device', '?')} | "
                   f"{d.get('started_utc', '?')} | {steps} |")
    return out + [""]


def render_triton(entries) -> list[str]:
    if not entries:
        return ["No results/benchmarks/triton_resources_*.json yet.", ""]
    out: list[str] = []
    for path, d in entries:
        t = d.get("target", {})
        out += [f"### {path.stem}", ""] + provenance_lines(path, d)
        out += [f"Target {t.get('arch', '?')}: at most {t.get('shared_limit_bytes', 0) / 1024:.0f} "
                f"KiB of shared memory per program, {t.get('max_registers_per_thread', '?')} "
                "registers per thread. Rows marked [rev] are the kernels as they were at that "
                "git revision.", "",
                "| case | kernel | warps | stages | shared memory | registers | spill stores | "
                "status |", "|---|---|---|---|---|---|---|---|"]
        for r in d["results"]:
            smem, spill = r.get("shared_bytes"), r.get("spill_store_bytes")
            out.append(f"| {r['case']} | {r['kernel']} | {r['num_warps']} | {r['num_stages']} | "
                       f"{'-' if smem is None else f'{smem / 1024:.1f} KiB'} | "
                       f"{r.get('registers', '-')} | {'-' if spill is None else f'{spill} B'} | "
                       f"{'**exceeds**' if r['status'] == 'exceeds' else r['status']} |")
        out.append("")
    return out


def render_subsampling(entries) -> list[str]:
    if not entries:
        return ["No results/benchmarks/subsampling_conv_*.json yet.", ""]
    out: list[str] = []
    for path, d in entries:
        out += [f"### {path.stem}", ""] + provenance_lines(path, d)
        out += ["Forward + backward of a factor-4 `ConvSubsampling`, median (IQR) of "
                f"{d['timing']['reps']} alternating timed calls.", "",
                "| B x T x mels | channels | conv | patches | conv / patches | max abs diff |",
                "|---|---|---|---|---|---|"]
        for r in d["results"]:
            sh, st = r["shape"], r["implementations"]
            cell = lambda x: f"{x['median_ms']:.1f} ms ({x['iqr_ms']:.1f})"
            out.append(f"| {sh['B']} x {sh['T']} x {sh['M']} | {sh['C']} | {cell(st['conv'])} | "
                       f"{cell(st['patches'])} | {r['speedup_conv_over_patches']:.2f}x | "
                       f"{r['max_abs_diff_outputs_and_grads']:.1e} |")
        out.append("")
    return out


BLOCKS = {"rnnt_loss": lambda: render_rnnt(_load("rnnt_loss_*.json")),
          "triton_resources": lambda: render_triton(_load("triton_resources_*.json")),
          "gated_block": lambda: render_gated(_load("gated_block_*.json")),
          "device_check": lambda: render_device(_load("device_check_*.json")),
          "subsampling_conv": lambda: render_subsampling(_load("subsampling_conv_*.json"))}


def replace_block(text: str, name: str, lines: list[str]) -> str:
    begin, end = f"<!-- BEGIN GENERATED: {name} -->", f"<!-- END GENERATED: {name} -->"
    if begin not in text or end not in text:
        raise SystemExit(f"markers for block {name!r} not found")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    note = ("<!-- generated by scripts/render_benchmark_docs.py from results/benchmarks/: "
            "edit the JSON's program, not this block -->")
    return head + begin + "\n" + note + "\n\n" + "\n".join(lines).rstrip() + "\n\n" + end + tail


def render_all() -> dict[Path, str]:
    docs: dict[Path, str] = {}
    for name, make in BLOCKS.items():
        path = DOCS[name]
        text = docs.get(path, path.read_text())
        docs[path] = replace_block(text, name, make())
    return docs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if a doc differs from the JSON")
    args = ap.parse_args(argv)
    stale = []
    for path, text in render_all().items():
        if path.read_text() != text:
            stale.append(path)
            if not args.check:
                path.write_text(text)
    if args.check and stale:
        print("stale (run python scripts/render_benchmark_docs.py): "
              + ", ".join(str(p.relative_to(ROOT)) for p in stale), file=sys.stderr)
        return 1
    print(("up to date: " if args.check else "rendered: ") + ", ".join(
        str(p.relative_to(ROOT)) for p in render_all()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
