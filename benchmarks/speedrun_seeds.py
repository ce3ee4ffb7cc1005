"""The default speedrun over several seeds: its report card as mean and spread, section `speedrun-seeds`.

One run is one draw: the world, the weights and the data order all follow the seed, and
some figures (arithmetic, in-context learning) move by tens of points between draws. This
runs `acorn speedrun` (the default cpu preset, as the README's first command does) once per
seed, one after another so each has the machine to itself, or reads runs already made, and
writes the report card's main figures with their mean, min and max.

    python benchmarks/speedrun_seeds.py --out runs/seeds --seeds 0 1 2     # ~12 min a seed on 2 cores
    python benchmarks/speedrun_seeds.py --out runs/seeds --seeds 0 1 2 --report-only
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from common import command_line, load_note, log, machine_description, markdown_table, today, write_section  # noqa: E402

from acorn.fileio import read_json  # noqa: E402

# (label, model column, task, metric): the figures the README and issue 19 quote.
FIGURES = [
    ("fact QA, all known people", "sft", "world_fact_qa", "answer_match"),
    ("fact QA, facts SFT asked", "sft", "world_fact_qa:in_sft", "answer_match"),
    ("fact QA, facts only in pretraining", "sft", "world_fact_qa:pretrain_only", "answer_match"),
    ("\"I don't know\" for unknown people", "sft", "world_unknown_qa", "idk_rate"),
    ("arithmetic (with the calculator)", "sft", "world_arithmetic", "answer_match"),
    ("multiple choice", "sft", "world_multiple_choice", "acc"),
    ("multiple choice, choices as answer sentences", "sft", "world_multiple_choice_sentence", "acc"),
    ("in-context learning, base model", "base", "world_icl", "first_word_match"),
    ("in-context learning, chat model", "sft", "world_icl", "first_word_match"),
]


def run_seed(out: Path, seed: int) -> None:
    from acorn.speedrun import speedrun

    if (out / "speedrun.json").exists():
        log(f"seed {seed}: {out} is finished, reused")
        return
    log(f"seed {seed}: acorn speedrun --out {out} --seed {seed}")
    speedrun(out, seed=seed)


def rescore(run: Path) -> None:
    """The finished run's eval stage again (`acorn speedrun --out RUN --stages eval`), with the world
    group as this code defines it; speedrun.json and report.md follow."""
    from acorn.speedrun import run_stages

    log(f"{run}: the eval stage again")
    run_stages(run, ["eval"])


def figures(run: Path) -> dict:
    cards = {c: read_json(run / "eval" / c / "results.json")["results"] for c in ("base", "sft")}
    summary = read_json(run / "speedrun.json")
    got = {label: cards[col].get(task, {}).get(metric) for label, col, task, metric in FIGURES}
    stages = {s["name"]: s for s in summary["stages"]}
    got["minutes, whole run"] = summary["seconds"] / 60
    got["pretrain steps"] = stages["pretrain"]["summary"].get("steps")
    got["pretrain tokens/s"] = stages["pretrain"]["summary"].get("tok_s")
    got["pretrain MFU"] = stages["pretrain"]["summary"].get("mfu")
    got["SFT steps"] = stages["sft"]["summary"].get("steps")
    return got


def section(runs: dict[int, Path], note: str, load: str) -> str:
    per = {seed: figures(run) for seed, run in runs.items()}
    seeds = sorted(per)

    def row(label, fmt):
        vals = [per[s][label] for s in seeds]
        if any(v is None for v in vals):
            return [label, *["-" for _ in seeds], "-", "-"]
        return [label, *[fmt(v) for v in vals], fmt(statistics.mean(vals)), f"{fmt(min(vals))} - {fmt(max(vals))}"]

    def pct(v):
        return f"{100 * v:.1f}%"

    rows = [row(label, pct) for label, *_ in FIGURES]
    rows += [row("minutes, whole run", lambda v: f"{v:.1f}"), row("pretrain steps", lambda v: f"{v:.0f}"),
             row("pretrain tokens/s", lambda v: f"{v:,.0f}"), row("pretrain MFU", lambda v: f"{100 * v:.2f}%"),
             row("SFT steps", lambda v: f"{v:.0f}")]
    chance = read_json(next(iter(runs.values())) / "eval" / "sft" / "results.json")["results"]["world_icl"].get("chance")
    lines = ["## The default speedrun over seeds (issue 19)", "",
             f"Command: `{command_line()}` ({today()}). Machine: {machine_description()}; {load}.", "",
             f"`acorn speedrun --seed S` with the default cpu preset, one seed after another; the chat model's "
             f"report card (the eval harness's world tasks) for seeds {', '.join(map(str, seeds))}, their mean and "
             "range. Each seed draws its own world, weights and data order.", "",
             markdown_table(["figure", *[f"seed {s}" for s in seeds], "mean", "range"], rows), ""]
    if chance is not None:
        lines += [f"In-context learning is scored by the first word of the answer; choosing a label at random "
                  f"scores {100 * chance:.1f}%.", ""]
    if note:
        lines += [note, ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="a directory; seed S runs in OUT/seedS")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--report-only", action="store_true", help="read the finished runs, train nothing")
    ap.add_argument("--rescore", action="store_true", help="with --report-only: run each finished run's eval stage "
                    "again (the world group as this code defines it; greedy, so the other figures stay the same)")
    ap.add_argument("--note", default="", help="a paragraph added to the section")
    ap.add_argument("--load", help="what else the machine was doing during the runs (default: the load average "
                    "when this script started; give it with --report-only, which runs nothing)")
    ap.add_argument("--no-write", action="store_true", help="print the section instead of writing it")
    args = ap.parse_args()
    runs = {s: Path(args.out) / f"seed{s}" for s in args.seeds}
    t0 = time.perf_counter()
    if not args.report_only:
        for s, run in runs.items():
            run_seed(run, s)
    elif args.rescore:
        for run in runs.values():
            rescore(run)
    body = section(runs, args.note, args.load or load_note())
    log(f"done in {(time.perf_counter() - t0) / 60:.1f} min")
    if args.no_write:
        print(body)
    else:
        write_section("speedrun-seeds", body)
        log("wrote section speedrun-seeds of docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
