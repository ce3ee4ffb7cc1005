"""A sweep's fits, held-out validation, emergence, plots and report.md: what `acorn scaling fit`
and `acorn scaling emergence` write into the sweep directory.

    fit.json                  both parameter counts' Approach 2 and 3 fits, the held-out errors
    emergence.json            every run's scores on the world's items
    scaling-isoflop.png       loss against N per budget, the parabolas and their minima
    scaling-frontier.png      loss against compute, the frontier, the law's compute-optimal curve
    scaling-holdout.png       the law's curves against the runs, the held-out budget predicted
    scaling-emergence.png     exact match against log-probability and edit distance, by compute
    report.md                 the numbers and the plots, for a person
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from acorn.errors import AcornError
from acorn.fileio import atomic_write, read_json, write_json, write_text
from acorn.scaling.fit import LawFit, fit_law, isoflop_fit, minimum_loss_law, vertex
from acorn.scaling.predict import compute_optimal, holdout_errors, inference_aware
from acorn.scaling.sweep import load_results, world_of

N_KEYS = {"total": "n_total", "non_embedding": "n_nonembedding"}
C_KEYS = {"total": "compute_total", "non_embedding": "compute_nonembedding"}


# ------------------------------------------------------------------ fit
def fit_runs(results: list[dict], n_key: str = "total", *, bootstrap: int = 200, holdout: bool = True,
             starts_kept: int = 100) -> dict:
    """Approach 2 and 3 on the runs of every budget but the largest (held out, then predicted)."""
    nk = N_KEYS[n_key]
    budgets = sorted({r["budget"] for r in results})
    held = budgets[-1] if holdout and len(budgets) >= 3 else None
    train = [r for r in results if r["budget"] != held]
    test = [r for r in results if r["budget"] == held]
    cols = lambda rs, k: np.array([r[k] for r in rs], dtype=float)  # noqa: E731
    a2 = isoflop_fit(cols(train, "budget"), cols(train, nk), cols(train, "tokens"), cols(train, "val_loss"))
    law = fit_law(cols(train, nk), cols(train, "tokens"), cols(train, "val_loss"), bootstrap=bootstrap,
                  starts_kept=starts_kept)
    out = {"n_key": n_key, "held_out_budget": held, "fit_runs": [r["name"] for r in train],
           "approach2": a2.to_dict(), "approach3": law.to_dict(),
           "tokens_per_param_at": {f"{c:.3g}": a2.tokens_per_param(c) for c in budgets}}
    if held is not None:
        out["holdout"] = holdout_errors(law, test, nk)
        pred_n = a2.n_opt(held)
        hold = {"budget": held, "approach2_n_opt": pred_n, "approach3_n_opt": law.optimal(held)[0]}
        seen = vertex(np.log(cols(test, nk)), cols(test, "val_loss")) if len(test) >= 3 else None
        if seen is not None:  # the held-out budget's own parabola
            hold.update(observed_n_opt=math.exp(seen[1]), observed_loss_opt=seen[2],
                        observed_inside=bool(np.log(cols(test, nk)).min() <= seen[1] <= np.log(cols(test, nk)).max()))
        try:
            k, gamma = minimum_loss_law(a2.curves, law.E)
            hold["approach2_loss_opt"] = law.E + k * held**-gamma
        except AcornError:
            pass
        out["holdout"]["optimum"] = hold
    return out


def fit_sweep(sweep_dir, *, n_key: str = "total", bootstrap: int = 200, holdout: bool = True,
              starts_kept: int = 100) -> str:
    """`acorn scaling fit`: fit.json (both parameter counts), the plots and report.md; returns a summary."""
    from tqdm import tqdm

    sweep_dir = Path(sweep_dir)
    results = load_results(sweep_dir)
    if not results:
        raise AcornError(f"{sweep_dir}: no run has finished yet; let `acorn scaling sweep --out {sweep_dir}` run")
    fits = {}
    for key in tqdm(N_KEYS, desc="fitting", unit="count", leave=False):
        fits[key] = fit_runs(results, key, bootstrap=bootstrap, holdout=holdout, starts_kept=starts_kept)
    doc = {"main": n_key, "runs": len(results), "bootstrap": bootstrap, "huber_delta": 1e-3,
           "compute": "C = 6 N D (N as named)", "fits": fits}
    write_json(sweep_dir / "fit.json", doc)
    plot_isoflop(results, fits[n_key], sweep_dir / "scaling-isoflop.png")
    plot_frontier(results, fits[n_key], sweep_dir / "scaling-frontier.png")
    plot_holdout(results, fits[n_key], sweep_dir / "scaling-holdout.png")
    write_report(sweep_dir)
    return summary(doc) + f"\nfit.json, scaling-*.png and report.md -> {sweep_dir}"


def _ci(law: dict, k: str) -> str:
    iv = law.get("intervals", {}).get(k)
    return f" [{iv[0]:.3g}, {iv[1]:.3g}]" if iv else ""


def summary(doc: dict) -> str:
    lines = []
    for key, f in doc["fits"].items():
        a2, a3 = f["approach2"], f["approach3"]
        lines.append(f"{key} N: Approach 2: N* ~ C^{a2['a']:.3f}, D* ~ C^{a2['b']:.3f}; tokens per parameter "
                     + ", ".join(f"{v:.1f} at {c}" for c, v in f["tokens_per_param_at"].items()))
        lines.append(f"{key} N: Approach 3: L = {a3['E']:.3f}{_ci(a3, 'E')} + {a3['A']:.3g}/N^{a3['alpha']:.3f}"
                     f"{_ci(a3, 'alpha')} + {a3['B']:.3g}/D^{a3['beta']:.3f}{_ci(a3, 'beta')}; N_opt ~ C^{a3['a']:.3f}"
                     f"{_ci(a3, 'a')}")
        h = f.get("holdout")
        if h and h["runs"]:
            lines.append(f"{key} N: held-out budget {f['held_out_budget']:.3g}: predicted final losses off by "
                         f"{h['mean_abs_error']:.1%} on average (max {h['max_abs_error']:.1%}; its best run "
                         f"{h['best_run']}: {h['best_run_error']:+.1%})")
    return "\n".join(lines)


# ------------------------------------------------------------------ plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _log_x(ax) -> None:
    """A log compute or size axis labelled at its decades only (the minor labels overlap)."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())


