"""Context-dependent requests with ground truth, mixed into the SLURP-style NLU data.

An ambiguous request means different things in different contexts: "what is the temperature"
asks about the oven while the oven is on and about the weather otherwise. `FAMILIES` lists seven
such request families. Each has six paraphrases and a rule from the context record
(jaxslu/context/features.py) to the intent. The rules are the ground truth by construction,
with a fixed priority where several readings apply (an alarm that is ringing is what "stop"
stops, before the music).

The dataset `context_nlu` (every example carries `meta["context"]`):
  * train: `slurp_nlu` train (HWU64 train + SLURP devel's train part) plus, per family, its first
    four paraphrases (the train phrases) in `per_phrase` contexts each;
  * dev: `slurp_nlu` dev plus the train phrases in fresh contexts;
  * ambiguous_seen: the train phrases in `test_per_phrase` fresh contexts each (the phrasing
    is known, the context combination is new: does the model read the context?);
  * ambiguous_test: the last two paraphrases of every family (never seen in training) in
    `test_per_phrase` contexts each (does the model also recognize a new phrasing?);
  * slurp_test, hwu64_test: as in `slurp_nlu`, each with a random context.
The SLURP / HWU64 examples get a context drawn at random: there it carries no information, and a
model must learn to ignore it. Examples whose text is one of the families' paraphrases are
dropped from them, so that no unambiguous copy contradicts a rule. For an ambiguous example the
target reading is drawn uniformly over the family's readings and the context is then drawn until
the rule gives that reading, so every reading is equally frequent: a model that ignores the
context is right at most 1/readings of the time on average (the majority reading of a
paraphrase, computed by `majority_baseline`). All draws are deterministic from `seed`.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable

import numpy as np

from jaxslu.data.sources import ExampleSource
from jaxslu.registry import DATASETS

DEVICE_STATES = ("alarm_ringing", "lights_on", "music_playing", "oven_on", "timer_running",
                 "tv_on")
DEVICE_TYPES = ("car", "screen", "speaker")
RECENT_DOMAINS = ("calendar", "cooking", "music", "news", "weather")
STATE_PROB = 0.25
TRAIN_PHRASES = 4  # of each family's six: the rest are the test phrases
SPLITS = ("train", "dev", "ambiguous_seen", "ambiguous_test", "slurp_test", "hwu64_test")


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    phrases: tuple[str, ...]
    readings: tuple[str, ...]  # every intent the rule can give
    rule: Callable[[dict[str, Any]], str]


def _on(ctx, state):
    return state in ctx.get("device_states", ())


def _temperature(ctx):
    return "iot_oven_query" if _on(ctx, "oven_on") else "weather_query"


def _turn_up(ctx):
    if _on(ctx, "music_playing") or _on(ctx, "tv_on"):
        return "audio_volume_up"
    return "iot_hue_lightup" if _on(ctx, "lights_on") else "audio_volume_up"


def _stop(ctx):
    for state, intent in (("alarm_ringing", "alarm_remove"), ("timer_running", "timer_remove"),
                          ("music_playing", "general_commandstop"), ("tv_on", "iot_tv_off"),
                          ("oven_on", "iot_oven_off"), ("lights_on", "iot_hue_lightoff")):
        if _on(ctx, state):
            return intent
    return "general_commandstop"


def _next(ctx):
    if _on(ctx, "music_playing"):
        return "music_next"
    recent = ctx.get("recent_domain")
    if recent == "cooking":
        return "cooking_nextstep"
    return "calendar_query"


def _follow_up(ctx):
    return {"weather": "weather_query", "news": "news_query"}.get(ctx.get("recent_domain"),
                                                                 "calendar_query")


def _play(ctx):
    return {"screen": "play_video", "car": "play_radio"}.get(ctx.get("device_type"),
                                                            "play_podcasts")


def _whats_on(ctx):
    hour = ctx.get("hour")
    if hour is not None and 5 <= hour < 12:
        return "news_query"
    if hour is not None and hour >= 17:
        return "iot_tv_query"
    return "calendar_query"


FAMILIES = (
    Family("temperature", ("what is the temperature", "how hot is it", "what's the temperature now",
                           "tell me the temperature", "how warm is it", "what temperature is it"),
           ("iot_oven_query", "weather_query"), _temperature),
    Family("turn_up", ("turn it up", "crank it up", "increase it", "raise it a bit", "up a bit",
                       "turn it up a notch"),
           ("audio_volume_up", "iot_hue_lightup"), _turn_up),
    Family("stop", ("stop", "stop it", "turn it off", "cancel that", "that's enough",
                    "shut it off"),
           ("alarm_remove", "timer_remove", "general_commandstop", "iot_tv_off", "iot_oven_off",
            "iot_hue_lightoff"), _stop),
    Family("next", ("what's next", "next one", "go to the next one", "next please",
                    "what comes next", "and then what"),
           ("music_next", "cooking_nextstep", "calendar_query"), _next),
    Family("follow_up", ("what about tomorrow", "and tomorrow", "how about the weekend",
                         "and next week", "what about friday", "how about monday"),
           ("weather_query", "news_query", "calendar_query"), _follow_up),
    Family("play", ("play the latest episode", "put something on", "play the next episode",
                    "start the show", "play the highlights", "put it on"),
           ("play_video", "play_radio", "play_podcasts"), _play),
    Family("whats_on", ("what's on", "anything on", "what's on now", "what's happening",
                        "anything good on", "what is going on"),
           ("news_query", "iot_tv_query", "calendar_query"), _whats_on),
)
_PHRASES = {p for f in FAMILIES for p in f.phrases}


def _rng(seed: int, *key) -> np.random.Generator:
    digest = hashlib.sha256(repr((seed, *key)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def random_context(rng: np.random.Generator) -> dict[str, Any]:
    """A context drawn uniformly: each device state on with probability STATE_PROB, a device
    type, an integer hour and a recent domain (or none, one time in six)."""
    states = [s for s in DEVICE_STATES if rng.random() < STATE_PROB]
    recent = rng.integers(len(RECENT_DOMAINS) + 1)
    ctx: dict[str, Any] = {"device_states": states,
                           "device_type": DEVICE_TYPES[rng.integers(len(DEVICE_TYPES))],
                           "hour": int(rng.integers(24))}
    if recent < len(RECENT_DOMAINS):
        ctx["recent_domain"] = RECENT_DOMAINS[recent]
    return ctx


def context_for(family: Family, intent: str, rng: np.random.Generator,
                max_tries: int = 10000) -> dict[str, Any]:
    """A random context in which `family.rule` gives `intent` (rejection sampling)."""
    for _ in range(max_tries):
        ctx = random_context(rng)
        if family.rule(ctx) == intent:
            return ctx
    raise AssertionError(f"family {family.name}: no context gives {intent} in {max_tries} draws")


def ambiguous_records(which: str, per_phrase: int, seed: int, part: str) -> list[dict]:
    """`per_phrase` examples of each family's train ("train") or test ("test") phrases."""
    records = []
    for family in FAMILIES:
        chosen = (family.phrases[:TRAIN_PHRASES] if which == "train"
                  else family.phrases[TRAIN_PHRASES:])
        for phrase in chosen:
            rng = _rng(seed, "ambiguous", part, family.name, phrase)
            for k in range(per_phrase):
                intent = family.readings[rng.integers(len(family.readings))]
                ctx = context_for(family, intent, rng)
                records.append({"id": f"context/{part}/{family.name}/{phrase}/{k}",
                                "text": phrase, "intent": intent, "entities": [], "speaker": "",
                                "meta": {"domain": intent.split("_")[0], "context": ctx,
                                         "family": family.name, "ambiguous": True}})
    return records


