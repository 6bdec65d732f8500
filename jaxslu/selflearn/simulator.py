"""The simulated assistant log: users, their requests, the system's real mistakes, their reactions.

Users issue requests drawn from the request pool (`jaxslu.selflearn.data`: HWU64 and SLURP
intents with slots). The system is a trained jaxslu NLU model (configs/selflearn_system.py), so
its defects are real model errors on phrasings it has not seen; in front of it sits a simulated
recognizer whose errors are phonetic confusions from eSpeak NG (`confusions.py`).

Users (deterministic from the seed and the user's index):
  * scenario tastes (Dirichlet 0.3 over the pool's scenarios) and a set of favourite requests
    they repeat (a habit share of their first requests, as in the personalization simulator);
  * short forms: 40% of users say some of their habitual requests by their slot values alone
    ("chicken noodle soup" for "find me a recipe for chicken noodle soup"), so one text means
    different requests for different users (the ambiguity personal rewriting resolves);
  * an acoustic difficulty (log-normal multiplier of the recognizer's error rates);
  * reaction habits: barge-in, rephrase, thanks probabilities, patience (attempts before giving
    up), a rephrase style (paraphrase / correction / more specific / repeat).

Recognizer: word w with confusable words c(w) is replaced with probability e(w) * difficulty
(repeat rephrases: half), by its closest confusion with probability 0.75 (systematic errors,
the ones rewriting can learn) else a random one; e(w) is drawn once per word: U(0, 0.01) for
the pool's 300 most frequent words, else U(0.1, 0.4) for 12% of the words (hard ones) and
U(0, 0.02) for the rest. Substitutions keep the word count, so word
spans of the spoken text index the hypothesis too. ASR confidence falls with the share of
substituted words (plus noise).

A turn's ground truth, the earliest irrecoverable failure:
  * "false_wake": the device woke without a request (background speech);
  * "asr_error": the hypothesis differs from the spoken words and the interpretation is wrong
    because of it (the NLU model would have been right on the spoken words, or a word of an
    intended slot value was replaced);
  * "nlu_error": wrong intent; "entity_error": right intent, an intended slot value not
    resolved by the predicted slots (a predicted value holding all its words, or at least half
    of them and no other word; types ignored: resolution is by value within the intent);
    "result_error": right interpretation, the backend failed (per turn, `result_failure`);
  * "correct".
After a failure the user notices it (92%), may barge in, then rephrases within the patience
(paraphrase: another pool phrasing of the same intent and slot types with the intended values;
correction: "no i said ..." + the request; more specific: the longest such phrasing; repeat:
the request's words again, said more carefully; a short form is said in full) after a short
gap (log-normal, median 4 s; 8% of the time a long one, 60-300 s), switches to a new request,
or gives up. After a success: thanks or nothing, sometimes a new request. Signals per turn: none / barge_in / rephrase / abandon / thanks.

The log is one session per line (JSON, gzip when the name ends in .gz):
  {"session", "user", "day", "split": "train" | "heldout" (the last `heldout_days` days),
   "turns": [{"t", "directed", "intended": {"intent", "slots": [{"type", "value"}], "text"} | null,
              "spoken", "asr", "asr_conf", "nlu": {"intent", "slots", "conf"}, "result_ok",
              "failure", "success", "signal", "rephrase_of", "rephrase_span", "kind"}]}
`rephrase_span` is the word span of `asr` that restates the request (after "no i said");
`rephrase_of` the index of the turn whose request it restates (-1: a new request).
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import math
import os
import random
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

FAILURES = ("correct", "false_wake", "asr_error", "nlu_error", "entity_error", "result_error")
SIGNALS = ("none", "barge_in", "rephrase", "abandon", "thanks")
KINDS = ("first", "paraphrase", "correction", "specific", "repeat", "false_wake")
STYLES = ("paraphrase", "correction", "specific", "repeat")
CORRECTION_PREFIXES = ("no i said", "i said", "no", "i meant", "no no")


@dataclasses.dataclass(frozen=True)
class SimulatorConfig:
    num_users: int = 3000
    sessions_per_user: float = 36.0  # mean; users' activity varies (log-normal)
    days: int = 30
    heldout_days: int = 6
    max_turns: int = 5
    false_wake_rate: float = 0.03
    result_failure: float = 0.03
    notice_rate: float = 0.92
    favourites: tuple[int, int] = (4, 12)
    seed: int = 0
    hwu64_path: str = ""
    slurp_path: str = ""
    system_share: float = 0.6

    def __post_init__(self):
        if self.num_users < 1 or self.sessions_per_user <= 0:
            raise ValueError("SimulatorConfig needs num_users >= 1 and sessions_per_user > 0")
        if not 0 <= self.heldout_days < self.days:
            raise ValueError(f"heldout_days={self.heldout_days} must be in [0, days={self.days})")


class System(Protocol):
    def interpret(self, texts: Sequence[str]) -> list[dict]:
        """[{"intent": str, "slots": [{"type", "value"}], "conf": float}] per text."""


class NluSystem:
    """A trained jaxslu NLU run (a `jaxslu train` workdir) as the assistant's understanding."""

    def __init__(self, workdir: str | Path):
        from jaxslu.eval.run import LoadedRun
        from jaxslu.nlu.evaluate import NluPredictor

        self.workdir = str(workdir)
        self.predictor = NluPredictor(LoadedRun.from_workdir(workdir))

    def interpret(self, texts: Sequence[str]) -> list[dict]:
        rows = self.predictor.predict_texts(list(texts))
        return [{"intent": r["intent"], "conf": float(r["confidence"]),
                 "slots": [{"type": s["type"], "value": s["value"]} for s in r["slots"]]}
                for r in rows]


