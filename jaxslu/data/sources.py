"""Data sources: random-access corpora that yield the Example dict of docs/DESIGN.md.

Every source is a grain `RandomAccessDataSource` (`__len__`, `__getitem__`) plus two cheap
accessors that never touch audio: `text(i)` and `metadata(i)` (everything but the waveform), which
is what vocabularies, tokenizer training and per-speaker reports read.

Registered in `jaxslu.registry.DATASETS` (factory `(split, **options) -> source`):

* ``fsdd``: the bundled Free Spoken Digit Dataset (8 kHz WAVs; standard index split or a
  held-out speaker). Options: ``holdout_speaker`` (leave-one-speaker-out: "train" = the other
  four speakers, "test" = all of that speaker's recordings); ``synthetic_ratio`` (float >= 0,
  default 0): the "train" split (only; "test" and "all" never) is the real recordings followed
  by round-half-up(ratio x n_real) synthetic digits spoken by eSpeak NG over all accents and
  voice variants at 8 kHz (`jaxslu.audio.digits`), built once into
  ``<cache_dir>/synthetic_digits-<key of synthetic_seed and the recipe>/`` and reused (a larger
  ratio extends the corpus); ``synthetic_seed`` (int >= 0, default 0); ``cache_dir`` (as
  spoken_slurp: "" -> $JAXSLU_CACHE or ~/.cache/jaxslu). Every fsdd record has
  ``meta["synthetic"]`` (False for the real recordings).
* ``slurp_text``: SLURP devel text (no audio), entities converted from token to word spans,
  deterministic 80/10/10 train/dev/test split by a hash of ``slurp_id`` (as spoken_slurp).
* ``clinc150``: CLINC150 intents (no audio); out-of-scope queries have intent ``"oos"``.
* ``spoken_slurp``: SLURP text synthesized to speech by `jaxslu.audio.corpus.build_spoken_slurp`,
  built once into the cache and then served from its manifest.
* ``spoken_nlu``: the ``slurp_nlu`` text mix (HWU64 train + SLURP devel) spoken by a panel of
  synthetic speakers, training and test speakers disjoint (`jaxslu.audio.spoken_nlu`); built
  once into ``<cache_dir>/spoken_nlu-<hash>`` and then served from its manifest.
* ``manifest``: any ``manifest.jsonl`` (researchers' own data).

Audio is returned at its native sample rate (`sample_rate` in the Example); the pipeline resamples.
A failed audio read raises `ExampleReadError` naming the example id and the file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
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
    other speakers' recordings and "test" all of that speaker's. meta: accent, gender (from
    speakers.json) and synthetic False.

    synthetic_ratio r > 0 adds n_syn = floor(r * n_real + 0.5) synthetic clips after the n_real
    real recordings of the "train" split (the "test" and "all" splits are never changed): clip k
    speaks DIGIT_WORDS[k % 10] with a voice, variant, rate, pitch and SNR drawn from
    (synthetic_seed, k) (see `jaxslu.audio.digits`), speaker "synth_<voice>_<variant|base>",
    meta voice, variant, gender, accent, rate, pitch, noise_snr_db, synthetic True, ... The
    corpus is built by `jaxslu.audio.digits.build_synthetic_digits` (or `synthetic_build`, same
    signature) into `synthetic_digits_dir(synthetic_seed, cache_dir)` the first time it holds
    fewer than n_syn clips, then served from its manifest; clip k does not depend on how many
    are built, so the leave-one-speaker-out train splits (2000 real) and the standard one
    (2250) share one corpus.
    """

    def __init__(self, split: str = "train", *, holdout_speaker: str | None = None,
                 root: str | Path | None = None, synthetic_ratio: float = 0.0,
                 synthetic_seed: int = 0, cache_dir: str = "",
                 synthetic_build: Callable[..., Any] | None = None):
        if split not in ("train", "test", "all"):
            raise ValueError(f"fsdd split {split!r} unknown; use 'train', 'test' or 'all'")
        ratio = _check_synthetic_ratio(synthetic_ratio)
        if (isinstance(synthetic_seed, bool) or not isinstance(synthetic_seed, (int, np.integer))
                or synthetic_seed < 0):
            raise ValueError(f"fsdd option synthetic_seed must be an integer >= 0, got "
                             f"{synthetic_seed!r}; set data.options.synthetic_seed=0 (or another "
                             "non-negative int)")
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
                "meta": {"accent": info.get("accent", ""), "gender": info.get("gender", ""),
                         "synthetic": False},
            })
        self.num_real = len(records)
        self.num_synthetic = 0
        if split == "train" and ratio > 0 and records:
            n_syn = int(math.floor(ratio * len(records) + 0.5))
            if n_syn:
                records += synthetic_digit_records(n_syn, int(synthetic_seed), cache_dir,
                                                   synthetic_build)
                self.num_synthetic = n_syn
        super().__init__("fsdd", split, records)


def _check_synthetic_ratio(value: Any) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)) or float(value) < 0:
        raise ValueError(f"fsdd option synthetic_ratio must be a finite number >= 0 (synthetic "
                         f"training clips per real one, e.g. 0.5; 0 = real data only), got "
                         f"{value!r}; set data.options.synthetic_ratio accordingly")
    return float(value)


