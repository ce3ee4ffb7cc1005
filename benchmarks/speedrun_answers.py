"""Sentence answers: how SFT's answers decide what the chat model can say (issue 19), section `speedrun-answers`.

The question: the speedrun's base model has stored the held-out people's facts (asked in a
biography's own words, "NAME was born in the year", it completes nearly all of them), yet
the chat model answers only a quarter of the questions about them. Is the knowledge missing,
or the way SFT asks for it? SFT taught a bare value right after the question ("When was NAME
born?" -> "1959"), a position where pretraining never put a year; a sentence in the
biographies' words ("As far as I know, NAME was born in 1959.") makes the model restate the
person and the relation first, so the value comes where pretraining's lookup puts it.

Each arm fine-tunes the base model of one finished `acorn speedrun` (--run: its seed, world
and SFT settings) for the same SFT steps (the run's own), on the run's world regenerated with
`--fact-answers value|sentence` (only sft.jsonl and the preference pairs differ), with and
without replay (--sft-replay 250), one with the calculator called at every size (--tool-sft), and
one arm with sentences but no lead-in ("NAME was born
in 1959.": at the start of a reply a name splits into other tokens than in the question).
Every arm is scored on the world's tasks as the report card scores the SFT model (the fact
questions' value read out of a sentence about the question's person and attribute). The
probe row is the base model's greedy completion of a biography's words for each fact. A
directory under --work that already holds an arm's card is read, not rerun.

    python benchmarks/speedrun_answers.py --run runs/speedrun --work runs/answers      # ~4 min an arm
    python benchmarks/speedrun_answers.py --run runs/speedrun --work runs/answers --report-only
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from common import command_line, log, machine_description, markdown_table, publish, today  # noqa: E402
from speedrun_replay import arm, arm_options, arm_setting  # noqa: E402

# (arm, fact answers, replayed biographies, lead-in, calculator calls at every size: --tool-sft)
ARMS = [("value-0", "value", 0, True, False), ("value-250", "value", 250, True, False),
        ("sentence-0", "sentence", 0, True, False), ("sentence-250", "sentence", 250, True, False),
        ("sentence-250-nolead", "sentence", 250, False, False), ("sentence-250-toolsft", "sentence", 250, True, True)]
# The base model's probe: a biography's words up to the value (greedy; right when the value follows).
PROBE = {"birth_year": "{name} was born in the year", "birth_city": "{name} is a native of",
         "profession": "{name} works as", "employer": "{name} works for", "mentor": "{name} was mentored by",
         "spouse": "{name} is married to"}


@contextmanager
def lead_in(on: bool):
    """The world's answer sentences without their lead-in while off (generation and scoring)."""
    from acorn.data import world as W

    saved = W.T.FACT_ANSWER_LEAD
    W.T.FACT_ANSWER_LEAD = saved if on else ""
    W._answer_pattern.cache_clear()
    try:
        yield
    finally:
        W.T.FACT_ANSWER_LEAD = saved
        W._answer_pattern.cache_clear()


def probe(run: Path, work: Path) -> dict:
    """The base model's completions of biography words, per split (cached in work/probe.json)."""
    from acorn import LLM, SamplingParams
    from acorn.data.world import fact_slot, read_world
    from acorn.fileio import read_json, read_jsonl

    path = work / "probe.json"
    if path.is_file():
        return read_json(path)
    slots = read_world(run / "world" / "world.json").slots
    rows = list(read_jsonl(run / "world" / "eval" / "fact_qa.jsonl"))
    llm = LLM(run / "pretrain" / "model")
    outs = llm.generate([PROBE[r["attribute"]].format(name=r["person"]) for r in rows],
                        SamplingParams(temperature=0.0, max_tokens=12))
    right = {"held_out": [], "in_sft": []}
    for r, o in zip(rows, outs):
        want = slots[r["person"]][fact_slot(r["attribute"])]
        text = o.outputs[0].text.strip()
        right["in_sft" if r["in_sft"] else "held_out"].append(
            text.startswith(str(want)) and not text[len(str(want)):][:1].isalnum())
    card = {k: sum(v) / len(v) for k, v in right.items()}
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(card))
    return card


