"""The tool registry and the built-in tools."""

from __future__ import annotations

import json
import random
import threading

import pytest

from acorn.agent.builtins import calculate, calculator_tool, lookup_tool, make_tools, python_tool, search_tool
from acorn.agent.tools import Tool, ToolRegistry
from acorn.errors import AcornError

ADD = Tool("add", "add two integers", {"type": "object", "properties": {"a": {"type": "integer"},
                                                                          "b": {"type": "integer"}},
                                       "required": ["a", "b"], "additionalProperties": False}, lambda a, b: a + b)


def test_a_valid_call_runs_and_every_bad_one_is_an_error_result():
    reg = ToolRegistry([ADD])
    assert reg.call("add", '{"a": 2, "b": 3}').content == "5"
    assert reg.call("add", {"a": 2, "b": 3}).ok
    cases = {("sub", "{}"): "unknown_tool", ("add", '{"a": 2,'): "bad_json", ("add", "[1, 2]"): "bad_json",
             ("add", '{"a": 2}'): "bad_arguments", ("add", '{"a": "2", "b": 3}'): "bad_arguments",
             ("add", '{"a": 2, "b": 3, "c": 4}'): "bad_arguments"}
    for (name, args), kind in cases.items():
        r = reg.call(name, args)
        assert r.error == kind and r.content.startswith("error: "), (name, args, r)
    assert "'b' is a required property" in reg.call("add", '{"a": 2}').content
    assert reg.specs() == [{"type": "function", "function": {"name": "add", "description": "add two integers",
                                                             "parameters": ADD.parameters}}]


def test_a_tool_that_raises_or_hangs_is_answered_with_an_error():
    never = threading.Event()

    def boom():
        raise RuntimeError("disk on fire")

    reg = ToolRegistry([Tool("boom", "fails", {"type": "object", "properties": {}}, boom),
                        Tool("hang", "never returns", {"type": "object", "properties": {}}, never.wait, timeout=0.2)])
    r = reg.call("boom", "{}")
    assert (r.error, r.content) == ("raised", "error: RuntimeError: disk on fire")
    r = reg.call("hang", "{}")
    assert r.error == "timeout" and "did not answer within 0.2 s" in r.content
    never.set()


@pytest.mark.parametrize("make,match", [
    (lambda: Tool("bad name!", "x", {"type": "object"}, print), "must be 1-64 letters"),
    (lambda: Tool("t", "x", {"type": "string"}, print), 'of type "object"'),
    (lambda: Tool("t", "x", {"type": "object", "properties": {"a": {"type": "nonsense"}}}, print),
     "not a valid JSON Schema"),
    (lambda: ToolRegistry([ADD, ADD]), "already registered"),
    (lambda: ToolRegistry([ADD])["nope"], "no tool named 'nope'"),
    (lambda: make_tools("calculator,shell"), "unknown tool 'shell'"),
    (lambda: make_tools("search"), "needs an index"),
    (lambda: make_tools("lookup"), "needs the world"),
    (lambda: make_tools(""), "no tools named"),
])
def test_bad_tool_definitions_are_one_line_errors(make, match):
    with pytest.raises(AcornError, match=match):
        make()


def test_the_calculator_agrees_with_python_on_random_expressions():
    rng = random.Random(0)
    for _ in range(300):
        a, b, c = (rng.randint(-10 ** 6, 10 ** 6) for _ in range(3))
        op1, op2 = rng.choice("+-*"), rng.choice(["+", "-", "*", "//", "%", "/"])
        if op2 in ("//", "%", "/") and c == 0:
            c = 7
        expr = f"({a}{op1}{b}){op2}{c}"
        want = eval(expr)  # the oracle, on text this test made
        got = calculate(expr)
        assert got == want or abs(got - want) <= 1e-9 * abs(want), expr
    assert calculate("12/4") == 3 and isinstance(calculate("12/4"), int) and calculate("2**10") == 1024
    assert calculator_tool().function(expression="7/2") == "3.5"


@pytest.mark.parametrize("expr,match", [
    ("__import__('os').system('true')", "not allowed"), ("open('/etc/passwd')", "not allowed"),
    ("(1).__class__", "not allowed"), ("x + 1", "not allowed"), ("9**9**9", "too large"),
    ("10**99 * 10**99", "too large"), ("1/0", "division by zero"), ("6 +", "not an arithmetic expression"),
    ("1+" * 200 + "1", "longer than"), ("", "empty"), ("(-8)**0.5", "not a real number"),
])
def test_the_calculator_refuses_anything_but_arithmetic(expr, match):
    with pytest.raises(ValueError, match=match):
        calculate(expr)
    r = ToolRegistry([calculator_tool()]).call("calculator", json.dumps({"expression": expr}))
    assert r.error == "raised" and r.content.startswith("error: ValueError")


def test_lookup_answers_from_world_json(tiny_world):
    world = json.loads((tiny_world / "world.json").read_text())
    person = world["people"][0]
    reg = ToolRegistry([lookup_tool(tiny_world)])
    assert reg.call("lookup", {"name": person["name"].upper(), "attribute": "birth_city"}).content == \
        person["birth_city"]
    assert reg.call("lookup", {"name": person["name"], "attribute": "birth_year"}).content == str(person["birth_year"])
    assert reg.call("lookup", {"name": "Nobody Atall", "attribute": "mentor"}).error == "raised"
    assert reg.call("lookup", {"name": person["name"], "attribute": "shoe_size"}).error == "bad_arguments"


def test_search_returns_the_best_passages_of_a_rag_index(tmp_path, agent_checkpoint):
    from acorn.rag.pipeline import build_index

    (tmp_path / "a.txt").write_text("The oak tree grows in Oslo.")
    (tmp_path / "b.txt").write_text("The cat sat on the mat.")
    build_index([tmp_path / "a.txt", tmp_path / "b.txt"], tmp_path / "idx", str(agent_checkpoint),
                chunk_by="paragraphs")
    tool = search_tool(tmp_path / "idx", k=1, mode="bm25")
    assert tool.function(query="where does the oak grow") == "[1] a: The oak tree grows in Oslo."
    assert ToolRegistry([tool]).call("search", {"query": ""}).error == "bad_arguments"


def test_python_runs_in_the_sandbox_and_nowhere_else(monkeypatch):
    from acorn import sandbox

    if sandbox.available():
        tool = python_tool(seconds=10)
        assert tool.side_effects
        assert tool.function(code="print(6*7)") == "42\n"
        out = tool.function(code="import os; print(os.path.exists('/work'), os.getcwd())")
        assert out == "False /tmp\n"  # the host's files are not there
        assert "[failed" in tool.function(code="raise SystemExit(3)")
    # Without bubblewrap the tool is refused, never run another way.
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    monkeypatch.setattr(sandbox, "_PROBED", {})
    with pytest.raises(AcornError, match="bubblewrap"):
        python_tool()
    with pytest.raises(AcornError, match="bubblewrap"):
        make_tools("calculator,python")
