"""Recommendation data: interactions + knowledge graph -> splits and a collaborative knowledge
graph (CKG), for MovieLens-100K with its Freebase KG and for a synthetic recipe graph.

Nodes. Entities first, items leading them: item k is node k (a linked item *is* its KG entity;
an unlinked item is an entity of its own), then the KG entities no item links to, then the
users (user u is node `num_entities + u`). Node, item and user ids are kept as strings in the
vocabularies of the run's assets.

Relations. The interaction relation(s) first (MovieLens: one, `interact`; recipes: `browse`,
`add_to_cart`, `cook_along`), then the KG relations, then the inverse of each, in the same
order (`~name`, index `r + num_relations // 2`). An edge (h, r, t) is a message from t to h, so
every fact is stored in both directions: users hear from their items, items from their users and
from their KG neighbours, entities from their items. Edges are int32 arrays (head, relation,
tail), deduplicated and sorted by (relation, head, tail); never a dense adjacency.

Feedback is implicit: every rating (of any value) is one interaction.

Split (per user, by time; the KGAT papers split at random, time order is the more honest
protocol: nothing from a user's future trains the model):
  * MovieLens: a user's interactions in time order (ties by file order); the last 20% are
    `test`, the last 10% of the rest are `valid` (checkpoint selection), the others `train`
    (users with one interaction keep it in train).
  * recipes: the held-out targets are cook-along interactions only (the trustworthy signal):
    the last 20% of a user's cook-alongs are `test`, the last 10% of the remaining ones `valid`;
    `train` holds every interaction (browse, add-to-cart, cook-along) strictly before the
    user's first held-out cook-along; later browse / add-to-cart events are dropped (they are
    the user's future).
Only the train split builds the CKG.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jaxslu.registry import DATASETS

SPLITS = ("train", "valid", "test")


class RecDataError(ValueError):
    """Bad recommendation input; the message names the file or field."""


@dataclasses.dataclass
class RecData:
    """One data set, split. Interactions are parallel int arrays per split."""

    name: str
    users: list[str]          # user ids; user u is node num_entities + u
    items: list[str]          # item ids; item k is node k
    entities: list[str]       # node names 0..num_entities-1 (items first)
    relations: list[str]      # forward relations: interaction types, then KG relations
    interaction_types: list[str]
    target_types: list[str]   # interaction types evaluated (and masked in ranking)
    kg: np.ndarray            # int32 [T, 3]: head entity, relation (forward index), tail entity
    splits: dict[str, dict[str, np.ndarray]]  # split -> user, item, relation (int32), time (int64)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_users(self) -> int:
        return len(self.users)

    @property
    def num_items(self) -> int:
        return len(self.items)

    @property
    def num_entities(self) -> int:
        return len(self.entities)

    @property
    def num_nodes(self) -> int:
        return self.num_entities + self.num_users

    @property
    def num_relations(self) -> int:
        """All relations of the CKG, inverses included."""
        return 2 * len(self.relations)

    def relation_names(self) -> list[str]:
        return list(self.relations) + [f"~{r}" for r in self.relations]

    def ckg_edges(self) -> dict[str, np.ndarray]:
        """The CKG of the train split (see the module doc): int32 head, relation, tail."""
        return build_ckg(self)


def build_ckg(data: RecData) -> dict[str, np.ndarray]:
    tr = data.splits["train"]
    ne = data.num_entities
    inv = len(data.relations)
    u_node = tr["user"].astype(np.int64) + ne
    it = tr["item"].astype(np.int64)
    rel = tr["relation"].astype(np.int64)
    kg = data.kg.astype(np.int64).reshape(-1, 3)
    heads = np.concatenate([u_node, it, kg[:, 0], kg[:, 2]])
    rels = np.concatenate([rel, rel + inv, kg[:, 1], kg[:, 1] + inv])
    tails = np.concatenate([it, u_node, kg[:, 2], kg[:, 0]])
    n = data.num_nodes
    key = (rels * n + heads) * n + tails
    key = np.unique(key)  # dedup + sort by (relation, head, tail)
    tails = key % n
    heads = (key // n) % n
    rels = key // (n * n)
    return {"head": heads.astype(np.int32), "relation": rels.astype(np.int32),
            "tail": tails.astype(np.int32)}


# ------------------------------------------------------------------------------------------
# Splits
# ------------------------------------------------------------------------------------------


def _held_out_counts(n: int, test_fraction: float, valid_fraction: float) -> tuple[int, int]:
    """(test, valid) counts of a user's n ordered interactions."""
    n_test = max(1, int(round(test_fraction * n))) if n >= 2 and test_fraction > 0 else 0
    rest = n - n_test
    n_valid = max(1, int(round(valid_fraction * rest))) if rest >= 2 and valid_fraction > 0 else 0
    return n_test, n_valid


