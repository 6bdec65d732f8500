"""Benchmark: a pretrained recognizer (pocketsphinx) next to jaxslu runs, same audio, same CPU.

    python benchmarks/asr_peers.py --run fsdd=runs/fsdd_demo --run spoken_slurp=runs/spoken_nlu@slurp_test
    python benchmarks/asr_peers.py --run fsdd=runs/colab_quickstart --limit 40 --out /tmp/a.json

Each `--run NAME=WORKDIR[@SPLIT]` is a trained transducer SLU run (`jaxslu train ... --workdir W`).
Its config.json names the dataset and its options; the split (`@SPLIT`, else `--split`, default
test) is opened from
that config, so jaxslu and pocketsphinx decode exactly the same examples (`--limit N`: the first N
of the split, in the source's order; jaxslu's pipeline may drop bad examples only under
data.skip_bad_examples, and pocketsphinx then gets the same reduced set).

Systems (one process, one after the other, on the same CPU):
  jaxslu        the run's checkpoint, loaded as `jaxslu eval` loads it (LoadedRun, one device),
                decoded with the run's eval settings (eval.decode, normally greedy) by
                `TransducerDecoder`, the evaluator's decoder. Warm-up (untimed): one pass over the
                split's batches that decodes the first batch of every distinct padded shape (the
                audio buckets), so every program the timed pass needs is compiled. Timed: a
                second full pass, featurization (read, resample, tokenize, collate on the
                pipeline's read threads) plus log-mel, encoder, greedy search and heads, each
                batch's outputs fetched to the host (which blocks until they are ready).
  pocketsphinx  pocketsphinx 5.x's `Decoder` with the wheel's default en-us acoustic model,
                generic en-us language model and CMU dictionary (`get_model_path()`), default
                search settings; every utterance as 16 kHz mono int16 (resampled with
                `jaxslu.audio.io.resample`; FSDD is 8 kHz) in one `process_raw(...,
                full_utt=True)` call (batch cepstral mean normalization over the utterance).
                Timed: start_utt + process_raw + end_utt + hyp per utterance, summed (the Python
                API exposes no decoder-side timer); reading and resampling are recorded apart
                (`prepare_seconds`) and excluded. The first utterance is decoded once untimed.
                Its hypothesis has fillers (<s>, </s>, <sil>, [NOISE], [SPEECH], ++X++) and
                pronunciation variants ("are(2)") stripped, then `normalize_text` as references.

Metrics per (system, dataset): corpus WER (`jaxslu.text.metrics.wer`, total edits / reference
words), RTF = timed decode wall seconds / seconds of audio, utterances, audio seconds, and for
FSDD `digit_accuracy` (the fraction of recordings whose hypothesis contains the reference digit
word). jaxslu also reports CER and intent accuracy. XLA uses every core; pocketsphinx one.

The JSON (`--out`, default results/asr_peers.json, rewritten after every dataset, atomically)
holds `systems`, the per-utterance hypotheses, and jaxslu/provenance.py's command, commit,
machine and versions (pocketsphinx's included).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

BENCH_INSTALL = 'pip install -e ".[bench]"'
PS_SAMPLE_RATE = 16000
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

_VARIANT = re.compile(r"\(\d+\)$")  # CMUdict alternative pronunciations: "are(2)"


class BenchError(Exception):
    """A problem with the user's input (a missing workdir, a text-only dataset, ...)."""


# -- hypotheses and metrics (pure logic; no pocketsphinx, no jax) ------------------------------


def is_filler(word: str) -> bool:
    """pocketsphinx's non-words: <s>, </s>, <sil>, [NOISE], [SPEECH], ++NOISE++ style fillers."""
    return ((word.startswith("<") and word.endswith(">"))
            or (word.startswith("[") and word.endswith("]"))
            or (len(word) > 4 and word.startswith("++") and word.endswith("++")))


def normalize_hypothesis(text: str | None) -> str:
    """A pocketsphinx hypothesis (or segment words joined) as a reference-style transcript:
    fillers dropped, "(N)" pronunciation variants cut, then `normalize_text` (lowercase, no
    punctuation, single spaces). None (no hypothesis) gives ""."""
    from jaxslu.text.normalize import normalize_text

    if not text:
        return ""
    words = []
    for w in text.split():
        w = _VARIANT.sub("", w)
        if w and not is_filler(w):
            words.append(w)
    return normalize_text(" ".join(words))


