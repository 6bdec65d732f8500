"""Speaker-verification metrics in numpy: error rates over thresholds, EER and minDCF.

A trial is (score, label) with label 1 for a target trial (same speaker) and 0 for a
non-target one; a trial is *accepted* at threshold t when score >= t.

Choices that were open, fixed here:
* Operating points: one per distinct score (accept every trial scoring >= it) plus "accept
  nothing" (t = +inf), i.e. the points sklearn's `roc_curve(..., drop_intermediate=False)`
  gives. Tied scores move together, so a tie is one diagonal step of the curve, not an
  arbitrary order of the tied trials.
* EER: where the curve through consecutive operating points, joined by straight segments (the
  points a randomized choice between two adjacent thresholds reaches), crosses
  P_miss = P_fa. Exact: no grid, no nearest-point approximation. All scores tied gives 0.5;
  perfectly separated scores give 0.
* minDCF (NIST SRE's normalized detection cost): DCF(t) = C_miss P_miss(t) p_target +
  C_fa P_fa(t) (1 - p_target), divided by min(C_miss p_target, C_fa (1 - p_target)) (the cost
  of the better of "accept all" and "reject all"), minimized over the operating points above
  (accept-all and reject-all included, so minDCF <= 1).
* Empty classes: a trial list without target or without non-target trials is an error naming
  what is missing (rates are undefined).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

__all__ = ["error_rates", "eer", "min_dcf", "verification_metrics", "DEFAULT_P_TARGETS"]

DEFAULT_P_TARGETS = (0.01, 0.05)


def _check(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.shape[0]}) and labels ({y.shape[0]}) must have one entry "
                         "per trial")
    if not np.isfinite(s).all():
        raise ValueError(f"{int((~np.isfinite(s)).sum())} trial score(s) are NaN or infinite")
    if y.dtype == bool:
        y = y.astype(np.int64)
    if not np.isin(y, (0, 1)).all():
        raise ValueError("trial labels must be 1 (target) or 0 (non-target), got values "
                         f"{sorted(set(np.unique(y).tolist()) - {0, 1})[:5]}")
    n_tar, n_non = int(y.sum()), int((1 - y).sum())
    if n_tar == 0 or n_non == 0:
        raise ValueError(f"a trial list needs target and non-target trials; got {n_tar} target "
                         f"and {n_non} non-target")
    return s, y.astype(np.int64)


def error_rates(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, P_miss, P_fa) at every operating point, thresholds decreasing from +inf
    (accept nothing: P_miss 1, P_fa 0) to the lowest score (accept all: P_miss 0, P_fa 1)."""
    s, y = _check(scores, labels)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    # last position of each run of equal scores: the operating point accepts the whole run
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
    tp = np.cumsum(y)[last]
    fp = np.cumsum(1 - y)[last]
    n_tar, n_non = int(y.sum()), len(y) - int(y.sum())
    thresholds = np.r_[np.inf, s[last]]
    p_miss = np.r_[1.0, 1.0 - tp / n_tar]
    p_fa = np.r_[0.0, fp / n_non]
    return thresholds, p_miss, p_fa


def eer(scores, labels) -> float:
    """Equal error rate: where the piecewise-linear (P_fa, P_miss) curve crosses P_miss = P_fa."""
    _, p_miss, p_fa = error_rates(scores, labels)
    d = p_miss - p_fa  # non-increasing, from 1 to -1
    k = int(np.argmax(d <= 0))  # first point at or past the crossing (k >= 1 since d[0] = 1)
    d0, d1 = d[k - 1], d[k]
    alpha = d0 / (d0 - d1)
    return float(p_fa[k - 1] + alpha * (p_fa[k] - p_fa[k - 1]))


def min_dcf(scores, labels, p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """Minimum normalized detection cost over the operating points (see the module docstring)."""
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must lie in (0, 1), got {p_target!r}")
    if c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"c_miss and c_fa must be positive, got {c_miss!r}, {c_fa!r}")
    _, p_miss, p_fa = error_rates(scores, labels)
    dcf = c_miss * p_miss * p_target + c_fa * p_fa * (1.0 - p_target)
    return float(dcf.min() / min(c_miss * p_target, c_fa * (1.0 - p_target)))


def verification_metrics(scores, labels, p_targets: Iterable[float] = DEFAULT_P_TARGETS,
                         c_miss: float = 1.0, c_fa: float = 1.0) -> dict:
    """{"eer", "min_dcf": {"<p_target>": value}, "trials", "target_trials",
    "nontarget_trials"} of one trial list."""
    s, y = _check(scores, labels)
    return {"eer": eer(s, y),
            "min_dcf": {f"{p:g}": min_dcf(s, y, p, c_miss, c_fa) for p in p_targets},
            "trials": int(len(y)), "target_trials": int(y.sum()),
            "nontarget_trials": int(len(y) - y.sum())}


def spread(values: Sequence[float]) -> float:
    """max - min of a list of rates (0 for fewer than two)."""
    v = [float(x) for x in values]
    return max(v) - min(v) if len(v) >= 2 else 0.0
