"""Intent-discovery data: `text<TAB>label` TSV files, the known/labeled protocol split, and the
grouped source the embedding is trained on.

* `read_tsv(path)`: rows of a TSV with a header line whose first two columns are text and label
  (the TEXTOIR layout; extra columns are ignored). Bad rows are errors that name the file and
  line; empty texts are dropped with a count.
* `protocol_split(train, known_ratio, labeled_ratio, seed)`: TEXTOIR's protocol. The known
  intents are `round(K * known_ratio)` of the K training labels drawn with the seed; of each
  known intent, `max(2, round(n * labeled_ratio))` training rows are labeled; everything else
  (the other rows of known intents and every row of the unknown ones) is the unlabeled pool.
* `IntentGroups`: the training source. Each record is a *group* of `group_size` rows of one
  intent (rows without a label form groups of their own), so a batch of G groups holds G
  intents with several rows each and the pairwise loss always finds positive pairs. With
  `group_size=1` and no shuffling it is a flat, ordered source (used to embed texts).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jaxslu.registry import DATASETS


class TsvError(ValueError):
    """A discovery input file that cannot be read (names the file, the line and the fix)."""


@dataclass(frozen=True)
class Row:
    text: str
    label: str


def read_tsv(path: str | Path, *, what: str = "input") -> list[Row]:
    path = Path(path)
    if not path.is_file():
        raise TsvError(f"{what} file {str(path)!r} not found; pass a text<TAB>label TSV with a "
                       "header line (the TEXTOIR layout, e.g. data/textoir/clinc/train.tsv)")
    rows: list[Row] = []
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise TsvError(f"{what} file {str(path)!r} is empty; it needs a header line "
                           "'text<TAB>label' and one row per utterance")
        if len(header) < 2:
            raise TsvError(f"{path}:1: the header {header!r} has {len(header)} column(s); the "
                           "file must be tab-separated text<TAB>label with a header line")
        for n, row in enumerate(reader, 2):
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) < 2:
                raise TsvError(f"{path}:{n}: expected text<TAB>label, got {row!r}; separate the "
                               "two columns with a tab")
            text, label = row[0].strip().lower(), row[1].strip()
            if not label:
                raise TsvError(f"{path}:{n}: empty label for {row[0]!r}; every row needs one")
            if text:
                rows.append(Row(" ".join(text.split()), label))
    if not rows:
        raise TsvError(f"{what} file {str(path)!r} has a header but no rows")
    return rows


def read_texts(path: str | Path) -> list[str]:
    """Texts of a proxy out-of-domain file: a TSV (first column, header line) or plain text
    (one utterance per line)."""
    path = Path(path)
    if not path.is_file():
        raise TsvError(f"out-of-domain text file {str(path)!r} not found")
    if path.suffix == ".tsv":
        return [r.text for r in read_tsv(path, what="out-of-domain")]
    return [" ".join(s.lower().split()) for s in path.read_text(encoding="utf-8").splitlines()
            if s.strip()]


def read_domains(path: str | Path) -> dict[str, str]:
    """{intent: domain} from a JSON file {domain: [intents]} (CLINC150's domains.json)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise TsvError(f"domains file {str(path)!r} must be a JSON object "
                       "{domain: [intent, ...]}")
    out: dict[str, str] = {}
    for domain, intents in data.items():
        for intent in intents:
            out[str(intent)] = str(domain)
    return out


@dataclass
class ProtocolSplit:
    labels: list[str]          # every training label, sorted
    known: list[str]           # the known intents, sorted
    labeled: list[int]         # indices into the training rows
    unlabeled: list[int]

    @property
    def unknown(self) -> list[str]:
        k = set(self.known)
        return [x for x in self.labels if x not in k]


