"""The multi-party streaming ASR task: simulated meetings in, per-channel transcripts with turn
tokens out (the SURT model of jaxslu/multiparty/model.py and its loss terms).

  dataset `meetings` (options: `source` = a spoken dataset name, `source_options`, `num_meetings`
    {split: n}, `seed`, `sample_rate`, and the simulation options of
    jaxslu.multiparty.simulate.plan_meetings): the meetings of a split are planned over the
    source's split of the same name ("train" / "test" / ...), so test meetings use only test
    recordings;
  task `multiparty`: assets = a word vocabulary read from the training meetings (`vocab.json`:
    blank, <unk>, <sot>, <eot>, then the words by frequency, capped by task_options.max_words);
    each meeting's turns are assigned to the model's C output channels first-free in start order
    (with C = 1: one stream, the single-channel baseline's reference), each channel's reference
    is "<sot> words <eot>" per turn; the batch also carries the per-channel speech activity at
    encoder frames and the end frame of each <eot>;
  evaluator `multiparty` (jaxslu/multiparty/evaluate.py).
"""
from __future__ import annotations

import collections
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from jaxslu.data.pipeline import DataError, Skipped, bucket_for
from jaxslu.multiparty.simulate import MeetingSource, assign_channels
from jaxslu.registry import DATASETS, TASKS
from jaxslu.task import Task

SPECIALS = ("<blank>", "<unk>", "<sot>", "<eot>")
BLANK, UNK, SOT, EOT = 0, 1, 2, 3


@DATASETS.register("meetings")
def meetings(split: str = "train", *, source: str = "fsdd", source_options: dict | None = None,
             num_meetings: dict | int | None = None, seed: int = 0, sample_rate: int = 16000,
             **simulation) -> MeetingSource:
    """Meetings simulated over `source`'s recordings of `split` (see the module doc)."""
    counts = {"train": 4000, "test": 300}
    if isinstance(num_meetings, int):
        counts = {split: num_meetings}
    elif num_meetings:
        counts.update({str(k): int(v) for k, v in dict(num_meetings).items()})
    if split not in counts:
        raise ValueError(f"meetings: no meeting count for split {split!r}; set "
                         f"data.options.num_meetings={{'{split}': N, ...}}")
    base = DATASETS.get(source).factory(split, **dict(source_options or {}))
    split_seed = int(seed) * 1000 + sum(ord(ch) for ch in split)
    return MeetingSource(base, split, counts[split], split_seed, sample_rate, **simulation)


class WordVocab:
    def __init__(self, words: list[str]):
        self.words = list(words)
        self.index = {w: k for k, w in enumerate(self.words)}

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def encode(self, words) -> list[int]:
        return [self.index.get(w, UNK) for w in words]

    def decode(self, ids) -> list[str]:
        return [self.words[int(i)] for i in ids if 0 <= int(i) < len(self.words)]

    def save(self, path: Path) -> None:
        tmp = Path(str(path) + ".tmp")
        tmp.write_text(json.dumps({"words": self.words}, indent=0))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "WordVocab":
        words = json.loads(Path(path).read_text())["words"]
        if list(words[: len(SPECIALS)]) != list(SPECIALS):
            raise ValueError(f"{path}: not a multiparty vocabulary (must start with {SPECIALS})")
        return cls(words)


def channel_references(turns, channels: int, vocab: WordVocab):
    """Per channel: token ids ("<sot> words <eot>" per turn, in start order), the index of each
    turn on that channel, and the turn (index into `turns`) of each <eot> position."""
    assign = assign_channels(turns, channels)
    tokens = [[] for _ in range(channels)]
    eot_turn = [[] for _ in range(channels)]
    for k, (turn, c) in enumerate(zip(turns, assign)):
        ids = [SOT] + vocab.encode(turn["words"]) + [EOT]
        tokens[c].extend(ids)
        eot_turn[c].extend([-1] * (len(ids) - 1) + [k])
    return assign, tokens, eot_turn


