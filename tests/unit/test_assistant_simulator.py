"""The simulated voice-assistant log (jaxslu.personalization.simulator): determinism, schema,
real ambiguity, informative history, and the JSONL round trip."""
from __future__ import annotations

import collections
import dataclasses
import json

import numpy as np
import pytest

from jaxslu.personalization import simulator as sim

SMALL = sim.SimulatorConfig(num_users=30, min_events=40, max_events=200, seed=3)
KEY_TYPES = {"user": str, "session": int, "time": float, "hour": int, "weekday": int, "text": str,
             "intent": str, "label": str, "kind": str, "ambiguous": bool, "slots": dict}


@pytest.fixture(scope="module")
def small():
    return sim.simulate(SMALL)


@pytest.fixture(scope="module")
def medium():
    return sim.simulate(dataclasses.replace(SMALL, num_users=200, seed=11))


def _by_user(events):
    users = collections.defaultdict(list)
    for e in events:
        users[e["user"]].append(e)
    return users


def test_deterministic_and_seed_dependent(small):
    assert sim.simulate(SMALL) == small
    other = sim.simulate(dataclasses.replace(SMALL, seed=4))
    assert other != small
    assert [e["text"] for e in other[:50]] != [e["text"] for e in small[:50]]


def test_user_events_do_not_depend_on_num_users(small):
    more = sim.simulate(dataclasses.replace(SMALL, num_users=45))
    assert [e for e in more if e["user"] in {f"u{i:05d}" for i in range(1, 31)}] == small
    assert len({e["user"] for e in more}) == 45


