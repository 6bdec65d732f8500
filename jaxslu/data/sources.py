"""Data sources: random-access corpora that yield the Example dict of docs/DESIGN.md.

Every source is a grain `RandomAccessDataSource` (`__len__`, `__getitem__`) plus two cheap
accessors that never touch audio: `text(i)` and `metadata(i)` (everything but the waveform), which
is what vocabularies, tokenizer training and per-speaker reports read.

Registered in `jaxslu.registry.DATASETS` (factory `(split, **options) -> source`):

* ``fsdd``: the bundled Free Spoken Digit Dataset (8 kHz WAVs; standard index split or a
  held-out speaker).
* ``slurp_text``: SLURP devel text (no audio), entities converted from token to word spans,
  deterministic 80/10/10 train/dev/test split by a hash of ``slurp_id`` (as spoken_slurp).
* ``clinc150``: CLINC150 intents (no audio); out-of-scope queries have intent ``"oos"``.
* ``spoken_slurp``: SLURP text synthesized to speech by `jaxslu.audio.corpus.build_spoken_slurp`,
  built once into the cache and then served from its manifest.
* ``manifest``: any ``manifest.jsonl`` (researchers' own data).

Audio is returned at its native sample rate (`sample_rate` in the Example); the pipeline resamples.
A failed audio read raises `ExampleReadError` naming the example id and the file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from jaxslu import paths
from jaxslu.registry import DATASETS

log = logging.getLogger(__name__)

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


class ExampleReadError(RuntimeError):
    """Reading an example's audio failed; the message names the example id and the file."""

    def __init__(self, example_id: str, path: str, cause: BaseException):
        super().__init__(f"cannot read audio of example {example_id!r} from {path!r}: {cause}")
        self.example_id = example_id
        self.path = path


def load_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """`jaxslu.audio.io.load_audio` (float32 mono in [-1, 1], sample rate), imported on first use
    so that building a source (metadata only) does not import the audio stack."""
    from jaxslu.audio.io import load_audio as _load

    return _load(path)


class ExampleSource:
    """A list of metadata records plus lazy audio: the common body of all sources here.

    `records[i]` holds id, text, intent, entities, speaker, meta (and optionally `audio_path`);
    `sample_rate` is used for text-only corpora (audio None) so the Example always has one.
    """

    def __init__(self, name: str, split: str, records: list[dict[str, Any]],
                 sample_rate: int = 0):
        if not records:
            raise ValueError(f"dataset {name!r} split {split!r} has no examples; check the split "
                             "name and the dataset's options")
        self.name = name
        self.split = split
        self._records = records
        self._sample_rate = sample_rate

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, split={self.split!r}, n={len(self)})"

    def _check(self, i: int) -> dict[str, Any]:
        if not isinstance(i, (int, np.integer)) or not -len(self) <= i < len(self):
            raise IndexError(f"example index {i!r} out of range for {self!r}")
        return self._records[int(i)]

    def text(self, i: int) -> str:
        return self._check(i)["text"]

    def metadata(self, i: int) -> dict[str, Any]:
        """Everything but the audio: id, text, intent, entities, speaker, meta."""
        r = self._check(i)
        return {"id": r["id"], "text": r["text"], "intent": r["intent"],
                "entities": [dict(e) for e in r["entities"]], "speaker": r["speaker"],
                "meta": dict(r["meta"])}

    def __getitem__(self, i: int) -> dict[str, Any]:
        example = self.metadata(i)
        path = self._records[int(i)].get("audio_path")
        if path is None:
            example["audio"], example["sample_rate"] = None, self._sample_rate
            return example
        try:
            audio, sr = load_audio(path)
        except (OSError, ValueError, RuntimeError) as e:
            raise ExampleReadError(example["id"], str(path), e) from e
        example["audio"], example["sample_rate"] = audio, sr
        return example


# ------------------------------------------------------------------------------------------
# FSDD
# ------------------------------------------------------------------------------------------

_FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")


