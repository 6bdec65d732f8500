"""Compute-cost amortized Transformer and streaming-encoder experiment on spoken SLURP.

    python scripts/amortized_experiment.py --quick            # tiny models, 60 steps (~15 min)
    python scripts/amortized_experiment.py                    # the real experiment (hours of CPU)
    python scripts/amortized_experiment.py --streaming-benchmark   # RTF / chunk latency only

Runs (each trained with jaxslu.train.loop.train and evaluated with
jaxslu.train.evaluate.evaluate_workdir in <workdir>/<name>):
  tt_dense            configs/slurp_transformer_dense.py     (kind "dense")
  tt_sliding          configs/slurp_transformer_sliding.py   (kind "sliding_window")
  tt_amortized_w<w>   configs/slurp_transformer_amortized.py (kind "amortized"), one per --weights
  convrnnt            configs/slurp_convrnnt.py
  lstm_rnnt           configs/spoken_slurp.py, causal LSTM encoder sized like the others
  conformer           configs/spoken_slurp.py, causal Conformer
All use frontend.normalize="none" (streamable).

Outputs:
  results/amortized_compute.json  [{name, kind, compute_weight, relative_compute, wer, quick}]
      relative_compute = executed encoder-block FLOPs on the test set / those of tt_dense, counted
      from the GateActivity the Transformer blocks record (attention query side by visible keys,
      FFN, plus the fixed K/V and arbitrator cost) over the valid frames of the real rows. The
      subsampling is identical in all Transformer runs and left out.
  results/encoders.json  [{name, params, gflops_per_audio_second, wer, quick}]
      params: encoder-side parameters; gflops: matmul/conv FLOPs of `encode` per audio second
      (jaxpr count with scan bodies times their length; dense, every gate on).
  results/amortized_compute.png  WER vs relative compute (if matplotlib is installed).
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


def run_specs(weights: list[float]) -> list[dict]:
    """(name, config file, overrides, kind, compute weight) of every run."""
    streamable = ["frontend.normalize=none", "model.encoder.causal=True"]
    specs = [
        dict(name="tt_dense", config="slurp_transformer_dense.py", overrides=[], kind="dense"),
        dict(name="tt_sliding", config="slurp_transformer_sliding.py", overrides=[],
             kind="sliding_window"),
    ]
    for w in weights:
        specs.append(dict(name=f"tt_amortized_w{w:g}", config="slurp_transformer_amortized.py",
                          overrides=[], kind="amortized", compute_weight=w))
    specs += [
        dict(name="convrnnt", config="slurp_convrnnt.py", overrides=[], kind="encoder"),
        dict(name="lstm_rnnt", config="spoken_slurp.py", kind="encoder",
             overrides=streamable + ["model.encoder.kind=lstm", "model.encoder.num_layers=3",
                                     "model.encoder.dim=200"]),
        dict(name="conformer", config="spoken_slurp.py", overrides=streamable, kind="encoder"),
    ]
    return specs


def load_run_config(spec: dict, quick: bool):
    from jaxslu.config import load_config

    overrides = list(spec["overrides"])
    if quick and spec["name"] == "lstm_rnnt":
        overrides = [o for o in overrides if not o.startswith(("model.encoder.dim",
                                                               "model.encoder.num_layers"))]
    if quick:
        overrides += QUICK_OVERRIDES
        if spec["kind"] == "amortized":
            overrides += QUICK_AMORTIZED_OVERRIDES
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
    from jaxslu.data.pipeline import make_batches
    from jaxslu.layers.amortized import GateActivity, executed_and_dense_flops
    from jaxslu.losses import intermediates_of
    from jaxslu.train.loop import open_source

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

    batches = make_batches(open_source(cfg, split), tokenizer=run.assets.tokenizer,
                           vocab=run.assets.vocab, data_cfg=cfg.data,
                           sample_rate=cfg.frontend.sample_rate, train=False, seed=cfg.seed,
                           frames_fn=None)
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


def run_one(spec: dict, workdir: Path, quick: bool) -> dict:
    from jaxslu.models.streaming import encoder_flops_per_second, encoder_param_count
    from jaxslu.train.evaluate import LoadedRun, evaluate_workdir
    from jaxslu.train.loop import train

    cfg = load_run_config(spec, quick)
    wd = workdir / spec["name"]
    t0 = time.perf_counter()
    train(cfg, wd, progress=False)
    run = LoadedRun.from_workdir(wd)
    split = cfg.data.eval_splits[0]
    report = evaluate_workdir(wd, [split], run=run)[split]
    model = nnx.merge(run.graphdef, run.params, run.rest)
    result = {"name": spec["name"], "kind": spec["kind"],
              "compute_weight": spec.get("compute_weight", 0.0),
              "wer": report.get("wer"), "num_test_examples": report.get("num_examples"),
              "params": encoder_param_count(model),
              "gflops_per_audio_second": encoder_flops_per_second(model) / 1e9,
              "block_flops": block_flops_on_split(run, split),
              "seconds": round(time.perf_counter() - t0, 1), "loss": cfg.loss}
    log.info("%s: %s", spec["name"], {k: v for k, v in result.items() if k != "block_flops"})
    return result


def write_results(results: list[dict], quick: bool, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    dense = next((r for r in results if r["name"] == "tt_dense" and r["block_flops"]), None)
    compute = []
    for r in results:
        if r["kind"] not in ("dense", "sliding_window", "amortized"):
            continue
        rel = (r["block_flops"]["executed"] / dense["block_flops"]["executed"]
               if dense and r["block_flops"] else None)
        compute.append({"name": r["name"], "kind": r["kind"],
                        "compute_weight": r["compute_weight"], "relative_compute": rel,
                        "wer": r["wer"], "quick": quick})
    encoders = [{"name": r["name"], "params": r["params"],
                 "gflops_per_audio_second": round(r["gflops_per_audio_second"], 4),
                 "wer": r["wer"], "quick": quick}
                for r in results if r["name"] in ("convrnnt", "lstm_rnnt", "conformer", "tt_dense")]
    (out_dir / "amortized_compute.json").write_text(json.dumps(compute, indent=2) + "\n")
    (out_dir / "encoders.json").write_text(json.dumps(encoders, indent=2) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r in compute:
        if r["relative_compute"] is not None and r["wer"] is not None:
            ax.scatter(r["relative_compute"], r["wer"], label=r["name"])
    ax.set_xlabel("encoder FLOPs relative to dense")
    ax.set_ylabel("WER")
    ax.set_title("spoken SLURP" + (" (quick run: pipeline check only)" if quick else ""))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "amortized_compute.png", dpi=120)


def streaming_benchmark(chunk_frames: tuple[int, ...] = (16, 32), seconds: float = 4.0,
                        repeats: int = 3) -> list[dict]:
    """RTF and per-chunk latency of streaming greedy decoding on CPU for the default-size (2M
    encoder parameters) ConvRNN-T and streaming Transformers, untrained (compute does not depend
    on the weights, except for the amortized model's gates: untrained, every gate is on (initial
    logit 3), so its figure is the worst case: gating overhead without any skipping)."""
    from jaxslu.config import load_config
    from jaxslu.decoding.streaming import StreamingDecoder
    from jaxslu.train.state import ModelSizes, build_model

    rng = np.random.default_rng(0)
    audio = rng.normal(0, 0.1, (1, int(seconds * 16000))).astype(np.float32)
    lengths = np.array([audio.shape[1]])
    rows = []
    for name in ("slurp_convrnnt", "slurp_transformer_dense", "slurp_transformer_sliding",
                 "slurp_transformer_amortized"):
        cfg = load_config(ROOT / "configs" / f"{name}.py")
        model = build_model(cfg, ModelSizes(vocab_size=256, num_intents=18, num_slot_tags=111))
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
    p.add_argument("--weights", type=float, nargs="+", default=[0.05, 0.2, 0.5],
                   help="compute_cost weights of the amortized runs (at least 3 for the curve)")
    p.add_argument("--only", nargs="+", default=None, help="run only these run names")
    p.add_argument("--workdir", default=str(ROOT / "runs" / "amortized_experiment"))
    p.add_argument("--results", default=str(ROOT / "results"))
    p.add_argument("--streaming-benchmark", action="store_true",
                   help="only measure streaming RTF and chunk latency (results/streaming_cpu.json)")
    args = p.parse_args()
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
    specs = run_specs(args.weights)
    if args.only:
        unknown = set(args.only) - {s["name"] for s in specs}
        if unknown:
            names = [s["name"] for s in specs]
            p.error(f"unknown run names {sorted(unknown)}; choose from {names}")
        specs = [s for s in specs if s["name"] in args.only]
    workdir = Path(args.workdir) / ("quick" if args.quick else "full")
    results = [run_one(s, workdir, args.quick) for s in specs]
    (workdir / "runs.json").write_text(json.dumps(results, indent=2) + "\n")
    write_results(results, args.quick, out_dir)


if __name__ == "__main__":
    main()
