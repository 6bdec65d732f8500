"""Text NLU data: HWU64 (inline-annotated slots), the SLURP-style NLU mix, TEXTOIR splits.

Every source yields the Example records of docs/DESIGN.md with `audio` None, `intent` in SLURP's
`scenario_action` naming where the corpus has scenarios, `entities` as word spans of
`text.split()`, and `meta["domain"]` (the scenario, or CLINC's domain).

  * `hwu64(split)`: `data/hwu64/{train,test}.jsonl` (fold 1, SLURP test sentences removed), or
    any folder of `<split>.jsonl` files in that format (`path=`): `scenario`, `intent`,
    `annotation` with slots written `[type : value]`.
  * `slurp_nlu(split)`: the training mix of configs/slurp_nlu.py: "train" = HWU64 train + SLURP
    devel's train part (80%, by a hash of slurp_id), "dev" = SLURP devel's dev part (10%),
    "slurp_test" = its test part (10%), "hwu64_test" = HWU64 test; texts that repeat across
    them are removed from the held-out SLURP parts (see `slurp_nlu`).
  * `textoir(split, corpus=)`: `data/textoir/<corpus>/{train,dev,test}.tsv` (text, label).
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from jaxslu import paths
from jaxslu.data.sources import ExampleSource, slurp_records
from jaxslu.registry import DATASETS

_SLOT = re.compile(r"\[\s*([^\[\]:]+?)\s*:\s*([^\[\]]*?)\s*\]")


class AnnotationError(ValueError):
    """An inline slot annotation that cannot be parsed (names the file and line)."""


def parse_annotation(annotation: str, where: str = "annotation") -> tuple[str, list[dict]]:
    """'wake me at [time : five am]' -> ('wake me at five am', [{"type": "time", "start": 3,
    "end": 5}]) with word spans of the returned text (lowercased, whitespace-split)."""
    words: list[str] = []
    entities: list[dict[str, Any]] = []
    pos = 0
    for m in _SLOT.finditer(annotation):
        words.extend(annotation[pos:m.start()].split())
        value = m.group(2).split()
        if value:
            entities.append({"type": m.group(1).strip().replace(" ", "_"), "start": len(words),
                             "end": len(words) + len(value)})
            words.extend(value)
        pos = m.end()
    rest = annotation[pos:]
    if "[" in rest or "]" in rest:
        raise AnnotationError(f"{where}: unbalanced slot brackets in {annotation!r}; slots are "
                              "written [type : value]")
    words.extend(rest.split())
    return " ".join(w.lower() for w in words), entities


def read_hwu64(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"HWU64 file {str(path)!r} not found; the bundled copy is "
                                "data/hwu64/ (or pass path= a folder of <split>.jsonl files)")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            d = json.loads(line)
            scenario, intent = d["scenario"], d["intent"]
            annotation = d.get("annotation", d.get("text"))
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"{where}: not an HWU64 record ({e}); each line is a JSON object "
                             "with scenario, intent and annotation") from e
        text, entities = parse_annotation(annotation, where)
        if not text:
            continue
        # HWU64's own ids repeat within a split: the id is the file and line, unique.
        records.append({"id": f"hwu64/{path.stem}/{n}", "text": text,
                        "intent": f"{scenario}_{intent}", "entities": entities, "speaker": "",
                        "meta": {"domain": scenario, "scenario": scenario,
                                 "source_id": d.get("id")}})
    return records


@DATASETS.register("hwu64")
def hwu64(split: str = "train", *, path: str = "") -> ExampleSource:
    """HWU64 with slots; splits are the `<split>.jsonl` files of the folder (train, test)."""
    root = Path(path) if path else paths.data_dir() / "hwu64"
    return ExampleSource("hwu64", split, read_hwu64(root / f"{split}.jsonl"))


def _slurp_part(part: str) -> list[dict[str, Any]]:
    recs = slurp_records(paths.data_dir() / "slurp" / "devel.jsonl")
    out = []
    for r in recs:
        if r["meta"]["split"] == part:
            r = dict(r, meta=dict(r["meta"], domain=r["meta"]["scenario"]))
            out.append(r)
    return out


SLURP_NLU_SPLITS = ("train", "dev", "slurp_test", "hwu64_test")


def _key(text: str) -> str:
    return " ".join(text.split())


@DATASETS.register("slurp_nlu")
def slurp_nlu(split: str = "train", *, hwu64_path: str = "") -> ExampleSource:
    """The SLURP-style NLU mix (see the module docstring); several splits joined with '+'.

    SLURP's prompts were drawn from the HWU64 collection, so texts repeat across the two: the
    SLURP devel sentences whose text is in HWU64 test are left out of "train" (HWU64 test stays
    as published), and "dev" / "slurp_test" hold only texts that are not in "train", so they
    measure utterances the model has never seen.
    """
    root = Path(hwu64_path) if hwu64_path else paths.data_dir() / "hwu64"
    hwu_train = read_hwu64(root / "train.jsonl")
    hwu_test = read_hwu64(root / "test.jsonl")
    test_texts = {_key(r["text"]) for r in hwu_test}
    train = hwu_train + [r for r in _slurp_part("train") if _key(r["text"]) not in test_texts]
    train_texts = {_key(r["text"]) for r in train}
    unseen = lambda recs: [r for r in recs if _key(r["text"]) not in train_texts]
    records: list[dict[str, Any]] = []
    for part in split.split("+"):
        if part == "train":
            records += train
        elif part == "dev":
            records += unseen(_slurp_part("dev"))
        elif part == "slurp_test":
            records += unseen(_slurp_part("test"))
        elif part == "hwu64_test":
            records += hwu_test
        else:
            raise ValueError(f"slurp_nlu split {part!r} unknown; use one of {SLURP_NLU_SPLITS} "
                             "(or several joined with '+')")
    return ExampleSource("slurp_nlu", split, records)


@DATASETS.register("textoir")
def textoir(split: str = "train", *, corpus: str = "clinc", path: str = "") -> ExampleSource:
    """TEXTOIR benchmark splits (text<TAB>label with a header), e.g. corpus="clinc" or "snips"."""
    root = Path(path) if path else paths.data_dir() / "textoir" / corpus
    f = root / f"{split}.tsv"
    if not f.is_file():
        raise FileNotFoundError(f"TEXTOIR split {str(f)!r} not found; corpora: clinc, snips "
                                "(data/textoir/), splits: train, dev, test")
    records = []
    with open(f, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader, None)
        for n, row in enumerate(reader, 2):
            if len(row) < 2:
                raise ValueError(f"{f}:{n}: expected text<TAB>label, got {row!r}")
            records.append({"id": f"textoir/{corpus}/{split}/{n}", "text": row[0].lower().strip(),
                            "intent": row[1], "entities": [], "speaker": "",
                            "meta": {"domain": None}})
    del header
    return ExampleSource(f"textoir_{corpus}", split, records)