def time_split(users: np.ndarray, times: np.ndarray, test_fraction: float = 0.2,
               valid_fraction: float = 0.1) -> np.ndarray:
    """Split label (0 train, 1 valid, 2 test) of every interaction: per user in time order (ties
    by position), the last `test_fraction` test, the last `valid_fraction` of the rest valid."""
    _check_fractions(test_fraction, valid_fraction)
    users = np.asarray(users)
    order = np.lexsort((np.arange(len(users)), np.asarray(times), users))
    label = np.zeros(len(users), np.int8)
    start = 0
    su = users[order]
    while start < len(order):
        end = start
        while end < len(order) and su[end] == su[start]:
            end += 1
        n = end - start
        n_test, n_valid = _held_out_counts(n, test_fraction, valid_fraction)
        idx = order[start:end]
        if n_test:
            label[idx[n - n_test:]] = 2
        if n_valid:
            label[idx[n - n_test - n_valid:n - n_test]] = 1
        start = end
    return label


def _check_fractions(test_fraction, valid_fraction):
    for name, v in (("test_fraction", test_fraction), ("valid_fraction", valid_fraction)):
        if not 0.0 <= float(v) < 1.0:
            raise RecDataError(f"{name}={v}: must be in [0, 1)")


def _split_arrays(user, item, rel, time, label) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for k, name in enumerate(SPLITS):
        m = label == k
        out[name] = {"user": user[m].astype(np.int32), "item": item[m].astype(np.int32),
                     "relation": rel[m].astype(np.int32), "time": time[m].astype(np.int64)}
    return out


# ------------------------------------------------------------------------------------------
# MovieLens-100K with its KG (RecBole atomic files)
# ------------------------------------------------------------------------------------------


def movielens_data(ml, *, test_fraction: float = 0.2, valid_fraction: float = 0.1,
                   name: str = "movielens_kg") -> RecData:
    """RecData from a `jaxslu.data.movielens.MovieLens` that carries the KG (`kg`, `link`)."""
    where = getattr(ml, "origin", "MovieLens")
    if ml.kg is None or ml.link is None:
        raise RecDataError(f"{where}: no knowledge graph (ml-100k.kg and ml-100k.link are both "
                           "needed); pass the RecBole atomic files or the RecBole 1.2.1 wheel, "
                           "not the GroupLens folder")
    if len(ml) == 0:
        raise RecDataError(f"{where}ml-100k.inter: no interactions")
    users = sorted(set(ml.users.tolist()), key=_id_key)
    items = sorted(set(ml.items.tolist()), key=_id_key)
    uid = {u: k for k, u in enumerate(users)}
    iid = {i: k for k, i in enumerate(items)}
    # Entities: items first (their linked entity, or the item itself), then the other entities.
    entities = []
    ent_id: dict[str, int] = {}
    for i in items:
        e = ml.link.get(i)
        name_e = e if e is not None else f"item:{i}"
        if name_e in ent_id:
            raise RecDataError(f"{where}ml-100k.link: entity {name_e!r} is linked to two items "
                               f"({entities[ent_id[name_e]]!r} and {i!r}); each item needs its "
                               "own entity")
        ent_id[name_e] = len(entities)
        entities.append(name_e)
    rel_names = ["interact"]
    rel_id: dict[str, int] = {}
    kg_rows = []
    for k, triple in enumerate(ml.kg):
        if len(triple) != 3 or not all(isinstance(x, str) and x for x in triple):
            raise RecDataError(f"{where}ml-100k.kg: triple {k} {triple!r} is not (head_id, "
                               "relation_id, tail_id) strings")
        h, r, t = triple
        for e in (h, t):
            if e not in ent_id:
                ent_id[e] = len(entities)
                entities.append(e)
        if r not in rel_id:
            rel_id[r] = len(rel_names)
            rel_names.append(r)
        kg_rows.append((ent_id[h], rel_id[r], ent_id[t]))
    kg = np.unique(np.asarray(kg_rows, np.int64).reshape(-1, 3), axis=0).astype(np.int32)
    user = np.asarray([uid[u] for u in ml.users.tolist()], np.int64)
    item = np.asarray([iid[i] for i in ml.items.tolist()], np.int64)
    rel = np.zeros(len(user), np.int64)
    time = np.asarray(ml.timestamps, np.int64)
    # Implicit feedback: a (user, item) pair counts once (the earliest rating).
    pair = user * len(items) + item
    order = np.lexsort((np.arange(len(pair)), time, pair))
    _, f = np.unique(pair[order], return_index=True)
    first = np.sort(order[f])
    user, item, rel, time = user[first], item[first], rel[first], time[first]
    label = time_split(user, time, test_fraction, valid_fraction)
    return RecData(name=name, users=users, items=items, entities=entities, relations=rel_names,
                   interaction_types=["interact"], target_types=["interact"], kg=kg,
                   splits=_split_arrays(user, item, rel, time, label),
                   info={"origin": str(where), "ratings": int(len(ml)),
                         "implicit": "every rating is an interaction"})