def protocol_split(train: Sequence[Row], known_ratio: float, labeled_ratio: float,
                   seed: int) -> ProtocolSplit:
    if not 0.0 < known_ratio <= 1.0:
        raise ValueError(f"--known-ratio {known_ratio} must be in (0, 1]")
    if not 0.0 < labeled_ratio <= 1.0:
        raise ValueError(f"--labeled-ratio {labeled_ratio} must be in (0, 1]")
    labels = sorted({r.label for r in train})
    if len(labels) < 2:
        raise ValueError(f"the training file has {len(labels)} label(s); discovery needs several")
    rng = np.random.default_rng(seed)
    n_known = max(1, int(round(len(labels) * known_ratio)))
    known = sorted(rng.choice(labels, n_known, replace=False).tolist())
    by_label: dict[str, list[int]] = {}
    for i, r in enumerate(train):
        by_label.setdefault(r.label, []).append(i)
    labeled: list[int] = []
    for lab in known:
        idx = by_label[lab]
        n = min(len(idx), max(2, int(round(len(idx) * labeled_ratio))))
        labeled.extend(rng.choice(idx, n, replace=False).tolist())
    labeled = sorted(labeled)
    chosen = set(labeled)
    unlabeled = [i for i in range(len(train)) if i not in chosen]
    return ProtocolSplit(labels=labels, known=known, labeled=labeled, unlabeled=unlabeled)


# --------------------------------------------------------------------------------------------
# The grouped training source


def write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """JSON lines {text, label ("" = none), feature_row} for `IntentGroups`, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps({"text": r["text"], "label": r.get("label") or "",
                                 "feature_row": int(r.get("feature_row", -1))}) + "\n")
    tmp.replace(path)


class IntentGroups:
    """Groups of `group_size` rows of one label (see the module docstring).

    Rows of a label are shuffled with `seed` and cut into groups; a last partial group is
    completed with other rows of the same label drawn with the seed (labels with fewer rows
    than `group_size` repeat rows). Unlabeled rows (label "") are grouped the same way.
    """

    def __init__(self, rows: Sequence[dict[str, Any]], group_size: int = 4, seed: int = 0,
                 name: str = "intent_groups", split: str = "train"):
        if group_size < 1:
            raise ValueError(f"data.options.group_size={group_size} must be >= 1")
        if not rows:
            raise ValueError(f"{name} split {split!r} has no rows")
        self.rows = list(rows)
        self.name, self.split, self.group_size = name, split, group_size
        if group_size == 1:
            self.groups = [[i] for i in range(len(self.rows))]
            return
        rng = np.random.default_rng(seed)
        by_label: dict[str, list[int]] = {}
        for i, r in enumerate(self.rows):
            by_label.setdefault(r["label"], []).append(i)
        groups = []
        for lab in sorted(by_label):
            idx = list(rng.permutation(by_label[lab]))
            for s in range(0, len(idx), group_size):
                g = idx[s:s + group_size]
                if len(g) < group_size:
                    g = g + list(rng.choice(idx, group_size - len(g),
                                            replace=len(idx) < group_size))
                groups.append([int(i) for i in g])
        self.groups = groups

    def __len__(self) -> int:
        return len(self.groups)

    def __repr__(self) -> str:
        return (f"IntentGroups({self.name!r}, split={self.split!r}, rows={len(self.rows)}, "
                f"groups={len(self.groups)})")

    def labels(self) -> list[str]:
        return sorted({r["label"] for r in self.rows if r["label"]})

    def text(self, i: int) -> str:
        return " | ".join(self.rows[j]["text"] for j in self.groups[i])

    def metadata(self, i: int) -> dict[str, Any]:
        members = [self.rows[j] for j in self.groups[int(i)]]
        return {"id": f"{self.name}/{self.split}/{i}", "members": members,
                "rows": list(self.groups[int(i)])}


@DATASETS.register("intent_groups")
def intent_groups(split: str = "train", *, path: str = "", group_size: int = 4,
                  seed: int = 0) -> IntentGroups:
    """`<path>/<split>.jsonl` (rows written by `write_rows`) as label groups."""
    f = Path(path) / f"{split}.jsonl"
    if not f.is_file():
        raise FileNotFoundError(f"intent_groups: {str(f)!r} not found (data.options.path is the "
                                "folder of <split>.jsonl row files that `jaxslu discover` writes)")
    rows = [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line]
    return IntentGroups(rows, group_size=group_size, seed=seed, split=split)
