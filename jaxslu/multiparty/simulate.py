"""Simulated meetings: turns of two to four speakers mixed into one channel, with overlaps.

A meeting (LibriCSS-style simulation, as SURT in icefall also trains on) is planned from a spoken
corpus's metadata only, deterministically from (seed, meeting index):

  * `num_speakers` ~ U{min_speakers..max_speakers} distinct speakers of the corpus (capped by how
    many it has), `num_turns` ~ U{min_turns..max_turns} turns, each by a speaker other than the
    previous turn's (every chosen speaker speaks at least once when there are enough turns);
  * a turn is 1..max_words_per_turn utterances of its speaker, joined with 50-150 ms gaps;
  * a meeting overlap target rho ~ U(0, max_overlap); each turn after the first overlaps the
    previous one with probability `overlap_prob` by a fraction ~ U(0, 2 rho) (at most 0.9) of
    the shorter of the two turns, otherwise follows it after a pause ~ U(pause);
  * never more than two speakers at once: a turn starts after the turn before the previous one
    has ended (and after the previous one started), so turn order = start order;
  * each turn is scaled to an RMS level ~ U(-level_db, +level_db) dB around a common level.

Reference times are the speech bounds of each turn (first and last frame within 40 dB of the
turn's loudest 10 ms frame), in seconds. `MeetingSource[i]` reads and mixes the audio;
`metadata(i)` has the turns' speakers and words without touching audio.
"""
from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np

from jaxslu.data.sources import ExampleSource


def _rng(seed: int, *keys: Any) -> np.random.Generator:
    h = hashlib.sha256(repr((int(seed),) + tuple(keys)).encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "little"))


