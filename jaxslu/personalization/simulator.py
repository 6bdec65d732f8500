"""A deterministic simulated voice-assistant interaction log, for personalization research.

The log is for models that read the current request together with the user's long-term and
short-term history (incremental user embeddings) and must resolve requests that are ambiguous
without that history: "play hello" (song, radio station, audiobook or podcast?), "turn on the
lights" (which room?), "order my usual" (which takeaway place?), "play some music" (which genre?).
Texts are real HWU64 (and SLURP devel) utterances or short natural templates; what the user
*means* is drawn from the latent user model below. Nothing here is learned from real users: the
user model is an assumption, stated in full so that results on it can be read for what they are.

Generative story
================
Catalogs (fixed, built once from the data files, sorted, so they do not depend on the seed):

* ``genres``: the music genres of ``GENRES`` that occur as ``music_genre`` slot values (12).
* ``rooms``: the rooms of ``ROOMS`` (8), each with a fixed time-of-day affinity ``aff[room][h]``
  (a sum of circular Gaussian bumps, ``ROOM_HOURS``: bedroom late evening/early morning, kitchen
  at meal times, office in working hours, ...), plus a floor of 0.03.
* ``places``: the takeaway places of ``PLACES`` (canonical spelling) whose spelling or a
  variant occurs as a ``business_name`` slot value (17 with the bundled data).
* ``titles``: the *shared names*: every ``song_name``, ``radio_name``, ``audiobook_name`` and
  ``podcast_name`` slot value that looks like a title (1-4 alphabetic words, no source word such
  as "radio" or "podcast", no frequency such as "ninety nine point five", no generic phrase such as
  "most played", not a genre/room/place; 164 with the bundled data). The simulator assumes
  **every shared name exists in all four catalogs** (there is a song, a radio station, an
  audiobook and a podcast called "swan"), so "play swan" is genuinely ambiguous.
* utterance pools per intent from HWU64 train+test (and SLURP devel unless skipped), normalized
  like HWU64 ``text`` but lowercased with punctuation other than apostrophes removed. Annotated
  utterances of the resolvable intents become templates: the target slot (``house_place``,
  ``business_name``, ``music_genre``, or a title slot) is replaced by the simulated value. Which of
  them name their value, and so are *unambiguous*, is decided from the annotation (the target slot
  is present exactly once) and, for play sources, from source words ("radio", "station", "fm";
  "audiobook", "book", "read"; "podcast", "episode"; and, weaker, "song", "music", "album").
  Utterances of the room, genre and source intents that name nothing become ambiguous forms, next
  to a few hand-written ones (``"turn on the lights"``, ``"play some music"``, ``"play {title}"``);
  ambiguous place requests use hand-written forms only (``"order my usual"``, and ``"where is my
  order"`` for a query about a recent order), since the real ones that name no place are not
  about a particular place.

Resolvable kinds and their labels (``label`` is what a model must predict):

* ``source``: intents play_music / play_radio / play_audiobook / play_podcasts; the label is the
  intent (the source decides the intent). The value also carries a title (slot ``song_name``,
  ``radio_name``, ``audiobook_name`` or ``podcast_name``).
* ``room``: iot_hue_lighton / lightoff / lightdim / lightup, iot_cleaning; label ``intent@room``.
* ``place``: takeaway_order / takeaway_query; label ``intent@place``.
* ``genre``: play_music; label ``play_music@genre``.
* ``plain``: every other HWU64 intent (53); label = intent, never ambiguous.

Per user ``u`` (index ``i``), every draw comes from ``numpy.random.default_rng([seed, i])``, so a
user's events do not depend on ``num_users``:

* number of events ``N_u = round(exp(Uniform(log min_events, log max_events)))``;
* kind mixture ``pi_u ~ Dirichlet(8 * KIND_MEAN)``, ``KIND_MEAN`` = plain .55, source .15,
  room .13, place .07, genre .10 (so about 45% of events are of resolvable kinds);
* plain-intent preference ``~ Dirichlet(0.3 * 1)`` over the 53 plain intents; intent preference
  inside the room kind ``~ Dirichlet(4 * ROOM_INTENT_MEAN)``, inside the place kind
  ``~ Dirichlet(4 * (.65, .35))``;
* source preference ``~ Dirichlet(0.6 * (1.6, 1.0, 0.7, 0.7))`` over music/radio/audiobook/podcast;
  a *library*: for each source 2-5 titles, drawn without replacement from ``titles`` (so one user's
  sources never share a title), with title weights ``~ Dirichlet(1)``;
* genre preference ``~ Dirichlet(0.3 * 1)`` over the genres (a few favourites);
* a home of 2-5 rooms drawn without replacement, room weights ``w ~ Dirichlet(2 * 1)``, and
  ``p(room | hour h) ∝ w[room] * aff[room][h]``;
* 1-4 favourite places, weights ``~ Dirichlet(1)``; a place draw is a favourite with probability
  0.9, else uniform over all places;
* an activity profile over the 24 hours ``~ Dirichlet(15 * roll(BASE_HOURS, s) + 0.05)``,
  ``s ~ Uniform{-2..2}`` (later or earlier chronotype);
* session habits: mean session length ``m_u ~ Uniform(1.5, 5)`` requests, mean gap between
  requests of a session ``g_u ~ Uniform(30, 240)`` s;
* phases (short-term state): for each of source, genre and place, a mean phase duration
  (``Uniform(1, 7)`` days for source, ``Uniform(0.5, 4)`` for genre, ``Uniform(5, 30)`` for place)
  and an adherence ``rho ~ Beta(6, 2)``.

Timeline of user ``u``: session sizes ``1 + Geometric`` with mean ``m_u`` are drawn until they sum
to at least ``N_u`` (the last is cut); each session starts on a day ``Uniform{0..days-1}`` at an
hour drawn from the activity profile plus ``Uniform(0, 3600)`` s; starts are sorted, and a session
that would begin less than 15 minutes after the previous one ended is pushed to 15 minutes plus an
``Exponential(1 h)`` after it (the only way times can pass ``days``). Requests of a session are
``15 s + Exponential(g_u)`` apart. ``time`` is in seconds from the simulation start (rounded to
ms), ``hour = floor(time / 3600) mod 24`` and ``weekday = floor(time / 86400) mod 7`` (day 0 is a
Monday). ``session`` counts the user's sessions from 0.

State: each session has a room ``r_s ~ p(room | hour of the session start)`` where the user stays.
A phase value for source (a (source, title) pair), genre and place is a draw from the user's
long-term distribution that is redrawn at the events of a Poisson process with the user's mean
phase duration (simulated lazily: at the first request after a change time, which by
memorylessness is exact). Within a session the user also remembers the session's last source and
genre.

Each request: kind ``~ pi_u``; ``ambiguous ~ Bernoulli(ambiguous_fraction)`` for resolvable kinds
(false for plain); then

* plain: intent from the plain preference, text uniform from that intent's real utterances,
  ``slots`` from their annotation.
* source: if the session already had a source request, repeat its (source, title) with
  probability 0.8 ("continuing"); otherwise use the phase value with probability ``rho``, else a
  fresh long-term draw (source from the preference, title from that source's library). Ambiguous
  text: when continuing, with probability 0.3 a title-free form ("resume", "continue where i left
  off"); else a form naming only the title ("play {title}", real utterances such as "play
  [song_name]"). Unambiguous: a form naming the source (and, with probability 0.8, or always for
  music, the title: "play the podcast {title}", "play radio", real utterances).
* room: intent from the room-intent preference; ambiguous requests target the session room
  ``r_s`` ("turn on the lights" means here); unambiguous ones target ``r_s`` with probability 0.7,
  else a fresh ``p(room | hour)`` draw, and the text names the room.
* place: for takeaway_query within 2 hours of the user's last takeaway_order, the place of that
  order (ambiguous text: "where is my order"); otherwise the phase value with probability ``rho``,
  else a long-term draw. Ambiguous texts say "my usual"; unambiguous ones name the place.
* genre: like source (session repeat 0.8, else phase with ``rho``, else the genre preference);
  ambiguous texts are "play some music" and real play_music utterances naming nothing, unambiguous
  ones name the genre.

Every choice of a text from a pool (a pool: the utterances of one plain intent, or the ambiguous
or unambiguous forms of one resolvable intent) follows the user's *phrasing habit*: with
probability 0.7 one of the user's 3 favourite forms of that pool (positions ``(a_u + b_u k) mod
|pool|``, ``k ~ Uniform{0, 1, 2}``, with ``a_u, b_u`` drawn once per user), else uniform over the
pool. Ambiguous forms of the room, genre and source kinds come from the hand-written forms with
probability 0.5, else from the real utterances that name nothing (the habit applies to each).
``slots`` holds the ground-truth resolved
slots: the annotated slots of the utterance used (substituted values included) plus the resolved
one (``house_place``, ``business_name``, ``music_genre`` or the title slot), also when the text
does not name it. Labels are deterministic functions of (intent, value); with ``ambiguous`` false
the text determines the label, apart from the rare real utterance that is ambiguous by nature.

Data: HWU64 (CC BY 4.0, Liu et al. 2019) and SLURP devel text (CC BY 4.0, Bastianelli et al.
2020), read from the repository's ``data/`` folder (see their README files); the simulator only
reads them.
"""
from __future__ import annotations

