"""Verifiable rewards (acorn.train.rewards): the built-in functions, TRL's calling
convention, weights and None, reward functions that raise, and the world's RL prompts."""

from __future__ import annotations

import json
import math

import pytest

from acorn.errors import AcornError
from acorn.train.rewards import (arithmetic_reward, completion_text, format_reward, json_reward, load_reward,
                                 score)


def test_arithmetic_reward_is_the_world_evals_exact_match():
    completions = ["42", " 42. ", "420", [{"role": "assistant", "content": "42"}], "forty-two"]
    assert arithmetic_reward([""] * 5, completions, answer=["42"] * 5) == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert arithmetic_reward(["", ""], ["1", "1"], answer=["1", None]) == [1.0, None]  # no answer: not scored
    with pytest.raises(AcornError, match="answer"):
        arithmetic_reward([""], ["1"])


def test_json_reward_checks_validity_and_the_rows_schema():
    schema = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
    completions = ['{"name": "Ada"}', '{"name": 3}', "{name: Ada}", '{"name": "Ada"}', "[1, 2]"]
    schemas = [schema, schema, schema, json.dumps(schema), None]
    assert json_reward([""] * 5, completions, schema=schemas) == [1.0, 0.0, 0.0, 1.0, 1.0]
    assert json_reward([""], ["not json"]) == [0.0]
    with pytest.raises(AcornError, match="not a valid JSON Schema"):
        json_reward([""], ["{}"], schema=[{"type": "no such type"}])


def test_format_reward_matches_the_whole_reply():
    assert format_reward([""] * 4, ["123", " -7\n", "12 apples", "x"]) == [1.0, 1.0, 0.0, 0.0]
    assert format_reward([""] * 2, ["<a>1</a>", "1"], format=[r"<a>\d+</a>", r"<a>\d+</a>"]) == [1.0, 0.0]
    assert completion_text([{"role": "assistant", "content": "hi"}]) == "hi"


def test_score_adds_weighted_rewards_and_leaves_out_none_as_trl_does():
    def half(prompts, completions, **_):
        return [0.5, None, None]

    def one(prompts, completions, **_):
        return [1, None, True]

    s = score([("half", half), ("one", one)], [2.0, 1.0], ["p"] * 3, ["a", "b", "c"], [[1], [2], [3]], {})
    assert s.rewards[0] == 2.0 and math.isnan(s.rewards[1]) and s.rewards[2] == 1.0
    assert s.per_function["one"][:1] == [1.0] and not s.failed_prompts
    with pytest.raises(AcornError, match="2 reward weights for 1"):
        score([("half", half)], [1.0, 2.0], ["p"] * 3, ["a"] * 3, [[1]] * 3, {})
    with pytest.raises(AcornError, match="returned 1 values for 3 completions"):
        score([("short", lambda **_: [1.0])], None, ["p"] * 3, ["a"] * 3, [[1]] * 3, {})
    with pytest.raises(AcornError, match="returned 'x'"):
        score([("text", lambda completions, **_: ["x"] * len(completions))], None, ["p"], ["a"], [[1]], {})


def test_columns_reach_the_function_one_value_per_completion():
    seen = {}

    def spy(prompts, completions, completion_ids, answer, topic, **_):
        seen.update(answer=answer, topic=topic, ids=completion_ids)
        return [0.0] * len(completions)

    score([("spy", spy)], None, ["p", "p", "q", "q"], ["a", "b", "c", "d"], [[1], [2], [3], [4]],
          {"answer": ["1", "1", "2", "2"], "topic": ["x", "x", "y", "y"]}, group=2)
    assert seen == {"answer": ["1", "1", "2", "2"], "topic": ["x", "x", "y", "y"], "ids": [[1], [2], [3], [4]]}


