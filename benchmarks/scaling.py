"""Scaling laws and emergence from a real sweep (issue 15), section `scaling`.

Runs `acorn scaling sweep` (a finished sweep directory is reused: finished runs
are skipped), then `acorn scaling fit` and `acorn scaling emergence` over it,
and writes what they measured: every run, the Approach 2 and 3 fits for total
and non-embedding parameter counts with bootstrap intervals, the held-out
budget's predicted against measured losses (goal: within 2%), compute-optimal
and inference-aware sizes, and the emergence table; the plots are copied to
docs/img/scaling-*.png.

    python benchmarks/scaling.py --out runs/scaling                       # the cpu preset, world made in OUT
    python benchmarks/scaling.py --out runs/scaling --data RUN/data       # a speedrun's world and tokenizer
    python benchmarks/scaling.py --out runs/scaling --no-write            # print the section instead
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from common import REPO, command_line, log, machine_description, markdown_table, today, write_section  # noqa: E402

from acorn.fileio import read_json, write_json  # noqa: E402


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:+.1f}%"


def _ci(law: dict, k: str, fmt: str = ".3f") -> str:
    v = law[k] if k != "a" else law["a"]
    iv = law.get("intervals", {}).get(k)
    return f"{v:{fmt}} [{iv[0]:{fmt}}, {iv[1]:{fmt}}]" if iv else f"{v:{fmt}}"


# One section (and one set of plots) per preset: a gpu sweep does not replace the cpu one.
SECTION = {"cpu": "scaling", "gpu": "scaling-gpu", "tiny": "scaling-tiny"}


def _load_sentence(timing: dict) -> str:
    """What else the machine was doing: the 1-minute load average before and after the sweep."""
    if "load_before" not in timing:
        return timing.get("load_note", "") + " "
    lo, hi = timing["load_before"], timing.get("load_after", timing["load_before"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    busy = lo > 0.5
    return (f"Load average {lo:.2f} before the sweep and {hi:.2f} after it on {cores} cores: "
            + ("**measured with other jobs running**, so the times are upper bounds for an idle machine. " if busy
               else "the machine was otherwise idle. "))


def run(args) -> dict:
    from acorn.scaling.report import emergence_sweep, fit_sweep
    from acorn.scaling.sweep import sweep

    out = Path(args.out)
    load = os.getloadavg()[0]  # before this process adds its own
    t0 = time.perf_counter()
    ran = [] if args.skip_sweep else sweep(out, args.preset, data=args.data).ran
    sweep_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fit_text = fit_sweep(out, bootstrap=args.bootstrap)
    fit_s = time.perf_counter() - t0
    log(fit_text)
    t0 = time.perf_counter()
    em_text = emergence_sweep(out, limit=args.limit)
    em_s = time.perf_counter() - t0
    log(em_text)
    timing = {"ran": ran, "sweep_s": sweep_s, "fit_s": fit_s, "emergence_s": em_s, "load_before": load,
              "load_after": os.getloadavg()[0], "machine": machine_description(("scipy",))}
    write_json(out / "benchmark_timing.json", timing)
    return timing


def step_seconds(run_dir: Path) -> float:
    """The run's training time from its metrics (each step's tokens / its tokens per second): the same
    whether the run went in one process or was resumed (a resumed run's own wall time counts only its
    second part)."""
    import json

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return sum(r["tokens"] / r["step"] / r["tok_s"] for r in rows)


def section(args, timing: dict) -> str:
    from acorn.scaling.report import frontier_runs, sizing_table
    from acorn.scaling.sweep import load_results

    out = Path(args.out)
    plan = read_json(out / "sweep.json")
    results = load_results(out)
    fit = read_json(out / "fit.json")
    em = read_json(out / "emergence.json")
    for r in results:
        r["train_s"] = step_seconds(out / "runs" / r["name"])
    train_min = sum(r["train_s"] for r in results) / 60
    missing = [r["name"] for r in plan["runs"] if r["name"] not in {x["name"] for x in results}]
    held = fit["fits"]["total"]["held_out_budget"]
    lines = [
        "## Scaling laws and emergence (issue 15)" + ("" if args.preset == "cpu" else f", the {args.preset} preset"), "",
        f"Command: `{timing.get('command') or command_line().replace(' --report-only', '')}` ({timing.get('date') or today()}). "
        f"Machine: {timing.get('machine') or machine_description(('scipy',))}.", "",
        f"{_load_sentence(timing)}Data: `{plan['settings']['data']}` ({plan['settings']['data_tokens']:,} training "
        f"tokens, vocabulary {plan['settings']['vocab_size']:,}).", "",
        f"- sweep ({args.preset} preset): {len(results)} runs, {sum(r['compute_total'] for r in results):.2e} FLOPs of "
        f"6ND, {train_min:.1f} min of training steps (summed from the runs' metrics; this invocation trained "
        f"{len(timing['ran'])} of them in {timing['sweep_s'] / 60:.1f} min, the rest earlier into the same directory); "
        f"fit {timing['fit_s']:.0f} s ({fit['bootstrap']} bootstrap resamples, both parameter counts); emergence "
        f"{timing['emergence_s']:.0f} s; total {train_min + (timing['fit_s'] + timing['emergence_s']) / 60:.1f} min "
        + ("(goal: <= 30 min on 2 cores)." if args.preset == "cpu" else "."),
        f"- left out of the plan by the preset's window: {'; '.join(plan['left_out']) or 'none'}.",
        f"- planned but not finished when this was written: {', '.join(missing) or 'none'}"
        + (" (the fits use the finished runs only)." if missing else "."), "",
        "### Runs", "",
        markdown_table(["run", "depth", "width", "N total", "N non-emb.", "tokens", "tokens/N", "epochs", "lr",
                        "batch", "steps", "C = 6ND", "val loss", "min"],
                       [[r["name"], r["depth"], r["d_model"], f"{r['n_total']:,}", f"{r['n_nonembedding']:,}",
                         f"{r['tokens']:,}", f"{r['tokens'] / r['n_total']:.1f}", f"{r['epochs']:.2f}", f"{r['lr']:.2g}",
                         f"{r.get('batch_tokens', 2048):,}", r["steps"], f"{r['compute_total']:.2e}",
                         f"{r['val_loss']:.4f}", f"{r['train_s'] / 60:.1f}"]
                        for r in results]), "",
        "### Fits (the largest budget held out)", "",
    ]
    rows = []
    for key, f in fit["fits"].items():
        a2, a3 = f["approach2"], f["approach3"]
        tpp = ", ".join(f"{v:.1f}" for v in f["tokens_per_param_at"].values())
        rows.append([key.replace("_", "-"), f"{a2['a']:.3f}", f"{a2['b']:.3f}", tpp, _ci(a3, "E"), _ci(a3, "alpha"),
                     _ci(a3, "beta"), _ci(a3, "a"), f"{a3['A']:.3g}", f"{a3['B']:.3g}"])
    lines += [markdown_table(["N counted", "A2: N* ~ C^a", "A2: D* ~ C^b", "A2: tokens/param by budget",
                              "A3: E", "A3: alpha", "A3: beta", "A3: N_opt ~ C^(beta/(alpha+beta))", "A3: A", "A3: B"],
                             rows), "",
              f"Approach 3 intervals: 95% bootstrap percentiles over {fit['bootstrap']} resamples of the runs "
              "(Besiroglu et al. 2024); Huber delta 1e-3 on log residuals, L-BFGS-B from the 100 best of Hoffmann "
              "et al.'s 4,500 grid starts (ranked by the objective at the start). Approach 2's tokens per parameter "
              "are D*(C) / N*(C) from its two power laws at each budget of the sweep.", ""]
    lines += [f"### Held-out prediction: budget {held:.3g}", ""]
    hrows = []
    for key, f in fit["fits"].items():
        for r in f["holdout"]["runs"]:
            hrows.append([key.replace("_", "-"), r["name"], f"{r['measured']:.4f}", f"{r['predicted']:.4f}",
                          _pct(r["error"])])
    lines += [markdown_table(["N counted", "run", "measured", "Approach 3 predicted", "error"], hrows), ""]
    for key, f in fit["fits"].items():
        h = f["holdout"]
        o = h.get("optimum", {})
        extra = ""
        if "observed_n_opt" in o:
            extra = (f"; the held-out curve's own minimum is at N = {o['observed_n_opt']:.3g} (Approach 2 predicted "
                     f"{o['approach2_n_opt']:.3g}, Approach 3 {o['approach3_n_opt']:.3g})")
        if "approach2_loss_opt" in o and "observed_loss_opt" in o:
            extra += (f"; its minimum loss {o['observed_loss_opt']:.4f} against {o['approach2_loss_opt']:.4f} "
                      f"extrapolated from the other minima ({_pct(o['approach2_loss_opt'] / o['observed_loss_opt'] - 1)})")
        verdict = ", ".join(f"{what} {'met' if err <= 0.02 else 'NOT met'}" for what, err in (
            ("for every run", h["max_abs_error"]), ("on average", h["mean_abs_error"]),
            ("for the best run", abs(h["best_run_error"]))))
        lines.append(f"- {key.replace('_', '-')} N: mean absolute error {h['mean_abs_error']:.1%}, max "
                     f"{h['max_abs_error']:.1%}; the budget's best run {h['best_run']} {_pct(h['best_run_error'])}"
                     f"{extra}. Goal within 2%: **{verdict}**.")
    lines += ["", "### Compute-optimal and inference-aware sizes (total-N fit)", ""]
    budgets = [1e13, 1e15, 1e17]
    srows = []
    for s in sizing_table(fit["fits"]["total"], budgets, args.serve_multiple):
        srows.append([f"{s['compute']:.0e}", f"{s['opt_n']:.3g}", f"{s['opt_d']:.3g}", f"{s['opt_tokens_per_param']:.1f}",
                      f"{s['opt_loss']:.4f}", f"{s['inf_n']:.3g}", f"{s['inf_d']:.3g}", f"{s['inf_tokens_per_param']:.1f}",
                      f"{s['inf_saving']:.1%}"])
    e = fit["fits"]["total"]["approach3"]["E"]
    lines += [markdown_table(["C (FLOPs)", "N_opt", "D_opt", "D/N", "loss",
                              f"N serving {args.serve_multiple:g} x D_opt tokens", "its D", "its D/N",
                              "training + serving FLOPs saved"], srows), "",
              f"`acorn scaling predict {args.out} --compute C --inference-tokens T` prints a row. Beyond the "
              "sweep's budgets these are extrapolations of a law fitted on models of at most "
              f"{max(r['n_total'] for r in results) / 1e6:.1f}M parameters"
              + (f", and one without a floor: the fit puts E at its lower bound ({e:.1e}), i.e. these sizes and "
                 "budgets do not identify the entropy of the text, so the law promises any loss to a small enough "
                 "model trained long enough, and the inference-aware sizes come out extreme" if e < 0.01 else "")
              + ".", ""]
    fr = frontier_runs(em["runs"])
    lines += ["### Emergence: the same answers, a sharp metric and smooth ones", "",
              f"Every run's model on the world's items ({', '.join(f'{k} {v}' for k, v in em['items'].items())}), "
              "written as the pretraining documents write them; the frontier models (best validation loss at each "
              "budget):", ""]
    erows = []
    for r in fr:
        t = r["tasks"]
        erows.append([r["name"], f"{r['compute_total']:.2e}"]
                     + [f"{t[k]['overall']['exact_match']:.1%} / {t[k]['overall']['logprob']:.2f} / "
                        f"{t[k]['overall']['edit_distance']:.2f}" for k in ("arithmetic", "facts", "icl")]
                     + [f"{t['icl']['overall']['brier']:.3f}"])
    lines += [markdown_table(["model", "C", "arithmetic EM / log-prob / edit dist.", "facts EM / log-prob / edit dist.",
                              "icl EM / log-prob / edit dist.", "icl Brier"], erows), "",
              *(f"![{n}](img/{SECTION[args.preset]}-{n}.png)\n" for n in ("isoflop", "frontier", "holdout", "emergence"))]
    if args.note:
        lines += [args.note, ""]
    return "\n".join(lines)


def copy_plots(sweep_dir: Path, preset: str) -> None:
    """The sweep's plots to docs/img/<section>-*.png."""
    for name in ("isoflop", "frontier", "holdout", "emergence"):
        shutil.copyfile(sweep_dir / f"scaling-{name}.png", REPO / "docs" / "img" / f"{SECTION[preset]}-{name}.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the sweep directory (reused if it holds finished runs)")
    p.add_argument("--preset", default="cpu", choices=["cpu", "gpu", "tiny"])
    p.add_argument("--data", help="prepared token shards (default: the preset's world, made in OUT)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples of the Approach 3 fit")
    p.add_argument("--skip-sweep", action="store_true", help="train nothing: fit and evaluate the runs that finished")
    p.add_argument("--limit", type=int, default=120, help="emergence items per task, spread over each file (default: 120)")
    p.add_argument("--serve-multiple", type=float, default=10.0,
                   help="inference-aware sizes: the model serves this many times the compute-optimal training tokens")
    p.add_argument("--note", help="a paragraph added to the section (not part of the command line)")
    p.add_argument("--report-only", action="store_true", help="write the section from a previous run's files")
    p.add_argument("--no-write", action="store_true", help="print the section instead of writing it")
    args = p.parse_args()
    # --report-only: the section again from the files a previous run left (e.g. with another --note).
    timing = read_json(Path(args.out) / "benchmark_timing.json") if args.report_only else run(args)
    body = section(args, timing)
    if args.no_write:
        print(body)
        return
    copy_plots(Path(args.out), args.preset)
    write_section(SECTION[args.preset], body)
    log(f"wrote section {SECTION[args.preset]} of docs/BENCHMARKS.md and docs/img/{SECTION[args.preset]}-*.png")


if __name__ == "__main__":
    main()