def corpus_wer(refs: Sequence[str], hyps: Sequence[str]) -> dict[str, Any]:
    """Corpus WER with its counts (`jaxslu.text.metrics.wer(...).as_dict()`)."""
    from jaxslu.text import metrics as M

    return M.wer(list(refs), list(hyps)).as_dict()


def digit_accuracy(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Fraction of utterances whose (normalized) hypothesis contains the reference digit word as
    a whole word ("seven" in "the seven" counts, in "seventy" it does not). NaN when empty."""
    from jaxslu.text.normalize import normalize_text

    if isinstance(refs, str) or isinstance(hyps, str):
        raise TypeError("digit_accuracy expects lists of utterances")
    if len(refs) != len(hyps):
        raise ValueError(f"digit_accuracy: {len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        return math.nan
    hits = 0
    for ref, hyp in zip(refs, hyps):
        word = normalize_text(ref)
        if word not in DIGIT_WORDS:
            raise ValueError(f"digit_accuracy: reference {ref!r} is not a digit word")
        hits += word in normalize_text(hyp).split()
    return hits / len(refs)


def parse_runs(values: Iterable[str], default_split: str = "test"
               ) -> list[tuple[str, Path, str]]:
    """`NAME=WORKDIR[@SPLIT]` -> (name, workdir, split); each workdir must hold a run's
    config.json. Without `@SPLIT` the run is measured on `default_split` (--split)."""
    runs, seen = [], set()
    for v in values:
        name, sep, workdir = v.partition("=")
        name, workdir = name.strip(), workdir.strip()
        workdir, at, split = workdir.rpartition("@") if "@" in workdir else (workdir, "", "")
        split = split.strip() if at else default_split
        if not sep or not name or not workdir or not split:
            raise BenchError(f"--run {v!r}: give NAME=WORKDIR or NAME=WORKDIR@SPLIT, e.g. --run "
                             "fsdd=runs/fsdd_demo or --run slurp=runs/spoken_nlu@slurp_test")
        if name in seen:
            raise BenchError(f"--run {name}=...: the name {name!r} is given twice")
        seen.add(name)
        path = Path(workdir)
        if not path.is_dir():
            raise BenchError(f"--run {name}={workdir}: workdir {workdir!r} does not exist; train "
                             f"it first (jaxslu train --config ... --workdir {workdir})")
        if not (path / "config.json").is_file():
            raise BenchError(f"--run {name}={workdir}: {workdir!r} has no config.json; is it a "
                             "workdir written by `jaxslu train`?")
        runs.append((name, path, split))
    if not runs:
        raise BenchError("no --run NAME=WORKDIR given")
    return runs


def to_pcm16(audio: np.ndarray, sample_rate: int, target_rate: int = PS_SAMPLE_RATE) -> bytes:
    """Float audio in [-1, 1] at `sample_rate` -> little-endian int16 bytes at `target_rate`."""
    from jaxslu.audio.io import resample

    x = np.asarray(audio, np.float32)
    if int(sample_rate) != target_rate:
        x = resample(x, int(sample_rate), target_rate)
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2").tobytes()


# -- data ---------------------------------------------------------------------------------------


class FirstN:
    """The first `n` examples of a source (indices unchanged), with the source's accessors."""

    def __init__(self, source: Any, n: int):
        self.source, self.n = source, min(int(n), len(source))
        self.name = getattr(source, "name", type(source).__name__)

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"FirstN({self.source!r}, n={self.n})"

    def _check(self, i: int) -> int:
        if not -self.n <= int(i) < self.n:
            raise IndexError(f"example index {i!r} out of range for {self!r}")
        return int(i) % self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.source[self._check(i)]

    def text(self, i: int) -> str:
        return self.source.text(self._check(i))

    def metadata(self, i: int) -> dict[str, Any]:
        return self.source.metadata(self._check(i))


def check_has_audio(source: Any, name: str, dataset: str) -> None:
    """A clear error for a text-only dataset (slurp_text, clinc150): nothing to recognize."""
    if len(source) == 0:
        raise BenchError(f"run {name!r}: dataset {dataset!r} split has no examples")
    if source[0].get("audio") is None:
        raise BenchError(f"run {name!r}: dataset {dataset!r} has no audio (a text-only corpus); "
                         "benchmark a run trained on a spoken dataset (fsdd, spoken_slurp, "
                         "manifest)")


def open_run_split(name: str, workdir: Path, split: str, limit: int | None) -> tuple[Any, Any]:
    """(config, source) of a run's split, checked before any checkpoint is loaded: the run must
    be a transducer_slu run and its dataset must have audio."""
    from jaxslu.config import read_config
    from jaxslu.task import get_task

    cfg = read_config(workdir / "config.json")
    if cfg.task != "transducer_slu":
        raise BenchError(f"run {name!r} ({workdir}) is a {cfg.task!r} run; this benchmark needs "
                         "a transducer_slu run (audio in, transcript out)")
    source = get_task(cfg).open_source(split)
    if limit is not None:
        source = FirstN(source, limit)
    check_has_audio(source, name, cfg.data.dataset)
    return cfg, source


# -- pocketsphinx -------------------------------------------------------------------------------


def require_pocketsphinx():
    try:
        import pocketsphinx
    except ImportError as e:
        raise BenchError(f"pocketsphinx is not importable ({e}); install the bench extra: "
                         f"{BENCH_INSTALL} (or pip install 'pocketsphinx>=5')") from e
    version = importlib.metadata.version("pocketsphinx")
    if int(version.split(".")[0]) < 5:
        raise BenchError(f"pocketsphinx {version} is installed; this benchmark needs 5.x "
                         f"({BENCH_INSTALL})")
    return pocketsphinx


class Pocketsphinx:
    """pocketsphinx's Decoder with the wheel's default en-us models, one utterance at a time."""

    def __init__(self, loglevel: str = "FATAL"):
        ps = require_pocketsphinx()
        self.model = {"hmm": ps.get_model_path("en-us/en-us"),
                      "lm": ps.get_model_path("en-us/en-us.lm.bin"),
                      "dict": ps.get_model_path("en-us/cmudict-en-us.dict")}
        for key, path in self.model.items():
            if not os.path.exists(path):
                raise BenchError(f"pocketsphinx's default {key} {path!r} is missing; reinstall "
                                 f"pocketsphinx ({BENCH_INSTALL})")
        t0 = time.perf_counter()
        self.decoder = ps.Decoder(**self.model, samprate=PS_SAMPLE_RATE, loglevel=loglevel)
        self.init_seconds = time.perf_counter() - t0
        self.version = importlib.metadata.version("pocketsphinx")

    def describe(self) -> dict[str, Any]:
        c = self.decoder.config
        settings = {}
        for k in ("samprate", "frate", "beam", "wbeam", "pbeam", "lw", "wip", "fwdflat",
                  "bestpath", "topn", "maxhmmpf", "cmn", "remove_noise"):
            try:
                settings[k] = c[k]
            except KeyError:
                continue
        return {**self.model, "version": self.version, "settings": settings,
                "init_seconds": self.init_seconds, "input": "16 kHz mono int16, one "
                "process_raw(full_utt=True) call per utterance"}

    def recognize(self, pcm: bytes) -> tuple[str, float, float]:
        """(raw hypothesis, wall seconds, CPU seconds) of one utterance."""
        d = self.decoder
        t0, c0 = time.perf_counter(), time.process_time()
        d.start_utt()
        if pcm:  # process_raw(b"") raises IndexError
            d.process_raw(pcm, full_utt=True)
        d.end_utt()
        hyp = d.hyp()  # None when nothing was recognized
        text = hyp.hypstr if hyp is not None else ""
        return text, time.perf_counter() - t0, time.process_time() - c0


def measure_pocketsphinx(peer: Pocketsphinx, source: Any, indices: Sequence[int]
                         ) -> dict[str, Any]:
    """Read, resample (untimed) and recognize (timed) each example in turn; the first one is
    also recognized once before, untimed (model pages, caches)."""
    rows, wall, cpu, prepare_s, audio_s = [], 0.0, 0.0, 0.0, 0.0
    for n, i in enumerate(indices):
        t0 = time.perf_counter()
        ex = source[int(i)]
        sr = int(ex["sample_rate"])
        audio_s += len(ex["audio"]) / sr
        pcm = to_pcm16(ex["audio"], sr)
        prepare_s += time.perf_counter() - t0
        if n == 0:
            peer.recognize(pcm)
        raw, w, c = peer.recognize(pcm)
        wall, cpu = wall + w, cpu + c
        rows.append({"id": ex["id"], "ref": ex["text"], "raw": raw,
                     "hyp": normalize_hypothesis(raw), "seconds": round(w, 5)})
    return {"rows": rows, "audio_seconds": audio_s, "decode_seconds": wall, "cpu_seconds": cpu,
            "prepare_seconds": prepare_s}


# -- jaxslu -------------------------------------------------------------------------------------


def load_run(workdir: Path):
    """The run as `jaxslu eval` / `jaxslu transcribe` load it (config, assets, params; one
    device)."""
    import jax

    from jaxslu.eval.run import LoadedRun

    return LoadedRun.from_workdir(workdir, devices=jax.devices()[:1])


def _shape_key(batch: dict) -> tuple:
    return tuple(sorted((k, tuple(np.shape(v))) for k, v in batch.items()))


def measure_jaxslu(run: Any, source: Any) -> dict[str, Any]:
    from jaxslu.slu.evaluate import TransducerDecoder

    decoder = TransducerDecoder(run)
    batches = run.eval_batches(source)
    # Warm-up: compile every padded shape the split uses (one batch each), untimed.
    t0 = time.perf_counter()
    shapes: dict[tuple, int] = {}
    for batch in batches:
        key = _shape_key(batch)
        if key not in shapes:
            decoder.decode(batch)
            shapes[key] = int(np.shape(batch["audio"])[1])
    warmup_s = time.perf_counter() - t0

    sr = run.cfg.frontend.sample_rate
    rows, samples = [], 0
    data_s = model_s = 0.0
    it = iter(batches)
    t_start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            break
        t1 = time.perf_counter()
        out, index, weight = decoder.decode(batch)  # outputs fetched to the host: blocks
        t2 = time.perf_counter()
        data_s, model_s = data_s + (t1 - t0), model_s + (t2 - t1)
        for k, (row, idx, w) in enumerate(zip(out, index, weight)):
            if idx < 0 or w == 0:
                continue
            samples += int(batch["audio_lengths"][k])
            rows.append((int(idx), row))
    total_s = time.perf_counter() - t_start
    skipped = int(getattr(batches, "skipped", 0) or 0)
    records = []
    for idx, row in sorted(rows, key=lambda r: r[0]):
        meta = source.metadata(idx)
        records.append({"index": idx, "id": meta.get("id", str(idx)), "ref": meta["text"],
                        "hyp": row["transcript"], "intent_ref": meta.get("intent"),
                        "intent_hyp": row.get("intent")})
    return {"rows": records, "audio_seconds": samples / sr, "decode_seconds": total_s,
            "data_wait_seconds": data_s, "model_seconds": model_s, "warmup_seconds": warmup_s,
            "warmup_batches": len(shapes), "padded_audio_samples": sorted(set(shapes.values())),
            "batches": len(batches), "skipped_examples": skipped}


# -- one dataset --------------------------------------------------------------------------------


def scores(refs: Sequence[str], hyps: Sequence[str], is_fsdd: bool) -> dict[str, Any]:
    w = corpus_wer(refs, hyps)
    out: dict[str, Any] = {"wer": w["rate"], "wer_counts": w}
    if is_fsdd:
        out["digit_accuracy"] = digit_accuracy(refs, hyps)
    return out


def rtf(decode_s: float, audio_s: float) -> float:
    return decode_s / audio_s if audio_s > 0 else math.nan


def bench_dataset(name: str, workdir: Path, split: str, limit: int | None, source: Any,
                  peer: Pocketsphinx) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from jaxslu.text import metrics as M

    run = load_run(workdir)
    cfg = run.cfg
    is_fsdd = cfg.data.dataset == "fsdd"
    common = {"dataset": name, "split": split, "limit": limit,
              "source": {"dataset": cfg.data.dataset, "options": dict(cfg.data.options),
                         "examples_in_split": len(getattr(source, "source", source))}}

    print(f"[asr_peers] {name}: jaxslu {workdir} ({len(source)} examples) ...", flush=True)
    j = measure_jaxslu(run, source)
    jrows = j.pop("rows")
    refs = [r["ref"] for r in jrows]
    jhyps = [r["hyp"] for r in jrows]
    jax_entry = {"name": "jaxslu", **common, **scores(refs, jhyps, is_fsdd),
                 "rtf": rtf(j["decode_seconds"], j["audio_seconds"]),
                 "utterances": len(jrows), **j,
                 "cer": M.cer(refs, jhyps).rate,
                 "intent_accuracy": M.intent_accuracy([r["intent_ref"] for r in jrows],
                                                      [r["intent_hyp"] for r in jrows]),
                 "model": {"workdir": str(workdir), "step": run.step, "experiment": cfg.name,
                           "decode": cfg.eval.decode, "beam_size": cfg.eval.beam_size,
                           "max_symbols_per_frame": cfg.eval.max_symbols_per_frame,
                           "eval_batch_size": cfg.data.eval_batch_size,
                           "sample_rate": cfg.frontend.sample_rate}}

    print(f"[asr_peers] {name}: pocketsphinx ({len(jrows)} examples) ...", flush=True)
    p = measure_pocketsphinx(peer, source, [r["index"] for r in jrows])
    prows = p.pop("rows")
    phyps = [r["hyp"] for r in prows]
    ps_entry = {"name": "pocketsphinx", **common, **scores(refs, phyps, is_fsdd),
                "rtf": rtf(p["decode_seconds"], p["audio_seconds"]),
                "utterances": len(prows), **p, "model": peer.describe()}
    if abs(p["audio_seconds"] - j["audio_seconds"]) > 1e-3 * max(1.0, j["audio_seconds"]):
        raise AssertionError(f"{name}: the systems saw different audio ({j['audio_seconds']} s "
                             f"vs {p['audio_seconds']} s)")
    utterances = [{"dataset": name, "id": jr["id"], "ref": jr["ref"], "jaxslu": jr["hyp"],
                   "jaxslu_intent": jr["intent_hyp"], "pocketsphinx": pr["hyp"],
                   "pocketsphinx_raw": pr["raw"], "pocketsphinx_seconds": pr["seconds"]}
                  for jr, pr in zip(jrows, prows)]
    return [ps_entry, jax_entry], utterances


def _summary(entry: dict[str, Any]) -> str:
    extra = (f" digit_acc={entry['digit_accuracy']:.3f}" if "digit_accuracy" in entry else "")
    return (f"  {entry['name']:<13} {entry['dataset']}: wer={entry['wer']:.4f} "
            f"rtf={entry['rtf']:.4f} utterances={entry['utterances']} "
            f"audio_s={entry['audio_seconds']:.1f}{extra}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", dest="runs", action="append", default=[],
                    metavar="NAME=WORKDIR[@SPLIT]",
                    help="a trained transducer SLU run to benchmark (repeatable), e.g. "
                         "fsdd=runs/fsdd_demo or slurp=runs/spoken_nlu@slurp_test")
    ap.add_argument("--split", default="test", help="split of the runs that name none")
    ap.add_argument("--limit", type=int, default=None, help="only the first N examples")
    ap.add_argument("--out", default="results/asr_peers.json")
    args = ap.parse_args(argv)

    from jaxslu import provenance

    recorder = provenance.Recorder(None if argv is None else [sys.argv[0], *argv])
    try:
        if args.limit is not None and args.limit < 1:
            raise BenchError(f"--limit {args.limit}: give a positive number of examples")
        runs = [(name, workdir, split, open_run_split(name, workdir, split, args.limit)[1])
                for name, workdir, split in parse_runs(args.runs, args.split)]
        peer = Pocketsphinx()
        payload: dict[str, Any] = {
            "benchmark": "asr_peers", "split": args.split, "limit": args.limit,
            "splits": {name: split for name, _, split, _ in runs},
            "method": {
                "rtf": "decode wall seconds / audio seconds",
                "jaxslu": "after a warm-up pass compiling every padded shape: one timed pass "
                          "over the split, featurization + decoding, outputs fetched to host",
                "pocketsphinx": "sum over utterances of start_utt+process_raw(full_utt)+end_utt"
                                "+hyp wall time; audio read/resample excluded",
                "wer": "corpus WER, jaxslu.text.metrics.wer (normalized text)",
                "digit_accuracy": "fsdd: fraction of recordings whose hypothesis contains the "
                                  "reference digit word"},
            "versions": provenance.versions((*provenance.PACKAGES, "pocketsphinx",
                                             "soundfile", "grain")),
            "systems": [], "utterances": []}
        for name, workdir, split, source in runs:
            systems, utterances = bench_dataset(name, workdir, split, args.limit, source, peer)
            payload["systems"].extend(systems)
            payload["utterances"].extend(utterances)
            recorder.write(args.out, payload)
            for s in systems:
                print(_summary(s), flush=True)
    except BenchError as e:
        print(f"asr_peers: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, KeyError, ValueError) as e:
        if os.environ.get("JAXSLU_TRACEBACK"):
            raise
        print(f"asr_peers: error: {type(e).__name__}: {e} (JAXSLU_TRACEBACK=1 for the "
              "traceback)", file=sys.stderr)
        return 2
    print(f"[asr_peers] wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
