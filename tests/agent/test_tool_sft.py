"""`acorn data world --tool-sft`: rows that teach calling the calculator at every size."""

from __future__ import annotations

import json
import re

from acorn.agent.builtins import calculate
from acorn.data.world import OPS, SIZES


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tool_sft_rows_call_the_calculator_with_the_questions_own_problem(tmp_path, tiny_world):
    from acorn.cli import main

    assert main(["data", "world", "--out", str(tmp_path / "w"), "--size", "tiny", "--tool-sft"]) == 0
    out = tmp_path / "w"
    base, tooled = _rows(tiny_world / "sft.jsonl"), _rows(out / "sft.jsonl")
    added = len(tooled) - len(base)
    assert added == 3 * SIZES["tiny"].n_sft_tool
    evals = {(r["a"], r["op"], r["b"]) for r in _rows(out / "eval/arithmetic.jsonl")}
    digits, ops = set(), set()
    for row in (r for r in tooled if r["kind"] == "tool"):
        user = next(m for m in row["messages"] if m["role"] == "user")["content"]
        call = next(m for m in row["messages"] if m.get("tool_calls"))["tool_calls"][0]["function"]
        expression = json.loads(call["arguments"])["expression"]
        a, op, b = re.fullmatch(r"(\d+)([-+*])(\d+)", expression).groups()
        assert a in user and b in user  # the question's own numbers, written without spaces
        assert row["messages"][-1]["content"] == str(calculate(expression))
        assert (int(a), op, int(b)) not in evals
        digits.add(len(a)), ops.add(op)
    assert ops == set(OPS) and min(digits) <= 2  # small problems are called too, not only large ones
    # Everything but sft.jsonl is byte for byte the default world's.
    for name in ("pretrain.jsonl", "eval/arithmetic.jsonl", "knowledge_base.jsonl", "rl_arithmetic.jsonl"):
        assert (out / name).read_bytes() == (tiny_world / name).read_bytes(), name
    assert json.loads((out / "manifest.json").read_text())["tool_sft"] is True
    assert "tool_sft" not in json.loads((tiny_world / "manifest.json").read_text())
