"""Label vocabularies (intents, BIO slot tags, speakers) and the token-level BIO conversion.

Built once from the training source (metadata only, no audio reads) and saved as `labels.json`
in the workdir so evaluation and inference index labels exactly as training did.

Design choices:
* Intents and speakers are sorted lists (stable across runs regardless of data order).
* Tags are "O" followed by B-<type>, I-<type> for each entity type in sorted order.
* An intent, speaker or entity type not in the vocabulary (e.g. at evaluation) maps to -1 (intent,
  speaker) or "O" (tags) and is counted; the counts are logged once per new name so a mismatch
  between training and evaluation labels is visible without failing the run.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from jaxslu.data.batch import NO_INTENT

log = logging.getLogger(__name__)

OUTSIDE = "O"


@dataclasses.dataclass
class Vocabularies:
    intents: list[str]
    tags: list[str]
    speakers: list[str]
    # Domains (scenarios) of text NLU corpora, from meta["domain"]; empty where there are none.
    domains: list[str] = dataclasses.field(default_factory=list)
    # name -> how often an unknown label was looked up (not saved)
    unknown: collections.Counter = dataclasses.field(default_factory=collections.Counter,
                                                     compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.tags or self.tags[0] != OUTSIDE:
            raise ValueError(f"slot tags must start with {OUTSIDE!r}, got {self.tags[:3]}")
        self._intent_index = {n: k for k, n in enumerate(self.intents)}
        self._tag_index = {n: k for k, n in enumerate(self.tags)}
        self._speaker_index = {n: k for k, n in enumerate(self.speakers)}
        self._domain_index = {n: k for k, n in enumerate(self.domains)}

    # -- construction and persistence --------------------------------------------------------

    @classmethod
    def from_source(cls, source: Any, exclude_intents: Sequence[str] = ()) -> "Vocabularies":
        """Collect intents, entity types, speakers and domains from `source.metadata(i)` for
        every i. `exclude_intents` (e.g. an out-of-scope label) are left out of the intents."""
        intents, types, speakers, domains = set(), set(), set(), set()
        excluded = set(exclude_intents)
        for i in range(len(source)):
            m = source.metadata(i)
            if m.get("intent") is not None and m["intent"] not in excluded:
                intents.add(m["intent"])
                if (m.get("meta") or {}).get("domain") is not None:
                    domains.add(m["meta"]["domain"])
            types.update(e["type"] for e in m.get("entities", []))
            if m.get("speaker"):
                speakers.add(m["speaker"])
        tags = [OUTSIDE] + [f"{p}-{t}" for t in sorted(types) for p in ("B", "I")]
        return cls(sorted(intents), tags, sorted(speakers), sorted(domains))

    def save(self, path: str | Path) -> None:
        """Write JSON atomically (temp file + rename), so a crash never leaves half a file."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps({"intents": self.intents, "tags": self.tags,
                                   "speakers": self.speakers, "domains": self.domains},
                                  indent=1) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "Vocabularies":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"label vocabularies {str(path)!r} not found; they are written "
                                    "as labels.json in the workdir by `jaxslu train`")
        d = json.loads(path.read_text())
        missing = [k for k in ("intents", "tags", "speakers") if k not in d]
        if missing:
            raise ValueError(f"{str(path)!r} lacks {missing}: not a jaxslu labels.json")
        return cls(list(d["intents"]), list(d["tags"]), list(d["speakers"]),
                   list(d.get("domains", [])))

    # -- lookups -----------------------------------------------------------------------------

    @property
    def num_intents(self) -> int:
        return len(self.intents)

    @property
    def num_tags(self) -> int:
        return len(self.tags)

    @property
    def entity_types(self) -> list[str]:
        return [t[2:] for t in self.tags[1::2]]

    def _unknown(self, kind: str, name: str) -> None:
        key = f"{kind}:{name}"
        self.unknown[key] += 1
        if self.unknown[key] == 1:
            log.warning("%s %r is not in the training vocabularies; mapped to %s (counted in "
                        "Vocabularies.unknown)", kind, name, "O" if kind == "entity" else -1)

    def intent_id(self, name: str | None) -> int:
        """Index of an intent; -1 for None or an intent unseen in training (counted)."""
        if name is None:
            return NO_INTENT
        k = self._intent_index.get(name)
        if k is None:
            self._unknown("intent", name)
            return NO_INTENT
        return k

    def domain_id(self, name: str | None) -> int:
        """Index of a domain; -1 for None or a domain unseen in training."""
        if name is None:
            return NO_INTENT
        return self._domain_index.get(name, NO_INTENT)

    def speaker_id(self, name: str | None) -> int:
        """Index of a speaker; -1 for none/unknown (evaluation speakers are often unseen)."""
        if not name:
            return -1
        return self._speaker_index.get(name, -1)

    def tag_ids(self, entities: Sequence[dict], word_of_token: Sequence[int],
                num_tokens: int) -> list[int]:
        """BIO tag index per token.

        A token gets the tag of the entity covering its word: B-<type> on the first token of the
        entity's first word, I-<type> on every other token inside the entity, O elsewhere.
        """
        if len(word_of_token) != num_tokens:
            raise ValueError(f"word_of_token has {len(word_of_token)} entries for {num_tokens} "
                             "tokens; pass the word_of_token returned by encode_words")
        entity_of_word: dict[int, tuple[str, int]] = {}
        for e in entities:
            for w in range(e["start"], e["end"]):
                entity_of_word[w] = (e["type"], e["start"])
        out = []
        for j, w in enumerate(word_of_token):
            hit = entity_of_word.get(w)
            if hit is None:
                out.append(0)
                continue
            etype, start = hit
            first_token_of_word = j == 0 or word_of_token[j - 1] != w
            name = f"{'B' if first_token_of_word and w == start else 'I'}-{etype}"
            k = self._tag_index.get(name)
            if k is None:
                self._unknown("entity", etype)
                k = 0
            out.append(k)
        return out

    def decode_tags(self, tag_ids: Sequence[int], word_of_token: Sequence[int],
                    words: Sequence[str]) -> list[dict[str, Any]]:
        """Word-span entities [{"type", "start", "end"}] from per-token tag ids.

        Each word takes the tag of its first token. A B- tag starts an entity; an I- tag
        continues the current entity of the same type or, if there is none (an ill-formed
        sequence such as O I-x), starts one, as conlleval does. Tag ids outside the vocabulary
        (e.g. -1 padding) read as O.
        """
        if len(tag_ids) != len(word_of_token):
            raise ValueError(f"{len(tag_ids)} tag ids for {len(word_of_token)} tokens; they must "
                             "be aligned one tag per token")
        word_tag: dict[int, str] = {}
        for t, w in zip(tag_ids, word_of_token):
            if w not in word_tag:
                word_tag[w] = self.tags[t] if 0 <= t < len(self.tags) else OUTSIDE
        entities: list[dict[str, Any]] = []
        current: dict[str, Any] | None = None
        for w in range(len(words)):
            tag = word_tag.get(w, OUTSIDE)
            if tag == OUTSIDE:
                current = None
                continue
            prefix, etype = tag[0], tag[2:]
            if prefix == "I" and current is not None and current["type"] == etype \
                    and current["end"] == w:
                current["end"] = w + 1
            else:
                current = {"type": etype, "start": w, "end": w + 1}
                entities.append(current)
        return entities
