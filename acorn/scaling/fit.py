"""Fitting scaling laws to a sweep's final losses: Chinchilla's Approaches 2 and 3.

Approach 2 (Hoffmann et al. 2022, section 3.2): along each IsoFLOP curve (one
compute budget C, several sizes N), the loss against log N is close to a
parabola near its minimum; the vertex is that budget's compute-optimal size
N*(C), and the same points against log D give D*(C). Straight lines through
the vertices in log-log space give the power laws N* = k_N C^a and
D* = k_D C^b, and their ratio the tokens per parameter.

Approach 3 (Hoffmann et al. 2022, section 3.3, as corrected by Besiroglu et
al. 2024, "Chinchilla Scaling: A replication attempt"): every run's loss is
modelled as

    L(N, D) = E + A / N^alpha + B / D^beta

(E: the entropy of the text, what an infinite model on infinite data still
pays; the other two terms: what finite parameters and finite data cost). It
is fitted in log space, with A = e^a, B = e^b, E = e^e, by minimising the
Huber loss (delta = 1e-3) of

    LSE(a - alpha log N, b - beta log D, e) - log L

over the runs, with L-BFGS from a grid of starting points (the objective has
many local minima; the best of the grid is kept). Besiroglu et al. found the
original fit's reported parameters were not the optimum of its own objective
(an optimiser stopped early) and its confidence intervals implausibly narrow;
they refit with a tight tolerance and bootstrapped the runs. We do both: the
intervals here are percentiles over fits to runs resampled with replacement.

Compute-optimal sizes follow from the fit in closed form (Hoffmann et al.
eq. 4): minimising L subject to 6ND = C gives
    N_opt = G (C/6)^(beta / (alpha + beta)),  D_opt = (C/6) / N_opt,
    G = (alpha A / (beta B))^(1 / (alpha + beta)).

Pure functions of arrays of numbers; nothing here trains or reads files.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from acorn.errors import AcornError

HUBER_DELTA = 1e-3


# ------------------------------------------------------------------ Approach 3
@dataclass
class LawFit:
    """L(N, D) = E + A / N^alpha + B / D^beta."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float = float("nan")  # the Huber loss at the optimum
    intervals: dict = field(default_factory=dict)  # name -> (low, high): bootstrap percentiles
    n_runs: int = 0
    bootstrap: int = 0

    def loss(self, n, d):
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    @property
    def a(self) -> float:
        """N_opt grows as C^a (D_opt as C^(1 - a))."""
        return self.beta / (self.alpha + self.beta)

    def optimal(self, compute: float) -> tuple[float, float]:
        """The compute-optimal (N, D) for 6ND = compute (Hoffmann et al. eq. 4)."""
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        n = g * (compute / 6) ** self.a
        return n, compute / 6 / n

    def to_dict(self) -> dict:
        out = asdict(self)
        out["a"] = self.a
        out["intervals"] = {k: list(v) for k, v in self.intervals.items()}
        return out


def _objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float):
    """Sum of Huber(LSE(a - alpha log N, b - beta log D, e) - log L) and its gradient."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    top = terms.max(axis=0)
    w = np.exp(terms - top)
    s = w.sum(axis=0)
    pred = top + np.log(s)
    r = pred - log_l
    small = np.abs(r) <= delta
    value = np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum()
    dr = np.where(small, r, delta * np.sign(r))  # the Huber loss's derivative
    soft = w / s  # d pred / d term
    grad = np.array([
        (dr * soft[0]).sum(),
        (dr * soft[1]).sum(),
        (dr * soft[2]).sum(),
        -(dr * soft[0] * log_n).sum(),
        -(dr * soft[1] * log_d).sum(),
    ])
    return value, grad


def _objective_many(thetas: np.ndarray, log_n, log_d, log_l, delta) -> np.ndarray:
    """_objective's value at many parameter vectors at once (S x 5 -> S)."""
    a, b, e, alpha, beta = (thetas[:, i:i + 1] for i in range(5))
    pred = np.logaddexp(np.logaddexp(a - alpha * log_n, b - beta * log_d), e)
    r = np.abs(pred - log_l)
    return np.where(r <= delta, 0.5 * r * r, delta * (r - 0.5 * delta)).sum(axis=1)