def _id_key(s: str):
    return (0, int(s), s) if s.isdigit() else (1, 0, s)


@functools.lru_cache(maxsize=4)
def _movielens_cached(path: str | None, test_fraction: float, valid_fraction: float) -> RecData:
    from jaxslu.data.movielens import load_movielens

    return movielens_data(load_movielens(path), test_fraction=test_fraction,
                          valid_fraction=valid_fraction)


# ------------------------------------------------------------------------------------------
# Synthetic recipe graph
# ------------------------------------------------------------------------------------------

INTERACTION_TYPES = ("browse", "add_to_cart", "cook_along")
RECIPE_DEFAULTS = dict(users=1000, recipes=800, cuisines=12, ingredients=200, keywords=50,
                       ingredients_per_recipe=(4, 9), keywords_per_recipe=(1, 3),
                       browse=(30, 70), add_to_cart=(8, 20), cook_along=(5, 14),
                       browse_noise=0.6, add_to_cart_noise=0.25, cook_along_noise=0.03)


def _check_range(name, v, lo=0):
    if (not isinstance(v, (tuple, list)) or len(v) != 2 or not all(isinstance(x, int) for x in v)
            or v[0] < lo or v[1] < v[0]):
        raise RecDataError(f"recipe_graph option {name}={v!r}: give (low, high) integers with "
                           f"{lo} <= low <= high")