class Interpreter:
    """A caching front of a System: `prefetch(texts)` interprets the new ones in one batch."""

    def __init__(self, system: System, cache: dict[str, dict] | None = None):
        self.system = system
        self.cache: dict[str, dict] = dict(cache or {})

    def prefetch(self, texts: Iterable[str]) -> None:
        new = sorted({t for t in texts if t not in self.cache})
        if new:
            for t, r in zip(new, self.system.interpret(new)):
                self.cache[t] = r

    def __call__(self, text: str) -> dict:
        if text not in self.cache:
            self.prefetch([text])
        return self.cache[text]


def _resolves(predicted: list[str], intended: list[str]) -> bool:
    """A predicted slot value resolves an intended one when it holds all its words, or is a part
    of it holding at least half its words (a boundary error entity resolution absorbs)."""
    p, v = set(predicted), set(intended)
    return bool(v) and (v <= p or (p <= v and 2 * len(p) >= len(v)))


def slot_values_match(predicted: Sequence[dict], intended: Sequence[dict]) -> bool:
    """Every intended slot value is resolved by a distinct predicted value (types ignored:
    resolution is by value within the intent)."""
    got = [s["value"].split() for s in predicted]
    for s in intended:
        v = s["value"].split()
        k = next((i for i, g in enumerate(got) if _resolves(g, v)), None)
        if k is None:
            return False
        got.pop(k)
    return True


def serves(interpretation: dict, intended: dict | None) -> bool:
    """The interpretation carries out the intended request (right intent, every slot value)."""
    return (intended is not None and interpretation["intent"] == intended["intent"]
            and slot_values_match(interpretation["slots"], intended["slots"]))


class Judge:
    """`judge(text, turn)`: would the system have served the turn's intended request had it
    received `text` (a rewrite) instead; the backend's failure of the turn stays a failure."""

    def __init__(self, interpreter: Interpreter):
        self.interpreter = interpreter

    def prefetch(self, texts: Iterable[str]) -> None:
        self.interpreter.prefetch(texts)

    def __call__(self, text: str, turn: dict) -> bool:
        if not turn.get("directed", True) or turn.get("intended") is None:
            return False
        return bool(turn.get("result_ok", True)) and serves(self.interpreter(text),
                                                            turn["intended"])


