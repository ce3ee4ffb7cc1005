"""Mixed training in the chat template (issue 19), section `speedrun-mixed-chat`.

The question: does putting question-answer pairs of the SFT people into pretraining in the
chat template itself (`acorn speedrun --mixed-qa 4 --mixed-qa-format chat`) let the chat
model answer the held-out people's facts, which only biographies state? The plain-text
version lifted the base model's answers but SFT erased the gain (section speedrun-ablations).

Arms, each an `acorn speedrun` of the default cpu preset (seed 0):
  control      the default world
  chat         the same world plus 4 chat-template QA pairs per fact of the SFT people
each run twice: with fixed step counts (--pretrain-steps / --sft-steps: by default the 707
and 540 steps an idle 2-core machine fits in the 9 and 3.5-minute budgets), and with the
default time budgets on this machine as it is (equal wall time). Then an SFT sweep from
each fixed-step base model: SFT for --sweep steps only (the speedrun's SFT settings
otherwise), to see what SFT's length does to the held-out facts.

Run directories under --work: control-fixed, chat-fixed, control-budget, chat-budget,
{control,chat}-sft{N}. A directory that already holds a finished run is read, not rerun.

    python benchmarks/speedrun_mixed_chat.py --work runs/mixed-chat           # ~1 h on 2 cores
    python benchmarks/speedrun_mixed_chat.py --work runs/mixed-chat --report-only
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from common import command_line, log, machine_description, markdown_table, today, write_section  # noqa: E402

from acorn.fileio import read_json  # noqa: E402

HEADER = ["world", "steps (pretrain / SFT)", "base: held out", "base: SFT people", "held out", "SFT people",
          "\"I don't know\"", "arithmetic", "multiple choice"]
# What the runs of 2026-12-04 showed (written after them; a rerun that disagrees should change it).
READING = """Reading. Chat-format mixed training does what the plain version did for the base model, now in
the format the report card asks in: the base model answers 20.2% of the held-out people's facts and
35.8% of the SFT people's (control base: 0.0% and 0.0%, it has never seen the chat template). SFT then
takes the held-out gain away again as it learns the SFT people: after the speedrun's full SFT (540
steps, about 68 passes over the 64,600 SFT tokens) held-out facts are 10.1% against the control's
9.0%, and under the machine's budgets 10.5% against 6.2% (both arms slowed to ~16,000 tokens/s, 475-501
pretraining steps). Shorter SFT keeps the transfer but not the rest: 135 steps give held-out 19.1%
(control 9.9%) with SFT people 69.4% (control 19.8%), and arithmetic, which needs the full SFT to learn
the calculator call, is 0-1% below 540 steps. So the lever is real (about twice the control's held-out
facts at equal SFT, and SFT reaches the format in a quarter of the steps) but no SFT length gives both
issue 19's >= 50% held-out and >= 90% SFT-asked facts: the best held-out figure measured is 20.2%
(the base model). Not the default. Also seen: arithmetic falls from ~41% to 0.3% when the machine is
slower and the budgets fit ~480 instead of ~700 pretraining steps (control rows): the budgeted speedrun's
arithmetic depends on the machine's speed more than on anything in the recipe."""

ARMS = {"control": [], "chat": ["--mixed-qa", "4", "--mixed-qa-format", "chat"]}


def fixed_steps(counts: list[int] | None):
    """Patch the speedrun's budgeted step count (pretraining, then SFT) to fixed numbers;
    None puts the budgeted one back."""
    import acorn.speedrun as S

    S.__dict__.setdefault("_budgeted_steps_for", S._steps_for)
    if counts is None:
        S._steps_for = S._budgeted_steps_for
        return
    calls = []

    def steps_for(cfg, minutes, init_from=None, share=None):
        n = counts[min(len(calls), len(counts) - 1)]
        calls.append(n)
        print(f"   fixed: {n} steps (instead of a {minutes:g}-minute budget)", flush=True)
        return n

    S._steps_for = steps_for


def speedrun(out: Path, extra: list[str], steps: list[int] | None) -> None:
    from acorn.cli import main

    if (out / "eval" / "sft" / "results.json").is_file():
        log(f"{out}: finished, reading it")
        return
    fixed_steps(steps)
    log(f"acorn speedrun --out {out} {' '.join(extra)}" + (f" (fixed steps {steps})" if steps else ""))
    if main(["speedrun", "--out", str(out), *extra]) != 0:
        sys.exit(f"the speedrun in {out} failed")


def sft_only(base_run: Path, out: Path, steps: int) -> None:
    """SFT from base_run's pretrained model for `steps` steps, then the eval stage."""
    import acorn.speedrun as S

    if (out / "eval" / "sft" / "results.json").is_file():
        log(f"{out}: finished, reading it")
        return
    out.mkdir(parents=True, exist_ok=True)
    for name in ("world", "pretrain", "tokenizer", "data"):
        if not (out / name).exists():
            os.symlink((base_run / name).resolve(), out / name)
    fixed_steps([steps])
    p = S.PRESETS["cpu"]
    S.stage_sft(p, out / "world", out / "pretrain" / "model", out / "sft", 0)
    S.stage_eval(S.Run(out, "cpu", p, 0))


