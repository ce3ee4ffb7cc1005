"""Fitting a sweep directory end to end, predicting its held-out budget, and sizing from the fit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from acorn.fileio import write_json
from acorn.scaling import predict as P
from acorn.scaling.fit import LawFit
from acorn.scaling.report import fit_sweep

TRUE = LawFit(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


@pytest.fixture
def synthetic_sweep(tmp_path):
    """A sweep directory whose runs' losses come from a known law (0.2% noise): 4 budgets x 4 sizes."""
    rng = np.random.default_rng(0)
    runs = []
    for budget in (1e18, 3e18, 1e19, 3e19):
        centre = np.log10(TRUE.optimal(budget)[0])
        for i, x in enumerate(np.linspace(centre - 0.8, centre + 0.8, 4)):
            n = int(10**x)
            tokens = int(budget / 6 / n)
            name = f"c{budget:.0e}-d{i}"
            r = {"name": name, "depth": i + 1, "budget": budget, "n_total": n, "n_nonembedding": int(0.9 * n),
                 "tokens": tokens, "compute_total": 6.0 * n * tokens, "compute_nonembedding": 5.4 * n * tokens,
                 "val_loss": float(TRUE.loss(n, tokens)) * float(np.exp(rng.normal(0, 0.002))), "seconds": 1.0}
            write_json(tmp_path / "runs" / name / "result.json", r)
            runs.append(r)
    write_json(tmp_path / "sweep.json", {"settings": {}, "runs": runs})
    return tmp_path


def test_fit_predicts_the_held_out_budget_of_a_known_law(synthetic_sweep):
    text = fit_sweep(synthetic_sweep, bootstrap=4, starts_kept=8)
    doc = json.loads((synthetic_sweep / "fit.json").read_text())
    f = doc["fits"]["total"]
    assert f["held_out_budget"] == 3e19 and not any(n.startswith("c3e+19") for n in f["fit_runs"])
    assert f["holdout"]["max_abs_error"] < 0.01  # the law extrapolates to the budget it never saw
    assert f["approach3"]["alpha"] == pytest.approx(0.34, abs=0.06)
    opt = f["holdout"]["optimum"]
    assert opt["approach2_n_opt"] == pytest.approx(TRUE.optimal(3e19)[0], rel=0.35)
    assert set(doc["fits"]) == {"total", "non_embedding"}  # both counting conventions, always
    for png in ("isoflop", "frontier", "holdout"):
        assert (synthetic_sweep / f"scaling-{png}.png").stat().st_size > 10_000
    assert "held-out budget 3e+19" in text and "## Fits" in (synthetic_sweep / "report.md").read_text()


def test_inference_aware_sizing_trades_parameters_for_tokens():
    none = P.inference_aware(TRUE, 1e21, 0.0)
    opt = P.compute_optimal(TRUE, 1e21)
    assert none["n"] == pytest.approx(opt["n"], rel=1e-3)  # nothing to serve: Chinchilla's answer
    heavy = P.inference_aware(TRUE, 1e21, 1e13)
    assert heavy["n"] < 0.8 * opt["n"] and heavy["d"] > opt["d"]  # smaller, trained longer (Sardana et al.)
    assert float(TRUE.loss(heavy["n"], heavy["d"])) == pytest.approx(opt["loss"], rel=1e-6)  # the same quality
    assert 0 < heavy["saving"] < 1 and heavy["total_flops"] < heavy["compute_optimal_total_flops"]


def test_cli_fit_and_predict(synthetic_sweep, tmp_path, capsys, monkeypatch):
    from acorn.cli import main
    from acorn.scaling import report

    monkeypatch.setattr(report, "fit_law", _quick_fit)  # the CLI's default search, narrowed for a test
    assert main(["scaling", "fit", str(synthetic_sweep), "--bootstrap", "0"]) == 0
    assert main(["scaling", "predict", str(synthetic_sweep), "--compute", "1e21", "--inference-tokens", "1e13"]) == 0
    out = capsys.readouterr().out
    assert "compute-optimal for C = 1e+21" in out and "less than the compute-optimal" in out
    assert main(["scaling", "fit", str(tmp_path / "nothing")]) == 2
    assert "no sweep here" in capsys.readouterr().err


def _quick_fit(n, d, loss, **kw):
    from acorn.scaling.fit import fit_law

    return fit_law(n, d, loss, **{**kw, "starts_kept": 8})