# ----------------------------------------------------------------------------------- the corpus
@dataclasses.dataclass
class _Request:
    text: str
    intent: str
    scenario: str
    words: list[str]
    slots: list[tuple[str, int, int]]  # (type, start, end) word spans

    @property
    def signature(self) -> tuple[str, tuple[str, ...]]:
        return self.intent, tuple(sorted(t for t, _, _ in self.slots))

    def slot_dicts(self) -> list[dict]:
        return [{"type": t, "value": " ".join(self.words[s:e])} for t, s, e in self.slots]


class _Corpus:
    def __init__(self, cfg: SimulatorConfig):
        from jaxslu.selflearn.data import request_pool

        parts = request_pool(cfg.hwu64_path, cfg.slurp_path, cfg.system_share)
        self.requests: list[_Request] = []
        for r in parts["system_train"] + parts["unseen"]:
            words = r["text"].split()
            slots = [(e["type"], e["start"], e["end"]) for e in r["entities"]]
            self.requests.append(_Request(r["text"], r["intent"], r["meta"].get("domain") or
                                          r["intent"].split("_")[0], words, slots))
        self.requests.sort(key=lambda q: (q.intent, q.text))
        self.scenarios = sorted({q.scenario for q in self.requests})
        self.by_scenario: dict[str, list[int]] = defaultdict(list)
        self.by_signature: dict[tuple, list[int]] = defaultdict(list)
        for i, q in enumerate(self.requests):
            self.by_scenario[q.scenario].append(i)
            self.by_signature[q.signature].append(i)
        self.vocab = sorted({w for q in self.requests for w in q.words})


@functools.lru_cache(maxsize=4)
def _corpus(hwu64_path: str, slurp_path: str, system_share: float) -> _Corpus:
    return _Corpus(SimulatorConfig(num_users=1, hwu64_path=hwu64_path, slurp_path=slurp_path,
                                   system_share=system_share))


def corpus_for(cfg: SimulatorConfig) -> _Corpus:
    """The request pool of `cfg` (read once per process)."""
    return _corpus(cfg.hwu64_path, cfg.slurp_path, cfg.system_share)


@functools.lru_cache(maxsize=4)
def _table(words: tuple[str, ...]) -> dict[str, list[str]]:
    from jaxslu.selflearn.confusions import confusion_table

    return confusion_table(words)


def _fill(template: _Request, values: list[tuple[str, str]]) -> tuple[list[str], list[tuple]]:
    """The template's words with its slot spans replaced by `values` (type, value) of the same
    types, in the template's slot order; returns (words, slot spans)."""
    pool = list(values)
    words: list[str] = []
    spans = []
    pos = 0
    for t, s, e in sorted(template.slots, key=lambda x: x[1]):
        words += template.words[pos:s]
        k = next(i for i, (vt, _) in enumerate(pool) if vt == t)
        v = pool.pop(k)[1].split()
        spans.append((t, len(words), len(words) + len(v)))
        words += v
        pos = e
    words += template.words[pos:]
    return words, spans


# ---------------------------------------------------------------------------------- the users
@dataclasses.dataclass
class _User:
    id: str
    scenario_cum: list[float]
    favourites: list[int]
    habit_share: float
    difficulty: float
    p_barge: float
    p_rephrase: float
    p_thanks: float
    p_followup: float
    patience: int
    style_cum: list[float]
    p_short: float


def _cum(weights: Sequence[float]) -> list[float]:
    total, out = 0.0, []
    for w in weights:
        total += w
        out.append(total)
    return [x / total for x in out]


def _pick(cum: Sequence[float], u: float) -> int:
    for i, c in enumerate(cum):
        if u < c:
            return i
    return len(cum) - 1