# Bounds keep the search where the law means something (exponents positive and
# below 5, coefficients e^-10 .. e^40); the grid of starts is Hoffmann et al.'s.
_BOUNDS = [(-10.0, 40.0), (-10.0, 40.0), (-10.0, 5.0), (1e-3, 5.0), (1e-3, 5.0)]
_GRID = {"a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0), "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
         "e": (-1.0, -0.5, 0.0, 0.5, 1.0), "alpha": (0.0, 0.5, 1.0, 1.5, 2.0), "beta": (0.0, 0.5, 1.0, 1.5, 2.0)}


def _minimise(starts, log_n, log_d, log_l, delta):
    from scipy.optimize import minimize

    results = []
    for x0 in starts:
        x0 = np.clip(np.asarray(x0, dtype=float), [lo for lo, _ in _BOUNDS], [hi for _, hi in _BOUNDS])
        r = minimize(_objective, x0, args=(log_n, log_d, log_l, delta), jac=True, method="L-BFGS-B",
                     bounds=_BOUNDS, options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-12})
        results.append((float(r.fun), r.x))
    results.sort(key=lambda t: t[0])
    return results


def fit_law(n, d, loss, *, delta: float = HUBER_DELTA, bootstrap: int = 200, seed: int = 0,
            grid: dict | None = None, confidence: float = 0.95, starts_kept: int = 100) -> LawFit:
    """Approach 3 on runs of N parameters trained on D tokens to a final loss."""
    n, d, loss = (np.asarray(x, dtype=float) for x in (n, d, loss))
    if len(n) < 5:
        raise AcornError(f"Approach 3 fits 5 parameters: it needs at least 5 finished runs, not {len(n)}; "
                         "let the sweep finish (or add budgets)")
    if np.any(n <= 0) or np.any(d <= 0) or np.any(loss <= 0) or not np.all(np.isfinite(loss)):
        raise AcornError("Approach 3 needs positive parameter counts, tokens and finite positive losses")
    log_n, log_d, log_l = np.log(n), np.log(d), np.log(loss)
    g = grid or _GRID
    starts = np.array(list(itertools.product(g["a"], g["b"], g["e"], g["alpha"], g["beta"])), dtype=float)
    if len(starts) > starts_kept:
        # L-BFGS from all 4,500 starts takes minutes on a laptop; the objective at every start
        # costs milliseconds, so the search runs from the starts_kept best of them (an
        # approximation of the full grid search, reported as such).
        values = _objective_many(starts, log_n, log_d, log_l, delta)
        starts = starts[np.argsort(values, kind="stable")[:starts_kept]]
    ranked = _minimise(starts, log_n, log_d, log_l, delta)
    best_value, best = ranked[0]
    fit = _law(best, best_value, len(n))
    if bootstrap:
        # Each resample restarts from the best optimum and a few other good ones of the grid
        # (the full grid per resample would take minutes); distinct starts guard against a
        # resample whose optimum moved to another basin.
        seeds = [best] + [x for _, x in ranked[1::max(1, len(ranked) // 3)]][:3]
        rng = np.random.default_rng(seed)
        draws = []
        for _ in range(bootstrap):
            idx = rng.integers(0, len(n), len(n))
            if len(set(idx.tolist())) < 5:
                continue
            value, x = _minimise(seeds, log_n[idx], log_d[idx], log_l[idx], delta)[0]
            f = _law(x, value, len(idx))
            draws.append([f.E, f.A, f.B, f.alpha, f.beta, f.a])
        if draws:
            q = (1 - confidence) / 2 * 100
            arr = np.array(draws)
            lo, hi = np.percentile(arr, q, axis=0), np.percentile(arr, 100 - q, axis=0)
            fit.intervals = {k: (float(lo[i]), float(hi[i])) for i, k in enumerate(["E", "A", "B", "alpha", "beta", "a"])}
            fit.bootstrap = len(draws)
    return fit


def _law(x, value, n_runs) -> LawFit:
    a, b, e, alpha, beta = (float(v) for v in x)
    return LawFit(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta, objective=float(value),
                  n_runs=n_runs)


# ------------------------------------------------------------------ Approach 2
@dataclass
class IsoFLOP:
    """One budget's curve: its parabola in log N and its vertex."""

    budget: float
    n: list[float]
    d: list[float]
    loss: list[float]
    coef: list[float]  # loss = c0 (log N)^2 + c1 log N + c2
    n_opt: float
    d_opt: float
    loss_opt: float
    inside: bool  # the vertex lies within the sizes trained (not extrapolated)


@dataclass
class PowerLaws:
    """N* = k_N C^a, D* = k_D C^b from the IsoFLOP vertices."""

    curves: list[IsoFLOP]
    a: float
    k_n: float
    b: float
    k_d: float
    left_out: list[str] = field(default_factory=list)  # budgets without a usable curve, and why

    def n_opt(self, compute: float) -> float:
        return self.k_n * compute**self.a

    def d_opt(self, compute: float) -> float:
        return self.k_d * compute**self.b

    def tokens_per_param(self, compute: float) -> float:
        return self.d_opt(compute) / self.n_opt(compute)

    def to_dict(self) -> dict:
        return asdict(self)


def vertex(x: np.ndarray, y: np.ndarray) -> tuple[list[float], float, float] | None:
    """The parabola through (x, y) by least squares and its vertex (x*, y*); None if it opens downwards."""
    c = np.polyfit(x, y, 2)
    if c[0] <= 0:
        return None
    xv = -c[1] / (2 * c[0])
    return c.tolist(), float(xv), float(np.polyval(c, xv))


def isoflop_fit(budgets, n, d, loss) -> PowerLaws:
    """Approach 2 on runs grouped by budget (the budget each run was planned for)."""
    budgets, n, d, loss = (np.asarray(x, dtype=float) for x in (budgets, n, d, loss))
    curves, left_out = [], []
    for c in sorted(set(budgets.tolist())):
        m = budgets == c
        if m.sum() < 3:
            left_out.append(f"{c:.3g}: {int(m.sum())} runs; a parabola needs 3")
            continue
        vn, vd = vertex(np.log(n[m]), loss[m]), vertex(np.log(d[m]), loss[m])
        if vn is None or vd is None:
            left_out.append(f"{c:.3g}: the losses do not curve upwards around a minimum")
            continue
        coef, xv, lv = vn
        inside = bool(np.log(n[m]).min() <= xv <= np.log(n[m]).max())
        curves.append(IsoFLOP(c, n[m].tolist(), d[m].tolist(), loss[m].tolist(), coef, math.exp(xv),
                              math.exp(vd[1]), lv, inside))
    if len(curves) < 2:
        raise AcornError(f"Approach 2 needs IsoFLOP curves at 2 budgets or more, each of 3 sizes or more; found "
                         f"{len(curves)} ({'; '.join(left_out) or 'no runs'})")
    log_c = np.log([cv.budget for cv in curves])
    a, log_kn = np.polyfit(log_c, np.log([cv.n_opt for cv in curves]), 1)
    b, log_kd = np.polyfit(log_c, np.log([cv.d_opt for cv in curves]), 1)
    return PowerLaws(curves, float(a), math.exp(log_kn), float(b), math.exp(log_kd), left_out)


def minimum_loss_law(curves: list[IsoFLOP], floor: float) -> tuple[float, float]:
    """L*(C) = floor + k C^-gamma through the IsoFLOP minima above a floor (Approach 3's E):
    (k, gamma), to extrapolate the best loss a larger budget reaches."""
    c = np.log([cv.budget for cv in curves])
    excess = np.array([cv.loss_opt - floor for cv in curves])
    if np.any(excess <= 0):
        raise AcornError("an IsoFLOP minimum lies below the fitted entropy E; the fit cannot extrapolate it")
    slope, log_k = np.polyfit(c, np.log(excess), 1)
    return math.exp(log_k), float(-slope)