def fsdd_files(root: Path) -> list[tuple[int, str, int, Path]]:
    """(digit, speaker, index, path) of every recording under root/recordings, sorted."""
    rec_dir = root / "recordings"
    if not rec_dir.is_dir():
        raise FileNotFoundError(f"FSDD recordings folder {str(rec_dir)!r} not found; it ships in "
                                "data/fsdd/ of the jaxslu checkout (or set JAXSLU_DATA)")
    out = []
    for p in rec_dir.iterdir():
        m = _FSDD_NAME.match(p.name)
        if m:
            out.append((int(m.group(1)), m.group(2), int(m.group(3)), p))
    out.sort(key=lambda t: (t[1], t[0], t[2]))
    return out


def fsdd_in_split(index: int, speaker: str, split: str, holdout_speaker: str | None) -> bool:
    """The FSDD split rule, shared with the TFDS builder so both give the same examples."""
    if split == "all":
        return True
    if holdout_speaker:
        return (speaker == holdout_speaker) == (split == "test")
    return index < 5 if split == "test" else index >= 5


class FsddSource(ExampleSource):
    """Free Spoken Digit Dataset: text = digit word, intent = the digit ("0".."9"), no entities.

    Splits: "train" (indices 5..49), "test" (0..4), "all"; with `holdout_speaker`, "train" is the
    other speakers' recordings and "test" all of that speaker's.
    """

    def __init__(self, split: str = "train", *, holdout_speaker: str | None = None,
                 root: str | Path | None = None):
        if split not in ("train", "test", "all"):
            raise ValueError(f"fsdd split {split!r} unknown; use 'train', 'test' or 'all'")
        root = Path(root) if root is not None else paths.data_dir() / "fsdd"
        speakers = json.loads((root / "speakers.json").read_text())
        if holdout_speaker and holdout_speaker not in speakers:
            raise ValueError(f"fsdd holdout_speaker {holdout_speaker!r} unknown; choose one of "
                             f"{sorted(speakers)}")
        records = []
        for digit, speaker, index, path in fsdd_files(root):
            if not fsdd_in_split(index, speaker, split, holdout_speaker):
                continue
            info = speakers.get(speaker, {})
            records.append({
                "id": path.stem, "text": DIGIT_WORDS[digit], "intent": str(digit),
                "entities": [], "speaker": speaker, "audio_path": path,
                "meta": {"accent": info.get("accent", ""), "gender": info.get("gender", "")},
            })
        super().__init__("fsdd", split, records)


@DATASETS.register("fsdd")
def fsdd(split: str = "train", *, holdout_speaker: str | None = None) -> FsddSource:
    return FsddSource(split, holdout_speaker=holdout_speaker)


# ------------------------------------------------------------------------------------------
# SLURP text
# ------------------------------------------------------------------------------------------


def token_to_word(tokens: Sequence[str], words: Sequence[str]) -> list[tuple[int, int]]:
    """The words each SLURP token covers, as (first word, last word) inclusive.

    SLURP tokens split words further ("what's" -> "what", "'s"), sometimes join them
    ("grassmarket" for "grass market") and a few differ in spelling or case from the sentence
    ("obaba" vs "obama"). The two are aligned character by character (spaces removed,
    lowercased) with difflib; a token none of whose characters align takes the last word of the
    previous token (or word 0).
    """
    import difflib

    t_chars = [c for t in tokens for c in t.lower()]
    w_chars, w_owner = [], []
    for k, w in enumerate(words):
        w_chars.extend(w.lower())
        w_owner.extend([k] * len(w))
    if t_chars == w_chars:
        char_map = {c: c for c in range(len(t_chars))}
    else:
        char_map = {}
        sm = difflib.SequenceMatcher(None, t_chars, w_chars, autojunk=False)
        for a, b, n in sm.get_matching_blocks():
            for d in range(n):
                char_map[a + d] = b + d
    out: list[tuple[int, int]] = []
    first_char = 0
    for t in tokens:
        mapped = [w_owner[char_map[c]] for c in range(first_char, first_char + len(t))
                  if c in char_map]
        if mapped:
            out.append((min(mapped), max(mapped)))
        else:
            prev = out[-1][1] if out else 0
            out.append((prev, prev))
        first_char += len(t)
    return out


