"""The spoken context benchmark: context-dependent requests as audio, for the E2E SLU transducer.

The dataset `spoken_context` is the `context_nlu` construction (jaxslu/context/data.py) spoken
by the synthetic eSpeak NG panel of the spoken SLU corpus (jaxslu/audio/spoken_nlu.py), with
the test splits spoken by speakers never heard in training. Every example carries
`meta["context"]` (and `family`, `ambiguous`).

Choices that were open:
- Intent set: the readings of the seven ambiguous families (18 intents, e.g. weather_query,
  iot_oven_query, audio_volume_up). The ordinary requests are the HWU64 / SLURP examples of
  those intents (`slurp_nlu`, 1720 in training), each with a random context that carries no
  information; the intents that only the ambiguous requests have (iot_oven_query, ...) are
  learned from them. A closed intent set keeps the E2E training within a CPU budget and keeps
  every ambiguous reading a class the model trains on.
- Splits: "train" (ordinary train requests + `per_phrase` examples of each family's four
  training phrases, training speakers), "dev" (ordinary dev requests + per_phrase // 10 per
  training phrase), "ambiguous_seen" (the training phrases in `test_per_phrase` new contexts
  each), "ambiguous_test" (the two phrases per family never seen in training, `test_per_phrase`
  each) and "ordinary_test" (the ordinary requests of slurp_test and hwu64_test); all but
  "train" spoken by the test speakers. Contexts and target readings are drawn exactly as in
  `context_nlu` (each reading of a family equally frequent).
- Order: each split is shuffled with a seeded permutation before rendering, so that
  `limit_per_split=N` (tests, pilots) keeps a mix of ambiguous and ordinary requests.
- One speaker per sentence on both sides (an ambiguous request in a new context is a new
  sentence id, so the 1680 training examples of the 28 training phrases are spoken by the 48
  training speakers in turn, each with its own jitter, noise and reverberation draws).
"""
from __future__ import annotations

from typing import Any, Callable

from jaxslu.context.data import FAMILIES, _rng, _with_random_context, ambiguous_records
from jaxslu.data.sources import ExampleSource, read_manifest
from jaxslu.registry import DATASETS

SPOKEN_SPLITS = ("train", "dev", "ambiguous_seen", "ambiguous_test", "ordinary_test")
EXTRA_META = ("context", "family", "ambiguous")


def reading_intents() -> tuple[str, ...]:
    """Every intent an ambiguous family can mean (the benchmark's intent set)."""
    return tuple(sorted({r for f in FAMILIES for r in f.readings}))


def _ordinary(parts: tuple[str, ...], seed: int, split: str, hwu64_path: str) -> list[dict]:
    from jaxslu.nlu.data import slurp_nlu

    keep = set(reading_intents())
    out = []
    for part in parts:
        recs = _with_random_context(slurp_nlu(part, hwu64_path=hwu64_path), seed, split)
        out += [r for r in recs if r.get("intent") in keep]
    return out


def spoken_context_texts(*, per_phrase: int = 60, test_per_phrase: int = 15, seed: int = 0,
                         hwu64_path: str = "") -> dict[str, list[dict[str, Any]]]:
    """{split: text records (id, text, intent, entities, meta with context)}, each split in its
    seeded rendering order (module docstring)."""
    if per_phrase < 10 or test_per_phrase < 1:
        raise ValueError(f"spoken_context: per_phrase={per_phrase} must be >= 10 and "
                         f"test_per_phrase={test_per_phrase} >= 1")
    texts = {
        "train": _ordinary(("train",), seed, "train", hwu64_path)
        + ambiguous_records("train", per_phrase, seed, "train"),
        "dev": _ordinary(("dev",), seed, "dev", hwu64_path)
        + ambiguous_records("train", per_phrase // 10, seed, "dev"),
        "ambiguous_seen": ambiguous_records("train", test_per_phrase, seed, "ambiguous_seen"),
        "ambiguous_test": ambiguous_records("test", test_per_phrase, seed, "ambiguous_test"),
        "ordinary_test": _ordinary(("slurp_test", "hwu64_test"), seed, "ordinary_test",
                                   hwu64_path),
    }
    out = {}
    for split, recs in texts.items():
        order = _rng(seed, "spoken_context_order", split).permutation(len(recs))
        out[split] = [recs[int(i)] for i in order]
    return out


@DATASETS.register("spoken_context")
def spoken_context(split: str = "train", *, per_phrase: int = 60, test_per_phrase: int = 15,
                   num_train_speakers: int = 48, num_test_speakers: int = 16, seed: int = 0,
                   limit_per_split: int | None = None, cache_dir: str = "",
                   build: Callable[..., Any] | None = None, **options) -> ExampleSource:
    """The spoken context benchmark (module docstring). Splits "train", "dev",
    "ambiguous_seen", "ambiguous_test", "ordinary_test", several joined with "+", or "all".

    Rendered once per parameter set into cache_dir/spoken_context-<hash> (resumable; the
    manifest name holds limit_per_split). Further options (noise_prob, snr_db, reverb_prob,
    sample_rate, ...) are those of `jaxslu.audio.spoken_nlu.build_spoken_nlu`."""
    from jaxslu.audio.spoken_nlu import (_check_limit, build_spoken_nlu, corpus_dir,
                                         corpus_params, manifest_name)

    parts = split.split("+")
    bad = [p for p in parts if p not in SPOKEN_SPLITS + ("all",)]
    if bad:
        raise ValueError(f"spoken_context split {'+'.join(bad)!r} unknown; use one of "
                         f"{SPOKEN_SPLITS}, several joined with '+', or 'all'")
    params = corpus_params(num_train_speakers=num_train_speakers,
                           num_test_speakers=num_test_speakers, speakers_per_sentence=1,
                           test_speakers_per_sentence=1, seed=seed, **options)
    key = {**params, "per_phrase": int(per_phrase), "test_per_phrase": int(test_per_phrase)}
    limit = _check_limit(limit_per_split)
    out = corpus_dir(key, cache_dir, name="spoken_context")
    manifest = out / manifest_name(limit)
    if not manifest.is_file():
        texts = spoken_context_texts(per_phrase=per_phrase, test_per_phrase=test_per_phrase,
                                     seed=seed)
        kwargs = {k: v for k, v in params.items() if k != "format"}
        manifest = (build or build_spoken_nlu)(out, limit_per_split=limit, texts=texts,
                                               splits=SPOKEN_SPLITS, extra_meta=EXTRA_META,
                                               **kwargs)
    records = []
    for p in dict.fromkeys(parts):
        records += read_manifest(manifest, p)
    return ExampleSource("spoken_context", split, records)


__all__ = ["SPOKEN_SPLITS", "reading_intents", "spoken_context_texts", "spoken_context"]