def figures(run: Path) -> dict:
    def get(column, task, metric):
        f = run / "eval" / column / "results.json"
        return read_json(f)["results"][task][metric] if f.is_file() else None

    meta = read_json(run / "speedrun.json") if (run / "speedrun.json").is_file() else {}
    stages = {s["name"]: s.get("summary") or {} for s in meta.get("stages", [])}
    steps = lambda s: stages.get(s, {}).get("steps")  # noqa: E731
    return {
        "pretrain steps": steps("pretrain"), "sft steps": steps("sft"),
        "base: held out": get("base", "world_fact_qa:pretrain_only", "answer_match"),
        "base: SFT people": get("base", "world_fact_qa:in_sft", "answer_match"),
        "held out": get("sft", "world_fact_qa:pretrain_only", "answer_match"),
        "SFT people": get("sft", "world_fact_qa:in_sft", "answer_match"),
        "I don't know": get("sft", "world_unknown_qa", "idk_rate"),
        "arithmetic": get("sft", "world_arithmetic", "answer_match"),
        "multiple choice": get("sft", "world_multiple_choice", "acc"),
    }


def report(work: Path, args) -> str:
    pct = lambda x: "—" if x is None else f"{x:.1%}"  # noqa: E731
    rows = []
    names = [("control-fixed", "control", f"{args.pretrain_steps} / {args.sft_steps} (fixed)"),
             ("chat-fixed", "chat", f"{args.pretrain_steps} / {args.sft_steps} (fixed)"),
             ("control-budget", "control", "budgets"), ("chat-budget", "chat", "budgets")]
    names += [(f"{arm}-sft{n}", arm, f"{args.pretrain_steps} / {n} (fixed)") for n in args.sweep
              for arm in ARMS]
    for d, arm, how in names:
        if not (work / d / "eval").is_dir():
            continue
        f = figures(work / d)
        if how == "budgets":
            how = f"{f['pretrain steps']} / {f['sft steps']} (9 + 3.5 min)"
        elif f["sft steps"] is None:  # an SFT-only run: its pretraining is the fixed arm's
            how = f"{args.pretrain_steps} / {how.split(' / ')[1]}"
        rows.append([arm, how, pct(f["base: held out"]), pct(f["base: SFT people"]), pct(f["held out"]),
                     pct(f["SFT people"]), pct(f["I don't know"]), pct(f["arithmetic"]), pct(f["multiple choice"])])
    return f"""## Mixed training in the chat template (issue 19)

Command: `{command_line()}` ({today()}). Machine: {machine_description()}. {args.note}

`acorn speedrun` (cpu preset, seed 0) on the default world (control) and on the same world
with 4 question-answer pairs per fact of the SFT people among the pretraining documents,
written as conversations in the chat template (`--mixed-qa 4 --mixed-qa-format chat`: the
special tokens as their ids, the answers as SFT's fact rows give them). The held-out people
get no pairs, so "held out" (facts only biographies state; 535 questions, standard error
about 1.3 points) measures transfer. Base-model columns ask the base model the report card's
own chat-template questions. Steps are pretraining / SFT optimizer steps; the fixed rows use
the step counts an idle 2-core machine fits in the budgets, the budget rows this machine's
budgets as it was; the SFT-only rows fine-tune the fixed arm's base model for fewer steps.

{markdown_table(HEADER, rows)}

{READING}"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("runs/mixed-chat"), help="run directories go here")
    ap.add_argument("--pretrain-steps", type=int, default=707, help="pretraining steps of the fixed-step runs")
    ap.add_argument("--sft-steps", type=int, default=540, help="SFT steps of the fixed-step runs")
    ap.add_argument("--sweep", nargs="*", type=int, default=[40, 135], help="SFT-only step counts from the fixed bases")
    ap.add_argument("--no-budget", action="store_true", help="skip the runs with the default time budgets")
    ap.add_argument("--report-only", action="store_true", help="write the section from the runs in --work")
    ap.add_argument("--note", default="", help="a sentence for the section (the machine's load, ...)")
    ap.add_argument("--no-write", action="store_true", help="print the section instead of writing docs/BENCHMARKS.md")
    args = ap.parse_args()
    if not args.report_only:
        for arm, extra in ARMS.items():
            speedrun(args.work / f"{arm}-fixed", extra, [args.pretrain_steps, args.sft_steps])
            for n in args.sweep:
                sft_only(args.work / f"{arm}-fixed", args.work / f"{arm}-sft{n}", n)
            if not args.no_budget:
                speedrun(args.work / f"{arm}-budget", extra, None)
    body = report(args.work, args)
    if args.no_write:
        print(body)
    else:
        write_section("speedrun-mixed-chat", body)
        print(body)


if __name__ == "__main__":
    main()