def slurp_records(path: Path) -> list[dict[str, Any]]:
    """All SLURP devel lines as records (text lowercased; entities as word spans).

    The text is the SLURP sentence lowercased and otherwise as written ("u. s. d.", "@"), so
    entity word spans index it directly. `meta["split"]` is `jaxslu.audio.corpus.split_of`
    (80/10/10 "train"/"dev"/"test" by a hash of slurp_id), the rule the spoken SLURP corpus uses,
    so a sentence is in the same split in "slurp_text" and "spoken_slurp".
    """
    from jaxslu.audio.corpus import split_of

    if not path.is_file():
        raise FileNotFoundError(f"SLURP text {str(path)!r} not found; it ships in data/slurp/ "
                                "of the jaxslu checkout (or set JAXSLU_DATA)")
    records = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        d = json.loads(line)
        words = d["sentence"].lower().split()
        owner = token_to_word([t["surface"] for t in d["tokens"]], words)
        entities = []
        for e in d["entities"]:
            covered = [owner[t] for t in e["span"]]
            entities.append({"type": e["type"], "start": min(lo for lo, _ in covered),
                             "end": max(hi for _, hi in covered) + 1})
        records.append({
            # SLURP's `intent` field is scenario_action for all but ~1.5% of devel lines, where
            # it holds the action alone ("music" for play_music); the pair is the label.
            "id": f"slurp/{d['slurp_id']}", "text": " ".join(words),
            "intent": f"{d['scenario']}_{d['action']}",
            "entities": entities, "speaker": "",
            "meta": {"scenario": d["scenario"], "action": d["action"],
                     "slurp_id": d["slurp_id"], "split": split_of(d["slurp_id"])},
        })
    return records


@DATASETS.register("slurp_text")
def slurp_text(split: str = "train") -> ExampleSource:
    """SLURP devel text, no audio. Splits "train"/"dev"/"test" (80/10/10 by hash) or "all"."""
    if split not in ("train", "dev", "test", "all"):
        raise ValueError(f"slurp_text split {split!r} unknown; use 'train', 'dev', 'test' or 'all'")
    recs = slurp_records(paths.data_dir() / "slurp" / "devel.jsonl")
    return ExampleSource("slurp_text", split,
                         [r for r in recs if split == "all" or r["meta"]["split"] == split])


# ------------------------------------------------------------------------------------------
# CLINC150
# ------------------------------------------------------------------------------------------


@DATASETS.register("clinc150")
def clinc150(split: str = "train") -> ExampleSource:
    """CLINC150 text, no audio; `meta["domain"]` from domains.json ("oos" for out-of-scope).

    Splits are the keys of data_full.json ("train", "val", "test", "oos_train", "oos_val",
    "oos_test"), or several joined with "+" (e.g. "test+oos_test" for open-set evaluation).
    """
    root = paths.data_dir() / "clinc150"
    data = json.loads((root / "data_full.json").read_text())
    domains = json.loads((root / "domains.json").read_text())
    domain_of = {intent: dom for dom, intents in domains.items() for intent in intents}
    parts = split.split("+")
    for p in parts:
        if p not in data:
            raise ValueError(f"clinc150 split {p!r} unknown; use one of {sorted(data)} or several "
                             "joined with '+'")
    records = []
    for p in parts:
        for k, (text, intent) in enumerate(data[p]):
            records.append({"id": f"clinc150/{p}/{k}", "text": text, "intent": intent,
                            "entities": [], "speaker": "",
                            "meta": {"domain": domain_of.get(intent, "oos")}})
    return ExampleSource("clinc150", split, records)


# ------------------------------------------------------------------------------------------
# Manifests and the synthesized spoken SLURP
# ------------------------------------------------------------------------------------------

_MANIFEST_CORE = ("id", "path", "text", "intent", "entities", "speaker", "split")