def speech_bounds(audio: np.ndarray, sample_rate: int, floor_db: float = 40.0) -> tuple[int, int]:
    """(first, last + 1) sample of the 10 ms frames within `floor_db` of the loudest frame."""
    hop = max(1, sample_rate // 100)
    n = len(audio) // hop
    if n < 1:
        return 0, len(audio)
    energy = np.square(audio[: n * hop].reshape(n, hop)).mean(axis=1) + 1e-12
    db = 10 * np.log10(energy)
    active = np.flatnonzero(db >= db.max() - floor_db)
    return int(active[0] * hop), int(min(len(audio), (active[-1] + 1) * hop))


def plan_meetings(speakers: Sequence[str], num_meetings: int, seed: int, *,
                  min_speakers: int = 2, max_speakers: int = 4, min_turns: int = 2,
                  max_turns: int = 4, max_words_per_turn: int = 3, max_overlap: float = 0.4,
                  overlap_prob: float = 0.6, pause: tuple[float, float] = (0.1, 0.5),
                  level_db: float = 3.0) -> list[dict[str, Any]]:
    """Plans of `num_meetings` meetings over a corpus whose example k is by `speakers[k]`.

    A plan: {"turns": [{"speaker", "clips": [example indices], "gaps": [s], "gain_db",
    "overlap": fraction or None, "pause": s}], "overlap_target": rho}. Deterministic in
    (seed, meeting index) and the corpus's speaker list.
    """
    by_speaker: dict[str, list[int]] = {}
    for k, s in enumerate(speakers):
        by_speaker.setdefault(str(s), []).append(k)
    names = sorted(by_speaker)
    if len(names) < 2:
        raise ValueError(f"meetings need a corpus with at least 2 speakers; it has {names}")
    if not (2 <= min_speakers <= max_speakers and 1 <= min_turns <= max_turns
            and max_words_per_turn >= 1 and 0 <= max_overlap < 1 and 0 <= overlap_prob <= 1):
        raise ValueError("meeting options out of range: need 2 <= min_speakers <= max_speakers, "
                         "1 <= min_turns <= max_turns, max_words_per_turn >= 1, "
                         "0 <= max_overlap < 1, 0 <= overlap_prob <= 1")
    plans = []
    for m in range(int(num_meetings)):
        rng = _rng(seed, "meeting", m)
        n_spk = int(rng.integers(min_speakers, min(max_speakers, len(names)) + 1))
        chosen = [names[i] for i in rng.choice(len(names), size=n_spk, replace=False)]
        n_turns = int(rng.integers(max(min_turns, 2), max_turns + 1))
        order: list[str] = []
        for t in range(n_turns):
            unused = [s for s in chosen if s not in order]
            pool = [s for s in (unused if unused and t > 0 else chosen)
                    if not order or s != order[-1]]
            order.append(pool[int(rng.integers(len(pool)))])
        rho = float(rng.uniform(0.0, max_overlap))
        turns = []
        for t, spk in enumerate(order):
            n_words = int(rng.integers(1, max_words_per_turn + 1))
            pool = by_speaker[spk]
            clips = [int(pool[int(rng.integers(len(pool)))]) for _ in range(n_words)]
            overlapped = t > 0 and rng.random() < overlap_prob
            turns.append({
                "speaker": spk, "clips": clips,
                "gaps": [float(g) for g in rng.uniform(0.05, 0.15, size=n_words - 1)],
                "gain_db": float(rng.uniform(-level_db, level_db)),
                "overlap": float(min(0.9, rng.uniform(0.0, 2 * rho))) if overlapped else None,
                "pause": float(rng.uniform(*pause)),
            })
        plans.append({"turns": turns, "overlap_target": rho})
    return plans


def render_meeting(plan: dict[str, Any], clips: dict[int, np.ndarray], sample_rate: int
                   ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Mix a planned meeting from its clips' audio ({example index: float32 at sample_rate}).

    Returns (mixture float32, turns [{"speaker", "start", "end" (seconds, speech bounds),
    "onset", "offset" (samples of the turn's audio in the mixture)}]) in start order."""
    pieces = []
    for turn in plan["turns"]:
        parts = []
        for k, idx in enumerate(turn["clips"]):
            a = np.asarray(clips[idx], np.float32)
            lo, hi = speech_bounds(a, sample_rate)
            parts.append(a[lo:hi] if hi > lo else a)
            if k < len(turn["gaps"]):
                parts.append(np.zeros(int(turn["gaps"][k] * sample_rate), np.float32))
        audio = np.concatenate(parts) if parts else np.zeros(1, np.float32)
        rms = float(np.sqrt(np.mean(np.square(audio)) + 1e-12))
        audio = audio * (0.05 * 10 ** (turn["gain_db"] / 20) / rms)
        pieces.append(audio.astype(np.float32))
    onsets, ends = [], []
    for t, (turn, audio) in enumerate(zip(plan["turns"], pieces)):
        if t == 0:
            start = int(0.2 * sample_rate)
        elif turn["overlap"] is not None:
            shorter = min(len(audio), len(pieces[t - 1]))
            start = ends[t - 1] - int(turn["overlap"] * shorter)
        else:
            start = ends[t - 1] + int(turn["pause"] * sample_rate)
        floor = max(onsets[t - 1] + 1, ends[t - 2] if t >= 2 else 0) if t else 0
        start = max(start, floor)
        onsets.append(start)
        ends.append(start + len(audio))
    total = max(ends) + int(0.3 * sample_rate)
    mix = np.zeros(total, np.float32)
    turns = []
    for turn, audio, on, end in zip(plan["turns"], pieces, onsets, ends):
        mix[on:end] += audio
        lo, hi = speech_bounds(audio, sample_rate)
        turns.append({"speaker": turn["speaker"], "start": (on + lo) / sample_rate,
                      "end": (on + hi) / sample_rate, "onset": on, "offset": end})
    peak = float(np.max(np.abs(mix)))
    if peak > 0.99:
        mix *= 0.99 / peak
    return mix, turns


def overlap_ratio(turns: Sequence[dict[str, Any]], resolution: float = 0.01) -> float:
    """Overlapped speech time / total speech time (union of the turns' [start, end])."""
    if not turns:
        return 0.0
    end = max(t["end"] for t in turns)
    grid = np.arange(0.0, end + resolution, resolution)
    active = np.zeros(len(grid), np.int32)
    for t in turns:
        active += (grid >= t["start"]) & (grid < t["end"])
    speech = int(np.sum(active > 0))
    return float(np.sum(active > 1) / speech) if speech else 0.0


def assign_channels(turns: Sequence[dict[str, Any]], channels: int) -> list[int]:
    """Heuristic (first-free) channel of each turn, in start order: the lowest channel whose last
    turn has ended by this turn's start, else the channel that frees first. With one channel,
    everything goes to channel 0 (the single-stream reference)."""
    free_at = [-np.inf] * channels
    out = []
    for t in turns:
        free = [c for c in range(channels) if free_at[c] <= t["start"]]
        c = free[0] if free else int(np.argmin(free_at))
        out.append(c)
        free_at[c] = t["end"]
    return out


class MeetingSource(ExampleSource):
    """Meetings over a spoken corpus (`base`: any source with speaker metadata and audio).

    Example: id, text (every word in start order), speaker "" (many), meta {"turns":
    [{"speaker", "words"}], "num_turns", "num_speakers"}, and from `__getitem__` also "audio"
    (the mixture at `sample_rate`), "sample_rate" and "turns" with "start"/"end" seconds.
    """

    def __init__(self, base, split: str, num_meetings: int, seed: int, sample_rate: int,
                 **options):
        self.base = base
        self.sample_rate = int(sample_rate)
        speakers = [base.metadata(k)["speaker"] for k in range(len(base))]
        self.plans = plan_meetings(speakers, num_meetings, seed, **options)
        records = []
        for m, plan in enumerate(self.plans):
            turns = [{"speaker": t["speaker"],
                      "words": [w for c in t["clips"] for w in base.text(c).split()]}
                     for t in plan["turns"]]
            records.append({
                "id": f"{split}-meeting{m:05d}", "text": " ".join(w for t in turns
                                                                  for w in t["words"]),
                "intent": None, "entities": [], "speaker": "",
                "meta": {"turns": turns, "num_turns": len(turns),
                         "num_speakers": len({t["speaker"] for t in turns}),
                         "overlap_target": plan["overlap_target"]}})
        super().__init__(f"meetings({base.name})", split, records, self.sample_rate)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from jaxslu.audio.io import resample

        example = self.metadata(i)
        plan = self.plans[int(i)]
        clips = {}
        for turn in plan["turns"]:
            for idx in turn["clips"]:
                if idx not in clips:
                    ex = self.base[idx]
                    audio = np.asarray(ex["audio"], np.float32)
                    if ex["sample_rate"] != self.sample_rate:
                        audio = resample(audio, ex["sample_rate"], self.sample_rate)
                    clips[idx] = audio
        mix, times = render_meeting(plan, clips, self.sample_rate)
        for t, ref in zip(times, example["meta"]["turns"]):
            t["words"] = ref["words"]
        example.update(audio=mix, sample_rate=self.sample_rate, turns=times,
                       overlap_ratio=overlap_ratio(times))
        return example