def test_a_reward_that_raises_names_the_prompt_or_leaves_it_unscored():
    def fragile(prompts, completions, **_):
        if "boom" in prompts:
            raise ZeroDivisionError("division by zero")
        return [1.0] * len(completions)

    prompts = ["fine", "fine", "boom", "boom", "also fine", "also fine"]
    args = (prompts, ["c"] * 6, [[1]] * 6, {})
    with pytest.raises(AcornError, match=r"reward 'fragile' raised ZeroDivisionError: division by zero on the "
                                         r"prompt 'boom'; .*--skip-reward-errors"):
        score([("fragile", fragile)], None, *args, group=2)
    s = score([("fragile", fragile)], None, *args, group=2, skip_errors=True)
    assert s.failed_prompts == [1]
    assert s.rewards[:2] == [1.0, 1.0] and all(math.isnan(r) for r in s.rewards[2:4]) and s.rewards[4:] == [1.0, 1.0]


def test_load_reward_finds_built_ins_modules_and_files(tmp_path):
    assert load_reward("arithmetic") == ("arithmetic", arithmetic_reward)
    assert load_reward("acorn.train.rewards:format_reward") == ("format_reward", format_reward)
    (tmp_path / "mine.py").write_text("def shout(prompts, completions, **kw):\n    return [1.0] * len(completions)\n")
    name, fn = load_reward(f"{tmp_path}/mine.py:shout")
    assert name == "shout" and fn([""], ["x"]) == [1.0]
    for spec, message in [("nosuch", "unknown reward"), ("no_such_module_xyz:f", "cannot import"),
                          ("acorn.train.rewards:nothing", "no function"), (f"{tmp_path}/none.py:f", "does not exist")]:
        with pytest.raises(AcornError, match=message):
            load_reward(spec)


def test_the_worlds_rl_arithmetic_prompts_are_right_and_held_out(tiny_world):
    from acorn.data.world import calculate

    rows = [json.loads(line) for line in (tiny_world / "rl_arithmetic.jsonl").read_text().splitlines()]
    held_out = {(r["a"], r["op"], r["b"]) for r in
                map(json.loads, (tiny_world / "eval" / "arithmetic.jsonl").read_text().splitlines())}
    assert rows and all(r["prompt"][0]["role"] == "user" and len(r["prompt"]) == 1 for r in rows)
    for r in rows:
        question = r["prompt"][0]["content"]
        a, op, b = _operands(question)
        assert str(calculate(f"{a}{op}{b}")) == r["answer"] and (a, op, b) not in held_out, question
    # The reward the data is for: the true answer scores 1.
    assert arithmetic_reward([r["prompt"] for r in rows], [r["answer"] for r in rows],
                             answer=[r["answer"] for r in rows]) == [1.0] * len(rows)


def _operands(question: str) -> tuple[int, str, int]:
    import re

    m = re.search(r"(\d+) (\+|-|\*|plus|minus|times) (\d+)", question)
    op = {"plus": "+", "minus": "-", "times": "*"}.get(m[2], m[2])
    return int(m[1]), op, int(m[3])


def test_a_reward_model_is_a_reward_function_scoring_prompt_and_reply(tmp_path, checkpoint, tok):
    """`--reward model=DIR`: the reward model's own score of the conversation, whatever the form."""
    import torch

    from acorn.model.checkpoint import load
    from acorn.model.heads import RewardModel
    from acorn.train.reward import load_reward_model

    torch.manual_seed(0)
    rm = RewardModel.from_causal_lm(load(checkpoint[0], dtype="float32", device="cpu"), tok)
    with torch.no_grad():
        rm.head.weight.normal_(0, 0.5)
    rm_dir = tmp_path / "rm"
    rm.save(rm_dir)
    name, fn = load_reward(f"model={rm_dir}")
    prompts = [[{"role": "user", "content": "What is 2 + 2?"}], "Plain text prompt "]
    completions = [[{"role": "assistant", "content": "4"}], "and its continuation"]
    got = fn(prompts, completions)
    want = load_reward_model(rm_dir).score([[*prompts[0], {"role": "assistant", "content": "4"}],
                                            "Plain text prompt and its continuation"])
    assert name == "model" and got == pytest.approx(want) and got[0] != got[1]
    with pytest.raises(AcornError, match="no config.json"):
        load_reward(f"model={tmp_path / 'nowhere'}")