def _make_user(cfg: SimulatorConfig, c: _Corpus, index: int) -> _User:
    rng = random.Random(f"selflearn/{cfg.seed}/user/{index}")
    tastes = [rng.gammavariate(0.3, 1.0) + 1e-6 for _ in c.scenarios]
    cum = _cum(tastes)
    favs = []
    for _ in range(rng.randint(*cfg.favourites)):
        pool = c.by_scenario[c.scenarios[_pick(cum, rng.random())]]
        favs.append(pool[rng.randrange(len(pool))])
    style = [rng.gammavariate(1.0, 1.0) + 1e-6 for _ in STYLES]
    return _User(id=f"u{index:05d}", scenario_cum=cum, favourites=favs,
                 habit_share=rng.uniform(0.3, 0.8),
                 difficulty=min(3.0, max(0.3, math.exp(rng.gauss(0.0, 0.5)))),
                 p_barge=rng.uniform(0.1, 0.5), p_rephrase=rng.uniform(0.6, 0.95),
                 p_thanks=rng.uniform(0.02, 0.3), p_followup=rng.uniform(0.05, 0.3),
                 patience=rng.randint(1, 3), style_cum=_cum(style),
                 p_short=rng.uniform(0.2, 0.7) if rng.random() < 0.4 else 0.0)


# ----------------------------------------------------------------------------- the recognizer
class _Recognizer:
    def __init__(self, cfg: SimulatorConfig, table: dict[str, list[str]],
                 counts: dict[str, int]):
        self.table = table
        self.rate: dict[str, float] = {}
        frequent = set(sorted(counts, key=lambda w: (-counts[w], w))[:300])
        for w in sorted(table):
            r = random.Random(f"selflearn/{cfg.seed}/word/{w}")
            if w in frequent:  # the language model knows them well
                self.rate[w] = r.uniform(0.0, 0.01)
            else:
                self.rate[w] = r.uniform(0.1, 0.4) if r.random() < 0.12 else r.uniform(0.0, 0.02)

    def __call__(self, words: list[str], difficulty: float, rng: random.Random
                 ) -> tuple[list[str], list[int], float]:
        out, changed = [], []
        for i, w in enumerate(words):
            conf = self.table.get(w)
            if conf and rng.random() < min(0.9, self.rate[w] * difficulty):
                out.append(conf[0] if rng.random() < 0.75 else conf[rng.randrange(len(conf))])
                changed.append(i)
            else:
                out.append(w)
        share = len(changed) / max(1, len(words))
        conf = 0.97 - 0.6 * share - 0.04 * math.log(difficulty) + rng.gauss(0.0, 0.06)
        return out, changed, round(min(1.0, max(0.02, conf)), 4)


# ------------------------------------------------------------------------------- the sessions
@dataclasses.dataclass
class _Pending:
    words: list[str]
    slots: list[tuple[str, int, int]]     # intended slot spans in `words`
    kind: str
    rephrase_of: int
    span: tuple[int, int] | None
    t: float
    careful: bool = False
    hyp: list[str] | None = None
    changed: list[int] | None = None
    asr_conf: float = 1.0


