"""The device-directedness corpus: requests to the assistant and speech between people, spoken
by the same synthetic voices.

Directed (label 1): the spoken SLU corpus's own utterances (jaxslu/audio/spoken_nlu.py): its
"train" split for training, "slurp_test" + "hwu64_test" (speakers never heard in training) for
testing. They are not rendered again: the manifest points at the spoken corpus's files.

Not directed (label 0): conversational sentences from `conversational_texts`: templates of
talk between people (plans, news about family, opinions, requests to someone in the room) with
fillers, casual openers ("oh", "by the way") and tags ("right", "i guess"), including hard
negatives that contain command words ("she asked me to set an alarm
for six"). Training and test use disjoint templates, so a model cannot learn the test
sentences' wording. Each is spoken by a speaker of the same side of the panel as the spoken
corpus (`make_nlu_speakers`: training voices for training, unseen voices for the test) with,
with probability `conversational_prob`, conversational delivery: faster (rate x U(1.05, 1.3)),
a pitch shifted by U(5, 15) in a random direction, quieter (U(4, 14) dB down), low-passed
(2nd-order Butterworth, cutoff U(1.5, 4) kHz, a talker facing away) and always reverberant with
a low direct-to-reverberant ratio (U(-6, 4) dB). Otherwise the delivery is the spoken corpus's
(the same rate, pitch, noise and reverberation draws), so the acoustics alone cannot always tell.

`build_directedness(out_dir, spoken_manifest, ...)` writes out_dir/audio/*.flac and, last,
out_dir/manifest.jsonl (the `manifest` dataset's format): id, path, text, intent (null for not
directed), speaker, split ("train" / "test"), directed (1 / 0), delivery ("command" /
"conversational" / "plain"), accent, gender and the rendering values. Deterministic from `seed`;
files are cached by a hash of what determines them, so a rerun renders nothing.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jaxslu.audio.corpus import _atomic_write_text, cached_clip
from jaxslu.audio.perturb import add_noise, coloured_noise, reverberate, synthetic_rir
from jaxslu.audio.spoken_nlu import (FORMAT_VERSION, NluSpeaker, corpus_params, peak_safe,
                                     utterance_params)
from jaxslu.audio.synth import PITCH_RANGE, RATE_RANGE, espeak_version, synthesize

_STREAM = 0xD1DE
FORMAT = 1

_FILL = {
    "name": ["sam", "maria", "alex", "priya", "tom", "grandma", "your brother", "jess", "omar",
             "the kids", "dad", "my boss", "lucy", "ben", "the neighbours", "aunt rose"],
    "day": ["tomorrow", "on friday", "this weekend", "next week", "tonight", "on monday",
            "after work", "in the morning", "on sunday", "later"],
    "food": ["pasta", "curry", "the leftovers", "pizza", "soup", "tacos", "that cake",
             "the salad", "noodles", "fish"],
    "place": ["the park", "the beach", "your mum's", "the city", "the gym", "the market",
              "the library", "the cinema", "the office", "school"],
    "thing": ["the keys", "my phone", "the remote", "your jacket", "the charger", "the salt",
              "the tickets", "that book", "my glasses", "the umbrella"],
    "adj": ["amazing", "so boring", "really funny", "a bit long", "too loud", "lovely",
            "awful", "better than i thought", "strange", "great"],
    "show": ["that film", "the match", "the new series", "the concert", "the play",
             "the documentary", "the game", "that show"],
    "chore": ["do the dishes", "walk the dog", "clean the kitchen", "pick up the kids",
              "take the bins out", "water the plants", "fix the tap", "call the bank"],
    "cmd": ["set an alarm for six", "play some music", "turn off the lights",
            "check the weather", "order a taxi", "add milk to the list",
            "remind me about the dentist", "call my sister"],
}

# Openers and tags of casual speech, drawn independently of the template (both splits).
OPENERS = ("", "", "", "oh ", "by the way ", "so ", "hey ", "honestly ", "anyway ", "wait ",
           "you know ", "listen ")
TAGS = ("", "", "", " right", " i guess", " anyway", " you know", " though", " or what",
        " haha")

TRAIN_TEMPLATES = (
    "did you see {show} {day}", "i think we should go to {place} {day}",
    "tell {name} i said hi", "{name} is coming over {day}", "{show} was {adj}",
    "can you pass me {thing}", "we need to {chore} {day}", "i left {thing} at {place}",
    "do you want {food} for dinner", "i'm so tired today", "{name} called about {day}",
    "have you seen {thing} anywhere", "i can't believe {show} was {adj}",
    "we could get {food} {day}", "she asked me to {cmd}", "i already told {name} to {cmd}",
    "my phone keeps trying to {cmd}", "remember when we went to {place}",
    "you have to try the {food} at {place}", "i'll {chore} when i get back",
    "what did {name} say about {show}", "honestly {food} sounds {adj}",
    "{name} wants to meet at {place}", "why is {thing} always missing",
    "he said we should {cmd} before we leave", "i was going to {chore} but i forgot",
    "let's not go to {place} {day}", "is {name} still coming {day}",
)
TEST_TEMPLATES = (
    "guess who i ran into at {place}", "i'm thinking of making {food} {day}",
    "{name} loved {show}", "could you grab {thing} for me", "we really have to {chore}",
    "i heard {show} is {adj}", "{name} told me to {cmd}", "i never know how to {cmd}",
    "are we still going to {place} {day}", "that was {adj} wasn't it",
    "don't forget {thing}", "so {name} and i went to {place}",
)


def _rng(seed: int, *key) -> np.random.Generator:
    digest = hashlib.sha256(repr(("directedness", seed, *key)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def conversational_texts(split: str, n: int, seed: int = 0) -> list[str]:
    """`n` distinct sentences from the split's templates ("train" or "test"), deterministic."""
    templates = {"train": TRAIN_TEMPLATES, "test": TEST_TEMPLATES}.get(split)
    if templates is None:
        raise ValueError(f"conversational_texts: split {split!r}; use 'train' or 'test'")
    rng = _rng(seed, "texts", split)
    out, seen, stale = [], set(), 0
    while len(out) < n and stale < 20000:  # 20000 draws in a row gave nothing new: exhausted
        stale += 1
        t = templates[rng.integers(len(templates))]
        text = (OPENERS[rng.integers(len(OPENERS))] +
                t.format(**{k: v[rng.integers(len(v))] for k, v in _FILL.items()}) +
                TAGS[rng.integers(len(TAGS))])
        text = " ".join(text.split())
        if text not in seen:
            seen.add(text)
            out.append(text)
            stale = 0
    if len(out) < n:
        raise ValueError(f"conversational_texts: only {len(out)} distinct {split} sentences "
                         f"(asked for {n})")
    return out


