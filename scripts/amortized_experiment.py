"""Compute-cost amortized Transformer and streaming-encoder experiment on spoken SLURP.

    python scripts/amortized_experiment.py --quick            # tiny models, 60 steps (~15 min)
    python scripts/amortized_experiment.py                    # the real experiment (hours of CPU)
    python scripts/amortized_experiment.py --scale small --weights 0.5 2 8 32 --malloc-hugepages
                                                              # ~0.75M-param encoders (~2 h, 2 cores)
    python scripts/amortized_experiment.py --streaming-benchmark   # RTF / chunk latency only

Runs (each trained with jaxslu.train.loop.train and evaluated with
jaxslu.eval.evaluate_workdir in <workdir>/<scale>/<name>; result in result.json there):
  tt_dense_base       configs/slurp_transformer_dense.py, from scratch (the shared start)
  tt_dense            configs/slurp_transformer_dense.py     (kind "dense"), from tt_dense_base
  tt_sliding          configs/slurp_transformer_sliding.py   (kind "sliding_window"), from it
  tt_amortized_w<w>   configs/slurp_transformer_amortized.py (kind "amortized"), one per
                      --weights, from it (arbitrators new, trained jointly with the model)
  convrnnt            configs/slurp_convrnnt.py, from scratch
  lstm_rnnt           configs/spoken_slurp.py, causal LSTM encoder sized like the others
  conformer           configs/spoken_slurp.py, causal Conformer
The from-scratch encoders train base + fine-tune steps, as many as tt_dense in total (SCALES).
All use frontend.normalize="none" (streamable).

Outputs:
  results/amortized_compute.json  [{name, kind, compute_weight, relative_compute, wer,
                                    relative_wer_change, component_compute, ..., scale}]
      relative_compute = executed encoder-block FLOPs on the test set / those of tt_dense, counted
      from the GateActivity the Transformer blocks record (attention query side by visible keys,
      FFN, plus the fixed K/V and arbitrator cost) over the valid frames of the real rows. The
      subsampling is identical in all Transformer runs and left out.
  results/encoders.json  [{name, params, gflops_per_audio_second, wer, ..., scale}]
      params: encoder-side parameters; gflops: matmul/conv FLOPs of `encode` per audio second
      (jaxpr count with scan bodies times their length; dense, every gate on).
  results/amortized_compute.png  relative WER change vs compute saved (if matplotlib is installed).
  The markdown tables of both are printed at the end.
`--quick` results carry "quick": true: they prove the pipeline, not the paper's numbers.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("amortized_experiment")

# Quick runs: one audio and one label bucket (a single compiled shape per program: compiling
# each bucket would take longer than training the tiny models), a short warm-up so that the few
# steps actually move the weights, and (amortized runs) arbitrators starting at P(on) = 0.73
# instead of 0.95 so that the compute weight can show within tens of steps.
QUICK_OVERRIDES = ["train.steps=60", "train.log_every=20", "train.checkpoint_every=60",
                   "data.options={'num_speakers': 4, 'utterances': 60, 'seed': 0}",
                   "data.bucket_seconds=(9.0,)", "data.label_buckets=(64,)",
                   "optim.warmup_steps=5", "optim.learning_rate=3e-3"]
QUICK_AMORTIZED_OVERRIDES = ["model.encoder.gate_init_bias=1.0"]


# Scales. "full": the configs as committed (6-layer dim-144 Transformers, ~2M-parameter
# encoders), hours of CPU per run. "small": ~0.7-0.8M-parameter encoders of every kind and
# shorter schedules, so that the whole experiment fits about two hours on 2 CPU cores.
# Transformer runs share a dense base: `tt_dense_base` trains from scratch for `base_steps`; the
# dense, sliding-window and amortized runs each start from it (train.init_from) and train
# `finetune_steps` more, so they differ only in what the last phase trains (the amortized
# arbitrators, new parameters, train jointly with the model from their initialization). The
# non-Transformer encoders train from scratch for base_steps + finetune_steps.
SCALES = {
    "full": dict(base_steps=4000, finetune_steps=2000, common=[],
                 tt=[], conformer=[], lstm=["model.encoder.num_layers=3",
                                             "model.encoder.dim=200"], convrnnt=[]),
    "small": dict(base_steps=1200, finetune_steps=600,
                  common=["model.joint_dim=128", "model.predictor.hidden=128",
                          "train.log_every=50", "train.checkpoint_every=600"],
                  tt=["model.encoder.num_layers=4", "model.encoder.dim=96"],
                  conformer=["model.encoder.num_layers=3", "model.encoder.dim=88"],
                  lstm=["model.encoder.num_layers=3", "model.encoder.dim=112"],
                  convrnnt=["model.encoder.dim=144", "model.encoder.local_channels=(48,48,32,32)",
                            "model.encoder.global_channels=96", "model.encoder.global_blocks=6"]),
}
# The fine-tuning phase: short warm-up, a third of the base peak rate, cosine decay.
FINETUNE_OPTIM = ["optim.learning_rate=5e-4", "optim.warmup_steps=50"]


def run_specs(weights: list[float], scale: str = "full", seed: int = 0) -> list[dict]:
    """name, config file, overrides, kind, compute weight and warm-start source of every run.

    seed != 0: the same runs with `seed=<seed>` (initialization of new layers, dropout, Gumbel
    noise, data order), named `<run>_s<seed>`; the Transformer variants still start from the
    seed-0 `tt_dense_base`, so the spread between seeds is that of the phase the variants differ
    in."""
    sc = SCALES[scale]
    streamable = ["frontend.normalize=none", "model.encoder.causal=True"]
    base = sc["common"] + sc["tt"]
    scratch = [f"train.steps={sc['base_steps'] + sc['finetune_steps']}"]
    finetune = [f"train.steps={sc['finetune_steps']}"] + FINETUNE_OPTIM
    specs = [
        dict(name="tt_dense_base", config="slurp_transformer_dense.py", kind="base",
             overrides=base + [f"train.steps={sc['base_steps']}"]),
        dict(name="tt_dense", config="slurp_transformer_dense.py", kind="dense",
             overrides=base + finetune, init_from="tt_dense_base"),
        dict(name="tt_sliding", config="slurp_transformer_sliding.py", kind="sliding_window",
             overrides=base + finetune, init_from="tt_dense_base"),
    ]
    for w in weights:
        specs.append(dict(name=f"tt_amortized_w{w:g}", config="slurp_transformer_amortized.py",
                          overrides=base + finetune, kind="amortized", compute_weight=w,
                          init_from="tt_dense_base"))
    specs += [
        dict(name="convrnnt", config="slurp_convrnnt.py", kind="encoder",
             overrides=sc["common"] + sc["convrnnt"] + scratch),
        dict(name="lstm_rnnt", config="spoken_slurp.py", kind="encoder",
             overrides=streamable + ["model.encoder.kind=lstm"] + sc["common"] + sc["lstm"]
             + scratch),
        dict(name="conformer", config="spoken_slurp.py", kind="encoder",
             overrides=streamable + sc["common"] + sc["conformer"] + scratch),
    ]
    if seed:
        specs = [s if s["kind"] == "base" else
                 {**s, "name": f"{s['name']}_s{seed}", "overrides": s["overrides"] + [f"seed={seed}"]}
                 for s in specs]
    return specs


def load_run_config(spec: dict, quick: bool, workdir: Path | None = None):
    from jaxslu.config import load_config

    overrides = list(spec["overrides"])
    if quick:
        # tiny variants: drop the size overrides, keep the structure (warm start included)
        overrides = [o for o in overrides if o.startswith(("frontend.", "model.encoder.kind",
                                                           "model.encoder.causal", "seed="))]
        overrides += QUICK_OVERRIDES
        if spec["kind"] == "amortized":
            overrides += QUICK_AMORTIZED_OVERRIDES
    if spec.get("init_from") and workdir is not None:
        overrides.append(f"train.init_from={workdir / spec['init_from']}")
    cfg = load_config(ROOT / "configs" / spec["config"], "tiny" if quick else None, overrides)
    if spec.get("compute_weight") is not None:
        import importlib.util
        path = ROOT / "configs" / "slurp_transformer_amortized.py"
        mod_spec = importlib.util.spec_from_file_location("slurp_transformer_amortized", path)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
        cfg = module.with_compute_weight(cfg, spec["compute_weight"])
    return cfg


def block_flops_on_split(run, split: str) -> dict[str, float] | None:
    """Executed and dense encoder-block FLOPs over `split` from the recorded GateActivity (None
    for models without gate-recording blocks)."""
    from jaxslu.layers.amortized import GateActivity, executed_and_dense_flops
    from jaxslu.losses import intermediates_of
    from jaxslu.slu.batching import make_audio_batches

    cfg = run.cfg
    graphdef = run.graphdef

    @jax.jit
    def count(params, audio, lengths, weight):
        model = nnx.merge(graphdef, params, run.rest)
        model.encode(audio, lengths)
        acts = intermediates_of({"intermediates": nnx.pop(model, nnx.Intermediate)},
                                GateActivity)
        if not acts:
            return {}
        return executed_and_dense_flops(acts, weight)

    batches = make_audio_batches(run.task.open_source(split), tokenizer=run.assets.tokenizer,
                                 vocab=run.assets.vocab, data_cfg=cfg.data,
                                 sample_rate=cfg.frontend.sample_rate, train=False,
                                 seed=cfg.seed, frames_fn=None)
    totals: dict[str, float] = {}
    for batch in batches:
        out = jax.device_get(count(run.params, jnp.asarray(batch["audio"]),
                                   jnp.asarray(batch["audio_lengths"]),
                                   jnp.asarray(batch["weight"], jnp.float32)))
        if not out:
            return None
        for k, v in out.items():
            if not k.startswith("rate/"):
                totals[k] = totals.get(k, 0.0) + float(v)
    totals["executed"] = totals["gated_executed"] + totals["fixed"]
    totals["dense"] = totals["gated_dense"] + totals["fixed"]
    return totals


def run_one(spec: dict, workdir: Path, quick: bool, specs_by_name: dict | None = None) -> dict:
    """Train (or resume) and evaluate one run; its result is kept in <workdir>/<name>/result.json,
    and a finished run is not trained or evaluated again. A warm-started run first makes sure its
    source run is finished."""
    from jaxslu.models.streaming import encoder_flops_per_second, encoder_param_count
    from jaxslu.eval import LoadedRun, evaluate_workdir
    from jaxslu.train.loop import train

    wd = workdir / spec["name"]
    done = wd / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    if spec.get("init_from"):
        source = (specs_by_name or {}).get(spec["init_from"])
        if source is None:
            raise ValueError(f"run {spec['name']} starts from {spec['init_from']}, which is not "
                             "a run of this experiment")
        run_one(source, workdir, quick, specs_by_name)
    cfg = load_run_config(spec, quick, workdir)
    t0 = time.perf_counter()
    log.info("%s: training (%s)", spec["name"], " ".join(spec["overrides"]))
    train(cfg, wd, progress=False)
    train_seconds = time.perf_counter() - t0
    run = LoadedRun.from_workdir(wd)
    split = cfg.data.eval_splits[0]
    report = evaluate_workdir(wd, [split], run=run)[split]
    model = nnx.merge(run.graphdef, run.params, run.rest)
    result = {"name": spec["name"], "kind": spec["kind"],
              "compute_weight": spec.get("compute_weight", 0.0),
              "init_from": spec.get("init_from"),
              "wer": report.get("wer"), "cer": report.get("cer"),
              "intent_accuracy": report.get("intent_accuracy"),
              "num_test_examples": report.get("num_examples"),
              "params": encoder_param_count(model),
              "gflops_per_audio_second": encoder_flops_per_second(model) / 1e9,
              "block_flops": block_flops_on_split(run, split),
              "steps": cfg.train.steps, "train_seconds": round(train_seconds, 1),
              "seconds": round(time.perf_counter() - t0, 1), "loss": cfg.loss,
              "overrides": spec["overrides"]}
    log.info("%s: %s", spec["name"], {k: v for k, v in result.items()
                                      if k not in ("block_flops", "overrides")})
    done.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _component_compute(block_flops: dict | None) -> dict | None:
    """executed / dense FLOPs of each gated component (attention, ffn) on the test set."""
    if not block_flops:
        return None
    return {k.split("/", 1)[1]: v / max(block_flops["dense/" + k.split("/", 1)[1]], 1.0)
            for k, v in block_flops.items() if k.startswith("executed/")} or None


def utterance_errors(workdir: Path, split: str = "test") -> dict[str, tuple[int, int]]:
    """Per-utterance (word errors, reference words) from a run's predictions_<split>.jsonl."""
    from jaxslu.text.metrics import edit_distance, normalize_text

    out = {}
    path = workdir / f"predictions_{split}.jsonl"
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        row = json.loads(line)
        out[row["id"]] = edit_distance(normalize_text(row["ref"]).split(),
                                       normalize_text(row["hyp"]).split())
    return out


