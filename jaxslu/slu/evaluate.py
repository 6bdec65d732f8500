"""Evaluation and transcription of the transducer / SLU task.

The `transducer_slu` evaluator decodes every example of a split (greedy or beam search), and
reports WER, CER, intent accuracy, SLU-F1 where the data has slots, each broken down per speaker
(and per accent where the source records one); its records (`predictions_<split>.jsonl`) carry
id, speaker and its metadata, reference, hypothesis and labels.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from jaxslu.eval.run import LoadedRun
from jaxslu.registry import EVALUATORS
from jaxslu.text import metrics as M

log = logging.getLogger("jaxslu")

# Audio below this rate is refused by `transcribe` (telephone speech is 8 kHz).
MIN_TRANSCRIBE_RATE = 8000


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


def _decode(model, batch, *, method, beam_size, max_symbols_per_frame):
    from jaxslu.decoding import decode_with_slu

    return decode_with_slu(model, batch["audio"], batch["audio_lengths"], method=method,
                           beam_size=beam_size, max_symbols_per_frame=max_symbols_per_frame,
                           cohort=batch.get("cohort"), context=batch.get("context"))


class TransducerDecoder:
    """Transcript, intent and slots for each row of padded audio batches of a loaded run."""

    def __init__(self, run: LoadedRun):
        self.run = run
        e = run.cfg.eval
        self._fn = functools.partial(_decode, method=e.decode, beam_size=e.beam_size,
                                     max_symbols_per_frame=e.max_symbols_per_frame)

    def decode(self, batch: dict) -> tuple[list[dict], np.ndarray, np.ndarray]:
        out, index, weight = self.run.apply(self._fn, batch)
        tok, vocab = self.run.assets.tokenizer, self.run.assets.vocab
        rows = []
        for b in range(len(index)):
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
                row["slots"] = [{"type": e["type"], "value": " ".join(words[e["start"]:e["end"]])}
                                for e in row["entities"]]
            rows.append(row)
        return rows, index, weight


@EVALUATORS.register("transducer_slu")
class TransducerSLUEvaluator:
    def __init__(self, run: LoadedRun):
        self.run = run
        self.decoder = TransducerDecoder(run)

    def records(self, split: str) -> list[dict]:
        return self.records_of(self.run.task.open_source(split), split)

    def records_of(self, source, split: str = "") -> list[dict]:
        """The records (sorted by id) of every example of `source`: a split's source, or any
        object with its interface (len, [i], metadata(i)), e.g. a subset of one."""
        batches = self.run.eval_batches(source)
        records = []
        for batch in batches:
            rows, index, weight = self.decoder.decode(batch)
            for row, idx, w in zip(rows, index, weight):
                if idx < 0 or w == 0:
                    continue
                meta = source.metadata(int(idx))
                rec = {"id": meta.get("id", str(idx)), "speaker": meta.get("speaker"),
                       "meta": meta.get("meta") or {}, "ref": meta["text"],
                       "hyp": row["transcript"], "intent_ref": meta.get("intent"),
                       "intent_hyp": row.get("intent")}
                if "intent_confidence" in row:
                    rec["intent_confidence"] = row["intent_confidence"]
                if "accent" in rec["meta"]:
                    rec["accent"] = rec["meta"]["accent"]
                if "entities" in row:
                    words = meta["text"].split()
                    rec["entities_ref"] = [{"type": e["type"],
                                            "value": " ".join(words[e["start"]:e["end"]])}
                                           for e in meta.get("entities", [])]
                    rec["entities_hyp"] = row["slots"]
                records.append(rec)
        records.sort(key=lambda r: r["id"])
        skipped = int(getattr(batches, "skipped", 0) or 0)
        if skipped:
            log.warning("%s: %d example(s) skipped as bad input (data.skip_bad_examples)", split,
                        skipped)
        return records

    def evaluate(self, split: str) -> tuple[dict, list[dict]]:
        records = self.records(split)
        report: dict[str, Any] = {"decode": self.run.cfg.eval.decode}
        report.update(M.summary(records))
        for key in ("speaker", "accent"):
            if any(r.get(key) is not None for r in records):
                report[f"per_{key}"] = M.grouped_summary(records, key)
        return report, records


# -- transcription of arbitrary files --------------------------------------------------------


class Transcriber:
    """Transcript, intent and slots for audio files at any sample rate of 8 kHz and above."""

    def __init__(self, run: LoadedRun):
        self.run = run
        self.decoder = TransducerDecoder(run)

    @classmethod
    def from_workdir(cls, workdir: str | Path) -> "Transcriber":
        import jax

        return cls(LoadedRun.from_workdir(workdir, devices=jax.devices()[:1]))

    def transcribe_files(self, files: Iterable[str | Path]) -> Iterable[dict]:
        """One dict per file; a file that cannot be used yields {"file", "error"} and the rest
        go on (the caller decides the exit status)."""
        from jaxslu.audio.io import load_audio, resample

        sr = self.run.cfg.frontend.sample_rate
        buckets = sorted(int(round(s * sr)) for s in self.run.cfg.data.bucket_seconds)
        for f in files:
            try:
                audio, file_sr = load_audio(f)
                if file_sr < MIN_TRANSCRIBE_RATE:
                    raise ValueError(f"sampled at {file_sr} Hz, below {MIN_TRANSCRIBE_RATE} Hz: "
                                     "too little bandwidth for speech recognition; record or "
                                     "export it at 8 kHz or more")
                if not np.isfinite(audio).all():
                    raise ValueError("NaN or infinite samples")
                audio = resample(audio, file_sr, sr) if file_sr != sr else audio
            except (OSError, ValueError, RuntimeError) as e:
                yield {"file": str(f), "error": f"cannot transcribe {str(f)!r}: {e}"}
                continue
            n = len(audio)
            # Pad to a bucket so repeated calls reuse compiled programs; longer audio gets its
            # own power-of-two length.
            target = next((b for b in buckets if b >= n), 1 << max(n - 1, 1).bit_length())
            batch = {"audio": np.zeros((1, target), np.float32),
                     "audio_lengths": np.array([max(n, 1)], np.int32),
                     "index": np.zeros((1,), np.int32), "weight": np.ones((1,), np.float32)}
            batch["audio"][0, :n] = audio
            rows, _, _ = self.decoder.decode(batch)
            row = rows[0]
            row.pop("entities", None)
            yield {"file": str(f), "seconds": round(n / sr, 3), **row}