SYNTHETIC_DIGITS_SAMPLE_RATE = 8000  # FSDD's rate: real and synthetic clips share a bandwidth


def synthetic_digits_dir(seed: int = 0, cache_dir: str = "") -> Path:
    """The cache folder of the synthetic digits of `seed`: synthetic_digits-<corpus key>, the key
    a hash of the seed, the 8 kHz rate and the recipe (`jaxslu.audio.digits.corpus_key`), not
    of the number of clips."""
    from jaxslu.audio.digits import corpus_key

    return paths.cache_dir(cache_dir) / (
        f"synthetic_digits-{corpus_key(seed, SYNTHETIC_DIGITS_SAMPLE_RATE)}")


def synthetic_digit_records(n: int, seed: int = 0, cache_dir: str = "",
                            build: Callable[..., Any] | None = None) -> list[dict[str, Any]]:
    """The first `n` synthetic digit records of `seed`, building (or extending) the cached corpus
    when its manifest holds fewer, or other, clips."""
    from jaxslu.audio.digits import MANIFEST, utterance_id

    out = synthetic_digits_dir(seed, cache_dir)
    manifest_path = out / MANIFEST
    recs = read_manifest(manifest_path, "all") if manifest_path.is_file() else []
    if len(recs) < n or any(recs[k]["id"] != utterance_id(k) for k in range(n)):
        if build is None:
            from jaxslu.audio.digits import build_synthetic_digits as build
        log.info("building %d synthetic FSDD digits (seed %d) into %s", n, seed, out)
        manifest_path = Path(build(out, num_utterances=n, seed=seed,
                                   sample_rate=SYNTHETIC_DIGITS_SAMPLE_RATE))
        recs = read_manifest(manifest_path, "all")
        if len(recs) < n:
            raise ValueError(f"synthetic digit manifest {str(manifest_path)!r} holds {len(recs)} "
                             f"clips, {n} were asked for; delete {str(out)!r} and retry")
    return recs[:n]


@DATASETS.register("fsdd")
def fsdd(split: str = "train", *, holdout_speaker: str | None = None,
         synthetic_ratio: float = 0.0, synthetic_seed: int = 0, cache_dir: str = "",
         synthetic_build: Callable[..., Any] | None = None) -> FsddSource:
    """FSDD (see FsddSource): `holdout_speaker`, and `synthetic_ratio` synthetic eSpeak NG
    digits per real recording in the train split (seed `synthetic_seed`, cached in cache_dir)."""
    return FsddSource(split, holdout_speaker=holdout_speaker, synthetic_ratio=synthetic_ratio,
                      synthetic_seed=synthetic_seed, cache_dir=cache_dir,
                      synthetic_build=synthetic_build)


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


SPOKEN_NLU_SPLITS = ("train", "dev", "slurp_test", "hwu64_test")


@DATASETS.register("spoken_nlu")
def spoken_nlu(split: str = "train", *, num_train_speakers: int = 48, num_test_speakers: int = 16,
               speakers_per_sentence: int = 2, test_speakers_per_sentence: int = 1,
               seed: int = 0, limit_per_split: int | None = None, cache_dir: str = "",
               build: Callable[..., Any] | None = None, **options) -> ExampleSource:
    """The `slurp_nlu` text mix spoken by synthetic speakers, unseen speakers in the held-out
    splits (`jaxslu.audio.spoken_nlu`). Splits "train" (training speakers only), "dev",
    "slurp_test", "hwu64_test" (test speakers only), or several joined with "+", or "all".

    Built once per parameter set with `build_spoken_nlu` (or `build`, same signature) into
    cache_dir/spoken_nlu-<hash of the parameters but limit_per_split>, whose manifest name holds
    limit_per_split (so a pilot and the full corpus share their audio); later calls only read
    the manifest. Further options (noise_prob, snr_db, noise_beta, reverb_prob, rt60_s, drr_db,
    sample_rate) are those of build_spoken_nlu; meta holds accent, gender, lat, lon, voice,
    variant, rate, pitch, snr_db, rt60, source, domain, ...
    """
    parts = split.split("+")
    bad = [p for p in parts if p not in SPOKEN_NLU_SPLITS + ("all",)]
    if bad:
        raise ValueError(f"spoken_nlu split {'+'.join(bad)!r} unknown; use one of "
                         f"{SPOKEN_NLU_SPLITS}, several joined with '+', or 'all'")
    from jaxslu.audio.spoken_nlu import spoken_nlu_manifest

    manifest_path = spoken_nlu_manifest(
        cache_dir=cache_dir, limit_per_split=limit_per_split, build=build,
        num_train_speakers=num_train_speakers, num_test_speakers=num_test_speakers,
        speakers_per_sentence=speakers_per_sentence,
        test_speakers_per_sentence=test_speakers_per_sentence, seed=seed, **options)
    records = []
    for p in dict.fromkeys(parts):
        records += read_manifest(manifest_path, p)
    return ExampleSource("spoken_nlu", split, records)