import bisect
import dataclasses
import functools
import json
import math
import os
import re
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["SimulatorConfig", "simulate", "write_log", "read_log", "label_set", "LogFormatError",
           "KINDS", "EVENT_KEYS"]

KINDS = ("plain", "source", "room", "place", "genre")
EVENT_KEYS = ("user", "session", "time", "hour", "weekday", "text", "intent", "label", "kind",
              "ambiguous", "slots")
KIND_MEAN = (0.55, 0.15, 0.13, 0.07, 0.10)

SOURCES = ("music", "radio", "audiobook", "podcast")
SOURCE_INTENT = {"music": "play_music", "radio": "play_radio", "audiobook": "play_audiobook",
                 "podcast": "play_podcasts"}
INTENT_SOURCE = {v: k for k, v in SOURCE_INTENT.items()}
TITLE_SLOT = {"music": "song_name", "radio": "radio_name", "audiobook": "audiobook_name",
              "podcast": "podcast_name"}
SOURCE_PRIOR = (1.6, 1.0, 0.7, 0.7)

ROOM_INTENTS = ("iot_hue_lighton", "iot_hue_lightoff", "iot_hue_lightdim", "iot_hue_lightup",
                "iot_cleaning")
ROOM_INTENT_MEAN = (0.3, 0.3, 0.15, 0.15, 0.1)
PLACE_INTENTS = ("takeaway_order", "takeaway_query")
PLACE_INTENT_MEAN = (0.65, 0.35)
GENRE_INTENT = "play_music"
RESOLVABLE_INTENTS = frozenset(SOURCE_INTENT.values()) | frozenset(ROOM_INTENTS) | frozenset(
    PLACE_INTENTS)

