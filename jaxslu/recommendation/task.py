"""The KGAT recommendation task: implicit-feedback top-K recommendation over a collaborative
knowledge graph (jaxslu/recommendation/data.py).

Assets (in the workdir, written atomically: temporary file, then rename):
  `recommendation_vocab.json`: user, item, entity (node) and relation vocabularies, interaction
    and target types, relation offsets of the sorted edge arrays;
  `ckg.npz`: the train split's CKG, int32 `head`, `relation`, `tail` (sorted by relation).
Training positives and KG triples are read back from the CKG, so a workdir is self-contained.

Training rows. The train split's interactions (task option `positive_types`: which interaction
types are BPR positives, default all) are served as `passes` virtual passes (enough for
train.steps * data.batch_size rows, plus one): row j is interaction j mod n in pass j // n, and
the pipeline shuffles the whole range, so each interaction is used once per pass over the run
(not once per window of n rows). Per row, deterministic from (seed, interaction, pass):
  * a negative item, uniform over the items that are *not* a training interaction (of any type)
    of that user (rejection sampling; never a positive);
  * a KG triple (h, r, t), uniform over the KG's forward triples, and a corrupted tail t',
    uniform over the entities with (h, r, t') not in the KG.
Batch: int32 `user`, `pos_item`, `neg_item`, `kg_head`, `kg_relation`, `kg_tail`,
`kg_neg_tail` [B], `index`, `weight` [B], and the CKG as `graph/head`, `graph/relation`,
`graph/tail` [E] with the attention's projection table `graph/proj_node` [M],
`graph/head_pos`, `graph/tail_pos` [E] (all replicated on every device: `batch_partition`;
left out for `bpr_mf`).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jaxslu.data.pipeline import DataError, pad_rows
from jaxslu.recommendation.data import RecDataError, RecSource, passes_needed
from jaxslu.registry import TASKS
from jaxslu.task import Task

VOCAB_FILE = "recommendation_vocab.json"
GRAPH_FILE = "ckg.npz"
GRAPH_KEYS = ("head", "relation", "tail")
# Leaves derived from the CKG for the attention: per relation, the distinct nodes its edges touch
# (`proj_node`, grouped by relation, `projection_offsets`), and each edge's head / tail position
# in that table (W_r is applied once per (node, relation), not once per edge end).
LEAF_KEYS = GRAPH_KEYS + ("proj_node", "head_pos", "tail_pos")


def projection_table(graph: dict[str, np.ndarray], num_relations: int
                     ) -> tuple[dict[str, np.ndarray], tuple[int, ...]]:
    head, rel, tail = (np.asarray(graph[k], np.int64) for k in GRAPH_KEYS)
    nodes, head_pos, tail_pos = [], np.zeros(len(head), np.int32), np.zeros(len(head), np.int32)
    offsets = [0]
    for r in range(num_relations):
        m = np.flatnonzero(rel == r)
        uniq = np.unique(np.concatenate([head[m], tail[m]]))
        head_pos[m] = offsets[-1] + np.searchsorted(uniq, head[m])
        tail_pos[m] = offsets[-1] + np.searchsorted(uniq, tail[m])
        nodes.append(uniq)
        offsets.append(offsets[-1] + len(uniq))
    proj = np.concatenate(nodes) if nodes else np.zeros(0, np.int64)
    return ({"proj_node": proj.astype(np.int32), "head_pos": head_pos, "tail_pos": tail_pos},
            tuple(offsets))
_M64 = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64 finalizer: a fast, well-mixed 64-bit hash (pure Python, thread-safe)."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def draw(seed: int, *keys: int) -> int:
    """A 64-bit pseudo-random integer determined by (seed, keys)."""
    h = _mix(seed & _M64)
    for k in keys:
        h = _mix(h ^ (k & _M64))
    return h


def sample_negative(seed: int, index: int, epoch: int, positives: set[int], num_items: int,
                    max_tries: int = 10_000) -> int:
    """An item not in `positives`, uniform over the others, determined by (seed, index, epoch)."""
    if len(positives) >= num_items:
        raise DataError(f"a user interacted with every one of the {num_items} items; no negative "
                        "item can be sampled")
    for attempt in range(max_tries):
        j = draw(seed, 1, index, epoch, attempt) % num_items
        if j not in positives:
            return int(j)
    # Dense positives: pick among the complement directly (still deterministic).
    rest = np.setdiff1d(np.arange(num_items), np.fromiter(positives, np.int64))
    return int(rest[draw(seed, 2, index, epoch) % len(rest)])


@dataclasses.dataclass
class RecAssets:
    vocab: dict[str, Any]
    graph: dict[str, np.ndarray]

    def __post_init__(self):
        v = self.vocab
        self.num_users, self.num_items = len(v["users"]), len(v["items"])
        self.num_entities = len(v["entities"])
        self.num_relations = len(v["relations"])  # inverses included
        self.relation_offsets = tuple(int(x) for x in v["relation_offsets"])
        g = self.graph
        for k in GRAPH_KEYS:
            if k not in g:
                raise RecDataError(f"{GRAPH_FILE}: no {k!r} array (needs {GRAPH_KEYS})")
            g[k] = np.ascontiguousarray(g[k], np.int32)
        n = len(g["head"])
        if any(len(g[k]) != n for k in GRAPH_KEYS):
            raise RecDataError(f"{GRAPH_FILE}: head, relation and tail differ in length")
        if self.relation_offsets[-1] != n or len(self.relation_offsets) != self.num_relations + 1:
            raise RecDataError(f"{VOCAB_FILE}: relation_offsets do not match {GRAPH_FILE} ({n} "
                               f"edges, {self.num_relations} relations)")
        nodes = self.num_entities + self.num_users
        if n and (min(g["head"].min(), g["tail"].min()) < 0 or
                  max(g["head"].max(), g["tail"].max()) >= nodes):
            raise RecDataError(f"{GRAPH_FILE}: a node id is outside [0, {nodes})")
        num_forward = self.num_relations // 2
        num_types = len(v["interaction_types"])
        rel = g["relation"]
        inter = rel < num_types
        users = g["head"][inter] - self.num_entities
        items = g["tail"][inter]
        self.train_positives: list[set[int]] = [set() for _ in range(self.num_users)]
        self.train_pairs = np.stack([users, items, rel[inter]], 1).astype(np.int64)
        for u, i in zip(users.tolist(), items.tolist()):
            self.train_positives[u].add(i)
        kg = (rel >= num_types) & (rel < num_forward)
        self.kg = np.stack([g["head"][kg], rel[kg], g["tail"][kg]], 1).astype(np.int64)
        table, self.projection_offsets = projection_table(g, self.num_relations)
        g.update(table)
        E, R = self.num_entities, self.num_relations
        self.kg_keys = set(((self.kg[:, 0] * R + self.kg[:, 1]) * E + self.kg[:, 2]).tolist())


class PassesSource:
    """`passes` virtual passes over the selected rows of a train RecSource (module doc)."""

    def __init__(self, base: RecSource, rows: np.ndarray, passes: int):
        if len(rows) == 0:
            raise RecDataError(f"{base!r}: no training interactions of the positive types")
        self.base, self.rows, self.passes = base, np.asarray(rows, np.int64), int(passes)
        self.data = base.data

    def __len__(self) -> int:
        return len(self.rows) * self.passes

    def __repr__(self) -> str:
        return f"PassesSource({self.base!r}, rows={len(self.rows)}, passes={self.passes})"

    def locate(self, j: int) -> tuple[int, int]:
        """(interaction index in the base split, pass)."""
        n = len(self.rows)
        return int(self.rows[j % n]), j // n

    def metadata(self, j: int) -> dict[str, Any]:
        k, p = self.locate(int(j))
        return {**self.base.metadata(k), "pass": p}

    def __getitem__(self, j: int):
        return self.metadata(j)


@TASKS.register("kgat")
class KgatTask(Task):
    default_evaluator = "recommendation"
    asset_files = (VOCAB_FILE, GRAPH_FILE)
    OPTIONS = ("positive_types",)

    def __init__(self, cfg):
        super().__init__(cfg)
        unknown = set(self.options) - set(self.OPTIONS)
        if unknown:
            raise ValueError(f"task_options {sorted(unknown)} unknown for the kgat task; it takes "
                             f"{', '.join(self.OPTIONS)}")
        self.positive_types = self.options.get("positive_types")
        self.uses_graph = bool(getattr(cfg.model, "uses_graph", True))
        self._graph: dict[str, np.ndarray] | None = None

    # -- data -------------------------------------------------------------------------------

    def open_source(self, split: str):
        source = super().open_source(split)
        if not isinstance(source, RecSource):
            raise TypeError(f"the kgat task needs a recommendation dataset (movielens_kg, "
                            f"recipe_graph), got {source!r} from data.dataset="
                            f"{self.cfg.data.dataset!r}")
        if split != self.cfg.data.train_split:
            return source
        data = source.data
        rel = source.arrays["relation"]
        if self.positive_types:
            bad = [t for t in self.positive_types if t not in data.interaction_types]
            if bad:
                raise ValueError(f"task_options.positive_types {bad} are not interaction types of "
                                 f"{data.name} ({data.interaction_types})")
            keep = np.isin(rel, [data.relations.index(t) for t in self.positive_types])
        else:
            keep = np.ones(len(rel), bool)
        rows = np.flatnonzero(keep)
        passes = passes_needed(self.cfg.train.steps, self.cfg.data.batch_size, len(rows))
        return PassesSource(source, rows, passes)

    # -- assets -----------------------------------------------------------------------------

    def load_assets(self, workdir: Path) -> RecAssets | None:
        workdir = Path(workdir)
        if not all((workdir / f).exists() for f in self.asset_files):
            return None
        try:
            vocab = json.loads((workdir / VOCAB_FILE).read_text())
        except json.JSONDecodeError as e:
            raise RecDataError(f"{workdir / VOCAB_FILE}: not valid JSON ({e})") from None
        missing = {"users", "items", "entities", "relations", "interaction_types",
                   "target_types", "relation_offsets"} - set(vocab)
        if missing:
            raise RecDataError(f"{workdir / VOCAB_FILE}: missing fields {sorted(missing)}")
        with np.load(workdir / GRAPH_FILE) as z:
            graph = {k: z[k] for k in z.files}
        assets = RecAssets(vocab, graph)
        self._graph = assets.graph
        return assets

    def build_assets(self, source, scratch: Path) -> RecAssets:
        data = source.data
        graph = data.ckg_edges()
        R = data.num_relations
        offsets = np.searchsorted(graph["relation"], np.arange(R + 1)).tolist()
        vocab = {"dataset": data.name, "users": data.users, "items": data.items,
                 "entities": data.entities, "relations": data.relation_names(),
                 "interaction_types": data.interaction_types, "target_types": data.target_types,
                 "relation_offsets": offsets, "num_edges": int(len(graph["head"])),
                 "info": data.info}
        assets = RecAssets(vocab, graph)
        self._graph = assets.graph
        return assets

    def save_assets(self, assets: RecAssets, workdir: Path) -> None:
        workdir = Path(workdir)
        tmp = workdir / f".{VOCAB_FILE}.tmp{os.getpid()}"
        tmp.write_text(json.dumps(assets.vocab) + "\n")
        tmp.replace(workdir / VOCAB_FILE)
        tmp = workdir / f".{GRAPH_FILE}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            np.savez(f, **{k: assets.graph[k] for k in GRAPH_KEYS})
        tmp.replace(workdir / GRAPH_FILE)

    def model_kwargs(self, assets: RecAssets) -> dict[str, Any]:
        return {"num_users": assets.num_users, "num_items": assets.num_items,
                "num_entities": assets.num_entities, "num_relations": assets.num_relations,
                "relation_offsets": assets.relation_offsets,
                "projection_offsets": assets.projection_offsets}

    def check(self, model, objective) -> None:
        names = set(objective.names)
        is_graph = hasattr(model, "attention_logits")
        if ("transr" in names or "graph_infonce" in names) and not is_graph:
            raise ValueError(f"loss {self.cfg.loss!r}: transr / graph_infonce need the kgat model "
                             f"(model {self.cfg.model.name!r} has no graph)")
        if "graph_infonce" in names and not getattr(model.cfg, "contrastive", False):
            raise ValueError("loss graph_infonce needs model.contrastive=True (the two views)")
        if is_graph and not self.uses_graph:
            raise ValueError("model.uses_graph=False but the kgat model needs the CKG")

    # -- batches ----------------------------------------------------------------------------

    def prepare_fn(self, source, assets: RecAssets, *, train: bool, model=None, objective=None):
        self._graph = assets.graph
        seed = int(self.cfg.seed)
        base = source.base if isinstance(source, PassesSource) else source
        arr = base.arrays
        users, items = arr["user"], arr["item"]
        positives = assets.train_positives
        num_items, num_entities = assets.num_items, assets.num_entities
        kg = assets.kg
        kg_keys = assets.kg_keys
        R = assets.num_relations
        with_kg = self.uses_graph and len(kg) > 0
        locate = source.locate if isinstance(source, PassesSource) else (lambda j: (int(j), 0))

        def prepare(j: int):
            k, epoch = locate(int(j))
            u, i = int(users[k]), int(items[k])
            row = {"user": u, "pos_item": i, "index": int(j),
                   "neg_item": sample_negative(seed, k, epoch, positives[u], num_items)}
            if with_kg:
                h, r, t = (int(x) for x in kg[draw(seed, 3, k, epoch) % len(kg)])
                for attempt in range(10_000):
                    t2 = int(draw(seed, 4, k, epoch, attempt) % num_entities)
                    if ((h * R + r) * num_entities + t2) not in kg_keys:
                        break
                row.update(kg_head=h, kg_relation=r, kg_tail=t, kg_neg_tail=t2)
            else:
                row.update(kg_head=0, kg_relation=0, kg_tail=0, kg_neg_tail=0)
            return row

        return prepare

    def collate(self, rows: Sequence[dict[str, Any]], batch_size: int) -> dict[str, Any]:
        keys = ("user", "pos_item", "neg_item", "kg_head", "kg_relation", "kg_tail",
                "kg_neg_tail")
        out = pad_rows(rows, batch_size, {k: (np.int32, (), 0) for k in keys} |
                       {"index": (np.int32, (), -1)})
        if self.uses_graph:
            out["graph"] = self.graph_leaves()
        return out

    def graph_leaves(self) -> dict[str, np.ndarray]:
        if self._graph is None:
            raise RuntimeError("the kgat task's graph is not loaded: call load_assets / "
                               "build_assets (or prepare_fn) before collate")
        return {k: self._graph[k] for k in LEAF_KEYS}

    def batch_partition(self) -> dict[str, str] | None:
        if not self.uses_graph:
            return None
        return {f"graph/{k}": "replicated" for k in LEAF_KEYS}