def world_for(run: Path, work: Path, style: str, lead: bool, tool: bool) -> Path:
    """The run's world regenerated with fact answers in `style` (the same seed and size), and
    with `acorn data world --tool-sft`'s rows if tool."""
    from acorn.data.world import generate_world
    from acorn.fileio import read_json

    out = work / (f"world-{style}" + ("" if lead else "-nolead") + ("-tool" if tool else ""))
    if not (out / "manifest.json").is_file():
        m = read_json(run / "world" / "manifest.json")
        with lead_in(lead):
            generate_world(out, seed=m["seed"], size=m["size"], tokenizer=run / "tokenizer", quiet=True,
                           overwrite=True, fact_answers=style, tool_sft=tool)
        mine = read_json(out / "manifest.json")["files"]["pretrain.jsonl"]["sha256"]
        if mine != m["files"]["pretrain.jsonl"]["sha256"]:  # a run with other world options (--mixed-qa, ...)
            sys.exit(f"{out}: its pretraining text is not {run}'s (made with other world options); "
                     "these arms need a run of the default world")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arm_options(ap, "runs/answers")
    ap.add_argument("--arms", default=",".join(a[0] for a in ARMS), help="comma-separated arms, of: "
                    + ", ".join(a[0] for a in ARMS))
    args = ap.parse_args()
    run, work, steps, load = arm_setting(args)
    wanted = [a for a in ARMS if a[0] in args.arms.split(",")]
    unknown = set(args.arms.split(",")) - {a[0] for a in ARMS}
    if unknown:
        sys.exit(f"unknown arm {', '.join(sorted(unknown))}; choose from {', '.join(a[0] for a in ARMS)}")
    if not args.report_only or (work / "probe.json").is_file():
        log("probe: the base model completes biography words")
        base = probe(run, work)
    else:
        base = None
    cards = []
    for name, style, n, lead, tool in wanted:
        if args.report_only and not (work / name / "card.json").is_file():
            continue
        log(f"{name}: {steps} SFT steps")
        with lead_in(lead):
            cards.append((name, style, lead, tool,
                          arm(run, work, n, steps, steps, world_for(run, work, style, lead, tool), name)))
        log(f"   {json.dumps(cards[-1][-1])}")
    pct = lambda x: f"{100 * x:.1f}%" if x is not None else "-"  # noqa: E731
    rows = []
    if base:
        rows.append(["base model, biography words (probe)", "-", "-", pct(base["held_out"]), pct(base["in_sft"]),
                     "-", "-", "-", "-", "-", "-"])
    for name, style, lead, tool, c in cards:
        form = {"value": "value (\"1959\")", "sentence": "sentence" + ("" if lead else ", no lead-in")}[style] + (
            ", calculator at every size (--tool-sft)" if tool else "")
        rows.append([form, f"{c['n_bios']:,}", c["steps"], pct(c["held_out"]), pct(c["in_sft"]), pct(c["idk"]),
                     pct(c.get("made_up")), pct(c["arith"]), pct(c["mc"]), pct(c.get("mc_sentence")),
                     f"{c['minutes']:.1f}"])
    header = ["fact answers in SFT", "replayed biographies", "SFT steps", "held out (only in biographies)",
              "SFT people", "\"I don't know\"", "made-up answers", "arithmetic", "multiple choice",
              "multiple choice, choices as answer sentences", "minutes"]
    body = f"""## Sentence answers: SFT asks for the facts in pretraining's words (issue 19)

Command: `{command_line()}` ({today()}). Machine: {machine_description()}. {load}

Every arm fine-tunes the base model of the speedrun in `{run}` (its world, seed and SFT settings)
for the {steps} SFT steps that run's budget gave, on the run's world regenerated with
`acorn data world --fact-answers value|sentence` (the same questions; only the answers of sft.jsonl
and the preference pairs differ), with N of the world's biographies replayed (`--sft-replay N`).
"value" answers a fact question with the value alone ("1959"), "sentence" with
"As far as I know, NAME was born in 1959." (the relation in the biographies' words; the eval reads
the value out of a sentence about the question's person and attribute), "no lead-in" with
"NAME was born in 1959.", and "--tool-sft" adds SFT rows that call the calculator at every size (1 to 6
digits, never an eval problem; the default rows call it only for large problems). Scored on the world's tasks as the report card scores the SFT model:
"held out" are the facts of people SFT never asks about, which only the biographies state (535
questions: a standard error of about 2 points), "SFT people" the facts SFT asks. The probe row is
the base model's greedy completion of a biography's words ("NAME was born in the year", "NAME is a
native of", "NAME works as", ...): the share of facts it has stored in a form pretraining can reach.
Multiple choice scores each choice's log-likelihood as the whole reply: the bare value
(world_multiple_choice) or the answer sentence stating it (world_multiple_choice_sentence).

{markdown_table(header, rows)}
"""
    publish("speedrun-answers", body, args.note, args.no_write)


if __name__ == "__main__":
    main()