def _save(fig, path: Path) -> None:
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    _plt().close(fig)


def _law(fit: dict) -> LawFit:
    d = fit["approach3"]
    return LawFit(E=d["E"], A=d["A"], B=d["B"], alpha=d["alpha"], beta=d["beta"])


def _colors(budgets):
    cmap = _plt().get_cmap("viridis")
    return {b: cmap(i / max(1, len(budgets) - 1) * 0.9) for i, b in enumerate(budgets)}


def plot_isoflop(results: list[dict], fit: dict, path: Path) -> None:
    plt = _plt()
    nk = N_KEYS[fit["n_key"]]
    budgets = sorted({r["budget"] for r in results})
    color = _colors(budgets)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for cv in fit["approach2"]["curves"]:
        x = np.linspace(math.log(min(cv["n"])) - 0.3, math.log(max(cv["n"])) + 0.3, 100)
        ax.plot(np.exp(x), np.polyval(cv["coef"], x), color=color[cv["budget"]], lw=1)
        ax.plot(cv["n_opt"], cv["loss_opt"], "*", ms=12, color=color[cv["budget"]], mec="k")
    for b in budgets:
        rs = [r for r in results if r["budget"] == b]
        held = b == fit["held_out_budget"]
        ax.plot([r[nk] for r in rs], [r["val_loss"] for r in rs], "o", color=color[b], mfc="none" if held else color[b],
                label=f"C = {b:.2g}" + (" (held out)" if held else ""))
    _log_x(ax)
    ax.set_xlabel(f"parameters N ({fit['n_key'].replace('_', '-')})")
    ax.set_ylabel("final validation loss")
    ax.set_title("IsoFLOP curves: a parabola in log N per budget, its minimum (*)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_frontier(results: list[dict], fit: dict, path: Path) -> None:
    plt = _plt()
    nk, ck = N_KEYS[fit["n_key"]], C_KEYS[fit["n_key"]]
    law = _law(fit)
    depths = sorted({r["depth"] for r in results})
    cmap = plt.get_cmap("plasma")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, dep in enumerate(depths):
        rs = sorted((r for r in results if r["depth"] == dep), key=lambda r: r[ck])
        ax.plot([r[ck] for r in rs], [r["val_loss"] for r in rs], "o-", color=cmap(i / max(1, len(depths)) * 0.85),
                lw=0.8, label=f"depth {dep} ({rs[0][nk] / 1e6:.2f}M)")
    best = {}
    for r in results:
        if r["budget"] not in best or r["val_loss"] < best[r["budget"]]["val_loss"]:
            best[r["budget"]] = r
    fr = sorted(best.values(), key=lambda r: r[ck])
    ax.plot([r[ck] for r in fr], [r["val_loss"] for r in fr], "k--", lw=1, label="frontier (best run per budget)")
    cs = np.logspace(math.log10(min(r[ck] for r in results)) - 0.2, math.log10(max(r[ck] for r in results)) + 0.4, 50)
    ax.plot(cs, [compute_optimal(law, c)["loss"] for c in cs], color="tab:red", lw=1.5,
            label=f"Approach 3, compute-optimal (fitted without C = {fit['held_out_budget']:.2g})"
            if fit["held_out_budget"] else "Approach 3, compute-optimal")
    _log_x(ax)
    ax.set_xlabel(f"compute C = 6ND (FLOPs, N {fit['n_key'].replace('_', '-')})")
    ax.set_ylabel("final validation loss")
    ax.set_title("Loss against compute")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def plot_holdout(results: list[dict], fit: dict, path: Path) -> None:
    plt = _plt()
    nk = N_KEYS[fit["n_key"]]
    law = _law(fit)
    budgets = sorted({r["budget"] for r in results})
    color = _colors(budgets)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for b in budgets:
        rs = sorted((r for r in results if r["budget"] == b), key=lambda r: r[nk])
        held = b == fit["held_out_budget"]
        # N and D on the budget's line: D = C / (6 N), for the N the law sees.
        ns = np.logspace(math.log10(rs[0][nk]) - 0.3, math.log10(rs[-1][nk]) + 0.3, 60)
        c = np.mean([r["tokens"] * r[nk] for r in rs])
        ax.plot(ns, law.loss(ns, c / ns), "--" if held else "-", color=color[b], lw=1.5 if held else 0.8)
        ax.plot([r[nk] for r in rs], [r["val_loss"] for r in rs], "o", color=color[b], mfc="none" if held else color[b],
                label=f"C = {b:.2g}" + (" held out: measured (o), predicted (x)" if held else ""))
        if held:
            for r in rs:
                p = float(law.loss(r[nk], r["tokens"]))
                ax.plot(r[nk], p, "x", color=color[b], ms=9)
                ax.annotate(f"{p / r['val_loss'] - 1:+.1%}", (r[nk], r["val_loss"]), textcoords="offset points",
                            xytext=(5, -12), fontsize=8)
    _log_x(ax)
    ax.set_xlabel(f"parameters N ({fit['n_key'].replace('_', '-')})")
    ax.set_ylabel("final validation loss")
    ax.set_title("L(N, D) = E + A/N^a + B/D^b fitted without the largest budget")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


# ------------------------------------------------------------------ emergence
def emergence_sweep(sweep_dir, *, world: str | None = None, limit: int | None = None, device: str = "auto") -> str:
    """`acorn scaling emergence`: every finished run's model on the world's items; emergence.json,
    scaling-emergence.png and report.md."""
    from tqdm import tqdm

    from acorn.infer.engine import Engine
    from acorn.scaling.emergence import evaluate, world_items

    sweep_dir = Path(sweep_dir)
    results = load_results(sweep_dir)
    if not results:
        raise AcornError(f"{sweep_dir}: no run has finished yet; let `acorn scaling sweep --out {sweep_dir}` run")
    if world is None:
        found = world_of(Path(read_json(sweep_dir / "sweep.json")["settings"]["data"]))
        if found is None:
            raise AcornError(f"{sweep_dir}: the world its data was prepared from is not where it was; pass --world DIR")
        world = found
    items = world_items(world, limit)
    rows = []
    for r in tqdm(results, desc="emergence", unit="model"):
        engine = Engine.from_pretrained(sweep_dir / "runs" / r["name"] / "model", device=device)
        keep = ("name", "depth", "budget", "n_total", "n_nonembedding", "tokens", "compute_total",
                "compute_nonembedding", "val_loss")
        rows.append({**{k: r[k] for k in keep}, "tasks": evaluate(engine, items)})
    doc = {"world": str(world), "items": {k: len(v) for k, v in items.items()}, "runs": rows}
    write_json(sweep_dir / "emergence.json", doc)
    plot_emergence(rows, sweep_dir / "scaling-emergence.png")
    write_report(sweep_dir)
    return emergence_summary(doc) + f"\nemergence.json, scaling-emergence.png and report.md -> {sweep_dir}"


def frontier_runs(rows: list[dict]) -> list[dict]:
    """The best run (lowest validation loss) of each budget, by compute."""
    best = {}
    for r in rows:
        if r["budget"] not in best or r["val_loss"] < best[r["budget"]]["val_loss"]:
            best[r["budget"]] = r
    return sorted(best.values(), key=lambda r: r["compute_total"])


def emergence_summary(doc: dict) -> str:
    fr = frontier_runs(doc["runs"])
    lines = ["frontier models (best of each budget), smallest compute first:"]
    for task in fr[0]["tasks"]:
        ov = [r["tasks"][task]["overall"] for r in fr]
        lines.append(f"  {task}: exact match " + " -> ".join(f"{o['exact_match']:.1%}" for o in ov)
                     + "; log-prob " + " -> ".join(f"{o['logprob']:.2f}" for o in ov)
                     + "; edit distance " + " -> ".join(f"{o['edit_distance']:.2f}" for o in ov))
    return "\n".join(lines)


def plot_emergence(rows: list[dict], path: Path) -> None:
    plt = _plt()
    tasks = list(rows[0]["tasks"])
    fr = frontier_runs(rows)
    cols = [("exact_match", "exact match (sharp)"), ("logprob", "log-prob of the answer (smooth)"),
            ("edit_distance", "token edit distance (smooth)")]
    fig, axes = plt.subplots(len(tasks), 3, figsize=(12, 3.1 * len(tasks)), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for i, task in enumerate(tasks):
        groups = list(fr[0]["tasks"][task]["groups"])
        for j, (metric, title) in enumerate(cols):
            if task == "icl" and metric == "edit_distance":
                metric, title = "brier", "Brier score over the labels (smooth)"
            ax = axes[i][j]
            ax.plot([r["compute_total"] for r in rows], [r["tasks"][task]["overall"][metric] for r in rows], "o",
                    color="0.75", ms=4, label="every run")
            ax.plot([r["compute_total"] for r in fr], [r["tasks"][task]["overall"][metric] for r in fr], "k-o", lw=2,
                    ms=4, label="frontier, all items")
            if len(groups) <= 6:
                for g_i, g in enumerate(groups):
                    ax.plot([r["compute_total"] for r in fr], [r["tasks"][task]["groups"][g][metric] for r in fr], "-",
                            lw=1, color=cmap(g_i / max(1, len(groups) - 1) * 0.9),
                            label=(f"{g} digits" if task == "arithmetic" else f"k={g}" if task == "icl" else g))
            _log_x(ax)
            ax.grid(alpha=0.3, which="both")
            if i == 0 or task == "icl":
                ax.set_title(title, fontsize=9)
            if j == 0:
                ax.set_ylabel(task)
            if i == len(tasks) - 1:
                ax.set_xlabel("compute (FLOPs, 6ND)")
            if j == 2 or (j == 0 and i == 0):
                ax.legend(fontsize=6)
    fig.suptitle("The same models' answers under a sharp metric (left) and smooth ones (right)")
    fig.tight_layout()
    _save(fig, path)


# ------------------------------------------------------------------ report.md
def write_report(sweep_dir: Path) -> None:
    lines = ["# Scaling sweep", ""]
    results = load_results(sweep_dir)
    lines += ["| run | depth | N total | N non-emb. | tokens | tokens/N | C = 6ND | val loss | minutes |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['name']} | {r['depth']} | {r['n_total']:,} | {r['n_nonembedding']:,} | {r['tokens']:,} | "
                     f"{r['tokens'] / r['n_total']:.1f} | {r['compute_total']:.3g} | {r['val_loss']:.4f} | "
                     f"{r['seconds'] / 60:.1f} |")
    if (sweep_dir / "fit.json").exists():
        doc = read_json(sweep_dir / "fit.json")
        lines += ["", "## Fits", "", "```", summary(doc), "```", "",
                  "![IsoFLOP](scaling-isoflop.png)", "", "![frontier](scaling-frontier.png)", "",
                  "![held out](scaling-holdout.png)"]
    if (sweep_dir / "emergence.json").exists():
        lines += ["", "## Emergence", "", "```", emergence_summary(read_json(sweep_dir / "emergence.json")), "```", "",
                  "![emergence](scaling-emergence.png)"]
    write_text(sweep_dir / "report.md", "\n".join(lines) + "\n")


def sizing_table(fit: dict, budgets: list[float], serve_multiple: float) -> list[dict]:
    """Compute-optimal and inference-aware sizes at several budgets (for the benchmark's table),
    the model serving serve_multiple times the compute-optimal model's training tokens."""
    law = _law(fit)
    rows = []
    for c in budgets:
        opt = compute_optimal(law, c)
        inf = inference_aware(law, c, serve_multiple * opt["d"])
        rows.append({"compute": c, **{f"opt_{k}": v for k, v in opt.items() if k != "compute"},
                     **{f"inf_{k}": v for k, v in inf.items()}})
    return rows
