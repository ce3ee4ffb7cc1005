"""Replay of pretraining biographies during SFT (issue 19), section `speedrun-replay`.

The question: the speedrun's chat model answers the facts SFT asked (~99%) but only 10-18% of
the facts that only biographies state (the held-out people), and mixed training lifted the base
model's answers without surviving SFT (sections speedrun-ablations, speedrun-mixed-chat). Does
SFT keep more of what pretraining taught when it keeps reading pretraining's biographies?
(Replay: the fine-tune's data is the world's conversations plus N biographies, drawn at random,
as text rows with the loss on every token: `acorn speedrun --sft-replay N`.)

Each arm fine-tunes the base model of one finished `acorn speedrun` (--run; its world, seed and
SFT settings) for the same number of SFT steps (--steps, default: the run's own), with N
biographies replayed; N = 0 is the control. Every arm is scored on the world's tasks, as the
report card scores the SFT model. A directory under --work that already holds an arm's card
is read, not rerun.

    python benchmarks/speedrun_replay.py --run runs/speedrun --work runs/replay       # ~4 min an arm
    python benchmarks/speedrun_replay.py --run runs/speedrun --work runs/replay --report-only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from common import command_line, load_note, log, machine_description, markdown_table, publish, today  # noqa: E402

HEADER = ["replayed biographies", "SFT steps", "held out (only in biographies)", "SFT people", "\"I don't know\"",
          "arithmetic", "calculator called", "multiple choice", "minutes"]


def arm(run: Path, work: Path, n: int, steps: int, default_steps: int, world: Path | None = None,
        name: str | None = None) -> dict:
    """Fine-tune the run's base model with n biographies replayed; its card (cached in work/r{n},
    or work/r{n}-s{steps} for an arm with other steps than the run's, or work/name). world: a
    world directory whose SFT data (and eval files) the arm uses instead of the run's."""
    from acorn import speedrun as sr
    from acorn.eval.harness import evaluate
    from acorn.fileio import read_json

    out = work / (name or (f"r{n}" if steps == default_steps else f"r{n}-s{steps}"))
    world = world or run / "world"
    if (out / "card.json").is_file():
        return read_json(out / "card.json")
    info = read_json(run / "speedrun.json")
    p = dataclasses.replace(sr.saved_preset(info), sft_replay=n)
    t0 = time.perf_counter()
    sr.stage_sft(p, world, run / "pretrain" / "model", out / "sft", info["seed"], steps=steps)
    r = evaluate(out / "sft" / "model", ["world"], data_dir=world, progress=False)["results"]
    card = {"held_out": r["world_fact_qa:pretrain_only"]["answer_match"],
            "in_sft": r["world_fact_qa:in_sft"]["answer_match"], "idk": r["world_unknown_qa"]["idk_rate"],
            "made_up": r["world_unknown_qa"]["hallucination_rate"],
            "arith": r["world_arithmetic"]["answer_match"], "tool": r["world_arithmetic"]["tool_used"],
            "mc": r["world_multiple_choice"]["acc"],
            "mc_sentence": r.get("world_multiple_choice_sentence", {}).get("acc"), "minutes": (time.perf_counter() - t0) / 60,
            "n_bios": n, "steps": steps}
    (out / "card.json").write_text(json.dumps(card))
    return card


def arm_options(ap: argparse.ArgumentParser, work: str) -> None:
    """The options of a benchmark whose arms fine-tune a finished speedrun's base model."""
    ap.add_argument("--run", required=True, help="a finished `acorn speedrun --out DIR` (its base model and world)")
    ap.add_argument("--work", default=work, help="where the arms go (a directory per arm)")
    ap.add_argument("--note", default="", help="a paragraph added at the end of the section (the reading)")
    ap.add_argument("--report-only", action="store_true", help="write the section from the arms' cached cards")
    ap.add_argument("--no-write", action="store_true", help="print the section, leave docs/BENCHMARKS.md alone")


def arm_setting(args) -> tuple[Path, Path, int, str]:
    """(run, work, the run's SFT steps, the load line) of arm_options' arguments."""
    from acorn.fileio import read_json

    run = Path(args.run)
    steps = next(s["summary"]["steps"] for s in read_json(run / "speedrun.json")["stages"] if s["name"] == "sft")
    # The arms train a fixed number of steps, so the machine's load changes only their minutes.
    load = ("Quality figures at fixed steps; minutes are each arm's SFT and scoring, one arm at a time."
            if args.report_only else load_note())
    return run, Path(args.work), steps, load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arm_options(ap, "runs/replay")
    ap.add_argument("--replay", default="0,250,750,1500,3000,12000,0@700,750@700",
                    help="comma-separated arms: N (biographies replayed, the run's SFT steps) or N@STEPS")
    args = ap.parse_args()
    run, work, steps, load = arm_setting(args)
    cards = []
    for item in (x for x in args.replay.split(",") if x):
        n, _, at = item.partition("@")
        n, at = int(n), int(at or steps)
        if args.report_only and not (work / (f"r{n}" if at == steps else f"r{n}-s{at}") / "card.json").is_file():
            continue
        log(f"replay {n}: {at} SFT steps")
        cards.append(arm(run, work, n, at, steps))
        log(f"   {json.dumps(cards[-1])}")
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    rows = [[f"{c['n_bios']:,}" + (" (control)" if not c["n_bios"] else ""), c["steps"], pct(c["held_out"]),
             pct(c["in_sft"]), pct(c["idk"]), pct(c["arith"]), pct(c["tool"]), pct(c["mc"]), f"{c['minutes']:.1f}"]
            for c in sorted(cards, key=lambda c: (c["steps"], c["n_bios"]))]
    body = f"""## Replay of pretraining biographies during SFT (issue 19)

Command: `{command_line()}` ({today()}). Machine: {machine_description()}. {load}

Every arm fine-tunes the base model of the speedrun in `{run}` (its world, seed and SFT settings:
rows of 512, lr 1e-3, compiled) for the {steps} SFT steps that run's budget gave (or the steps its row
says); the SFT data is the world's
conversations plus N of its pretraining biographies drawn at random, as text rows with the loss on
every token (`acorn speedrun --sft-replay N`). Scored on the world's tasks as the report card
scores the SFT model; "held out" are the facts of people SFT never asks about, which only the
biographies state (535 questions: a standard error of about 1.5-2 points), "SFT people" the facts
SFT asks.

{markdown_table(HEADER, rows)}
"""
    publish("speedrun-replay", body, args.note, args.no_write)


if __name__ == "__main__":
    main()