def test_schema(small):
    assert len({e["user"] for e in small}) == SMALL.num_users
    labels = set(sim.label_set(small))
    for e in small:
        assert list(e) == list(sim.EVENT_KEYS)
        for k, t in KEY_TYPES.items():
            assert type(e[k]) is t, (k, e)
        assert e["hour"] == int(e["time"] // 3600) % 24 and 0 <= e["hour"] <= 23
        assert e["weekday"] == int(e["time"] // 86400) % 7
        assert e["kind"] in sim.KINDS
        assert e["text"] == " ".join(e["text"].split()) and e["text"] == e["text"].lower()
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in e["slots"].items())
        assert e["label"] in labels
        if e["kind"] == "plain":
            assert e["label"] == e["intent"] and not e["ambiguous"]
        elif e["kind"] == "source":
            assert e["label"] == e["intent"] and e["intent"].startswith("play_")
        else:
            intent, value = e["label"].split("@")
            assert intent == e["intent"] and value
            slot = {"room": "house_place", "place": "business_name", "genre": "music_genre"}
            assert e["slots"][slot[e["kind"]]] == value
            if not e["ambiguous"]:
                assert value in e["text"]
    for events in _by_user(small).values():
        assert len(events) >= SMALL.min_events and len(events) <= SMALL.max_events
        times = [e["time"] for e in events]
        assert all(a < b for a, b in zip(times, times[1:]))
        sessions = [e["session"] for e in events]
        assert sessions[0] == 0 and all(b - a in (0, 1) for a, b in zip(sessions, sessions[1:]))
    assert [e["user"] for e in small] == sorted(e["user"] for e in small)


def test_mix_of_kinds(medium):
    n = len(medium)
    resolvable = [e for e in medium if e["kind"] != "plain"]
    assert 0.35 <= len(resolvable) / n <= 0.55
    amb = sum(e["ambiguous"] for e in resolvable) / len(resolvable)
    assert abs(amb - SMALL.ambiguous_fraction) < 0.03
    assert {e["kind"] for e in medium} == set(sim.KINDS)
    assert len(sim.label_set(medium)) > 100


def test_ambiguity_is_real(medium):
    amb = [e for e in medium if e["ambiguous"]]
    labels_of = collections.defaultdict(set)
    for e in amb:
        labels_of[e["text"]].add(e["label"])
    freq = collections.Counter(e["text"] for e in amb)
    frequent = [e for e in amb if freq[e["text"]] >= 5]
    assert len(frequent) > 0.5 * len(amb)
    shared = sum(len(labels_of[e["text"]]) >= 2 for e in frequent) / len(frequent)
    assert shared >= 0.9, shared
    # the commonest ambiguous texts are read several ways across users
    common = freq.most_common(10)
    assert all(len(labels_of[t]) >= 3 for t, _ in common)
    # "play <shared name>": the same title is used as different sources by different users
    by_title = collections.defaultdict(set)
    for e in medium:
        if e["kind"] == "source":
            title = next(v for k, v in e["slots"].items() if k.endswith("_name"))
            by_title[title].add(e["intent"])
    assert np.mean([len(v) >= 3 for v in by_title.values()]) > 0.5


def test_unambiguous_labels_are_determined_by_text(medium):
    unamb = [e for e in medium if not e["ambiguous"]]
    counts = collections.defaultdict(collections.Counter)
    for e in unamb:
        counts[e["text"]][e["label"]] += 1
    consistent = sum(c.most_common(1)[0][1] for c in counts.values()) / len(unamb)
    assert consistent >= 0.95, consistent
    resolvable = [e for e in unamb if e["kind"] != "plain"]
    rc = sum(counts[e["text"]].most_common(1)[0][0] == e["label"] for e in resolvable)
    assert rc / len(resolvable) >= 0.98


def _history_margin(events):
    """Accuracy on ambiguous events of (a) the user's majority label for the same text among
    their earlier events (backing off to their majority label of the same kind, then to (b))
    and of (b) the population's majority label for that text, from all *other* users' events
    (backing off to the population's majority label of the kind)."""
    amb = [e for e in events if e["ambiguous"]]
    pop_text = collections.defaultdict(collections.Counter)
    pop_kind = collections.defaultdict(collections.Counter)
    for e in amb:
        pop_text[e["text"]][e["label"]] += 1
        pop_kind[e["kind"]][e["label"]] += 1
    hits_user = hits_pop = n = 0
    for user_events in _by_user(events).values():
        own = collections.defaultdict(collections.Counter)
        for e in user_events:
            if e["ambiguous"]:
                own[e["text"]][e["label"]] += 1
        by_text = collections.defaultdict(collections.Counter)
        by_kind = collections.defaultdict(collections.Counter)
        for e in user_events:
            if e["ambiguous"]:
                others = pop_text[e["text"]] - own[e["text"]]
                pop = (others or pop_kind[e["kind"]]).most_common(1)[0][0]
                if by_text[e["text"]]:
                    guess = by_text[e["text"]].most_common(1)[0][0]
                elif by_kind[e["kind"]]:
                    guess = by_kind[e["kind"]].most_common(1)[0][0]
                else:
                    guess = pop
                hits_user += guess == e["label"]
                hits_pop += pop == e["label"]
                n += 1
            by_text[e["text"]][e["label"]] += 1
            if e["kind"] != "plain":
                by_kind[e["kind"]][e["label"]] += 1
    return hits_user / n, hits_pop / n


def test_history_is_informative(medium):
    user_acc, glob_acc = _history_margin(medium)
    assert user_acc - glob_acc >= 0.15, (user_acc, glob_acc)


def test_history_check_can_fail(medium):
    # control: the same events with users shuffled (within each kind, so the log keeps its
    # shape) carry no personal signal, and the same check must then find no clear margin
    rng = np.random.default_rng(0)
    shuffled = [dict(e) for e in medium]
    for kind in sim.KINDS:
        idx = [i for i, e in enumerate(shuffled) if e["kind"] == kind]
        users = [shuffled[i]["user"] for i in idx]
        rng.shuffle(users)
        for i, u in zip(idx, users):
            shuffled[i]["user"] = u
    shuffled.sort(key=lambda e: (e["user"], e["time"]))
    user_acc, glob_acc = _history_margin(shuffled)
    assert user_acc - glob_acc < 0.05, (user_acc, glob_acc)


def test_write_read_round_trip(tmp_path, small):
    path = sim.write_log(tmp_path / "sub" / "log.jsonl", small)
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    assert sim.read_log(path) == small
    assert len(path.read_text().splitlines()) == len(small)


def test_read_log_errors_name_file_line_and_field(tmp_path, small):
    lines = [json.dumps(e) for e in small[:5]]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines[:2] + ["{not json"] + lines[3:]) + "\n")
    with pytest.raises(sim.LogFormatError, match=rf"{bad}:3: invalid JSON"):
        sim.read_log(bad)

    missing = dict(small[3])
    del missing["label"]
    bad.write_text("\n".join(lines[:3] + [json.dumps(missing)]) + "\n")
    with pytest.raises(sim.LogFormatError, match=rf"{bad}:4: missing field 'label'"):
        sim.read_log(bad)

    wrong = dict(small[1], ambiguous="yes")
    bad.write_text("\n".join([lines[0], json.dumps(wrong)]) + "\n")
    with pytest.raises(sim.LogFormatError, match=rf"{bad}:2: field 'ambiguous'"):
        sim.read_log(bad)

    backwards = dict(small[1], time=small[0]["time"] - 1.0)
    backwards["hour"] = int(backwards["time"] // 3600) % 24
    backwards["weekday"] = int(backwards["time"] // 86400) % 7
    bad.write_text("\n".join([lines[0], json.dumps(backwards)]) + "\n")
    with pytest.raises(sim.LogFormatError, match=rf"{bad}:2: field 'time'"):
        sim.read_log(bad)


def test_data_paths_are_arguments(tmp_path):
    from jaxslu.paths import data_dir
    cfg = dataclasses.replace(SMALL, num_users=3, hwu64_dir=str(data_dir() / "hwu64"),
                              slurp_path="")
    events = sim.simulate(cfg)
    assert events and events != sim.simulate(dataclasses.replace(cfg, slurp_path=None))
    with pytest.raises(FileNotFoundError):
        sim.simulate(dataclasses.replace(cfg, hwu64_dir=str(tmp_path / "nowhere")))
