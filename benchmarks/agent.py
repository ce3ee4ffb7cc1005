"""Agent benchmark: do tools fix the arithmetic gap? (section agent-arithmetic)

On the world's arithmetic eval set (WORLD/eval/arithmetic.jsonl: questions
of 1 to 6 digits, "What is 4821 + 377?"), for each chat model given:

  no tool        the model's own greedy answer (the chat template, no tools)
  calculator     the ReAct loop (acorn.agent.loop.Agent) with the calculator,
  (constrained)  calls under the "auto" grammar: text, or a well-formed call
                 with schema-valid arguments (acorn.chat.tools)
  calculator     the same loop without the grammar: calls as the model
  (free)         writes them

Scored by exact match after normalising (acorn.eval.world.normalize), by the
number of digits. Beside accuracy, for the loop: how often the tool was
called, the share of questions with a malformed call (a call marker whose
JSON could not be read, or a call cut off by the turn's token limit), calls
with invalid arguments (bad JSON or failing the schema), and calls whose
expression is not the question's own (`a op b` with the spaces removed:
the small model's "6*6 for 6 + 6").

    python benchmarks/agent.py --world runs/world --model sft=runs/speedrun/sft/model \\
        --model tool-sft=runs/tool-sft/model
    python benchmarks/agent.py --world runs/world --model x=DIR --per-cell 2 --no-write   # a smoke test
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from common import command_line, log, machine_description, markdown_table, today, write_section  # noqa: E402

DIGITS = range(1, 7)


def _pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.1f}%"


def load_rows(world: Path, per_cell: int | None) -> list[dict]:
    rows = [json.loads(line) for line in (world / "eval" / "arithmetic.jsonl").read_text().splitlines()]
    if per_cell:
        seen: dict = defaultdict(int)
        keep = []
        for r in rows:
            if seen[(r["digits"], r["op"])] < per_cell:
                seen[(r["digits"], r["op"])] += 1
                keep.append(r)
        rows = keep
    return rows


def no_tool(engine, rows: list[dict]) -> list[dict]:
    from acorn.infer import SamplingParams

    prompts = [engine.chat_prompt([{"role": "user", "content": r["question"]}]) for r in rows]
    outs = engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=16))
    return [{"answer": c.text} for c in outs]


def with_calculator(engine, rows: list[dict], constrained: bool) -> list[dict]:
    from acorn.agent.builtins import make_tools
    from acorn.agent.loop import Agent

    agent = Agent(engine, make_tools("calculator"), constrained=constrained, max_steps=3, max_new_tokens=48,
                  token_budget=160, max_retries=1)
    out = []
    for i, r in enumerate(rows):
        result = agent.run(r["question"])
        own = f"{r['a']}{r['op']}{r['b']}"
        exprs = []
        for s in result.steps:
            for res in s.results:
                if res.name == "calculator" and isinstance(res.arguments, dict):
                    exprs.append(re.sub(r"\s+", "", str(res.arguments.get("expression", ""))))
        out.append({"answer": result.answer or "", "called": result.tool_calls > 0,
                    "malformed": result.malformed_calls > 0, "invalid": result.invalid_calls > 0,
                    "calls": len(exprs), "wrong_expression": sum(e != own for e in exprs), "own_call": own in exprs,
                    "steps": len(result.steps), "stopped": result.stopped})
        if (i + 1) % 50 == 0:
            log(f"    {i + 1}/{len(rows)}")
    return out


def score(rows: list[dict], outs: list[dict]) -> dict:
    from acorn.eval.world import normalize

    by: dict = defaultdict(list)
    for r, o in zip(rows, outs):
        ok = normalize(o["answer"]) == normalize(r["answer"])
        by[r["digits"]].append(ok)
        by["all"].append(ok)
    s = {k: sum(v) / len(v) for k, v in by.items()}
    if outs and "called" in outs[0]:
        n = len(outs)
        calls = sum(o["calls"] for o in outs)
        s |= {"called": sum(o["called"] for o in outs) / n, "malformed": sum(o["malformed"] for o in outs) / n,
              "invalid": sum(o["invalid"] for o in outs) / n,
              "wrong_expression": sum(o["wrong_expression"] for o in outs) / calls if calls else float("nan"),
              "steps": sum(o["steps"] for o in outs) / n}
        # Of the questions where the model called the calculator with the question's own expression
        # (so the tool's output was the answer): how often its final answer repeated that output.
        own = [normalize(o["answer"]) == normalize(r["answer"]) for r, o in zip(rows, outs) if o["own_call"]]
        s["copied"] = sum(own) / len(own) if own else float("nan")
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", required=True, type=Path, help="the world directory (eval/arithmetic.jsonl)")
    ap.add_argument("--model", action="append", required=True, metavar="NAME=DIR", help="a chat model (repeatable)")
    ap.add_argument("--per-cell", type=int, default=None, help="questions per (digits, operator) (default: all)")
    ap.add_argument("--note", default="", help="a sentence added to the section (e.g. how the models were made)")
    ap.add_argument("--no-write", action="store_true", help="print, do not write docs/BENCHMARKS.md")
    args = ap.parse_args()

    import torch

    from acorn.infer import Engine

    torch.set_flush_denormal(True)
    rows = load_rows(args.world, args.per_cell)
    t_start = time.perf_counter()
    table, diag = [], []
    for spec in args.model:
        name, _, path = spec.partition("=")
        engine = Engine.from_pretrained(path, device="cpu")
        for mode in ("no tool", "calculator, constrained", "calculator, free"):
            log(f"{name}: {mode} ({len(rows)} questions)")
            t0 = time.perf_counter()
            outs = no_tool(engine, rows) if mode == "no tool" else with_calculator(engine, rows, "constrained" in mode)
            per_q = (time.perf_counter() - t0) / len(rows)
            s = score(rows, outs)
            table.append([name, mode, *[_pct(s.get(d, float("nan"))) for d in DIGITS], _pct(s["all"])])
            if "called" in s:
                diag.append([name, mode, _pct(s["called"]), _pct(s["malformed"]), _pct(s["invalid"]),
                             _pct(s["wrong_expression"]), _pct(s["copied"]), f"{s['steps']:.2f}", f"{per_q:.2f}"])
            log(f"  all {_pct(s['all'])}" + (f", malformed {_pct(s['malformed'])}" if "malformed" in s else ""))
    n_cell = len(rows) // (len(DIGITS) * 3)
    body = [f"`{command_line()}` on {machine_description(('llguidance',))}, {today()}. Measured with other jobs "
            "running (times per question are not comparable to a quiet machine's; accuracies are).", "",
            f"{len(rows)} questions of `{args.world}/eval/arithmetic.jsonl` ({n_cell} per digit count and operator, "
            "+ - *, both operands of that many digits), exact match. Greedy decoding. The loop: at most 3 turns, "
            "48 tokens a turn, 160 in all, one retry after an invalid turn; the calculator as the world's SFT "
            "conversations describe it." + (f" {args.note}" if args.note else ""), "",
            markdown_table(["model", "mode", *[f"{d} digit{'s' * (d > 1)}" for d in DIGITS], "all"], table,
                           "ll" + "r" * 7), "",
            "The loop's calls: share of questions where the model called the tool, had a malformed call (unreadable "
            "or cut off) or an invalid one (bad JSON, failing the schema); share of calls whose expression is not "
            "the question's own `a op b`; \"answer = result\": of the questions where a call was the question's own, "
            "the share whose final answer is the tool's result; turns per question; seconds per question.", "",
            markdown_table(["model", "mode", "called", "malformed", "invalid", "wrong expression", "answer = result",
                            "turns", "s/q"], diag, "ll" + "r" * 7), "",
            f"Whole benchmark: {time.perf_counter() - t_start:.0f}s."]
    text = "\n".join(["## Agents: arithmetic with and without the calculator", "", *body])
    print(text)
    if not args.no_write:
        write_section("agent-arithmetic", text)


if __name__ == "__main__":
    main()