GENRES = ("jazz", "classical", "country", "pop", "rock", "hip hop", "folk", "rap", "classic rock",
          "soft rock", "indie", "metal")
ROOMS = ("kitchen", "bedroom", "living room", "bathroom", "office", "garage", "hall",
         "dining room")
# canonical place name -> spellings that count as its occurrence in the data
PLACES = {
    "pizza hut": ("pizza hut",), "dominos": ("dominos", "dominoes", "domino's", "domino"),
    "chipotle": ("chipotle", "chipolte"), "olive garden": ("olive garden",),
    "peking garden": ("peking garden",), "taco bell": ("taco bell",), "subway": ("subway",),
    "papa johns": ("papa johns", "papa john's"), "mcdonalds": ("mcdonalds", "mcdonald's"),
    "burger king": ("burger king",), "china wok": ("china wok",),
    "wangs kitchen": ("wangs kitchen",), "pf changs": ("pf changs", "pf chang's"),
    "jason's deli": ("jason's deli",), "the golden fork": ("the golden fork",),
    "arby's": ("arby's",), "panera bread": ("panera bread",),
}
# room -> (centre hour, width in hours, height) bumps of its time-of-day affinity
ROOM_HOURS = {
    "kitchen": ((7.5, 1.5, 1.0), (12.5, 1.0, 0.6), (18.5, 1.5, 1.0)),
    "bedroom": ((22.5, 2.0, 1.0), (6.5, 1.0, 0.7)),
    "living room": ((20.0, 2.5, 1.0), (15.0, 3.0, 0.4)),
    "bathroom": ((7.0, 1.0, 0.8), (22.0, 1.0, 0.6)),
    "office": ((12.5, 3.5, 1.0),),
    "garage": ((8.0, 1.0, 0.6), (17.5, 1.5, 0.6)),
    "hall": ((12.0, 100.0, 0.3),),
    "dining room": ((12.5, 1.0, 0.6), (19.0, 1.2, 0.9)),
}
BASE_HOURS = (0.2, 0.1, 0.05, 0.03, 0.03, 0.1, 0.5, 1.0, 1.0, 0.7, 0.6, 0.6, 0.8, 0.7, 0.6, 0.6,
              0.7, 0.9, 1.0, 1.0, 0.9, 0.8, 0.6, 0.4)

SESSION_REPEAT = 0.8      # P(repeat the session's last source / genre)
TITLE_FREE = 0.3          # P(title-free ambiguous form | continuing)
NAMED_TITLE = 0.8         # P(unambiguous non-music source request names its title)
ROOM_STAY = 0.7           # P(unambiguous room request targets the session room)
PLACE_EXPLORE = 0.1       # P(place draw is uniform over all places)
ORDER_WINDOW = 2 * 3600.0  # takeaway_query this soon after an order is about that order
SESSION_GAP = 900.0        # minimum gap between sessions (s)
PHRASING_HABIT = 0.7       # P(a text is one of the user's favourite phrasings of that pool)
PHRASINGS = 3              # favourite phrasings per pool and user
HAND_SHARE = 0.5           # P(an ambiguous form is a hand-written one rather than a real one)

# ---------------------------------------------------------------- hand-written texts
# "{0}" marks the value; ambiguous forms have none.
_HAND_ROOM_AMB = {
    "iot_hue_lighton": ("turn on the lights", "turn on the light", "lights on", "lights on please",
                        "switch on the lights"),
    "iot_hue_lightoff": ("turn off the lights", "lights off please", "switch off the light",
                         "lights off", "turn the light off"),
    "iot_hue_lightdim": ("dim the lights", "lower the lights", "dim the lights a bit",
                         "make the lights dimmer"),
    "iot_hue_lightup": ("brighten the lights", "turn the lights up", "make the lights brighter",
                        "lights brighter please"),
    "iot_cleaning": ("start the vacuum", "vacuum in here", "start cleaning",
                     "run the robot vacuum"),
}
_HAND_ROOM = {
    "iot_hue_lighton": ("turn on the {0} lights", "turn on the light in the {0}", "{0} lights on",
                        "switch on the {0} light"),
    "iot_hue_lightoff": ("turn off the {0} lights", "switch off the light in the {0}",
                         "{0} lights off", "turn the {0} light off"),
    "iot_hue_lightdim": ("dim the {0} lights", "dim the lights in the {0}", "lower the {0} lights"),
    "iot_hue_lightup": ("brighten the {0} lights", "turn up the lights in the {0}",
                        "make the {0} brighter"),
    "iot_cleaning": ("vacuum the {0}", "clean the {0}", "start the vacuum in the {0}"),
}
_HAND_PLACE_AMB = {
    "takeaway_order": ("order my usual", "order food from my usual place", "order the usual",
                       "get me my usual takeaway", "order takeaway from the usual place",
                       "i want my usual order"),
    "takeaway_query": ("is my usual place open", "does my usual place deliver",
                       "is my usual takeaway open tonight", "how late is my usual place open"),
}
_HAND_PLACE_STATUS = ("where is my order", "check the status of my order",
                      "how long until my food arrives", "where is my takeaway")
_HAND_PLACE = {
    "takeaway_order": ("order from {0}", "order food from {0}", "order a takeaway from {0}",
                       "get me food from {0}", "place an order at {0}"),
    "takeaway_query": ("does {0} deliver", "is {0} open now", "check my order from {0}",
                       "what time does {0} close"),
}
_HAND_GENRE_AMB = ("play some music", "put on some music", "play music", "put on something",
                   "play something", "i want to listen to some music", "play my music",
                   "music please")