@TASKS.register("multiparty")
class MultipartyTask(Task):
    default_evaluator = "multiparty"
    asset_files = ("vocab.json",)

    @property
    def channels(self) -> int:
        return int(getattr(self.cfg.model, "channels", 1))

    def frame_seconds(self) -> float:
        return self.cfg.frontend.hop_ms / 1000.0 * self.cfg.model.encoder.subsampling

    def encoder_frames(self, num_samples: int) -> int:
        from jaxslu.audio.frontend import num_frames
        from jaxslu.layers.subsampling import subsampled_length

        return int(subsampled_length(int(num_frames(int(num_samples), self.cfg.frontend)),
                                     self.cfg.model.encoder.subsampling))

    # -- assets -----------------------------------------------------------------------------

    def load_assets(self, workdir: Path):
        path = Path(workdir) / "vocab.json"
        return WordVocab.load(path) if path.is_file() else None

    def build_assets(self, source, scratch: Path) -> WordVocab:
        counts = collections.Counter(w for i in range(len(source)) for w in source.text(i).split())
        cap = int(self.options.get("max_words", 0)) or len(counts)
        words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:cap]]
        return WordVocab(list(SPECIALS) + words)

    def save_assets(self, assets: WordVocab, workdir: Path) -> None:
        assets.save(Path(workdir) / "vocab.json")

    def model_kwargs(self, assets: WordVocab) -> dict[str, Any]:
        return {"frontend_cfg": self.cfg.frontend, "vocab_size": assets.vocab_size}

    def check(self, model, objective) -> None:
        if self.cfg.frontend.sample_rate != self.cfg.data.options.get("sample_rate", 16000):
            raise ValueError(f"frontend.sample_rate={self.cfg.frontend.sample_rate} but the "
                             f"meetings are mixed at data.options.sample_rate="
                             f"{self.cfg.data.options.get('sample_rate', 16000)}; set both alike")

    # -- batches ----------------------------------------------------------------------------

    def prepare_fn(self, source, assets: WordVocab, *, train: bool, model=None, objective=None):
        sr = self.cfg.frontend.sample_rate
        max_samples = int(round(max(self.cfg.data.bucket_seconds) * sr))
        max_tokens = max(self.cfg.data.label_buckets)
        fs = self.frame_seconds()
        channels = self.channels

        def bad(msg):
            if self.cfg.data.skip_bad_examples:
                return Skipped(msg)
            raise DataError(msg)

        def prepare(index: int):
            index = int(index)
            ex = source[index]
            audio = ex["audio"]
            if len(audio) > max_samples:
                return bad(f"meeting {ex['id']!r} is {len(audio) / sr:.2f} s, longer than the "
                           f"largest bucket ({max(self.cfg.data.bucket_seconds)} s); add a larger "
                           "data.bucket_seconds or lower the meeting options")
            assign, tokens, eot_turn = channel_references(ex["turns"], channels, assets)
            if max(len(t) for t in tokens) > max_tokens:
                return bad(f"meeting {ex['id']!r} has a channel of {max(len(t) for t in tokens)} "
                           f"tokens, more than data.label_buckets allow ({max_tokens})")
            t_enc = self.encoder_frames(len(audio))
            centers = (np.arange(t_enc) + 0.5) * fs
            activity = np.zeros((channels, t_enc), np.float32)
            for turn, c in zip(ex["turns"], assign):
                activity[c] = np.maximum(activity[c], (centers >= turn["start"])
                                         & (centers < turn["end"]))
            eot_frame = [[int(np.ceil(ex["turns"][k]["end"] / fs)) - 1 if k >= 0 else -1
                          for k in et] for et in eot_turn]
            return {"audio": audio.astype(np.float32), "tokens": tokens, "eot_frame": eot_frame,
                    "activity": activity, "index": index}

        return prepare

    def pad_values(self):
        return {"audio": 0.0, "tokens": BLANK, "eot_frame": -1, "activity": 0.0}

    def collate(self, rows, batch_size: int):
        sr = self.cfg.frontend.sample_rate
        buckets = sorted({int(round(s * sr)) for s in self.cfg.data.bucket_seconds})
        n = bucket_for(max((len(r["audio"]) for r in rows), default=1), buckets)
        u = bucket_for(max((len(t) for r in rows for t in r["tokens"]), default=0),
                       sorted(set(self.cfg.data.label_buckets)))
        t_enc = self.encoder_frames(n)
        c = self.channels
        out = {"audio": np.zeros((batch_size, n), np.float32),
               "audio_lengths": np.ones((batch_size,), np.int32),
               "tokens": np.zeros((batch_size, c, u), np.int32),
               "token_lengths": np.zeros((batch_size, c), np.int32),
               "eot_frame": np.full((batch_size, c, u), -1, np.int32),
               "activity": np.zeros((batch_size, c, t_enc), np.float32),
               "index": np.full((batch_size,), -1, np.int32),
               "weight": np.zeros((batch_size,), np.float32)}
        for k, r in enumerate(rows):
            out["audio"][k, : len(r["audio"])] = r["audio"]
            out["audio_lengths"][k] = len(r["audio"])
            for ch in range(c):
                toks = r["tokens"][ch]
                out["tokens"][k, ch, : len(toks)] = toks
                out["token_lengths"][k, ch] = len(toks)
                out["eot_frame"][k, ch, : len(toks)] = r["eot_frame"][ch]
            act = r["activity"]
            out["activity"][k, :, : act.shape[1]] = act[:, :t_enc]
            out["index"][k] = r["index"]
            out["weight"][k] = 1.0
        return out