class _Session:
    def __init__(self, cfg, corpus, user: _User, sid: str, day: int, split: str, rng):
        self.cfg, self.c, self.user, self.rng = cfg, corpus, user, rng
        self.record = {"session": sid, "user": user.id, "day": day, "split": split, "turns": []}
        self.goal: _Request | None = None
        self.goal_turn = -1
        self.attempts = 0
        self.pending: _Pending | None = None
        self.intended: dict | None = None
        if rng.random() < cfg.false_wake_rate:
            q = corpus.requests[rng.randrange(len(corpus.requests))]
            a = rng.randrange(len(q.words))
            words = q.words[a:a + rng.randint(2, 5)]
            self.pending = _Pending(words, [], "false_wake", -1, None, 0.0)
        else:
            self._new_goal(0.0)

    def _new_goal(self, t: float) -> None:
        u, c, rng = self.user, self.c, self.rng
        favourite = rng.random() < u.habit_share
        if favourite:
            i = u.favourites[rng.randrange(len(u.favourites))]
        else:
            pool = c.by_scenario[c.scenarios[_pick(u.scenario_cum, rng.random())]]
            i = pool[rng.randrange(len(pool))]
        self.goal = q = c.requests[i]
        self.attempts = 0
        self.goal_turn = len(self.record["turns"])
        self.intended = {"intent": q.intent, "slots": q.slot_dicts(), "text": q.text}
        words, spans = list(q.words), list(q.slots)
        if favourite and q.slots and rng.random() < u.p_short:
            # the user's own short form of a habitual request: its slot values alone
            words, spans = [], []
            for tp, s, e in sorted(q.slots, key=lambda x: x[1]):
                spans.append((tp, len(words), len(words) + e - s))
                words += q.words[s:e]
        self.pending = _Pending(words, spans, "first", -1, (0, len(words)), t)

    def _rephrase(self, t: float) -> None:
        q, rng, c = self.goal, self.rng, self.c
        assert q is not None
        style = STYLES[_pick(self.user.style_cum, rng.random())]
        values = [(tp, " ".join(q.words[s:e])) for tp, s, e in q.slots]
        others = [i for i in c.by_signature[q.signature] if c.requests[i].text != q.text]
        careful = False
        if style in ("paraphrase", "specific") and others:
            if style == "specific":
                longest = max(len(c.requests[i].words) for i in others)
                cands = [i for i in others if len(c.requests[i].words) == longest]
                if longest <= len(q.words):
                    style, cands = "paraphrase", others
            else:
                cands = others
            words, spans = _fill(c.requests[cands[rng.randrange(len(cands))]], values)
            span = (0, len(words))
        elif style == "correction":
            prefix = CORRECTION_PREFIXES[rng.randrange(len(CORRECTION_PREFIXES))].split()
            words = prefix + q.words
            spans = [(tp, s + len(prefix), e + len(prefix)) for tp, s, e in q.slots]
            span = (len(prefix), len(words))
        else:
            style, words, spans, span, careful = "repeat", list(q.words), list(q.slots), \
                (0, len(q.words)), True
        self.pending = _Pending(words, spans, style, self.goal_turn, span, t, careful)

    def hear(self, recognizer: _Recognizer) -> None:
        p = self.pending
        assert p is not None
        d = self.user.difficulty * (0.5 if p.careful else 1.0)
        p.hyp, p.changed, p.asr_conf = recognizer(p.words, d, self.rng)

    def texts(self) -> list[str]:
        p = self.pending
        return [" ".join(p.words), " ".join(p.hyp)]

    def resolve(self, interpret: Interpreter) -> None:
        cfg, u, rng, p = self.cfg, self.user, self.rng, self.pending
        assert p is not None and p.hyp is not None
        spoken, hyp = " ".join(p.words), " ".join(p.hyp)
        nlu = interpret(hyp)
        directed = p.kind != "false_wake"
        result_ok = rng.random() >= cfg.result_failure
        if not directed:
            failure = "false_wake"
        elif serves(nlu, self.intended):
            failure = "correct" if result_ok else "result_error"
        else:
            failure = ""
            if p.changed:
                slot_hit = any(s <= i < e for _, s, e in p.slots for i in p.changed)
                if serves(interpret(spoken), self.intended) or (
                        nlu["intent"] == self.intended["intent"] and slot_hit):
                    failure = "asr_error"
            if not failure:
                failure = ("nlu_error" if nlu["intent"] != self.intended["intent"]
                           else "entity_error")
        success = failure == "correct"
        duration = 1.0 + 0.4 * len(p.words)
        turns = self.record["turns"]
        turn = {"t": round(p.t, 2), "directed": directed,
                "intended": dict(self.intended) if directed else None,
                "spoken": spoken, "asr": hyp, "asr_conf": p.asr_conf,
                "nlu": {"intent": nlu["intent"], "slots": nlu["slots"],
                        "conf": round(float(nlu["conf"]), 4)},
                "result_ok": result_ok, "failure": failure, "success": success,
                "signal": "none", "rephrase_of": p.rephrase_of,
                "rephrase_span": list(p.span) if p.span and p.rephrase_of >= 0 else None,
                "kind": p.kind}
        turns.append(turn)
        self.pending = None
        last_turn = len(turns) >= cfg.max_turns
        t_next = p.t + duration + 2.0
        if not directed:
            turn["signal"] = "barge_in" if rng.random() < 0.4 else "none"
            return
        if success:
            turn["signal"] = "thanks" if rng.random() < u.p_thanks else "none"
            if not last_turn and rng.random() < u.p_followup:
                self._new_goal(t_next + rng.uniform(3.0, 120.0))
            return
        if rng.random() >= cfg.notice_rate:  # an unnoticed failure looks like a success
            return
        barged = rng.random() < u.p_barge
        self.attempts += 1
        if not last_turn and self.attempts <= u.patience and rng.random() < u.p_rephrase:
            turn["signal"] = "barge_in" if barged else "rephrase"
            gap = (rng.uniform(60.0, 300.0) if rng.random() < 0.08
                   else math.exp(rng.gauss(math.log(4.0), 0.6)))
            self._rephrase((p.t + 0.5 * duration if barged else t_next) + gap)
        else:
            turn["signal"] = "barge_in" if barged else "abandon"
            if not last_turn and rng.random() < 0.15:  # gives up on it, asks something else
                self._new_goal(t_next + rng.uniform(3.0, 60.0))


