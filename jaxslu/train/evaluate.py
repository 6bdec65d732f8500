"""Evaluation and transcription from a trained workdir.

    jaxslu eval --workdir runs/fsdd [--split test] [--set eval.decode=beam]
    jaxslu transcribe --workdir runs/fsdd a.wav b.flac

`evaluate_workdir` restores the last checkpoint, decodes every example of each evaluation split
(greedy or beam search), and writes `report_<split>.json`: WER, CER, intent accuracy, SLU-F1 where
the data has slots, and each of them broken down per speaker (and per accent where the data source
records one), plus `predictions_<split>.jsonl` with every reference and hypothesis.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxslu.config import ExperimentConfig, apply_overrides, read_config
from jaxslu.data.batch import NO_INTENT
from jaxslu.train.checkpoint import Checkpointer

log = logging.getLogger("jaxslu")


@dataclasses.dataclass
class LoadedRun:
    """A trained run: config, tokenizer, vocabularies, compiled decoding."""

    cfg: ExperimentConfig
    workdir: Path
    assets: Any  # jaxslu.train.loop.RunAssets
    graphdef: Any
    params: Any
    rest: Any
    step: int

    @classmethod
    def from_workdir(cls, workdir: str | Path, overrides: Sequence[str] = (),
                     step: int | None = None) -> "LoadedRun":
        from jaxslu.train.loop import make_trainer, prepare_assets

        workdir = Path(workdir)
        cfg = apply_overrides(read_config(workdir / "config.json"), overrides)
        if not (workdir / "tokenizer.model").exists() or not (workdir / "labels.json").exists():
            raise FileNotFoundError(f"{workdir} has no tokenizer.model / labels.json: is it a "
                                    "workdir written by `jaxslu train`?")
        assets = prepare_assets(cfg, workdir)
        trainer = make_trainer(cfg, assets.sizes)
        ckpt = Checkpointer(workdir / "checkpoints", keep=cfg.train.keep_checkpoints,
                            async_save=False)
        try:
            state, _, meta = ckpt.restore(trainer.abstract_sharded_state(), step)
        finally:
            ckpt.close()
        return cls(cfg=cfg, workdir=workdir, assets=assets, graphdef=trainer.graphdef,
                   params=state.params, rest=trainer.rest, step=int(state.step))

    # -- decoding --------------------------------------------------------------------------

    def decoder(self):
        """A jitted `(params, audio, audio_lengths) -> dict of numpy-able arrays` for the config's
        decoding method; compiled once per padded shape."""
        if getattr(self, "_decoder", None) is None:
            from flax import nnx

            from jaxslu.decoding import decode_with_slu
            ecfg = self.cfg.eval
            graphdef, rest = self.graphdef, self.rest

            def run(params, audio, audio_lengths):
                model = nnx.merge(graphdef, params, rest)
                return decode_with_slu(model, audio, audio_lengths, method=ecfg.decode,
                                       beam_size=ecfg.beam_size,
                                       max_symbols_per_frame=ecfg.max_symbols_per_frame)

            self._decoder = jax.jit(run)
        return self._decoder

    def decode_batch(self, audio: np.ndarray, audio_lengths: np.ndarray) -> list[dict]:
        """Transcript, intent and slots for each row of a padded batch."""
        out = jax.device_get(self.decoder()(self.params, jnp.asarray(audio),
                                            jnp.asarray(audio_lengths)))
        tok = self.assets.tokenizer
        vocab = self.assets.vocab
        rows = []
        for b in range(audio.shape[0]):
            ids = [int(i) for i in out["tokens"][b, : int(out["lengths"][b])]]
            text = tok.decode(ids)
            row: dict[str, Any] = {"transcript": text}
            if "intent" in out and len(vocab.intents):
                k = int(out["intent"][b])
                row["intent"] = vocab.intents[k] if 0 <= k < len(vocab.intents) else None
                if "intent_prob" in out:
                    row["intent_confidence"] = round(float(out["intent_prob"][b]), 4)
            if "slot_tags" in out and len(vocab.tags) > 1:
                tags = [int(t) for t in out["slot_tags"][b, : len(ids)]]
                words = text.split()
                row["entities"] = vocab.decode_tags(tags, word_of_token(tok, ids), words)
                row["slots"] = [{"type": e["type"],
                                 "value": " ".join(words[e["start"]:e["end"]])}
                                for e in row["entities"]]
            rows.append(row)
        return rows


def word_of_token(tokenizer, ids: Sequence[int]) -> list[int]:
    """Which word of `tokenizer.decode(ids).split()` each token belongs to: every word starts with
    a piece carrying the word-boundary mark (char and sentencepiece tokenizers alike)."""
    from jaxslu.text.tokenizer import WORD_BOUNDARY

    out, word = [], -1
    for piece in tokenizer.pieces(list(ids)):
        if piece.startswith(WORD_BOUNDARY) or word < 0:
            word += 1
        out.append(word)
    return out


# -- evaluation ------------------------------------------------------------------------------


def evaluate_workdir(workdir: str | Path, splits: Sequence[str] | None = None,
                     overrides: Sequence[str] = (), output: str | Path | None = None,
                     run: LoadedRun | None = None) -> dict[str, dict]:
    """Evaluate the run in `workdir` on `splits` (default: the config's eval splits) and write one
    report per split. Returns {split: report}."""
    run = run or LoadedRun.from_workdir(workdir, overrides)
    splits = list(splits or run.cfg.data.eval_splits)
    reports = {}
    for split in splits:
        t0 = time.perf_counter()
        records = predict_split(run, split)
        report = build_report(records, run, split)
        report["seconds"] = round(time.perf_counter() - t0, 2)
        path = Path(output) if (output and len(splits) == 1) else run.workdir / f"report_{split}.json"
        _write_json(path, report)
        pred_path = run.workdir / f"predictions_{split}.jsonl"
        tmp = pred_path.with_suffix(".jsonl.tmp")
        with open(tmp, "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
        tmp.replace(pred_path)
        report["path"] = str(path)
        reports[split] = report
    return reports


def predict_split(run: LoadedRun, split: str) -> list[dict]:
    from jaxslu.data.pipeline import make_batches
    from jaxslu.train.loop import open_source

    cfg = run.cfg
    source = open_source(cfg, split)
    batches = make_batches(source, tokenizer=run.assets.tokenizer, vocab=run.assets.vocab,
                           data_cfg=cfg.data, sample_rate=cfg.frontend.sample_rate, train=False,
                           seed=cfg.seed, frames_fn=None)
    records = []
    for batch in batches:
        rows = run.decode_batch(batch["audio"], batch["audio_lengths"])
        for b, row in enumerate(rows):
            idx = int(batch["index"][b])
            if idx < 0 or float(batch["weight"][b]) == 0:
                continue
            meta = source.metadata(idx)
            rec = {"id": meta.get("id", str(idx)), "speaker": meta.get("speaker"),
                   "ref": meta["text"], "hyp": row["transcript"],
                   "intent_ref": meta.get("intent"), "intent_hyp": row.get("intent")}
            extra = meta.get("meta") or {}
            if "accent" in extra:
                rec["accent"] = extra["accent"]
            if "entities" in row:
                words = meta["text"].split()
                rec["entities_ref"] = [{"type": e["type"],
                                        "value": " ".join(words[e["start"]:e["end"]])}
                                       for e in meta.get("entities", [])]
                rec["entities_hyp"] = row["slots"]
            records.append(rec)
    skipped = int(getattr(batches, "skipped", 0) or 0)
    if skipped:
        log.warning("%s: %d example(s) skipped as bad input (data.skip_bad_examples)", split, skipped)
    return records


def _metrics(records: list[dict]) -> dict[str, Any]:
    from jaxslu.text import metrics as M

    out: dict[str, Any] = {"num_examples": len(records)}
    if not records:
        return out
    w = M.wer([r["ref"] for r in records], [r["hyp"] for r in records])
    c = M.cer([r["ref"] for r in records], [r["hyp"] for r in records])
    out["wer"] = w.rate
    out["cer"] = c.rate
    out["wer_detail"] = w.as_dict()
    with_intent = [r for r in records if r.get("intent_ref") is not None]
    if with_intent and any("intent_hyp" in r for r in with_intent):
        out["intent_accuracy"] = M.intent_accuracy([r["intent_ref"] for r in with_intent],
                                                   [r.get("intent_hyp") for r in with_intent])
    if any("entities_ref" in r for r in records):
        f1 = M.slu_f1([r.get("entities_ref", []) for r in records],
                      [r.get("entities_hyp", []) for r in records])
        out.update(f1.as_dict())  # span_f1, word_f1, char_f1, slu_f1 (SLURP), precision, recall
    return out


def build_report(records: list[dict], run: LoadedRun, split: str) -> dict[str, Any]:
    report: dict[str, Any] = {"split": split, "experiment": run.cfg.name, "step": run.step,
                              "decode": run.cfg.eval.decode, "dataset": run.cfg.data.dataset}
    report.update(_metrics(records))
    for key in ("speaker", "accent"):
        if any(r.get(key) is not None for r in records):
            groups: dict[str, list[dict]] = {}
            for r in records:
                groups.setdefault(str(r.get(key)), []).append(r)
            report[f"per_{key}"] = {g: _metrics(rs) for g, rs in sorted(groups.items())}
    return report


def print_report(report: dict) -> None:
    """A compact human-readable summary on stdout (the JSON file holds everything)."""
    def fmt(m):
        parts = [f"n={m.get('num_examples', 0)}"]
        for k in ("wer", "cer", "intent_accuracy", "slu_f1"):
            if k in m:
                parts.append(f"{k}={100 * m[k]:.2f}%")
        return " ".join(parts)

    print(f"[{report['experiment']} / {report['split']} @ step {report['step']}] {fmt(report)}")
    for key in ("per_speaker", "per_accent"):
        for g, m in report.get(key, {}).items():
            print(f"    {key[4:]} {g:>16}: {fmt(m)}")
    if "path" in report:
        print(f"    report: {report['path']}")


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


# -- transcription of arbitrary files --------------------------------------------------------


class Transcriber:
    """Transcript, intent and slots for audio files at any sample rate."""

    def __init__(self, run: LoadedRun):
        self.run = run

    @classmethod
    def from_workdir(cls, workdir: str | Path) -> "Transcriber":
        return cls(LoadedRun.from_workdir(workdir))

    def transcribe_files(self, files: Iterable[str | Path]) -> Iterable[dict]:
        from jaxslu.audio.io import load_resampled

        sr = self.run.cfg.frontend.sample_rate
        buckets = sorted(int(round(s * sr)) for s in self.run.cfg.data.bucket_seconds)
        for f in files:
            audio = load_resampled(f, sr)
            n = len(audio)
            # Pad to a bucket so repeated calls reuse compiled programs; longer audio gets its
            # own power-of-two length.
            target = next((b for b in buckets if b >= n), 1 << max(n - 1, 1).bit_length())
            padded = np.zeros((1, target), np.float32)
            padded[0, :n] = audio
            row = self.run.decode_batch(padded, np.array([n], np.int32))[0]
            row.pop("entities", None)
            yield {"file": str(f), "seconds": round(n / sr, 3), **row}
