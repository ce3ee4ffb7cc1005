"""Using a fitted law: compute-optimal sizes, inference-aware sizes, and a held-out budget's losses.

Compute-optimal (Hoffmann et al. 2022): the N and D with 6ND = C that minimise
L(N, D); Approach 3's closed form (acorn.scaling.fit.LawFit.optimal).

Inference-aware (Sardana et al. 2023, "Beyond Chinchilla-Optimal: Accounting
for Inference in Language Model Scaling Laws"): a model that will serve
T tokens costs 6ND to train and 2NT to serve. For the loss the
compute-optimal model reaches, the cheapest model overall solves

    minimise 6 N D(N) + 2 N T   where L(N, D(N)) = that loss,
    D(N) = (B / (loss - E - A / N^alpha))^(1 / beta),

a smaller model trained on more tokens the more it will serve (smaller than
the compute-optimal one as soon as T > 0).

Held-out validation: fit the law to every budget but the largest, predict the
largest budget's runs from their N and D, compare with what they measured.
"""

from __future__ import annotations

import math

import numpy as np

from acorn.errors import AcornError
from acorn.scaling.fit import LawFit


def compute_optimal(law: LawFit, compute: float) -> dict:
    n, d = law.optimal(compute)
    return {"compute": compute, "n": n, "d": d, "tokens_per_param": d / n, "loss": float(law.loss(n, d))}


def tokens_for_loss(law: LawFit, n: float, loss: float) -> float:
    """D such that L(n, D) = loss; inf where n alone cannot get there."""
    room = loss - law.E - law.A / n**law.alpha
    return (law.B / room) ** (1 / law.beta) if room > 0 else math.inf


def inference_aware(law: LawFit, compute: float, inference_tokens: float) -> dict:
    """The model reaching the compute-optimal model's loss at the least training + inference cost."""
    from scipy.optimize import minimize_scalar

    if inference_tokens < 0:
        raise AcornError(f"--inference-tokens {inference_tokens:g}: give a number of tokens >= 0")
    ref = compute_optimal(law, compute)
    target = ref["loss"]

    def cost(log_n: float) -> float:
        n = math.exp(log_n)
        d = tokens_for_loss(law, n, target)
        return 6 * n * d + 2 * n * inference_tokens if math.isfinite(d) else math.inf

    # The smallest N that can reach the loss at all (with infinite data), up to the compute-optimal N:
    # with inference to pay for, the best model is never larger than that.
    n_min = (law.A / (target - law.E)) ** (1 / law.alpha)
    lo, hi = math.log(n_min) + 1e-9, math.log(ref["n"])
    r = minimize_scalar(cost, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
    n = math.exp(r.x)
    d = tokens_for_loss(law, n, target)
    chinchilla_total = 6 * ref["n"] * ref["d"] + 2 * ref["n"] * inference_tokens
    total = 6 * n * d + 2 * n * inference_tokens
    return {"inference_tokens": inference_tokens, "loss": target, "n": n, "d": d, "tokens_per_param": d / n,
            "train_flops": 6 * n * d, "inference_flops": 2 * n * inference_tokens, "total_flops": total,
            "compute_optimal_total_flops": chinchilla_total, "saving": 1 - total / chinchilla_total}


def holdout_errors(law: LawFit, runs: list[dict], n_key: str) -> dict:
    """The law's loss for each held-out run (its N, its tokens) against the measured one."""
    rows = []
    for r in runs:
        pred = float(law.loss(r[n_key], r["tokens"]))
        rows.append({"name": r["name"], "n": r[n_key], "tokens": r["tokens"], "measured": r["val_loss"],
                     "predicted": pred, "error": pred / r["val_loss"] - 1})
    if not rows:
        return {"runs": [], "mean_abs_error": None, "max_abs_error": None}
    errs = np.abs([x["error"] for x in rows])
    best = min(rows, key=lambda x: x["measured"])
    return {"runs": rows, "mean_abs_error": float(errs.mean()), "max_abs_error": float(errs.max()),
            "best_run": best["name"], "best_run_error": best["error"]}


def law_from(fit_json: dict, n_key: str = "total") -> LawFit:
    """The Approach 3 law of fit.json for one way of counting parameters."""
    try:
        d = fit_json["fits"][n_key]["approach3"]
    except KeyError:
        raise AcornError(f"fit.json has no {n_key} fit; run `acorn scaling fit` again") from None
    return LawFit(E=d["E"], A=d["A"], B=d["B"], alpha=d["alpha"], beta=d["beta"])


def predict_from_sweep(sweep_dir, compute: float, *, inference_tokens: float | None = None,
                       n_key: str = "total") -> str:
    """`acorn scaling predict`: the sizes a fitted sweep recommends for a budget, as text."""
    from pathlib import Path

    from acorn.fileio import read_json

    path = Path(sweep_dir) / "fit.json"
    if not path.exists():
        raise AcornError(f"{sweep_dir}: no fit.json; run `acorn scaling fit {sweep_dir}` first")
    law = law_from(read_json(path), n_key)
    opt = compute_optimal(law, compute)
    what = "parameters" if n_key == "total" else "non-embedding parameters"
    lines = [f"law ({n_key} N): L = {law.E:.3f} + {law.A:.4g}/N^{law.alpha:.3f} + {law.B:.4g}/D^{law.beta:.3f}",
             f"compute-optimal for C = {compute:.3g} FLOPs (6ND): N = {opt['n']:.3g} {what}, D = {opt['d']:.3g} tokens "
             f"({opt['tokens_per_param']:.1f} per parameter), predicted loss {opt['loss']:.4f}"]
    if inference_tokens is not None:
        inf = inference_aware(law, compute, inference_tokens)
        lines.append(f"serving {inference_tokens:.3g} tokens (Sardana et al.): N = {inf['n']:.3g}, D = {inf['d']:.3g} "
                     f"({inf['tokens_per_param']:.1f} per parameter) reaches the same loss for {inf['total_flops']:.3g} "
                     f"FLOPs in all, {inf['saving']:.1%} less than the compute-optimal model's "
                     f"{inf['compute_optimal_total_flops']:.3g}")
    return "\n".join(lines)