def paired_bootstrap(base: dict, other: dict, samples: int = 2000, seed: int = 0
                     ) -> tuple[float, float] | None:
    """95% interval of WER(other) / WER(base) - 1 over utterances resampled with replacement
    (the same resample for both runs: the test set's sampling noise, paired)."""
    ids = sorted(set(base) & set(other))
    if not ids:
        return None
    b = np.array([base[i] for i in ids], np.float64)
    o = np.array([other[i][0] for i in ids], np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(ids), (samples, len(ids)))
    ratio = o[idx].sum(1) / np.maximum(b[idx, 0].sum(1), 1.0) - 1.0
    lo, hi = np.percentile(ratio, [2.5, 97.5])
    return float(lo), float(hi)


def write_results(results: list[dict], quick: bool, out_dir: Path, scale: str = "full",
                  workdir: Path | None = None, seed: int = 0) -> str:
    """Write amortized_compute.json, encoders.json and the plot (with `_seed<seed>` in the file
    names for seed != 0); return markdown tables."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = {"quick": quick, "scale": "quick" if quick else scale, "seed": seed}
    sfx = f"_s{seed}" if seed else ""
    files = f"_seed{seed}" if seed else ""
    dense = next((r for r in results if r["name"] == "tt_dense" + sfx and r["block_flops"]), None)
    dense_errors = (utterance_errors(workdir / dense["name"]) if workdir and dense else {})
    compute = []
    for r in results:
        if r["kind"] not in ("dense", "sliding_window", "amortized"):
            continue
        interval = (paired_bootstrap(dense_errors, utterance_errors(workdir / r["name"]))
                    if dense_errors and r["name"] != dense["name"] else None)
        rel = (r["block_flops"]["executed"] / dense["block_flops"]["executed"]
               if dense and r["block_flops"] else None)
        rel_wer = (r["wer"] / dense["wer"] - 1.0 if dense and dense["wer"] else None)
        compute.append({"name": r["name"], "kind": r["kind"],
                        "compute_weight": r["compute_weight"], "relative_compute": rel,
                        "wer": r["wer"], "relative_wer_change": rel_wer,
                        "relative_wer_change_95ci": interval, "cer": r.get("cer"),
                        "intent_accuracy": r.get("intent_accuracy"),
                        "component_compute": _component_compute(r["block_flops"]),
                        "steps": r.get("steps"), "init_from": r.get("init_from"), **tag})
    encoders = [{"name": r["name"], "params": r["params"],
                 "gflops_per_audio_second": round(r["gflops_per_audio_second"], 4),
                 "wer": r["wer"], "cer": r.get("cer"), "intent_accuracy": r.get("intent_accuracy"),
                 "steps": r.get("steps"), "init_from": r.get("init_from"), **tag}
                for r in results
                if r["name"] in [n + sfx for n in ("convrnnt", "lstm_rnnt", "conformer", "tt_dense")]]
    (out_dir / f"amortized_compute{files}.json").write_text(json.dumps(compute, indent=2) + "\n")
    if any(not r["name"].startswith("tt_") for r in encoders):
        (out_dir / f"encoders{files}.json").write_text(json.dumps(encoders, indent=2) + "\n")

    def pct(x, signed=False):
        return "-" if x is None else (f"{100 * x:+.1f}%" if signed else f"{100 * x:.1f}%")

    lines = ["| run | kind | compute weight | relative compute | compute saved | attention / FFN "
             "executed | WER | relative WER change (95% CI) | intent accuracy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in compute:
        cc = r["component_compute"] or {}
        lines.append(f"| {r['name']} | {r['kind']} | {r['compute_weight']:g} | "
                     f"{'-' if r['relative_compute'] is None else format(r['relative_compute'], '.3f')} | "
                     f"{pct(None if r['relative_compute'] is None else 1 - r['relative_compute'])} | "
                     f"{pct(cc.get('attention'))} / {pct(cc.get('ffn'))} | {pct(r['wer'])} | "
                     f"{pct(r['relative_wer_change'], True)}"
                     + (f" ({pct(ci[0], True)} .. {pct(ci[1], True)})"
                        if (ci := r["relative_wer_change_95ci"]) else "")
                     + f" | {pct(r['intent_accuracy'])} |")
    lines += ["", "| encoder | params | GFLOPs per audio second | steps | WER | CER | "
              "intent accuracy |", "|---|---|---|---|---|---|---|"]
    for r in encoders:
        source = next((x for x in results if x["name"] == r["init_from"]), None)
        steps = (f"{source['steps']} + {r['steps']}" if source else str(r["steps"]))
        lines.append(f"| {r['name']} | {r['params']:,} | {r['gflops_per_audio_second']:.3f} | "
                     f"{steps} | {pct(r['wer'])} | {pct(r['cer'])} | {pct(r['intent_accuracy'])} |")
    tables = "\n".join(lines)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot")
        return tables
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    markers = {"dense": "s", "sliding_window": "^", "amortized": "o"}
    for r in compute:
        if r["relative_compute"] is None or r["relative_wer_change"] is None:
            continue
        x, y = 100 * (1 - r["relative_compute"]), 100 * r["relative_wer_change"]
        ax.scatter(x, y, marker=markers[r["kind"]], s=40)
        ax.annotate(r["name"].replace("tt_", ""), (x, y), textcoords="offset points",
                    xytext=(4, 4), fontsize=7)
    ax.axhline(0, color="0.7", lw=0.8)
    ax.set_xlabel("encoder compute saved vs dense (%)")
    ax.set_ylabel("relative WER change vs dense (%)")
    title = "spoken SLURP, streaming Transformer-transducer"
    ax.set_title(title + (" (quick: pipeline check only)" if quick else f" ({scale} scale)"),
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / f"amortized_compute{files}.png", dpi=120)
    return tables


def streaming_benchmark(chunk_frames: tuple[int, ...] = (16, 32), seconds: float = 4.0,
                        repeats: int = 3) -> list[dict]:
    """RTF and per-chunk latency of streaming greedy decoding on CPU for the default-size (2M
    encoder parameters) ConvRNN-T and streaming Transformers, untrained (compute does not depend
    on the weights, except for the amortized model's gates: untrained, every gate is on (initial
    logit 3), so its figure is the worst case: gating overhead without any skipping)."""
    from jaxslu.config import load_config
    from jaxslu.decoding.streaming import StreamingDecoder
    from jaxslu.slu.task import transducer_model_kwargs
    from jaxslu.train.state import build_model

    rng = np.random.default_rng(0)
    audio = rng.normal(0, 0.1, (1, int(seconds * 16000))).astype(np.float32)
    lengths = np.array([audio.shape[1]])
    rows = []
    for name in ("slurp_convrnnt", "slurp_transformer_dense", "slurp_transformer_sliding",
                 "slurp_transformer_amortized"):
        cfg = load_config(ROOT / "configs" / f"{name}.py")
        model = build_model(cfg, transducer_model_kwargs(cfg, 256, 18, 111))
        for chunk in chunk_frames:
            dec = StreamingDecoder(model, chunk_frames=chunk)
            passes = [dec.decode(audio, lengths) for _ in range(repeats)]
            best = min(passes, key=lambda r: r.real_time_factor)
            lat = np.asarray(best.chunk_latencies) * 1000
            rows.append({"config": name, "chunk_ms": chunk * 10,
                         "rtf": round(best.real_time_factor, 4),
                         "latency_ms_median": round(float(np.median(lat)), 2),
                         "latency_ms_p90": round(float(np.percentile(lat, 90)), 2),
                         "compile_s": round(passes[0].compile_seconds, 1)})
            log.info("%s", rows[-1])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="tiny models, 60 steps, 60 utterances: checks the pipeline end to end")
    p.add_argument("--scale", choices=sorted(SCALES), default="full",
                   help="full: the committed configs (hours per run); small: ~0.75M-parameter "
                        "encoders, 1200 + 600 steps (about two hours for everything on 2 cores)")
    p.add_argument("--weights", type=float, nargs="+", default=[2.0, 8.0, 32.0],
                   help="compute_cost weights of the amortized runs (at least 3 for the curve)")
    p.add_argument("--only", nargs="+", default=None,
                   help="run only these runs, in this order (plus the base they start from); "
                        "two processes with disjoint --only lists can share the workdir")
    p.add_argument("--seed", type=int, default=0,
                   help="another training seed of the same runs (named <run>_s<seed>; results "
                        "in amortized_compute_seed<seed>.json)")
    p.add_argument("--collect", action="store_true",
                   help="train nothing: write the results from the finished runs in the workdir")
    p.add_argument("--malloc-hugepages", action="store_true",
                   help="re-run with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (jaxslu.hugepages)")
    p.add_argument("--workdir", default=str(ROOT / "runs" / "amortized_experiment"))
    p.add_argument("--results", default=str(ROOT / "results"))
    p.add_argument("--streaming-benchmark", action="store_true",
                   help="only measure streaming RTF and chunk latency (results/streaming_cpu.json)")
    args = p.parse_args()
    if args.malloc_hugepages:
        from jaxslu.hugepages import reexec_with_malloc_hugepages
        reexec_with_malloc_hugepages()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out_dir = Path(args.results)
    if args.streaming_benchmark:
        rows = streaming_benchmark()
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "streaming_cpu.json").write_text(json.dumps(
            {"machine": f"{platform.machine()} {jax.devices()[0].device_kind}, "
                        f"jax {jax.__version__}", "rows": rows}, indent=2) + "\n")
        return
    if len(args.weights) < 3:
        p.error("give at least 3 --weights for the compute/accuracy curve")
    all_specs = run_specs(args.weights, args.scale, args.seed)
    by_name = {s["name"]: s for s in all_specs}
    specs = all_specs
    if args.only:
        unknown = set(args.only) - set(by_name)
        if unknown:
            p.error(f"unknown run names {sorted(unknown)}; choose from {list(by_name)}")
        specs = [by_name[n] for n in args.only]
    workdir = Path(args.workdir) / ("quick" if args.quick else args.scale)
    if not args.collect:
        for s in specs:
            run_one(s, workdir, args.quick, by_name)
    results = [json.loads((workdir / s["name"] / "result.json").read_text())
               for s in all_specs if (workdir / s["name"] / "result.json").exists()]
    missing = [s["name"] for s in all_specs if not (workdir / s["name"] / "result.json").exists()]
    if missing:
        log.info("not finished yet (left out of the results): %s", missing)
    (workdir / "runs.json").write_text(json.dumps(results, indent=2) + "\n")
    print(write_results(results, args.quick, out_dir, args.scale, workdir, args.seed))


if __name__ == "__main__":
    main()