def recipe_data(seed: int = 0, *, test_fraction: float = 0.2, valid_fraction: float = 0.1,
                **sizes) -> RecData:
    """A synthetic recipe platform, deterministic from `seed`.

    Recipes have one cuisine, a few ingredients (drawn from their cuisine's ingredient
    distribution) and keywords (KG: recipe-has_cuisine-c, recipe-has_ingredient-i,
    recipe-has_keyword-k). A user has latent tastes: a Dirichlet preference over cuisines and a
    sparse like/dislike score per ingredient; the affinity of a recipe is log(cuisine taste) +
    the mean score of its ingredients. Interactions, each type its own CKG relation:
      * browse: many and noisy: a `browse_noise` fraction (default 60%) is uniformly random, the
        rest is drawn from a flat (temperature 3) softmax of the affinity;
      * add_to_cart: fewer, `add_to_cart_noise` (25%) random, temperature 1;
      * cook_along: rare and reliable, `cook_along_noise` (3%) random, temperature 0.5;
    no user repeats a (recipe, type). Times are uniform over a year; held-out targets are the
    last cook-alongs (module doc)."""
    unknown = set(sizes) - set(RECIPE_DEFAULTS)
    if unknown:
        raise RecDataError(f"recipe_graph: unknown option(s) {sorted(unknown)}; it takes seed, "
                           f"test_fraction, valid_fraction, {', '.join(RECIPE_DEFAULTS)}")
    o = {**RECIPE_DEFAULTS, **sizes}
    for k in ("users", "recipes", "cuisines", "ingredients", "keywords"):
        if not isinstance(o[k], int) or o[k] < 1:
            raise RecDataError(f"recipe_graph option {k}={o[k]!r}: must be a positive integer")
    for k in ("ingredients_per_recipe", "keywords_per_recipe", "browse", "add_to_cart",
              "cook_along"):
        o[k] = tuple(o[k]) if isinstance(o[k], list) else o[k]
        _check_range(k, o[k])
    for k in ("browse_noise", "add_to_cart_noise", "cook_along_noise"):
        if not 0.0 <= float(o[k]) <= 1.0:
            raise RecDataError(f"recipe_graph option {k}={o[k]!r}: must be in [0, 1]")
    if o["ingredients_per_recipe"][1] > o["ingredients"] or o["keywords_per_recipe"][1] > o[
            "keywords"]:
        raise RecDataError("recipe_graph: ingredients_per_recipe / keywords_per_recipe exceed the "
                           "number of ingredients / keywords")
    most = max(o[t][1] for t in INTERACTION_TYPES)
    if most > o["recipes"]:
        raise RecDataError(f"recipe_graph: a user may need {most} distinct recipes of one type but "
                           f"there are only recipes={o['recipes']}")
    _check_fractions(test_fraction, valid_fraction)
    rng = np.random.default_rng(seed)
    R, C, G, K, U = o["recipes"], o["cuisines"], o["ingredients"], o["keywords"], o["users"]
    # Cuisines prefer ingredient subsets (Zipf-like weights over a per-cuisine permutation).
    zipf = 1.0 / np.arange(1, G + 1) ** 1.1
    cuisine_ing = np.stack([zipf[np.argsort(rng.permutation(G))] for _ in range(C)])
    cuisine_ing /= cuisine_ing.sum(1, keepdims=True)
    recipe_cuisine = rng.integers(0, C, R)
    recipe_ings, recipe_kws = [], []
    for r in range(R):
        n = int(rng.integers(o["ingredients_per_recipe"][0], o["ingredients_per_recipe"][1] + 1))
        recipe_ings.append(np.sort(rng.choice(G, n, replace=False,
                                              p=cuisine_ing[recipe_cuisine[r]])))
        m = int(rng.integers(o["keywords_per_recipe"][0], o["keywords_per_recipe"][1] + 1))
        recipe_kws.append(np.sort(rng.choice(K, m, replace=False)))
    # Users: cuisine tastes and ingredient likes/dislikes.
    taste = rng.dirichlet(np.full(C, 0.4), size=U)
    like = rng.normal(0.0, 1.0, (U, G)) * (rng.random((U, G)) < 0.15)
    ing_mean = np.stack([like[:, ings].mean(1) for ings in recipe_ings], 1)  # [U, R]
    affinity = np.log(taste[:, recipe_cuisine] + 1e-4) + 1.5 * ing_mean
    temps = {"browse": 3.0, "add_to_cart": 1.0, "cook_along": 0.5}
    users_a, items_a, rels_a, times_a = [], [], [], []
    for u in range(U):
        for t, typ in enumerate(INTERACTION_TYPES):
            lo, hi = o[typ]
            n = int(rng.integers(lo, hi + 1))
            logits = affinity[u] / temps[typ]
            p = np.exp(logits - logits.max())
            p /= p.sum()
            noise = float(o[f"{typ}_noise"])
            p = (1 - noise) * p + noise / R
            chosen = rng.choice(R, n, replace=False, p=p)
            users_a.append(np.full(n, u))
            items_a.append(chosen)
            rels_a.append(np.full(n, t))
            times_a.append(rng.integers(1_600_000_000, 1_600_000_000 + 365 * 86400, n))
    user = np.concatenate(users_a).astype(np.int64)
    item = np.concatenate(items_a).astype(np.int64)
    rel = np.concatenate(rels_a).astype(np.int64)
    time = np.concatenate(times_a).astype(np.int64)
    label = _recipe_split(user, item, rel, time, INTERACTION_TYPES.index("cook_along"),
                          test_fraction, valid_fraction)
    keep = label >= 0
    user, item, rel, time, label = user[keep], item[keep], rel[keep], time[keep], label[keep]
    # Entities: recipes, cuisines, ingredients, keywords; relations after the interaction types.
    entities = ([f"recipe:{r}" for r in range(R)] + [f"cuisine:{c}" for c in range(C)] +
                [f"ingredient:{g}" for g in range(G)] + [f"keyword:{k}" for k in range(K)])
    relations = list(INTERACTION_TYPES) + ["has_cuisine", "has_ingredient", "has_keyword"]
    A = len(INTERACTION_TYPES)
    kg = [(r, A, R + recipe_cuisine[r]) for r in range(R)]
    kg += [(r, A + 1, R + C + g) for r in range(R) for g in recipe_ings[r]]
    kg += [(r, A + 2, R + C + G + k) for r in range(R) for k in recipe_kws[r]]
    return RecData(name="recipe_graph", users=[f"user:{u}" for u in range(U)],
                   items=[f"recipe:{r}" for r in range(R)], entities=entities,
                   relations=relations, interaction_types=list(INTERACTION_TYPES),
                   target_types=["cook_along"], kg=np.asarray(kg, np.int32),
                   splits=_split_arrays(user, item, rel, time, label),
                   info={"seed": seed, **{k: list(v) if isinstance(v, tuple) else v
                                          for k, v in o.items()}})