_HAND_GENRE = ("play some {0}", "play {0} music", "put on some {0}", "i want to listen to {0}",
               "play {0} songs", "play me some {0} music")
_HAND_SOURCE_AMB = ("play {0}", "put on {0}", "i want to listen to {0}", "can you play {0}",
                    "start {0}", "play {0} please")
_HAND_SOURCE_CONTINUE = ("resume", "continue where i left off", "keep playing", "resume playing",
                         "continue playing", "pick up where i left off")
_HAND_SOURCE = {
    "music": ("play the song {0}", "play {0} song", "play the track {0}",
              "play the song {0} please"),
    "radio": ("play the radio station {0}", "tune in to {0} radio", "play {0} on the radio",
              "put on the station {0}"),
    "audiobook": ("play the audiobook {0}", "read {0} audiobook", "continue the audiobook {0}",
                  "play {0} audio book"),
    "podcast": ("play the podcast {0}", "play the latest episode of {0}", "play {0} podcast",
                "play the next episode of {0}"),
}
_HAND_SOURCE_UNTITLED = {
    "radio": ("play the radio", "turn on the radio", "put the radio on"),
    "audiobook": ("resume my audiobook", "continue my audio book", "play my audiobook"),
    "podcast": ("play my podcast", "play the next episode of my podcast", "resume the podcast"),
}

_STRONG_WORDS = {
    "radio": frozenset({"radio", "station", "stations", "fm", "channel"}),
    "audiobook": frozenset({"audiobook", "audiobooks", "book", "books", "novel", "chapter",
                            "read", "reading"}),
    "podcast": frozenset({"podcast", "podcasts", "episode", "episodes"}),
}
_MUSIC_WORDS = frozenset({"song", "songs", "music", "track", "tracks", "album", "tune", "tunes",
                          "playlist"})
_NUMBER_WORDS = frozenset("zero oh one two three four five six seven eight nine ten eleven twelve "
                          "twenty thirty forty fifty sixty seventy eighty ninety hundred thousand "
                          "point".split())
_GENERIC_TITLES = frozenset({
    "last song", "most played", "saved", "newest podcasts", "news", "science", "recent cover",
    "stuff", "latest", "next", "previous", "all", "anything", "last reason", "my favorite",
    "favorite", "random", "the", "this", "that", "it", "something", "music", "radio", "bbc",
    "morning show", "seven am", "local", "file", "story", "urban", "healthcare", "rhythm",
    "sports commentary", "love"})
_CONTINUE_WORDS = frozenset({"resume", "continue", "resuming", "left"})

_SLOT_RE = re.compile(r"\[\s*([^:\]\[]+?)\s*:\s*([^\]\[]*?)\s*\]")
_NON_TEXT = re.compile(r"[^a-z0-9' ]+")


def _norm(s: str) -> str:
    return " ".join(_NON_TEXT.sub(" ", s.lower()).split())


@dataclasses.dataclass
class SimulatorConfig:
    num_users: int = 2000
    min_events: int = 40          # per user
    max_events: int = 400
    days: int = 90
    ambiguous_fraction: float = 0.4   # of the requests of the resolvable kinds
    seed: int = 0
    hwu64_dir: str | None = None      # default: the repository's data/hwu64
    slurp_path: str | None = None     # None: data/slurp/devel.jsonl when present; "": skip SLURP


# ---------------------------------------------------------------- corpus

def _parse(annotation: str):
    """-> (fmt parts as a list of str | (slot, value)), with normalized literals and values."""
    parts, pos = [], 0
    for m in _SLOT_RE.finditer(annotation):
        if m.start() > pos:
            parts.append(_norm(annotation[pos:m.start()]))
        parts.append((_norm(m.group(1)).replace(" ", "_"), _norm(m.group(2))))
        pos = m.end()
    if pos < len(annotation):
        parts.append(_norm(annotation[pos:]))
    return parts


def _render(parts, target: str | None):
    """-> (fmt with "{0}" for the target slot, count of target slots, other slots)."""
    words, slots, n = [], {}, 0
    for p in parts:
        if isinstance(p, str):
            words.append(p)
        elif p[0] == target:
            words.append("{0}")
            n += 1
        else:
            words.append(p[1])
            if p[1]:
                slots[p[0]] = p[1]
    return " ".join(" ".join(words).split()), n, slots


def _source_of(fmt: str):
    toks = set(fmt.split())
    strong = [s for s, w in _STRONG_WORDS.items() if toks & w]
    if len(strong) > 1:
        return "conflict"
    if strong:
        return strong[0]
    return "music" if toks & _MUSIC_WORDS else None


def _contains(text: str, names) -> bool:
    t = f" {text} "
    return any(f" {n} " in t for n in names)


@dataclasses.dataclass(frozen=True)
class _Corpus:
    genres: tuple
    rooms: tuple
    places: tuple
    titles: tuple
    plain_intents: tuple
    plain: dict          # intent -> tuple of (text, slots)
    room_amb: dict       # intent -> (hand-written, real) tuples of (text, slots)
    room: dict           # intent -> tuple of (fmt, slots)
    place_amb: dict
    place: dict
    genre_amb: tuple     # (hand-written, real)
    genre: tuple
    source_amb: tuple           # (hand, real) of (fmt, slots), fmt names only the title
    source_continue: tuple      # (hand, real) of (text, slots)
    source: dict                # source -> tuple of (fmt, slots)
    source_untitled: dict       # source -> tuple of (text, slots)