def simulate(cfg: SimulatorConfig, system: System, *, confusions: dict[str, list[str]] | None
             = None, interpreter: Interpreter | None = None,
             progress: Callable[[str], None] | None = None) -> Iterator[dict]:
    """The sessions, in (day, user, session) order, deterministic in `cfg` and the system.

    Turns are resolved in rounds (every open session's next turn at once) so the system
    interprets each round's new texts in one batch."""
    corpus = corpus_for(cfg)
    table = confusions if confusions is not None else _table(tuple(corpus.vocab))
    counts: dict[str, int] = defaultdict(int)
    for q in corpus.requests:
        for w in q.words:
            counts[w] += 1
    recognizer = _Recognizer(cfg, table, counts)
    interpreter = interpreter or Interpreter(system)
    rng0 = random.Random(f"selflearn/{cfg.seed}/activity")
    sessions: list[_Session] = []
    first_heldout = cfg.days - cfg.heldout_days
    for ui in range(cfg.num_users):
        user = _make_user(cfg, corpus, ui)
        activity = math.exp(rng0.gauss(0.0, 0.5) - 0.125)
        n = _poisson(rng0, cfg.sessions_per_user * activity)
        days = sorted(rng0.randrange(cfg.days) for _ in range(n))
        for k, day in enumerate(days):
            rng = random.Random(f"selflearn/{cfg.seed}/session/{ui}/{k}")
            split = "heldout" if day >= first_heldout else "train"
            sessions.append(_Session(cfg, corpus, user, f"s{ui:05d}_{k:03d}", day, split, rng))
    sessions.sort(key=lambda s: (s.record["day"], s.record["user"], s.record["session"]))
    open_ = list(sessions)
    rounds = 0
    while open_:
        for s in open_:
            s.hear(recognizer)
        interpreter.prefetch(t for s in open_ for t in s.texts())
        for s in open_:
            s.resolve(interpreter)
        open_ = [s for s in open_ if s.pending is not None]
        rounds += 1
        if progress:
            progress(f"round {rounds}: {len(open_)} sessions continue; "
                     f"{len(interpreter.cache)} texts interpreted")
    for s in sessions:
        yield s.record