def read_manifest(path: str | Path, split: str) -> list[dict[str, Any]]:
    """Records of `split` ("all" for every line) from a manifest.jsonl.

    Required per line: "id", "path" (relative to the manifest's folder, or absolute), "text".
    Optional: "intent", "entities" (word spans), "speaker", "split"; every other key goes to meta.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {str(path)!r} does not exist; pass "
                                "data.options.path=<your manifest.jsonl>")
    records, splits = [], set()
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"manifest {str(path)!r} line {line_no} is not JSON: {e}") from e
        missing = [k for k in ("id", "path", "text") if k not in d]
        if missing:
            raise ValueError(f"manifest {str(path)!r} line {line_no} lacks {missing}; every line "
                             "needs 'id', 'path' (audio file) and 'text'")
        splits.add(d.get("split"))
        if split != "all" and d.get("split") != split:
            continue
        n_words = len(d["text"].split())
        for e in d.get("entities", []):
            if not 0 <= e["start"] < e["end"] <= n_words:
                raise ValueError(f"manifest {str(path)!r} line {line_no}: entity {e} is not a "
                                 f"word span [start, end) of the {n_words}-word text")
        records.append({
            "id": str(d["id"]), "text": d["text"], "intent": d.get("intent"),
            "entities": [{"type": e["type"], "start": int(e["start"]), "end": int(e["end"])}
                         for e in d.get("entities", [])],
            "speaker": d.get("speaker", ""), "audio_path": path.parent / d["path"],
            "meta": {k: v for k, v in d.items() if k not in _MANIFEST_CORE},
        })
    if not records:
        raise ValueError(f"manifest {str(path)!r} has no examples in split {split!r}; its splits "
                         f"are {sorted(str(s) for s in splits)} (or use 'all')")
    return records


@DATASETS.register("manifest")
def manifest(split: str = "train", *, path: str = "") -> ExampleSource:
    if not path:
        raise ValueError("dataset 'manifest' needs data.options.path=<manifest.jsonl>")
    return ExampleSource("manifest", split, read_manifest(path, split))


SPOKEN_SLURP_MANIFEST = "manifest.jsonl"


def spoken_slurp_dir(num_speakers: int, utterances: int | None, seed: int,
                     cache_dir: str = "", speakers_per_sentence: int = 1) -> Path:
    """The cache folder for one parameter set: spoken_slurp-<hash of the parameters>."""
    params = {"num_speakers": num_speakers, "utterances": utterances, "seed": seed}
    if speakers_per_sentence != 1:  # corpora built before the option keep their folder
        params["speakers_per_sentence"] = speakers_per_sentence
    key = json.dumps(params, sort_keys=True)
    return paths.cache_dir(cache_dir) / f"spoken_slurp-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


@DATASETS.register("spoken_slurp")
def spoken_slurp(split: str = "train", *, num_speakers: int = 16, utterances: int | None = None,
                 seed: int = 0, cache_dir: str = "", speakers_per_sentence: int = 1,
                 build: Callable[..., Any] | None = None) -> ExampleSource:
    """SLURP text spoken by synthetic speakers (speaker, accent, lat, lon in meta);
    `speakers_per_sentence` > 1 has each sentence spoken by that many speakers.

    Built once per parameter set with `jaxslu.audio.corpus.build_spoken_slurp` (or `build`, same
    signature) into cache_dir/spoken_slurp-<hash>; later calls only read its manifest.
    """
    out = spoken_slurp_dir(num_speakers, utterances, seed, cache_dir, speakers_per_sentence)
    manifest_path = out / SPOKEN_SLURP_MANIFEST
    if not manifest_path.is_file():
        if build is None:
            from jaxslu.audio.corpus import build_spoken_slurp as build
        log.info("building spoken SLURP (%d speakers) into %s", num_speakers, out)
        extra = {} if speakers_per_sentence == 1 else {
            "speakers_per_sentence": speakers_per_sentence}
        manifest_path = Path(build(out, num_speakers=num_speakers, utterances=utterances,
                                   seed=seed, **extra))
    return ExampleSource("spoken_slurp", split, read_manifest(manifest_path, split))