def lowpass(x: np.ndarray, sample_rate: int, cutoff_hz: float) -> np.ndarray:
    """2nd-order Butterworth low-pass (zero initial state)."""
    from scipy.signal import butter, lfilter

    b, a = butter(2, min(cutoff_hz, 0.45 * sample_rate) / (sample_rate / 2), btype="low")
    return lfilter(b, a, x).astype(np.float32)


def delivery_params(uid: str, text: str, speaker: NluSpeaker, spoken_params: dict[str, Any],
                    conversational_prob: float, seed: int) -> dict[str, Any]:
    """Everything that determines a not-directed utterance's samples."""
    u = utterance_params(uid, text, speaker, spoken_params)
    rng = _rng(seed, "delivery", uid, speaker.id)
    conv, rate_f, pitch_d, sign, gain, cutoff, drr, rt60 = (
        rng.random(), rng.uniform(1.05, 1.3), rng.uniform(5, 15), rng.choice([-1, 1]),
        rng.uniform(4, 14), rng.uniform(1500, 4000), rng.uniform(-6, 4), rng.uniform(0.3, 0.9))
    u = dict(u, delivery="plain", gain_db=None, lowpass_hz=None)
    if conv < conversational_prob:
        u.update(delivery="conversational",
                 rate=int(np.clip(round(u["rate"] * rate_f), *RATE_RANGE)),
                 pitch=int(np.clip(round(u["pitch"] + sign * pitch_d), *PITCH_RANGE)),
                 gain_db=round(float(-gain), 2), lowpass_hz=round(float(cutoff), 1),
                 rt60=round(float(rt60), 3), drr_db=round(float(drr), 2))
    return u


def render_delivery(u: dict[str, Any], synth: Callable[..., np.ndarray] = synthesize
                    ) -> np.ndarray:
    x = synth(u["text"], voice=u["voice"], variant=u["variant"], rate=u["rate"],
              pitch=u["pitch"], seed=u["seed"], sample_rate=u["sample_rate"])
    rir_rng, noise_rng = np.random.default_rng(u["aug_seed"]).spawn(2)
    if u["lowpass_hz"] is not None:
        x = lowpass(x, u["sample_rate"], u["lowpass_hz"])
    if u["rt60"] is not None:
        x = reverberate(x, synthetic_rir(rir_rng, u["sample_rate"], u["rt60"], u["drr_db"]))
    if u["gain_db"] is not None:
        x = x * (10.0 ** (u["gain_db"] / 20.0))
    if u["snr_db"] is not None:
        x = add_noise(x, coloured_noise(noise_rng, x.size, u["noise_beta"]), u["snr_db"])
    return peak_safe(x)