def _sorted_unique(items):
    seen = {}
    for text, slots in items:
        seen.setdefault((text, tuple(sorted(slots.items()))), slots)
    return tuple((t, dict(s)) for t, s in sorted(seen))


def _split(hand, real):
    hand = tuple((t, {}) for t in hand)
    texts = {t for t, _ in hand}
    return hand, _sorted_unique([(t, s) for t, s in real if t not in texts]) or hand


def _read_rows(hwu64_dir: Path, slurp_path: Path | None):
    rows = []
    for split in ("train.jsonl", "test.jsonl"):
        p = hwu64_dir / split
        with open(p, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    rows.append((f"{r['scenario']}_{r['intent']}", r["annotation"]))
    intents = {i for i, _ in rows}
    if slurp_path is not None:
        with open(slurp_path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    if r["intent"] in intents:
                        rows.append((r["intent"], r["sentence_annotation"]))
    return rows


@functools.lru_cache(maxsize=4)
def _load_corpus(hwu64_dir: str, slurp_path: str) -> _Corpus:
    rows = [(i, _parse(a)) for i, a in _read_rows(Path(hwu64_dir),
                                                  Path(slurp_path) if slurp_path else None)]
    intents = sorted({i for i, _ in rows})
    values: dict[str, set] = {}
    for _, parts in rows:
        for p in parts:
            if not isinstance(p, str) and p[1]:
                values.setdefault(p[0], set()).add(p[1])
    genres = tuple(g for g in GENRES if g in values.get("music_genre", ()))
    rooms = tuple(r for r in ROOMS if r in values.get("house_place", ()))
    biz = values.get("business_name", set())
    places = tuple(sorted(p for p, spellings in PLACES.items() if biz & set(spellings)))
    for name, got in (("genres", genres), ("rooms", rooms), ("places", places)):
        if len(got) < 2:
            raise ValueError(f"simulator: the data at {hwu64_dir} yield only {len(got)} {name}")
    taken = set(genres) | set(rooms) | {s for sp in PLACES.values() for s in sp}
    words = set().union(*_STRONG_WORDS.values()) | _MUSIC_WORDS
    titles = set()
    for slot in TITLE_SLOT.values():
        for v in values.get(slot, ()):
            toks = v.split()
            if (not 1 <= len(toks) <= 4 or len(v) < 3 or not re.fullmatch(r"[a-z' ]+", v)
                    or v in _GENERIC_TITLES or v in taken or set(toks) & words
                    or "point" in toks or "hundred" in toks or set(toks) <= _NUMBER_WORDS):
                continue
            titles.add(v)
    titles = tuple(sorted(titles))
    if len(titles) < 20:
        raise ValueError(f"simulator: the data at {hwu64_dir} yield only {len(titles)} titles")

    plain = {i: [] for i in intents if i not in RESOLVABLE_INTENTS}
    room_amb = {i: [] for i in ROOM_INTENTS}
    room = {i: [(t, {}) for t in _HAND_ROOM[i]] for i in ROOM_INTENTS}
    place_amb = {i: [(t, {}) for t in _HAND_PLACE_AMB[i]] for i in PLACE_INTENTS}
    place = {i: [(t, {}) for t in _HAND_PLACE[i]] for i in PLACE_INTENTS}
    genre_amb = []
    genre = [(t, {}) for t in _HAND_GENRE]
    source_amb, source_continue = [], []
    source = {s: [(t, {}) for t in _HAND_SOURCE[s]] for s in SOURCES}
    source_untitled = {s: [(t, {}) for t in _HAND_SOURCE_UNTITLED.get(s, ())] for s in SOURCES}
    title_slots = set(TITLE_SLOT.values())
    for intent, parts in rows:
        if intent in plain:
            text, _, slots = _render(parts, None)
            if text:
                plain[intent].append((text, slots))
        elif intent in ROOM_INTENTS:
            fmt, n, slots = _render(parts, "house_place")
            if n == 1 and not _contains(fmt, rooms):
                room[intent].append((fmt, slots))
            elif n == 0 and fmt and not _contains(fmt, rooms):
                room_amb[intent].append((fmt, slots))
        elif intent in PLACE_INTENTS:
            fmt, n, slots = _render(parts, "business_name")
            if n == 1 and not _contains(fmt, places):
                place[intent].append((fmt, slots))
        if intent == GENRE_INTENT:
            fmt, n, slots = _render(parts, "music_genre")
            if n == 1 and _source_of(fmt) in (None, "music") and not _contains(fmt, genres):
                genre.append((fmt, slots))
            elif (fmt and not slots and n == 0 and _source_of(fmt) in (None, "music")
                  and not _contains(fmt, genres)):
                genre_amb.append((fmt, slots))
        if intent in INTENT_SOURCE:
            s = INTENT_SOURCE[intent]
            fmt, n, slots = _render(parts, TITLE_SLOT[s])
            if not fmt or slots.keys() & title_slots:
                continue
            src = _source_of(fmt)
            if n == 1:
                if src == s:
                    source[s].append((fmt, slots))
                elif (src is None and set(slots) <= {"player_setting"}
                      and not re.search(r"\b(a|an|any|best) \{0\}", fmt)):
                    source_amb.append((fmt, slots))
            elif n == 0 and s != "music":
                if src == s:
                    source_untitled[s].append((fmt, slots))
                elif (src is None and set(slots) <= {"player_setting"}
                      and set(fmt.split()) & _CONTINUE_WORDS and len(fmt.split()) <= 6):
                    source_continue.append((fmt, slots))
    plain = {i: _sorted_unique(v) for i, v in plain.items() if v}
    return _Corpus(
        genres=genres, rooms=rooms, places=places, titles=titles,
        plain_intents=tuple(sorted(plain)), plain=plain,
        room_amb={i: _split(_HAND_ROOM_AMB[i], v) for i, v in room_amb.items()},
        room={i: _sorted_unique(v) for i, v in room.items()},
        place_amb={i: _sorted_unique(v) for i, v in place_amb.items()},
        place={i: _sorted_unique(v) for i, v in place.items()},
        genre_amb=_split(_HAND_GENRE_AMB, genre_amb), genre=_sorted_unique(genre),
        source_amb=_split(_HAND_SOURCE_AMB, source_amb),
        source_continue=_split(_HAND_SOURCE_CONTINUE, source_continue),
        source={s: _sorted_unique(v) for s, v in source.items()},
        source_untitled={s: _sorted_unique(v) for s, v in source_untitled.items()})


def _corpus_for(cfg: SimulatorConfig) -> _Corpus:
    if cfg.hwu64_dir:
        hwu = Path(cfg.hwu64_dir)
    else:
        from jaxslu.paths import data_dir
        hwu = data_dir() / "hwu64"
    if cfg.slurp_path is None:
        from jaxslu.paths import data_dir
        try:
            default = data_dir() / "slurp" / "devel.jsonl"
        except FileNotFoundError:
            default = None
        slurp = str(default.resolve()) if default is not None and default.is_file() else ""
    else:
        slurp = str(Path(cfg.slurp_path).resolve()) if cfg.slurp_path else ""
    return _load_corpus(str(hwu.resolve()), slurp)


# ---------------------------------------------------------------- simulation

def _cum(weights) -> list:
    c = np.cumsum(np.asarray(weights, dtype=np.float64))
    return (c / c[-1]).tolist()


def _pick(cum: list, u: float) -> int:
    i = bisect.bisect_right(cum, u)
    return i if i < len(cum) else len(cum) - 1


@functools.lru_cache(maxsize=1)
def _room_affinity() -> dict:
    hours = np.arange(24) + 0.5
    out = {}
    for room, bumps in ROOM_HOURS.items():
        a = np.full(24, 0.03)
        for centre, width, height in bumps:
            d = np.abs(hours - centre)
            d = np.minimum(d, 24 - d)
            a += height * np.exp(-0.5 * (d / width) ** 2)
        out[room] = a
    return out


class _Phase:
    __slots__ = ("value", "until")

    def __init__(self):
        self.value, self.until = None, -1.0


def _simulate_user(cfg: SimulatorConfig, c: _Corpus, index: int) -> list[dict]:
    rng = np.random.default_rng([cfg.seed, index])
    user = f"u{index + 1:05d}"
    lo, hi = math.log(cfg.min_events), math.log(cfg.max_events)
    n_events = int(min(cfg.max_events, max(cfg.min_events, round(math.exp(rng.uniform(lo, hi))))))

    kind_cum = _cum(rng.dirichlet(8.0 * np.asarray(KIND_MEAN)))
    plain_cum = _cum(rng.dirichlet(np.full(len(c.plain_intents), 0.3)))
    room_intent_cum = _cum(rng.dirichlet(4.0 * np.asarray(ROOM_INTENT_MEAN)))
    place_intent_cum = _cum(rng.dirichlet(4.0 * np.asarray(PLACE_INTENT_MEAN)))
    source_cum = _cum(rng.dirichlet(0.6 * np.asarray(SOURCE_PRIOR)))
    sizes = rng.integers(2, 6, size=len(SOURCES))
    drawn = rng.choice(len(c.titles), size=int(sizes.sum()), replace=False)
    library, start = [], 0
    for k in sizes:
        titles = [c.titles[j] for j in drawn[start:start + k]]
        library.append((titles, _cum(rng.dirichlet(np.ones(k)))))
        start += k
    genre_cum = _cum(rng.dirichlet(np.full(len(c.genres), 0.3)))
    n_rooms = int(rng.integers(2, min(5, len(c.rooms)) + 1))
    home = [c.rooms[j] for j in sorted(rng.choice(len(c.rooms), size=n_rooms, replace=False))]
    room_w = rng.dirichlet(np.full(n_rooms, 2.0))
    aff = _room_affinity()
    room_cum_by_hour = [_cum(room_w * np.array([aff[r][h] for r in home])) for h in range(24)]
    n_fav = int(rng.integers(1, min(4, len(c.places)) + 1))
    favs = [c.places[j] for j in sorted(rng.choice(len(c.places), size=n_fav, replace=False))]
    fav_cum = _cum(rng.dirichlet(np.ones(n_fav)))
    shift = int(rng.integers(-2, 3))
    base = np.roll(np.asarray(BASE_HOURS), shift)
    hour_p = rng.dirichlet(15.0 * base / base.sum() + 0.05)
    mean_session = rng.uniform(1.5, 5.0)
    mean_gap = rng.uniform(30.0, 240.0)
    phase_days = {"source": rng.uniform(1, 7), "genre": rng.uniform(0.5, 4),
                  "place": rng.uniform(5, 30)}
    rho = {k: rng.beta(6, 2) for k in ("source", "genre", "place")}
    habit_a, habit_b = (int(x) for x in rng.integers(0, 2**31, size=2))

    # timeline
    sess_sizes = []
    while sum(sess_sizes) < n_events:
        sess_sizes.extend(rng.geometric(1.0 / mean_session, size=max(4, n_events // 2)).tolist())
    total, cut = 0, 0
    for cut, s in enumerate(sess_sizes):
        total += s
        if total >= n_events:
            break
    sess_sizes = sess_sizes[:cut + 1]
    sess_sizes[-1] -= total - n_events
    n_sess = len(sess_sizes)
    day = rng.integers(0, cfg.days, size=n_sess)
    hour = np.minimum(np.searchsorted(np.cumsum(hour_p) / hour_p.sum(), rng.random(n_sess),
                                      side="right"), 23)
    starts = np.sort(day * 86400.0 + hour * 3600.0 + rng.random(n_sess) * 3600.0).tolist()
    push = rng.exponential(3600.0, size=n_sess).tolist()
    sess_u = rng.random(n_sess).tolist()
    U = rng.random((n_events, 11)).tolist()

    def room_draw(t, u):
        return home[_pick(room_cum_by_hour[int(t // 3600) % 24], u)]

    def source_draw(u1, u2):
        s = _pick(source_cum, u1)
        titles, cum = library[s]
        return s, titles[_pick(cum, u2)]

    def place_draw(u1, u2):
        if u1 < PLACE_EXPLORE:
            return c.places[min(int(u2 * len(c.places)), len(c.places) - 1)]
        return favs[_pick(fav_cum, u2)]

    def phase_value(kind, ph, t, u_change, u1, u2):
        if t >= ph.until:
            if kind == "source":
                ph.value = source_draw(u1, u2)
            elif kind == "genre":
                ph.value = c.genres[_pick(genre_cum, u1)]
            else:
                ph.value = place_draw(u1, u2)
            ph.until = t - math.log(1.0 - u_change) * phase_days[kind] * 86400.0
        return ph.value

    def choose_amb(pools, u, u_hand):  # hand-written forms with probability HAND_SHARE
        return choose(pools[0] if u_hand < HAND_SHARE else pools[1], u)

    def choose(pool, u):  # phrasing habit: PHRASINGS favourite forms per pool, else uniform
        n = len(pool)
        if u < PHRASING_HABIT:
            return pool[(habit_a + habit_b * int(u * PHRASINGS / PHRASING_HABIT)) % n]
        return pool[min(int((u - PHRASING_HABIT) / (1 - PHRASING_HABIT) * n), n - 1)]

    phases = {"source": _Phase(), "genre": _Phase(), "place": _Phase()}
    last_order = (-1e18, None)
    amb_frac = cfg.ambiguous_fraction
    events, prev_end, k = [], -1e18, 0
    for si in range(n_sess):
        t = starts[si]
        if t < prev_end + SESSION_GAP:
            t = prev_end + SESSION_GAP + push[si]
        sess_room = room_draw(t, sess_u[si])
        sess_source = sess_genre = None
        for j in range(sess_sizes[si]):
            u = U[k]
            k += 1
            if j:
                t += 15.0 - math.log(1.0 - u[0]) * mean_gap
            t = round(t, 3)
            kind = KINDS[_pick(kind_cum, u[1])]
            amb = kind != "plain" and u[2] < amb_frac
            # u[3] intent, u[4] text, u[5] which level (session / phase / long-term),
            # u[6], u[7] value draws, u[8] phase change, u[9] form, u[10] hand / real form
            ut, ux, ul, v1, v2, uf = u[3], u[4], u[5], u[6], u[7], u[9]
            if kind == "plain":
                intent = c.plain_intents[_pick(plain_cum, ut)]
                text, slots = choose(c.plain[intent], ux)
                label, slots = intent, dict(slots)
            elif kind == "room":
                intent = ROOM_INTENTS[_pick(room_intent_cum, ut)]
                if amb:
                    room = sess_room
                    text, slots = choose_amb(c.room_amb[intent], ux, u[10])
                else:
                    room = sess_room if ul < ROOM_STAY else room_draw(t, v1)
                    fmt, slots = choose(c.room[intent], ux)
                    text = fmt.format(room)
                slots = dict(slots, house_place=room)
                label = f"{intent}@{room}"
            elif kind == "place":
                intent = PLACE_INTENTS[_pick(place_intent_cum, ut)]
                recent = intent == "takeaway_query" and t - last_order[0] < ORDER_WINDOW
                if recent:
                    place = last_order[1]
                elif ul < rho["place"]:
                    place = phase_value("place", phases["place"], t, u[8], v1, v2)
                else:
                    place = place_draw(v1, v2)
                if amb and recent:
                    text, slots = choose(_HAND_PLACE_STATUS, ux), {}
                elif amb:
                    text, slots = choose(c.place_amb[intent], ux)
                else:
                    fmt, slots = choose(c.place[intent], ux)
                    text = fmt.format(place)
                slots = dict(slots, business_name=place)
                label = f"{intent}@{place}"
                if intent == "takeaway_order":
                    last_order = (t, place)
            elif kind == "genre":
                intent = GENRE_INTENT
                if sess_genre is not None and uf < SESSION_REPEAT:
                    genre = sess_genre
                elif ul < rho["genre"]:
                    genre = phase_value("genre", phases["genre"], t, u[8], v1, v2)
                else:
                    genre = c.genres[_pick(genre_cum, v1)]
                sess_genre = genre
                if amb:
                    text, slots = choose_amb(c.genre_amb, ux, u[10])
                else:
                    fmt, slots = choose(c.genre, ux)
                    text = fmt.format(genre)
                slots = dict(slots, music_genre=genre)
                label = f"{intent}@{genre}"
            else:  # source
                continuing = sess_source is not None and ut < SESSION_REPEAT
                if continuing:
                    src, title = sess_source
                elif ul < rho["source"]:
                    src, title = phase_value("source", phases["source"], t, u[8], v1, v2)
                else:
                    src, title = source_draw(v1, v2)
                sess_source = (src, title)
                name = SOURCES[src]
                intent = SOURCE_INTENT[name]
                if amb and continuing and uf < TITLE_FREE:
                    text, slots = choose_amb(c.source_continue, ux, u[10])
                    slots = dict(slots, **{TITLE_SLOT[name]: title})
                elif amb:
                    fmt, slots = choose_amb(c.source_amb, ux, u[10])
                    text, slots = fmt.format(title), dict(slots, **{TITLE_SLOT[name]: title})
                elif c.source_untitled[name] and uf >= NAMED_TITLE:
                    text, slots = choose(c.source_untitled[name], ux)
                    slots = dict(slots, **{TITLE_SLOT[name]: title})
                else:
                    fmt, slots = choose(c.source[name], ux)
                    text, slots = fmt.format(title), dict(slots, **{TITLE_SLOT[name]: title})
                label = intent
            events.append({
                "user": user, "session": si, "time": t, "hour": int(t // 3600) % 24,
                "weekday": int(t // 86400) % 7, "text": text, "intent": intent, "label": label,
                "kind": kind, "ambiguous": bool(amb), "slots": slots})
        prev_end = t
    return events


def simulate(cfg: SimulatorConfig) -> list[dict]:
    """All events of ``cfg.num_users`` simulated users, sorted by (user, time)."""
    if cfg.num_users < 0:
        raise ValueError(f"num_users must be >= 0, got {cfg.num_users}")
    if not 1 <= cfg.min_events <= cfg.max_events:
        raise ValueError(f"need 1 <= min_events <= max_events, got {cfg.min_events}, "
                         f"{cfg.max_events}")
    if cfg.days < 1:
        raise ValueError(f"days must be >= 1, got {cfg.days}")
    if not 0.0 <= cfg.ambiguous_fraction <= 1.0:
        raise ValueError(f"ambiguous_fraction must be in [0, 1], got {cfg.ambiguous_fraction}")
    corpus = _corpus_for(cfg)
    events = []
    for i in range(cfg.num_users):
        events.extend(_simulate_user(cfg, corpus, i))
    return events


def label_set(events) -> list[str]:
    """The sorted distinct labels of ``events``."""
    return sorted({e["label"] for e in events})


# ---------------------------------------------------------------- log files

class LogFormatError(ValueError):
    """A malformed line in an interaction log; the message names file:line and the field."""


def write_log(path, events) -> Path:
    """Write ``events`` as JSON lines, atomically (a temporary file beside it, then replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for e in events:
                f.write(json.dumps({k: e[k] for k in EVENT_KEYS}, ensure_ascii=False))
                f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_event(e: dict, where: str, prev: dict | None) -> dict:
    if not isinstance(e, dict):
        raise LogFormatError(f"{where}: expected a JSON object, got {type(e).__name__}")
    for k in EVENT_KEYS:
        if k not in e:
            raise LogFormatError(f"{where}: missing field {k!r}")
    extra = sorted(set(e) - set(EVENT_KEYS))
    if extra:
        raise LogFormatError(f"{where}: unexpected field {extra[0]!r}")

    def bad(field, why):
        return LogFormatError(f"{where}: field {field!r} {why}, got {e[field]!r}")

    for k in ("user", "text", "intent", "label", "kind"):
        if not isinstance(e[k], str) or not e[k]:
            raise bad(k, "must be a non-empty string")
    for k in ("session", "hour", "weekday"):
        if not _is_int(e[k]) or e[k] < 0:
            raise bad(k, "must be a non-negative integer")
    if not (_is_int(e["time"]) or isinstance(e["time"], float)) or not math.isfinite(e["time"]):
        raise bad("time", "must be a finite number")
    e["time"] = float(e["time"])
    if e["hour"] != int(e["time"] // 3600) % 24:
        raise bad("hour", f"must be floor(time / 3600) mod 24 = {int(e['time'] // 3600) % 24}")
    if e["weekday"] != int(e["time"] // 86400) % 7:
        raise bad("weekday", f"must be floor(time / 86400) mod 7 = {int(e['time'] // 86400) % 7}")
    if e["kind"] not in KINDS:
        raise bad("kind", f"must be one of {KINDS}")
    if not isinstance(e["ambiguous"], bool):
        raise bad("ambiguous", "must be true or false")
    if e["kind"] == "plain" and e["ambiguous"]:
        raise bad("ambiguous", "must be false for kind 'plain'")
    if not isinstance(e["slots"], dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in e["slots"].items()):
        raise bad("slots", "must be an object of string values")
    if e["label"] != e["intent"] and not e["label"].startswith(e["intent"] + "@"):
        raise bad("label", f"must be the intent {e['intent']!r} or {e['intent']}@<value>")
    if prev is not None and prev["user"] == e["user"] and e["time"] <= prev["time"]:
        raise bad("time", f"must increase within a user (previous {prev['time']!r})")
    return e


def read_log(path) -> list[dict]:
    """Read and validate a log written by :func:`write_log`; errors name file:line and field."""
    path = Path(path)
    events, prev = [], None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                e = json.loads(line)
            except json.JSONDecodeError as err:
                raise LogFormatError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") \
                    from None
            prev = _check_event(e, where, prev)
            events.append(e)
    return events