def _poisson(rng: random.Random, lam: float) -> int:
    if lam > 50:
        return max(0, int(round(rng.gauss(lam, math.sqrt(lam)))))
    k, p, limit = 0, 1.0, math.exp(-lam)
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


# ----------------------------------------------------------------------------------- log files
class LogFormatError(ValueError):
    """A session log line that is not a session of the documented format (names file:line)."""


def _open(path: Path, mode: str):
    return gzip.open(path, mode + "t", encoding="utf-8") if path.suffix == ".gz" else \
        open(path, mode, encoding="utf-8")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """Writes dicts one JSON per line (gzip for .gz), atomically: a temporary file, then a
    rename; returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp" + (".gz" if path.suffix == ".gz" else ""))
    n = 0
    with _open(tmp, "w") as f:
        for s in rows:
            f.write(json.dumps(s, separators=(",", ":")) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


write_sessions = write_jsonl  # a session log is one session per line


_TURN_FIELDS = ("t", "directed", "intended", "spoken", "asr", "asr_conf", "nlu", "failure",
                "success", "signal", "rephrase_of", "rephrase_span", "kind")


def check_session(s: Any, where: str) -> dict:
    if not isinstance(s, dict):
        raise LogFormatError(f"{where}: a session is a JSON object, got {type(s).__name__}")
    for f in ("session", "user", "day", "split", "turns"):
        if f not in s:
            raise LogFormatError(f"{where}: session {s.get('session')!r} lacks {f!r}; see "
                                 "jaxslu/selflearn/simulator.py for the format")
    if not isinstance(s["turns"], list) or not s["turns"]:
        raise LogFormatError(f"{where}: session {s['session']!r} has no turns")
    for k, t in enumerate(s["turns"]):
        missing = [f for f in _TURN_FIELDS if f not in t]
        if missing:
            raise LogFormatError(f"{where}: session {s['session']!r} turn {k} lacks {missing}")
        if t["failure"] not in FAILURES or t["signal"] not in SIGNALS:
            raise LogFormatError(f"{where}: session {s['session']!r} turn {k}: failure "
                                 f"{t['failure']!r} / signal {t['signal']!r} not in {FAILURES} / "
                                 f"{SIGNALS}")
        if not isinstance(t["asr"], str) or not t["asr"].strip():
            raise LogFormatError(f"{where}: session {s['session']!r} turn {k} has an empty asr")
    return s


def read_sessions(path: str | Path, split: str | None = None) -> list[dict]:
    """The sessions of a log file (or of `sessions.jsonl.gz` in a folder), optionally one split."""
    path = Path(path)
    if path.is_dir():
        path = path / "sessions.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"session log {str(path)!r} not found; write one with "
                                "`jaxslu selflearn simulate --out DIR`")
    out = []
    with _open(path, "r") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                s = json.loads(line)
            except json.JSONDecodeError as e:
                raise LogFormatError(f"{path}:{n}: not JSON ({e})") from e
            check_session(s, f"{path}:{n}")
            if split is None or s["split"] == split:
                out.append(s)
    return out


def log_stats(sessions: Sequence[dict]) -> dict[str, Any]:
    turns = [t for s in sessions for t in s["turns"]]
    directed = [t for t in turns if t["directed"]]
    count = lambda key, vals: {v: sum(t[key] == v for t in turns) for v in vals}
    return {"sessions": len(sessions), "users": len({s["user"] for s in sessions}),
            "turns": len(turns), "directed_turns": len(directed),
            "defect_rate": (sum(not t["success"] for t in directed) / len(directed)
                            if directed else 0.0),
            "failures": count("failure", FAILURES), "signals": count("signal", SIGNALS),
            "kinds": count("kind", KINDS),
            "splits": {sp: sum(s["split"] == sp for s in sessions) for sp in ("train", "heldout")}}
