"""The fits recover a known law from synthetic losses it generated (with noise)."""

from __future__ import annotations

import numpy as np
import pytest

from acorn.errors import AcornError
from acorn.scaling import fit as F

# Hoffmann et al. 2022's own Approach 3 estimates, as the "known law".
TRUE = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
BUDGETS = [1e18, 3e18, 1e19, 3e19, 1e20]


def _law(n, d):
    return TRUE["E"] + TRUE["A"] / n ** TRUE["alpha"] + TRUE["B"] / d ** TRUE["beta"]


def _isoflop_runs(noise: float, per_budget: int = 7, seed: int = 0):
    """Sizes spanning a decade either side of each budget's true optimum, and their losses."""
    a = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
    rng = np.random.default_rng(seed)
    c, n, d = [], [], []
    for budget in BUDGETS:
        centre = np.log10(F.LawFit(**TRUE).optimal(budget)[0])
        for x in np.linspace(centre - 1, centre + 1, per_budget):
            c.append(budget)
            n.append(10**x)
            d.append(budget / 6 / 10**x)
    n, d = np.array(n), np.array(d)
    return np.array(c), n, d, _law(n, d) * np.exp(rng.normal(0, noise, len(n)))


def test_approach_3_recovers_the_law_from_noisy_losses():
    _, n, d, loss = _isoflop_runs(noise=0.003)
    fit = F.fit_law(n, d, loss, bootstrap=10, starts_kept=10)
    assert fit.alpha == pytest.approx(TRUE["alpha"], abs=0.03)
    assert fit.beta == pytest.approx(TRUE["beta"], abs=0.03)
    assert fit.E == pytest.approx(TRUE["E"], rel=0.03)
    assert fit.a == pytest.approx(0.28 / 0.62, abs=0.03)
    lo, hi = fit.intervals["alpha"]
    assert lo <= fit.alpha <= hi and hi - lo < 0.2  # an interval around the estimate, not everywhere
    # Without noise the optimum is the truth itself: the objective reaches ~0.
    clean = F.fit_law(n, d, _law(n, d), bootstrap=0, starts_kept=10)
    assert clean.alpha == pytest.approx(TRUE["alpha"], abs=2e-3) and clean.objective < 1e-8


def test_compute_optimal_size_minimises_the_law_on_the_isoflop_line():
    law = F.LawFit(**TRUE)
    n_opt, d_opt = law.optimal(1e21)
    assert 6 * n_opt * d_opt == pytest.approx(1e21)
    for f in (0.8, 1.25):  # any other size on the same budget does worse
        assert law.loss(n_opt * f, 1e21 / 6 / (n_opt * f)) > law.loss(n_opt, d_opt)


def test_approach_2_finds_the_optimal_sizes_and_their_power_law():
    c, n, d, loss = _isoflop_runs(noise=0.001)
    laws = F.isoflop_fit(c, n, d, loss)
    truth = F.LawFit(**TRUE)
    assert len(laws.curves) == len(BUDGETS) and all(cv.inside for cv in laws.curves)
    for cv in laws.curves:  # each parabola's vertex near the law's optimum (a parabola is an approximation)
        assert cv.n_opt == pytest.approx(truth.optimal(cv.budget)[0], rel=0.25)
    assert laws.a == pytest.approx(truth.a, abs=0.04)
    assert laws.a + laws.b == pytest.approx(1.0, abs=0.05)  # N* D* = C / 6: the exponents add to one
    assert laws.tokens_per_param(1e19) == pytest.approx(truth.optimal(1e19)[1] / truth.optimal(1e19)[0], rel=0.5)


def test_too_few_runs_are_refused_with_the_reason():
    with pytest.raises(AcornError, match="at least 5"):
        F.fit_law([1e6, 2e6], [1e8, 1e8], [3.0, 2.9])
    c, n, d, loss = _isoflop_runs(noise=0.0, per_budget=2)
    with pytest.raises(AcornError, match="a parabola needs 3"):
        F.isoflop_fit(c, n, d, loss)
