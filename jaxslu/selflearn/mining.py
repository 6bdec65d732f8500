"""Rewrite mining with an absorbing Markov chain.

A defective request is often followed by the user rephrasing it. Across many users' sessions the
rephrase chains that start at a request interpretation and end in a success point at a rewrite of
that request which works. The chain:

* transient states: request interpretations, here the normalized ASR hypothesis of a turn,
  ``" ".join(turn["asr"].split())``;
* absorbing states: SUCCESS (column 0) and FAILURE (column 1);
* transitions, decided by the *observable* signal (not the ground truth), as in production: after
  a directed turn, if the next directed turn of the session exists, starts within ``max_gap``
  seconds (``next["t"] - turn["t"] <= max_gap``) and the turn's signal is ``"rephrase"`` or
  ``"barge_in"``, the chain moves state(turn) -> state(next turn); otherwise the turn is
  absorbed: FAILURE if its signal is ``"barge_in"``, ``"rephrase"`` or ``"abandon"``, SUCCESS if
  it is ``"thanks"`` or ``"none"``. False wakes (``directed`` false) are skipped: they are not
  states, and the "next turn" of a turn is the next *directed* one.

With the transition matrix ``[[Q, R], [0, I]]`` (``Q`` T x T transient -> transient, ``R`` T x 2
transient -> absorbing, both the row-normalized counts), the fundamental matrix
``N = (I - Q)^-1`` holds expected visit counts and ``B = N R`` the absorption probabilities.
Neither is formed by an inverse: ``(I - Q)`` is factorized once with a sparse LU
(``scipy.sparse.linalg.splu``, cached on the chain) and ``B`` solves ``(I - Q) B = R``; a row of
``N`` solves ``(I - Q)^T x = e_s`` with the same factors. ``I - Q`` is non-singular for every
chain `build_chain` returns: every visit of a state continues, along its own session, to an
absorption, so every state reaches an absorbing state with positive probability
(`AbsorbingChain` checks this for chains built by hand too).

Choices
=======
* ``min_count`` pruning in `build_chain` *censors* the dropped states on each observed path:
  a session's turns form segments (a run of turns joined by transitions, ended by the absorption
  of its last turn); dropping the rare states from a segment joins the kept states around them
  directly, and the last kept state of a segment takes the segment's absorption. So
  ``a -> d -> b`` with ``d`` dropped counts ``a -> b``, and ``a -> d -> FAILURE`` counts
  ``a -> FAILURE``: the path's eventual outcome is kept, as if the rare interpretation were
  invisible. Every kept visit still produces exactly one outgoing event, so row sums of
  ``counts`` plus ``absorb_counts`` equal ``visits``, and ``visits`` of a kept state is the same
  as without pruning. (Absorbing such visits by their own signal instead would call a request
  "failed" merely because its rephrase was rare, which biases the chain against long tails.)
* Reach probability (`AbsorbingChain.reach_probability`): the probability of ever visiting ``r``
  starting from ``s`` is ``h[s, r] = N[s, r] / N[r, r]`` for ``r != s`` (``N[s, r]`` = P(reach r)
  x expected visits of r once there, ``N[r, r]``); ``h[s, s]`` is 1 (the walk starts there) and
  states not reachable from ``s`` are 0 exactly. Only the entries for the states asked for are
  computed. The set ``D`` of ``s`` and its descendants is closed under transitions, so with ``D``
  ordered first ``I - Q`` is block triangular and ``N[D, D] = ((I - Q)[D, D])^-1``: both
  ``N[s, .]`` and ``N[r, r]`` (``r`` in ``D``) are exact solves of that block (its own sparse LU)
  when ``|D| <= LOCAL_MAX`` -- the usual case, rephrase chains being short -- which keeps mining
  linear in the number of sources instead of one size-T solve per source. Larger blocks use the
  chain's sparse LU: a transposed solve for the row, one solve per needed ``N[r, r]`` (batched,
  cached per state).
* States are sorted by their text, so a chain does not depend on the order of the sessions, and
  state order is the tie-breaking order everywhere.
* `mine_rewrites` compares against its thresholds with a slack of 1e-12, so a value equal to a
  threshold up to rounding (``6/7 - 0.5`` vs ``0.3571...``) counts as meeting it. Rewrites are
  ordered by support (descending), then source text.
* `evaluate_rewrites`'s ``win_loss_ratio`` is ``wins / max(losses, 1)``: with no losses the ratio
  is the number of wins (``"losses": 0`` says that it is not a true ratio).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph
from scipy.sparse import linalg as spla

SUCCESS, FAILURE = 0, 1
SIGNALS = ("none", "barge_in", "rephrase", "abandon", "thanks")
CONTINUE_SIGNALS = frozenset(("rephrase", "barge_in"))
FAILURE_SIGNALS = frozenset(("barge_in", "rephrase", "abandon"))
_SLACK = 1e-12
_BATCH = 16  # right-hand sides per sparse LU solve when many are needed
LOCAL_MAX = 2048  # reach probabilities: largest block of descendants solved on its own


def normalize(text: str) -> str:
    """The state of a turn: its ASR hypothesis with whitespace collapsed."""
    return " ".join(text.split())


# ---------------------------------------------------------------- the chain

@dataclass(eq=False)
class AbsorbingChain:
    """An absorbing Markov chain over request texts (module docstring).

    ``counts[i, j]``: observed transitions state i -> state j; ``absorb_counts[i]``: observed
    absorptions of state i into (SUCCESS, FAILURE); ``visits[i]``: visits of state i (for chains
    from `build_chain` the row total of ``counts`` plus ``absorb_counts``). ``Q`` and ``R`` are
    normalized by the row totals. Factorization, ``B`` and the diagonal of ``N`` are computed on
    first use and cached; do not modify the arrays afterwards.
    """

    states: list[str]
    index: dict[str, int]
    counts: sp.csr_matrix
    absorb_counts: np.ndarray
    visits: np.ndarray
    _lu: Any = field(default=None, init=False, repr=False)
    _q: sp.csr_matrix | None = field(default=None, init=False, repr=False)
    _b: np.ndarray | None = field(default=None, init=False, repr=False)
    _ndiag: np.ndarray | None = field(default=None, init=False, repr=False)
    _a: sp.csr_matrix | None = field(default=None, init=False, repr=False)
    _adj: list[list[int]] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        t = len(self.states)
        if len(self.index) != t or any(self.index.get(s) != i for i, s in enumerate(self.states)):
            raise ValueError("AbsorbingChain: index must map states[i] to i for every state")
        self.counts = sp.csr_matrix(self.counts, dtype=np.float64)
        self.counts.sum_duplicates()
        self.counts.eliminate_zeros()
        self.counts.sort_indices()
        self.absorb_counts = np.asarray(self.absorb_counts, dtype=np.float64)
        self.visits = np.asarray(self.visits)
        if self.counts.shape != (t, t):
            raise ValueError(f"AbsorbingChain: counts has shape {self.counts.shape}, "
                             f"expected ({t}, {t})")
        if self.absorb_counts.shape != (t, 2):
            raise ValueError(f"AbsorbingChain: absorb_counts has shape "
                             f"{self.absorb_counts.shape}, expected ({t}, 2)")
        if self.visits.shape != (t,):
            raise ValueError(f"AbsorbingChain: visits has shape {self.visits.shape}, "
                             f"expected ({t},)")
        if ((self.counts.data < 0).any() or (self.absorb_counts < 0).any()
                or not np.isfinite(self.counts.data).all()
                or not np.isfinite(self.absorb_counts).all()):
            raise ValueError("AbsorbingChain: counts must be finite and non-negative")
        totals = self._totals()
        if t and totals.min() <= 0:
            i = int(np.argmin(totals))
            raise ValueError(f"AbsorbingChain: state {self.states[i]!r} has no outgoing counts")
        # I - Q is singular exactly when some state cannot reach absorption: search backwards
        # from a virtual node t that every state with absorption counts leads to.
        if t:
            absorbing = np.flatnonzero(self.absorb_counts.sum(axis=1) > 0)
            coo = self.counts.tocoo()
            rev = sp.csr_matrix((np.ones(coo.nnz + absorbing.size),
                                 (np.concatenate([coo.col, np.full(absorbing.size, t)]),
                                  np.concatenate([coo.row, absorbing]))), shape=(t + 1, t + 1))
            seen = np.zeros(t + 1, dtype=bool)
            seen[csgraph.breadth_first_order(rev, t, directed=True,
                                             return_predecessors=False)] = True
            if not seen[:t].all():
                i = int(np.flatnonzero(~seen[:t])[0])
                raise ValueError(f"AbsorbingChain: state {self.states[i]!r} never reaches "
                                 "SUCCESS or FAILURE (I - Q would be singular)")

    def __len__(self) -> int:
        return len(self.states)

    def _totals(self) -> np.ndarray:
        return np.asarray(self.counts.sum(axis=1)).ravel() + self.absorb_counts.sum(axis=1)

    @property
    def Q(self) -> sp.csr_matrix:  # noqa: N802 (the standard name)
        """Transient -> transient transition probabilities (csr, T x T)."""
        if self._q is None:
            self._q = sp.csr_matrix(sp.diags(1.0 / self._totals()) @ self.counts)
        return self._q

    @property
    def R(self) -> np.ndarray:  # noqa: N802
        """Transient -> (SUCCESS, FAILURE) probabilities (T x 2)."""
        return self.absorb_counts / self._totals()[:, None]

    def _i_minus_q(self) -> sp.csr_matrix:
        if self._a is None:
            a = sp.csr_matrix(sp.identity(len(self.states), format="csr") - self.Q)
            a.sum_duplicates()
            a.sort_indices()
            self._a = a
        return self._a

    def _factor(self):
        """The sparse LU factorization of ``I - Q`` (computed once)."""
        if self._lu is None:
            self._lu = spla.splu(self._i_minus_q().tocsc())
        return self._lu

    def absorption(self) -> np.ndarray:
        """``B = N R`` (T x 2; column 0 SUCCESS, 1 FAILURE), solving ``(I - Q) B = R``."""
        if self._b is None:
            if not self.states:
                self._b = np.zeros((0, 2))
            else:
                b = np.asarray(self._factor().solve(np.ascontiguousarray(self.R)))
                self._b = np.clip(b, 0.0, 1.0)  # rounding only: B is a probability
                self._b.setflags(write=False)
        return self._b

    def success(self) -> np.ndarray:
        """``B[:, SUCCESS]``: each state's probability of ending in SUCCESS."""
        return self.absorption()[:, SUCCESS]

    def _check_state(self, s: int) -> int:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not (
                0 <= s < len(self.states)):
            raise ValueError(f"state index {s!r} out of range [0, {len(self.states)})")
        return int(s)

    def _rows_of_n(self, sources: Sequence[int]) -> np.ndarray:
        """Rows ``N[sources]`` (k x T), by transposed solves ``(I - Q)^T x = e_s``."""
        t = len(self.states)
        out = np.empty((len(sources), t))
        lu = self._factor()
        for lo in range(0, len(sources), _BATCH):
            chunk = sources[lo:lo + _BATCH]
            rhs = np.zeros((t, len(chunk)))
            rhs[np.asarray(chunk), np.arange(len(chunk))] = 1.0
            out[lo:lo + len(chunk)] = np.asarray(lu.solve(rhs, trans="T")).reshape(
                t, len(chunk)).T
        return out

    def expected_visits(self, s: int) -> np.ndarray:
        """Row ``s`` of ``N``: expected visits of each state starting from state ``s``."""
        return self._rows_of_n([self._check_state(s)])[0]

    def diag_n(self, states: Iterable[int]) -> np.ndarray:
        """``N[r, r]`` for the given states (solves only for the ones not cached yet)."""
        rs = np.asarray([self._check_state(int(r)) for r in states], dtype=np.int64)
        t = len(self.states)
        if self._ndiag is None:
            self._ndiag = np.full(t, np.nan)
        todo = np.unique(rs[np.isnan(self._ndiag[rs])]) if rs.size else rs
        lu = self._factor()
        for lo in range(0, todo.size, _BATCH):
            chunk = todo[lo:lo + _BATCH]
            rhs = np.zeros((t, chunk.size))
            rhs[chunk, np.arange(chunk.size)] = 1.0
            x = np.asarray(lu.solve(rhs)).reshape(t, chunk.size)
            self._ndiag[chunk] = x[chunk, np.arange(chunk.size)]
        return self._ndiag[rs].copy()

    def _adjacency(self) -> list[list[int]]:
        """Successor lists of the states (the pattern of ``counts``), for graph walks."""
        if self._adj is None:
            indptr, indices = self.counts.indptr.tolist(), self.counts.indices.tolist()
            self._adj = [indices[indptr[u]:indptr[u + 1]] for u in range(len(self.states))]
        return self._adj

    def descendants(self, s: int, limit: int | None = None) -> list[int] | None:
        """``s`` and every state reachable from it, sorted; None when there are more than
        ``limit`` of them. Costs O(size of the answer), not O(T)."""
        s = self._check_state(s)
        adj = self._adjacency()
        seen = {s}
        stack = [s]
        while stack:
            for v in adj[stack.pop()]:
                if v not in seen:
                    seen.add(v)
                    stack.append(v)
            if limit is not None and len(seen) > limit:
                return None
        return sorted(seen)

    def _reach(self, s: int, targets: Sequence[int]) -> np.ndarray:
        """``N[s, r] / N[r, r]`` for ``targets`` (states reachable from ``s``, not ``s``)."""
        if not len(targets):
            return np.zeros(0)
        closure = self.descendants(s, LOCAL_MAX)
        if closure is None:  # a large forward-closed set: the global factorization
            row = self._rows_of_n([s])[0]
            return np.clip(row[list(targets)] / self.diag_n(targets), 0.0, 1.0)
        return self._reach_local(s, closure, targets)

    def _reach_local(self, s: int, closure: list[int], targets: Sequence[int]) -> np.ndarray:
        # D = {s} + descendants is closed under transitions, so I - Q is block triangular with
        # (I - Q)[D, D] on the diagonal and N[D, D] = ((I - Q)[D, D])^-1: solve that block.
        # The rows of (I - Q)[D, D] in csr form are the columns of its transpose in csc form:
        # factorize the transpose, so that a row of N is a plain solve and N[r, r] a
        # transposed one.
        idx = np.asarray(closure, dtype=np.int64)
        a = self._i_minus_q()
        pos = _row_positions(a.indptr, idx)
        indptr = np.zeros(idx.size + 1, dtype=np.int64)
        np.cumsum(a.indptr[idx + 1] - a.indptr[idx], out=indptr[1:])
        k = idx.size
        at = sp.csc_matrix((a.data[pos], np.searchsorted(idx, a.indices[pos]), indptr),
                           shape=(k, k))
        lu = spla.splu(at)
        ps = int(np.searchsorted(idx, s))
        pr = np.searchsorted(idx, np.asarray(targets, dtype=np.int64))
        e_s = np.zeros(k)
        e_s[ps] = 1.0
        row = lu.solve(e_s)                              # N[s, D]
        diag = np.empty(pr.size)
        for lo in range(0, pr.size, _BATCH):
            chunk = pr[lo:lo + _BATCH]
            rhs = np.zeros((k, chunk.size))
            rhs[chunk, np.arange(chunk.size)] = 1.0
            diag[lo:lo + chunk.size] = np.asarray(lu.solve(rhs, trans="T")).reshape(
                k, chunk.size)[chunk, np.arange(chunk.size)]  # N[r, r]
        return np.clip(row[pr] / diag, 0.0, 1.0)

    def reach_probability(self, s: int, targets: Sequence[int] | None = None) -> np.ndarray:
        """Probability of ever visiting each state starting from ``s`` (length T).

        ``h[r] = N[s, r] / N[r, r]`` for ``r != s`` and ``h[s] = 1``; states not reachable from
        ``s`` are 0 exactly. ``targets``: compute only these entries (the others are NaN).
        Solved on the block of ``s`` and its descendants when that has at most `LOCAL_MAX`
        states (module docstring), else with the chain's factorization.
        """
        s = self._check_state(s)
        t = len(self.states)
        reach = set(self.descendants(s))
        if targets is None:
            h = np.zeros(t)
            want = sorted(reach - {s})
        else:
            h = np.full(t, np.nan)
            tg = sorted({self._check_state(int(r)) for r in targets})
            for r in tg:
                if r not in reach:
                    h[r] = 0.0
            want = [r for r in tg if r in reach and r != s]
        h[want] = self._reach(s, want)
        if targets is None or s in tg:
            h[s] = 1.0
        return h

    def successors(self, s: int, max_hops: int) -> list[int]:
        """States reachable from ``s`` within ``max_hops`` transitions, ``s`` excluded; sorted by
        index (= by state text)."""
        s = self._check_state(s)
        if isinstance(max_hops, bool) or not isinstance(max_hops, int) or max_hops < 1:
            raise ValueError(f"max_hops={max_hops!r} must be an integer >= 1")
        adj = self._adjacency()
        seen = {s}
        frontier = [s]
        for _ in range(max_hops):
            nxt = []
            for u in frontier:
                for v in adj[u]:
                    if v not in seen:
                        seen.add(v)
                        nxt.append(v)
            if not nxt:
                break
            frontier = nxt
        seen.discard(s)
        return sorted(seen)