def _recipe_split(user, item, rel, time, target, test_fraction, valid_fraction) -> np.ndarray:
    """0 train / 1 valid / 2 test / -1 dropped (see the module doc)."""
    label = np.full(len(user), -1, np.int8)
    order = np.lexsort((np.arange(len(user)), time, user))
    bounds = np.flatnonzero(np.diff(user[order])) + 1
    for idx in np.split(order, bounds):
        cooks = idx[rel[idx] == target]
        n_test, n_valid = _held_out_counts(len(cooks), test_fraction, valid_fraction)
        held = cooks[len(cooks) - n_test - n_valid:]
        label[cooks[len(cooks) - n_test:]] = 2
        label[cooks[len(cooks) - n_test - n_valid:len(cooks) - n_test]] = 1
        cut = time[held[0]] if len(held) else np.iinfo(np.int64).max
        # Strictly earlier events train (ties with the cut go out: they are not the past).
        before = idx[(time[idx] < cut) & (label[idx] < 1)]
        label[before] = 0
    return label


@functools.lru_cache(maxsize=4)
def _recipes_cached(seed: int, test_fraction: float, valid_fraction: float,
                    sizes: tuple) -> RecData:
    return recipe_data(seed, test_fraction=test_fraction, valid_fraction=valid_fraction,
                       **dict(sizes))


# ------------------------------------------------------------------------------------------
# Sources
# ------------------------------------------------------------------------------------------


class RecSource:
    """One split's interactions as a random-access source (one row per interaction); the whole
    split data set is `source.data`."""

    def __init__(self, data: RecData, split: str):
        if split not in SPLITS:
            raise RecDataError(f"{data.name}: unknown split {split!r}; use one of {SPLITS}")
        self.data = data
        self.split = split
        self.arrays = data.splits[split]
        if len(self.arrays["user"]) == 0:
            raise RecDataError(f"{data.name}: split {split!r} has no interactions")

    def __len__(self) -> int:
        return int(len(self.arrays["user"]))

    def __repr__(self) -> str:
        return f"RecSource({self.data.name!r}, split={self.split!r}, n={len(self)})"

    def metadata(self, i: int) -> dict[str, Any]:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"interaction {i} out of range for {self!r}")
        a = self.arrays
        return {"id": str(i), "user": self.data.users[a["user"][i]],
                "item": self.data.items[a["item"][i]],
                "relation": self.data.relations[a["relation"][i]], "time": int(a["time"][i])}

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.metadata(i)


@DATASETS.register("movielens_kg")
def movielens_kg(split: str = "train", *, path: str | None = None, test_fraction: float = 0.2,
                 valid_fraction: float = 0.1) -> RecSource:
    """MovieLens-100K with RecBole's Freebase KG (read by `jaxslu.data.movielens`: the RecBole
    atomic files, the RecBole 1.2.1 wheel, or $JAXSLU_MOVIELENS)."""
    data = _movielens_cached(str(Path(path).expanduser()) if path else None,
                             float(test_fraction), float(valid_fraction))
    return RecSource(data, split)


@DATASETS.register("recipe_graph")
def recipe_graph(split: str = "train", *, seed: int = 0, test_fraction: float = 0.2,
                 valid_fraction: float = 0.1, **sizes) -> RecSource:
    """The synthetic recipe graph of `recipe_data` (options: seed and its sizes)."""
    frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in sizes.items()))
    data = _recipes_cached(int(seed), float(test_fraction), float(valid_fraction), frozen)
    return RecSource(data, split)


def positives(data: RecData, splits: Sequence[str], types: Sequence[str] | None = None
              ) -> list[set[int]]:
    """Per user, the items of `splits` (interaction `types` only, default all)."""
    out: list[set[int]] = [set() for _ in range(data.num_users)]
    keep = None if types is None else {data.relations.index(t) for t in types}
    for s in splits:
        a = data.splits[s]
        for u, i, r in zip(a["user"].tolist(), a["item"].tolist(), a["relation"].tolist()):
            if keep is None or r in keep:
                out[u].add(i)
    return out


def passes_needed(steps: int, batch_size: int, n: int) -> int:
    return max(1, math.ceil(steps * batch_size / max(1, n)) + 1)