def _with_random_context(source: ExampleSource, seed: int, part: str) -> list[dict]:
    out = []
    for r in (source.metadata(i) for i in range(len(source))):
        if " ".join(r["text"].split()) in _PHRASES:
            continue
        ctx = random_context(_rng(seed, "plain", part, r["id"]))
        out.append(dict(r, meta=dict(r.get("meta") or {}, context=ctx, ambiguous=False)))
    return out


@DATASETS.register("context_nlu")
def context_nlu(split: str = "train", *, per_phrase: int = 120, test_per_phrase: int = 30,
                seed: int = 0, hwu64_path: str = "") -> ExampleSource:
    """The context benchmark (see the module docstring); several splits joined with '+'."""
    from jaxslu.nlu.data import slurp_nlu

    if per_phrase < 1 or test_per_phrase < 1:
        raise ValueError(f"context_nlu: per_phrase={per_phrase} and test_per_phrase="
                         f"{test_per_phrase} must be >= 1")
    records: list[dict] = []
    for part in split.split("+"):
        if part == "train":
            records += _with_random_context(slurp_nlu("train", hwu64_path=hwu64_path),
                                            seed, part)
            records += ambiguous_records("train", per_phrase, seed, part)
        elif part == "dev":
            records += _with_random_context(slurp_nlu("dev", hwu64_path=hwu64_path),
                                            seed, part)
            records += ambiguous_records("train", max(1, per_phrase // 4), seed, part)
        elif part == "ambiguous_seen":
            records += ambiguous_records("train", test_per_phrase, seed, part)
        elif part == "ambiguous_test":
            records += ambiguous_records("test", test_per_phrase, seed, part)
        elif part in ("slurp_test", "hwu64_test"):
            records += _with_random_context(slurp_nlu(part, hwu64_path=hwu64_path),
                                            seed, part)
        else:
            raise ValueError(f"context_nlu split {part!r} unknown; use one of {SPLITS} (or "
                             "several joined with '+')")
    return ExampleSource("context_nlu", split, records)


def majority_baseline(records: list[dict]) -> float:
    """Accuracy of the best context-blind answer: each text's most frequent intent."""
    import collections

    by_text: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in records:
        by_text[r["text"]][r["intent"]] += 1
    return sum(c.most_common(1)[0][1] for c in by_text.values()) / max(1, len(records))