def _row_positions(indptr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Positions in a csr matrix's ``indices``/``data`` of the entries of ``rows``, in order."""
    starts = indptr[rows]
    lens = indptr[rows + 1] - starts
    if not lens.size:
        return np.zeros(0, dtype=np.int64)
    offsets = np.cumsum(lens) - lens
    return np.repeat(starts - offsets, lens) + np.arange(int(lens.sum()))


# ---------------------------------------------------------------- building from sessions

def _session_error(sid: Any, where: str, msg: str) -> ValueError:
    return ValueError(f"session {sid!r}{where}: {msg}")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _session_events(session: Any, pos: int) -> list[tuple[int, dict]]:
    """The directed turns of ``session`` as (turn index, turn), in order; validates the fields
    the chain uses (``pos``: the session's position in the input, for messages)."""
    if not isinstance(session, dict):
        raise ValueError(f"session #{pos}: expected a dict, got {type(session).__name__}")
    sid = session.get("session", f"#{pos}")
    if "turns" not in session:
        raise _session_error(sid, "", "missing field 'turns'")
    turns = session["turns"]
    if not isinstance(turns, list):
        raise _session_error(sid, "", f"field 'turns' must be a list, got "
                             f"{type(turns).__name__}")
    directed: list[tuple[int, dict]] = []
    for i, turn in enumerate(turns):
        where = f" turn {i}"
        if not isinstance(turn, dict):
            raise _session_error(sid, where, f"expected a dict, got {type(turn).__name__}")
        if "directed" not in turn:
            raise _session_error(sid, where, "missing field 'directed'")
        if not isinstance(turn["directed"], bool):
            raise _session_error(sid, where, f"field 'directed' must be a bool, got "
                                 f"{turn['directed']!r}")
        if not turn["directed"]:
            continue
        for k in ("t", "asr", "signal"):
            if k not in turn:
                raise _session_error(sid, where, f"missing field {k!r}")
        if not _is_number(turn["t"]):
            raise _session_error(sid, where, f"field 't' must be a finite number, got "
                                 f"{turn['t']!r}")
        if not isinstance(turn["asr"], str):
            raise _session_error(sid, where, f"field 'asr' must be a string, got "
                                 f"{turn['asr']!r}")
        if turn["signal"] not in SIGNALS:
            raise _session_error(sid, where, f"field 'signal' must be one of {SIGNALS}, got "
                                 f"{turn['signal']!r}")
        if directed and turn["t"] < directed[-1][1]["t"]:
            raise _session_error(sid, where, f"field 't' goes backwards ({turn['t']!r} < "
                                 f"{directed[-1][1]['t']!r})")
        directed.append((i, turn))
    return directed


CORRECTION_CUES = (("no",), ("i", "said"), ("i", "meant"), ("i", "mean"), ("sorry",))


def request_state(turn: dict) -> str:
    """A turn's state with leading correction cues removed ("no no i said play x" -> "play x"),
    so a correction and the plain request it restates are one state (a cue-only turn keeps its
    words)."""
    words = turn["asr"].split()
    k, changed = 0, True
    while changed:
        changed = False
        for cue in CORRECTION_CUES:
            if tuple(words[k:k + len(cue)]) == cue and k + len(cue) < len(words):
                k += len(cue)
                changed = True
    return " ".join(words[k:])


def build_chain(sessions: Iterable[dict], *, max_gap: float = 45.0,
                min_count: int = 1, state_fn=None) -> AbsorbingChain:
    """Count the chain's transitions over ``sessions`` (module docstring for the rule).

    ``min_count``: states with fewer visits are censored out of the observed paths (module
    docstring, "Choices"). Raises ValueError naming the session (and turn) for a malformed
    session: missing ``turns``, a directed turn missing ``t``/``asr``/``signal``, an unknown
    signal, times going backwards. ``state_fn(turn) -> str`` names a turn's state (default: its
    whitespace-normalized ``asr``; `request_state` also drops correction cues).
    """
    if not _is_number(max_gap) or max_gap < 0:
        raise ValueError(f"max_gap={max_gap!r} must be a finite number >= 0")
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count={min_count!r} must be an integer >= 1")
    intern: dict[str, int] = {}
    ids: list[int] = []       # raw state id per directed turn
    seg: list[int] = []       # segment id per directed turn
    seg_out: list[int] = []   # absorption (SUCCESS/FAILURE) ending each segment
    for pos, session in enumerate(sessions):
        directed = _session_events(session, pos)
        for j, (_, turn) in enumerate(directed):
            state = state_fn(turn) if state_fn else normalize(turn["asr"])
            ids.append(intern.setdefault(state, len(intern)))
            seg.append(len(seg_out))
            nxt = directed[j + 1][1] if j + 1 < len(directed) else None
            if (nxt is not None and turn["signal"] in CONTINUE_SIGNALS
                    and nxt["t"] - turn["t"] <= max_gap):
                continue
            seg_out.append(FAILURE if turn["signal"] in FAILURE_SIGNALS else SUCCESS)
    raw_states = list(intern)
    raw_ids = np.asarray(ids, dtype=np.int64)
    raw_visits = np.bincount(raw_ids, minlength=len(raw_states))
    kept_raw = np.flatnonzero(raw_visits >= min_count)
    # Sorted state order; map raw id -> new id (-1: dropped).
    order = sorted(kept_raw.tolist(), key=lambda r: raw_states[r])
    states = [raw_states[r] for r in order]
    remap = np.full(len(raw_states), -1, dtype=np.int64)
    remap[np.asarray(order, dtype=np.int64)] = np.arange(len(order))
    t = len(states)

    k = remap[raw_ids] if raw_ids.size else raw_ids
    g = np.asarray(seg, dtype=np.int64)
    keep = k >= 0
    k, g = k[keep], g[keep]
    same = g[1:] == g[:-1]             # kept turn i is followed by a kept turn of its segment
    src, dst = k[:-1][same], k[1:][same]
    counts = sp.coo_matrix((np.ones(src.size), (src, dst)), shape=(t, t)).tocsr()
    last = np.ones(k.size, dtype=bool)
    last[:-1] = ~same                  # last kept turn of its segment: absorbed
    absorb = np.zeros((t, 2))
    if k.size:
        outs = np.asarray(seg_out, dtype=np.int64)[g[last]]
        np.add.at(absorb, (k[last], outs), 1.0)
    visits = np.bincount(k, minlength=t).astype(np.int64)
    return AbsorbingChain(states=states, index={s: i for i, s in enumerate(states)},
                          counts=counts, absorb_counts=absorb, visits=visits)


# ---------------------------------------------------------------- mining

@dataclass(frozen=True)
class Rewrite:
    """A mined rewrite: requests whose text is ``source`` are replaced by ``target``.

    ``source_success``/``target_success``: ``B[., SUCCESS]`` of the two states; ``reach``: the
    probability of ever reaching ``target`` from ``source``; ``support``: visits of ``source``.
    """

    source: str
    target: str
    source_success: float
    target_success: float
    reach: float
    support: int

    @property
    def gain(self) -> float:
        return self.target_success - self.source_success


def _check_prob(name: str, x: Any) -> None:
    if not _is_number(x) or not 0.0 <= x <= 1.0:
        raise ValueError(f"{name}={x!r} must be a number in [0, 1]")


def mine_rewrites(chain: AbsorbingChain, *, min_count: int = 3, max_hops: int = 2,
                  min_reach: float = 0.05, max_source_success: float = 0.5,
                  min_gain: float = 0.2) -> list[Rewrite]:
    """Mine one rewrite per failing source state.

    Sources: states with ``visits >= min_count`` and ``B[s, SUCCESS] <= max_source_success``.
    Candidates: states within ``max_hops`` transitions of ``s`` (``s`` excluded) with
    ``visits >= min_count`` and reach probability ``>= min_reach``. The rewrite is the candidate
    with the highest ``B[r, SUCCESS]`` (ties: the smaller state text), kept when
    ``B[r, SUCCESS] - B[s, SUCCESS] >= min_gain``. Ordered by support (descending), then source.
    """
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count={min_count!r} must be an integer >= 1")
    if isinstance(max_hops, bool) or not isinstance(max_hops, int) or max_hops < 1:
        raise ValueError(f"max_hops={max_hops!r} must be an integer >= 1")
    _check_prob("min_reach", min_reach)
    _check_prob("max_source_success", max_source_success)
    if not _is_number(min_gain):
        raise ValueError(f"min_gain={min_gain!r} must be a finite number")
    if not len(chain):
        return []
    succ = chain.success()
    frequent = chain.visits >= min_count
    plan: list[tuple[int, list[int]]] = []
    for s in np.flatnonzero(frequent & (succ <= max_source_success + _SLACK)).tolist():
        cands = [r for r in chain.successors(s, max_hops) if frequent[r]]
        # A candidate can only win if it could pass the gain threshold.
        cands = [r for r in cands if succ[r] - succ[s] >= min_gain - _SLACK]
        if cands:
            plan.append((s, cands))
    # Reach probabilities: per source on its block of descendants, or, for the sources with a
    # large one, with the chain's factorization in batches.
    reach: dict[int, np.ndarray] = {}
    large: list[tuple[int, list[int]]] = []
    for s, cands in plan:
        closure = chain.descendants(s, LOCAL_MAX)
        if closure is None:
            large.append((s, cands))
        else:
            reach[s] = chain._reach_local(s, closure, cands)
    for lo in range(0, len(large), _BATCH):
        chunk = large[lo:lo + _BATCH]
        rows = chain._rows_of_n([s for s, _ in chunk])
        need = sorted({r for _, c in chunk for r in c})
        dmap = dict(zip(need, chain.diag_n(need).tolist()))
        for (s, cands), row in zip(chunk, rows):
            reach[s] = np.clip(row[cands] / np.array([dmap[r] for r in cands]), 0.0, 1.0)
    out: list[Rewrite] = []
    for s, cands in plan:
        best: tuple[float, int, float] | None = None
        for r, h in zip(cands, reach[s].tolist()):  # ascending text: strict > keeps the first
            if h < min_reach - _SLACK:
                continue
            if best is None or succ[r] > best[0]:
                best = (float(succ[r]), r, h)
        if best is None:
            continue
        out.append(Rewrite(source=chain.states[s], target=chain.states[best[1]],
                           source_success=float(succ[s]), target_success=best[0],
                           reach=float(best[2]), support=int(chain.visits[s])))
    out.sort(key=lambda w: (-w.support, w.source))
    return out


# ---------------------------------------------------------------- evaluation

def evaluate_rewrites(rewrites: Sequence[Rewrite], turns: Iterable[dict],
                      judge: Callable[[str, dict], bool]) -> dict[str, Any]:
    """Apply ``rewrites`` to held-out ``turns`` and count wins and losses.

    A turn whose normalized ``asr`` is a rewrite's source is *triggered*: ``before`` is its
    ``success``, ``after`` is ``judge(rewrite.target, turn)``. A win turns a failure into a
    success, a loss the reverse; the other triggered turns are neutral. Untriggered turns keep
    their outcome. Returns ``pairs``, ``turns``, ``triggered``, ``wins``, ``losses``,
    ``neutral``, ``win_loss_ratio`` (``wins / max(losses, 1)``), ``coverage`` (triggered /
    turns), ``defect_rate_before`` and ``defect_rate_after`` (over all turns; 0.0 for none).
    """
    by_source: dict[str, Rewrite] = {}
    for w in rewrites:
        if w.source in by_source:
            raise ValueError(f"evaluate_rewrites: two rewrites for source {w.source!r}")
        by_source[w.source] = w
    total = triggered = wins = losses = 0
    failed_before = failed_after = 0
    for pos, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise ValueError(f"turn #{pos}: expected a dict, got {type(turn).__name__}")
        for k in ("asr", "success"):
            if k not in turn:
                raise ValueError(f"turn #{pos}: missing field {k!r}")
        if not isinstance(turn["asr"], str):
            raise ValueError(f"turn #{pos}: field 'asr' must be a string, got {turn['asr']!r}")
        total += 1
        before = bool(turn["success"])
        after = before
        w = by_source.get(normalize(turn["asr"]))
        if w is not None:
            triggered += 1
            after = bool(judge(w.target, turn))
            wins += (not before) and after
            losses += before and (not after)
        failed_before += not before
        failed_after += not after
    return {
        "pairs": len(by_source),
        "turns": total,
        "triggered": triggered,
        "wins": wins,
        "losses": losses,
        "neutral": triggered - wins - losses,
        "win_loss_ratio": wins / max(losses, 1),
        "coverage": triggered / total if total else 0.0,
        "defect_rate_before": failed_before / total if total else 0.0,
        "defect_rate_after": failed_after / total if total else 0.0,
    }


# ---------------------------------------------------------------- files

_FIELDS = tuple(f.name for f in fields(Rewrite))


def write_rewrites(path: str | os.PathLike, rewrites: Iterable[Rewrite]) -> Path:
    """Write ``rewrites`` as JSON lines, atomically (a temporary file beside it, then replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for w in rewrites:
                f.write(json.dumps(asdict(w), ensure_ascii=False))
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


def read_rewrites(path: str | os.PathLike) -> list[Rewrite]:
    """Read a file of `write_rewrites`; errors name ``file:line`` and the field."""
    path = Path(path)
    out: list[Rewrite] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            for k in _FIELDS:
                if k not in rec:
                    raise ValueError(f"{where}: missing field {k!r}")
            extra = sorted(set(rec) - set(_FIELDS))
            if extra:
                raise ValueError(f"{where}: unexpected field {extra[0]!r}")
            for k in ("source", "target"):
                if not isinstance(rec[k], str):
                    raise ValueError(f"{where}: field {k!r} must be a string, got {rec[k]!r}")
            for k in ("source_success", "target_success", "reach"):
                if not _is_number(rec[k]) or not 0.0 <= rec[k] <= 1.0:
                    raise ValueError(f"{where}: field {k!r} must be a number in [0, 1], got "
                                     f"{rec[k]!r}")
            if isinstance(rec["support"], bool) or not isinstance(rec["support"], int) or (
                    rec["support"] < 0):
                raise ValueError(f"{where}: field 'support' must be a non-negative integer, got "
                                 f"{rec['support']!r}")
            out.append(Rewrite(source=rec["source"], target=rec["target"],
                               source_success=float(rec["source_success"]),
                               target_success=float(rec["target_success"]),
                               reach=float(rec["reach"]), support=rec["support"]))
    return out