def _directed(spoken_manifest: Path, splits: tuple[str, ...], limit: int, seed: int,
              part: str) -> list[dict[str, Any]]:
    lines = [json.loads(x) for x in spoken_manifest.read_text().splitlines() if x.strip()]
    lines = [d for d in lines if d.get("split") in splits]
    if len(lines) < limit:
        raise ValueError(f"directedness: the spoken corpus {spoken_manifest} has {len(lines)} "
                         f"utterances in {splits}, fewer than the {limit} asked for")
    pick = _rng(seed, "directed", part).permutation(len(lines))[:limit]
    out = []
    for k in sorted(pick):
        d = lines[k]
        out.append({"id": f"dd-{part}-cmd-{d['id']}", "path": str(spoken_manifest.parent / d["path"]),
                    "text": d["text"], "intent": d.get("intent"), "speaker": d["speaker"],
                    "split": part, "directed": 1, "delivery": "command",
                    "accent": d.get("accent"), "gender": d.get("gender"),
                    "num_samples": d.get("num_samples"), "sample_rate": d.get("sample_rate")})
    return out


def build_directedness(out_dir: str | Path, spoken_manifest: str | Path, *,
                       num_train: int = 2000, num_test: int = 500,
                       conversational_prob: float = 0.7, seed: int = 0,
                       synth: Callable[..., np.ndarray] = synthesize,
                       verbose: bool = True) -> Path:
    """Render the corpus (module docstring): num_train directed + num_train not-directed
    training utterances, num_test + num_test test utterances; returns the manifest path."""
    if num_train < 1 or num_test < 1 or not 0.0 <= conversational_prob <= 1.0:
        raise ValueError(f"directedness: num_train={num_train}, num_test={num_test} must be >= 1 "
                         f"and conversational_prob={conversational_prob} in [0, 1]")
    spoken_manifest = Path(spoken_manifest)
    speakers_file = spoken_manifest.parent / "speakers.json"
    if not spoken_manifest.is_file() or not speakers_file.is_file():
        raise FileNotFoundError(f"directedness: {spoken_manifest} (and its speakers.json) not "
                                "found; build the spoken corpus first (`jaxslu synth-nlu`)")
    panel = [NluSpeaker(**s) for s in json.loads(speakers_file.read_text())]
    sides = {"train": [s for s in panel if s.side == "train"],
             "test": [s for s in panel if s.side == "test"]}
    lines = (_directed(spoken_manifest, ("train",), num_train, seed, "train") +
             _directed(spoken_manifest, ("slurp_test", "hwu64_test"), num_test, seed, "test"))
    sr = int(lines[0].get("sample_rate") or 16000)
    spoken_params = corpus_params(seed=seed, sample_rate=sr)  # the spoken corpus's draws
    out = Path(out_dir)
    version = espeak_version()
    rendered = 0
    for part, n in (("train", num_train), ("test", num_test)):
        texts = conversational_texts(part, n, seed)
        order = _rng(seed, "speakers", part).permutation(len(sides[part]))
        for k, text in enumerate(texts):
            spk = sides[part][order[k % len(order)]]
            uid = f"dd-{part}-conv-{k:05d}"
            u = delivery_params(uid, text, spk, spoken_params, conversational_prob, seed)
            key = {**u, "espeak": version, "format": FORMAT, "spoken_format": FORMAT_VERSION}
            rel, num_samples, new = cached_clip(out, f"{uid}-{spk.id}", key,
                                                lambda u=u: render_delivery(u, synth), sr,
                                                folder=f"audio/{part}")
            rendered += int(new)
            lines.append({"id": uid, "path": rel, "text": text, "intent": None,
                          "speaker": spk.id, "split": part, "directed": 0,
                          "delivery": u["delivery"], "accent": spk.accent, "gender": spk.gender,
                          "rate": u["rate"], "pitch": u["pitch"], "gain_db": u["gain_db"],
                          "lowpass_hz": u["lowpass_hz"], "rt60": u["rt60"], "drr_db": u["drr_db"],
                          "snr_db": u["snr_db"], "num_samples": int(num_samples),
                          "sample_rate": sr})
            if verbose and (k + 1) % 500 == 0:
                print(f"directedness: {part} {k + 1}/{n} conversational ({rendered} rendered)",
                      flush=True)
    manifest = out / "manifest.jsonl"
    _atomic_write_text(manifest, "\n".join(json.dumps(x) for x in lines) + "\n")
    return manifest
