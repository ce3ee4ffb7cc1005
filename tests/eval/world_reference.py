"""The test oracle for the world's tasks: the scoring loop acorn/eval/world.py
ran before the world's evaluation became tasks of the one harness (commit
c8416e2), kept here so tests/eval/test_world_tasks.py can show the harness
computes the same numbers on the same model. Not used by Acorn. Changed once
since: fact answers may be sentences ("As far as I know, X was born in 1959.",
the sentence about the question's person written here with fact_sentence and
compared whole) with room for 32 tokens, not 24.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from acorn.data.world import CALCULATOR_TOOL, IDK_ANSWER, calculate, fact_sentence
from acorn.errors import AcornError
from acorn.fileio import read_jsonl


def normalize(text: str) -> str:
    """Compare answers without case, surrounding space or a final full stop."""
    return " ".join(text.strip().lower().rstrip(".").split())


def _rows(world: Path, name: str, limit: int | None) -> list[dict]:
    path = world / "eval" / f"{name}.jsonl"
    if not path.exists():
        raise AcornError(f"{path}: missing; generate the world with `acorn data world --out {world}`")
    rows = list(read_jsonl(path))
    return rows[:limit] if limit else rows


def _generate(engine, prompts: list, *, max_new_tokens: int, batch_size: int = 64, **params) -> list:
    """Greedy completions in batches; None for a prompt too long for the model's
    context (a small model may not fit a few-shot prompt or a tool schema)."""
    from acorn.infer.sequence import Completion

    room = engine.model.config.max_seq_len - max_new_tokens
    fits = [i for i, p in enumerate(prompts) if len(p) <= room]
    out: list[Completion | None] = [None] * len(prompts)
    for start in range(0, len(fits), batch_size):
        idx = fits[start : start + batch_size]
        done = engine.generate([prompts[i] for i in idx], temperature=0.0, max_new_tokens=max_new_tokens, **params)
        for i, c in zip(idx, done):
            out[i] = c
    return out


def _text(c) -> str:
    return "" if c is None else c.text


def _ask(engine, questions: list[str], *, tools=None, max_new_tokens: int = 24) -> list:
    """Greedy answers to single-turn questions."""
    prompts = [engine.chat_prompt([{"role": "user", "content": q}], tools=tools) for q in questions]
    return _generate(engine, prompts, max_new_tokens=max_new_tokens)


def _states(text: str, row: dict, value: str) -> bool:
    """The answer is the value, bare or in the world's answer sentence about the row's person."""
    return normalize(text) in {normalize(value), normalize(fact_sentence(row["person"], row["attribute"], value))}


def fact_qa(engine, world: Path, limit: int | None = None) -> dict:
    rows = _rows(world, "fact_qa", limit)
    answers = _ask(engine, [r["question"] for r in rows], max_new_tokens=32)
    by = defaultdict(list)
    for r, a in zip(rows, answers):
        ok = _states(_text(a), r, r["answer"])
        by["all"].append(ok)
        by["in_sft" if r.get("in_sft") else "not_in_sft"].append(ok)
        by[f"attr:{r['attribute']}"].append(ok)
    examples = [{"question": r["question"], "answer": r["answer"], "model": _text(a)} for r, a in zip(rows[:5], answers)]
    return {k: sum(v) / len(v) for k, v in by.items()} | {"n": len(rows), "examples": examples,
                                                          "skipped_too_long": answers.count(None)}


def unknown_qa(engine, world: Path, limit: int | None = None) -> dict:
    rows = _rows(world, "unknown_qa", limit)
    answers = _ask(engine, [r["question"] for r in rows], max_new_tokens=32)
    idk = [normalize(_text(a)) == normalize(IDK_ANSWER) for a in answers]
    # The knowledge base's value without retrieval: 0 for a model that never saw these people,
    # what fine-tuning on knowledge_base facts (acorn.data.world.knowledge_sft_rows) should raise.
    knows = [_states(_text(a), r, r["kb_answer"]) for r, a in zip(rows, answers)]
    hallucinated = [not i and not k and _text(a).strip() != "" for i, k, a in zip(idk, knows, answers)]
    return {"idk_rate": sum(idk) / len(rows), "hallucination_rate": sum(hallucinated) / len(rows),
            "kb_answer_rate": sum(knows) / len(rows), "n": len(rows),
            "examples": [{"question": r["question"], "model": _text(a)} for r, a in zip(rows[:5], answers)],
            "skipped_too_long": answers.count(None)}


def arithmetic(engine, world: Path, limit: int | None = None) -> dict:
    from acorn.chat.tools import parse_tool_calls

    rows = _rows(world, "arithmetic", limit)
    tools = [CALCULATOR_TOOL]
    # A tool call is ~30 tokens of JSON: room for it, or every call is cut short.
    first = _ask(engine, [r["question"] for r in rows], tools=tools, max_new_tokens=64)
    fmt = engine.tokenizer.chat_format or "acorn"
    final = [_text(a) for a in first]
    used_tool = [False] * len(rows)
    followups = []
    for i, (r, a) in enumerate(zip(rows, first)):
        content, calls = parse_tool_calls(_text(a), fmt)
        if not calls:
            continue
        used_tool[i] = True
        call = calls[0]
        try:
            result = str(calculate(json.loads(call["function"]["arguments"]).get("expression", "")))
        except (ValueError, AttributeError, json.JSONDecodeError) as e:
            result = f"error: {e}"
        messages = [{"role": "user", "content": r["question"]},
                    {"role": "assistant", "content": content or None, "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": call["id"], "content": result}]
        followups.append((i, engine.chat_prompt(messages, tools=tools)))
    if followups:
        answers = _generate(engine, [p for _, p in followups], max_new_tokens=24)
        for (i, _), a in zip(followups, answers):
            final[i] = _text(a)
    by = defaultdict(list)
    for r, text, tool in zip(rows, final, used_tool):
        ok = normalize(text) == normalize(r["answer"])
        by["all"].append(ok)
        by[f"digits:{r['digits']}"].append(ok)
        by["tool_used"].append(tool)
    return {k: sum(v) / len(v) for k, v in by.items()} | {"n": len(rows), "skipped_too_long": first.count(None)}


def multiple_choice(engine, world: Path, limit: int | None = None) -> dict:
    rows = _rows(world, "fact_mc", limit)
    right = []
    for r in rows:
        prompt = engine.chat_prompt([{"role": "user", "content": r["question"]}])
        scores = engine.score(prompt, r["choices"])
        right.append(max(range(len(scores)), key=scores.__getitem__) == r["gold"])
    return {"accuracy": sum(right) / len(rows), "chance": sum(1 / len(r["choices"]) for r in rows) / len(rows),
            "n": len(rows)}


def in_context(engine, world: Path, limit: int | None = None) -> dict:
    rows = _rows(world, "icl", limit)
    answers = _generate(engine, [engine.encode(r["prompt"]) for r in rows], max_new_tokens=6, stop=["\n"])
    right = [normalize(_text(a)).split(" ")[0:1] == [normalize(r["answer"])] for r, a in zip(rows, answers)]
    return {"accuracy": sum(right) / len(rows), "chance": sum(1 / len(r["labels"]) for r in rows) / len(rows),
            "n": len(rows), "skipped_too_long": answers.count(None)}


def evaluate_world(engine, world: str | Path, *, limit: int | None = None,
                   tasks=("fact_qa", "unknown_qa", "arithmetic", "multiple_choice", "in_context")) -> dict:
    world = Path(world)
    runners = {"fact_qa": fact_qa, "unknown_qa": unknown_qa, "arithmetic": arithmetic,
               "multiple_choice": multiple_choice, "in_context": in_context}
    return {t: runners[t](engine, world, limit) for t in tasks}
